//! The libvirt side of the agent: blocking calls on one long-lived
//! connection (the test driver's state lives only while a connection is open).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use stratus_core::agent_api::{
    AntiSpoofing, CONSOLE_TAIL_BYTES, DataDisk, DiskDisposal, DomainObservation, DomainResources,
    DomainSpec, DomainState, Link, MANAGED_PREFIX, MAX_DATA_DISKS, NodeReport, PoolInfo, Target,
    guest_failure, is_storage_serial, rescue_disk_name, storage_volume_version, system_disk_name,
};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use crate::error::AgentError;
use crate::replay::{Definitions, DomainRecord, VolumeRecord};
use crate::xml;

mod disks;
mod domains;
mod filters;
mod power;

pub(crate) use disks::wipe;
pub use disks::{overwrite_data_extents, release_zero_runs};
use domains::{
    DomainXml, defined_disk_generation, defined_in_rescue, defined_with_volume, domain_agent,
    domain_resources, read_definition, resized,
};
pub(crate) use domains::{account_of, read_running};
use filters::{install_filters, observe_link};
pub(crate) use power::map_state;

const GIB: u64 = 1024 * 1024 * 1024;

/// Capacity to advertise instead of what libvirt reports, e.g. to size a
/// simulated hypervisor or to advertise overcommitted vCPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityOverride {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
}

impl FromStr for CapacityOverride {
    type Err = String;

    /// `vcpus=64,memory_mib=262144,disk_gib=16384` (any subset).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key}: {v:?} is not a number"))
            };
            match key {
                "vcpus" => {
                    out.vcpus = Some(
                        u32::try_from(number(value)?).map_err(|_| "vcpus: too large".to_owned())?,
                    )
                }
                "memory_mib" => out.memory_mib = Some(number(value)?),
                "disk_gib" => out.disk_gib = Some(number(value)?),
                other => {
                    return Err(format!(
                        "unknown capacity key {other:?} (vcpus, memory_mib, disk_gib)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Whether guests may run without their traffic filter (R19).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AntiSpoofingMode {
    /// No guest starts without its filter: a hypervisor without nwfilter
    /// starts none (production).
    #[default]
    Required,
    /// Guests start unfiltered where the hypervisor has no nwfilter: for
    /// simulated hypervisors and labs, never for customers' servers.
    BestEffort,
}

impl FromStr for AntiSpoofingMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "required" => Ok(Self::Required),
            "best-effort" => Ok(Self::BestEffort),
            other => Err(format!(
                "unknown anti-spoofing mode {other:?} (required, best-effort)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub uri: String,
    pub zone: String,
    /// Storage pool holding the images and the server disks.
    pub pool: String,
    /// libvirt network the servers' NICs attach to.
    pub network: String,
    /// Domain type in the XML (`kvm`, `qemu`, `test`).
    pub domain_type: String,
    pub capacity: CapacityOverride,
    /// Where to keep definitions for a hypervisor that forgets them (test driver).
    pub state_dir: Option<PathBuf>,
    pub anti_spoofing: AntiSpoofingMode,
    /// Where the guests' serial consoles are written (on this host); none:
    /// consoles are ptys and not kept.
    pub console_dir: Option<PathBuf>,
    /// Factor on the host's CPUs for the vCPUs advertised.
    pub cpu_overcommit: f64,
    /// The hypervisor this agent serves, written into every domain it
    /// defines: agents sharing one libvirt daemon (one per pool) each touch
    /// only their own. Domains without the mark are taken as this agent's.
    pub agent_name: Option<String>,
    /// The longest a guest is paused for a copy of its disk where libvirt
    /// has no backup job (or the disk is LUKS); a copy that would take
    /// longer is dropped and the guest resumed at this limit.
    pub max_guest_pause: std::time::Duration,
}

/// Default of [`DriverConfig::max_guest_pause`].
pub const DEFAULT_MAX_GUEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

impl DriverConfig {
    /// Sensible defaults for a URI: the test driver has `default-pool` and
    /// `test` domains; real hypervisors use `default` and KVM.
    pub fn for_uri(uri: &str, zone: &str) -> Self {
        let test = uri.starts_with("test:");
        Self {
            uri: uri.to_owned(),
            zone: zone.to_owned(),
            pool: if test { "default-pool" } else { "default" }.to_owned(),
            network: "default".to_owned(),
            domain_type: if test { "test" } else { "kvm" }.to_owned(),
            capacity: CapacityOverride::default(),
            state_dir: None,
            // The test driver has no nwfilter and its guests send nothing.
            anti_spoofing: if test {
                AntiSpoofingMode::BestEffort
            } else {
                AntiSpoofingMode::Required
            },
            console_dir: None,
            cpu_overcommit: 1.0,
            agent_name: None,
            max_guest_pause: DEFAULT_MAX_GUEST_PAUSE,
        }
    }
}

pub struct Driver {
    pub(crate) conn: Connect,
    pub(crate) config: DriverConfig,
    definitions: Option<Definitions>,
    /// Found at start: whether the traffic filters are defined.
    anti_spoofing: AntiSpoofing,
    /// One lock per domain name: calls for one domain run one at a time,
    /// different domains in parallel.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Volumes being written (an upload, a copy): never wiped under the
    /// writer, however long it takes.
    writing: Mutex<std::collections::HashSet<String>>,
}

/// The mark of a volume whose writer may still write it after giving up.
fn stuck_mark(volume: &str) -> String {
    format!("stuck:{volume}")
}

fn is_missing(error: &virt::error::Error, number: ErrorNumber) -> bool {
    matches!(error.code(), virt::error::ErrorNumberEnum::Known(n) if n == number)
}

/// Whether a disk of `needed_gib` fits in `available_bytes` of a pool.
pub(crate) fn fits(available_bytes: u64, needed_gib: u64) -> bool {
    needed_gib.saturating_mul(GIB) <= available_bytes
}

/// The configured domain type must be one the host's capabilities offer
/// (`kvm` on a host without usable virtualization is refused here, at
/// start, rather than by every guest's start).
fn check_domain_type(capabilities: &str, wanted: &str) -> Result<(), AgentError> {
    let offered = xml::domain_types_offered(capabilities)?;
    if offered.iter().any(|offered| offered == wanted) {
        return Ok(());
    }
    Err(AgentError::DomainType {
        wanted: wanted.to_owned(),
        offered: if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join(", ")
        },
    })
}

/// The vCPUs a host of `cpus` advertises with an overcommit factor.
fn overcommitted(cpus: u32, factor: f64) -> u32 {
    let scaled = (f64::from(cpus) * factor).floor();
    if scaled >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        scaled as u32
    }
}

/// Locks kept before unused ones are dropped.
const LOCKS_KEPT: usize = 4096;

/// A volume being written; the mark goes when this is dropped.
pub(crate) struct Writing<'a> {
    driver: &'a Driver,
    volume: String,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.driver
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.volume);
    }
}

/// Whether libvirt refused a call because this hypervisor cannot do it.
fn is_unsupported(error: &virt::error::Error) -> bool {
    is_missing(error, ErrorNumber::NoSupport)
        || is_missing(error, ErrorNumber::OperationUnsupported)
}

/// Only names the control plane gives (`stratus-…`) are touched, so the agent
/// can never act on a domain someone else defined on the host.
pub fn check_managed_name(name: &str) -> Result<(), AgentError> {
    // Kubernetes object names may contain dots; never two in a row, so no `..`.
    let ok = name.starts_with(MANAGED_PREFIX)
        && name.len() <= 200
        && !name.contains("..")
        && !name.ends_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!(
            "domain name {name:?} must start with {MANAGED_PREFIX:?} and use lower-case letters, digits, '-' and '.'"
        )))
    }
}

fn persist_error(path: &Option<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Persist {
        path: path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        source,
    }
}

impl Driver {
    /// Opens the connection, checks the storage pool and replays recorded definitions.
    pub fn open(config: DriverConfig) -> Result<Self, AgentError> {
        // libvirt otherwise prints every (expected) lookup miss to stderr.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(&config.uri))?;
        check_domain_type(&conn.capabilities()?, &config.domain_type)?;
        let definitions = config
            .state_dir
            .as_deref()
            .map(Definitions::open)
            .transpose()
            .map_err(persist_error(&config.state_dir))?;
        let anti_spoofing = install_filters(&conn, config.anti_spoofing);
        let driver = Self {
            conn,
            config,
            definitions,
            anti_spoofing,
            locks: Mutex::new(HashMap::new()),
            writing: Mutex::new(std::collections::HashSet::new()),
        };
        let pool = driver.pool()?;
        if !pool.is_active()? {
            pool.create(0)?;
        }
        driver.replay()?;
        Ok(driver)
    }

    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    pub fn anti_spoofing(&self) -> &AntiSpoofing {
        &self.anti_spoofing
    }

    pub(crate) fn pool(&self) -> Result<StoragePool, AgentError> {
        Ok(self.conn.lookup_storage_pool_by_name(&self.config.pool)?)
    }

    pub(crate) fn lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Names come and go (every version has its own): locks nobody holds
        // or waits for are dropped once there are many.
        if locks.len() > LOCKS_KEPT {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// Marks `volume` as being written until the guard is dropped; `None`
    /// when something writes it already.
    pub(crate) fn writing(&self, volume: &str) -> Option<Writing<'_>> {
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if writing.contains(&stuck_mark(volume)) {
            return None;
        }
        writing.insert(volume.to_owned()).then(|| Writing {
            driver: self,
            volume: volume.to_owned(),
        })
    }

    /// Whether `volume` is being written.
    pub(crate) fn is_being_written(&self, volume: &str) -> bool {
        let writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        writing.contains(volume) || writing.contains(&stuck_mark(volume))
    }

    /// Keeps `volume` marked as written after its writer gave up (a backup
    /// job that would not stop may still write it): nothing wipes or
    /// rewrites it until the agent restarts.
    pub(crate) fn keep_marked_written(&self, volume: &str) {
        self.writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stuck_mark(volume));
    }

    /// The lock of one volume, held while it is attached to a domain or
    /// checked and wiped: always taken last (after a domain's or a copy's
    /// lock), so it never waits for one of them.
    pub(crate) fn volume_lock(&self, volume: &str) -> Arc<Mutex<()>> {
        self.lock(&format!("volume:{volume}"))
    }

    /// The domain `name`, if it is defined and this agent's: another
    /// agent's domain on the same daemon is refused, never touched.
    pub(crate) fn lookup_domain(&self, name: &str) -> Result<Option<Domain>, AgentError> {
        let domain = match self.conn.lookup_domain_by_name(name) {
            Ok(domain) => domain,
            Err(e) if is_missing(&e, ErrorNumber::NoDomain) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match domain_agent(&domain)? {
            Some(agent) if Some(agent.as_str()) != self.config.agent_name.as_deref() => {
                Err(AgentError::OtherAgents {
                    domain: name.to_owned(),
                    agent,
                })
            }
            _ => Ok(Some(domain)),
        }
    }

    pub(crate) fn lookup_volume(
        pool: &StoragePool,
        name: &str,
    ) -> Result<Option<StorageVol>, AgentError> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(volume) => Ok(Some(volume)),
            Err(e) if is_missing(&e, ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn replay(&self) -> Result<(), AgentError> {
        let Some(defs) = &self.definitions else {
            return Ok(());
        };
        let persist = persist_error(&self.config.state_dir);
        let pool = self.pool()?;
        let mut volumes = defs.volumes().map_err(persist)?;
        // Images first: disks are overlays on them.
        volumes.sort_by_key(|(name, _)| name.starts_with(MANAGED_PREFIX));
        let (mut restored_volumes, mut restored_domains) = (0, 0);
        for (name, record) in volumes {
            if Self::lookup_volume(&pool, &name)?.is_none() {
                StorageVol::create_xml(&pool, &record.xml, 0)?;
                restored_volumes += 1;
            }
        }
        for (name, record) in defs
            .domains()
            .map_err(persist_error(&self.config.state_dir))?
        {
            let domain = match self.lookup_domain(&name)? {
                Some(domain) => domain,
                None => {
                    restored_domains += 1;
                    self.conn.define_domain_xml(&record.xml)?
                }
            };
            if record.running && !domain.is_active()? {
                domain.create()?;
            }
        }
        tracing::info!(
            restored_volumes,
            restored_domains,
            "replayed recorded hypervisor definitions"
        );
        Ok(())
    }

    fn record_domain(&self, name: &str, domain: &Domain) -> Result<(), AgentError> {
        if let Some(defs) = &self.definitions {
            let record = DomainRecord {
                xml: domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?,
                running: domain.is_active()?,
            };
            defs.save_domain(name, &record)
                .map_err(persist_error(&self.config.state_dir))?;
        }
        Ok(())
    }

    pub(crate) fn record_volume(&self, name: &str, volume: &StorageVol) -> Result<(), AgentError> {
        if let Some(defs) = &self.definitions {
            let record = VolumeRecord {
                xml: volume.xml_desc(0)?,
            };
            defs.save_volume(name, &record)
                .map_err(persist_error(&self.config.state_dir))?;
        }
        Ok(())
    }

    pub(crate) fn forget(
        &self,
        domain: Option<&str>,
        volume: Option<&str>,
    ) -> Result<(), AgentError> {
        if let Some(defs) = &self.definitions {
            let persist = persist_error(&self.config.state_dir);
            let result = domain
                .map(|d| defs.remove_domain(d))
                .transpose()
                .and_then(|_| volume.map(|v| defs.remove_volume(v)).transpose());
            result.map_err(persist)?;
        }
        Ok(())
    }

    pub fn observe(&self, name: &str) -> Result<DomainObservation, AgentError> {
        check_managed_name(name)?;
        let domain = self.lookup_domain(name)?;
        let state = domain
            .as_ref()
            .map(|d| d.state().map(|(s, _)| map_state(s)))
            .transpose()?;
        let xml = domain.as_ref().map(DomainXml::of).transpose()?;
        let link = xml.as_ref().map(observe_link);
        let generation = match &xml {
            Some(xml) => defined_disk_generation(name, xml),
            // No definition (lost, or not made yet): the newest disk there.
            None => self
                .system_disks(&self.pool()?, name)?
                .last()
                .map(|(generation, _)| *generation),
        };
        let disk_name = system_disk_name(name, generation.unwrap_or(0));
        let disk = Self::lookup_volume(&self.pool()?, &disk_name)?;
        let disk_present = disk.is_some();
        let disk_generation = generation.or(disk_present.then_some(0));
        let rescued = xml.as_ref().map(|xml| defined_in_rescue(name, xml));
        let resources = domain
            .as_ref()
            .map(|domain| domain_resources(domain, disk.as_ref()))
            .transpose()?;
        let data_disks = xml
            .as_ref()
            .map(|xml| self.observe_data_disks(xml))
            .unwrap_or_default();
        let mac_address = xml
            .as_ref()
            .and_then(|xml| xml.inactive.mac().map(str::to_owned));
        let guest_failure = match (&self.config.console_dir, state) {
            (Some(dir), Some(DomainState::Running)) => {
                let path = crate::seed::console_log(dir, name);
                crate::seed::tail(&path, CONSOLE_TAIL_BYTES)
                    .ok()
                    .and_then(|tail| guest_failure(&String::from_utf8_lossy(&tail)))
            }
            _ => None,
        };
        Ok(DomainObservation {
            name: name.to_owned(),
            state,
            disk_present,
            link: link.unwrap_or_default(),
            disk_disposal: None,
            data_disks,
            waiting_for_key: Vec::new(),
            guest_failure,
            mac_address,
            resources,
            disk_generation,
            rescued: Some(rescued.unwrap_or(false)),
        })
    }

    /// Makes domain `name` match `spec`; calling it again changes nothing.
    pub fn ensure(&self, name: &str, spec: &DomainSpec) -> Result<DomainObservation, AgentError> {
        check_managed_name(name)?;
        if spec.vcpus == 0 || spec.memory_mib == 0 || spec.disk_gib == 0 {
            return Err(AgentError::BadRequest(
                "vcpus, memory_mib and disk_gib must be positive".into(),
            ));
        }
        // Malformed addresses are refused before anything is created.
        xml::traffic_filter(spec)?;
        self.check_data_disks(name, spec)?;
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let pool = self.pool()?;
        let existing = self.lookup_domain(name)?;
        let existing_xml = existing.as_ref().map(DomainXml::of).transpose()?;
        let defined = existing_xml
            .as_ref()
            .and_then(|xml| defined_disk_generation(name, xml));
        let rescue_defined = existing_xml
            .as_ref()
            .is_some_and(|xml| defined_in_rescue(name, xml));
        let running = match &existing {
            Some(domain) => domain.is_active()?,
            None => false,
        };
        // A running guest keeps its disk: a rebuild's new one goes in only
        // while it is off (the controller stops it first).
        let generation = match defined {
            Some(generation) if running => generation,
            _ => spec.disk_generation,
        };
        if let Some(defined) = defined.filter(|defined| *defined > spec.disk_generation) {
            // A request from before the last rebuild (a retry, a controller
            // that lost its leadership): never a way back to an old disk.
            return Err(AgentError::BadRequest(format!(
                "disk_generation: the domain has generation {defined} and {} is older",
                spec.disk_generation
            )));
        }
        let replacing = defined.is_some_and(|defined| defined != generation);
        let disk_name = system_disk_name(name, generation);
        if replacing {
            // The old disk stays until the domain is defined with the new
            // one: a crash leaves one or the other. A disk of the new
            // generation the domain does not use was never booted (a
            // rebuild cut short): it is made afresh, wiped first all the
            // same.
            self.dispose_of_disk(&pool, &disk_name)?;
            self.create_system_disk(&pool, name, &disk_name, spec)?;
        } else if Self::lookup_volume(&pool, &disk_name)?.is_none() {
            if !spec.create_disk {
                return Err(AgentError::DiskMissing {
                    domain: name.to_owned(),
                    volume: disk_name,
                });
            }
            self.create_system_disk(&pool, name, &disk_name, spec)?;
        }
        // Into or out of rescue mode only while off; a running guest keeps
        // what it booted (and its definition, until it is off).
        let relayout = existing.is_some() && rescue_defined != spec.rescue.is_some();
        // A running guest asked for another disk or mode keeps its
        // definition as it is until it is off: nothing is defined for it
        // (its seed neither), only its power is converged.
        let layout_waits =
            running && (relayout || defined.is_some_and(|d| d != spec.disk_generation));
        if relayout
            && !running
            && let Some(rescue) = &spec.rescue
        {
            self.create_rescue_disk(&pool, name, rescue)?;
        }
        if existing.is_none()
            && let Some(rescue) = &spec.rescue
        {
            self.create_rescue_disk(&pool, name, rescue)?;
        }
        self.grow_disk(&pool, name, &disk_name, spec)?;
        let seed = self.ensure_seed(&pool, name, spec)?;
        let domain = match self.lookup_domain(name)? {
            None => {
                let domain = self.define(name, spec, &disk_name, None)?;
                tracing::info!(domain = name, "defined domain");
                domain
            }
            Some(domain) if layout_waits => domain,
            Some(domain) if relayout => {
                let uuid = domain.uuid_string()?;
                let domain = self.define(name, spec, &disk_name, Some(uuid))?;
                tracing::info!(
                    domain = name,
                    rescue = spec.rescue.is_some(),
                    "defined domain again into or out of rescue mode"
                );
                domain
            }
            Some(domain) if replacing => {
                let uuid = domain.uuid_string()?;
                let domain = self.define(name, spec, &disk_name, Some(uuid))?;
                tracing::info!(
                    domain = name,
                    volume = %disk_name,
                    image = %spec.image_volume,
                    "defined domain again with a new system disk (rebuild)"
                );
                domain
            }
            Some(domain)
                if seed
                    .as_ref()
                    .is_some_and(|seed| !defined_with_volume(&domain, seed).unwrap_or(false)) =>
            {
                // The seed's inputs changed: the guest reads the new one at
                // its next boot.
                let uuid = domain.uuid_string()?;
                let domain = self.define(name, spec, &disk_name, Some(uuid))?;
                tracing::info!(
                    domain = name,
                    "defined domain again with a new cloud-init seed"
                );
                domain
            }
            Some(domain) if resized(&domain, spec)? => {
                // Another plan (R23): made again while it is off; the
                // controller stops a running guest first.
                let uuid = domain.uuid_string()?;
                let domain = self.define(name, spec, &disk_name, Some(uuid))?;
                tracing::info!(
                    domain = name,
                    vcpus = spec.vcpus,
                    memory_mib = spec.memory_mib,
                    "defined domain again with another plan"
                );
                domain
            }
            Some(domain) if self.lacks_filter(&domain, spec.target())? => {
                // Defined by a release that put no traffic filter on NICs:
                // defined again while it is off, so it starts filtered.
                let uuid = domain.uuid_string()?;
                let domain = self.define(name, spec, &disk_name, Some(uuid))?;
                tracing::info!(
                    domain = name,
                    "defined domain again with its traffic filter"
                );
                domain
            }
            Some(domain) => domain,
        };
        if layout_waits {
            self.converge_power(name, &domain, spec.target(), spec.power_off)?;
            self.record_domain(name, &domain)?;
            return self.observe(name);
        }
        self.remove_stale_seeds(&pool, name, seed.as_deref())?;
        let domain = self.converge_link(name, domain, spec, &disk_name)?;
        let waiting_for_key = self.converge_data_disks(name, &domain, spec, &disk_name)?;
        let mut disposal = None;
        if spec.rescue.is_none() {
            // Out of rescue mode: what the rescue system wrote goes.
            disposal = self.dispose_of_disk(&pool, &rescue_disk_name(name))?;
        }
        if let Some(retired) = spec
            .retired_disk_generation
            .filter(|retired| *retired != generation && generation == spec.disk_generation)
        {
            // Only once the domain is defined with its new disk.
            let retired = self.dispose_of_disk(&pool, &system_disk_name(name, retired))?;
            if !matches!(disposal, Some(DiskDisposal::DeletedWithoutWipe { .. })) {
                disposal = retired.or(disposal);
            }
        }
        self.converge_power(name, &domain, spec.target(), spec.power_off)?;
        self.record_domain(name, &domain)?;
        let mut observed = self.observe(name)?;
        observed.waiting_for_key = waiting_for_key;
        observed.disk_disposal = disposal;
        Ok(observed)
    }

    /// The system disk volume domain `name` is defined with, if it is
    /// defined.
    pub(crate) fn system_disk_of(&self, name: &str) -> Result<Option<String>, AgentError> {
        let Some(domain) = self.lookup_domain(name)? else {
            return Ok(None);
        };
        let xml = DomainXml::of(&domain)?;
        Ok(
            defined_disk_generation(name, &xml)
                .map(|generation| system_disk_name(name, generation)),
        )
    }

    /// A domain of this daemon with `volume` as a disk, in its definition
    /// or its running guest, if any (whichever agent defined it).
    pub(crate) fn domain_using(&self, volume: &str) -> Result<Option<String>, AgentError> {
        // This agent's pool: agents sharing a daemon have volumes of one
        // name (the two copies of a subscription) in their own pools.
        let pool = &self.config.pool;
        for domain in self.conn.list_all_domains(0)? {
            let mut uses = read_definition(&domain)?.plugged(pool, volume).is_some();
            if !uses && domain.is_active()? {
                uses = read_running(&domain)?.plugged(pool, volume).is_some();
            }
            if uses {
                return Ok(Some(domain.name()?));
            }
        }
        Ok(None)
    }

    pub fn reboot(&self, name: &str) -> Result<DomainObservation, AgentError> {
        check_managed_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let domain = self
            .lookup_domain(name)?
            .ok_or_else(|| AgentError::BadRequest(format!("domain {name} is not defined")))?;
        if !domain.is_active()? {
            return Err(AgentError::BadRequest(format!(
                "domain {name} is not running"
            )));
        }
        domain.reboot(0)?;
        tracing::info!(domain = name, "rebooted domain");
        self.observe(name)
    }

    /// Powers off and undefines the domain, then wipes and deletes its disk.
    /// Whatever is already gone is skipped, so it can be repeated.
    pub fn destroy(&self, name: &str) -> Result<DomainObservation, AgentError> {
        check_managed_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(domain) = self.lookup_domain(name)? {
            if domain.is_active()? {
                domain.destroy()?;
            }
            domain.undefine()?;
            tracing::info!(domain = name, "destroyed and undefined domain");
        }
        self.forget(Some(name), None)?;
        // Every generation of its system disk: a rebuild cut short may
        // have left the old one or a new one beside the disk in use.
        let pool = self.pool()?;
        let mut disks: Vec<String> = self
            .system_disks(&pool, name)?
            .into_iter()
            .map(|(_, volume)| volume)
            .collect();
        disks.push(rescue_disk_name(name));
        let mut disposal = None;
        for disk_name in &disks {
            let disposed = self.dispose_of_disk(&pool, disk_name)?;
            // A disk left unwiped is what the answer says, whichever it was.
            if !matches!(disposal, Some(DiskDisposal::DeletedWithoutWipe { .. })) {
                disposal = disposed.or(disposal);
            }
        }
        self.remove_stale_seeds(&self.pool()?, name, None)?;
        if let Some(dir) = &self.config.console_dir {
            let log = crate::seed::console_log(dir, name);
            match std::fs::remove_file(&log) {
                Ok(()) => tracing::info!(domain = name, "deleted the console log"),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(AgentError::Persist {
                        path: log.display().to_string(),
                        source,
                    });
                }
            }
        }
        let mut observed = self.observe(name)?;
        observed.disk_disposal = disposal;
        Ok(observed)
    }

    /// Creates an empty image volume if absent (seeding simulated hypervisors).
    pub fn seed_image(&self, volume: &str, size_gib: u64) -> Result<bool, AgentError> {
        let pool = self.pool()?;
        if Self::lookup_volume(&pool, volume)?.is_some() {
            return Ok(false);
        }
        match StorageVol::create_xml(&pool, &xml::image_volume(volume, size_gib), 0) {
            Ok(created) => {
                self.record_volume(volume, &created)?;
                Ok(true)
            }
            // Another caller seeded it between the lookup and the create.
            Err(_) if Self::lookup_volume(&pool, volume)?.is_some() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn node_report(&self) -> Result<NodeReport, AgentError> {
        let info = self.conn.node_info()?;
        let pool = self.pool()?;
        let pool_info = pool.info()?;
        let mut images = Vec::new();
        // The allocating listings: `list_volumes` stops at 1 024 names, which
        // once hid every image of a pool holding a thousand disks.
        for volume in pool.list_all_volumes(0)? {
            let name = volume.name()?;
            if !name.starts_with(MANAGED_PREFIX) {
                images.push(name);
            }
        }
        images.sort();
        let mut domains = Vec::new();
        for domain in self.conn.list_all_domains(0)? {
            let name = domain.name()?;
            if !name.starts_with(MANAGED_PREFIX) {
                continue;
            }
            let owner = domain_agent(&domain)?;
            if owner.is_none() || owner.as_deref() == self.config.agent_name.as_deref() {
                domains.push(name);
            }
        }
        domains.sort();
        let capacity = self.config.capacity;
        let pool_capacity = capacity
            .disk_gib
            .map_or(pool_info.capacity, |gib| gib * GIB);
        Ok(NodeReport {
            zone: self.config.zone.clone(),
            vcpus: capacity
                .vcpus
                .unwrap_or_else(|| overcommitted(info.cpus, self.config.cpu_overcommit)),
            memory_mib: capacity.memory_mib.unwrap_or(info.memory / 1024),
            pool: PoolInfo {
                name: self.config.pool.clone(),
                capacity_bytes: pool_capacity,
                allocation_bytes: pool_info.allocation,
                available_bytes: pool_capacity.saturating_sub(pool_info.allocation),
            },
            images,
            domains,
            anti_spoofing: self.anti_spoofing.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_extents_are_zeroed_and_holes_stay_holes() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&[0xAB; 4096]).unwrap();
        file.seek(SeekFrom::Start(64 << 20)).unwrap();
        file.write_all(b"customer secret").unwrap();
        file.set_len(128 << 20).unwrap();
        drop(file);
        let blocks_before = std::fs::metadata(&path).unwrap().blocks();

        overwrite_data_extents(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 << 20);
        assert!(bytes.iter().all(|b| *b == 0), "every byte is zero");
        let blocks_after = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            blocks_after <= blocks_before + 8,
            "holes were not filled: {blocks_before} -> {blocks_after} blocks"
        );
    }

    /// A backup target whose job would not stop stays marked as written:
    /// never wiped or rewritten under QEMU, until the agent restarts.
    #[test]
    fn a_target_left_by_a_backup_that_would_not_stop_is_never_rewritten() {
        let driver = Driver::open(DriverConfig::for_uri("test:///default", "z")).unwrap();
        let volume = "stratus-acc.st-1-store-v9.raw";
        drop(driver.writing(volume).expect("nothing writes it"));
        assert!(!driver.is_being_written(volume));
        driver.keep_marked_written(volume);
        assert!(driver.is_being_written(volume));
        assert!(driver.writing(volume).is_none(), "never written again");
        assert!(!driver.is_being_written("stratus-acc.st-1-store-v10.raw"));
    }

    #[test]
    fn zero_runs_are_given_back_and_every_byte_reads_the_same() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.raw");
        let mut file = std::fs::File::create(&path).unwrap();
        // 64 MiB written as zeros (what a backup job leaves), with data at
        // an unaligned offset and at the very end.
        file.write_all(&vec![0u8; 64 << 20]).unwrap();
        file.seek(SeekFrom::Start((3 << 20) + 17)).unwrap();
        file.write_all(b"customer data").unwrap();
        file.set_len((96 << 20) + 5).unwrap();
        file.seek(SeekFrom::Start(96 << 20)).unwrap();
        file.write_all(b"tail!").unwrap();
        file.sync_all().unwrap();
        drop(file);
        let before = std::fs::read(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= 64 << 20);

        release_zero_runs(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "not one byte changed"
        );
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated <= 3 << 20,
            "{allocated} bytes still allocated for 18 bytes of data"
        );
    }

    #[test]
    fn the_domain_type_must_be_offered_by_the_host() {
        let caps = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/></arch></guest>\
                    <guest><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>";
        check_domain_type(caps, "qemu").unwrap();
        let error = check_domain_type(caps, "kvm").unwrap_err().to_string();
        assert!(
            error.contains("\"kvm\"") && error.contains("offer qemu)"),
            "{error}"
        );
    }

    #[test]
    fn overcommit_scales_the_advertised_vcpus() {
        assert_eq!(overcommitted(2, 1.0), 2);
        assert_eq!(overcommitted(2, 8.0), 16);
        assert_eq!(overcommitted(3, 1.5), 4);
        assert_eq!(overcommitted(u32::MAX, 64.0), u32::MAX);
    }

    #[test]
    fn a_disk_fits_only_in_enough_room() {
        assert!(fits(25 * GIB, 25));
        assert!(!fits(25 * GIB - 1, 25));
        assert!(!fits(u64::MAX - 1, u64::MAX), "no overflow into a fit");
    }

    #[test]
    fn capacity_override_parses_subsets_and_rejects_typos() {
        let parsed: CapacityOverride = "vcpus=64, memory_mib=262144".parse().unwrap();
        assert_eq!(parsed.vcpus, Some(64));
        assert_eq!(parsed.memory_mib, Some(262144));
        assert_eq!(parsed.disk_gib, None);
        assert!(
            "cpus=4"
                .parse::<CapacityOverride>()
                .unwrap_err()
                .contains("cpus")
        );
        assert!("vcpus=four".parse::<CapacityOverride>().is_err());
        assert_eq!(
            "".parse::<CapacityOverride>().unwrap(),
            CapacityOverride::default()
        );
    }

    #[test]
    fn only_managed_names_are_accepted() {
        assert!(check_managed_name("stratus-vs-00000000000000aa").is_ok());
        assert!(check_managed_name("stratus-web1.acme").is_ok());
        for bad in [
            "test",
            "stratus-../x",
            "stratus-a..b",
            "stratus-a.",
            "stratus-A",
            "other-vs-1",
            "",
            "stratus-a/b",
        ] {
            assert!(check_managed_name(bad).is_err(), "{bad}");
        }
    }
}
