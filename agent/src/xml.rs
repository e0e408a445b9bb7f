//! libvirt XML for the domains and volumes the agent creates, built from
//! typed structures through a small element writer: a new device (a NIC
//! with a traffic filter, an extra disk, a cloud-init CD-ROM) is a new field
//! or list entry, never string surgery, and every value is escaped.

use stratus_core::agent_api::DomainSpec;

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
}

impl Disk {
    fn element(&self) -> Element {
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
                    .attr("volume", &self.volume),
            )
            .child(
                Element::new("target")
                    .attr("dev", &self.target)
                    .attr("bus", "virtio"),
            )
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
}

impl Interface {
    fn element(&self) -> Element {
        let mut element = Element::new("interface")
            .attr("type", "network")
            .child(Element::new("mac").attr("address", &self.mac))
            .child(Element::new("source").attr("network", &self.network))
            .child(Element::new("model").attr("type", "virtio"));
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
    /// The customer's hostname, shown as the domain's title.
    pub hostname: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
}

impl Domain {
    pub fn element(&self) -> Element {
        let memory = |name| Element::with_text(name, self.memory_mib).attr("unit", "MiB");
        Element::new("domain")
            .attr("type", &self.domain_type)
            .child(Element::with_text("name", &self.name))
            .child(Element::with_text("title", &self.hostname))
            .child(
                Element::new("metadata").child(
                    Element::new("stratus:server")
                        .attr("xmlns:stratus", "https://stratus.dev/xmlns/domain/1")
                        .attr("hostname", &self.hostname),
                ),
            )
            .child(memory("memory"))
            .child(memory("currentMemory"))
            .child(Element::with_text("vcpu", self.vcpus).attr("placement", "static"))
            .child(
                Element::new("os")
                    .child(Element::with_text("type", "hvm").attr("arch", "x86_64"))
                    .child(Element::new("boot").attr("dev", "hd")),
            )
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
                    .children(self.interfaces.iter().map(Interface::element))
                    .child(Element::new("serial").attr("type", "pty"))
                    .child(Element::new("console").attr("type", "pty")),
            )
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
}

/// The domain of a server: its system disk and one NIC.
pub fn domain(name: &str, spec: &DomainSpec, placement: &Placement<'_>) -> Domain {
    Domain {
        domain_type: placement.domain_type.to_owned(),
        name: name.to_owned(),
        hostname: spec.hostname.clone(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        disks: vec![Disk {
            pool: placement.pool.to_owned(),
            volume: placement.disk_volume.to_owned(),
            target: "vda".to_owned(),
            format: "qcow2".to_owned(),
        }],
        interfaces: vec![Interface {
            mac: spec.mac_address.clone(),
            network: placement.network.to_owned(),
            filter: None,
        }],
    }
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

/// An empty qcow2 image volume (used to seed simulated hypervisors).
pub fn image_volume(name: &str, capacity_gib: u64) -> String {
    volume(name, capacity_gib).render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_core::resources::PowerState;

    fn spec() -> DomainSpec {
        DomainSpec {
            hostname: "web<1>&'x'".into(),
            vcpus: 2,
            memory_mib: 4096,
            disk_gib: 80,
            image_volume: "debian-12.qcow2".into(),
            mac_address: "52:54:00:aa:bb:cc".into(),
            power: PowerState::Running,
            create_disk: true,
            power_off: false,
            ipv4: None,
            ipv6: None,
        }
    }

    fn placement() -> Placement<'static> {
        Placement {
            domain_type: "kvm",
            pool: "default",
            disk_volume: "stratus-vs-1-disk.qcow2",
            network: "default",
        }
    }

    #[test]
    fn domain_xml_carries_the_spec_and_escapes_text() {
        let xml = domain("stratus-vs-1", &spec(), &placement()).render();
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
        assert!(!xml.contains("filterref"));
    }

    #[test]
    fn devices_are_data_a_filter_and_a_second_disk_need_no_new_template() {
        let mut domain = domain("stratus-vs-1", &spec(), &placement());
        domain.interfaces[0].filter = Some(FilterRef {
            filter: "clean-traffic".into(),
            parameters: vec![("IP".into(), "192.0.2.10".into())],
        });
        domain.disks.push(Disk {
            pool: "default".into(),
            volume: "stratus-st-1.qcow2".into(),
            target: "vdb".into(),
            format: "qcow2".into(),
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
