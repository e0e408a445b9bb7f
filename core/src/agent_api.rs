//! The node agent's HTTP contract, shared by the agent and the controller's
//! agent client so the two can never disagree on a field.

use serde::{Deserialize, Serialize};

use crate::conditions::Reason;
use crate::policy::SuspensionMode;
use crate::resources::PowerState;

/// Everything the agent needs to make one domain look as desired (`PUT
/// /v1/domains/{name}`). Applying the same spec twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    pub hostname: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Volume in the agent's storage pool the disk is an overlay of.
    pub image_volume: String,
    /// The system disk's generation: raised by each rebuild. A domain off
    /// and defined with another generation's disk gets a new disk of this
    /// one, made from `image_volume`; a running one keeps its disk.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_generation: u32,
    /// The generation a rebuild replaces: wiped and deleted once the
    /// domain is defined with `disk_generation`'s disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_disk_generation: Option<u32>,
    /// Of a restore: the volume in the agent's pool (a snapshot's copy,
    /// raw) the disk of `disk_generation` is made as a copy of, instead of
    /// an overlay of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_source: Option<String>,
    pub mac_address: String,
    pub power: PowerState,
    /// Whether the agent may create the system disk when it is missing. The
    /// controller clears it once a disk existed, so a vanished disk is
    /// reported instead of being silently replaced by an empty one.
    pub create_disk: bool,
    /// With `power: Stopped`: power the guest off now. Without it the agent
    /// only asks the guest to shut down (ACPI) and answers at once; the
    /// controller forces the power-off after a grace period.
    #[serde(default)]
    pub power_off: bool,
    /// The server's IPv4 address: the only one its NIC may send from (R19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<crate::resources::ServerAddress>,
    /// The server's IPv6 prefix and NIC address (R19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<crate::resources::ServerAddress>,
    /// How a suspended server is held (R1, R5, R8, R9); `power` is the
    /// customer's choice, restored when the suspension is lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<SuspensionMode>,
    /// Direct kernel boot from files on the hypervisor (the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<KernelBoot>,
    /// The cloud-init seed the guest reads at boot, attached as a CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<crate::cloud_init::Seed>,
    /// Rescue mode: the domain boots this image from a fresh disk of its
    /// own (`vda`), the system disk attached as `vdb`, untouched. Changed
    /// only while the domain is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueBoot>,
    /// Storage subscriptions attached to the server: each a virtio disk,
    /// hot-plugged into a running guest and unplugged when it leaves the
    /// list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_disks: Vec<DataDisk>,
}

/// The rescue system a domain boots in rescue mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescueBoot {
    /// Volume in the agent's storage pool the rescue disk is an overlay of.
    pub image_volume: String,
    /// Direct kernel boot from files on the hypervisor (the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<KernelBoot>,
}

/// Most data disks one server may have attached at once (`vdb`…`vdz`).
pub const MAX_DATA_DISKS: usize = 25;

/// A storage subscription's primary copy attached to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDisk {
    /// The volume in the agent's pool (the copy's current version).
    pub volume: String,
    /// The subscription's id, given to the guest as the disk's serial
    /// (`/dev/disk/by-id/virtio-<id>`), and how the agent recognises it.
    pub serial: String,
    /// A LUKS volume: plugged into the running guest only, and only while
    /// its key is loaded on the hypervisor (see [`VolumeKey`]); never part
    /// of the definition, so a guest started again comes up without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// A customer's key to a LUKS volume, on its way to the hypervisor. It is
/// never written anywhere by stratus, never printed (its `Debug` hides
/// it), and its memory is zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VolumeKey(zeroize::Zeroizing<String>);

impl VolumeKey {
    /// Fewest and most bytes a key may have.
    pub const MIN_BYTES: usize = 12;
    pub const MAX_BYTES: usize = 512;

    pub fn new(key: String) -> Self {
        Self(zeroize::Zeroizing::new(key))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why a key cannot be one, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let length = self.0.len();
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&length) {
            return Err(format!(
                "a key has {} to {} bytes, not {length}",
                Self::MIN_BYTES,
                Self::MAX_BYTES
            ));
        }
        if self.0.chars().any(char::is_control) {
            return Err("a key has no control characters".to_owned());
        }
        Ok(())
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<hidden>)")
    }
}

/// Formats a new version of a copy as LUKS with the customer's key
/// (`POST /v1/volumes/{name}/versions/{version}/luks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuksFormat {
    pub size_gib: u64,
    pub key: VolumeKey,
}

/// Loads the customer's key to a LUKS version on its hypervisor, once the
/// agent checked it opens the volume
/// (`POST /v1/volumes/{name}/versions/{version}/unlock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeUnlock {
    pub key: VolumeKey,
}

/// Whether a disk serial names a storage subscription, so the agent
/// manages it as a data disk (a disk it did not attach is left alone).
pub fn is_storage_serial(serial: &str) -> bool {
    crate::ids::StorageId::parse(serial).is_some()
}

/// A kernel, initrd and command line the guest boots from directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Most bytes of a serial console the agent returns: its tail.
pub const CONSOLE_TAIL_BYTES: u64 = 64 * 1024;

impl DomainSpec {
    /// The state the domain must reach.
    pub fn target(&self) -> Target {
        Target::of(self.power, self.suspension)
    }

    /// Whether the NIC's link must be up.
    pub fn link_up(&self) -> bool {
        self.suspension != Some(SuspensionMode::NetworkIsolated)
    }
}

/// The state a domain must reach: the customer's power choice, held as a
/// suspension says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Running,
    /// Frozen in memory. A server the customer had stopped stays stopped:
    /// nothing is started only to be paused.
    Paused,
    Stopped,
}

impl Target {
    pub fn of(power: PowerState, suspension: Option<SuspensionMode>) -> Self {
        match (power, suspension) {
            (PowerState::Stopped, _) | (_, Some(SuspensionMode::Stopped)) => Self::Stopped,
            (PowerState::Running, Some(SuspensionMode::Paused)) => Self::Paused,
            (PowerState::Running, None | Some(SuspensionMode::NetworkIsolated)) => Self::Running,
        }
    }

    /// Whether a domain in `state` has reached this target.
    pub fn reached(self, state: DomainState) -> bool {
        match self {
            Self::Running => state == DomainState::Running,
            Self::Paused => matches!(state, DomainState::Paused | DomainState::Stopped),
            Self::Stopped => state == DomainState::Stopped,
        }
    }
}

/// The link state of a server's NIC as libvirt holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    #[default]
    Up,
    /// Down in the running guest (or, when it is off, in its definition).
    Down,
    /// Down in the definition only: the hypervisor could not change the
    /// running guest's link, so it stays up until the guest is next started.
    DownAtNextStart,
    /// Up in the definition only: the running guest's link stays down
    /// until it is next started, for the same reason.
    UpAtNextStart,
}

impl Link {
    /// Whether this link is what a spec asks for, as far as the hypervisor
    /// can make it so.
    pub fn matches(self, up: bool) -> bool {
        match self {
            Self::Up | Self::UpAtNextStart => up,
            Self::Down | Self::DownAtNextStart => !up,
        }
    }
}

/// Power state of a domain as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Stopped,
    Paused,
    Crashed,
    /// Shutting down, suspended to memory, or a state libvirt added later.
    Transitioning,
}

/// What the agent sees of one server's domain and disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainObservation {
    pub name: String,
    /// `None` when no domain of that name is defined.
    pub state: Option<DomainState>,
    pub disk_present: bool,
    /// The NIC's link; an agent too old to say reports nothing, read as up.
    #[serde(default)]
    pub link: Link,
    /// What became of the disk's data, in the answer to a destroy that
    /// deleted the disk (never on other answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_disposal: Option<DiskDisposal>,
    /// Serials of the data disks the domain has: those of the running
    /// guest, or of the definition when it is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_disks: Vec<String>,
    /// Serials of the spec's LUKS disks left out because their key is not
    /// loaded on the hypervisor (in the answer to an ensure only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_key: Vec<String>,
    /// Why the running guest did not come up, when its serial console
    /// since its last boot shows a known failure ([`guest_failure`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_failure: Option<String>,
    /// The MAC address of the domain's NIC as defined: how a domain named
    /// by an earlier release is recognised as a server's own (MACs are
    /// unique across servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// What the domain has: the running guest's vCPUs and memory (its
    /// definition's when it is off) and its system disk's size. A resize
    /// (R23) is done when these are the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<DomainResources>,
    /// The generation of the system disk the domain is defined with (of
    /// the first disk, when no domain is defined); an agent too old to
    /// say reports nothing, and no rebuild is started on its hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_generation: Option<u32>,
    /// Whether the domain is defined in rescue mode; an agent too old to
    /// say reports nothing, and no server on it is moved to rescue mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescued: Option<bool>,
}

/// The size of a domain as the hypervisor has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainResources {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The system disk's capacity, whole GiB rounded up; 0 without one.
    pub disk_gib: u64,
}

impl DomainResources {
    /// Whether these are `wanted`: vCPUs and memory exactly, the disk at
    /// least (a disk never shrinks).
    pub fn are(&self, wanted: &crate::resources::ServerResources) -> bool {
        self.vcpus == wanted.vcpus
            && self.memory_mib == wanted.memory_mib
            && self.disk_gib >= wanted.disk_gib
    }
}

impl DomainObservation {
    pub fn absent(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: None,
            disk_present: false,
            link: Link::Up,
            disk_disposal: None,
            data_disks: Vec::new(),
            waiting_for_key: Vec::new(),
            guest_failure: None,
            mac_address: None,
            resources: None,
            disk_generation: None,
            rescued: None,
        }
    }
}

/// How a deleted disk's data was disposed of: the audit says which, so a
/// provider never claims a wipe that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DiskDisposal {
    /// Overwritten before it was deleted.
    Wiped,
    /// Deleted, but the storage could not overwrite it first.
    DeletedWithoutWipe { reason: String },
}

/// What to make of one copy of a storage subscription (`PUT
/// /v1/volumes/{name}`, the name being the subscription's managed name).
/// Applying the same spec twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub size_gib: u64,
    /// Whether the agent may create the copy (its empty version 0) when no
    /// version of it exists. The controller clears it once the copy
    /// existed, so a vanished copy is reported (and repaired from the
    /// other) instead of being silently replaced by an empty one.
    pub create: bool,
}

/// One version of a copy: a volume of its own, so a new content is
/// written beside the old one and the old one stays whole until the new
/// one is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeVersion {
    pub version: u64,
    /// The volume's name in the pool.
    pub volume: String,
    /// Its file on the hypervisor, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What a guest sees of it (a LUKS volume: less its header).
    pub capacity_bytes: u64,
    /// Its bytes on the hypervisor, all of which a copy of it holds.
    #[serde(default)]
    pub physical_bytes: u64,
    /// Formatted as LUKS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Its key is loaded on the hypervisor (a LUKS volume a guest may use).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlocked: bool,
    /// Being written now (an upload or a copy, however long it takes): it
    /// is no unfinished upload to clean up, and the agent refuses to wipe it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writing: bool,
}

/// What the agent sees of one copy of a storage subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeObservation {
    /// The pool its versions are (or would be) in.
    pub pool: String,
    /// Every version present, oldest first; none: the copy does not exist.
    #[serde(default)]
    pub versions: Vec<VolumeVersion>,
    /// What became of its data, in the answer to a destroy that deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposal: Option<DiskDisposal>,
}

impl VolumeObservation {
    pub fn present(&self) -> bool {
        !self.versions.is_empty()
    }

    pub fn version(&self, version: u64) -> Option<&VolumeVersion> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// A content written into a version, or read back from it: its length and
/// SHA-256, computed by the agent while the bytes streamed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredContent {
    pub version: u64,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// For a copy of a running guest's disk: how it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_copy: Option<LiveCopy>,
}

/// How a copy of a running guest's disk was taken, and what it cost the
/// guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCopy {
    pub method: LiveCopyMethod,
    /// How long the guest was paused for it (0 for a backup job).
    pub guest_paused_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveCopyMethod {
    /// libvirt's push-mode backup job: QEMU copies the disk as of the
    /// job's start while the guest runs on.
    Backup,
    /// The guest was paused for the copy (where the hypervisor has no
    /// backup job, or the disk is LUKS), at most the agent's
    /// `--max-guest-pause`.
    Paused,
}

/// Long work on a storage copy that the agent runs in the background: the
/// controller starts it with `PUT /v1/volumes/{name}/jobs/{id}` and asks
/// again with `GET` until it is done. Its id says what it does, so a
/// controller that restarted, or retried after losing the connection, asks
/// for the same id and finds the work under way (or its result) instead of
/// starting it a second time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeJob {
    /// Reads the first `bytes` of `version` and answers their SHA-256.
    Checksum { version: u64, bytes: u64 },
    /// Copies version `from` into the new version `to`. With
    /// `pause_guest`, `from` may be a running guest's disk: it is copied by
    /// a backup job while the guest runs, or with the guest paused (for at
    /// most the agent's limit) where libvirt has no backup job.
    Copy {
        from: u64,
        to: u64,
        #[serde(default)]
        pause_guest: bool,
    },
    /// Copies the system disk of `domain` (of the same account) into the
    /// new version `to`: a snapshot of the server, as of one moment.
    Capture { domain: String, to: u64 },
}

impl VolumeJob {
    /// The job's id: the same work always has the same id.
    pub fn id(&self) -> String {
        match self {
            Self::Checksum { version, bytes } => format!("checksum-v{version}-{bytes}"),
            Self::Copy {
                from,
                to,
                pause_guest,
            } => format!(
                "copy-v{from}-v{to}{}",
                if *pause_guest { "-paused" } else { "" }
            ),
            Self::Capture { domain, to } => format!("capture-{domain}-v{to}"),
        }
    }

    /// The versions the job reads or writes: a job whose version is
    /// rewritten or deleted is forgotten, never answered from the past.
    pub fn touches(&self, version: u64) -> bool {
        match self {
            Self::Checksum { version: v, .. } => *v == version,
            Self::Copy { from, to, .. } => *from == version || *to == version,
            Self::Capture { to, .. } => *to == version,
        }
    }
}

/// Where a [`VolumeJob`] stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobStatus {
    /// Under way for `elapsed_ms`.
    Running {
        elapsed_ms: u64,
    },
    Succeeded {
        result: StoredContent,
    },
    Failed {
        error: AgentErrorDetail,
    },
}

/// Why a guest did not come up, from the tail of its serial console: the
/// text since its kernel last started, searched for failures that stop a
/// boot for good. `None` when none is seen (which proves nothing: a guest
/// may also hang silently).
pub fn guest_failure(console: &str) -> Option<String> {
    const MARKERS: [(&str, &str); 6] = [
        ("Kernel panic - not syncing", "its kernel panicked"),
        (
            "bad geometry: block count",
            "its root file system is larger than its disk",
        ),
        ("Dropping to a shell", "it stopped in its initramfs"),
        ("You are in emergency mode", "it stopped in emergency mode"),
        (
            "Give root password for maintenance",
            "it stopped in maintenance mode",
        ),
        ("No bootable device", "it found no bootable device"),
    ];
    let since_boot = console
        .rfind("Linux version ")
        .map_or(console, |start| &console[start..]);
    MARKERS.iter().find_map(|(marker, meaning)| {
        let at = since_boot.find(marker)?;
        let line = since_boot[..at]
            .rfind('\n')
            .map_or(since_boot, |start| &since_boot[start + 1..]);
        let line = line.lines().next().unwrap_or_default().trim();
        let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
        Some(format!("{meaning} ({line})"))
    })
}

/// The agent's routes: the templates its router is built from and the
/// paths its clients call, made from the same strings so the two never
/// drift apart.
pub mod paths {
    use serde::{Deserialize, Serialize};

    pub const NODE: &str = "/v1/node";
    pub const DOMAIN: &str = "/v1/domains/{name}";
    pub const DOMAIN_REBOOT: &str = "/v1/domains/{name}/reboot";
    pub const DOMAIN_CONSOLE: &str = "/v1/domains/{name}/console";
    pub const VOLUME: &str = "/v1/volumes/{name}";
    pub const VOLUME_VERSION: &str = "/v1/volumes/{name}/versions/{version}";
    pub const VOLUME_JOB: &str = "/v1/volumes/{name}/jobs/{id}";
    pub const VERSION_LUKS: &str = "/v1/volumes/{name}/versions/{version}/luks";
    pub const VERSION_UNLOCK: &str = "/v1/volumes/{name}/versions/{version}/unlock";

    /// The query of a version's upload (`PUT` [`VOLUME_VERSION`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct WriteQuery {
        pub size_gib: u64,
    }

    /// The query of a version's download (`GET` [`VOLUME_VERSION`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ReadQuery {
        pub bytes: u64,
    }

    /// `template` with each `{key}` replaced by its value. Values are the
    /// agent's managed names and numbers, which need no escaping; one that
    /// would change the path's shape is refused by the agent's router.
    fn fill(template: &str, values: &[(&str, &str)]) -> String {
        values
            .iter()
            .fold(template.to_owned(), |path, (key, value)| {
                path.replace(&format!("{{{key}}}"), value)
            })
    }

    pub fn domain(name: &str) -> String {
        fill(DOMAIN, &[("name", name)])
    }

    pub fn domain_reboot(name: &str) -> String {
        fill(DOMAIN_REBOOT, &[("name", name)])
    }

    pub fn domain_console(name: &str) -> String {
        fill(DOMAIN_CONSOLE, &[("name", name)])
    }

    pub fn volume(name: &str) -> String {
        fill(VOLUME, &[("name", name)])
    }

    pub fn volume_version(name: &str, version: u64) -> String {
        fill(
            VOLUME_VERSION,
            &[("name", name), ("version", &version.to_string())],
        )
    }

    /// [`volume_version`] with the upload's query.
    pub fn version_upload(name: &str, version: u64, query: WriteQuery) -> String {
        format!(
            "{}?size_gib={}",
            volume_version(name, version),
            query.size_gib
        )
    }

    /// [`volume_version`] with the download's query.
    pub fn version_download(name: &str, version: u64, query: ReadQuery) -> String {
        format!("{}?bytes={}", volume_version(name, version), query.bytes)
    }

    pub fn volume_job(name: &str, id: &str) -> String {
        fill(VOLUME_JOB, &[("name", name), ("id", id)])
    }

    pub fn version_luks(name: &str, version: u64) -> String {
        fill(
            VERSION_LUKS,
            &[("name", name), ("version", &version.to_string())],
        )
    }

    pub fn version_unlock(name: &str, version: u64) -> String {
        fill(
            VERSION_UNLOCK,
            &[("name", name), ("version", &version.to_string())],
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_placeholder_is_filled() {
            let paths = [
                domain("stratus-a"),
                domain_reboot("stratus-a"),
                domain_console("stratus-a"),
                volume("stratus-v"),
                version_upload("stratus-v", 3, WriteQuery { size_gib: 2 }),
                version_download("stratus-v", 3, ReadQuery { bytes: 9 }),
                volume_job("stratus-v", "copy-1-2"),
                version_luks("stratus-v", 3),
                version_unlock("stratus-v", 3),
            ];
            for path in paths {
                assert!(!path.contains('{') && !path.contains('}'), "{path}");
                assert!(path.starts_with("/v1/"), "{path}");
            }
            assert_eq!(
                version_upload("stratus-v", 3, WriteQuery { size_gib: 2 }),
                "/v1/volumes/stratus-v/versions/3?size_gib=2"
            );
            assert_eq!(volume_job("stratus-v", "j"), "/v1/volumes/stratus-v/jobs/j");
        }
    }
}

/// A storage pool on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation_bytes: u64,
    pub available_bytes: u64,
}

/// Node capacity and contents (`GET /v1/node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub zone: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub pool: PoolInfo,
    /// Volumes of the storage pool that are not server disks (the images).
    pub images: Vec<String>,
    /// Names of the domains stratus manages on this node.
    pub domains: Vec<String>,
    /// Whether this node filters its guests' traffic to their own addresses
    /// (R19). An agent too old to say reports nothing, read as not enforced.
    #[serde(default)]
    pub anti_spoofing: AntiSpoofing,
}

/// What a node can do against address spoofing (R19).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiSpoofing {
    /// The node's network filters are in place: every NIC it starts sends
    /// only from its MAC and the server's addresses.
    pub enforced: bool,
    /// The node is configured to enforce it, so it never starts a guest
    /// without its filter: when `enforced` is false it starts none.
    pub required: bool,
    /// Why it is not enforced, in libvirt's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AntiSpoofing {
    /// Whether the node refuses to start guests: it must filter and cannot.
    pub fn blocks_guests(&self) -> bool {
        self.required && !self.enforced
    }

    /// The hypervisor's `AntiSpoofing` condition: status, reason, message.
    pub fn condition(&self) -> (bool, Reason, String) {
        let detail = self.detail.as_deref().unwrap_or("no reason given");
        match (self.enforced, self.required) {
            (true, _) => (true, Reason::FiltersEnforced, String::new()),
            (false, true) => (
                false,
                Reason::FiltersUnavailable,
                format!(
                    "the agent must filter guest traffic and cannot, so it starts no server: {detail}"
                ),
            ),
            (false, false) => (
                false,
                Reason::NotEnforced,
                format!("guests run without a traffic filter: {detail}"),
            ),
        }
    }
}

/// Error body of every non-2xx agent answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentErrorBody {
    pub error: AgentErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentErrorDetail {
    pub code: AgentErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorCode {
    Unauthorized,
    BadRequest,
    /// The disk of an already provisioned server is gone.
    DiskMissing,
    /// A copy of storage that existed is gone, and creating it was not allowed.
    VolumeMissing,
    /// A content longer than the copy's size (R27); nothing was kept of it.
    ContentTooLarge,
    /// The version asked for is not there, or cannot be written now.
    VersionConflict,
    /// The version to write already exists (an earlier attempt wrote it):
    /// its checksum says whether it is the one wanted.
    VersionExists,
    /// The image volume is not in the pool.
    ImageMissing,
    /// The pool has no room for the disk.
    NoSpace,
    /// libvirt refused or failed.
    Hypervisor,
    /// The node must filter guest traffic (R19) and cannot: it starts no guest.
    AntiSpoofingUnavailable,
    /// The key given does not open the LUKS volume.
    WrongKey,
    /// This hypervisor cannot keep keys (no libvirt secret driver).
    KeysUnsupported,
    /// Too much under way: try again later.
    Busy,
    /// The volume is a disk of a domain: it is not wiped, deleted or
    /// overwritten under it (R26).
    VolumeInUse,
    /// The job asked about is not known (the agent restarted, or its
    /// result expired): start it again.
    UnknownJob,
    /// A copy of a running guest's disk needed the guest paused longer
    /// than the agent allows: the guest was resumed and the copy dropped.
    PauseLimit,
    /// This hypervisor's storage cannot stream a volume's bytes in or out
    /// (libvirt's test driver): no content is stored, read or copied from
    /// a disk there.
    ContentUnsupported,
    /// A code this build does not know (a newer agent's): the message says
    /// what happened.
    #[serde(other)]
    Unknown,
}

/// Prefix of every domain and disk volume the agent manages.
pub const MANAGED_PREFIX: &str = "stratus-";

/// Disk volume name of a domain, as it was first made.
pub fn disk_volume_name(domain: &str) -> String {
    system_disk_name(domain, 0)
}

/// The volume of a domain's system disk of `generation`: the first disk
/// keeps the name it always had; each rebuild makes a disk of a new name
/// beside the old one, so a crash leaves one or the other, never none.
pub fn system_disk_name(domain: &str, generation: u32) -> String {
    match generation {
        0 => format!("{domain}-disk.qcow2"),
        generation => format!("{domain}-disk-{generation}.qcow2"),
    }
}

/// The volume of a domain's rescue disk, made afresh each time it enters
/// rescue mode.
pub fn rescue_disk_name(domain: &str) -> String {
    format!("{domain}-rescue.qcow2")
}

/// The generation of `volume` if it is a system disk of `domain`; only the
/// canonical spelling (no other domain's disk reads as one).
pub fn system_disk_generation(domain: &str, volume: &str) -> Option<u32> {
    let rest = volume.strip_prefix(domain)?.strip_prefix("-disk")?;
    let rest = rest.strip_suffix(".qcow2")?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix('-')?;
    let generation: u32 = digits.parse().ok()?;
    (generation > 0 && generation.to_string() == digits).then_some(generation)
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Prefix of the cloud-init seed volumes of a domain; the seed's content
/// hash follows, so a changed seed is a new volume.
pub fn seed_volume_prefix(domain: &str) -> String {
    format!("{domain}-seed-")
}

/// Hex digits of the content hash in a seed volume's name.
pub const SEED_HASH_DIGITS: usize = 12;

/// Whether `volume` is a seed of `domain`: its prefix, exactly
/// [`SEED_HASH_DIGITS`] hex digits, `.iso`. The prefix alone is not enough:
/// the domain of a server named `web1-seed-x` starts with it too.
pub fn is_seed_volume_of(domain: &str, volume: &str) -> bool {
    volume
        .strip_prefix(&seed_volume_prefix(domain))
        .and_then(|rest| rest.strip_suffix(".iso"))
        .is_some_and(|hash| {
            hash.len() == SEED_HASH_DIGITS
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The volume of `version` of a copy of the storage subscription whose
/// managed name is `base` (see `ids::domain_name`); no disk or seed name
/// ends like it.
pub fn storage_volume_name(base: &str, version: u64) -> String {
    format!("{base}-store-v{version}.raw")
}

/// The version a volume of `base`'s copy holds, if `volume` is one.
pub fn storage_volume_version(base: &str, volume: &str) -> Option<u64> {
    let digits = volume
        .strip_prefix(base)?
        .strip_prefix("-store-v")?
        .strip_suffix(".raw")?;
    // Only the canonical spelling: `v01` is not version 1's volume.
    let version: u64 = digits.parse().ok()?;
    (version.to_string() == digits).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_disks_are_told_apart_from_other_domains_volumes() {
        let domain = "stratus-acct.vs-1";
        for generation in [0, 1, 7, 4_000_000_000] {
            let name = system_disk_name(domain, generation);
            assert_eq!(system_disk_generation(domain, &name), Some(generation));
        }
        for other in [
            "stratus-acct.vs-1-disk-01.qcow2",
            "stratus-acct.vs-1-disk-0.qcow2",
            "stratus-acct.vs-1-disk-x.qcow2",
            "stratus-acct.vs-1-disk-5-disk.qcow2",
            "stratus-acct.vs-1-seed-0123456789ab.iso",
            "stratus-acct.vs-10-disk.qcow2",
            "stratus-acct.vs-1-disk.raw",
        ] {
            assert_eq!(system_disk_generation(domain, other), None, "{other}");
        }
        assert_eq!(disk_volume_name(domain), system_disk_name(domain, 0));
    }

    #[test]
    fn a_guest_that_stopped_booting_is_told_by_its_console_since_its_last_boot() {
        let failed = "[    0.000000] Linux version 6.1.0-57-amd64\n[    2.1] EXT4-fs (vda): bad geometry: block count 786432 exceeds size of device (262144 blocks)\n";
        let why = guest_failure(failed).unwrap();
        assert!(
            why.starts_with("its root file system is larger than its disk"),
            "{why}"
        );
        assert!(why.contains("EXT4-fs (vda)"), "{why}");
        // A boot after it that went well: only the last boot counts.
        let rebooted = format!("{failed}[    0.000000] Linux version 6.1.0-57-amd64\nWelcome\n");
        assert_eq!(guest_failure(&rebooted), None);
        assert!(
            guest_failure("Linux version 6\n---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---")
                .unwrap()
                .starts_with("its kernel panicked")
        );
        assert_eq!(guest_failure(""), None);
        assert_eq!(guest_failure("Linux version 6\nlogin:"), None);
    }

    #[test]
    fn storage_versions_are_named_one_way_only() {
        let base = "stratus-acc-1.st-1";
        assert_eq!(
            storage_volume_name(base, 7),
            "stratus-acc-1.st-1-store-v7.raw"
        );
        assert_eq!(
            storage_volume_version(base, &storage_volume_name(base, 7)),
            Some(7)
        );
        for other in [
            "stratus-acc-1.st-1-store-v07.raw",
            "stratus-acc-1.st-1-store-v-1.raw",
            "stratus-acc-1.st-1-store-v+1.raw",
            "stratus-acc-1.st-1-store-v.raw",
            "stratus-acc-1.st-10-store-v1.raw",
            "stratus-acc-1.st-1-disk.qcow2",
        ] {
            assert_eq!(storage_volume_version(base, other), None, "{other}");
        }
    }

    #[test]
    fn seeds_of_one_server_are_never_another_servers_volumes() {
        let web1 = "stratus-acc-1.web1";
        assert!(is_seed_volume_of(
            web1,
            "stratus-acc-1.web1-seed-0123456789ab.iso"
        ));
        // The domain of a server named web1-seed-… and its volumes.
        let other = "stratus-acc-1.web1-seed-0123456789ab.iso";
        for volume in [
            disk_volume_name(other),
            format!("{}0123456789ab.iso", seed_volume_prefix(other)),
            storage_volume_name(other, 0),
            "stratus-acc-1.web1-seed-0123456789abc.iso".to_owned(),
            "stratus-acc-1.web1-seed-0123456789AB.iso".to_owned(),
        ] {
            assert!(!is_seed_volume_of(web1, &volume), "{volume}");
        }
    }

    #[test]
    fn r19_anti_spoofing_condition_says_what_the_node_does() {
        let enforced = AntiSpoofing {
            enforced: true,
            required: true,
            detail: None,
        };
        assert_eq!(
            enforced.condition(),
            (true, Reason::FiltersEnforced, String::new())
        );
        assert!(!enforced.blocks_guests());
        let missing = AntiSpoofing {
            enforced: false,
            required: true,
            detail: Some("nwfilter: not supported".into()),
        };
        let (status, reason, message) = missing.condition();
        assert_eq!((status, reason), (false, Reason::FiltersUnavailable));
        assert!(message.contains("starts no server: nwfilter: not supported"));
        assert!(missing.blocks_guests());
        let lab = AntiSpoofing {
            required: false,
            ..missing
        };
        assert_eq!(lab.condition().1, Reason::NotEnforced);
        assert!(!lab.blocks_guests());
        let old_agent: NodeReport = serde_json::from_value(serde_json::json!({
            "zone": "z", "vcpus": 1, "memory_mib": 1, "images": [], "domains": [],
            "pool": {"name": "p", "capacity_bytes": 0, "allocation_bytes": 0, "available_bytes": 0}
        }))
        .unwrap();
        assert_eq!(old_agent.anti_spoofing, AntiSpoofing::default());
    }
}
