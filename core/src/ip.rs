//! Address arithmetic of IP pools (R19, R22): which addresses and IPv6
//! server prefixes a pool may hand out, and how the ledger names them.
//!
//! Each family of a pool is a row of numbered *slots*: an IPv4 block's
//! addresses, or an IPv6 prefix's server prefixes (its /64s by default).
//! The ledger stores a holding by the slot's name (`203.0.113.7`,
//! `2001:db8:0:7::/64`); the network and broadcast addresses, the gateway
//! and every excluded address are never handed out.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::resources::{IpPool, IpPoolSpec, Ipv4Block, Ipv6Block};

/// Shortest IPv4 block a pool may have: a /8 is already more than any
/// provider announces from one pool.
const MIN_V4_PREFIX: u8 = 8;
/// Longest IPv4 block: a /30 still has two addresses to hand out.
const MAX_V4_PREFIX: u8 = 30;
/// Shortest IPv6 prefix of a pool (a RIR's allocation to a provider).
/// With server prefixes of /64 at most, a pool has at most 2^32 slots:
/// slot numbers fit the ledger's 64-bit integers with room to spare.
const MIN_V6_PREFIX: u8 = 32;
/// Longest IPv6 server prefix: a /64 is the smallest SLAAC subnet.
const MAX_SERVER_PREFIX: u8 = 64;
/// Excluded entries per family at most.
pub const MAX_EXCLUDED: usize = 256;

/// An address family, as the API and the ledger name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn api_name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.api_name() == name)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// A field of a pool's spec that is not acceptable, named by its path in
/// the spec (`ipv4.excluded[2]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PoolError {
    pub field: String,
    pub message: String,
}

fn refuse<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, PoolError> {
    Err(PoolError {
        field: field.into(),
        message: message.into(),
    })
}

/// One family of a pool: its slots and those never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpace {
    family: Family,
    /// First address of the block, as a number.
    base: u128,
    /// Prefix length of the block.
    block_len: u8,
    /// Prefix length of one slot: 32 for IPv4, the server prefix for IPv6.
    slot_len: u8,
    /// Gateway (routing for the servers; never handed out).
    gateway: IpAddr,
    /// Slots never handed out, as sorted, disjoint, inclusive ranges.
    never: Vec<(u64, u64)>,
}

/// A pool's spec, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLayout {
    pub ipv4: SlotSpace,
    pub ipv6: Option<SlotSpace>,
}

/// What a server is given of one family: the address configured on its
/// NIC, the prefix it holds (for IPv4 the address alone) and the routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub family: Family,
    /// The ledger's name of the holding: an IPv4 address, an IPv6 prefix.
    pub holding: String,
    /// The address configured on the server's NIC (for IPv6 the first
    /// address of its prefix), the one blacklists are asked about.
    pub address: IpAddr,
    /// Prefix length of the link the NIC is on.
    pub prefix_len: u8,
    pub gateway: IpAddr,
}

impl IpPoolSpec {
    /// Parses and checks the spec; the error names the field.
    pub fn layout(&self) -> Result<PoolLayout, PoolError> {
        if !crate::validate::is_slug(&self.zone) {
            return refuse(
                "zone",
                "must be 1-63 lower-case letters, digits, '-', '.' or '_'",
            );
        }
        Ok(PoolLayout {
            ipv4: v4_space(&self.ipv4)?,
            ipv6: self.ipv6.as_ref().map(v6_space).transpose()?,
        })
    }
}

impl PoolLayout {
    pub fn family(&self, family: Family) -> Option<&SlotSpace> {
        match family {
            Family::V4 => Some(&self.ipv4),
            Family::V6 => self.ipv6.as_ref(),
        }
    }

    /// The family in which this pool and `other` share addresses, if any.
    pub fn overlap(&self, other: &PoolLayout) -> Option<Family> {
        if self.ipv4.overlaps(&other.ipv4) {
            return Some(Family::V4);
        }
        match (&self.ipv6, &other.ipv6) {
            (Some(a), Some(b)) if a.overlaps(b) => Some(Family::V6),
            _ => None,
        }
    }

    /// The family and slot of the pool holding `address` (for IPv6 any
    /// address inside a server prefix).
    pub fn slot_of(&self, address: IpAddr) -> Option<(Family, u64)> {
        let family = match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let space = self.family(family)?;
        space.slot_of(address).map(|slot| (family, slot))
    }
}

impl SlotSpace {
    pub fn family(&self) -> Family {
        self.family
    }

    /// Bits of the address below a slot.
    fn step_bits(&self) -> u8 {
        self.family_bits() - self.slot_len
    }

    fn family_bits(&self) -> u8 {
        match self.family {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Slots in the block, usable or not.
    pub fn slot_count(&self) -> u64 {
        1u64 << (self.slot_len - self.block_len)
    }

    /// Slots that can be handed out at all.
    pub fn usable(&self) -> u64 {
        let never: u64 = self.never.iter().map(|(a, b)| b - a + 1).sum();
        self.slot_count() - never
    }

    pub fn is_usable(&self, slot: u64) -> bool {
        slot < self.slot_count() && self.never_range(slot).is_none()
    }

    /// The never-handed-out range holding `slot`.
    fn never_range(&self, slot: u64) -> Option<(u64, u64)> {
        let after = self.never.partition_point(|(start, _)| *start <= slot);
        let (start, end) = *self.never.get(after.checked_sub(1)?)?;
        (start..=end).contains(&slot).then_some((start, end))
    }

    fn number_of(address: IpAddr) -> u128 {
        match address {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn address_of(&self, number: u128) -> IpAddr {
        match self.family {
            // A slot of an IPv4 block is below 2^32 by construction.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(number as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(number)),
        }
    }

    /// The slot holding `address`, if it is inside the block.
    pub fn slot_of(&self, address: IpAddr) -> Option<u64> {
        let number = Self::number_of(address);
        let same_family = matches!(
            (self.family, address),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        );
        let offset = number.checked_sub(self.base)?;
        let slot = offset >> self.step_bits();
        (same_family && slot < u128::from(self.slot_count())).then_some(slot as u64)
    }

    /// What the server holding `slot` is given.
    pub fn assignment(&self, slot: u64) -> Assignment {
        let first = self.base + (u128::from(slot) << self.step_bits());
        let (holding, address, prefix_len) = match self.family {
            Family::V4 => {
                let address = self.address_of(first);
                (address.to_string(), address, self.block_len)
            }
            Family::V6 => (
                format!("{}/{}", self.address_of(first), self.slot_len),
                // ::1 of the prefix: ::0 is its subnet-router anycast address.
                self.address_of(first + 1),
                self.slot_len,
            ),
        };
        Assignment {
            family: self.family,
            holding,
            address,
            prefix_len,
            gateway: self.gateway,
        }
    }

    /// Up to `limit` usable slots not in `taken`, walking the block from
    /// `start` and wrapping around: allocators starting at different
    /// places rarely reach for the same slot. The work is bounded by the
    /// number of never-usable ranges and of taken slots, not by the size
    /// of the block.
    pub fn free_slots(&self, start: u64, taken: &HashSet<u64>, limit: usize) -> Vec<u64> {
        let count = self.slot_count();
        let mut out = Vec::new();
        let mut slot = start % count;
        let mut remaining = count;
        while remaining > 0 && out.len() < limit {
            let skip = match self.never_range(slot) {
                Some((_, end)) => end - slot + 1,
                None => {
                    if !taken.contains(&slot) {
                        out.push(slot);
                    }
                    1
                }
            };
            let skip = skip.min(remaining);
            remaining -= skip;
            slot = (slot + skip) % count;
        }
        out
    }

    fn overlaps(&self, other: &SlotSpace) -> bool {
        let (a_first, a_last) = self.bounds();
        let (b_first, b_last) = other.bounds();
        self.family == other.family && a_first <= b_last && b_first <= a_last
    }

    /// First and last address of the block, as numbers.
    fn bounds(&self) -> (u128, u128) {
        let size = 1u128 << (self.family_bits() - self.block_len);
        (self.base, self.base + (size - 1))
    }

    /// The block in CIDR notation.
    pub fn block(&self) -> String {
        format!("{}/{}", self.address_of(self.base), self.block_len)
    }
}

/// The first of `existing` pools (name, spec) sharing addresses with
/// `layout`, and the family they share; pools whose spec does not parse
/// are skipped (they hand out nothing).
pub fn overlapping<'a>(
    layout: &PoolLayout,
    existing: impl IntoIterator<Item = (&'a str, &'a IpPoolSpec)>,
) -> Option<(&'a str, Family)> {
    existing.into_iter().find_map(|(name, spec)| {
        let other = spec.layout().ok()?;
        layout.overlap(&other).map(|family| (name, family))
    })
}

/// A pool that overlaps one created before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaterOverlap {
    pub pool: String,
    pub older: String,
    pub family: Family,
}

impl fmt::Display for LaterOverlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its {} addresses overlap those of IP pool {}, created before it: no address is taken from it",
            self.family, self.older
        )
    }
}

/// The pools that overlap a pool created before them (oldest first, then
/// by name). The API refuses such a pool; kubectl cannot, so these serve
/// no address and say why, and the older pool goes on serving.
pub fn later_overlaps(pools: &[IpPool]) -> Vec<LaterOverlap> {
    let mut valid: Vec<(&IpPool, PoolLayout)> = pools
        .iter()
        .filter_map(|p| p.spec.layout().ok().map(|layout| (p, layout)))
        .collect();
    valid.sort_by(|(a, _), (b, _)| {
        let created = |p: &IpPool| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .is_none()
            .cmp(&created(b).is_none())
            .then(created(a).cmp(&created(b)))
            .then(a.metadata.name.cmp(&b.metadata.name))
    });
    let mut later = Vec::new();
    for (i, (pool, layout)) in valid.iter().enumerate() {
        let older = valid[..i].iter().find_map(|(other, other_layout)| {
            layout.overlap(other_layout).map(|family| (other, family))
        });
        if let Some((older, family)) = older {
            later.push(LaterOverlap {
                pool: pool.metadata.name.clone().unwrap_or_default(),
                older: older.metadata.name.clone().unwrap_or_default(),
                family,
            });
        }
    }
    later
}

/// The server prefix of length `len` holding `address`, as the ledger
/// names it (`2001:db8:0:7::/64`).
pub fn containing_prefix(address: Ipv6Addr, len: u8) -> Option<String> {
    let prefix = Ipv6Net::new(address, len).ok()?.trunc();
    Some(prefix.to_string())
}

/// Sorts and merges inclusive ranges.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn v4_space(block: &Ipv4Block) -> Result<SlotSpace, PoolError> {
    let Ok(net) = block.cidr.parse::<Ipv4Net>() else {
        return refuse(
            "ipv4.cidr",
            format!(
                "{:?} is not an IPv4 block in CIDR notation",
                block.cidr.chars().take(64).collect::<String>()
            ),
        );
    };
    if net != net.trunc() {
        return refuse(
            "ipv4.cidr",
            format!("has host bits set: the block is {}", net.trunc()),
        );
    }
    if !(MIN_V4_PREFIX..=MAX_V4_PREFIX).contains(&net.prefix_len()) {
        return refuse(
            "ipv4.cidr",
            format!("must be a /{MIN_V4_PREFIX} to a /{MAX_V4_PREFIX}"),
        );
    }
    let mut space = SlotSpace {
        family: Family::V4,
        base: u128::from(u32::from(net.network())),
        block_len: net.prefix_len(),
        slot_len: 32,
        gateway: IpAddr::V4(net.network()),
        never: Vec::new(),
    };
    let last = space.slot_count() - 1;
    let Ok(gateway) = block.gateway.parse::<Ipv4Addr>() else {
        return refuse("ipv4.gateway", "is not an IPv4 address");
    };
    let gateway_slot = match space.slot_of(IpAddr::V4(gateway)) {
        Some(slot) if slot != 0 && slot != last => slot,
        _ => {
            return refuse(
                "ipv4.gateway",
                format!("must be a host address inside {net}"),
            );
        }
    };
    space.gateway = IpAddr::V4(gateway);
    if block.excluded.len() > MAX_EXCLUDED {
        return refuse(
            "ipv4.excluded",
            format!("lists at most {MAX_EXCLUDED} entries"),
        );
    }
    let mut never = vec![(0, 0), (last, last), (gateway_slot, gateway_slot)];
    for (i, entry) in block.excluded.iter().enumerate() {
        let field = format!("ipv4.excluded[{i}]");
        never.push(
            v4_excluded(&space, &net, entry).map_err(|message| PoolError { field, message })?,
        );
    }
    space.never = merged(never);
    if space.usable() == 0 {
        return refuse("ipv4.excluded", "leaves no address to hand out");
    }
    Ok(space)
}

/// The slots an IPv4 exclusion covers: an address, `first-last`, or a block.
fn v4_excluded(space: &SlotSpace, net: &Ipv4Net, entry: &str) -> Result<(u64, u64), String> {
    let slot = |text: &str| -> Result<u64, String> {
        let address = text
            .trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
        space
            .slot_of(IpAddr::V4(address))
            .ok_or_else(|| format!("{address} is outside {net}"))
    };
    if let Some((first, last)) = entry.split_once('-') {
        let (first, last) = (slot(first)?, slot(last)?);
        if first > last {
            return Err("a range goes from its lower address to its higher".into());
        }
        return Ok((first, last));
    }
    if entry.contains('/') {
        let excluded = entry
            .parse::<Ipv4Net>()
            .map_err(|_| format!("{entry:?} is not an IPv4 block in CIDR notation"))?;
        if !net.contains(&excluded) {
            return Err(format!("{excluded} is not inside {net}"));
        }
        return Ok((
            slot(&excluded.network().to_string())?,
            slot(&excluded.broadcast().to_string())?,
        ));
    }
    slot(entry).map(|s| (s, s))
}

fn v6_space(block: &Ipv6Block) -> Result<SlotSpace, PoolError> {
    let Ok(net) = block.prefix.parse::<Ipv6Net>() else {
        return refuse(
            "ipv6.prefix",
            format!(
                "{:?} is not an IPv6 prefix in CIDR notation",
                block.prefix.chars().take(64).collect::<String>()
            ),
        );
    };
    if net != net.trunc() {
        return refuse(
            "ipv6.prefix",
            format!("has host bits set: the prefix is {}", net.trunc()),
        );
    }
    let server_len = block.server_prefix_length;
    if net.prefix_len() < MIN_V6_PREFIX || net.prefix_len() >= MAX_SERVER_PREFIX {
        return refuse(
            "ipv6.prefix",
            format!("must be a /{MIN_V6_PREFIX} to a /{}", MAX_SERVER_PREFIX - 1),
        );
    }
    if server_len <= net.prefix_len() || server_len > MAX_SERVER_PREFIX {
        return refuse(
            "ipv6.serverPrefixLength",
            format!(
                "must be longer than the pool's /{} and at most /{MAX_SERVER_PREFIX}",
                net.prefix_len()
            ),
        );
    }
    let mut space = SlotSpace {
        family: Family::V6,
        base: u128::from(net.network()),
        block_len: net.prefix_len(),
        slot_len: server_len,
        gateway: IpAddr::V6(net.network()),
        never: Vec::new(),
    };
    let Ok(gateway) = block.gateway.parse::<Ipv6Addr>() else {
        return refuse("ipv6.gateway", "is not an IPv6 address");
    };
    let Some(gateway_slot) = space.slot_of(IpAddr::V6(gateway)) else {
        return refuse("ipv6.gateway", format!("must be inside {net}"));
    };
    space.gateway = IpAddr::V6(gateway);
    if block.excluded.len() > MAX_EXCLUDED {
        return refuse(
            "ipv6.excluded",
            format!("lists at most {MAX_EXCLUDED} entries"),
        );
    }
    let mut never = vec![(gateway_slot, gateway_slot)];
    for (i, entry) in block.excluded.iter().enumerate() {
        let field = format!("ipv6.excluded[{i}]");
        never.push(
            v6_excluded(&space, &net, entry).map_err(|message| PoolError { field, message })?,
        );
    }
    space.never = merged(never);
    if space.usable() == 0 {
        return refuse("ipv6.excluded", "leaves no prefix to hand out");
    }
    Ok(space)
}

/// The slots an IPv6 exclusion covers: a prefix, or the server prefix
/// holding an address.
fn v6_excluded(space: &SlotSpace, net: &Ipv6Net, entry: &str) -> Result<(u64, u64), String> {
    let (first, last) = if entry.contains('/') {
        let excluded = entry
            .parse::<Ipv6Net>()
            .map_err(|_| format!("{entry:?} is not an IPv6 prefix in CIDR notation"))?;
        if !net.contains(&excluded) {
            return Err(format!("{excluded} is not inside {net}"));
        }
        (excluded.network(), excluded.broadcast())
    } else {
        let address = entry
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("{entry:?} is not an IPv6 address"))?;
        (address, address)
    };
    let slot = |address: Ipv6Addr| {
        space
            .slot_of(IpAddr::V6(address))
            .ok_or_else(|| format!("{address} is outside {net}"))
    };
    Ok((slot(first)?, slot(last)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r19_a_pool_overlapping_an_older_one_is_the_one_refused() {
        let pool = |name: &str, cidr: &str, created: Option<&str>| {
            let network: Ipv4Net = cidr.parse().unwrap();
            let gateway = Ipv4Addr::from(u32::from(network.network()) + 1).to_string();
            let mut pool = IpPool::new(
                name,
                IpPoolSpec {
                    zone: "z".into(),
                    ipv4: Ipv4Block {
                        cidr: cidr.into(),
                        gateway,
                        excluded: Vec::new(),
                    },
                    ipv6: None,
                },
            );
            pool.metadata.creation_timestamp = created
                .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().unwrap()));
            pool
        };
        let pools = [
            pool("b-new", "192.0.2.0/25", Some("2026-02-01T00:00:00Z")),
            pool("z-old", "192.0.2.0/24", Some("2026-01-01T00:00:00Z")),
            pool("apart", "198.51.100.0/24", Some("2026-03-01T00:00:00Z")),
            pool("a-unknown", "192.0.2.128/25", None),
        ];
        let later = later_overlaps(&pools);
        assert_eq!(
            later,
            [
                LaterOverlap {
                    pool: "b-new".into(),
                    older: "z-old".into(),
                    family: Family::V4
                },
                LaterOverlap {
                    pool: "a-unknown".into(),
                    older: "z-old".into(),
                    family: Family::V4
                },
            ]
        );
        assert!(
            later[0]
                .to_string()
                .contains("IP pool z-old, created before it")
        );
    }
    use ipnet::IpNet;
    use proptest::prelude::*;

    fn v4(cidr: &str, gateway: &str, excluded: &[&str]) -> Ipv4Block {
        Ipv4Block {
            cidr: cidr.into(),
            gateway: gateway.into(),
            excluded: excluded.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    fn v6(prefix: &str, gateway: &str, server_len: u8, excluded: &[&str]) -> Ipv6Block {
        Ipv6Block {
            prefix: prefix.into(),
            gateway: gateway.into(),
            server_prefix_length: server_len,
            excluded: excluded.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    fn pool(ipv4: Ipv4Block, ipv6: Option<Ipv6Block>) -> IpPoolSpec {
        IpPoolSpec {
            zone: "default".into(),
            ipv4,
            ipv6,
        }
    }

    fn documentation_pool() -> PoolLayout {
        pool(
            v4("192.0.2.0/24", "192.0.2.1", &[]),
            Some(v6("2001:db8::/48", "2001:db8::1", 64, &[])),
        )
        .layout()
        .expect("valid")
    }

    fn field_refused(spec: IpPoolSpec) -> String {
        spec.layout().expect_err("must be refused").field
    }

    #[test]
    fn r19_network_broadcast_and_gateway_are_never_handed_out() {
        let layout = documentation_pool();
        assert_eq!(layout.ipv4.usable(), 253);
        for never in ["192.0.2.0", "192.0.2.255", "192.0.2.1"] {
            let slot = layout.ipv4.slot_of(never.parse().unwrap()).unwrap();
            assert!(!layout.ipv4.is_usable(slot), "{never}");
        }
        let free = layout.ipv4.free_slots(0, &HashSet::new(), 3);
        let names: Vec<String> = free
            .iter()
            .map(|s| layout.ipv4.assignment(*s).holding)
            .collect();
        assert_eq!(names, ["192.0.2.2", "192.0.2.3", "192.0.2.4"]);
    }

    #[test]
    fn r19_excluded_addresses_ranges_and_blocks_are_never_handed_out() {
        let layout = pool(
            v4(
                "198.51.100.0/24",
                "198.51.100.254",
                &[
                    "198.51.100.5",
                    "198.51.100.10-198.51.100.19",
                    "198.51.100.128/26",
                ],
            ),
            None,
        )
        .layout()
        .unwrap();
        // 256 - network - broadcast - gateway - 1 - 10 - 64
        assert_eq!(layout.ipv4.usable(), 256 - 3 - 1 - 10 - 64);
        let free = layout.ipv4.free_slots(0, &HashSet::new(), 1000);
        assert_eq!(free.len() as u64, layout.ipv4.usable());
        for slot in free {
            let address: Ipv4Addr = layout.ipv4.assignment(slot).holding.parse().unwrap();
            let last = address.octets()[3];
            assert!(![0, 5, 254, 255].contains(&last), "{address}");
            assert!(
                !(10..=19).contains(&last) && !(128..=191).contains(&last),
                "{address}"
            );
        }
    }

    #[test]
    fn r19_ipv6_server_prefixes_are_carved_from_the_pool_prefix() {
        let layout = documentation_pool();
        let ipv6 = layout.ipv6.as_ref().unwrap();
        assert_eq!(ipv6.slot_count(), 65_536);
        // The prefix holding the gateway is the one not handed out.
        assert_eq!(ipv6.usable(), 65_535);
        let given = ipv6.assignment(7);
        assert_eq!(given.holding, "2001:db8:0:7::/64");
        assert_eq!(given.address, "2001:db8:0:7::1".parse::<IpAddr>().unwrap());
        assert_eq!(given.prefix_len, 64);
        assert_eq!(given.gateway, "2001:db8::1".parse::<IpAddr>().unwrap());
        // Any address inside the prefix leads back to it.
        let inside: IpAddr = "2001:db8:0:7:abcd::42".parse().unwrap();
        assert_eq!(layout.slot_of(inside), Some((Family::V6, 7)));
        assert_eq!(
            containing_prefix("2001:db8:0:7:abcd::42".parse().unwrap(), 64).as_deref(),
            Some("2001:db8:0:7::/64")
        );
        let last = ipv6.assignment(65_535);
        assert_eq!(last.holding, "2001:db8:0:ffff::/64");
    }

    #[test]
    fn r19_a_shorter_server_prefix_is_honoured() {
        let layout = pool(
            v4("192.0.2.0/24", "192.0.2.1", &[]),
            Some(v6(
                "2001:db8::/40",
                "2001:db8::1",
                56,
                &["2001:db8:0:100::/56"],
            )),
        )
        .layout()
        .unwrap();
        let ipv6 = layout.ipv6.unwrap();
        assert_eq!(ipv6.slot_count(), 65_536);
        assert_eq!(ipv6.usable(), 65_534);
        assert_eq!(ipv6.assignment(2).holding, "2001:db8:0:200::/56");
        assert!(!ipv6.is_usable(1));
    }

    #[test]
    fn invalid_pools_are_refused_naming_the_field() {
        let ok4 = || v4("192.0.2.0/24", "192.0.2.1", &[]);
        let ok6 = || v6("2001:db8::/48", "2001:db8::1", 64, &[]);
        let cases = [
            (
                pool(v4("192.0.2.0/33", "192.0.2.1", &[]), None),
                "ipv4.cidr",
            ),
            (
                pool(v4("192.0.2.7/24", "192.0.2.1", &[]), None),
                "ipv4.cidr",
            ),
            (pool(v4("10.0.0.0/6", "10.0.0.1", &[]), None), "ipv4.cidr"),
            (
                pool(v4("192.0.2.0/31", "192.0.2.1", &[]), None),
                "ipv4.cidr",
            ),
            (
                pool(v4("192.0.2.0/24", "192.0.3.1", &[]), None),
                "ipv4.gateway",
            ),
            (
                pool(v4("192.0.2.0/24", "192.0.2.0", &[]), None),
                "ipv4.gateway",
            ),
            (
                pool(v4("192.0.2.0/24", "192.0.2.255", &[]), None),
                "ipv4.gateway",
            ),
            (pool(v4("192.0.2.0/24", "x", &[]), None), "ipv4.gateway"),
            (
                pool(
                    v4("192.0.2.0/24", "192.0.2.1", &["192.0.2.9", "192.0.3.4"]),
                    None,
                ),
                "ipv4.excluded[1]",
            ),
            (
                pool(
                    v4("192.0.2.0/24", "192.0.2.1", &["192.0.2.9-192.0.2.3"]),
                    None,
                ),
                "ipv4.excluded[0]",
            ),
            (
                pool(v4("192.0.2.0/24", "192.0.2.1", &["192.0.2.0/23"]), None),
                "ipv4.excluded[0]",
            ),
            (
                pool(v4("192.0.2.0/30", "192.0.2.1", &["192.0.2.2"]), None),
                "ipv4.excluded",
            ),
            (
                pool(ok4(), Some(v6("2001:db8::/64", "2001:db8::1", 64, &[]))),
                "ipv6.prefix",
            ),
            (
                pool(ok4(), Some(v6("2001:db8::1/48", "2001:db8::1", 64, &[]))),
                "ipv6.prefix",
            ),
            (
                pool(ok4(), Some(v6("2001:db8::/48", "2001:db8::1", 48, &[]))),
                "ipv6.serverPrefixLength",
            ),
            (
                pool(ok4(), Some(v6("2001:db8::/48", "2001:db8::1", 96, &[]))),
                "ipv6.serverPrefixLength",
            ),
            (
                pool(ok4(), Some(v6("2001:db8::/48", "2001:db9::1", 64, &[]))),
                "ipv6.gateway",
            ),
            (
                pool(
                    ok4(),
                    Some(v6("2001:db8::/48", "2001:db8::1", 64, &["2001:db9::/64"])),
                ),
                "ipv6.excluded[0]",
            ),
            (
                IpPoolSpec {
                    zone: "Not A Zone".into(),
                    ipv4: ok4(),
                    ipv6: Some(ok6()),
                },
                "zone",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(field_refused(spec.clone()), field, "{spec:?}");
        }
    }

    #[test]
    fn r19_overlapping_pools_are_found_per_family() {
        let a = documentation_pool();
        let inside_v4 = pool(v4("192.0.2.128/25", "192.0.2.129", &[]), None)
            .layout()
            .unwrap();
        let around_v6 = pool(
            v4("198.51.100.0/24", "198.51.100.1", &[]),
            Some(v6("2001:db8::/32", "2001:db8::1", 56, &[])),
        )
        .layout()
        .unwrap();
        let apart = pool(
            v4("198.51.100.0/24", "198.51.100.1", &[]),
            Some(v6("2001:db8:1::/48", "2001:db8:1::1", 64, &[])),
        )
        .layout()
        .unwrap();
        assert_eq!(a.overlap(&inside_v4), Some(Family::V4));
        assert_eq!(inside_v4.overlap(&a), Some(Family::V4));
        assert_eq!(a.overlap(&around_v6), Some(Family::V6));
        assert_eq!(a.overlap(&apart), None);
    }

    #[test]
    fn free_slots_wrap_around_and_skip_what_is_taken() {
        let layout = pool(v4("192.0.2.0/29", "192.0.2.1", &[]), None)
            .layout()
            .unwrap();
        // Usable: .2 .3 .4 .5 .6 (slots 2-6).
        let taken: HashSet<u64> = [3, 5].into();
        assert_eq!(layout.ipv4.free_slots(5, &taken, 10), vec![6, 2, 4]);
        let all: HashSet<u64> = (2..=6).collect();
        assert!(layout.ipv4.free_slots(0, &all, 10).is_empty());
    }

    proptest! {
        #[test]
        fn r19_free_slots_are_usable_distinct_and_untaken(
            len in 20u8..=30,
            excluded in proptest::collection::vec(any::<u16>(), 0..20),
            taken in proptest::collection::hash_set(any::<u16>(), 0..200),
            start in any::<u64>(),
        ) {
            let size = 1u32 << (32 - len);
            let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
            let name = |offset: u32| Ipv4Addr::from(base + offset % size).to_string();
            let excluded: Vec<String> = excluded
                .iter()
                .map(|e| name(u32::from(*e)))
                .filter(|a| a != &name(1))
                .collect();
            let spec = pool(
                Ipv4Block {
                    cidr: format!("10.64.0.0/{len}"),
                    gateway: name(1),
                    excluded: excluded.clone(),
                },
                None,
            );
            let Ok(layout) = spec.layout() else {
                // Only a block the exclusions fill entirely may be refused.
                prop_assert!(size <= 64);
                return Ok(());
            };
            let taken: HashSet<u64> = taken.iter().map(|t| u64::from(*t) % u64::from(size)).collect();
            let free = layout.ipv4.free_slots(start, &taken, usize::MAX);
            let distinct: HashSet<u64> = free.iter().copied().collect();
            prop_assert_eq!(distinct.len(), free.len());
            for slot in &free {
                let address = layout.ipv4.assignment(*slot).holding;
                prop_assert!(!taken.contains(slot));
                prop_assert!(layout.ipv4.is_usable(*slot));
                prop_assert!(!excluded.contains(&address), "{} is excluded", address);
                prop_assert!(address != name(0) && address != name(size - 1) && address != name(1));
            }
            let taken_usable = taken.iter().filter(|t| layout.ipv4.is_usable(**t)).count() as u64;
            prop_assert_eq!(free.len() as u64, layout.ipv4.usable() - taken_usable);
        }

        #[test]
        fn r19_server_prefixes_are_inside_the_pool_and_disjoint(
            server_len in 49u8..=64,
            slots in proptest::collection::hash_set(any::<u16>(), 1..50),
        ) {
            let layout = pool(
                v4("192.0.2.0/24", "192.0.2.1", &[]),
                Some(v6("2001:db8:aa00::/48", "2001:db8:aa00::1", server_len, &[])),
            )
            .layout()
            .unwrap();
            let ipv6 = layout.ipv6.unwrap();
            let pool_net: Ipv6Net = "2001:db8:aa00::/48".parse().unwrap();
            let mut nets: Vec<Ipv6Net> = Vec::new();
            let slots: HashSet<u64> = slots.iter().map(|s| u64::from(*s) % ipv6.slot_count()).collect();
            for slot in slots {
                let given = ipv6.assignment(slot);
                let net: Ipv6Net = given.holding.parse().unwrap();
                prop_assert_eq!(net.prefix_len(), server_len);
                prop_assert!(pool_net.contains(&net));
                prop_assert!(IpNet::from(net).contains(&given.address));
                prop_assert_eq!(ipv6.slot_of(given.address), Some(slot));
                for other in &nets {
                    prop_assert!(!other.contains(&net) && !net.contains(other));
                }
                nets.push(net);
            }
        }
    }
}
