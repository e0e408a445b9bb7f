//! libvirt XML for the domains and volumes the agent creates, built from
//! typed structures through a small element writer: a new device (a NIC
//! with a traffic filter, an extra disk, a cloud-init CD-ROM) is a new field
//! or list entry, never string surgery, and every value is escaped.

use std::net::IpAddr;

use ipnet::IpNet;
use stratus_core::agent_api::{DataDisk, DomainSpec, KernelBoot};

use crate::error::AgentError;

mod described;
pub use described::{
    DefinedDataDisk, DescribedDisk, DescribedInterface, DomainDescription, PluggedDisk,
    domain_types_offered, metadata_agent, pool_path, volume_is_luks,
};

/// One XML element: a name, attributes in order, and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: &'static str,
    attributes: Vec<(&'static str, String)>,
    children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn attr(mut self, key: &'static str, value: impl ToString) -> Self {
        self.attributes.push((key, value.to_string()));
        self
    }

    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    pub fn children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children
            .extend(children.into_iter().map(Node::Element));
        self
    }

    pub fn text(mut self, text: impl ToString) -> Self {
        self.children.push(Node::Text(text.to_string()));
        self
    }

    /// `<name>text</name>` in one call.
    pub fn with_text(name: &'static str, text: impl ToString) -> Self {
        Self::new(name).text(text)
    }

    /// The document, indented by two spaces per level.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        out.push_str(&indent);
        out.push('<');
        out.push_str(self.name);
        for (key, value) in &self.attributes {
            out.push(' ');
            out.push_str(key);
            out.push_str("='");
            out.push_str(&escape(value));
            out.push('\'');
        }
        match self.children.as_slice() {
            [] => out.push_str("/>\n"),
            [Node::Text(text)] => {
                out.push('>');
                out.push_str(&escape(text));
                out.push_str("</");
                out.push_str(self.name);
                out.push_str(">\n");
            }
            children => {
                out.push_str(">\n");
                for child in children {
                    match child {
                        Node::Element(element) => element.write(out, depth + 1),
                        Node::Text(text) => {
                            out.push_str(&"  ".repeat(depth + 1));
                            out.push_str(&escape(text));
                            out.push('\n');
                        }
                    }
                }
                out.push_str(&indent);
                out.push_str("</");
                out.push_str(self.name);
                out.push_str(">\n");
            }
        }
    }
}

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A disk backed by a volume of a storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub pool: String,
    pub volume: String,
    /// Guest device name, e.g. `vda`.
    pub target: String,
    /// Volume format, e.g. `qcow2`.
    pub format: String,
    /// The serial the guest sees; a storage subscription's id marks a
    /// data disk.
    pub serial: Option<String>,
    /// The libvirt secret holding the key of a LUKS volume.
    pub key_secret: Option<String>,
}

impl Disk {
    pub fn element(&self) -> Element {
        Element::new("disk")
            .attr("type", "volume")
            .attr("device", "disk")
            .child(
                Element::new("driver")
                    .attr("name", "qemu")
                    .attr("type", &self.format)
                    .attr("discard", "unmap"),
            )
            .child(
                Element::new("source")
                    .attr("pool", &self.pool)
                    .attr("volume", &self.volume)
                    .children(self.key_secret.iter().map(|uuid| {
                        Element::new("encryption").attr("format", "luks").child(
                            Element::new("secret")
                                .attr("type", "passphrase")
                                .attr("uuid", uuid),
                        )
                    })),
            )
            .child(
                Element::new("target")
                    .attr("dev", &self.target)
                    .attr("bus", "virtio"),
            )
            .children(
                self.serial
                    .iter()
                    .map(|serial| Element::with_text("serial", serial)),
            )
    }

    /// A storage subscription's copy as a disk of `pool` at `target`.
    pub fn data(pool: &str, disk: &DataDisk, target: String) -> Self {
        Self {
            pool: pool.to_owned(),
            volume: disk.volume.clone(),
            target,
            format: "raw".to_owned(),
            serial: Some(disk.serial.clone()),
            key_secret: None,
        }
    }
}

/// The serial of the system disk in rescue mode.
pub const SYSTEM_DISK_SERIAL: &str = "stratus-system";

/// The first device name of the data range none of `used` has.
pub fn first_free_target(used: &[String]) -> Result<String, AgentError> {
    DATA_DISK_TARGETS
        .map(|letter| format!("vd{}", char::from(letter)))
        .find(|name| !used.contains(name))
        .ok_or_else(|| AgentError::BadRequest("no device name left for the system disk".into()))
}

/// Guest device names of data disks: `vda` is the system disk.
const DATA_DISK_TARGETS: std::ops::RangeInclusive<u8> = b'b'..=b'z';

/// Gives each wanted data disk a device name: the one the domain already
/// has for it, else the first one nothing in `taken` or `defined` uses, so
/// a disk keeps its name across definitions and hot-plugs.
pub fn data_disk_targets(
    wanted: &[DataDisk],
    defined: &[DefinedDataDisk],
    taken: &[String],
) -> Result<Vec<(DataDisk, String)>, AgentError> {
    let mut used: Vec<String> = taken.to_vec();
    used.extend(defined.iter().map(|d| d.target.clone()));
    let mut assigned = Vec::with_capacity(wanted.len());
    for disk in wanted {
        let target = match defined.iter().find(|d| d.serial == disk.serial) {
            Some(existing) => existing.target.clone(),
            None => {
                let free = DATA_DISK_TARGETS
                    .map(|letter| format!("vd{}", char::from(letter)))
                    .find(|name| !used.contains(name))
                    .ok_or_else(|| {
                        AgentError::BadRequest(format!(
                            "data_disks: no device name left for {}",
                            disk.serial
                        ))
                    })?;
                used.push(free.clone());
                free
            }
        };
        assigned.push((disk.clone(), target));
    }
    Ok(assigned)
}

/// A read-only CD-ROM backed by a volume (the cloud-init seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdrom {
    pub pool: String,
    pub volume: String,
    /// Guest device name on the IDE bus, e.g. `hdc`.
    pub target: String,
}

impl Cdrom {
    fn element(&self) -> Element {
        Element::new("disk")
            .attr("type", "volume")
            .attr("device", "cdrom")
            .child(
                Element::new("driver")
                    .attr("name", "qemu")
                    .attr("type", "raw"),
            )
            .child(
                Element::new("source")
                    .attr("pool", &self.pool)
                    .attr("volume", &self.volume),
            )
            .child(
                Element::new("target")
                    .attr("dev", &self.target)
                    .attr("bus", "ide"),
            )
            .child(Element::new("readonly"))
    }
}

/// A libvirt network filter applied to a NIC, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRef {
    pub filter: String,
    pub parameters: Vec<(String, String)>,
}

/// A virtio NIC on a libvirt network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: String,
    pub network: String,
    /// Traffic filter (e.g. `clean-traffic` for anti-spoofing).
    pub filter: Option<FilterRef>,
    /// False while the server's network is cut (an abuse suspension).
    pub link_up: bool,
}

impl Interface {
    /// The element alone, as libvirt's device update calls take it.
    pub fn render(&self) -> String {
        self.element().render()
    }

    fn element(&self) -> Element {
        let mut element = Element::new("interface")
            .attr("type", "network")
            .child(Element::new("mac").attr("address", &self.mac))
            .child(Element::new("source").attr("network", &self.network))
            .child(Element::new("model").attr("type", "virtio"));
        if !self.link_up {
            element = element.child(Element::new("link").attr("state", "down"));
        }
        if let Some(filter) = &self.filter {
            element = element.child(
                Element::new("filterref")
                    .attr("filter", &filter.filter)
                    .children(filter.parameters.iter().map(|(name, value)| {
                        Element::new("parameter")
                            .attr("name", name)
                            .attr("value", value)
                    })),
            );
        }
        element
    }
}

/// A domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// libvirt domain type: `kvm` in production, `qemu` for software
    /// emulation, `test` for libvirt's test driver.
    pub domain_type: String,
    pub name: String,
    /// Set when an existing domain is defined again: libvirt refuses a
    /// definition that names a domain it knows under another UUID.
    pub uuid: Option<String>,
    /// The customer's hostname, shown as the domain's title.
    pub hostname: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disks: Vec<Disk>,
    pub cdroms: Vec<Cdrom>,
    pub interfaces: Vec<Interface>,
    /// Direct kernel boot instead of booting from the disk.
    pub boot: Option<KernelBoot>,
    /// File the serial console is written to (appended across boots);
    /// without one the console is a pty.
    pub console_log: Option<String>,
    /// The agent that defined it, when several share one libvirt daemon.
    pub agent: Option<String>,
}

/// Namespace of the metadata stratus keeps in each domain it defines.
pub const METADATA_NAMESPACE: &str = "https://stratus.dev/xmlns/domain/1";

impl Domain {
    pub fn element(&self) -> Element {
        let memory = |name| Element::with_text(name, self.memory_mib).attr("unit", "MiB");
        Element::new("domain")
            .attr("type", &self.domain_type)
            .child(Element::with_text("name", &self.name))
            .children(
                self.uuid
                    .iter()
                    .map(|uuid| Element::with_text("uuid", uuid)),
            )
            .child(Element::with_text("title", &self.hostname))
            .child(Element::new("metadata").child({
                let server = Element::new("stratus:server")
                    .attr("xmlns:stratus", METADATA_NAMESPACE)
                    .attr("hostname", &self.hostname);
                match &self.agent {
                    Some(agent) => server.attr("agent", agent),
                    None => server,
                }
            }))
            .child(memory("memory"))
            .child(memory("currentMemory"))
            .child(Element::with_text("vcpu", self.vcpus).attr("placement", "static"))
            .child(self.os())
            // libvirt 9 with QEMU 10 refuses a domain without ACPI.
            .child(
                Element::new("features")
                    .child(Element::new("acpi"))
                    .child(Element::new("apic")),
            )
            .child(Element::with_text("on_poweroff", "destroy"))
            .child(Element::with_text("on_reboot", "restart"))
            .child(Element::with_text("on_crash", "destroy"))
            .child(
                Element::new("devices")
                    .children(self.disks.iter().map(Disk::element))
                    .children(self.cdroms.iter().map(Cdrom::element))
                    .children(self.interfaces.iter().map(Interface::element))
                    .children(self.console())
                    // Memory is given to the guest whole: no balloon, so a
                    // guest never holds less than its plan says and the
                    // host's memory accounting is the plan's.
                    .child(Element::new("memballoon").attr("model", "none")),
            )
    }

    fn os(&self) -> Element {
        let os = Element::new("os").child(Element::with_text("type", "hvm").attr("arch", "x86_64"));
        match &self.boot {
            None => os.child(Element::new("boot").attr("dev", "hd")),
            Some(boot) => os
                .child(Element::with_text("kernel", &boot.kernel))
                .children(
                    boot.initrd
                        .iter()
                        .map(|initrd| Element::with_text("initrd", initrd)),
                )
                .children(
                    boot.cmdline
                        .iter()
                        .map(|cmdline| Element::with_text("cmdline", cmdline)),
                ),
        }
    }

    /// The serial port, written to the console log when there is one, and
    /// the console on it.
    fn console(&self) -> Vec<Element> {
        match &self.console_log {
            None => vec![
                Element::new("serial").attr("type", "pty"),
                Element::new("console").attr("type", "pty"),
            ],
            Some(path) => vec![
                Element::new("serial").attr("type", "file").child(
                    Element::new("source")
                        .attr("path", path)
                        .attr("append", "on"),
                ),
                Element::new("console").attr("type", "file").child(
                    Element::new("source")
                        .attr("path", path)
                        .attr("append", "on"),
                ),
            ],
        }
    }

    pub fn render(&self) -> String {
        self.element().render()
    }
}

/// Where a domain's pieces live on this hypervisor.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub domain_type: &'a str,
    pub pool: &'a str,
    pub disk_volume: &'a str,
    pub network: &'a str,
    /// Whether the NIC gets its traffic filter: always, except on a real
    /// hypervisor without nwfilter whose operator accepted running unfiltered.
    pub filter: bool,
    /// The cloud-init seed volume, when the server has one.
    pub seed_volume: Option<&'a str>,
    pub console_log: Option<String>,
    /// The agent defining it, recorded in its metadata.
    pub agent: Option<&'a str>,
    /// The spec's data disks with their device names.
    pub data_disks: &'a [(DataDisk, String)],
    /// Rescue mode: the rescue disk, booted as `vda`.
    pub rescue_volume: Option<&'a str>,
    /// The system disk's device name: `vda`, or in rescue mode the first
    /// one after the data disks.
    pub system_target: &'a str,
}

/// The domain of a server: its system disk and one NIC, whose traffic
/// filter lets it send only from its MAC and addresses (R19). The addresses
/// are checked here: a malformed one is refused, never passed to libvirt.
pub fn domain(
    name: &str,
    spec: &DomainSpec,
    placement: &Placement<'_>,
) -> Result<Domain, AgentError> {
    Ok(Domain {
        domain_type: placement.domain_type.to_owned(),
        name: name.to_owned(),
        uuid: None,
        hostname: spec.hostname.clone(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        disks: placement
            .rescue_volume
            .map(|rescue| Disk {
                pool: placement.pool.to_owned(),
                volume: rescue.to_owned(),
                target: "vda".to_owned(),
                format: "qcow2".to_owned(),
                serial: None,
                key_secret: None,
            })
            .into_iter()
            .chain(std::iter::once(Disk {
                pool: placement.pool.to_owned(),
                volume: placement.disk_volume.to_owned(),
                target: placement.system_target.to_owned(),
                format: "qcow2".to_owned(),
                // Found by the rescue system as
                // /dev/disk/by-id/virtio-stratus-system.
                serial: placement
                    .rescue_volume
                    .map(|_| SYSTEM_DISK_SERIAL.to_owned()),
                key_secret: None,
            }))
            .chain(
                placement
                    .data_disks
                    .iter()
                    .map(|(disk, target)| Disk::data(placement.pool, disk, target.clone())),
            )
            .collect(),
        cdroms: placement
            .seed_volume
            .iter()
            .map(|volume| Cdrom {
                pool: placement.pool.to_owned(),
                volume: (*volume).to_owned(),
                target: "hdc".to_owned(),
            })
            .collect(),
        boot: match (&spec.rescue, placement.rescue_volume) {
            (Some(rescue), Some(_)) => rescue.boot.clone(),
            _ => spec.boot.clone(),
        },
        console_log: placement.console_log.clone(),
        agent: placement.agent.map(str::to_owned),
        interfaces: vec![Interface {
            mac: spec.mac_address.clone(),
            network: placement.network.to_owned(),
            filter: placement.filter.then(|| traffic_filter(spec)).transpose()?,
            link_up: spec.link_up(),
        }],
    })
}

/// libvirt's own anti-spoofing filter: only the NIC's MAC, only its IPv4
/// address (`IP`), ARP only for them, and no IPv6 at all.
pub const CLEAN_TRAFFIC: &str = "clean-traffic";
/// stratus's filter for a NIC with an IPv6 prefix: `clean-traffic` plus
/// IPv6 from the server's own prefix (and link-local, for neighbour
/// discovery).
pub const DUAL_STACK_FILTER: &str = "stratus-clean-traffic";
/// The IPv6 half of [`DUAL_STACK_FILTER`].
pub const IPV6_FILTER: &str = "stratus-no-ipv6-spoofing";

/// The filter for a server's NIC. A server with no address yet (one placed
/// by a release before addresses were allocated) gets `clean-traffic`
/// without `IP`: libvirt then allows the first IPv4 address the guest uses,
/// and only that one.
pub fn traffic_filter(spec: &DomainSpec) -> Result<FilterRef, AgentError> {
    let mut parameters = Vec::new();
    if let Some(ipv4) = &spec.ipv4 {
        let address: IpAddr = parse("ipv4.address", &ipv4.address)?;
        if !address.is_ipv4() {
            return Err(AgentError::BadRequest(format!(
                "ipv4.address: {address} is not an IPv4 address"
            )));
        }
        parameters.push(("IP".to_owned(), address.to_string()));
    }
    let Some(ipv6) = &spec.ipv6 else {
        return Ok(FilterRef {
            filter: CLEAN_TRAFFIC.to_owned(),
            parameters,
        });
    };
    let prefix: IpNet = parse("ipv6.prefix", ipv6.prefix.as_deref().unwrap_or_default())?;
    let IpNet::V6(prefix) = prefix.trunc() else {
        return Err(AgentError::BadRequest(format!(
            "ipv6.prefix: {prefix} is not an IPv6 prefix"
        )));
    };
    let address: IpAddr = parse("ipv6.address", &ipv6.address)?;
    if !IpNet::V6(prefix).contains(&address) {
        return Err(AgentError::BadRequest(format!(
            "ipv6.address: {address} is outside the server's prefix {prefix}"
        )));
    }
    parameters.push(("IPV6_PREFIX".to_owned(), prefix.network().to_string()));
    parameters.push((
        "IPV6_PREFIX_LENGTH".to_owned(),
        prefix.prefix_len().to_string(),
    ));
    Ok(FilterRef {
        filter: DUAL_STACK_FILTER.to_owned(),
        parameters,
    })
}

fn parse<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, AgentError> {
    text.parse()
        .map_err(|_| AgentError::BadRequest(format!("{field}: {text:?} is not valid")))
}

/// The filters stratus defines on every hypervisor that supports them, in
/// the order they must be defined (a filter only references defined ones).
/// `uuid_of` gives the UUID of a filter already defined: libvirt refuses a
/// new definition of an existing filter that does not carry it.
pub fn network_filters(uuid_of: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    let uuid = |name: &str| uuid_of(name).map(|uuid| Element::with_text("uuid", uuid));
    let rule = |action: &str, priority: u32| {
        Element::new("rule")
            .attr("action", action)
            .attr("direction", "out")
            .attr("priority", priority)
    };
    let source = |address: &str, mask: &str| {
        Element::new("ipv6")
            .attr("srcipaddr", address)
            .attr("srcipmask", mask)
    };
    // Chains jump from the root chain in priority order: this one (-610)
    // runs before the root's IPv6 accept (-600), like `no-ip-spoofing`
    // (-710) before `clean-traffic`'s IPv4 accept (-650).
    let ipv6 = Element::new("filter")
        .attr("name", IPV6_FILTER)
        .attr("chain", "ipv6-ip")
        .attr("priority", -610)
        .children(uuid(IPV6_FILTER))
        // Link-local sources: neighbour and router discovery.
        .child(rule("return", 100).child(source("fe80::", "10")))
        // The unspecified source: duplicate address detection.
        .child(rule("return", 100).child(source("::", "128")))
        .child(rule("return", 200).child(source("$IPV6_PREFIX", "$IPV6_PREFIX_LENGTH")))
        .child(rule("drop", 1000));
    let dual_stack = Element::new("filter")
        .attr("name", DUAL_STACK_FILTER)
        .attr("chain", "root")
        .children(uuid(DUAL_STACK_FILTER))
        .child(Element::new("filterref").attr("filter", CLEAN_TRAFFIC))
        .child(Element::new("filterref").attr("filter", IPV6_FILTER))
        // `clean-traffic` ends by dropping every other protocol (priority
        // 1000): IPv6 that passed the chain above is accepted before that.
        .child(
            Element::new("rule")
                .attr("action", "accept")
                .attr("direction", "inout")
                .attr("priority", -600)
                .child(Element::new("mac").attr("protocolid", "ipv6")),
        );
    vec![
        (IPV6_FILTER, ipv6.render()),
        (DUAL_STACK_FILTER, dual_stack.render()),
    ]
}

fn volume(name: &str, capacity_gib: u64) -> Element {
    Element::new("volume")
        .child(Element::with_text("name", name))
        .child(Element::with_text("capacity", capacity_gib).attr("unit", "GiB"))
        .child(Element::with_text("allocation", 0))
        .child(Element::new("target").child(Element::new("format").attr("type", "qcow2")))
}

/// A qcow2 overlay on the image, grown to the plan's size: copy-on-write, so
/// creating a server does not copy the image.
pub fn overlay_volume(name: &str, capacity_gib: u64, backing_path: &str) -> String {
    volume(name, capacity_gib)
        .child(
            Element::new("backingStore")
                .child(Element::with_text("path", backing_path))
                .child(Element::new("format").attr("type", "qcow2")),
        )
        .render()
}

/// A raw volume of `bytes` for a cloud-init seed ISO, filled by upload.
pub fn seed_volume(name: &str, bytes: u64) -> String {
    Element::new("volume")
        .child(Element::with_text("name", name))
        .child(Element::with_text("capacity", bytes).attr("unit", "bytes"))
        .child(Element::with_text("allocation", 0))
        .child(Element::new("target").child(Element::new("format").attr("type", "raw")))
        .render()
}

/// A raw, sparse volume for one copy of a storage subscription: its
/// bytes are the customer's content as uploaded, with no format around
/// them, so a copy's checksum is the checksum of the content.
pub fn storage_volume(name: &str, capacity_gib: u64) -> String {
    Element::new("volume")
        .child(Element::with_text("name", name))
        .child(Element::with_text("capacity", capacity_gib).attr("unit", "GiB"))
        .child(Element::with_text("allocation", 0))
        .child(Element::new("target").child(Element::new("format").attr("type", "raw")))
        .render()
}

/// A push-mode backup of the domain's disk `device` into the raw file
/// `target_path` (which exists: the pool's volume), every other disk of
/// `all_devices` left out.
pub fn push_backup(device: &str, target_path: &str, all_devices: &[String]) -> String {
    let mut disks = Element::new("disks");
    for other in all_devices.iter().filter(|d| d.as_str() != device) {
        disks = disks.child(
            Element::new("disk")
                .attr("name", other)
                .attr("backup", "no"),
        );
    }
    disks = disks.child(
        Element::new("disk")
            .attr("name", device)
            .attr("backup", "yes")
            .attr("type", "file")
            .child(Element::new("driver").attr("type", "raw"))
            .child(Element::new("target").attr("file", target_path)),
    );
    Element::new("domainbackup")
        .attr("mode", "push")
        .child(disks)
        .render()
}

/// A LUKS volume of `capacity_bytes` for a guest, formatted by libvirt
/// with the key in secret `secret_uuid`.
pub fn luks_volume(name: &str, capacity_bytes: u64, secret_uuid: &str) -> String {
    Element::new("volume")
        .child(Element::with_text("name", name))
        .child(Element::with_text("capacity", capacity_bytes).attr("unit", "bytes"))
        .child(Element::with_text("allocation", 0))
        .child(
            Element::new("target")
                .child(Element::new("format").attr("type", "raw"))
                .child(
                    Element::new("encryption").attr("format", "luks").child(
                        Element::new("secret")
                            .attr("type", "passphrase")
                            .attr("uuid", secret_uuid),
                    ),
                ),
        )
        .render()
}

/// An ephemeral, private secret for the key of the volume at `path`:
/// libvirt keeps it in memory only and never gives its value back.
pub fn volume_secret(path: &str) -> String {
    Element::new("secret")
        .attr("ephemeral", "yes")
        .attr("private", "yes")
        .child(
            Element::new("usage")
                .attr("type", "volume")
                .child(Element::with_text("volume", path)),
        )
        .render()
}

/// An empty qcow2 image volume (used to seed simulated hypervisors).
pub fn image_volume(name: &str, capacity_gib: u64) -> String {
    volume(name, capacity_gib).render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup copies only a disk of this agent's pool, and never one QEMU
    /// opens with a key (it would copy plaintext); every other disk of the
    /// domain stays out of the backup.
    #[test]
    fn a_backup_names_the_plugged_disk_of_this_pool_and_leaves_the_others_out() {
        let live = "<domain><devices>\
            <disk type='volume' device='disk'><source pool='default' volume='stratus-vs-1-disk.qcow2'/><target dev='vda' bus='virtio'/></disk>\
            <disk type='volume' device='disk'><source pool='other' volume='stratus-acc.st-1-store-v5.raw'/><target dev='vdc' bus='virtio'/></disk>\
            <disk type='volume' device='disk'><source pool='default' volume='stratus-acc.st-1-store-v5.raw'/><target dev='vdb' bus='virtio'/><serial>st-1</serial></disk>\
            <disk type='volume' device='disk'><source pool='default' volume='stratus-acc.st-2-store-v7.raw'><encryption format='luks'><secret type='passphrase' uuid='u'/></encryption></source><target dev='vdd' bus='virtio'/></disk>\
            </devices></domain>";
        let live = DomainDescription::parse(live).unwrap();
        assert_eq!(
            live.plugged("default", "stratus-acc.st-1-store-v5.raw"),
            Some(PluggedDisk {
                target: "vdb".into(),
                encrypted: false
            })
        );
        assert_eq!(
            live.plugged("default", "stratus-acc.st-2-store-v7.raw")
                .map(|d| d.encrypted),
            Some(true)
        );
        assert_eq!(live.plugged("third", "stratus-acc.st-1-store-v5.raw"), None);
        let backup = push_backup(
            "vdb",
            "/pool/stratus-acc.st-1-store-v9.raw",
            &live.targets(),
        );
        assert!(
            backup.starts_with("<domainbackup mode=\"push\">")
                || backup.starts_with("<domainbackup mode='push'>"),
            "{backup}"
        );
        for other in ["vda", "vdc", "vdd"] {
            assert!(
                backup.contains(&format!("name='{other}' backup='no'"))
                    || backup.contains(&format!("name=\"{other}\" backup=\"no\"")),
                "{backup}"
            );
        }
        assert!(
            backup.contains("/pool/stratus-acc.st-1-store-v9.raw"),
            "{backup}"
        );
    }
    use stratus_core::resources::{PowerState, ServerAddress};

    fn spec() -> DomainSpec {
        DomainSpec {
            hostname: "web<1>&'x'".into(),
            vcpus: 2,
            memory_mib: 4096,
            disk_gib: 80,
            image_volume: "debian-12.qcow2".into(),
            disk_generation: 0,
            retired_disk_generation: None,
            disk_source: None,
            mac_address: "52:54:00:aa:bb:cc".into(),
            power: PowerState::Running,
            create_disk: true,
            power_off: false,
            ipv4: None,
            ipv6: None,
            suspension: None,
            boot: None,
            seed: None,
            rescue: None,
            data_disks: Vec::new(),
        }
    }

    fn placement() -> Placement<'static> {
        Placement {
            domain_type: "kvm",
            pool: "default",
            disk_volume: "stratus-vs-1-disk.qcow2",
            network: "default",
            filter: true,
            seed_volume: None,
            console_log: None,
            agent: None,
            data_disks: &[],
            rescue_volume: None,
            system_target: "vda",
        }
    }

    fn data_disk(serial: &str) -> DataDisk {
        DataDisk {
            volume: format!("stratus-acc.{serial}-store-v0.raw"),
            serial: serial.to_owned(),
            encrypted: false,
        }
    }

    #[test]
    fn data_disks_are_raw_virtio_disks_named_by_their_serial_and_keep_their_device() {
        let first = "st-00000000000000a1";
        let second = "st-00000000000000b2";
        let assigned = data_disk_targets(&[data_disk(first), data_disk(second)], &[], &[]).unwrap();
        assert_eq!(assigned[0].1, "vdb");
        assert_eq!(assigned[1].1, "vdc");
        let placed = Placement {
            data_disks: &assigned,
            ..placement()
        };
        let xml = domain("stratus-vs-1", &spec(), &placed).unwrap().render();
        assert!(
            xml.contains("<serial>st-00000000000000a1</serial>"),
            "{xml}"
        );
        assert!(
            xml.contains("volume='stratus-acc.st-00000000000000b2-store-v0.raw'"),
            "{xml}"
        );
        // As libvirt gives the definition back: both found, the system
        // disk (no serial) and a disk of someone else's (not a storage id)
        // are not data disks.
        let mut foreign = xml.replace(
            "<target dev='vda' bus='virtio'/>",
            "<target dev='vda' bus='virtio'/><serial>boot</serial>",
        );
        foreign = foreign.replace(
            "</devices>",
            "<disk type='file'><target dev='vdz'/><serial>st-1</serial></disk></devices>",
        );
        let defined = DomainDescription::parse(&foreign).unwrap().data_disks();
        assert_eq!(
            defined,
            vec![
                DefinedDataDisk {
                    serial: first.into(),
                    target: "vdb".into(),
                    volume: Some(format!("stratus-acc.{first}-store-v0.raw")),
                },
                DefinedDataDisk {
                    serial: second.into(),
                    target: "vdc".into(),
                    volume: Some(format!("stratus-acc.{second}-store-v0.raw")),
                },
            ]
        );
        // The first detached, a third attached: the second keeps vdc and
        // the third takes the first free name, vdb.
        let third = "st-00000000000000c3";
        let again =
            data_disk_targets(&[data_disk(second), data_disk(third)], &defined[1..], &[]).unwrap();
        assert_eq!(again[0].1, "vdc");
        assert_eq!(again[1].1, "vdb");
        // A name the running guest still uses (unplug pending) is not reused.
        let busy = data_disk_targets(&[data_disk(third)], &[], &["vdb".into()]).unwrap();
        assert_eq!(busy[0].1, "vdc");
        // 25 names at most.
        let many: Vec<DataDisk> = (0..26)
            .map(|i| data_disk(&format!("st-{i:016x}")))
            .collect();
        assert!(data_disk_targets(&many, &[], &[]).is_err());
        assert_eq!(data_disk_targets(&many[..25], &[], &[]).unwrap().len(), 25);
    }

    #[test]
    fn a_domain_records_the_agent_that_defined_it() {
        let placed = Placement {
            agent: Some("hv-a"),
            ..placement()
        };
        let xml = domain("stratus-vs-1", &spec(), &placed).unwrap().render();
        let document = roxmltree::Document::parse(&xml).unwrap();
        let server = document
            .descendants()
            .find(|n| n.tag_name().namespace() == Some(METADATA_NAMESPACE))
            .unwrap();
        assert_eq!(server.attribute("agent"), Some("hv-a"), "{xml}");
        let unmarked = domain("stratus-vs-1", &spec(), &placement())
            .unwrap()
            .render();
        assert!(!unmarked.contains(" agent="), "{unmarked}");
    }

    #[test]
    fn a_real_guest_boots_its_kernel_reads_its_seed_and_logs_its_console() {
        let kernel_boot = DomainSpec {
            boot: Some(KernelBoot {
                kernel: "/srv/images/vmlinuz".into(),
                initrd: Some("/srv/images/initrd.img".into()),
                cmdline: Some("console=ttyS0 root=/dev/vda1".into()),
            }),
            ..spec()
        };
        let placed = Placement {
            domain_type: "qemu",
            seed_volume: Some("stratus-vs-1-seed-0123456789ab.iso"),
            console_log: Some("/var/log/stratus/stratus-vs-1.log".into()),
            ..placement()
        };
        let xml = domain("stratus-vs-1", &kernel_boot, &placed)
            .unwrap()
            .render();
        for expected in [
            "<domain type='qemu'>",
            "<kernel>/srv/images/vmlinuz</kernel>",
            "<initrd>/srv/images/initrd.img</initrd>",
            "<cmdline>console=ttyS0 root=/dev/vda1</cmdline>",
            "<acpi/>",
            "<disk type='volume' device='cdrom'>",
            "<source pool='default' volume='stratus-vs-1-seed-0123456789ab.iso'/>",
            "<target dev='hdc' bus='ide'/>",
            "<readonly/>",
            "<serial type='file'>",
            "<source path='/var/log/stratus/stratus-vs-1.log' append='on'/>",
            "<memballoon model='none'/>",
        ] {
            assert!(xml.contains(expected), "{expected} missing in {xml}");
        }
        assert!(!xml.contains("<boot dev="), "{xml}");
        let from_disk = domain("stratus-vs-1", &spec(), &placement())
            .unwrap()
            .render();
        assert!(from_disk.contains("<boot dev='hd'/>"), "{from_disk}");
        assert!(from_disk.contains("<serial type='pty'/>"), "{from_disk}");
        assert!(!from_disk.contains("cdrom"), "{from_disk}");
    }

    fn numbered() -> DomainSpec {
        DomainSpec {
            ipv4: Some(ServerAddress {
                address: "192.0.2.10".into(),
                prefix: None,
                prefix_length: 24,
                gateway: "192.0.2.1".into(),
            }),
            ipv6: Some(ServerAddress {
                address: "2001:db8:0:7::1".into(),
                prefix: Some("2001:db8:0:7::/64".into()),
                prefix_length: 64,
                gateway: "2001:db8::1".into(),
            }),
            ..spec()
        }
    }

    #[test]
    fn r5_a_network_isolated_server_has_its_link_down() {
        let connected = domain("stratus-vs-1", &spec(), &placement())
            .unwrap()
            .render();
        assert!(!connected.contains("<link"), "{connected}");
        let isolated = DomainSpec {
            suspension: Some(stratus_core::policy::SuspensionMode::NetworkIsolated),
            ..spec()
        };
        let nic = &domain("stratus-vs-1", &isolated, &placement())
            .unwrap()
            .interfaces[0];
        assert!(!nic.link_up);
        assert!(
            nic.render().contains("<link state='down'/>"),
            "{}",
            nic.render()
        );
        for mode in [
            stratus_core::policy::SuspensionMode::Stopped,
            stratus_core::policy::SuspensionMode::Paused,
        ] {
            let held = DomainSpec {
                suspension: Some(mode),
                ..spec()
            };
            assert!(
                domain("stratus-vs-1", &held, &placement())
                    .unwrap()
                    .interfaces[0]
                    .link_up
            );
        }
    }

    #[test]
    fn domain_xml_carries_the_spec_and_escapes_text() {
        let xml = domain("stratus-vs-1", &spec(), &placement())
            .unwrap()
            .render();
        for expected in [
            "<domain type='kvm'>",
            "<name>stratus-vs-1</name>",
            "<title>web&lt;1&gt;&amp;&apos;x&apos;</title>",
            "<memory unit='MiB'>4096</memory>",
            "<vcpu placement='static'>2</vcpu>",
            "<source pool='default' volume='stratus-vs-1-disk.qcow2'/>",
            "<mac address='52:54:00:aa:bb:cc'/>",
            "<driver name='qemu' type='qcow2' discard='unmap'/>",
            "<features>\n    <acpi/>\n    <apic/>\n  </features>",
        ] {
            assert!(xml.contains(expected), "missing {expected} in\n{xml}");
        }
        assert!(!xml.contains("web<1>"));
    }

    #[test]
    fn r19_nic_filter_carries_the_server_addresses() {
        let xml = domain("stratus-vs-1", &numbered(), &placement())
            .unwrap()
            .render();
        assert!(
            xml.contains(
                "<filterref filter='stratus-clean-traffic'>\n        \
                 <parameter name='IP' value='192.0.2.10'/>\n        \
                 <parameter name='IPV6_PREFIX' value='2001:db8:0:7::'/>\n        \
                 <parameter name='IPV6_PREFIX_LENGTH' value='64'/>\n      </filterref>"
            ),
            "{xml}"
        );
        let ipv4_only = DomainSpec {
            ipv6: None,
            ..numbered()
        };
        let filter = traffic_filter(&ipv4_only).unwrap();
        assert_eq!(filter.filter, CLEAN_TRAFFIC);
        assert_eq!(
            filter.parameters,
            [("IP".to_owned(), "192.0.2.10".to_owned())]
        );
        // Unnumbered (placed before addresses existed): libvirt learns one.
        let learning = traffic_filter(&spec()).unwrap();
        assert_eq!(learning.filter, CLEAN_TRAFFIC);
        assert!(learning.parameters.is_empty());
        let unfiltered = Placement {
            filter: false,
            ..placement()
        };
        let xml = domain("stratus-vs-1", &numbered(), &unfiltered)
            .unwrap()
            .render();
        assert!(!xml.contains("filterref"), "{xml}");
    }

    #[test]
    fn r19_malformed_addresses_are_refused_naming_the_field() {
        type Spoil = fn(&mut DomainSpec);
        let cases: [(Spoil, &str); 5] = [
            (
                |s| s.ipv4.as_mut().unwrap().address = "192.0.2.300".into(),
                "ipv4.address",
            ),
            (
                |s| s.ipv4.as_mut().unwrap().address = "2001:db8::1".into(),
                "ipv4.address",
            ),
            (|s| s.ipv6.as_mut().unwrap().prefix = None, "ipv6.prefix"),
            (
                |s| s.ipv6.as_mut().unwrap().prefix = Some("192.0.2.0/24".into()),
                "ipv6.prefix",
            ),
            (
                |s| s.ipv6.as_mut().unwrap().address = "2001:db8:0:8::1".into(),
                "ipv6.address",
            ),
        ];
        for (spoil, field) in cases {
            let mut spec = numbered();
            spoil(&mut spec);
            let error = domain("stratus-vs-1", &spec, &placement()).unwrap_err();
            assert!(
                matches!(&error, AgentError::BadRequest(m) if m.starts_with(field)),
                "{field}: {error}"
            );
        }
    }

    /// The filters are valid against libvirt's own schema (the test driver
    /// has no nwfilter to define them on; a real daemon does in the
    /// hypervisor tests).
    #[test]
    fn r19_network_filters_match_libvirts_schema() {
        let filters = network_filters(|_| None);
        assert!(!filters[0].1.contains("<uuid>"));
        let redefined = network_filters(|name| Some(format!("uuid-of-{name}")));
        assert!(
            redefined[1]
                .1
                .contains(&format!("<uuid>uuid-of-{DUAL_STACK_FILTER}</uuid>")),
            "{}",
            redefined[1].1
        );
        assert_eq!(
            filters.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            [IPV6_FILTER, DUAL_STACK_FILTER],
            "the referenced filter is defined first"
        );
        let (_, ipv6) = &filters[0];
        for rule in [
            "<ipv6 srcipaddr='fe80::' srcipmask='10'/>",
            "<ipv6 srcipaddr='$IPV6_PREFIX' srcipmask='$IPV6_PREFIX_LENGTH'/>",
            "<rule action='drop' direction='out' priority='1000'/>",
        ] {
            assert!(ipv6.contains(rule), "{rule} in {ipv6}");
        }
        let dir = tempfile::tempdir().unwrap();
        let schema = "/usr/share/libvirt/schemas/nwfilter.rng";
        for (name, definition) in filters
            .iter()
            .map(|(name, xml)| (name.to_string(), xml.clone()))
            .chain([(
                "domain".to_owned(),
                domain("stratus-vs-1", &numbered(), &placement())
                    .unwrap()
                    .render(),
            )])
        {
            let path = dir.path().join(format!("{name}.xml"));
            std::fs::write(&path, &definition).unwrap();
            let schema = if name == "domain" {
                "/usr/share/libvirt/schemas/domain.rng"
            } else {
                schema
            };
            let output = std::process::Command::new("xmllint")
                .args(["--noout", "--relaxng", schema])
                .arg(&path)
                .output()
                .expect("xmllint (Debian's libxml2-utils) runs");
            assert!(
                output.status.success(),
                "{name} is invalid:\n{}\n{definition}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    #[test]
    fn devices_are_data_a_filter_and_a_second_disk_need_no_new_template() {
        let mut domain = domain("stratus-vs-1", &spec(), &placement()).unwrap();
        domain.interfaces[0].filter = Some(FilterRef {
            filter: "clean-traffic".into(),
            parameters: vec![("IP".into(), "192.0.2.10".into())],
        });
        domain.disks.push(Disk {
            pool: "default".into(),
            volume: "stratus-st-1.qcow2".into(),
            target: "vdb".into(),
            format: "qcow2".into(),
            serial: None,
            key_secret: None,
        });
        let xml = domain.render();
        assert!(xml.contains(
            "<filterref filter='clean-traffic'>\n        <parameter name='IP' value='192.0.2.10'/>\n      </filterref>"
        ), "{xml}");
        assert!(xml.contains("<target dev='vdb' bus='virtio'/>"), "{xml}");
        assert!(
            xml.find("vda").unwrap() < xml.find("vdb").unwrap(),
            "disks keep their order"
        );
    }

    #[test]
    fn overlay_is_backed_by_the_image() {
        let xml = overlay_volume("d.qcow2", 25, "/pool/debian-12.qcow2");
        assert!(xml.contains("<capacity unit='GiB'>25</capacity>"));
        assert!(xml.contains("<path>/pool/debian-12.qcow2</path>"));
        assert!(xml.contains("<format type='qcow2'/>"));
        assert!(!image_volume("i.qcow2", 2).contains("backingStore"));
    }
}
