//! The provider's configuration: plans and images (and, as features arrive,
//! policy). Loaded from YAML; built-in defaults apply when no file is given;
//! an unknown key is an error that names it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::cloud_init::CloudInitConfig;
use crate::notices::Notifications;
use crate::policy::Policy;
use crate::quota::Quota;
use crate::resources::{IpPoolSpec, Ipv4Block, Ipv6Block, ServerResources};
use crate::validate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid YAML for stratus: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("configuration field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

/// A server size customers can order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Plan {
    pub fn resources(&self) -> ServerResources {
        ServerResources {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
        }
    }
}

/// An operating-system image; each hypervisor keeps `volume` in its image pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub name: String,
    /// Volume name of the image in the hypervisor's storage pool.
    pub volume: String,
    #[serde(default)]
    pub description: String,
    /// Virtual size of the image in GiB: the smallest disk a server started
    /// from it can have (an order of a plan with a smaller disk is refused),
    /// and the size of the empty image a test hypervisor creates.
    #[serde(default = "default_image_size_gib")]
    pub size_gib: u64,
    /// Direct kernel boot: the kernel's path on every hypervisor. Without
    /// it the guest boots from its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The initrd's path on every hypervisor (with `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The kernel command line (with `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Longest kernel command line accepted (x86's own limit is 2 KiB).
const MAX_CMDLINE_BYTES: usize = 2048;

impl Image {
    /// The direct-kernel-boot fields, as the agent takes them.
    pub fn kernel_boot(&self) -> Option<crate::agent_api::KernelBoot> {
        self.kernel
            .as_ref()
            .map(|kernel| crate::agent_api::KernelBoot {
                kernel: kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
            })
    }

    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let path = |field: &str, value: &Option<String>| match value {
            Some(path) if !path.starts_with('/') || path.contains(['\n', '\0']) => Err((
                format!("{at}.{field}"),
                "must be an absolute path on the hypervisors".to_owned(),
            )),
            _ => Ok(()),
        };
        path("kernel", &self.kernel)?;
        path("initrd", &self.initrd)?;
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err((
                format!("{at}.kernel"),
                "initrd and cmdline need a kernel".to_owned(),
            ));
        }
        if let Some(cmdline) = &self.cmdline
            && (cmdline.len() > MAX_CMDLINE_BYTES || cmdline.chars().any(char::is_control))
        {
            return Err((
                format!("{at}.cmdline"),
                format!("one line of at most {MAX_CMDLINE_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

/// A hypervisor `stratus up` runs an agent for in its own process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalHypervisor {
    pub name: String,
    pub zone: String,
    /// `qemu:///system`, or `qemu:///system?socket=…` for a daemon of its own.
    pub libvirt_uri: String,
    /// Storage pool holding the images and the server disks.
    pub pool: String,
    /// libvirt network the servers' NICs attach to.
    pub network: String,
    /// `kvm` where the host really runs guests with it, `qemu` for software
    /// emulation (TCG): configured, never guessed from `/dev/kvm`.
    pub domain_type: String,
    /// Directory of the guests' serial console logs on the hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_dir: Option<String>,
    /// Factor on the host's CPUs for the vCPUs it advertises.
    #[serde(default = "default_cpu_overcommit")]
    pub cpu_overcommit: f64,
}

fn default_cpu_overcommit() -> f64 {
    1.0
}

impl LocalHypervisor {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let invalid =
            |field: &str, message: &str| Err((format!("{at}.{field}"), message.to_owned()));
        if !validate::is_dns_label(&self.name) {
            return invalid(
                "name",
                "must be a DNS label: lower-case letters, digits and '-'",
            );
        }
        if !validate::is_dns_label(&self.zone) {
            return invalid(
                "zone",
                "must be a DNS label: lower-case letters, digits and '-'",
            );
        }
        if self.libvirt_uri.is_empty() || self.libvirt_uri.contains(char::is_whitespace) {
            return invalid("libvirtUri", "must be a libvirt URI");
        }
        for (field, value) in [("pool", &self.pool), ("network", &self.network)] {
            if value.is_empty() || value.contains(['/', '\n']) {
                return invalid(field, "must be a libvirt object name");
            }
        }
        if !["kvm", "qemu", "test"].contains(&self.domain_type.as_str()) {
            return invalid("domainType", "must be kvm, qemu or test");
        }
        if let Some(dir) = &self.console_dir
            && !dir.starts_with('/')
        {
            return invalid("consoleDir", "must be an absolute path");
        }
        if !(self.cpu_overcommit.is_finite() && (1.0..=64.0).contains(&self.cpu_overcommit)) {
            return invalid("cpuOvercommit", "must be between 1 and 64");
        }
        Ok(())
    }
}

fn default_image_size_gib() -> u64 {
    2
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_plans")]
    pub plans: Vec<Plan>,
    #[serde(default = "default_images")]
    pub images: Vec<Image>,
    /// The image servers boot in rescue mode (one of `images`), their own
    /// disk attached beside it; absent: no rescue mode is offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue_image: Option<String>,
    /// Every account's quota unless the account has its own (key by key);
    /// a key absent here is unlimited.
    #[serde(default)]
    pub quotas: Quota,
    /// How fast one API token may call.
    #[serde(default)]
    pub limits: Limits,
    /// Load balancers and proxies in front of the API (CIDRs), whose
    /// `X-Forwarded-For` says which client a request is from; anyone
    /// else's is ignored (it could say anything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Durations, fees and modes of the business rules (RULES.md).
    #[serde(default)]
    pub policy: Policy,
    /// IP pools created at start when missing (embedded mode). Absent:
    /// `stratus up` seeds the documentation ranges so the quickstart shows
    /// addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_pools: Option<Vec<SeededPool>>,
    /// The DNS blacklists addresses are checked against (R20, R21).
    #[serde(default)]
    pub dnsbl: Dnsbl,
    /// Reverse DNS: the PTRs customers set, served authoritatively for the
    /// pools' reverse zones.
    #[serde(default)]
    pub rdns: Rdns,
    /// How accounts are told of their standing, and the billing webhook.
    #[serde(default)]
    pub notifications: Notifications,
    /// What every guest's cloud-init seed says beside its own addresses.
    #[serde(default)]
    pub cloud_init: CloudInitConfig,
    /// The hypervisors `stratus up` runs agents for; absent: one on
    /// libvirt's test driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_hypervisors: Vec<LocalHypervisor>,
}

/// An IP pool of the configuration: its name, then the IpPool spec's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeededPool {
    pub name: String,
    pub zone: String,
    pub ipv4: Ipv4Block,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Block>,
}

impl SeededPool {
    pub fn spec(&self) -> IpPoolSpec {
        IpPoolSpec {
            zone: self.zone.clone(),
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
        }
    }

    /// The pools `stratus up` seeds when the configuration names none:
    /// documentation ranges (RFC 5737, RFC 3849) that route nowhere.
    pub fn documentation() -> Vec<SeededPool> {
        vec![SeededPool {
            name: "documentation".into(),
            zone: crate::resources::DEFAULT_ZONE.into(),
            ipv4: Ipv4Block {
                cidr: "192.0.2.0/24".into(),
                gateway: "192.0.2.1".into(),
                excluded: Vec::new(),
            },
            ipv6: Some(Ipv6Block {
                prefix: "2001:db8::/48".into(),
                gateway: "2001:db8::1".into(),
                server_prefix_length: crate::resources::DEFAULT_SERVER_PREFIX_LENGTH,
                excluded: Vec::new(),
            }),
        }]
    }
}

/// Whether a blacklist's listing keeps an address out of circulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ZoneMode {
    /// A listed address is never handed out (R20).
    #[default]
    Blocking,
    /// Listings are recorded and shown only.
    Informational,
}

/// One DNS blacklist zone: `{name: zen.spamhaus.org, mode: informational}`,
/// or its name alone (`zen.spamhaus.org`), a blocking zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsblZone {
    pub name: String,
    pub mode: ZoneMode,
}

/// The long form of a zone.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZoneFields {
    name: String,
    #[serde(default)]
    mode: ZoneMode,
}

impl<'de> Deserialize<'de> for DnsblZone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Zone;
        impl<'de> serde::de::Visitor<'de> for Zone {
            type Value = DnsblZone;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a zone name, or {name, mode}")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<DnsblZone, E> {
                Ok(DnsblZone {
                    name: name.to_owned(),
                    mode: ZoneMode::Blocking,
                })
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<DnsblZone, M::Error> {
                let fields =
                    ZoneFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(DnsblZone {
                    name: fields.name,
                    mode: fields.mode,
                })
            }
        }
        deserializer.deserialize_any(Zone)
    }
}

/// Most zones the configuration may list: every check asks each.
const MAX_DNSBL_ZONES: usize = 32;

/// The DNS blacklists and how they are asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dnsbl {
    /// Zones asked about every address; none: every address is clean.
    #[serde(default)]
    pub zones: Vec<DnsblZone>,
    /// The resolver asked (`127.0.0.1:5353`); the system's when absent.
    /// Public resolvers are refused by most blacklists (Spamhaus answers
    /// 127.255.255.254): use a resolver of your own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// How long one query may take before it counts as an error.
    #[serde(default = "default_dnsbl_timeout_ms")]
    pub timeout_ms: u64,
    /// Queries in flight at once, at most.
    #[serde(default = "default_dnsbl_concurrency")]
    pub concurrency: u32,
}

fn default_dnsbl_timeout_ms() -> u64 {
    2_000
}

fn default_dnsbl_concurrency() -> u32 {
    16
}

impl Default for Dnsbl {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            resolver: None,
            timeout_ms: default_dnsbl_timeout_ms(),
            concurrency: default_dnsbl_concurrency(),
        }
    }
}

impl Dnsbl {
    /// The resolver's address, when one is configured and valid.
    pub fn resolver_address(&self) -> Option<std::net::SocketAddr> {
        self.resolver.as_deref().and_then(|r| r.parse().ok())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: String, message: &str| Err((field, message.to_owned()));
        if self.zones.len() > MAX_DNSBL_ZONES {
            return invalid("dnsbl.zones".into(), "lists at most 32 zones");
        }
        let mut seen = BTreeSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let name = zone.name.trim_end_matches('.');
            if !validate::is_hostname(name) || !name.contains('.') || name.len() > 200 {
                return invalid(
                    format!("dnsbl.zones[{i}].name"),
                    "must be a DNS zone such as zen.spamhaus.org",
                );
            }
            if !seen.insert(name.to_ascii_lowercase()) {
                return invalid(format!("dnsbl.zones[{i}].name"), "duplicate zone");
            }
        }
        if self.resolver.is_some() && self.resolver_address().is_none() {
            return invalid(
                "dnsbl.resolver".into(),
                "must be an address and port such as 127.0.0.1:53",
            );
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return invalid("dnsbl.timeoutMs".into(), "must be from 100 to 60000");
        }
        if !(1..=256).contains(&self.concurrency) {
            return invalid("dnsbl.concurrency".into(), "must be from 1 to 256");
        }
        Ok(())
    }
}

/// Reverse DNS (`rdns:`); every key optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rdns {
    /// Where the authoritative server listens, UDP and TCP (`0.0.0.0:53`);
    /// absent: no DNS server runs (`stratus up`; `stratus dns` needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The zones' NS records; absent: the SOA's own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The zones' SOA record.
    #[serde(default)]
    pub soa: Soa,
    /// The PTR of an address nobody set one for, `{ip-dashed}` replaced
    /// by the address with dashes (`static-{ip-dashed}.example.net`);
    /// absent: no PTR is answered until one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_template: Option<String>,
    /// A PTR is accepted only when its name resolves to the address (through
    /// the resolver of `dnsbl:`).
    #[serde(default = "default_true")]
    pub require_forward_match: bool,
    /// The provider's secondary servers (addresses, `192.0.2.53`, or with
    /// the port they hear NOTIFY on): allowed zone transfers (AXFR, over
    /// TCP) and told of every change (NOTIFY).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<String>,
}

impl Default for Rdns {
    fn default() -> Self {
        Self {
            listen: None,
            nameservers: Vec::new(),
            soa: Soa::default(),
            default_template: None,
            require_forward_match: true,
            secondaries: Vec::new(),
        }
    }
}

/// The SOA of the reverse zones; times in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Soa {
    /// The primary server's name.
    #[serde(default = "default_soa_mname")]
    pub mname: String,
    /// The zone's contact, as a name (`hostmaster.example.net`).
    #[serde(default = "default_soa_rname")]
    pub rname: String,
    #[serde(default = "default_soa_refresh")]
    pub refresh: u32,
    #[serde(default = "default_soa_retry")]
    pub retry: u32,
    #[serde(default = "default_soa_expire")]
    pub expire: u32,
    /// Also the TTL of every answer, positive and negative.
    #[serde(default = "default_soa_minimum")]
    pub minimum: u32,
}

impl Default for Soa {
    fn default() -> Self {
        Self {
            mname: default_soa_mname(),
            rname: default_soa_rname(),
            refresh: default_soa_refresh(),
            retry: default_soa_retry(),
            expire: default_soa_expire(),
            minimum: default_soa_minimum(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_soa_mname() -> String {
    "ns1.stratus.invalid".into()
}
fn default_soa_rname() -> String {
    "hostmaster.stratus.invalid".into()
}
fn default_soa_refresh() -> u32 {
    3600
}
fn default_soa_retry() -> u32 {
    600
}
fn default_soa_expire() -> u32 {
    1_209_600
}
fn default_soa_minimum() -> u32 {
    300
}

/// Most secondaries and name servers `rdns:` may list.
const MAX_RDNS_SERVERS: usize = 16;

impl Rdns {
    /// Where the DNS server listens, when configured and valid.
    pub fn listen_address(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }

    /// The secondaries: where each hears NOTIFY (its address is the one
    /// allowed zone transfers).
    pub fn secondary_addresses(&self) -> Vec<std::net::SocketAddr> {
        self.secondaries
            .iter()
            .filter_map(|s| crate::rdns::secondary(s))
            .collect()
    }

    /// The NS records' names: the configured ones, else the SOA's own.
    pub fn nameserver_names(&self) -> Vec<String> {
        if self.nameservers.is_empty() {
            vec![self.soa.mname.clone()]
        } else {
            self.nameservers.clone()
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: String, message: &str| Err((field, message.to_owned()));
        if self.listen.is_some() && self.listen_address().is_none() {
            return invalid(
                "rdns.listen".into(),
                "must be an address and port such as 0.0.0.0:53",
            );
        }
        let name = |name: &str| {
            let bare = name.trim_end_matches('.');
            validate::is_hostname(bare) && bare.contains('.')
        };
        if self.nameservers.len() > MAX_RDNS_SERVERS {
            return invalid("rdns.nameservers".into(), "lists at most 16 names");
        }
        for (i, server) in self.nameservers.iter().enumerate() {
            if !name(server) {
                return invalid(format!("rdns.nameservers[{i}]"), "must be a DNS name");
            }
        }
        for (field, value) in [("mname", &self.soa.mname), ("rname", &self.soa.rname)] {
            if !name(value) {
                return invalid(format!("rdns.soa.{field}"), "must be a DNS name");
            }
        }
        if self.soa.refresh == 0 || self.soa.retry == 0 || self.soa.expire == 0 {
            return invalid(
                "rdns.soa".into(),
                "refresh, retry and expire must be positive",
            );
        }
        if let Some(template) = &self.default_template {
            // The longest addresses it will be filled with must make names.
            let too_long = ["ffff-ffff-ffff-ffff-ffff-ffff-ffff-ffff", "255-255-255-255"]
                .iter()
                .any(|dashed| {
                    crate::rdns::check_hostname(&template.replace("{ip-dashed}", dashed)).is_err()
                });
            if !template.contains("{ip-dashed}") || too_long {
                return invalid(
                    "rdns.defaultTemplate".into(),
                    "must be a DNS name containing {ip-dashed}, such as static-{ip-dashed}.example.net",
                );
            }
        }
        if self.secondaries.len() > MAX_RDNS_SERVERS {
            return invalid("rdns.secondaries".into(), "lists at most 16 addresses");
        }
        for (i, secondary) in self.secondaries.iter().enumerate() {
            if crate::rdns::secondary(secondary).is_none() {
                return invalid(
                    format!("rdns.secondaries[{i}]"),
                    "must be an IP address, or an address and the port it hears NOTIFY on",
                );
            }
        }
        Ok(())
    }
}

/// Request rate limits of the REST API, per token: a bucket of `burst`
/// requests refilled at `requestsPerSecond`. A token that empties it is
/// answered 429 with `Retry-After` until the bucket refills, so one
/// customer's script cannot starve the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests with a token that is unknown or revoked one client address
    /// may make per minute (a burst of as many); beyond, it is answered 429
    /// without the token being looked up. The address is the connection's,
    /// or the `X-Forwarded-For` client's behind a `trustedProxies` entry.
    #[serde(default = "default_invalid_tokens_per_minute")]
    pub invalid_tokens_per_minute: u32,
}

fn default_invalid_tokens_per_minute() -> u32 {
    60
}

fn default_requests_per_second() -> u32 {
    20
}

fn default_burst() -> u32 {
    100
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            invalid_tokens_per_minute: default_invalid_tokens_per_minute(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            plans: default_plans(),
            images: default_images(),
            rescue_image: None,
            quotas: Quota::default(),
            limits: Limits::default(),
            trusted_proxies: Vec::new(),
            rdns: Rdns::default(),
            policy: Policy::default(),
            ip_pools: None,
            dnsbl: Dnsbl::default(),
            notifications: Notifications::default(),
            cloud_init: CloudInitConfig::default(),
            local_hypervisors: Vec::new(),
        }
    }
}

fn default_plans() -> Vec<Plan> {
    let plan = |name: &str, vcpus, memory_mib, disk_gib| Plan {
        name: name.to_owned(),
        vcpus,
        memory_mib,
        disk_gib,
    };
    vec![
        plan("small", 1, 1024, 25),
        plan("medium", 2, 4096, 80),
        plan("large", 4, 8192, 160),
        plan("xlarge", 8, 16384, 320),
    ]
}

fn default_images() -> Vec<Image> {
    let image = |name: &str, volume: &str, description: &str| Image {
        name: name.to_owned(),
        volume: volume.to_owned(),
        description: description.to_owned(),
        size_gib: default_image_size_gib(),
        kernel: None,
        initrd: None,
        cmdline: None,
    };
    vec![
        image("debian-12", "debian-12.qcow2", "Debian 12 (bookworm)"),
        image("ubuntu-24.04", "ubuntu-24.04.qcow2", "Ubuntu 24.04 LTS"),
        image("alma-9", "alma-9.qcow2", "AlmaLinux 9"),
    ]
}

impl Config {
    /// `trustedProxies` as networks (a bare address is a network of one).
    pub fn trusted_proxy_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| {
                p.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect()
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // The path names the key in error, however deep (`policy.billing.suspendAfter`).
        let config: Config = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            text,
        ))
        .map_err(|error| {
            let field = error.path().to_string();
            let inner = error.into_inner();
            if field.is_empty() || field == "." {
                ConfigError::Parse(inner)
            } else {
                ConfigError::Invalid {
                    field,
                    message: inner.to_string(),
                }
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Every seeded pool must be valid, uniquely named, and share no
    /// address with another.
    fn validate_pools(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        let mut layouts: Vec<(&str, crate::ip::PoolLayout)> = Vec::new();
        for (i, pool) in self.ip_pools.iter().flatten().enumerate() {
            if !validate::is_dns_label(&pool.name) {
                return Err(invalid(
                    format!("ipPools[{i}].name"),
                    "must be a DNS label: lower-case letters, digits and '-' (1-63)".into(),
                ));
            }
            let layout = pool
                .spec()
                .layout()
                .map_err(|e| invalid(format!("ipPools[{i}].{}", e.field), e.message))?;
            for (other, other_layout) in &layouts {
                if *other == pool.name {
                    return Err(invalid(
                        format!("ipPools[{i}].name"),
                        "duplicate pool name".into(),
                    ));
                }
                if let Some(family) = layout.overlap(other_layout) {
                    return Err(invalid(
                        format!("ipPools[{i}].{family}"),
                        format!("overlaps the {family} addresses of pool {other}"),
                    ));
                }
            }
            layouts.push((&pool.name, layout));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| ConfigError::Invalid {
            field,
            message: message.to_owned(),
        };
        if self.plans.is_empty() {
            return Err(invalid("plans".into(), "at least one plan is required"));
        }
        if self.limits.requests_per_second == 0 {
            return Err(invalid(
                "limits.requestsPerSecond".into(),
                "must be at least 1",
            ));
        }
        if self.limits.invalid_tokens_per_minute == 0 {
            return Err(invalid(
                "limits.invalidTokensPerMinute".into(),
                "must be at least 1",
            ));
        }
        if self.trusted_proxies.len() > 1_000 {
            return Err(invalid("trustedProxies".into(), "at most 1000 entries"));
        }
        for (i, proxy) in self.trusted_proxies.iter().enumerate() {
            if proxy.parse::<ipnet::IpNet>().is_err() && proxy.parse::<std::net::IpAddr>().is_err()
            {
                return Err(invalid(
                    format!("trustedProxies[{i}]"),
                    "not an address or a CIDR (10.0.0.0/8, 2001:db8::/32)",
                ));
            }
        }
        if self.limits.burst == 0 {
            return Err(invalid("limits.burst".into(), "must be at least 1"));
        }
        self.policy
            .validate()
            .map_err(|(field, message)| invalid(field, &message))?;
        self.dnsbl
            .validate()
            .map_err(|(field, message)| invalid(field, &message))?;
        self.rdns
            .validate()
            .map_err(|(field, message)| invalid(field, &message))?;
        self.notifications
            .validate()
            .map_err(|(field, message)| invalid(field, &message))?;
        self.validate_pools()?;
        let mut seen = BTreeSet::new();
        for (i, plan) in self.plans.iter().enumerate() {
            if !validate::is_slug(&plan.name) {
                return Err(invalid(
                    format!("plans[{i}].name"),
                    "must be lower-case letters, digits, '-' or '.' (1-63)",
                ));
            }
            if !seen.insert(&plan.name) {
                return Err(invalid(format!("plans[{i}].name"), "duplicate plan name"));
            }
            if plan.vcpus == 0 || plan.memory_mib == 0 || plan.disk_gib == 0 {
                return Err(invalid(
                    format!("plans[{i}]"),
                    "vcpus, memoryMib and diskGib must be positive",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, image) in self.images.iter().enumerate() {
            if !validate::is_slug(&image.name) {
                return Err(invalid(
                    format!("images[{i}].name"),
                    "must be lower-case letters, digits, '-' or '.' (1-63)",
                ));
            }
            if !seen.insert(&image.name) {
                return Err(invalid(format!("images[{i}].name"), "duplicate image name"));
            }
            if image.volume.is_empty() || image.volume.contains('/') {
                return Err(invalid(
                    format!("images[{i}].volume"),
                    "must be a volume name in the image pool",
                ));
            }
            image
                .validate(&format!("images[{i}]"))
                .map_err(|(field, message)| invalid(field, &message))?;
        }
        if let Some(rescue) = &self.rescue_image
            && self.image(rescue).is_none()
        {
            return Err(invalid("rescueImage".into(), "must name one of `images`"));
        }
        self.cloud_init
            .validate()
            .map_err(|(field, message)| invalid(field, &message))?;
        let mut seen = BTreeSet::new();
        for (i, hypervisor) in self.local_hypervisors.iter().enumerate() {
            let at = format!("localHypervisors[{i}]");
            hypervisor
                .validate(&at)
                .map_err(|(field, message)| invalid(field, &message))?;
            if !seen.insert(&hypervisor.name) {
                return Err(invalid(format!("{at}.name"), "duplicate hypervisor name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdns_is_read_with_its_defaults_and_checked() {
        let config = Config::from_yaml(
            "rdns:\n  listen: 127.0.0.1:5300\n  defaultTemplate: static-{ip-dashed}.example.net\n  secondaries: [192.0.2.53]\n  soa: {mname: ns1.example.net, rname: hostmaster.example.net}\n",
        )
        .unwrap();
        assert_eq!(
            config.rdns.listen_address(),
            Some("127.0.0.1:5300".parse().unwrap())
        );
        assert!(config.rdns.require_forward_match);
        assert_eq!(config.rdns.nameserver_names(), ["ns1.example.net"]);
        assert_eq!(config.rdns.soa.minimum, 300);
        assert_eq!(Config::default().rdns.listen, None);
        for (yaml, field) in [
            ("rdns: {listen: port53}\n", "rdns.listen"),
            (
                "rdns: {defaultTemplate: static.example.net}\n",
                "rdns.defaultTemplate",
            ),
            (
                "rdns: {secondaries: [ns2.example.net]}\n",
                "rdns.secondaries[0]",
            ),
            ("rdns: {nameservers: [ns1]}\n", "rdns.nameservers[0]"),
            ("rdns: {soa: {rname: 'a b'}}\n", "rdns.soa.rname"),
            ("rdns: {servers: []}\n", "servers"),
        ] {
            let error = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(field), "{yaml}: {error}");
        }
    }

    #[test]
    fn the_rescue_image_must_be_one_of_the_images() {
        let config = Config::from_yaml("rescueImage: debian-12\n").unwrap();
        assert_eq!(config.rescue_image.as_deref(), Some("debian-12"));
        assert_eq!(Config::default().rescue_image, None);
        let error = Config::from_yaml("rescueImage: nope\n").unwrap_err();
        assert!(error.to_string().contains("rescueImage"), "{error}");
    }

    #[test]
    fn local_hypervisors_and_kernel_boot_images_are_read_and_checked() {
        let config = Config::from_yaml(
            "images:\n  - {name: tiny, volume: tiny.qcow2, kernel: /srv/vmlinuz, initrd: /srv/initrd.img, cmdline: console=ttyS0}\n\
             localHypervisors:\n  - {name: hv-a, zone: a, libvirtUri: 'qemu:///system?socket=/run/x', pool: p, network: n, domainType: qemu, cpuOvercommit: 8}\n\
             cloudInit: {dnsServers: [10.0.0.1]}\n",
        )
        .unwrap();
        let boot = config.image("tiny").unwrap().kernel_boot().unwrap();
        assert_eq!(boot.kernel, "/srv/vmlinuz");
        assert_eq!(boot.cmdline.as_deref(), Some("console=ttyS0"));
        assert_eq!(config.local_hypervisors[0].cpu_overcommit, 8.0);
        assert_eq!(config.local_hypervisors[0].console_dir, None);
        assert_eq!(config.cloud_init.dns_servers, ["10.0.0.1"]);
        let hypervisor = "{name: hv-a, zone: a, libvirtUri: 'qemu:///system', pool: p, network: n, domainType: qemu";
        for (yaml, field) in [
            (
                "images:\n  - {name: t, volume: v, kernel: vmlinuz}\n".to_owned(),
                "images[0].kernel",
            ),
            (
                "images:\n  - {name: t, volume: v, cmdline: quiet}\n".to_owned(),
                "images[0].kernel",
            ),
            (
                "images:\n  - {name: t, volume: v, kernel: /k, cmdline: \"a\\nb\"}\n".to_owned(),
                "images[0].cmdline",
            ),
            (
                format!("localHypervisors:\n  - {hypervisor}, cpuOvercommit: 0.5}}\n"),
                "localHypervisors[0].cpuOvercommit",
            ),
            (
                format!("localHypervisors:\n  - {hypervisor}, domainType: xen}}\n")
                    .replace("domainType: qemu, ", ""),
                "localHypervisors[0].domainType",
            ),
            (
                format!("localHypervisors:\n  - {hypervisor}, consoleDir: logs}}\n"),
                "localHypervisors[0].consoleDir",
            ),
            (
                format!("localHypervisors:\n  - {hypervisor}}}\n  - {hypervisor}}}\n"),
                "localHypervisors[1].name",
            ),
            (
                format!("localHypervisors:\n  - {hypervisor}, guessKvm: true}}\n"),
                "localHypervisors[0]",
            ),
            (
                "cloudInit: {dnsServers: [resolver]}\n".to_owned(),
                "cloudInit.dnsServers[0]",
            ),
        ] {
            let error = Config::from_yaml(&yaml).unwrap_err().to_string();
            assert!(error.contains(field), "{yaml}: {error}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::from_yaml("{}").unwrap(), Config::default());
    }

    #[test]
    fn parses_plans_and_images() {
        let config = Config::from_yaml(
            "plans:\n  - {name: tiny, vcpus: 1, memoryMib: 512, diskGib: 10}\nimages:\n  - {name: debian-12, volume: deb.qcow2}\n",
        )
        .unwrap();
        assert_eq!(config.plan("tiny").unwrap().memory_mib, 512);
        assert_eq!(config.image("debian-12").unwrap().volume, "deb.qcow2");
        assert!(config.plan("small").is_none());
    }

    #[test]
    fn policy_keys_are_named_in_errors() {
        let cases = [
            (
                "policy: {billing: {suspendAftr: 15d}}\n",
                "policy.billing.suspendAftr",
                "suspendAftr",
            ),
            (
                "policy: {billing: {suspendAfter: -15d}}\n",
                "policy.billing.suspendAfter",
                "-15d",
            ),
            (
                "policy: {abuse: {suspensionMode: deleted}}\n",
                "policy.abuse.suspensionMode",
                "deleted",
            ),
            (
                "policy: {abuse: {feePerReport: -1}}\n",
                "policy.abuse.feePerReport",
                "-1",
            ),
            (
                "policy: {dnsbl: {sweepInterval: 0s}}\n",
                "policy.dnsbl.sweepInterval",
                "0s",
            ),
            ("policy: {polcy: 1}\n", "policy.polcy", "polcy"),
        ];
        for (yaml, field, quoted) in cases {
            match Config::from_yaml(yaml).unwrap_err() {
                ConfigError::Invalid {
                    field: named,
                    message,
                } => {
                    assert_eq!(named, field, "{yaml}: {message}");
                    assert!(
                        message.contains(quoted) || field.ends_with("sweepInterval"),
                        "{yaml}: {message}"
                    );
                }
                other => panic!("{yaml}: {other}"),
            }
        }
        let config = Config::from_yaml("policy: {billing: {suspendAfter: 0s}}\n").unwrap();
        assert!(config.policy.billing.suspend_after.is_zero());
    }

    #[test]
    fn ip_pools_and_blacklists_are_checked_naming_the_field() {
        let pools =
            "ipPools:\n  - {name: a, zone: fra1, ipv4: {cidr: 192.0.2.0/24, gateway: 192.0.2.1}}\n";
        let config = Config::from_yaml(pools).unwrap();
        assert_eq!(config.ip_pools.as_ref().unwrap()[0].spec().zone, "fra1");
        let cases = [
            (
                format!("{pools}  - {{name: b, zone: fra1, ipv4: {{cidr: 192.0.2.128/25, gateway: 192.0.2.129}}}}\n"),
                "ipPools[1].ipv4",
            ),
            (
                format!("{pools}  - {{name: a, zone: fra1, ipv4: {{cidr: 198.51.100.0/24, gateway: 198.51.100.1}}}}\n"),
                "ipPools[1].name",
            ),
            (
                "ipPools:\n  - {name: a, zone: z, ipv4: {cidr: 192.0.2.0/24, gateway: 10.0.0.1}}\n".into(),
                "ipPools[0].ipv4.gateway",
            ),
            (
                "ipPools:\n  - {name: a, zone: z, ipv4: {cidr: 192.0.2.0/24, gateway: 192.0.2.1, exclude: []}}\n".into(),
                "ipPools[0].ipv4.exclude",
            ),
            ("dnsbl: {zones: [{name: 'not a zone'}]}\n".into(), "dnsbl.zones[0].name"),
            ("dnsbl: {zones: ['not a zone']}\n".into(), "dnsbl.zones[0].name"),
            ("dnsbl: {zones: [{name: bl.test, weight: 2}]}\n".into(), "dnsbl.zones[0].weight"),
            ("dnsbl: {zones: [{name: bl.test, mode: loud}]}\n".into(), "dnsbl.zones[0].mode"),
            ("dnsbl: {resolver: localhost}\n".into(), "dnsbl.resolver"),
            ("dnsbl: {concurrency: 0}\n".into(), "dnsbl.concurrency"),
        ];
        for (yaml, field) in cases {
            match Config::from_yaml(&yaml).unwrap_err() {
                ConfigError::Invalid { field: named, .. } => assert_eq!(named, field, "{yaml}"),
                other => panic!("{yaml}: {other}"),
            }
        }
        let dnsbl = Config::from_yaml(
            "dnsbl: {zones: [{name: bl.test}, {name: info.test, mode: informational}], resolver: '127.0.0.1:5353'}\n",
        )
        .unwrap()
        .dnsbl;
        assert_eq!(dnsbl.zones[0].mode, ZoneMode::Blocking);
        assert_eq!(dnsbl.zones[1].mode, ZoneMode::Informational);
        // The plain form users write first: a blocking zone by its name.
        let plain = Config::from_yaml(
            "dnsbl: {zones: [zen.spamhaus.org, {name: info.test, mode: informational}]}\n",
        )
        .unwrap()
        .dnsbl;
        assert_eq!(
            plain.zones,
            [
                DnsblZone {
                    name: "zen.spamhaus.org".into(),
                    mode: ZoneMode::Blocking
                },
                DnsblZone {
                    name: "info.test".into(),
                    mode: ZoneMode::Informational
                },
            ]
        );
        assert_eq!(
            dnsbl.resolver_address(),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        SeededPool::documentation()[0].spec().layout().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_yaml("plnas: []\n").unwrap_err().to_string();
        assert!(err.contains("plnas"), "{err}");
        let err = Config::from_yaml(
            "plans:\n  - {name: a, vcpus: 1, memoryMib: 1, diskGib: 1, gpu: 1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gpu"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let err = Config::from_yaml("plans:\n  - {name: a, vcpus: 0, memoryMib: 1, diskGib: 1}\n")
            .unwrap_err();
        assert!(err.to_string().contains("plans[0]"), "{err}");
        let err = Config::from_yaml(
            "plans:\n  - {name: a, vcpus: 1, memoryMib: 1, diskGib: 1}\n  - {name: a, vcpus: 1, memoryMib: 1, diskGib: 1}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        let err = Config::from_yaml("images:\n  - {name: 'Bad Name', volume: x}\n").unwrap_err();
        assert!(err.to_string().contains("images[0].name"), "{err}");
    }
}
