//! `Account`: a customer account and its standing.

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quota::Quota;

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
    /// The account's own limits; a key absent here takes the provider's
    /// default (the configuration's `quotas:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
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
    /// Suspensions of the whole account (R1, R2, R8), with when each began.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspensions: Vec<AccountSuspension>,
    /// R3: when the account's data was destroyed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_destroyed_at: Option<String>,
    /// The next instant the account's standing changes by itself, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_deadline: Option<String>,
    /// Conditions (Suspended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::Condition>,
}

/// One reason the whole account is suspended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountSuspension {
    pub reason: crate::standing::SuspensionReason,
    /// RFC 3339.
    pub since: String,
}
