//! Leader election over a lease (Kubernetes `coordination.k8s.io/v1`): who
//! may run the controller now. Pure: the caller reads and writes the lease.
//!
//! Expiry is judged as client-go judges it: from how long *this* replica has
//! seen the lease unchanged on its own monotonic clock, never by comparing
//! the `renewTime` another replica wrote with our wall clock, so clock skew
//! between machines cannot make two leaders. The leader in turn stops acting
//! at its renew deadline, shorter than the lease, counted from the start of
//! its last successful renewal; anyone else can only take over a full lease
//! duration after seeing that renewal.

use std::time::Duration;

/// What this replica knows of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    /// The lease duration its holder announced.
    pub duration: Duration,
    /// How long this replica has seen the lease unchanged (holder, renew
    /// time, resourceVersion), on its own monotonic clock.
    pub unchanged_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder stopped renewing (or it is free): take it over.
    TakeOver,
    /// Someone else holds it; it expires in `remaining` unless renewed.
    Wait { holder: String, remaining: Duration },
}

pub fn decide(lease: Option<&LeaseState>, me: &str) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::TakeOver,
        Some(_) if lease.unchanged_for > lease.duration => LeaseDecision::TakeOver,
        Some(holder) => LeaseDecision::Wait {
            holder: holder.to_owned(),
            remaining: lease.duration - lease.unchanged_for,
        },
    }
}

/// How long a leader may act after a renewal started: client-go's ratio
/// (10 s of a 15 s lease), leaving the rest of the lease as the margin in
/// which nobody acts.
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, unchanged_for: u64) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            duration: Duration::from_secs(15),
            unchanged_for: Duration::from_secs(unchanged_for),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a"), LeaseDecision::Create);
        assert_eq!(decide(Some(&held_by("a", 3600)), "a"), LeaseDecision::Renew);
        assert_eq!(
            decide(Some(&held_by("b", 10)), "a"),
            LeaseDecision::Wait {
                holder: "b".into(),
                remaining: Duration::from_secs(5)
            }
        );
        assert_eq!(
            decide(Some(&held_by("b", 15)), "a"),
            LeaseDecision::Wait {
                holder: "b".into(),
                remaining: Duration::ZERO
            },
            "exactly at the duration the holder may still be renewing"
        );
        assert_eq!(
            decide(Some(&held_by("b", 16)), "a"),
            LeaseDecision::TakeOver
        );
        let released = LeaseState {
            holder: None,
            ..held_by("x", 0)
        };
        assert_eq!(decide(Some(&released), "a"), LeaseDecision::TakeOver);
    }

    #[test]
    fn the_leader_stops_before_anyone_may_take_over() {
        let lease = Duration::from_secs(15);
        assert!(renew_deadline(lease) < lease);
        assert_eq!(renew_deadline(lease), Duration::from_secs(10));
    }
}
