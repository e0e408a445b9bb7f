//! The libvirt side of the agent: blocking calls on one long-lived
//! connection (the test driver's state lives only while a connection is open).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use stratus_core::agent_api::{
    AntiSpoofing, CONSOLE_TAIL_BYTES, DataDisk, DiskDisposal, DomainObservation, DomainResources,
    DomainSpec, DomainState, Link, MANAGED_PREFIX, MAX_DATA_DISKS, NodeReport, PoolInfo, Target,
    disk_volume_name, guest_failure, is_storage_serial, storage_volume_version,
};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use crate::error::AgentError;
use crate::replay::{Definitions, DomainRecord, VolumeRecord};
use crate::xml;

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

/// Whether a domain's definition (not only its running instance) puts a
/// traffic filter on its NIC.
fn defined_with_filter(domain: &Domain) -> Result<bool, AgentError> {
    Ok(domain
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?
        .contains("<filterref"))
}

/// The configured domain type must be one the host's capabilities offer
/// (`kvm` on a host without usable virtualization is refused here, at
/// start, rather than by every guest's start).
fn check_domain_type(capabilities: &str, wanted: &str) -> Result<(), AgentError> {
    let mut offered: Vec<&str> = capabilities
        .split("<domain type='")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next())
        .collect();
    offered.sort_unstable();
    offered.dedup();
    if offered.contains(&wanted) {
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

/// The agent a domain's metadata says defined it.
fn domain_agent(domain: &Domain) -> Result<Option<String>, AgentError> {
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
fn account_of(managed: &str) -> Option<&str> {
    managed
        .strip_prefix(MANAGED_PREFIX)?
        .split_once('.')
        .map(|(account, _)| account)
}

/// A domain's data disks, those of the running guest first, and every
/// device name its definition or running guest uses.
fn data_disks_of(domain: &Domain) -> Result<(Vec<xml::DefinedDataDisk>, Vec<String>), AgentError> {
    let DomainXml { inactive, live } = DomainXml::of(domain)?;
    let mut disks = live.as_deref().map(xml::data_disks_in).unwrap_or_default();
    disks.extend(xml::data_disks_in(&inactive));
    let mut taken: Vec<String> = std::iter::once(&inactive)
        .chain(live.as_ref())
        .flat_map(|xml| xml::disk_targets_in(xml))
        .collect();
    taken.sort();
    taken.dedup();
    Ok((disks, taken))
}

/// Whether a domain's definition uses the volume `volume`.
fn defined_with_volume(domain: &Domain, volume: &str) -> Result<bool, AgentError> {
    Ok(domain
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?
        .contains(&format!("volume='{volume}'")))
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

/// libvirt writes a NIC whose link is down as `<link state='down'/>`.
fn link_down_in(domain_xml: &str) -> bool {
    domain_xml.contains("<link state='down'/>")
}

/// A domain's XML as observed: its definition, and its running instance
/// when it runs; read once per observation.
struct DomainXml {
    inactive: String,
    live: Option<String>,
}

impl DomainXml {
    fn of(domain: &Domain) -> Result<Self, AgentError> {
        Ok(Self {
            inactive: domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?,
            live: if domain.is_active()? {
                Some(domain.xml_desc(0)?)
            } else {
                None
            },
        })
    }
}

/// The NIC's link as the running guest has it, or as the definition says
/// when the guest is off.
fn observe_link(xml: &DomainXml) -> Link {
    let defined_down = link_down_in(&xml.inactive);
    let Some(live) = &xml.live else {
        return if defined_down { Link::Down } else { Link::Up };
    };
    match (link_down_in(live), defined_down) {
        (true, true) => Link::Down,
        (true, false) => Link::UpAtNextStart,
        (false, true) => Link::DownAtNextStart,
        (false, false) => Link::Up,
    }
}

/// The MAC address of the first NIC a domain's XML defines.
fn defined_mac(xml: &str) -> Option<String> {
    let start = xml.find("<mac address=")? + "<mac address=".len();
    let quote = xml[start..].chars().next()?;
    let rest = &xml[start + 1..];
    rest.find(quote).map(|end| rest[..end].to_ascii_lowercase())
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

/// The size of `domain` as the hypervisor has it: the running guest's vCPUs
/// and memory (its definition's when off) and `disk`'s capacity.
fn domain_resources(
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
fn resized(domain: &Domain, spec: &DomainSpec) -> Result<bool, AgentError> {
    if domain.is_active()? {
        return Ok(false);
    }
    let info = domain.info()?;
    Ok(info.nr_virt_cpu != spec.vcpus || info.max_mem / 1024 != spec.memory_mib)
}

pub(crate) fn map_state(state: virt::domain::DomainStateEnum) -> DomainState {
    use virt::domain::DomainState as S;
    match state {
        virt::enumutil::Enum::Known(S::Running | S::Blocked) => DomainState::Running,
        virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
        virt::enumutil::Enum::Known(S::Shutoff) => DomainState::Stopped,
        virt::enumutil::Enum::Known(S::Crashed) => DomainState::Crashed,
        _ => DomainState::Transitioning,
    }
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

    /// Whether NICs are defined with their filter: where it is enforced,
    /// and on the test driver, which keeps the filter in the definition
    /// (there to be read) and has no traffic to filter.
    fn filters_nics(&self) -> bool {
        self.anti_spoofing.enforced || self.config.uri.starts_with("test:")
    }

    /// Refuses to start a guest that would send unfiltered on a hypervisor
    /// that must filter: the node cannot enforce it, or the domain was
    /// defined without a filter.
    fn check_filtered(&self, name: &str, domain: &Domain) -> Result<(), AgentError> {
        if self.config.anti_spoofing != AntiSpoofingMode::Required {
            return Ok(());
        }
        if let Some(detail) = self
            .anti_spoofing
            .blocks_guests()
            .then(|| self.anti_spoofing.detail.clone().unwrap_or_default())
        {
            return Err(AgentError::AntiSpoofingUnavailable(detail));
        }
        if !defined_with_filter(domain)? {
            return Err(AgentError::AntiSpoofingUnavailable(format!(
                "domain {name} is defined without a traffic filter on its NIC"
            )));
        }
        Ok(())
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
        let disk = Self::lookup_volume(&self.pool()?, &disk_volume_name(name))?;
        let disk_present = disk.is_some();
        let resources = domain
            .as_ref()
            .map(|domain| domain_resources(domain, disk.as_ref()))
            .transpose()?;
        let data_disks = xml
            .as_ref()
            .map(|xml| self.observe_data_disks(xml))
            .unwrap_or_default();
        let mac_address = xml.as_ref().and_then(|xml| defined_mac(&xml.inactive));
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
        let disk_name = disk_volume_name(name);
        if Self::lookup_volume(&pool, &disk_name)?.is_none() {
            if !spec.create_disk {
                return Err(AgentError::DiskMissing {
                    domain: name.to_owned(),
                    volume: disk_name,
                });
            }
            let image = Self::lookup_volume(&pool, &spec.image_volume)?
                .ok_or_else(|| AgentError::ImageMissing(spec.image_volume.clone()))?;
            let xml = xml::overlay_volume(&disk_name, spec.disk_gib, &image.path()?);
            let disk = StorageVol::create_xml(&pool, &xml, 0).map_err(|error| {
                // libvirt reports a full pool with a generic error number, so
                // the pool's own figures decide, not the message text.
                let available = pool
                    .refresh(0)
                    .and_then(|()| pool.info())
                    .map(|i| i.available);
                match available {
                    Ok(available) if !fits(available, spec.disk_gib) => AgentError::NoSpace {
                        pool: self.config.pool.clone(),
                        needed_gib: spec.disk_gib,
                    },
                    _ => AgentError::Libvirt(error),
                }
            })?;
            self.record_volume(&disk_name, &disk)?;
            tracing::info!(domain = name, volume = %disk_name, image = %spec.image_volume, "created disk overlay");
        }
        self.grow_disk(&pool, name, &disk_name, spec)?;
        let seed = self.ensure_seed(&pool, name, spec)?;
        let domain = match self.lookup_domain(name)? {
            None => {
                let domain = self.define(name, spec, &disk_name, None)?;
                tracing::info!(domain = name, "defined domain");
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
        self.remove_stale_seeds(&pool, name, seed.as_deref())?;
        let domain = self.converge_link(name, domain, spec, &disk_name)?;
        let waiting_for_key = self.converge_data_disks(name, &domain, spec)?;
        self.converge_power(name, &domain, spec.target(), spec.power_off)?;
        self.record_domain(name, &domain)?;
        let mut observed = self.observe(name)?;
        observed.waiting_for_key = waiting_for_key;
        Ok(observed)
    }

    /// Grows the system disk of a domain that is off to the spec's size
    /// (R23); a disk never shrinks, and a running guest's disk is left
    /// alone (the controller stops it first). libvirt's test driver cannot
    /// resize volumes, so there the empty volume is made again at the new
    /// size.
    fn grow_disk(
        &self,
        pool: &StoragePool,
        name: &str,
        disk_name: &str,
        spec: &DomainSpec,
    ) -> Result<(), AgentError> {
        let Some(disk) = Self::lookup_volume(pool, disk_name)? else {
            return Ok(());
        };
        let wanted = spec.disk_gib.saturating_mul(GIB);
        let capacity = disk.info()?.capacity;
        if capacity >= wanted {
            return Ok(());
        }
        // Refused while the guest still runs, so a pool without room never
        // leaves it stopped for a resize that cannot be done.
        let available = pool.refresh(0).and_then(|()| pool.info())?.available;
        let growth_gib = wanted.saturating_sub(capacity).div_ceil(GIB);
        if !fits(available, growth_gib) {
            return Err(AgentError::NoSpace {
                pool: self.config.pool.clone(),
                needed_gib: growth_gib,
            });
        }
        let running = match self.lookup_domain(name)? {
            Some(domain) => domain.is_active()?,
            None => false,
        };
        if running {
            return Ok(());
        }
        if self.config.uri.starts_with("test:") {
            let image = Self::lookup_volume(pool, &spec.image_volume)?
                .ok_or_else(|| AgentError::ImageMissing(spec.image_volume.clone()))?;
            disk.delete(0)?;
            let xml = xml::overlay_volume(disk_name, spec.disk_gib, &image.path()?);
            let made = StorageVol::create_xml(pool, &xml, 0)?;
            self.record_volume(disk_name, &made)?;
        } else {
            disk.resize(wanted, 0)?;
        }
        tracing::info!(domain = name, volume = %disk_name, disk_gib = spec.disk_gib, "grew the system disk");
        Ok(())
    }

    /// Serials of a domain's data disks: those of its definition and, where
    /// disks are hot-plugged, of its running guest too, so a disk a guest
    /// has not let go of yet still counts as attached.
    fn observe_data_disks(&self, domain_xml: &DomainXml) -> Vec<String> {
        let mut disks = xml::data_disks_in(&domain_xml.inactive);
        if let Some(live) = domain_xml.live.as_deref().filter(|_| self.hot_plugs()) {
            disks.extend(xml::data_disks_in(live));
        }
        let mut serials: Vec<String> = disks.into_iter().map(|d| d.serial).collect();
        serials.sort();
        serials.dedup();
        serials
    }

    /// Whether disks are plugged into running guests: not on the test
    /// driver, which cannot change a running domain's devices (a change of
    /// disks is defined, for its next start).
    fn hot_plugs(&self) -> bool {
        !self.config.uri.starts_with("test:")
    }

    /// Whether seeds are written: not on the test driver, which runs no
    /// guest to read one and cannot upload into its volumes.
    fn writes_seeds(&self) -> bool {
        !self.config.uri.starts_with("test:")
    }

    /// The volume of the spec's cloud-init seed, made when missing: the ISO
    /// is uploaded into a scratch volume and copied to its final name by
    /// libvirt, so a volume with the final name is always whole.
    fn ensure_seed(
        &self,
        pool: &StoragePool,
        name: &str,
        spec: &DomainSpec,
    ) -> Result<Option<String>, AgentError> {
        let Some(seed) = spec.seed.as_ref().filter(|_| self.writes_seeds()) else {
            return Ok(None);
        };
        let volume_name = crate::seed::volume_name(name, seed);
        if Self::lookup_volume(pool, &volume_name)?.is_some() {
            return Ok(Some(volume_name));
        }
        let iso = crate::seed::iso(seed)?;
        let scratch_name = format!("{volume_name}.part");
        if let Some(stale) = Self::lookup_volume(pool, &scratch_name)? {
            stale.delete(0)?;
        }
        let scratch =
            StorageVol::create_xml(pool, &xml::seed_volume(&scratch_name, iso.len() as u64), 0)?;
        let copied = crate::seed::upload(&self.conn, &scratch, &iso).and_then(|()| {
            Ok(StorageVol::create_xml_from(
                pool,
                &xml::seed_volume(&volume_name, iso.len() as u64),
                &scratch,
                0,
            )?)
        });
        scratch.delete(0)?;
        let volume = copied?;
        self.record_volume(&volume_name, &volume)?;
        tracing::info!(domain = name, volume = %volume_name, bytes = iso.len(), "wrote cloud-init seed");
        Ok(Some(volume_name))
    }

    /// Wipes and deletes the domain's seed volumes but `keep`: they hold
    /// the customer's keys and user data.
    fn remove_stale_seeds(
        &self,
        pool: &StoragePool,
        name: &str,
        keep: Option<&str>,
    ) -> Result<(), AgentError> {
        for volume in pool.list_all_volumes(0)? {
            let volume_name = volume.name()?;
            if !stratus_core::agent_api::is_seed_volume_of(name, &volume_name)
                || Some(volume_name.as_str()) == keep
            {
                continue;
            }
            wipe(&volume)?;
            volume.delete(0)?;
            self.forget(None, Some(&volume_name))?;
            tracing::info!(domain = name, volume = %volume_name, "wiped and deleted a cloud-init seed");
        }
        Ok(())
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

    /// Defines domain `name` as `spec` says (again, when `uuid` is the
    /// existing domain's).
    fn define(
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
    fn definition(
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
        let placement = xml::Placement {
            domain_type: &self.config.domain_type,
            pool: &self.config.pool,
            disk_volume,
            network: &self.config.network,
            filter: self.filters_nics(),
            seed_volume: seed_volume.as_deref(),
            agent: self.config.agent_name.as_deref(),
            data_disks: &data_disks,
            console_log: self
                .config
                .console_dir
                .as_deref()
                .map(|dir| crate::seed::console_log(dir, name).display().to_string()),
        };
        xml::domain(name, spec, &placement)
    }

    /// A spec's data disks must be storage copies of this agent's pool,
    /// each once, at most [`MAX_DATA_DISKS`]: checked before anything is
    /// changed.
    fn check_data_disks(&self, name: &str, spec: &DomainSpec) -> Result<(), AgentError> {
        if spec.data_disks.len() > MAX_DATA_DISKS {
            return Err(AgentError::BadRequest(format!(
                "data_disks: at most {MAX_DATA_DISKS} disks, not {}",
                spec.data_disks.len()
            )));
        }
        for (index, disk) in spec.data_disks.iter().enumerate() {
            if !is_storage_serial(&disk.serial) {
                return Err(AgentError::BadRequest(format!(
                    "data_disks[{index}].serial: {:?} is not a storage subscription id",
                    disk.serial
                )));
            }
            // Never a disk of another account's storage, whatever the
            // caller asks: both names carry the account.
            let copy_of = disk
                .volume
                .rsplit_once("-store-v")
                .map(|(base, _)| base)
                .filter(|base| storage_volume_version(base, &disk.volume).is_some());
            match copy_of {
                Some(base) if check_managed_name(base).is_ok() => {
                    let same_account =
                        account_of(base).is_some_and(|a| Some(a) == account_of(name));
                    if !same_account {
                        return Err(AgentError::BadRequest(format!(
                            "data_disks[{index}].volume: {} belongs to another account than {name}",
                            disk.volume
                        )));
                    }
                }
                _ => {
                    return Err(AgentError::BadRequest(format!(
                        "data_disks[{index}].volume: {:?} is not a storage copy",
                        disk.volume
                    )));
                }
            }
            if spec.data_disks[..index]
                .iter()
                .any(|d| d.serial == disk.serial || d.volume == disk.volume)
            {
                return Err(AgentError::BadRequest(format!(
                    "data_disks[{index}]: {} is listed twice",
                    disk.serial
                )));
            }
        }
        Ok(())
    }

    /// A domain of this daemon with `volume` as a disk, in its definition
    /// or its running guest, if any (whichever agent defined it).
    pub(crate) fn domain_using(&self, volume: &str) -> Result<Option<String>, AgentError> {
        // This agent's pool: agents sharing a daemon have volumes of one
        // name (the two copies of a subscription) in their own pools.
        let needle = format!(
            "pool='{}' volume='{}'",
            xml::escape(&self.config.pool),
            xml::escape(volume)
        );
        for domain in self.conn.list_all_domains(0)? {
            let mut uses = domain
                .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?
                .contains(&needle);
            if !uses && domain.is_active()? {
                uses = domain.xml_desc(0)?.contains(&needle);
            }
            if uses {
                return Ok(Some(domain.name()?));
            }
        }
        Ok(None)
    }

    /// Every disk's volume must be in this agent's pool.
    fn check_data_volumes(&self, disks: &[DataDisk]) -> Result<(), AgentError> {
        let pool = self.pool()?;
        for disk in disks {
            if Self::lookup_volume(&pool, &disk.volume)?.is_none() {
                return Err(AgentError::BadRequest(format!(
                    "data_disks: the volume {} of {} is not in pool {}",
                    disk.volume, disk.serial, self.config.pool
                )));
            }
        }
        Ok(())
    }

    /// The spec's data disks with the device names they have, or will
    /// have, in domain `name`.
    fn data_disk_targets(
        &self,
        name: &str,
        spec: &DomainSpec,
    ) -> Result<Vec<(DataDisk, String)>, AgentError> {
        if spec.data_disks.is_empty() {
            return Ok(Vec::new());
        }
        let (defined, taken) = match self.lookup_domain(name)? {
            Some(domain) => data_disks_of(&domain)?,
            None => (Vec::new(), Vec::new()),
        };
        xml::data_disk_targets(&spec.data_disks, &defined, &taken)
    }

    /// Attaches the spec's data disks the domain lacks and detaches those
    /// it no longer lists: in the definition, and in the running guest
    /// (hot-plug). A guest may take a while to let a disk go; the next
    /// call looks again. Answers the LUKS disks left out for want of their
    /// key.
    fn converge_data_disks(
        &self,
        name: &str,
        domain: &Domain,
        spec: &DomainSpec,
    ) -> Result<Vec<String>, AgentError> {
        let mut waiting_for_key = Vec::new();
        let active = domain.is_active()?;
        let config = xml::data_disks_in(&domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?);
        if !self.hot_plugs() {
            let defined: Vec<(&str, Option<&str>)> = config
                .iter()
                .map(|d| (d.serial.as_str(), d.volume.as_deref()))
                .collect();
            // Without hot-plug there is no running guest to unlock a LUKS
            // disk for: only plain disks are defined.
            let wanted: Vec<(&str, Option<&str>)> = spec
                .data_disks
                .iter()
                .filter(|d| !d.encrypted)
                .map(|d| (d.serial.as_str(), Some(d.volume.as_str())))
                .collect();
            if defined.len() != wanted.len() || wanted.iter().any(|w| !defined.contains(w)) {
                self.check_data_volumes(&spec.data_disks)?;
                self.define(
                    name,
                    spec,
                    &disk_volume_name(name),
                    Some(domain.uuid_string()?),
                )?;
                tracing::info!(
                    domain = name,
                    disks = wanted.len(),
                    "defined the data disks"
                );
            }
            waiting_for_key.extend(
                spec.data_disks
                    .iter()
                    .filter(|d| d.encrypted)
                    .map(|d| d.serial.clone()),
            );
            return Ok(waiting_for_key);
        }
        let live = if active {
            xml::data_disks_in(&domain.xml_desc(0)?)
        } else {
            Vec::new()
        };
        let wanted = |d: &xml::DefinedDataDisk| {
            spec.data_disks
                .iter()
                .any(|w| w.serial == d.serial && Some(&w.volume) == d.volume.as_ref())
        };
        for (disks, flag) in [
            (&config, virt::sys::VIR_DOMAIN_AFFECT_CONFIG),
            (&live, virt::sys::VIR_DOMAIN_AFFECT_LIVE),
        ] {
            for leaving in disks.iter().filter(|d| !wanted(d)) {
                let device = xml::Disk {
                    pool: self.config.pool.clone(),
                    volume: leaving.volume.clone().unwrap_or_default(),
                    target: leaving.target.clone(),
                    format: "raw".to_owned(),
                    serial: Some(leaving.serial.clone()),
                    key_secret: None,
                };
                match domain.detach_device_flags(&device.element().render(), flag) {
                    Ok(()) => {
                        tracing::info!(
                            domain = name,
                            storage = %leaving.serial,
                            live = flag == virt::sys::VIR_DOMAIN_AFFECT_LIVE,
                            "detached a data disk"
                        );
                        // QEMU read the key when it opened the disk; the
                        // hypervisor keeps it no longer than the disk is used.
                        if let Some(volume) = &leaving.volume {
                            self.unload_key(volume)?;
                        }
                    }
                    // The guest has not let go yet: reported as still
                    // attached, tried again on the next call.
                    Err(error) if flag == virt::sys::VIR_DOMAIN_AFFECT_LIVE => tracing::warn!(
                        domain = name,
                        storage = %leaving.serial,
                        error = %error,
                        "the running guest did not let a data disk go yet"
                    ),
                    Err(error) => return Err(error.into()),
                }
            }
        }
        let assigned = self.data_disk_targets(name, spec)?;
        for (disk, target) in &assigned {
            let mut device = xml::Disk::data(&self.config.pool, disk, target.clone());
            let present = |disks: &[xml::DefinedDataDisk]| {
                disks
                    .iter()
                    .any(|d| d.serial == disk.serial && d.volume.as_ref() == Some(&disk.volume))
            };
            let mut flags = 0;
            // A LUKS disk is only ever plugged into the running guest, so
            // a guest started again comes up without it until its key is
            // given again.
            if !present(&config) && !disk.encrypted {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            if active && !present(&live) {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if disk.encrypted && !active {
                self.unload_key(&disk.volume)?;
            }
            if flags == 0 {
                continue;
            }
            // Held until it is attached: a wipe of this volume waits, then
            // sees the domain using it.
            let volume_lock = self.volume_lock(&disk.volume);
            let _volume_guard = volume_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.is_being_written(&disk.volume) {
                // A repair or a copy is writing it: plugged in once done
                // (the server's next ensure), never half-written.
                tracing::info!(domain = name, volume = %disk.volume, "a data disk waits for its volume to be written");
                continue;
            }
            self.check_data_volumes(std::slice::from_ref(disk))?;
            if disk.encrypted {
                match self.key_secret_of(&disk.volume)? {
                    Some(uuid) => device.key_secret = Some(uuid),
                    None => {
                        tracing::debug!(
                            domain = name,
                            storage = %disk.serial,
                            "a LUKS data disk waits for its key"
                        );
                        waiting_for_key.push(disk.serial.clone());
                        continue;
                    }
                }
            }
            domain.attach_device_flags(&device.element().render(), flags)?;
            tracing::info!(
                domain = name,
                storage = %disk.serial,
                target = %target,
                live = flags & virt::sys::VIR_DOMAIN_AFFECT_LIVE != 0,
                "attached a data disk"
            );
        }
        Ok(waiting_for_key)
    }

    /// Whether a domain about to start (off, and wanted running) was
    /// defined without the traffic filter this hypervisor puts on NICs.
    fn lacks_filter(&self, domain: &Domain, target: Target) -> Result<bool, AgentError> {
        if target != Target::Running || !self.filters_nics() || domain.is_active()? {
            return Ok(false);
        }
        Ok(!defined_with_filter(domain)?)
    }

    /// Puts the NIC's link up or down as the spec says (R5: an abusing
    /// guest keeps running with its network cut): in the definition, and in
    /// the running guest where the hypervisor can change it live.
    fn converge_link(
        &self,
        name: &str,
        domain: Domain,
        spec: &DomainSpec,
        disk_volume: &str,
    ) -> Result<Domain, AgentError> {
        let up = spec.link_up();
        let defined_down = link_down_in(&domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?);
        let domain = if defined_down == up {
            let uuid = domain.uuid_string()?;
            let domain = self.define(name, spec, disk_volume, Some(uuid))?;
            tracing::info!(domain = name, link_up = up, "defined the NIC's link");
            domain
        } else {
            domain
        };
        if !domain.is_active()? || link_down_in(&domain.xml_desc(0)?) != up {
            return Ok(domain);
        }
        let nic = &self.definition(name, spec, disk_volume)?.interfaces[0];
        match domain.update_device_flags(&nic.render(), virt::sys::VIR_DOMAIN_AFFECT_LIVE) {
            Ok(()) => tracing::info!(domain = name, link_up = up, "set the running guest's link"),
            Err(error) if is_unsupported(&error) => tracing::warn!(
                domain = name,
                link_up = up,
                error = %error,
                "this hypervisor cannot change a running guest's link; the definition applies at the next start"
            ),
            Err(error) => return Err(error.into()),
        }
        Ok(domain)
    }

    /// Never waits for a guest: a shutdown is requested (ACPI) and the
    /// answer says the domain is still running; the controller looks again
    /// and asks for `power_off` once the guest had its grace period.
    fn converge_power(
        &self,
        name: &str,
        domain: &Domain,
        target: Target,
        power_off: bool,
    ) -> Result<(), AgentError> {
        let state = map_state(domain.state()?.0);
        if target.reached(state) {
            return Ok(());
        }
        match (target, state) {
            (Target::Running, DomainState::Paused) => domain.resume()?,
            (Target::Running, DomainState::Stopped | DomainState::Crashed) => {
                self.check_filtered(name, domain)?;
                if domain.is_active()? {
                    domain.destroy()?;
                }
                domain.create()?;
                tracing::info!(domain = name, "started domain");
            }
            // Still shutting down: started (or paused) on a later call, once it is off.
            (Target::Running | Target::Paused, DomainState::Transitioning) => {}
            (Target::Paused, DomainState::Running) => {
                domain.suspend()?;
                tracing::info!(domain = name, "paused domain");
            }
            (Target::Paused | Target::Stopped, DomainState::Crashed)
            | (Target::Stopped, DomainState::Paused) => {
                if domain.is_active()? {
                    domain.destroy()?;
                }
            }
            (Target::Stopped, DomainState::Running | DomainState::Transitioning) => {
                if power_off {
                    domain.destroy()?;
                    tracing::warn!(domain = name, "powered off a guest that did not shut down");
                } else if let Err(e) = domain.shutdown() {
                    if domain.is_active()? {
                        tracing::warn!(domain = name, error = %e, "ACPI shutdown refused; powering off");
                        domain.destroy()?;
                    }
                } else {
                    tracing::info!(domain = name, "asked the guest to shut down");
                }
            }
            // Reached: returned above.
            (Target::Running, DomainState::Running)
            | (Target::Paused, DomainState::Paused | DomainState::Stopped)
            | (Target::Stopped, DomainState::Stopped) => {}
        }
        Ok(())
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
        let disk_name = disk_volume_name(name);
        let mut disposal = None;
        if let Some(disk) = Self::lookup_volume(&self.pool()?, &disk_name)? {
            let disposed = wipe(&disk)?;
            disk.delete(0)?;
            match &disposed {
                DiskDisposal::Wiped => {
                    tracing::info!(volume = %disk_name, "wiped and deleted disk")
                }
                DiskDisposal::DeletedWithoutWipe { reason } => {
                    tracing::warn!(volume = %disk_name, %reason, "deleted disk WITHOUT wiping it")
                }
            }
            disposal = Some(disposed);
        }
        self.forget(None, Some(&disk_name))?;
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

/// Definitions of the traffic filters tried at start before they count as
/// unavailable.
const FILTER_DEFINE_ATTEMPTS: usize = 5;

/// Defines stratus's traffic filters (again at every start, so an upgrade
/// brings its rules) and checks libvirt's own `clean-traffic` is there.
/// Failure is reported, not fatal: the agent still answers, and says why
/// its guests are not filtered.
fn install_filters(conn: &Connect, mode: AntiSpoofingMode) -> AntiSpoofing {
    let required = mode == AntiSpoofingMode::Required;
    let defined_uuid = |name: &str| {
        conn.lookup_nwfilter_by_name(name)
            .and_then(|filter| filter.uuid_string())
            .ok()
    };
    let define_all = || {
        xml::network_filters(defined_uuid)
            .into_iter()
            .try_for_each(|(name, definition)| {
                conn.define_nwfilter_xml(&definition)
                    .map(drop)
                    .map_err(|e| format!("defining network filter {name}: {e}"))
            })
    };
    // Agents starting together on one daemon race: one defines a filter
    // between another's UUID lookup and its definition, which libvirt then
    // refuses for lacking the UUID. Looking the UUIDs up again settles it.
    let mut defined = define_all();
    for _ in 1..FILTER_DEFINE_ATTEMPTS {
        if defined.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        defined = define_all();
    }
    let installed = defined.and_then(|()| {
        conn.lookup_nwfilter_by_name(xml::CLEAN_TRAFFIC)
            .map(drop)
            .map_err(|e| format!("libvirt's {} filter: {e}", xml::CLEAN_TRAFFIC))
    });
    match installed {
        Ok(()) => {
            tracing::info!("traffic filters defined: guests send only from their own addresses");
            AntiSpoofing {
                enforced: true,
                required,
                detail: None,
            }
        }
        Err(detail) => {
            if required {
                tracing::error!(%detail, "anti-spoofing is required and unavailable: no guest will be started");
            } else {
                tracing::warn!(%detail, "anti-spoofing unavailable: guests run unfiltered");
            }
            AntiSpoofing {
                enforced: false,
                required,
                detail: Some(detail),
            }
        }
    }
}

/// Overwrites a disk's data before it is deleted. A file on this host (a
/// dir pool) is overwritten here, extent by extent: libvirt's own wipe of a
/// qcow2 overlay only rewrites its header and leaves the guest's data in
/// the clusters behind it. Other volumes go through libvirt's wipe; a
/// storage that cannot wipe (the test driver) is reported, never hidden.
pub(crate) fn wipe(disk: &StorageVol) -> Result<DiskDisposal, AgentError> {
    if let Ok(path) = disk.path()
        && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
    {
        overwrite_data_extents(std::path::Path::new(&path)).map_err(|source| {
            AgentError::Persist {
                path: path.clone(),
                source,
            }
        })?;
        return Ok(DiskDisposal::Wiped);
    }
    match disk.wipe(0) {
        Ok(()) => Ok(DiskDisposal::Wiped),
        Err(e) if is_missing(&e, ErrorNumber::NoSupport) => Ok(DiskDisposal::DeletedWithoutWipe {
            reason: format!("the storage driver cannot wipe: {}", e.message()),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Writes zeros over every data extent of a (possibly sparse) file, so the
/// holes stay holes and only what was ever written is rewritten.
pub fn overwrite_data_extents(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let length = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    while offset < length {
        // SAFETY: lseek on a file descriptor owned by `file`, which lives
        // for the whole loop.
        let data = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            // ENXIO: no data after `offset`.
            if error.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(error);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (start, end) = (data as u64, (hole as u64).min(length));
        file.seek(SeekFrom::Start(start))?;
        let mut at = start;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            at += n as u64;
        }
        offset = end;
    }
    file.sync_all()
}

/// Gives back to the file system every block of `path` that reads as
/// zeros: a backup job writes a disk's holes out as zeros (or allocated,
/// unwritten extents), and a copy must take on disk what its data takes.
/// The bytes read are unchanged.
pub fn release_zero_runs(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 1 << 20;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let fd = file.as_raw_fd();
    let punch = |start: u64, length: u64| -> std::io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on a file descriptor owned by `file`, which
        // outlives the closure; KEEP_SIZE leaves the file's length alone.
        let done = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                length as libc::off_t,
            )
        };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let length = file.metadata()?.len();
    let mut buffer = vec![0u8; BLOCK as usize];
    let mut offset: u64 = 0;
    while offset < length {
        // SAFETY: lseek on `file`'s descriptor, alive for the whole loop.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENXIO) {
                // What is left reads as zeros: allocated or not, it goes.
                punch(offset, length - offset)?;
                break;
            }
            return Err(error);
        }
        let data = data as u64;
        // Reads as zeros (a hole, or an unwritten extent that still holds
        // blocks): given back.
        punch(offset, data - offset)?;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(length);
        let mut at = data;
        while at < end {
            // Whole blocks aligned on BLOCK, so punched ranges are the file
            // system's whole blocks.
            let n = (end - at).min(BLOCK - at % BLOCK);
            let chunk = &mut buffer[..n as usize];
            file.read_exact_at(chunk, at)?;
            if chunk.iter().all(|b| *b == 0) {
                punch(at, n)?;
            }
            at += n;
        }
        offset = end;
    }
    file.sync_all()
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
        let caps = "<guest><arch name='x86_64'><domain type='qemu'/></arch></guest>\
                    <guest><arch name='i686'><domain type='qemu'/></arch></guest>";
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
