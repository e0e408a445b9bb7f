//! `IpPool`: a block of public addresses of one zone.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

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
