//! What the agent reads back from libvirt: a domain's XML parsed once per
//! observation into typed disks and NICs, and the few facts it needs from
//! pool, volume, capability and metadata XML. Parsed as XML (roxmltree),
//! never searched as text, so quoting, attribute order, escaping and
//! elements libvirt adds around ours cannot make a disk or a NIC look like
//! another.

use roxmltree::{Document, Node};

use super::METADATA_NAMESPACE;
use crate::error::AgentError;

fn parse<'t>(what: &'static str, text: &'t str) -> Result<Document<'t>, AgentError> {
    Document::parse(text).map_err(|error| AgentError::UnreadableXml {
        what,
        message: error.to_string(),
    })
}

fn children<'a, 't>(node: Node<'a, 't>, name: &'static str) -> impl Iterator<Item = Node<'a, 't>> {
    node.children()
        .filter(move |child| child.is_element() && child.tag_name().name() == name)
}

fn child<'a, 't>(node: Node<'a, 't>, name: &'static str) -> Option<Node<'a, 't>> {
    children(node, name).next()
}

fn owned(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

/// A `<disk>` of a domain, as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedDisk {
    /// `disk` or `cdrom` (libvirt's default is `disk`).
    pub device: String,
    pub target: Option<String>,
    pub serial: Option<String>,
    pub pool: Option<String>,
    pub volume: Option<String>,
    /// Opened by QEMU with a key (LUKS).
    pub encrypted: bool,
}

impl DescribedDisk {
    fn read(disk: Node<'_, '_>) -> Self {
        let source = child(disk, "source");
        Self {
            device: disk.attribute("device").unwrap_or("disk").to_owned(),
            target: owned(child(disk, "target").and_then(|t| t.attribute("dev"))),
            serial: owned(child(disk, "serial").and_then(|s| s.text())),
            pool: owned(source.and_then(|s| s.attribute("pool"))),
            volume: owned(source.and_then(|s| s.attribute("volume"))),
            // libvirt writes it inside `<source>` in live XML and beside it
            // in older definitions.
            encrypted: child(disk, "encryption").is_some()
                || source.is_some_and(|s| child(s, "encryption").is_some()),
        }
    }

    fn is_disk(&self) -> bool {
        self.device == "disk"
    }
}

/// An `<interface>` of a domain, as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedInterface {
    /// Lower case.
    pub mac: Option<String>,
    /// The traffic filter it references.
    pub filter: Option<String>,
    pub link_down: bool,
}

impl DescribedInterface {
    fn read(interface: Node<'_, '_>) -> Self {
        Self {
            mac: child(interface, "mac")
                .and_then(|m| m.attribute("address"))
                .map(str::to_ascii_lowercase),
            filter: owned(child(interface, "filterref").and_then(|f| f.attribute("filter"))),
            link_down: child(interface, "link").and_then(|l| l.attribute("state")) == Some("down"),
        }
    }
}

/// A domain's XML (its definition or its running instance), read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainDescription {
    pub disks: Vec<DescribedDisk>,
    pub interfaces: Vec<DescribedInterface>,
}

/// A data disk as a domain's XML has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedDataDisk {
    pub serial: String,
    pub target: String,
    pub volume: Option<String>,
}

/// A disk of a running domain, as its live XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedDisk {
    /// Its device name (`vdb`).
    pub target: String,
    /// Opened by QEMU with a key (LUKS): QEMU reads it decrypted.
    pub encrypted: bool,
}

impl DomainDescription {
    pub fn parse(domain_xml: &str) -> Result<Self, AgentError> {
        let document = parse("domain", domain_xml)?;
        let Some(devices) = child(document.root_element(), "devices") else {
            return Ok(Self::default());
        };
        Ok(Self {
            disks: children(devices, "disk").map(DescribedDisk::read).collect(),
            interfaces: children(devices, "interface")
                .map(DescribedInterface::read)
                .collect(),
        })
    }

    /// The data disks (disks whose serial is a storage subscription's id);
    /// other disks are not the agent's to attach or detach.
    pub fn data_disks(&self) -> Vec<DefinedDataDisk> {
        self.disks
            .iter()
            .filter_map(|disk| {
                let serial = disk.serial.as_ref()?;
                if !stratus_core::agent_api::is_storage_serial(serial) {
                    return None;
                }
                Some(DefinedDataDisk {
                    serial: serial.clone(),
                    target: disk.target.clone()?,
                    volume: disk.volume.clone(),
                })
            })
            .collect()
    }

    /// The disk whose source is `volume` of `pool`, if any.
    pub fn plugged(&self, pool: &str, volume: &str) -> Option<PluggedDisk> {
        self.disks.iter().find_map(|disk| {
            if disk.pool.as_deref() != Some(pool) || disk.volume.as_deref() != Some(volume) {
                return None;
            }
            Some(PluggedDisk {
                target: disk.target.clone()?,
                encrypted: disk.encrypted,
            })
        })
    }

    /// The volumes of its disks (not its CD-ROMs).
    pub fn disk_volumes(&self) -> impl Iterator<Item = &str> {
        self.disks
            .iter()
            .filter(|disk| disk.is_disk())
            .filter_map(|disk| disk.volume.as_deref())
    }

    /// Whether a disk or CD-ROM has `volume` (of any pool) as its source.
    pub fn has_volume(&self, volume: &str) -> bool {
        self.disks
            .iter()
            .any(|disk| disk.volume.as_deref() == Some(volume))
    }

    /// Every device name its disks and CD-ROMs use.
    pub fn targets(&self) -> Vec<String> {
        self.disks
            .iter()
            .filter_map(|disk| disk.target.clone())
            .collect()
    }

    /// The MAC address of its first NIC.
    pub fn mac(&self) -> Option<&str> {
        self.interfaces.first()?.mac.as_deref()
    }

    /// Whether a NIC references a traffic filter.
    pub fn filtered(&self) -> bool {
        self.interfaces.iter().any(|nic| nic.filter.is_some())
    }

    /// Whether a NIC's link is down.
    pub fn link_down(&self) -> bool {
        self.interfaces.iter().any(|nic| nic.link_down)
    }
}

/// The agent a domain's stratus metadata names, if any: the element
/// `virDomainGetMetadata` gives for stratus's namespace, which it gives
/// back without the namespace (`<server hostname='…' agent='…'/>`).
pub fn metadata_agent(metadata: &str) -> Option<String> {
    let document = Document::parse(metadata).ok()?;
    let server = document.root_element();
    let ours = server
        .tag_name()
        .namespace()
        .is_none_or(|namespace| namespace == METADATA_NAMESPACE);
    if server.tag_name().name() != "server" || !ours {
        return None;
    }
    owned(server.attribute("agent"))
}

/// The directory of a pool, from its XML.
pub fn pool_path(pool_xml: &str) -> Result<String, AgentError> {
    let document = parse("storage pool", pool_xml)?;
    child(document.root_element(), "target")
        .and_then(|target| child(target, "path"))
        .and_then(|path| path.text())
        .map(str::to_owned)
        .ok_or_else(|| AgentError::BadRequest("the pool has no directory".into()))
}

/// Whether a volume's XML says it is LUKS-encrypted.
pub fn volume_is_luks(volume_xml: &str) -> Result<bool, AgentError> {
    let document = parse("storage volume", volume_xml)?;
    Ok(child(document.root_element(), "target")
        .and_then(|target| child(target, "encryption"))
        .is_some_and(|encryption| encryption.attribute("format") == Some("luks")))
}

/// The domain types a host's capabilities offer (`kvm`, `qemu`, `test`),
/// sorted, each once.
pub fn domain_types_offered(capabilities: &str) -> Result<Vec<String>, AgentError> {
    let document = parse("capabilities", capabilities)?;
    let mut offered: Vec<String> = children(document.root_element(), "guest")
        .flat_map(|guest| children(guest, "arch"))
        .flat_map(|arch| children(arch, "domain"))
        .filter_map(|domain| owned(domain.attribute("type")))
        .collect();
    offered.sort_unstable();
    offered.dedup();
    Ok(offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As libvirt 9 gives a running guest back: double quotes, escaped
    /// values, attributes in its own order, elements it adds.
    const LIVE: &str = r#"<domain type="kvm" id="3">
  <name>stratus-acc.vs-1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type="volume" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source pool="default" volume="stratus-acc.vs-1-disk-g2.qcow2" index="3"/>
      <backingStore/>
      <target dev="vda" bus="virtio"/>
      <alias name="virtio-disk0"/>
    </disk>
    <disk type="volume" device="cdrom">
      <source pool="default" volume="stratus-acc.vs-1-seed.iso"/>
      <target dev="sda" bus="sata"/>
      <readonly/>
    </disk>
    <disk type="volume" device="disk">
      <source pool="default" volume="stratus-acc.st-00000000000000a1-store-v5.raw">
        <encryption format="luks"><secret type="passphrase" uuid="0a"/></encryption>
      </source>
      <target dev="vdb" bus="virtio"/>
      <serial>st-00000000000000a1</serial>
    </disk>
    <disk type="file" device="disk">
      <source file="/elsewhere/x.raw"/>
      <target dev="vdc" bus="virtio"/>
      <serial>boot &amp; more</serial>
    </disk>
    <interface type="network">
      <mac address="52:54:00:AB:CD:EF"/>
      <source network="stratus"/>
      <link state="down"/>
      <filterref filter="stratus-acc.vs-1-clean-traffic">
        <parameter name="IP" value="192.0.2.10"/>
      </filterref>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn a_running_guests_xml_is_read_into_its_disks_and_nic() {
        let described = DomainDescription::parse(LIVE).unwrap();
        assert_eq!(described.disks.len(), 4);
        assert_eq!(
            described.disk_volumes().collect::<Vec<_>>(),
            [
                "stratus-acc.vs-1-disk-g2.qcow2",
                "stratus-acc.st-00000000000000a1-store-v5.raw"
            ],
            "CD-ROMs and files are not volumes of disks"
        );
        assert_eq!(described.targets(), ["vda", "sda", "vdb", "vdc"]);
        assert_eq!(
            described.data_disks(),
            [DefinedDataDisk {
                serial: "st-00000000000000a1".into(),
                target: "vdb".into(),
                volume: Some("stratus-acc.st-00000000000000a1-store-v5.raw".into()),
            }],
            "a serial that is not a storage id is not a data disk"
        );
        assert_eq!(described.disks[3].serial.as_deref(), Some("boot & more"));
        assert_eq!(
            described.plugged("default", "stratus-acc.st-00000000000000a1-store-v5.raw"),
            Some(PluggedDisk {
                target: "vdb".into(),
                encrypted: true
            })
        );
        assert_eq!(
            described.plugged("other", "stratus-acc.st-00000000000000a1-store-v5.raw"),
            None
        );
        assert!(described.has_volume("stratus-acc.vs-1-seed.iso"));
        assert!(!described.has_volume("stratus-acc.vs-1"));
        assert_eq!(described.mac(), Some("52:54:00:ab:cd:ef"));
        assert!(described.filtered());
        assert!(described.link_down());
    }

    #[test]
    fn a_value_that_looks_like_markup_is_only_a_value() {
        // A hostname or a title with a disk's text in it is no disk.
        let xml = r#"<domain><title>&lt;disk device='disk'&gt;&lt;source volume='x'/&gt;</title>
            <description>&lt;link state='down'/&gt; &lt;filterref</description><devices>
            <interface type="network"><mac address="52:54:00:00:00:01"/></interface></devices></domain>"#;
        let described = DomainDescription::parse(xml).unwrap();
        assert!(described.disks.is_empty());
        assert!(!described.has_volume("x"));
        assert!(!described.link_down());
        assert!(!described.filtered());
    }

    #[test]
    fn xml_libvirt_should_never_give_is_an_error_not_an_empty_domain() {
        let error = DomainDescription::parse("<domain><devices>").unwrap_err();
        assert!(
            matches!(error, AgentError::UnreadableXml { what: "domain", .. }),
            "{error}"
        );
        assert_eq!(
            DomainDescription::parse("<domain type='test'/>").unwrap(),
            DomainDescription::default()
        );
    }

    #[test]
    fn pools_volumes_capabilities_and_metadata_give_what_the_agent_needs() {
        let pool = "<pool type='dir'><name>default</name><target><path>/var/lib/a&amp;b</path></target></pool>";
        assert_eq!(pool_path(pool).unwrap(), "/var/lib/a&b");
        assert!(pool_path("<pool type='dir'><target/></pool>").is_err());

        let luks = "<volume><name>v</name><target><format type='raw'/><encryption format='luks'><secret type='passphrase' uuid='u'/></encryption></target></volume>";
        assert!(volume_is_luks(luks).unwrap());
        assert!(!volume_is_luks("<volume><target><format type='raw'/></target></volume>").unwrap());

        let capabilities = "<capabilities><host/><guest><os_type>hvm</os_type>\
            <arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>\
            <guest><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>";
        assert_eq!(domain_types_offered(capabilities).unwrap(), ["kvm", "qemu"]);
        assert!(domain_types_offered("<capabilities/>").unwrap().is_empty());

        assert_eq!(
            metadata_agent(&format!(
                r#"<stratus:server xmlns:stratus="{METADATA_NAMESPACE}" hostname="a" agent="hv-b"/>"#
            ))
            .as_deref(),
            Some("hv-b")
        );
        assert_eq!(
            metadata_agent(&format!(
                "<s:server xmlns:s='{METADATA_NAMESPACE}' hostname='x'/>"
            )),
            None
        );
        assert_eq!(
            metadata_agent(r#"<server hostname="web1" agent="hv-a"/>"#).as_deref(),
            Some("hv-a"),
            "as libvirt 9 gives it"
        );
        assert_eq!(metadata_agent("<server hostname='x' agent"), None);
        assert_eq!(
            metadata_agent("<other:server xmlns:other='https://example.net/x' agent='hv-c'/>"),
            None,
            "another program's metadata names no agent of ours"
        );
    }
}
