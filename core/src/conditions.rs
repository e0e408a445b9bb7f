//! Status conditions and the names that explain decisions: condition types,
//! condition reasons and event reasons live here, and only here, so a reason
//! is never a string literal spread across crates.
//!
//! Conditions are computed rather than hand-edited: the transition time
//! moves only when the status flips.

use std::fmt;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Defines a fieldless enum whose variants are also their CamelCase names.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `True`, `False` or `Unknown`, as in every Kubernetes condition.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// What a condition is about.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionType {
    /// A hypervisor was chosen for the server.
    Scheduled,
    /// The server's system disk exists.
    Provisioned,
    /// The agent of the server's hypervisor answered.
    AgentReachable,
    /// The server holds its public addresses (R19).
    AddressesAssigned,
    /// The hypervisor filters its guests' traffic to their own addresses (R19).
    AntiSpoofing,
    /// No blocking DNS blacklist lists the server's addresses (R20's sweep).
    AddressesClean,
    /// The server is held by a suspension (R1–R9); the reason names the first cause.
    Suspended,
    /// Both copies of a storage subscription exist and hold the same
    /// verified bytes (R24, R26).
    ReplicasInSync,
    /// A storage subscription's primary copy is a disk of the server it is
    /// attached to.
    Attached,
    /// The guest came up: its serial console shows no known boot failure
    /// (a running domain whose guest stopped booting is not ready).
    GuestBooted,
    /// The server runs with the plan its spec asks for (R23); false while
    /// it moves to another one, with the step or what it waits for.
    Resized,
    /// The system disk was made afresh from the image last asked for;
    /// false while a rebuild is under way, with the step or what it waits for.
    Rebuilt,
    /// The server boots the rescue system (true) or its own (false);
    /// the reason says while it moves from one to the other.
    Rescue,
    /// The resource does what it is for (a server runs; a hypervisor answers).
    Ready,
}

named_enum!(
    /// Machine-readable CamelCase reason of a condition.
    Reason {
        Scheduling,
        Placed,
        Unschedulable,
        Pending,
        Provisioning,
        DiskCreated,
        DiskMissing,
        Running,
        Stopped,
        Crashed,
        Terminating,
        /// A move to another plan is under way (R23).
        Resizing,
        /// Its hypervisor has no room for the plan asked for (R23).
        InsufficientCapacity,
        /// The server runs with the plan it asked for (R23).
        PlanApplied,
        /// A reinstall is under way.
        Rebuilding,
        /// The system disk was made afresh from the image asked for.
        ImageApplied,
        /// Moving into or out of rescue mode.
        RescueChanging,
        /// Booted in rescue mode.
        RescueEnabled,
        /// Booted from its own disk again.
        RescueDisabled,
        Answered,
        AgentAnswered,
        AgentUnavailable,
        AgentRefused,
        Allocated,
        NoCleanAddress,
        Invalid,
        /// The pool overlaps one created before it: it serves no address.
        Overlapping,
        /// Every NIC is filtered to its MAC and addresses.
        FiltersEnforced,
        /// The hypervisor must filter and cannot: it starts no guest.
        FiltersUnavailable,
        /// The hypervisor cannot filter and was allowed to run guests unfiltered.
        NotEnforced,
        /// A blocking DNS blacklist lists one of the server's addresses.
        Blacklisted,
        /// No blocking DNS blacklist lists the server's addresses.
        NotListed,
        /// No suspension holds the server.
        NotSuspended,
        /// Suspended: an invoice stayed unpaid (R1).
        NonPayment,
        /// Suspended: abuse was reported (R5).
        Abuse,
        /// Suspended on request of an authority (R8).
        Legal,
        /// Suspended: the identity file is incomplete (R8).
        Kyc,
        /// Suspended for a maintenance window (R9).
        Maintenance,
        /// Both copies of a storage subscription exist.
        CopiesCreated,
        /// Both copies of a storage subscription hold the same bytes.
        CopiesAgree,
        /// A copy of a storage subscription is missing or unreachable.
        CopyUnavailable,
        /// The secondary copy is being brought to the primary's content.
        Replicating,
        /// A copy no longer matched its checksum and was rewritten from the other.
        Repaired,
        /// A snapshot's server disk could not be copied.
        CaptureFailed,
        /// Both copies of the current content no longer match its checksum.
        ContentLost,
        /// The primary copy is a disk of its server.
        DiskAttached,
        /// The primary copy is being attached to its server, or detached.
        Attaching,
        /// The subscription is attached to no server.
        NotAttached,
        /// The server it is attached to does not exist (any more).
        ServerGone,
        /// A LUKS disk waits for its key: its server was started again,
        /// its hypervisor restarted, or a suspension was lifted.
        KeyRequired,
        /// The guest's console shows no known boot failure.
        Booted,
        /// The guest's console shows it stopped booting (a kernel panic, a
        /// root file system larger than its disk, an emergency shell).
        BootFailed,
    }
);

named_enum!(
    /// Why a Kubernetes Event was published.
    EventReason {
        /// The server entered a phase (one reason per phase).
        Pending,
        Provisioning,
        Running,
        Stopped,
        Suspended,
        Terminated,
        Terminating,
        Error,
        /// A storage subscription entered a phase (beside the shared ones).
        Ready,
        Degraded,
        /// A storage copy no longer matched its checksum (repaired, or lost).
        CopyRepaired,
        /// A storage subscription's primary copy became, or stopped being,
        /// a server's disk.
        DiskAttached,
        DiskDetached,
        /// A LUKS disk waits for its customer to give its key again.
        KeyRequired,
        /// The content a guest left on a detached primary copy became a
        /// new version.
        ContentSettled,
        /// A scheduled copy of a server's disk was not made (it needed the
        /// guest paused longer than its hypervisor allows).
        SnapshotSkipped,
        /// A restore point whose loss was confirmed showed up again, whole.
        VersionRecovered,
        /// A snapshot's server disk was copied, or could not be.
        SnapshotTaken,
        SnapshotFailed,
        /// A resize (R23) is waiting for room on the server's hypervisor.
        ResizeWaiting,
        /// A server runs with the plan it moved to (R23).
        Resized,
        /// A server runs on a system disk made afresh from an image.
        Rebuilt,
        /// A server boots its rescue system.
        RescueEnabled,
        /// A server boots its own system again.
        RescueDisabled,
        /// The domain and disk were destroyed on the hypervisor.
        Destroyed,
        /// The disk was deleted but its storage could not overwrite it first.
        DiskNotWiped,
        /// A hypervisor's agent answered after it had not.
        Reachable,
        /// A hypervisor's agent stopped answering.
        Unreachable,
        /// A hypervisor's guests are no longer (or not) filtered against spoofing.
        AntiSpoofingUnavailable,
        /// A DNS blacklist lists an address the server holds.
        AddressListed,
        /// The server's addresses are no longer listed.
        AddressDelisted,
        /// An account's or a server's standing changed (on the Account).
        SuspensionLifted,
        TerminationScheduled,
        DataDestroyed,
        DataWiped,
        Restored,
        /// R1: an invoice is `billing.suspendAfter` past due with no
        /// reminder recorded, so nothing is suspended.
        ReminderMissing,
    }
);

impl Reason {
    /// The reason of a `Suspended` condition.
    pub fn suspended_for(reason: crate::standing::SuspensionReason) -> Self {
        use crate::standing::SuspensionReason as S;
        match reason {
            S::NonPayment => Self::NonPayment,
            S::Abuse => Self::Abuse,
            S::Legal => Self::Legal,
            S::Kyc => Self::Kyc,
            S::Maintenance => Self::Maintenance,
        }
    }
}

impl EventReason {
    /// The event for a change of an account's standing.
    pub fn changed(change: &crate::standing::ChangeKind) -> Self {
        use crate::standing::ChangeKind as C;
        match change {
            C::Suspended { .. } => Self::Suspended,
            C::Lifted { .. } => Self::SuspensionLifted,
            C::TerminationScheduled { .. } => Self::TerminationScheduled,
            C::Terminated { .. } => Self::Terminated,
            C::DataDestroyed => Self::DataDestroyed,
            C::Wiped => Self::DataWiped,
            C::Restored => Self::Restored,
            C::ReminderMissing { .. } => Self::ReminderMissing,
        }
    }

    /// The event for a storage subscription entering `phase`.
    pub fn storage_entered(phase: crate::resources::StoragePhase) -> Self {
        use crate::resources::StoragePhase as P;
        match phase {
            P::Pending => Self::Pending,
            P::Provisioning => Self::Provisioning,
            P::Ready => Self::Ready,
            P::Degraded => Self::Degraded,
            P::Suspended => Self::Suspended,
            P::Terminating => Self::Terminating,
            P::Error => Self::Error,
        }
    }

    /// The event for a server entering `phase`.
    pub fn entered(phase: crate::resources::ServerPhase) -> Self {
        use crate::resources::ServerPhase as P;
        match phase {
            P::Pending => Self::Pending,
            P::Provisioning => Self::Provisioning,
            P::Running => Self::Running,
            P::Stopped => Self::Stopped,
            P::Suspended => Self::Suspended,
            P::Terminated => Self::Terminated,
            P::Terminating => Self::Terminating,
            P::Error => Self::Error,
        }
    }
}

/// One observation about a resource, in the Kubernetes condition shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason.
    // Free text on the wire (typed where it is set), so reasons a newer
    // controller adds never break an older reader.
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
    type_: ConditionType,
    status: impl Into<ConditionStatus>,
    reason: Reason,
    message: impl Into<String>,
    now: Timestamp,
) -> bool {
    let status = status.into();
    let reason = reason.as_str();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status == status && existing.reason == reason && existing.message == message
            {
                return false;
            }
            if existing.status != status {
                existing.last_transition_time = now.to_string();
            }
            existing.status = status;
            existing.reason = reason.to_owned();
            existing.message = message;
            true
        }
        None => {
            conditions.push(Condition {
                type_,
                status,
                reason: reason.to_owned(),
                message,
                last_transition_time: now.to_string(),
            });
            true
        }
    }
}

pub fn get(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// Since when condition `type_` has had `status`: `None` when it has
/// another status, is absent, or its transition time does not parse.
pub fn since(
    conditions: &[Condition],
    type_: ConditionType,
    status: impl Into<ConditionStatus>,
) -> Option<Timestamp> {
    let status = status.into();
    get(conditions, type_)
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::test_time;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let t = |minutes: i64| test_time() + jiff::SignedDuration::from_mins(minutes);
        let ready = ConditionType::Ready;
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            ready,
            false,
            Reason::Provisioning,
            "",
            t(1)
        ));
        assert!(!set(
            &mut conditions,
            ready,
            false,
            Reason::Provisioning,
            "",
            t(2)
        ));
        assert_eq!(conditions[0].last_transition_time, t(1).to_string());
        assert!(set(
            &mut conditions,
            ready,
            false,
            Reason::Stopped,
            "",
            t(3)
        ));
        assert_eq!(conditions[0].last_transition_time, t(1).to_string());
        assert!(set(&mut conditions, ready, true, Reason::Running, "", t(4)));
        assert_eq!(conditions[0].last_transition_time, t(4).to_string());
        assert!(is_true(&conditions, ready));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "Running");
    }

    #[test]
    fn conditions_keep_their_wire_shape() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            ConditionType::AgentReachable,
            ConditionStatus::Unknown,
            Reason::Pending,
            "not asked yet",
            test_time(),
        );
        let json = serde_json::to_value(&conditions[0]).unwrap();
        assert_eq!(json["type"], "AgentReachable");
        assert_eq!(json["status"], "Unknown");
        assert_eq!(json["reason"], "Pending");
        let back: Condition = serde_json::from_value(json).unwrap();
        assert_eq!(back, conditions[0]);
    }

    #[test]
    fn reasons_are_their_names() {
        assert_eq!(Reason::AgentUnavailable.as_str(), "AgentUnavailable");
        assert_eq!(EventReason::Destroyed.to_string(), "Destroyed");
        assert!(Reason::ALL.len() > 10);
    }
}
