//! libvirt XML for the domains and volumes the agent creates.

use std::fmt::Write;

use stratus_core::agent_api::DomainSpec;

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

/// Where a domain's pieces live on this hypervisor.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// libvirt domain type: `kvm` in production, `qemu` for software
    /// emulation, `test` for libvirt's test driver.
    pub domain_type: &'a str,
    pub pool: &'a str,
    pub disk_volume: &'a str,
    pub network: &'a str,
}

pub fn domain(name: &str, spec: &DomainSpec, placement: &Placement<'_>) -> String {
    let mut xml = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        xml,
        "<domain type='{domain_type}'>\n\
         \x20 <name>{name}</name>\n\
         \x20 <title>{title}</title>\n\
         \x20 <metadata>\n\
         \x20   <stratus:server xmlns:stratus='https://stratus.dev/xmlns/domain/1' hostname='{title}'/>\n\
         \x20 </metadata>\n\
         \x20 <memory unit='MiB'>{memory}</memory>\n\
         \x20 <currentMemory unit='MiB'>{memory}</currentMemory>\n\
         \x20 <vcpu placement='static'>{vcpus}</vcpu>\n\
         \x20 <os>\n\
         \x20   <type arch='x86_64'>hvm</type>\n\
         \x20   <boot dev='hd'/>\n\
         \x20 </os>\n\
         \x20 <features><acpi/><apic/></features>\n\
         \x20 <on_poweroff>destroy</on_poweroff>\n\
         \x20 <on_reboot>restart</on_reboot>\n\
         \x20 <on_crash>destroy</on_crash>\n\
         \x20 <devices>\n\
         \x20   <disk type='volume' device='disk'>\n\
         \x20     <driver name='qemu' type='qcow2' discard='unmap'/>\n\
         \x20     <source pool='{pool}' volume='{disk}'/>\n\
         \x20     <target dev='vda' bus='virtio'/>\n\
         \x20   </disk>\n\
         \x20   <interface type='network'>\n\
         \x20     <mac address='{mac}'/>\n\
         \x20     <source network='{network}'/>\n\
         \x20     <model type='virtio'/>\n\
         \x20   </interface>\n\
         \x20   <serial type='pty'/>\n\
         \x20   <console type='pty'/>\n\
         \x20 </devices>\n\
         </domain>\n",
        domain_type = escape(placement.domain_type),
        name = escape(name),
        title = escape(&spec.hostname),
        memory = spec.memory_mib,
        vcpus = spec.vcpus,
        pool = escape(placement.pool),
        disk = escape(placement.disk_volume),
        mac = escape(&spec.mac_address),
        network = escape(placement.network),
    );
    xml
}

/// A qcow2 overlay on the image, grown to the plan's size: copy-on-write, so
/// creating a server does not copy the image.
pub fn overlay_volume(name: &str, capacity_gib: u64, backing_path: &str) -> String {
    format!(
        "<volume>\n\
         \x20 <name>{name}</name>\n\
         \x20 <capacity unit='GiB'>{capacity_gib}</capacity>\n\
         \x20 <allocation>0</allocation>\n\
         \x20 <target><format type='qcow2'/></target>\n\
         \x20 <backingStore>\n\
         \x20   <path>{backing}</path>\n\
         \x20   <format type='qcow2'/>\n\
         \x20 </backingStore>\n\
         </volume>\n",
        name = escape(name),
        backing = escape(backing_path),
    )
}

/// An empty qcow2 image volume (used to seed simulated hypervisors).
pub fn image_volume(name: &str, capacity_gib: u64) -> String {
    format!(
        "<volume>\n\
         \x20 <name>{name}</name>\n\
         \x20 <capacity unit='GiB'>{capacity_gib}</capacity>\n\
         \x20 <allocation>0</allocation>\n\
         \x20 <target><format type='qcow2'/></target>\n\
         </volume>\n",
        name = escape(name),
    )
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
        }
    }

    #[test]
    fn domain_xml_carries_the_spec_and_escapes_text() {
        let placement = Placement {
            domain_type: "kvm",
            pool: "default",
            disk_volume: "stratus-vs-1-disk.qcow2",
            network: "default",
        };
        let xml = domain("stratus-vs-1", &spec(), &placement);
        for expected in [
            "<domain type='kvm'>",
            "<name>stratus-vs-1</name>",
            "<title>web&lt;1&gt;&amp;&apos;x&apos;</title>",
            "<memory unit='MiB'>4096</memory>",
            "<vcpu placement='static'>2</vcpu>",
            "<source pool='default' volume='stratus-vs-1-disk.qcow2'/>",
            "<mac address='52:54:00:aa:bb:cc'/>",
            "<driver name='qemu' type='qcow2' discard='unmap'/>",
        ] {
            assert!(xml.contains(expected), "missing {expected} in\n{xml}");
        }
        assert!(!xml.contains("web<1>"));
    }

    #[test]
    fn overlay_is_backed_by_the_image() {
        let xml = overlay_volume("d.qcow2", 25, "/pool/debian-12.qcow2");
        assert!(xml.contains("<capacity unit='GiB'>25</capacity>"));
        assert!(xml.contains("<path>/pool/debian-12.qcow2</path>"));
        assert!(xml.contains("<format type='qcow2'/>"));
    }
}
