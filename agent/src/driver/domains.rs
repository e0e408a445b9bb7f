//! Domain definitions: the XML made from a spec, read back once per
//! observation, and what it tells (MAC, size, the agent that owns it).

use super::*;

/// A domain's XML as observed: its definition, and its running instance
/// when it runs; read once per observation.
pub(super) struct DomainXml {
    pub(super) inactive: xml::DomainDescription,
    pub(super) live: Option<xml::DomainDescription>,
}

impl DomainXml {
    pub(super) fn of(domain: &Domain) -> Result<Self, AgentError> {
        Ok(Self {
            inactive: read_definition(domain)?,
            live: if domain.is_active()? {
                Some(read_running(domain)?)
            } else {
                None
            },
        })
    }
}

/// A domain's definition, as it starts next.
pub(crate) fn read_definition(domain: &Domain) -> Result<xml::DomainDescription, AgentError> {
    xml::DomainDescription::parse(&domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?)
}

/// A running domain as its guest has it now (its definition when off).
pub(crate) fn read_running(domain: &Domain) -> Result<xml::DomainDescription, AgentError> {
    xml::DomainDescription::parse(&domain.xml_desc(0)?)
}

/// The generation of the system disk a domain is defined with, if it is
/// one of its own.
pub(super) fn defined_disk_generation(name: &str, xml: &DomainXml) -> Option<u32> {
    xml.inactive
        .disk_volumes()
        .find_map(|volume| stratus_core::agent_api::system_disk_generation(name, volume))
}

/// Whether a domain is defined in rescue mode (its rescue disk is a disk).
pub(super) fn defined_in_rescue(name: &str, xml: &DomainXml) -> bool {
    let rescue = stratus_core::agent_api::rescue_disk_name(name);
    xml.inactive.disk_volumes().any(|volume| volume == rescue)
}

/// The size of `domain` as the hypervisor has it: the running guest's vCPUs
/// and memory (its definition's when off) and `disk`'s capacity.
pub(super) fn domain_resources(
    domain: &Domain,
    disk: Option<&StorageVol>,
) -> Result<DomainResources, AgentError> {
    let info = domain.info()?;
    let disk_bytes = disk
        .map(StorageVol::info)
        .transpose()?
        .map_or(0, |i| i.capacity);
    Ok(DomainResources {
        vcpus: info.nr_virt_cpu,
        memory_mib: info.max_mem / 1024,
        disk_gib: disk_bytes.div_ceil(GIB),
    })
}

/// Whether `domain` is off and defined with other vCPUs or memory than
/// `spec`: it is defined again with the spec's (R23).
pub(super) fn resized(domain: &Domain, spec: &DomainSpec) -> Result<bool, AgentError> {
    if domain.is_active()? {
        return Ok(false);
    }
    let info = domain.info()?;
    Ok(info.nr_virt_cpu != spec.vcpus || info.max_mem / 1024 != spec.memory_mib)
}

/// Whether a domain's definition uses the volume `volume`.
pub(super) fn defined_with_volume(domain: &Domain, volume: &str) -> Result<bool, AgentError> {
    Ok(read_definition(domain)?.has_volume(volume))
}

/// The agent a domain's metadata says defined it.
pub(super) fn domain_agent(domain: &Domain) -> Result<Option<String>, AgentError> {
    match domain.metadata(
        virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(xml::METADATA_NAMESPACE),
        virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
    ) {
        Ok(metadata) => Ok(xml::metadata_agent(&metadata)),
        Err(e) if is_missing(&e, ErrorNumber::NoDomainMetadata) || is_unsupported(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The account (namespace) part of a managed domain or volume base name.
pub(crate) fn account_of(managed: &str) -> Option<&str> {
    managed
        .strip_prefix(MANAGED_PREFIX)?
        .split_once('.')
        .map(|(account, _)| account)
}

impl Driver {
    /// Defines domain `name` as `spec` says (again, when `uuid` is the
    /// existing domain's).
    pub(super) fn define(
        &self,
        name: &str,
        spec: &DomainSpec,
        disk_volume: &str,
        uuid: Option<String>,
    ) -> Result<Domain, AgentError> {
        let mut definition = self.definition(name, spec, disk_volume)?;
        definition.uuid = uuid;
        Ok(self.conn.define_domain_xml(&definition.render())?)
    }

    /// The domain of `spec` placed on this hypervisor.
    pub(super) fn definition(
        &self,
        name: &str,
        spec: &DomainSpec,
        disk_volume: &str,
    ) -> Result<xml::Domain, AgentError> {
        let seed_volume = spec
            .seed
            .as_ref()
            .filter(|_| self.writes_seeds())
            .map(|seed| crate::seed::volume_name(name, seed));
        let mut data_disks = self.data_disk_targets(name, spec)?;
        data_disks.retain(|(disk, _)| !disk.encrypted);
        let rescue_volume = spec
            .rescue
            .as_ref()
            .map(|_| stratus_core::agent_api::rescue_disk_name(name));
        // In rescue mode the system disk follows the data disks, which
        // keep their names (a guest's fstab may use them): `vdb` when the
        // server has none.
        let system_target = match rescue_volume {
            Some(_) => xml::first_free_target(
                &data_disks
                    .iter()
                    .map(|(_, target)| target.clone())
                    .collect::<Vec<_>>(),
            )?,
            None => "vda".to_owned(),
        };
        let placement = xml::Placement {
            domain_type: &self.config.domain_type,
            pool: &self.config.pool,
            disk_volume,
            network: &self.config.network,
            filter: self.filters_nics(),
            seed_volume: seed_volume.as_deref(),
            agent: self.config.agent_name.as_deref(),
            data_disks: &data_disks,
            rescue_volume: rescue_volume.as_deref(),
            system_target: &system_target,
            console_log: self
                .config
                .console_dir
                .as_deref()
                .map(|dir| crate::seed::console_log(dir, name).display().to_string()),
        };
        xml::domain(name, spec, &placement)
    }

    /// The last [`CONSOLE_TAIL_BYTES`] of a domain's serial console.
    pub fn console(&self, name: &str) -> Result<Vec<u8>, AgentError> {
        check_managed_name(name)?;
        let Some(dir) = &self.config.console_dir else {
            return Err(AgentError::BadRequest(
                "this hypervisor keeps no console logs (no console directory configured)".into(),
            ));
        };
        // Agents sharing a daemon may share the console directory too.
        if self.lookup_domain(name)?.is_none() {
            return Err(AgentError::BadRequest(format!(
                "no domain {name} is defined here: it has no console"
            )));
        }
        let path = crate::seed::console_log(dir, name);
        crate::seed::tail(&path, CONSOLE_TAIL_BYTES).map_err(|source| AgentError::Persist {
            path: path.display().to_string(),
            source,
        })
    }
}
