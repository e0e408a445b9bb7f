//! `Hypervisor`: a host running the node agent, and what its last probe found.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

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
    /// Base URL of the node agent's API: `https://`, as agents serve
    /// mutual TLS only.
    #[schemars(length(min = 9, max = 2048), regex(pattern = r"^https://"))]
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
