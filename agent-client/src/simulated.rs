//! A simulated agent for the controller's tests: in-memory hypervisors with
//! the agent's semantics, and faults injected on demand (unreachable nodes,
//! failing calls, vanished disks). End-to-end tests use real agents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use stratus_core::agent_api::{
    AgentErrorCode, AntiSpoofing, DiskDisposal, DomainObservation, DomainResources, DomainSpec,
    DomainState, Link, LiveCopy, LiveCopyMethod, LuksFormat, NodeReport, PoolInfo, StoredContent,
    Target, VolumeObservation, VolumeSpec, VolumeUnlock, VolumeVersion, storage_volume_name,
    storage_volume_version,
};

use crate::client::{AgentCallError, AgentClient, AgentEndpoint, ContentStream};

#[derive(Debug, Clone)]
struct SimDomain {
    state: Option<DomainState>,
    disk: bool,
    spec: Option<DomainSpec>,
    /// What its console would show of a boot that failed.
    boot_failure: Option<String>,
    /// Its vCPUs, memory and disk as made: changed only while it is off,
    /// as a real agent does (R23).
    resources: Option<DomainResources>,
    /// The system disk's generation and the image it was made from:
    /// replaced only while it is off, as a real agent does.
    disk_generation: u32,
    disk_image: Option<String>,
    /// Generations of system disks replaced by a rebuild and not wiped yet.
    leftover_disks: BTreeSet<u32>,
    /// Defined in rescue mode, booting this image (changed only while off).
    rescue_image: Option<String>,
    /// What the guest sees on its system disk.
    disk_content: Vec<u8>,
}

/// A simulated domain's system disk, as tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDisk {
    pub generation: u32,
    /// The image volume it was made from.
    pub image: Option<String>,
    /// Older generations still on the hypervisor (not wiped yet).
    pub leftovers: Vec<u32>,
    /// What the guest sees on it: `image:{volume}` as made from an image,
    /// what a test wrote, or a snapshot's content after a restore.
    pub content: Vec<u8>,
}

/// A storage copy: its size and the content of each version.
#[derive(Debug, Clone)]
struct SimCopy {
    size_gib: u64,
    versions: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
struct SimNode {
    report: NodeReport,
    reachable: bool,
    domains: BTreeMap<String, SimDomain>,
    /// Storage copies by managed name.
    volumes: BTreeMap<String, SimCopy>,
    /// Its storage cannot overwrite disks (like libvirt's test driver).
    cannot_wipe: bool,
    /// Its guests ignore ACPI shutdown requests.
    guests_ignore_acpi: bool,
    /// LUKS volumes, with the SHA-256 of the key they were formatted with.
    luks_keys: BTreeMap<String, String>,
    /// LUKS volumes whose key is loaded.
    unlocked: BTreeSet<String>,
    /// Copies of a running guest's disk need the guest paused too long.
    copies_need_long_pauses: bool,
    /// Like libvirt's test driver: no volume's bytes stream in or out.
    cannot_stream_volumes: bool,
}

#[derive(Default)]
struct SimState {
    nodes: HashMap<String, SimNode>,
    /// (hypervisor, operation) → number of calls still to fail.
    failures: HashMap<(String, &'static str), usize>,
    /// Calls carried out whose answer is lost (the agent killed after
    /// acting, the connection cut): they fail as unreachable.
    lost_answers: HashMap<(String, &'static str), usize>,
    calls: Vec<String>,
}

#[derive(Default)]
pub struct SimulatedAgent {
    state: Mutex<SimState>,
}

impl SimulatedAgent {
    fn with<T>(&self, f: impl FnOnce(&mut SimState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a hypervisor with the given capacity and images.
    pub fn add_node(
        &self,
        hypervisor: &str,
        zone: &str,
        vcpus: u32,
        memory_mib: u64,
        disk_gib: u64,
        images: &[&str],
    ) {
        let report = NodeReport {
            zone: zone.to_owned(),
            vcpus,
            memory_mib,
            pool: PoolInfo {
                name: "default".into(),
                capacity_bytes: disk_gib << 30,
                allocation_bytes: 0,
                available_bytes: disk_gib << 30,
            },
            images: images.iter().map(|s| (*s).to_owned()).collect(),
            domains: Vec::new(),
            anti_spoofing: AntiSpoofing {
                enforced: true,
                required: true,
                detail: None,
            },
        };
        self.with(|s| {
            s.nodes.insert(
                hypervisor.to_owned(),
                SimNode {
                    report,
                    reachable: true,
                    domains: BTreeMap::new(),
                    volumes: BTreeMap::new(),
                    luks_keys: BTreeMap::new(),
                    unlocked: BTreeSet::new(),
                    cannot_wipe: false,
                    guests_ignore_acpi: false,
                    copies_need_long_pauses: false,
                    cannot_stream_volumes: false,
                },
            )
        });
    }

    /// Changes what a hypervisor reports as its capacity, keeping its domains.
    pub fn set_capacity(&self, hypervisor: &str, vcpus: u32, memory_mib: u64) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.report.vcpus = vcpus;
                node.report.memory_mib = memory_mib;
            }
        });
    }

    /// Changes what a hypervisor reports about filtering guest traffic; one
    /// that must filter and cannot refuses to start guests, as the agent does.
    pub fn set_anti_spoofing(&self, hypervisor: &str, anti_spoofing: AntiSpoofing) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.report.anti_spoofing = anti_spoofing;
            }
        });
    }

    pub fn set_reachable(&self, hypervisor: &str, reachable: bool) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.reachable = reachable;
            }
        });
    }

    /// The next `times` calls of `operation` (`ensure`, `observe`, …) on `hypervisor` fail.
    pub fn fail_next(&self, hypervisor: &str, operation: &'static str, times: usize) {
        self.with(|s| s.failures.insert((hypervisor.to_owned(), operation), times));
    }

    /// An image volume appears in `hypervisor`'s pool.
    pub fn add_image(&self, hypervisor: &str, volume: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.report.images.push(volume.to_owned());
            }
        });
    }

    /// The next `times` calls of `operation` on `hypervisor` are carried
    /// out and their answer lost.
    pub fn lose_next_answers(&self, hypervisor: &str, operation: &'static str, times: usize) {
        self.with(|s| {
            s.lost_answers
                .insert((hypervisor.to_owned(), operation), times)
        });
    }

    /// Makes `hypervisor` like libvirt's test driver: a disk copied into a
    /// storage version cannot be read back, so no snapshot is taken there.
    pub fn cannot_stream_volumes(&self, hypervisor: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.cannot_stream_volumes = true;
            }
        });
    }

    /// Copies of a running guest's disk on `hypervisor` need the guest
    /// paused longer than its agent allows (no backup job there, a large
    /// LUKS disk): they fail as the agent fails them.
    pub fn set_copies_need_long_pauses(&self, hypervisor: &str, long: bool) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.copies_need_long_pauses = long;
            }
        });
    }

    /// The disk of `domain` disappears (operator error, storage failure).
    pub fn lose_disk(&self, hypervisor: &str, domain: &str) {
        self.with(|s| {
            if let Some(d) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.domains.get_mut(domain))
            {
                d.disk = false;
            }
        });
    }

    /// The rescue image `domain` on `hypervisor` is defined to boot, if
    /// it is in rescue mode.
    pub fn rescue_of(&self, hypervisor: &str, domain: &str) -> Option<String> {
        self.with(|s| {
            s.nodes
                .get(hypervisor)?
                .domains
                .get(domain)?
                .rescue_image
                .clone()
        })
    }

    /// The system disk of `domain` on `hypervisor`, if it has one.
    pub fn disk_of(&self, hypervisor: &str, domain: &str) -> Option<SimDisk> {
        self.with(|s| {
            let d = s.nodes.get(hypervisor)?.domains.get(domain)?;
            d.disk.then(|| SimDisk {
                generation: d.disk_generation,
                image: d.disk_image.clone(),
                leftovers: d.leftover_disks.iter().copied().collect(),
                content: d.disk_content.clone(),
            })
        })
    }

    /// The guest of `domain` on `hypervisor` writes `content` to its
    /// system disk.
    pub fn write_disk(&self, hypervisor: &str, domain: &str, content: &[u8]) {
        self.with(|s| {
            if let Some(d) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.domains.get_mut(domain))
            {
                d.disk_content = content.to_vec();
            }
        })
    }

    /// The storage copy of `name` disappears (operator error, storage failure).
    pub fn lose_volume(&self, hypervisor: &str, name: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.volumes.remove(name);
            }
        });
    }

    /// The storage copies on a hypervisor, by managed name, with their size.
    pub fn volumes(&self, hypervisor: &str) -> Vec<(String, u64)> {
        self.with(|s| {
            s.nodes
                .get(hypervisor)
                .map(|n| {
                    n.volumes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.size_gib))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The versions of a storage copy, with their content.
    pub fn versions(&self, hypervisor: &str, name: &str) -> BTreeMap<u64, Vec<u8>> {
        self.with(|s| {
            s.nodes
                .get(hypervisor)
                .and_then(|n| n.volumes.get(name))
                .map(|copy| copy.versions.clone())
                .unwrap_or_default()
        })
    }

    /// Takes version `version` of a copy away (a storage file system
    /// unmounted), answering its bytes.
    pub fn take_version(&self, hypervisor: &str, name: &str, version: u64) -> Option<Vec<u8>> {
        self.with(|s| {
            s.nodes
                .get_mut(hypervisor)
                .and_then(|n| n.volumes.get_mut(name))
                .and_then(|copy| copy.versions.remove(&version))
        })
    }

    /// Puts bytes back as version `version` of a copy (mounted again).
    pub fn put_version(&self, hypervisor: &str, name: &str, version: u64, bytes: Vec<u8>) {
        self.with(|s| {
            if let Some(copy) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.volumes.get_mut(name))
            {
                copy.versions.insert(version, bytes);
            }
        });
    }

    /// Changes bytes of a version in place (a failing disk, ransomware).
    pub fn corrupt_version(&self, hypervisor: &str, name: &str, version: u64) {
        self.with(|s| {
            if let Some(bytes) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.volumes.get_mut(name))
                .and_then(|copy| copy.versions.get_mut(&version))
                && let Some(first) = bytes.first_mut()
            {
                *first ^= 0xff;
            }
        });
    }

    /// The domain is known by another name from now on (what an earlier
    /// release called it).
    pub fn rename_domain(&self, hypervisor: &str, from: &str, to: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor)
                && let Some(domain) = node.domains.remove(from)
            {
                node.domains.insert(to.to_owned(), domain);
            }
        });
    }

    /// The hypervisor's storage can no longer overwrite disks it deletes.
    pub fn cannot_wipe(&self, hypervisor: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.cannot_wipe = true;
            }
        });
    }

    /// The guests of the hypervisor ignore shutdown requests: only a
    /// power-off stops them.
    pub fn guests_ignore_acpi(&self, hypervisor: &str) {
        self.with(|s| {
            if let Some(node) = s.nodes.get_mut(hypervisor) {
                node.guests_ignore_acpi = true;
            }
        });
    }

    /// The domain stops by itself (guest shut down, host rebooted).
    pub fn power_off(&self, hypervisor: &str, domain: &str) {
        self.with(|s| {
            if let Some(d) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.domains.get_mut(domain))
            {
                d.state = Some(DomainState::Stopped);
            }
        });
    }

    /// The guest of `domain` stops booting (its console shows why) until
    /// it is started again.
    pub fn fail_boot(&self, hypervisor: &str, domain: &str, why: &str) {
        self.with(|s| {
            if let Some(d) = s
                .nodes
                .get_mut(hypervisor)
                .and_then(|n| n.domains.get_mut(domain))
            {
                d.boot_failure = Some(why.to_owned());
            }
        });
    }

    pub fn domains(&self, hypervisor: &str) -> Vec<(String, Option<DomainState>, bool)> {
        self.with(|s| {
            s.nodes
                .get(hypervisor)
                .map(|n| {
                    n.domains
                        .iter()
                        .filter(|(_, d)| d.state.is_some() || d.disk)
                        .map(|(name, d)| (name.clone(), d.state, d.disk))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The power state of a domain, `None` when it is not defined.
    pub fn state_of(&self, hypervisor: &str, domain: &str) -> Option<DomainState> {
        self.with(|s| s.nodes.get(hypervisor)?.domains.get(domain)?.state)
    }

    pub fn spec_of(&self, hypervisor: &str, domain: &str) -> Option<DomainSpec> {
        self.with(|s| s.nodes.get(hypervisor)?.domains.get(domain)?.spec.clone())
    }

    /// Calls made, as `operation hypervisor domain`.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    fn call<T>(
        &self,
        agent: &AgentEndpoint,
        operation: &'static str,
        domain: &str,
        f: impl FnOnce(&mut SimNode) -> Result<T, AgentCallError>,
    ) -> Result<T, AgentCallError> {
        self.with(|s| {
            s.calls.push(
                format!("{operation} {} {domain}", agent.hypervisor)
                    .trim_end()
                    .to_owned(),
            );
            if let Some(left) = s
                .failures
                .get_mut(&(agent.hypervisor.to_string(), operation))
                && *left > 0
            {
                *left -= 1;
                return Err(AgentCallError::Unreachable("injected failure".into()));
            }
            let node = s
                .nodes
                .get_mut(agent.hypervisor.as_str())
                .ok_or_else(|| AgentCallError::Unreachable("no such host".into()))?;
            if !node.reachable {
                return Err(AgentCallError::Unreachable("connection refused".into()));
            }
            let answer = f(node);
            if let Some(left) = s
                .lost_answers
                .get_mut(&(agent.hypervisor.to_string(), operation))
                && *left > 0
            {
                *left -= 1;
                return Err(AgentCallError::Unreachable("answer lost".into()));
            }
            answer
        })
    }
}

/// What the simulated node knows of its LUKS volumes.
struct SimKeys<'a> {
    luks: &'a BTreeMap<String, String>,
    unlocked: &'a BTreeSet<String>,
}

impl SimNode {
    /// The domain that has `volume` as a data disk, if any.
    fn domain_using(&self, volume: &str) -> Option<String> {
        self.domains
            .iter()
            .find(|(_, d)| {
                d.spec
                    .as_ref()
                    .is_some_and(|spec| spec.data_disks.iter().any(|disk| disk.volume == volume))
            })
            .map(|(name, _)| name.clone())
    }

    fn keys(&self) -> SimKeys<'_> {
        SimKeys {
            luks: &self.luks_keys,
            unlocked: &self.unlocked,
        }
    }
}

fn volume_observation(name: &str, copy: Option<&SimCopy>, keys: SimKeys<'_>) -> VolumeObservation {
    VolumeObservation {
        pool: "default".into(),
        versions: copy
            .map(|copy| {
                copy.versions
                    .keys()
                    .map(|version| {
                        let volume = storage_volume_name(name, *version);
                        VolumeVersion {
                            version: *version,
                            path: Some(format!("/simulated/{volume}")),
                            capacity_bytes: copy.size_gib << 30,
                            physical_bytes: copy.size_gib << 30,
                            encrypted: keys.luks.contains_key(&volume),
                            unlocked: keys.unlocked.contains(&volume),
                            writing: false,
                            volume,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        disposal: None,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn observation(
    name: &str,
    domain: Option<&SimDomain>,
    unlocked: &BTreeSet<String>,
) -> DomainObservation {
    match domain {
        Some(d) => DomainObservation {
            name: name.to_owned(),
            state: d.state,
            disk_present: d.disk,
            link: match &d.spec {
                Some(spec) if !spec.link_up() => Link::Down,
                _ => Link::Up,
            },
            disk_disposal: None,
            data_disks: d
                .spec
                .iter()
                .flat_map(|spec| {
                    // A LUKS disk is in a running guest only, with its key.
                    spec.data_disks
                        .iter()
                        .filter(|disk| {
                            !disk.encrypted
                                || (d.state == Some(DomainState::Running)
                                    && unlocked.contains(&disk.volume))
                        })
                        .map(|disk| disk.serial.clone())
                })
                .collect(),
            waiting_for_key: Vec::new(),
            guest_failure: d
                .boot_failure
                .clone()
                .filter(|_| d.state == Some(DomainState::Running)),
            mac_address: d.spec.as_ref().map(|spec| spec.mac_address.clone()),
            resources: d.resources,
            disk_generation: d.disk.then_some(d.disk_generation),
            rescued: Some(d.rescue_image.is_some()),
        },
        None => DomainObservation::absent(name),
    }
}

#[async_trait]
impl AgentClient for SimulatedAgent {
    async fn node(&self, agent: &AgentEndpoint) -> Result<NodeReport, AgentCallError> {
        self.call(agent, "node", "", |node| {
            let mut report = node.report.clone();
            report.domains = node
                .domains
                .iter()
                .filter(|(_, d)| d.state.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            Ok(report)
        })
    }

    async fn observe(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        self.call(agent, "observe", domain, |node| {
            Ok(observation(
                domain,
                node.domains.get(domain),
                &node.unlocked,
            ))
        })
    }

    async fn ensure(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
        spec: &DomainSpec,
    ) -> Result<DomainObservation, AgentCallError> {
        self.call(agent, "ensure", domain, |node| {
            let has_image = node.report.images.contains(&spec.image_volume);
            // A restore's disk is a copy of a snapshot's version here.
            let restored = match &spec.disk_source {
                Some(source) => Some(
                    source
                        .rsplit_once("-store-v")
                        .and_then(|(base, _)| {
                            let version = storage_volume_version(base, source)?;
                            node.volumes.get(base)?.versions.get(&version).cloned()
                        })
                        .ok_or_else(|| AgentCallError::Rejected {
                            code: AgentErrorCode::VersionConflict,
                            message: format!("disk_source: {source} does not exist"),
                        })?,
                ),
                None => None,
            };
            let made_content =
                restored.unwrap_or_else(|| format!("image:{}", spec.image_volume).into_bytes());
            let entry = node.domains.entry(domain.to_owned()).or_insert(SimDomain {
                state: None,
                disk: false,
                spec: None,
                boot_failure: None,
                resources: None,
                disk_generation: spec.disk_generation,
                disk_image: None,
                leftover_disks: BTreeSet::new(),
                rescue_image: None,
                disk_content: Vec::new(),
            });
            let off = !matches!(
                entry.state,
                Some(DomainState::Running | DomainState::Paused)
            );
            if off {
                entry.rescue_image = spec.rescue.as_ref().map(|r| r.image_volume.clone());
            }
            if entry.disk && entry.disk_generation > spec.disk_generation {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::BadRequest,
                    message: format!(
                        "disk_generation: the domain has generation {} and {} is older",
                        entry.disk_generation, spec.disk_generation
                    ),
                });
            }
            if entry.disk && off && entry.disk_generation != spec.disk_generation {
                // A rebuild: the new disk beside the old, then the domain
                // defined with it.
                if !has_image {
                    return Err(AgentCallError::Rejected {
                        code: AgentErrorCode::ImageMissing,
                        message: format!("image {} missing", spec.image_volume),
                    });
                }
                entry.leftover_disks.insert(entry.disk_generation);
                entry.disk_generation = spec.disk_generation;
                entry.disk_image = Some(spec.image_volume.clone());
                entry.disk_content = made_content.clone();
                if let Some(resources) = entry.resources.as_mut() {
                    resources.disk_gib = spec.disk_gib;
                }
            }
            if let Some(retired) = spec.retired_disk_generation
                && entry.disk_generation == spec.disk_generation
                && retired != spec.disk_generation
            {
                entry.leftover_disks.remove(&retired);
            }
            if !entry.disk {
                if !spec.create_disk {
                    return Err(AgentCallError::Rejected {
                        code: AgentErrorCode::DiskMissing,
                        message: "disk missing".into(),
                    });
                }
                if !has_image {
                    return Err(AgentCallError::Rejected {
                        code: AgentErrorCode::ImageMissing,
                        message: format!("image {} missing", spec.image_volume),
                    });
                }
                entry.disk = true;
                entry.disk_generation = spec.disk_generation;
                entry.disk_image = Some(spec.image_volume.clone());
                entry.disk_content = made_content;
            }
            let target = spec.target();
            let starting = target == Target::Running
                && !matches!(
                    entry.state,
                    Some(DomainState::Running | DomainState::Paused)
                );
            if starting && node.report.anti_spoofing.blocks_guests() {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::AntiSpoofingUnavailable,
                    message: "this hypervisor must filter guest traffic and cannot".into(),
                });
            }
            entry.spec = Some(spec.clone());
            if off || entry.resources.is_none() {
                let disk_gib = entry.resources.map_or(0, |r| r.disk_gib);
                entry.resources = Some(DomainResources {
                    vcpus: spec.vcpus,
                    memory_mib: spec.memory_mib,
                    disk_gib: disk_gib.max(spec.disk_gib),
                });
            }
            let ignored = node.guests_ignore_acpi
                && !spec.power_off
                && entry.state == Some(DomainState::Running);
            entry.state = Some(match target {
                Target::Running => DomainState::Running,
                Target::Paused if entry.state == Some(DomainState::Running) => DomainState::Paused,
                Target::Paused => entry.state.unwrap_or(DomainState::Stopped),
                Target::Stopped if ignored => DomainState::Running,
                Target::Stopped => DomainState::Stopped,
            });
            let running = entry.state == Some(DomainState::Running);
            let mut waiting_for_key = Vec::new();
            for disk in spec.data_disks.iter().filter(|d| d.encrypted) {
                if !running {
                    node.unlocked.remove(&disk.volume);
                } else if !node.unlocked.contains(&disk.volume) {
                    waiting_for_key.push(disk.serial.clone());
                }
            }
            let mut observed = observation(domain, Some(entry), &node.unlocked);
            observed.waiting_for_key = waiting_for_key;
            Ok(observed)
        })
    }

    async fn reboot(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        self.call(agent, "reboot", domain, |node| {
            match node.domains.get(domain) {
                Some(d) if d.state == Some(DomainState::Running) => {
                    Ok(observation(domain, Some(d), &node.unlocked))
                }
                _ => Err(AgentCallError::Rejected {
                    code: AgentErrorCode::BadRequest,
                    message: "not running".into(),
                }),
            }
        })
    }

    async fn destroy(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        self.call(agent, "destroy", domain, |node| {
            let had_disk = node.domains.remove(domain).is_some_and(|d| d.disk);
            let mut answer = DomainObservation::absent(domain);
            answer.disk_disposal = had_disk.then(|| {
                if node.cannot_wipe {
                    DiskDisposal::DeletedWithoutWipe {
                        reason: "the simulated storage cannot wipe".into(),
                    }
                } else {
                    DiskDisposal::Wiped
                }
            });
            Ok(answer)
        })
    }

    /// A console line per boot input the simulated guest was given.
    async fn console(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<Vec<u8>, AgentCallError> {
        self.call(agent, "console", domain, |node| {
            let seed = node
                .domains
                .get(domain)
                .and_then(|d| d.spec.as_ref())
                .and_then(|spec| spec.seed.as_ref());
            Ok(seed.map_or_else(Vec::new, |seed| {
                format!(
                    "simulated guest {domain}: hostname={} ssh-keys={}\n",
                    seed.hostname,
                    seed.ssh_keys.len()
                )
                .into_bytes()
            }))
        })
    }

    async fn observe_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        self.call(agent, "observe_volume", name, |node| {
            Ok(volume_observation(
                name,
                node.volumes.get(name),
                node.keys(),
            ))
        })
    }

    async fn ensure_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        spec: &VolumeSpec,
    ) -> Result<VolumeObservation, AgentCallError> {
        self.call(agent, "ensure_volume", name, |node| {
            if let Some(copy) = node.volumes.get(name)
                && !copy.versions.is_empty()
            {
                return Ok(volume_observation(name, Some(copy), node.keys()));
            }
            if !spec.create {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VolumeMissing,
                    message: "volume missing".into(),
                });
            }
            let copy = SimCopy {
                size_gib: spec.size_gib,
                versions: BTreeMap::from([(0, Vec::new())]),
            };
            let answer = volume_observation(name, Some(&copy), node.keys());
            node.volumes.insert(name.to_owned(), copy);
            Ok(answer)
        })
    }

    async fn destroy_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        self.call(agent, "destroy_volume", name, |node| {
            let in_use = node.volumes.get(name).and_then(|copy| {
                copy.versions
                    .keys()
                    .find_map(|v| node.domain_using(&storage_volume_name(name, *v)))
            });
            if let Some(domain) = in_use {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VolumeInUse,
                    message: format!("a version of {name} is a disk of domain {domain}"),
                });
            }
            let existed = node.volumes.remove(name).is_some();
            let mut answer = volume_observation(name, None, node.keys());
            answer.disposal = existed.then(|| {
                if node.cannot_wipe {
                    DiskDisposal::DeletedWithoutWipe {
                        reason: "the simulated storage cannot wipe".into(),
                    }
                } else {
                    DiskDisposal::Wiped
                }
            });
            Ok(answer)
        })
    }

    /// Collects the content, then stores it, as the agent does (nothing
    /// kept beyond the size or of a cut stream).
    async fn write_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        size_gib: u64,
        mut content: ContentStream,
    ) -> Result<StoredContent, AgentCallError> {
        use futures::StreamExt;
        let limit = size_gib << 30;
        let mut bytes = Vec::new();
        let mut failure = None;
        while let Some(chunk) = content.next().await {
            match chunk {
                Ok(chunk) if (bytes.len() + chunk.len()) as u64 <= limit => {
                    bytes.extend_from_slice(&chunk)
                }
                Ok(_) => {
                    failure = Some(AgentCallError::Rejected {
                        code: AgentErrorCode::ContentTooLarge,
                        message: format!("more than {limit} bytes"),
                    });
                    break;
                }
                Err(error) => {
                    failure = Some(AgentCallError::Rejected {
                        code: AgentErrorCode::BadRequest,
                        message: error,
                    });
                    break;
                }
            }
        }
        self.call(agent, "write_version", name, |node| {
            let copy = node.volumes.entry(name.to_owned()).or_insert(SimCopy {
                size_gib,
                versions: BTreeMap::new(),
            });
            if copy.versions.contains_key(&version) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionExists,
                    message: format!("version {version} exists"),
                });
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
            let stored = StoredContent {
                version,
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
                live_copy: None,
            };
            copy.versions.insert(version, bytes);
            Ok(stored)
        })
    }

    async fn read_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<ContentStream, AgentCallError> {
        let content = self.call(agent, "read_version", name, |node| {
            let stored = node
                .volumes
                .get(name)
                .and_then(|copy| copy.versions.get(&version))
                .ok_or_else(|| AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("version {version} does not exist"),
                })?;
            let mut content = stored.clone();
            // A raw volume reads as zeros beyond what was written.
            content.resize(bytes as usize, 0);
            Ok(content)
        })?;
        let chunks: Vec<Result<Vec<u8>, String>> =
            content.chunks(1 << 16).map(|c| Ok(c.to_vec())).collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn delete_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<VolumeObservation, AgentCallError> {
        self.call(agent, "delete_version", name, |node| {
            // As the real agent: never wiped under a domain that uses it.
            let volume = storage_volume_name(name, version);
            if let Some(domain) = node.domain_using(&volume) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VolumeInUse,
                    message: format!("{volume} is a disk of domain {domain}"),
                });
            }
            if let Some(copy) = node.volumes.get_mut(name) {
                copy.versions.remove(&version);
            }
            Ok(volume_observation(
                name,
                node.volumes.get(name),
                node.keys(),
            ))
        })
    }

    async fn copy_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        from: u64,
        to: u64,
        pause_guest: bool,
    ) -> Result<StoredContent, AgentCallError> {
        self.call(agent, "copy_version", name, |node| {
            let volume = storage_volume_name(name, from);
            let user = node.domain_using(&volume);
            if let Some(domain) = user.as_ref().filter(|_| !pause_guest) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("{volume} is a disk of domain {domain}"),
                });
            }
            if user.is_some() && node.copies_need_long_pauses {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::PauseLimit,
                    message: format!(
                        "copying {volume} needed its guest paused longer than the 30000 ms allowed: the guest was resumed and the copy dropped"
                    ),
                });
            }
            let copy = node
                .volumes
                .get_mut(name)
                .ok_or_else(|| AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("{volume} does not exist"),
                })?;
            if copy.versions.contains_key(&to) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionExists,
                    message: format!("version {to} already exists"),
                });
            }
            if to <= from {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("version {to} cannot be written"),
                });
            }
            let content =
                copy.versions
                    .get(&from)
                    .cloned()
                    .ok_or_else(|| AgentCallError::Rejected {
                        code: AgentErrorCode::VersionConflict,
                        message: format!("{volume} does not exist"),
                    })?;
            // Like a hypervisor with backup jobs: the guest runs on.
            let stored = StoredContent {
                version: to,
                bytes: content.len() as u64,
                sha256: sha256_hex(&content),
                live_copy: user.map(|_| LiveCopy {
                    method: LiveCopyMethod::Backup,
                    guest_paused_ms: 0,
                }),
            };
            copy.versions.insert(to, content);
            Ok(stored)
        })
    }

    async fn capture_disk(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        domain: &str,
        to: u64,
    ) -> Result<StoredContent, AgentCallError> {
        self.call(agent, "capture_disk", name, |node| {
            let guest = node
                .domains
                .get(domain)
                .filter(|d| d.disk)
                .ok_or_else(|| AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("domain {domain} is not defined here"),
                })?;
            let content = guest.disk_content.clone();
            let running = guest.state == Some(DomainState::Running);
            if node.cannot_stream_volumes {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::ContentUnsupported,
                    message: "this hypervisor cannot stream volume bytes (store, read or copy a content): virStorageVolDownload is not supported".into(),
                });
            }
            if running && node.copies_need_long_pauses {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::PauseLimit,
                    message: format!(
                        "copying the disk of {domain} needed its guest paused longer than the 30000 ms allowed: the guest was resumed and the copy dropped"
                    ),
                });
            }
            let copy = node
                .volumes
                .get_mut(name)
                .ok_or_else(|| AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("{name} does not exist"),
                })?;
            if copy.versions.contains_key(&to) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionExists,
                    message: format!("version {to} already exists"),
                });
            }
            let stored = StoredContent {
                version: to,
                bytes: content.len() as u64,
                sha256: sha256_hex(&content),
                live_copy: running.then_some(LiveCopy {
                    method: LiveCopyMethod::Backup,
                    guest_paused_ms: 0,
                }),
            };
            copy.versions.insert(to, content);
            Ok(stored)
        })
    }

    async fn format_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        format: &LuksFormat,
    ) -> Result<StoredContent, AgentCallError> {
        self.call(agent, "format_version", name, |node| {
            let copy = node.volumes.entry(name.to_owned()).or_insert(SimCopy {
                size_gib: format.size_gib,
                versions: BTreeMap::new(),
            });
            if copy.versions.contains_key(&version) {
                return Err(AgentCallError::Rejected {
                    code: AgentErrorCode::VersionExists,
                    message: format!("version {version} already exists"),
                });
            }
            // A LUKS header: the magic, then what only the key opens.
            let mut header = b"LUKS\xba\xbe".to_vec();
            header.extend_from_slice(&[0u8; 506]);
            let stored = StoredContent {
                version,
                bytes: header.len() as u64,
                sha256: sha256_hex(&header),
                live_copy: None,
            };
            copy.versions.insert(version, header);
            node.luks_keys.insert(
                storage_volume_name(name, version),
                sha256_hex(format.key.expose().as_bytes()),
            );
            Ok(stored)
        })
    }

    async fn unlock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        unlock: &VolumeUnlock,
    ) -> Result<(), AgentCallError> {
        self.call(agent, "unlock_version", name, |node| {
            let volume = storage_volume_name(name, version);
            match node.luks_keys.get(&volume) {
                None => Err(AgentCallError::Rejected {
                    code: AgentErrorCode::BadRequest,
                    message: format!("{volume} is not a LUKS volume"),
                }),
                Some(digest) if *digest != sha256_hex(unlock.key.expose().as_bytes()) => {
                    Err(AgentCallError::Rejected {
                        code: AgentErrorCode::WrongKey,
                        message: format!("the key does not open the LUKS volume {volume}"),
                    })
                }
                Some(_) => {
                    node.unlocked.insert(volume);
                    Ok(())
                }
            }
        })
    }

    async fn lock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<(), AgentCallError> {
        self.call(agent, "lock_version", name, |node| {
            node.unlocked.remove(&storage_volume_name(name, version));
            Ok(())
        })
    }

    async fn checksum_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<StoredContent, AgentCallError> {
        self.call(agent, "checksum_version", name, |node| {
            let mut content = node
                .volumes
                .get(name)
                .and_then(|copy| copy.versions.get(&version))
                .cloned()
                .ok_or_else(|| AgentCallError::Rejected {
                    code: AgentErrorCode::VersionConflict,
                    message: format!("version {version} does not exist"),
                })?;
            content.resize(bytes as usize, 0);
            Ok(StoredContent {
                version,
                bytes,
                sha256: sha256_hex(&content),
                live_copy: None,
            })
        })
    }
}
