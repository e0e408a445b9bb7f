//! Leader election over a lease (Kubernetes `coordination.k8s.io/v1`): who
//! may run the controller now. Pure: the caller reads and writes the lease.

use jiff::{SignedDuration, Timestamp};

/// What the lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    pub renewed_at: Option<Timestamp>,
    pub duration: SignedDuration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder stopped renewing (or it is free): take it over.
    TakeOver,
    /// Someone else holds it until `until`.
    Wait { holder: String, until: Timestamp },
}

pub fn decide(lease: Option<&LeaseState>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::TakeOver,
        Some(holder) => {
            let until = lease
                .renewed_at
                .and_then(|at| at.checked_add(lease.duration).ok())
                .unwrap_or(Timestamp::MIN);
            if now > until {
                LeaseDecision::TakeOver
            } else {
                LeaseDecision::Wait {
                    holder: holder.to_owned(),
                    until,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            renewed_at: Some(at(renewed)),
            duration: SignedDuration::from_secs(15),
        }
    }

    #[test]
    fn decisions() {
        let now = at("2026-11-21T10:00:00Z");
        assert_eq!(decide(None, "a", now), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&held_by("a", "2026-11-21T09:00:00Z")), "a", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&held_by("b", "2026-11-21T09:59:50Z")), "a", now),
            LeaseDecision::Wait {
                holder: "b".into(),
                until: at("2026-11-21T10:00:05Z")
            }
        );
        assert_eq!(
            decide(Some(&held_by("b", "2026-11-21T09:59:40Z")), "a", now),
            LeaseDecision::TakeOver
        );
        let never_renewed = LeaseState {
            holder: Some("b".into()),
            renewed_at: None,
            duration: SignedDuration::from_secs(15),
        };
        assert_eq!(
            decide(Some(&never_renewed), "a", now),
            LeaseDecision::TakeOver
        );
        let released = LeaseState {
            holder: None,
            ..held_by("x", "2026-11-21T09:59:59Z")
        };
        assert_eq!(decide(Some(&released), "a", now), LeaseDecision::TakeOver);
    }
}
