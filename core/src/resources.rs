//! The resource kinds (API group `stratus.dev`, version `v1alpha1`).
//!
//! One Rust type per kind, used by the API, the controller, both store
//! backends and, through `kube`'s derive, as Kubernetes CRDs.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

pub const GROUP: &str = "stratus.dev";
pub const VERSION: &str = "v1alpha1";
/// Finalizer the controller puts on every server it may have placed on a
/// hypervisor, so the object outlives its domain and disk.
pub const SERVER_FINALIZER: &str = "stratus.dev/teardown";

/// RFC 1123 hostname, the same rule as `validate::is_hostname` (the API
/// server checks it for objects written with kubectl).
pub const HOSTNAME_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";

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
            Self::Terminating => "terminating",
            Self::Error => "error",
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
    /// Hypervisor chosen for the server; recorded before anything is created there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// MAC address of the server's network interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// True once the system disk exists; a provisioned server's disk is never
    /// silently created again.
    #[serde(default)]
    pub provisioned: bool,
    /// Reboot requests already carried out.
    #[serde(default)]
    pub reboots_done: u32,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Detailed conditions (Scheduled, Provisioned, AgentReachable, Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A hypervisor running the stratus agent.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "stratus.dev",
    version = "v1alpha1",
    kind = "Hypervisor",
    status = "HypervisorStatus",
    shortname = "hv",
    category = "stratus",
    derive = "PartialEq",
    doc = "A hypervisor running the stratus node agent.",
    printcolumn(
        name = "Zone",
        type_ = "string",
        json_path = ".spec.zone",
        description = "Zone (datacenter)"
    ),
    printcolumn(
        name = "Reachable",
        type_ = "boolean",
        json_path = ".status.reachable",
        description = "Whether the agent answered the last probe"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorSpec {
    /// Base URL of the node agent's HTTP API.
    pub url: String,
    /// Zone (datacenter) the hypervisor is in.
    pub zone: String,
    /// Name of the credential holding the agent's bearer token (never the token itself).
    pub credential: String,
    /// When true the scheduler places no new server here.
    #[serde(default)]
    pub cordoned: bool,
}

/// Capacity a hypervisor reports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorCapacity {
    /// Host CPUs.
    pub vcpus: u32,
    /// Host memory in MiB.
    pub memory_mib: u64,
    /// Capacity of the storage pool for server disks, in GiB.
    pub disk_gib: u64,
    /// Images present in the hypervisor's image pool.
    #[serde(default)]
    pub images: Vec<String>,
}

/// What the controller last learned from a hypervisor's agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorStatus {
    /// Whether the agent answered the last probe.
    #[serde(default)]
    pub reachable: bool,
    /// Time (RFC 3339) of the last successful contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<String>,
    /// Why the last probe failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Capacity reported at the last successful contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<HypervisorCapacity>,
    /// Detailed conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A customer account. Its name is the account id and the namespace of its resources.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "stratus.dev",
    version = "v1alpha1",
    kind = "Account",
    status = "AccountStatus",
    shortname = "acct",
    category = "stratus",
    derive = "PartialEq",
    doc = "A customer account of the provider.",
    printcolumn(
        name = "Name",
        type_ = "string",
        json_path = ".spec.displayName",
        description = "Customer name"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "Account state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AccountSpec {
    /// Customer or company name.
    pub display_name: String,
    /// Contact e-mail address.
    pub email: String,
}

/// Standing of an account.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum AccountState {
    #[default]
    Active,
    Suspended,
    Closed,
}

/// Standing of an account as the control plane enforces it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    /// Current standing.
    #[serde(default)]
    pub state: AccountState,
}

/// A block of public addresses servers get their IPv4 address and IPv6 /64 from (R19).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "stratus.dev",
    version = "v1alpha1",
    kind = "IpPool",
    status = "IpPoolStatus",
    shortname = "ipp",
    category = "stratus",
    derive = "PartialEq",
    doc = "A block of public IPv4 addresses and an IPv6 prefix that servers of a zone are numbered from.",
    printcolumn(
        name = "Zone",
        type_ = "string",
        json_path = ".spec.zone",
        description = "Zone served"
    ),
    printcolumn(
        name = "IPv4",
        type_ = "string",
        json_path = ".spec.ipv4.cidr",
        description = "IPv4 block"
    ),
    printcolumn(
        name = "IPv6",
        type_ = "string",
        json_path = ".spec.ipv6.prefix",
        description = "IPv6 prefix"
    ),
    printcolumn(
        name = "Free",
        type_ = "integer",
        json_path = ".status.ipv4Available",
        description = "IPv4 addresses free"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// Zone whose servers are numbered from this pool.
    pub zone: String,
    /// The IPv4 block.
    pub ipv4: Ipv4Block,
    /// The IPv6 prefix each server gets a /64 of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Block>,
}

/// An IPv4 block and its routing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv4Block {
    /// Block in CIDR notation, e.g. `203.0.113.0/24`.
    pub cidr: String,
    /// Gateway address inside the block (never handed out).
    pub gateway: String,
    /// Addresses of the block never handed out (network equipment, reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// An IPv6 prefix and its routing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv6Block {
    /// Prefix in CIDR notation, /48 to /63, e.g. `2001:db8:100::/48`.
    pub prefix: String,
    /// Gateway address.
    pub gateway: String,
}

/// Usage of a pool as the controller last counted it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolStatus {
    /// IPv4 addresses free to hand out.
    #[serde(default)]
    pub ipv4_available: u64,
    /// IPv4 addresses held by servers or in quarantine.
    #[serde(default)]
    pub ipv4_allocated: u64,
    /// Detailed conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
