//! `IpPool`: a block of public addresses of one zone.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{self, Condition, ConditionType};

/// Prefix length each server gets of a pool's IPv6 prefix when the pool
/// does not say.
pub const DEFAULT_SERVER_PREFIX_LENGTH: u8 = 64;

/// A block of public addresses servers get their IPv4 address and IPv6
/// prefix from (R19).
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
        name = "Total",
        type_ = "integer",
        json_path = ".status.ipv4.total",
        description = "IPv4 addresses that can be handed out"
    ),
    printcolumn(
        name = "Allocated",
        type_ = "integer",
        json_path = ".status.ipv4.allocated",
        description = "IPv4 addresses held by servers"
    ),
    printcolumn(
        name = "Quarantined",
        type_ = "integer",
        json_path = ".status.ipv4.quarantined",
        description = "IPv4 addresses released and waiting before reuse"
    ),
    printcolumn(
        name = "Blacklisted",
        type_ = "integer",
        json_path = ".status.ipv4.blacklisted",
        description = "IPv4 addresses kept out of circulation by a DNS blacklist"
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
    #[schemars(length(min = 1, max = 63))]
    pub zone: String,
    /// The IPv4 block.
    pub ipv4: Ipv4Block,
    /// The IPv6 prefix each server gets a prefix of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Block>,
}

/// An IPv4 block and its routing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv4Block {
    /// Block in CIDR notation, /8 to /30, e.g. `203.0.113.0/24`.
    #[schemars(length(max = 18))]
    pub cidr: String,
    /// Gateway address inside the block (never handed out).
    #[schemars(length(max = 15))]
    pub gateway: String,
    /// Addresses of the block never handed out (network equipment,
    /// reserved): an address (`203.0.113.5`), a range
    /// (`203.0.113.10-203.0.113.20`) or a CIDR block (`203.0.113.128/28`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub excluded: Vec<String>,
}

/// An IPv6 prefix and its routing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv6Block {
    /// Prefix in CIDR notation, /32 to /63, e.g. `2001:db8:100::/48`.
    #[schemars(length(max = 43))]
    pub prefix: String,
    /// Gateway address; the server prefix holding it is never handed out.
    #[schemars(length(max = 39))]
    pub gateway: String,
    /// Length of the prefix each server gets (default 64); at most 32 bits
    /// longer than the pool's.
    #[serde(default = "default_server_prefix_length")]
    #[schemars(range(min = 33, max = 64))]
    pub server_prefix_length: u8,
    /// Server prefixes never handed out: a prefix in CIDR notation, or an
    /// address (the server prefix holding it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub excluded: Vec<String>,
}

fn default_server_prefix_length() -> u8 {
    DEFAULT_SERVER_PREFIX_LENGTH
}

/// Usage of one family of a pool as the controller last counted it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressCounts {
    /// Addresses (IPv6: server prefixes) the pool can hand out at all.
    #[serde(default)]
    pub total: u64,
    /// Held by servers.
    #[serde(default)]
    pub allocated: u64,
    /// Released, waiting out the quarantine (or a clean check) before reuse.
    #[serde(default)]
    pub quarantined: u64,
    /// Free but kept out of circulation by a blocking DNS blacklist.
    #[serde(default)]
    pub blacklisted: u64,
    /// Free to hand out.
    #[serde(default)]
    pub free: u64,
}

impl AddressCounts {
    /// The counts of a family of `total` usable addresses; what is neither
    /// held, quarantined nor blacklisted is free.
    pub fn new(total: u64, allocated: u64, quarantined: u64, blacklisted: u64) -> Self {
        Self {
            total,
            allocated,
            quarantined,
            blacklisted,
            free: total.saturating_sub(allocated + quarantined + blacklisted),
        }
    }
}

/// Usage of a pool as the controller last counted it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolStatus {
    /// IPv4 addresses.
    #[serde(default)]
    pub ipv4: AddressCounts,
    /// IPv6 server prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressCounts>,
    /// Detailed conditions (Valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl IpPoolStatus {
    /// Whether a pool counted as `self` offers servers more than it did
    /// when counted as `before`: it became ready (new, valid again, or no
    /// longer overlapping), or more of either family is free.
    pub fn offers_more_than(&self, before: Option<&IpPoolStatus>) -> bool {
        let ready = |s: &IpPoolStatus| conditions::is_true(&s.conditions, ConditionType::Ready);
        if !ready(self) {
            return false;
        }
        let Some(before) = before.filter(|b| ready(b)) else {
            return true;
        };
        let free_v6 = |s: &IpPoolStatus| s.ipv6.map_or(0, |c| c.free);
        self.ipv4.free > before.ipv4.free || free_v6(self) > free_v6(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::test_time;
    use crate::conditions::Reason;

    fn counted(ready: bool, free_v4: u64, free_v6: Option<u64>) -> IpPoolStatus {
        let mut status = IpPoolStatus {
            ipv4: AddressCounts::new(256, 256 - free_v4, 0, 0),
            ipv6: free_v6.map(|free| AddressCounts::new(65536, 65536 - free, 0, 0)),
            conditions: Vec::new(),
        };
        conditions::set(
            &mut status.conditions,
            ConditionType::Ready,
            ready,
            Reason::Answered,
            "",
            test_time(),
        );
        status
    }

    #[test]
    fn a_pool_offers_more_when_it_becomes_ready_or_frees_addresses() {
        let full = counted(true, 0, Some(0));
        assert!(full.offers_more_than(None), "a new pool");
        assert!(full.offers_more_than(Some(&counted(false, 0, Some(0)))));
        assert!(!full.offers_more_than(Some(&full)));
        assert!(counted(true, 1, Some(0)).offers_more_than(Some(&full)));
        assert!(counted(true, 0, Some(3)).offers_more_than(Some(&full)));
        assert!(!counted(true, 0, Some(3)).offers_more_than(Some(&counted(true, 5, Some(3)))));
        assert!(
            !counted(false, 9, Some(9)).offers_more_than(Some(&full)),
            "not ready"
        );
        assert!(!counted(false, 9, None).offers_more_than(None));
    }
}
