//! `VirtualServer`: a customer's VPS, what the customer asked for and what
//! the controller made of it.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HOSTNAME_PATTERN;
use crate::conditions::Condition;
use crate::ids::HypervisorName;

/// Finalizer the controller puts on every server it may have placed on a
/// hypervisor, so the object outlives its domain and disk.
pub const SERVER_FINALIZER: &str = "stratus.dev/teardown";

/// Whether the customer wants the server powered on.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum PowerState {
    #[default]
    Running,
    Stopped,
}

/// Resources reserved for one server, resolved from its plan at order time so
/// that a later change of the plan catalogue never resizes a running server.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerResources {
    /// Virtual CPUs.
    #[schemars(range(min = 1))]
    pub vcpus: u32,
    /// Memory in MiB.
    #[schemars(range(min = 1))]
    pub memory_mib: u64,
    /// Size of the system disk in GiB.
    #[schemars(range(min = 1))]
    pub disk_gib: u64,
}

impl ServerResources {
    /// Each of the two at its larger: what a server holds on its
    /// hypervisor while it moves from one plan to another.
    pub fn larger_of(self, other: Self) -> Self {
        Self {
            vcpus: self.vcpus.max(other.vcpus),
            memory_mib: self.memory_mib.max(other.memory_mib),
            disk_gib: self.disk_gib.max(other.disk_gib),
        }
    }
}

/// A plan as a server's domain was made with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPlan {
    /// The plan's name in the catalogue.
    pub plan: String,
    /// What it reserves.
    pub resources: ServerResources,
}

impl AppliedPlan {
    /// The plan the spec asks for.
    pub fn of(spec: &VirtualServerSpec) -> Self {
        Self {
            plan: spec.plan.clone(),
            resources: spec.resources,
        }
    }
}

/// A move to another plan under way (R23).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResizeProgress {
    /// The plan it leaves.
    pub from: String,
    /// What that plan reserved: the quota is charged the larger of it and
    /// the new one until the resize is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_resources: Option<ServerResources>,
    /// The plan it moves to; a spec that asks for another one meanwhile
    /// starts over (room is held again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AppliedPlan>,
    /// When the controller took it up, RFC 3339.
    pub started_at: String,
    /// Room for the new plan is held on the server's hypervisor; until
    /// then the server runs on unchanged.
    #[serde(default)]
    pub room_reserved: bool,
    /// The guest is being stopped and the domain made again; false while
    /// a suspension holds the server or the agent cannot say sizes.
    #[serde(default)]
    pub stopping: bool,
    /// The guest was running when the resize stopped it: it is started
    /// again, and its downtime reported.
    #[serde(default)]
    pub was_running: bool,
    /// When the guest was asked to stop for the resize, RFC 3339: the
    /// start of its downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

/// A reinstall asked for: the system disk is made afresh from an image.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildRequest {
    /// Image the new system disk is made from.
    #[schemars(length(min = 1, max = 63))]
    pub image: String,
    /// Raised for each reinstall: the controller makes the disk afresh
    /// whenever it is higher than the status's `diskGeneration`.
    #[schemars(range(min = 1))]
    pub generation: u32,
    /// OpenSSH public keys for the new system, instead of `spec.sshKeys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub ssh_keys: Option<Vec<String>>,
    /// cloud-init user data for the new system, instead of `spec.userData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub user_data: Option<String>,
    /// A restore: the new system disk is a copy of this snapshot (of the
    /// same account, ready, its primary copy on the server's hypervisor)
    /// instead of the image, which is then the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub snapshot: Option<String>,
    /// Of a restore: the disk generation whose cloud-init instance the
    /// snapshot carries, given to the guest again so cloud-init does not
    /// take the restored system for a new one (absent: a new instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_generation: Option<u32>,
}

impl RebuildRequest {
    /// What the new disk is made from, as messages say it.
    pub fn source(&self) -> String {
        rebuild_source(&self.image, self.snapshot.as_deref())
    }
}

fn rebuild_source(image: &str, snapshot: Option<&str>) -> String {
    match snapshot {
        Some(snapshot) => format!("from snapshot {snapshot}"),
        None => format!("from image {image}"),
    }
}

impl RebuildProgress {
    /// What the new disk is made from, as messages say it.
    pub fn source(&self) -> String {
        rebuild_source(&self.image, self.snapshot.as_deref())
    }
}

/// A reinstall under way: the guest is stopped, a new system disk made
/// from the image beside the old one, the domain defined with it, the old
/// one wiped, and the guest started again.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildProgress {
    /// The image the new disk is made from.
    pub image: String,
    /// The disk generation it makes.
    pub generation: u32,
    /// A restore: the snapshot the new disk is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Of a restore: the disk generation whose cloud-init instance the new
    /// disk carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_generation: Option<u32>,
    /// The image of the disk it replaces.
    pub from_image: String,
    /// The disk generation it replaces, wiped once the domain uses the new one.
    #[serde(default)]
    pub from_generation: u32,
    /// When the controller took it up, RFC 3339.
    pub started_at: String,
    /// The guest is being stopped for the new disk; false while a
    /// suspension holds it or the agent cannot say disk generations.
    #[serde(default)]
    pub stopping: bool,
    /// The guest was seen off while stopping: the new disk (and its
    /// cloud-init seed) may be put in the domain.
    #[serde(default)]
    pub swapping: bool,
    /// The agent said the domain uses the new disk and the old one is wiped.
    #[serde(default)]
    pub replaced: bool,
    /// The guest was running when the rebuild stopped it: its downtime is
    /// reported.
    #[serde(default)]
    pub was_running: bool,
    /// When the guest was asked to stop for the rebuild, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

/// Rescue mode asked for: the server boots the provider's rescue image,
/// its own disk attached as the second disk, untouched.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescueRequest {
    /// OpenSSH public keys the rescue system lets in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data the rescue system runs at boot (a repair
    /// without logging in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub user_data: Option<String>,
}

/// The move of a server into rescue mode or out of it: the guest is
/// stopped, the domain defined again with the other disks, and started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescueProgress {
    /// Into rescue mode (true) or out of it.
    pub enable: bool,
    /// When the controller took it up, RFC 3339.
    pub started_at: String,
    /// The guest is being stopped for it.
    #[serde(default)]
    pub stopping: bool,
    /// The guest was seen off: the domain may be defined again.
    #[serde(default)]
    pub swapping: bool,
    /// The guest was running when it was stopped for it.
    #[serde(default)]
    pub was_running: bool,
}

/// A customer's virtual private server.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "stratus.dev",
    version = "v1alpha1",
    kind = "VirtualServer",
    namespaced,
    status = "VirtualServerStatus",
    shortname = "vs",
    category = "stratus",
    derive = "PartialEq",
    doc = "A customer's virtual private server, placed on a hypervisor by the stratus controller.",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Plan",
        type_ = "string",
        json_path = ".spec.plan",
        description = "Plan ordered"
    ),
    printcolumn(
        name = "IPv4",
        type_ = "string",
        json_path = ".status.ipv4.address",
        description = "Public IPv4 address"
    ),
    printcolumn(
        name = "Hypervisor",
        type_ = "string",
        json_path = ".status.hypervisor",
        description = "Hypervisor the server is placed on"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServerSpec {
    /// Hostname of the server (RFC 1123 label or name), chosen by the customer.
    #[schemars(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN))]
    pub hostname: String,
    /// Plan the server was ordered with.
    #[schemars(length(min = 1, max = 63))]
    pub plan: String,
    /// Image the system disk was created from.
    #[schemars(length(min = 1, max = 63))]
    pub image: String,
    /// Zone (datacenter) the server must run in; any zone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Resources reserved for the server, copied from the plan.
    pub resources: ServerResources,
    /// Power state the customer asked for.
    #[serde(default)]
    pub power: PowerState,
    /// Number of reboots the customer has asked for since the server exists;
    /// the controller performs one reboot per increment.
    #[serde(default)]
    pub reboot_requests: u32,
    /// Set by the control plane from the account's standing (R1–R9), never
    /// by the customer: while it is present the server is held as its mode
    /// says, and the customer's power choice applies again once it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<crate::standing::Suspension>,
    /// Set by the control plane when the server was terminated (R3, R6,
    /// R14): it stays off until its data is wiped, then it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<ServerTermination>,
    /// OpenSSH public keys given to the guest through cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (a `#cloud-config` document or a script),
    /// passed to the guest unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub user_data: Option<String>,
    /// A reinstall: the system disk is made afresh from `rebuild.image`
    /// (wiping the old one) each time `rebuild.generation` is raised; the
    /// server keeps its addresses, MAC and filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildRequest>,
    /// Rescue mode: while present the server boots the provider's rescue
    /// image with its own disk as the second disk; removed, it boots its
    /// own system again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueRequest>,
    /// Daily backups of its disk in the provider's window (R18), the
    /// newest `keep` kept; absent: none are taken (those taken stay until
    /// deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupSchedule>,
    /// Ordered from a snapshot (of the same account): the first system
    /// disk is a copy of it instead of the image (which is then the
    /// snapshot's), and the server is placed on the hypervisor that keeps
    /// the snapshot's primary copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub from_snapshot: Option<String>,
}

/// Daily backups asked for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// How many backups are kept: the oldest beyond them is deleted.
    #[schemars(range(min = 1, max = 30))]
    pub keep: u32,
}

/// A terminated server, held off until its disk is wiped.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerTermination {
    pub cause: crate::standing::TerminationCause,
    /// When it was terminated, RFC 3339.
    pub at: String,
    /// When its disk is wiped, RFC 3339.
    pub wipe_at: String,
    /// The wipe is due: the controller destroys its domain and disk and
    /// gives back its addresses; the object stays, listed as terminated,
    /// until `termination.recordRetention` has passed.
    #[serde(default)]
    pub wipe: bool,
}

impl VirtualServer {
    /// In rescue mode, asked for or still in it, or moving in or out.
    pub fn in_rescue(&self) -> bool {
        self.spec.rescue.is_some()
            || self
                .status
                .as_ref()
                .is_some_and(|s| s.rescue.is_some() || s.rescue_change.is_some())
    }

    /// A rebuild asked for and not finished.
    pub fn rebuilding(&self) -> bool {
        let status = self.status.as_ref();
        let done = status.map_or(0, |s| s.disk_generation);
        status.is_some_and(|s| s.rebuild.is_some())
            || self
                .spec
                .rebuild
                .as_ref()
                .is_some_and(|r| r.generation > done)
    }

    /// The image its system disk was made from (the one ordered until
    /// the status says otherwise: a disk is first made from it).
    pub fn image(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.image.as_deref())
            .unwrap_or(&self.spec.image)
    }

    /// What the server holds on its hypervisor: its spec's resources, and
    /// while it moves to another plan the larger of the old and the new
    /// of each, so neither plan's room is ever given to another server.
    pub fn held_resources(&self) -> ServerResources {
        let applied = self.status.as_ref().and_then(|s| s.applied.as_ref());
        match applied {
            Some(applied) => self.spec.resources.larger_of(applied.resources),
            None => self.spec.resources,
        }
    }

    /// A resize asked for and not finished: the spec's plan is not the one
    /// the domain runs with, or the controller is still at it.
    pub fn resizing(&self) -> bool {
        self.status.as_ref().is_some_and(|status| {
            status.resize.is_some()
                || status
                    .applied
                    .as_ref()
                    .is_some_and(|applied| *applied != AppliedPlan::of(&self.spec))
        })
    }
}

impl VirtualServerSpec {
    /// How the control plane holds the server, whatever the customer's
    /// power choice: off once terminated, else as its suspension says.
    pub fn hold(&self) -> Option<crate::policy::SuspensionMode> {
        if self.termination.is_some() {
            return Some(crate::policy::SuspensionMode::Stopped);
        }
        self.suspension.as_ref().map(|s| s.mode)
    }
}

/// Lifecycle phase of a server as the customer sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum ServerPhase {
    #[default]
    Pending,
    Provisioning,
    Running,
    Stopped,
    Suspended,
    /// Terminated (R3, R6): off, its disk kept until it is wiped.
    Terminated,
    Terminating,
    Error,
}

impl ServerPhase {
    /// The lower-case name the REST API uses.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
            Self::Terminating => "terminating",
            Self::Error => "error",
        }
    }
}

/// An address of a server as its network interface is configured.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerAddress {
    /// The address configured on the NIC.
    pub address: String,
    /// IPv6: the prefix the server holds (`2001:db8:0:7::/64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Prefix length of the link.
    pub prefix_length: u8,
    /// The default gateway.
    pub gateway: String,
}

impl From<&crate::ip::Assignment> for ServerAddress {
    fn from(assignment: &crate::ip::Assignment) -> Self {
        Self {
            address: assignment.address.to_string(),
            prefix: (assignment.family == crate::ip::Family::V6)
                .then(|| assignment.holding.clone()),
            prefix_length: assignment.prefix_len,
            gateway: assignment.gateway.to_string(),
        }
    }
}

/// What the controller knows and did about a server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServerStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: ServerPhase,
    /// Human-readable explanation of the phase (always set in `Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan the server's domain runs with; the spec's differs while a
    /// resize is under way. Absent until its disk exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedPlan>,
    /// A resize under way (R23).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeProgress>,
    /// The image the system disk was made from; absent until it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The rebuild generation the system disk was made for (0: as ordered).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_generation: u32,
    /// The slot (Unix milliseconds) of the last daily backup taken: one
    /// deleted inside its window is not taken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_version: Option<u64>,
    /// The disk generation whose cloud-init instance the system disk
    /// carries, when a restore made it (absent: its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_generation: Option<u32>,
    /// A rebuild under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildProgress>,
    /// The rescue system the domain is defined with, as last observed:
    /// present while the server is in rescue mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueRequest>,
    /// A move into or out of rescue mode under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue_change: Option<RescueProgress>,
    /// Hypervisor chosen for the server; recorded before anything is created there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorName>,
    /// The zone of that hypervisor: where the server runs (its spec's
    /// zone is only what was asked for, maybe none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The libvirt domain of the server on its hypervisor; recorded with the
    /// placement and never changed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// MAC address of the server's network interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// The public IPv4 address, held in the IP ledger until the server is
    /// gone; never changed by restarts or reschedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<ServerAddress>,
    /// The IPv6 prefix (a /64 by default) and the address of it on the NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<ServerAddress>,
    /// True once the system disk exists; a provisioned server's disk is never
    /// silently created again.
    #[serde(default)]
    pub provisioned: bool,
    /// A terminated server: when its domain and disk were destroyed and
    /// its addresses given back, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiped_at: Option<String>,
    /// Reboot requests already carried out.
    #[serde(default)]
    pub reboots_done: u32,
    /// When the guest was asked to shut down (ACPI), RFC 3339; it is
    /// powered off if still running a grace period later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested_at: Option<String>,
    /// Storage subscriptions whose primary copy is a disk of the server,
    /// as its agent last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached_storage: Vec<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Detailed conditions (Scheduled, Provisioned, AgentReachable, Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}
