//! Status conditions, computed rather than hand-edited: the transition time
//! moves only when the value flips.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const SCHEDULED: &str = "Scheduled";
pub const PROVISIONED: &str = "Provisioned";
pub const AGENT_REACHABLE: &str = "AgentReachable";
pub const READY: &str = "Ready";

/// One observation about a resource, in the Kubernetes condition shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// Time (RFC 3339) the status last changed.
    pub last_transition_time: String,
}

/// Sets condition `type_` in `conditions`, keeping the transition time when
/// the status did not change. Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    now: &str,
) -> bool {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status == status && existing.reason == reason && existing.message == message
            {
                return false;
            }
            if existing.status != status {
                existing.last_transition_time = now.to_owned();
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                last_transition_time: now.to_owned(),
            });
            true
        }
    }
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut conditions = Vec::new();
        assert!(set(&mut conditions, READY, false, "Provisioning", "", "t1"));
        assert!(!set(
            &mut conditions,
            READY,
            false,
            "Provisioning",
            "",
            "t2"
        ));
        assert_eq!(conditions[0].last_transition_time, "t1");
        assert!(set(&mut conditions, READY, false, "Stopped", "", "t3"));
        assert_eq!(conditions[0].last_transition_time, "t1");
        assert!(set(&mut conditions, READY, true, "Running", "", "t4"));
        assert_eq!(conditions[0].last_transition_time, "t4");
        assert!(is_true(&conditions, READY));
        assert_eq!(conditions.len(), 1);
    }
}
