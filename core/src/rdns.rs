//! Reverse DNS (R20–R22): the names of the reverse zones stratus serves
//! for its pools, the PTR a customer may set, the default one, and what the
//! authoritative server answers. Pure: the server and the API act.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The reverse name of an address, fully qualified and lower case
/// (`7.2.0.192.in-addr.arpa.`, `…ip6.arpa.` with 32 nibbles).
pub fn reverse_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

/// The address a full reverse name stands for, if it is one.
pub fn address_of(name: &str) -> Option<IpAddr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(labels) = name.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = labels
            .split('.')
            .map(|label| {
                // Canonical decimal only: `007` is no octet.
                let octet: u8 = label.parse().ok()?;
                (octet.to_string() == label).then_some(octet)
            })
            .collect::<Option<_>>()?;
        let [d, c, b, a] = <[u8; 4]>::try_from(octets).ok()?;
        return Some(IpAddr::from([a, b, c, d]));
    }
    let labels = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = labels
        .split('.')
        .map(|label| {
            let mut chars = label.chars();
            let nibble = chars.next()?.to_digit(16)?;
            chars.next().is_none().then_some(nibble as u8)
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, pair) in nibbles.chunks(2).rev().enumerate() {
        octets[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::from(octets))
}

/// The reverse zones that cover a network exactly or nearly: octet-aligned
/// for IPv4 (a /20 is 16 `/24` zones; a /28 lies in its /24's zone),
/// nibble-aligned for IPv6 (a /46 is 4 `/48` zones); never more than 256.
pub fn reverse_zones(network: IpNet) -> Vec<String> {
    match network {
        IpNet::V4(net) => {
            let zone_len = if net.prefix_len() >= 24 {
                24
            } else {
                net.prefix_len().div_ceil(8).max(1) * 8
            };
            zones_of(IpNet::V4(net.trunc()), zone_len, 8)
        }
        IpNet::V6(net) => {
            let zone_len = if net.prefix_len() >= 124 {
                124
            } else {
                net.prefix_len().div_ceil(4).max(1) * 4
            };
            zones_of(IpNet::V6(net.trunc()), zone_len, 4)
        }
    }
}

/// The zones of `zone_len` covering `net`, each named by its leading
/// labels of `bits_per_label`.
fn zones_of(net: IpNet, zone_len: u8, bits_per_label: u8) -> Vec<String> {
    let subnets: Vec<IpNet> = if zone_len <= net.prefix_len() {
        IpNet::new(net.network(), zone_len)
            .map(|n| vec![n.trunc()])
            .unwrap_or_default()
    } else {
        net.subnets(zone_len)
            .map(Iterator::collect)
            .unwrap_or_default()
    };
    let total_labels = match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 32,
    };
    subnets
        .into_iter()
        .map(|zone| {
            let full = reverse_name(zone.network());
            let dropped = total_labels - usize::from(zone_len / bits_per_label);
            let mut rest = full.as_str();
            for _ in 0..dropped {
                rest = rest.split_once('.').map_or(rest, |(_, r)| r);
            }
            rest.to_owned()
        })
        .collect()
}

/// Whether `name` (fully qualified or not) is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.');
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// A PTR's target as a customer gives it: a DNS name of at least two
/// labels, each a letter-digit-hyphen label (RFC 1123), at most 253
/// characters; a trailing dot is allowed. Answers it lower case without
/// the trailing dot, or why not.
pub fn check_hostname(name: &str) -> Result<String, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if !crate::validate::is_hostname(bare) {
        return Err(format!(
            "{name:?} is not a DNS name (letters, digits and '-' in dot-separated labels of 1-63, at most 253)"
        ));
    }
    if !bare.contains('.') {
        return Err(format!(
            "{name:?} is a single label: a PTR names a host in a domain (mail.example.com)"
        ));
    }
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{name:?} looks like an address, not a name"));
    }
    Ok(bare.to_ascii_lowercase())
}

/// The PTR of an address nobody set one for: `template` with `{ip-dashed}`
/// replaced by the address with its dots or colons as dashes (an IPv6
/// address written in full, so every address has its own name).
pub fn default_ptr(template: &str, address: IpAddr) -> String {
    let dashed = match address {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    template.replace("{ip-dashed}", &dashed)
}

/// What the reverse zones stratus serves hold: the zones, the networks of
/// its pools (whose addresses get the default PTR) and the PTRs set.
#[derive(Debug, Clone, Default)]
pub struct ReverseZones {
    /// Apex names, fully qualified, lower case.
    pub zones: Vec<String>,
    /// The pools' networks.
    pub networks: Vec<IpNet>,
    /// PTRs set, by address.
    pub records: HashMap<IpAddr, String>,
    /// `rdns.defaultTemplate`.
    pub default_template: Option<String>,
}

/// The answer to one question about a reverse zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseAnswer {
    /// The zone's apex: its SOA and NS records (the question's type says
    /// which are answered).
    Apex { zone: String },
    /// A PTR record, fully qualified.
    Ptr { zone: String, target: String },
    /// The name exists in the zone (or may) but has nothing of that type.
    NoData { zone: String },
    /// No such name in a zone stratus serves.
    NxDomain { zone: String },
    /// Not a zone stratus serves: refused, never forwarded.
    Refused,
}

impl ReverseZones {
    /// The zone `name` falls in: the longest apex it is at or below.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.zones
            .iter()
            .filter(|zone| in_zone(name, zone))
            .max_by_key(|zone| zone.len())
            .map(String::as_str)
    }

    /// The PTR of `address`: the one set, else the default for an address
    /// of a pool, else none.
    pub fn ptr_of(&self, address: IpAddr) -> Option<String> {
        if let Some(set) = self.records.get(&address) {
            return Some(set.clone());
        }
        let template = self.default_template.as_deref()?;
        self.networks
            .iter()
            .any(|net| has_default(net, address))
            .then(|| default_ptr(template, address))
    }

    /// What to answer to `name` asked with a PTR question (`ptr`) or
    /// another type.
    pub fn answer(&self, name: &str, ptr: bool) -> ReverseAnswer {
        let Some(zone) = self.zone_of(name).map(str::to_owned) else {
            return ReverseAnswer::Refused;
        };
        if name
            .trim_end_matches('.')
            .eq_ignore_ascii_case(zone.trim_end_matches('.'))
        {
            return ReverseAnswer::Apex { zone };
        }
        let Some(address) = address_of(name) else {
            // An inner name (`2.0.192.in-addr.arpa.` of a /16 zone) has
            // names below it: it exists, with no data. Anything else in the
            // zone (below an address, or no address at all) does not.
            return if is_inner_reverse_name(name) {
                ReverseAnswer::NoData { zone }
            } else {
                ReverseAnswer::NxDomain { zone }
            };
        };
        match self.ptr_of(address) {
            Some(target) if ptr => ReverseAnswer::Ptr {
                zone,
                target: format!("{}.", target.trim_end_matches('.')),
            },
            Some(_) => ReverseAnswer::NoData { zone },
            None => ReverseAnswer::NxDomain { zone },
        }
    }
}

/// Most addresses an IPv4 pool may have for its addresses to have default
/// PTRs (they are listed in zone transfers, so secondaries answer what
/// stratus answers): a larger pool (a /8) answers only the PTRs set.
pub const MAX_TRANSFERRED_DEFAULTS: u64 = 65_536;

/// Whether `address` of `network` gets the default PTR: an IPv4 host of a
/// pool of at most [`MAX_TRANSFERRED_DEFAULTS`] addresses (not its network
/// or broadcast address), or any address of an IPv6 pool (too many to
/// transfer: stratus's own servers answer those).
fn has_default(network: &IpNet, address: IpAddr) -> bool {
    match (network, address) {
        (IpNet::V4(net), IpAddr::V4(v4)) => {
            net.contains(&v4)
                && 1u64 << (32 - u32::from(net.prefix_len())) <= MAX_TRANSFERRED_DEFAULTS
                && (net.prefix_len() >= 31 || (v4 != net.network() && v4 != net.broadcast()))
        }
        (IpNet::V6(net), IpAddr::V6(v6)) => net.contains(&v6),
        _ => false,
    }
}

/// Whether `name` is a proper prefix of reverse names (fewer labels than
/// an address, each a valid octet or nibble): it has names below it.
fn is_inner_reverse_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(labels) = name.strip_suffix(".in-addr.arpa") {
        let labels: Vec<&str> = labels.split('.').collect();
        return labels.len() < 4
            && labels
                .iter()
                .all(|l| l.parse::<u8>().is_ok_and(|o| o.to_string() == *l));
    }
    if let Some(labels) = name.strip_suffix(".ip6.arpa") {
        let labels: Vec<&str> = labels.split('.').collect();
        return labels.len() < 32
            && labels
                .iter()
                .all(|l| l.len() == 1 && l.chars().all(|c| c.is_ascii_hexdigit()));
    }
    false
}

/// The network an IPv4 reverse zone's apex stands for
/// (`2.0.192.in-addr.arpa.` is 192.0.2.0/24).
fn v4_zone_network(zone: &str) -> Option<ipnet::Ipv4Net> {
    let labels = zone.trim_end_matches('.').strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = labels
        .split('.')
        .map(|l| l.parse().ok())
        .collect::<Option<_>>()?;
    octets.reverse();
    let length = u8::try_from(octets.len() * 8).ok()?;
    octets.resize(4, 0);
    let [a, b, c, d] = <[u8; 4]>::try_from(octets).ok()?;
    ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(a, b, c, d), length).ok()
}

impl ReverseZones {
    /// Every PTR of `zone` a zone transfer carries, by address: those set,
    /// and the default of each IPv4 address of a pool in it (IPv6 pools
    /// are too large to list: secondaries answer only the PTRs set there).
    pub fn records_of_zone(&self, zone: &str) -> Vec<(IpAddr, String)> {
        let mut records: std::collections::BTreeMap<IpAddr, String> = self
            .records
            .iter()
            .filter(|(address, _)| self.zone_of(&reverse_name(**address)) == Some(zone))
            .map(|(address, name)| (*address, name.clone()))
            .collect();
        if let (Some(template), Some(zone_net)) = (&self.default_template, v4_zone_network(zone)) {
            for network in &self.networks {
                let IpNet::V4(v4) = network else {
                    continue;
                };
                // Only where the pool and the zone overlap: the smaller of
                // the two, when one holds the other.
                let span = if v4.contains(&zone_net) {
                    zone_net
                } else if zone_net.contains(v4) {
                    *v4
                } else {
                    continue;
                };
                for address in span.hosts().chain([span.network(), span.broadcast()]) {
                    let address = IpAddr::V4(address);
                    if has_default(network, address)
                        && self.zone_of(&reverse_name(address)) == Some(zone)
                    {
                        records
                            .entry(address)
                            .or_insert_with(|| default_ptr(template, address));
                    }
                }
            }
        }
        records.into_iter().collect()
    }
}

/// A secondary as configured: its address, and where it hears NOTIFY
/// (port 53 unless given, `192.0.2.53:5353`).
pub fn secondary(text: &str) -> Option<std::net::SocketAddr> {
    text.parse::<std::net::SocketAddr>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(|ip| (ip, 53).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_transfer_lists_the_ptrs_set_and_the_ipv4_defaults_of_its_zone() {
        let mut zones = ReverseZones {
            zones: reverse_zones("10.64.0.0/23".parse().unwrap()),
            networks: vec!["10.64.0.0/23".parse().unwrap()],
            records: HashMap::new(),
            default_template: None,
        };
        zones
            .records
            .insert("10.64.1.9".parse().unwrap(), "mail.example.com".into());
        assert_eq!(
            zones.records_of_zone("1.64.10.in-addr.arpa."),
            [("10.64.1.9".parse().unwrap(), "mail.example.com".to_owned())]
        );
        assert!(zones.records_of_zone("0.64.10.in-addr.arpa.").is_empty());
        zones.default_template = Some("h-{ip-dashed}.example.net".into());
        let first = zones.records_of_zone("0.64.10.in-addr.arpa.");
        assert_eq!(
            first.len(),
            255,
            "the hosts of 10.64.0.0/23 in the first /24"
        );
        let second = zones.records_of_zone("1.64.10.in-addr.arpa.");
        assert_eq!(second.len(), 255);
        assert!(second.contains(&("10.64.1.9".parse().unwrap(), "mail.example.com".to_owned())));
        let big = ReverseZones {
            zones: reverse_zones("10.0.0.0/8".parse().unwrap()),
            networks: vec!["10.0.0.0/8".parse().unwrap()],
            records: HashMap::new(),
            default_template: Some("h-{ip-dashed}.example.net".into()),
        };
        assert!(big.records_of_zone("10.in-addr.arpa.").is_empty());
        assert_eq!(
            secondary("192.0.2.53"),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            secondary("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(secondary("ns2"), None);
    }

    #[test]
    fn reverse_names_go_both_ways() {
        for address in [
            "192.0.2.7",
            "10.231.0.255",
            "2001:db8::1",
            "fd42:231::abcd:1",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            let name = reverse_name(ip);
            assert_eq!(address_of(&name), Some(ip), "{name}");
            assert_eq!(address_of(&name.to_ascii_uppercase()), Some(ip));
        }
        assert_eq!(
            reverse_name("192.0.2.7".parse().unwrap()),
            "7.2.0.192.in-addr.arpa."
        );
        assert!(
            reverse_name("2001:db8::1".parse().unwrap())
                .starts_with("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2")
        );
        for not_one in [
            "2.0.192.in-addr.arpa.",
            "07.2.0.192.in-addr.arpa.",
            "256.2.0.192.in-addr.arpa.",
            "x.2.0.192.in-addr.arpa.",
            "1.0.ip6.arpa.",
            "example.com.",
        ] {
            assert_eq!(address_of(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn pools_are_served_in_octet_and_nibble_aligned_zones() {
        let zones = |net: &str| reverse_zones(net.parse().unwrap());
        assert_eq!(zones("192.0.2.0/24"), ["2.0.192.in-addr.arpa."]);
        assert_eq!(zones("10.231.0.0/28"), ["0.231.10.in-addr.arpa."]);
        let twenty = zones("10.64.0.0/20");
        assert_eq!(twenty.len(), 16);
        assert_eq!(twenty[0], "0.64.10.in-addr.arpa.");
        assert_eq!(twenty[15], "15.64.10.in-addr.arpa.");
        assert_eq!(zones("10.0.0.0/8"), ["10.in-addr.arpa."]);
        let twelve = zones("10.16.0.0/12");
        assert_eq!(twelve.len(), 16);
        assert_eq!(twelve[0], "16.10.in-addr.arpa.");
        assert_eq!(
            zones("fd42:231::/48"),
            ["0.0.0.0.1.3.2.0.2.4.d.f.ip6.arpa."]
        );
        assert_eq!(
            zones("2001:db8::/46"),
            [
                "0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                "2.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                "3.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
            ]
        );
        assert_eq!(zones("0.0.0.0/0").len(), 256);
    }

    #[test]
    fn ptrs_are_checked_and_defaulted() {
        assert_eq!(
            check_hostname("Mail.Example.com.").unwrap(),
            "mail.example.com"
        );
        for bad in [
            "",
            "mail",
            "-x.example.com",
            "a..b",
            "1.2.3.4",
            &"a".repeat(64),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
        assert_eq!(
            default_ptr(
                "static-{ip-dashed}.example.net",
                "192.0.2.7".parse().unwrap()
            ),
            "static-192-0-2-7.example.net"
        );
        assert_eq!(
            default_ptr("h{ip-dashed}.example.net", "2001:db8::1".parse().unwrap()),
            "h2001-db8-0-0-0-0-0-1.example.net"
        );
    }

    #[test]
    fn answers_come_from_the_ptrs_set_then_the_default_and_only_for_served_zones() {
        let mut zones = ReverseZones {
            zones: reverse_zones("192.0.2.0/24".parse().unwrap()),
            networks: vec!["192.0.2.0/25".parse().unwrap()],
            records: HashMap::new(),
            default_template: None,
        };
        zones
            .records
            .insert("192.0.2.7".parse().unwrap(), "mail.example.com".into());
        let ask = |zones: &ReverseZones, name: &str| zones.answer(name, true);
        assert_eq!(
            ask(&zones, "7.2.0.192.in-addr.arpa."),
            ReverseAnswer::Ptr {
                zone: "2.0.192.in-addr.arpa.".into(),
                target: "mail.example.com.".into()
            }
        );
        assert!(matches!(
            ask(&zones, "8.2.0.192.in-addr.arpa."),
            ReverseAnswer::NxDomain { .. }
        ));
        zones.default_template = Some("static-{ip-dashed}.example.net".into());
        assert_eq!(
            ask(&zones, "8.2.0.192.in-addr.arpa."),
            ReverseAnswer::Ptr {
                zone: "2.0.192.in-addr.arpa.".into(),
                target: "static-192-0-2-8.example.net.".into()
            }
        );
        // Outside every pool, inside the zone: no default.
        assert!(matches!(
            ask(&zones, "200.2.0.192.in-addr.arpa."),
            ReverseAnswer::NxDomain { .. }
        ));
        assert!(matches!(
            ask(&zones, "2.0.192.in-addr.arpa."),
            ReverseAnswer::Apex { .. }
        ));
        assert!(matches!(
            zones.answer("7.2.0.192.in-addr.arpa.", false),
            ReverseAnswer::NoData { .. }
        ));
        assert_eq!(
            ask(&zones, "7.3.0.192.in-addr.arpa."),
            ReverseAnswer::Refused
        );
        assert_eq!(ask(&zones, "example.com."), ReverseAnswer::Refused);
    }
}
