//! The lifecycle of a storage subscription, decided purely: from what the
//! object says and what the agents of its two copies report, the one next
//! step and the status to record (R24, R14).

use jiff::Timestamp;

use crate::conditions::{self, ConditionType, Reason};
use crate::resources::{
    REPLICAS, StoragePhase, StorageSubscriptionSpec, StorageSubscriptionStatus,
};

/// What the controller knows of a subscription object.
#[derive(Debug, Clone, Copy)]
pub struct StorageFacts<'a> {
    pub spec: &'a StorageSubscriptionSpec,
    pub status: &'a StorageSubscriptionStatus,
    pub generation: Option<i64>,
    pub has_finalizer: bool,
    pub deleting: bool,
}

/// What the agent of one copy's hypervisor reports of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyObservation {
    /// The copy exists: the versions the agent has.
    Present {
        pool: String,
        versions: Vec<crate::agent_api::VolumeVersion>,
    },
    Absent,
    /// The agent did not answer (why).
    Unavailable(String),
}

/// The one next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageAction {
    AddFinalizer,
    /// Choose the two hypervisors; both are recorded at once.
    Schedule,
    /// Make copy `index` exist; `create` is false once it existed.
    EnsureCopy {
        index: usize,
        create: bool,
    },
    /// Wipe and delete copy `index`.
    DestroyCopy {
        index: usize,
    },
    /// Nothing is left on any hypervisor: give back the quota, let it go.
    RemoveFinalizer,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageDecision {
    pub next: Option<StorageAction>,
    pub status: StorageSubscriptionStatus,
}

/// `observed[i]` is what the agent says of `status.replicas[i]`; it is
/// empty while no copy is placed.
pub fn plan(
    facts: StorageFacts<'_>,
    observed: &[CopyObservation],
    now: Timestamp,
) -> StorageDecision {
    let mut status = facts.status.clone();
    status.observed_generation = facts.generation;
    status.zones = StorageSubscriptionStatus::zones_of(&status.replicas);
    // What the agents say of each copy is recorded whatever is done next.
    for (replica, observation) in status.replicas.iter_mut().zip(observed) {
        if let CopyObservation::Present { pool, versions } = observation {
            replica.created = true;
            replica.pool = Some(pool.clone());
            if let Some(current) = versions.iter().find(|v| v.version == replica.version) {
                replica.volume = current.volume.clone();
                replica.path = current.path.clone();
            }
        }
    }
    let decide = |next, status| StorageDecision { next, status };

    if facts.deleting {
        status.phase = StoragePhase::Terminating;
        status.replicas_in_sync = false;
        let left: Vec<usize> = (0..status.replicas.len())
            .filter(|&i| !matches!(observed.get(i), Some(CopyObservation::Absent)))
            .collect();
        let unreachable: Vec<String> = left
            .iter()
            .filter_map(|&i| match observed.get(i) {
                Some(CopyObservation::Unavailable(why)) => {
                    Some(format!("{}: {why}", status.replicas[i].hypervisor))
                }
                _ => None,
            })
            .collect();
        status.reason = (!unreachable.is_empty()).then(|| {
            format!(
                "waiting to wipe the copies on unreachable hypervisors ({})",
                unreachable.join("; ")
            )
        });
        conditions::set(
            &mut status.conditions,
            ConditionType::Ready,
            false,
            Reason::Terminating,
            "both copies are being wiped and deleted",
            now,
        );
        let reachable_left = left
            .iter()
            .copied()
            .find(|&i| matches!(observed.get(i), Some(CopyObservation::Present { .. })));
        let next = match reachable_left {
            Some(index) => Some(StorageAction::DestroyCopy { index }),
            None if left.is_empty() => facts
                .has_finalizer
                .then_some(StorageAction::RemoveFinalizer),
            None => None,
        };
        return decide(next, status);
    }
    if !facts.has_finalizer {
        return decide(Some(StorageAction::AddFinalizer), status);
    }
    if status.replicas.len() != REPLICAS {
        // Never one copy alone: both are placed together or not at all.
        status.phase = StoragePhase::Pending;
        return decide(Some(StorageAction::Schedule), status);
    }

    let mut problems = Vec::new();
    let mut next = None;
    for (index, replica) in status.replicas.iter().enumerate() {
        match observed.get(index) {
            Some(CopyObservation::Present { versions, .. }) => {
                let wanted = facts.spec.size_gib << 30;
                match versions.iter().find(|v| v.version == replica.version) {
                    None => problems.push(format!(
                        "the copy on {} lacks its version {}",
                        replica.hypervisor, replica.version
                    )),
                    Some(current) if current.capacity_bytes < wanted => problems.push(format!(
                        "the copy on {} holds {} bytes, less than {wanted}",
                        replica.hypervisor, current.capacity_bytes
                    )),
                    Some(_) => {}
                }
            }
            Some(CopyObservation::Absent) if !replica.created => {
                next = next.or(Some(StorageAction::EnsureCopy {
                    index,
                    create: true,
                }));
            }
            Some(CopyObservation::Absent) => problems.push(format!(
                "the copy on {} is missing; it is not recreated empty",
                replica.hypervisor
            )),
            Some(CopyObservation::Unavailable(why)) => problems.push(format!(
                "the hypervisor {} of a copy does not answer: {why}",
                replica.hypervisor
            )),
            None => problems.push(format!(
                "the copy on {} was not looked at",
                replica.hypervisor
            )),
        }
    }
    let both_exist = status.replicas.iter().all(|r| r.created);
    let in_sync = both_exist && problems.is_empty();
    status.replicas_in_sync = in_sync;
    let (phase, reason) = match (next, problems.is_empty()) {
        (_, false) if both_exist => (StoragePhase::Degraded, Some(problems.join("; "))),
        (_, false) => (StoragePhase::Provisioning, Some(problems.join("; "))),
        (Some(_), true) => (StoragePhase::Provisioning, None),
        (None, true) => (StoragePhase::Ready, None),
    };
    status.phase = phase;
    status.reason = reason.clone();
    conditions::set(
        &mut status.conditions,
        ConditionType::Provisioned,
        both_exist,
        if both_exist {
            Reason::CopiesCreated
        } else {
            Reason::Provisioning
        },
        "",
        now,
    );
    conditions::set(
        &mut status.conditions,
        ConditionType::ReplicasInSync,
        in_sync,
        if in_sync {
            Reason::CopiesAgree
        } else if both_exist {
            Reason::CopyUnavailable
        } else {
            Reason::Provisioning
        },
        if in_sync {
            "both copies exist and hold the same bytes".to_owned()
        } else {
            reason.clone().unwrap_or_default()
        },
        now,
    );
    conditions::set(
        &mut status.conditions,
        ConditionType::Ready,
        phase == StoragePhase::Ready,
        if phase == StoragePhase::Ready {
            Reason::CopiesAgree
        } else {
            Reason::Provisioning
        },
        reason.unwrap_or_default(),
        now,
    );
    decide(next, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::test_time;
    use crate::ids::HypervisorName;
    use crate::resources::{StorageEncryption, StorageReplica};

    fn spec() -> StorageSubscriptionSpec {
        StorageSubscriptionSpec {
            name: "backup".into(),
            size_gib: 10,
            zone: None,
            encryption: StorageEncryption::Client,
        }
    }

    fn replica(hypervisor: &str, zone: &str, created: bool) -> StorageReplica {
        StorageReplica {
            hypervisor: HypervisorName::parse(hypervisor).unwrap(),
            zone: zone.into(),
            volume: "stratus-acc-1.st-1-store-v0.raw".into(),
            version: 0,
            pool: None,
            path: None,
            created,
            checksum: None,
            verified_at: None,
        }
    }

    fn present() -> CopyObservation {
        CopyObservation::Present {
            pool: "stratus-a".into(),
            versions: vec![crate::agent_api::VolumeVersion {
                version: 0,
                volume: "stratus-acc-1.st-1-store-v0.raw".into(),
                path: Some("/pool/stratus-acc-1.st-1-store-v0.raw".into()),
                capacity_bytes: 10 << 30,
            }],
        }
    }

    fn facts<'a>(
        spec: &'a StorageSubscriptionSpec,
        status: &'a StorageSubscriptionStatus,
    ) -> StorageFacts<'a> {
        StorageFacts {
            spec,
            status,
            generation: Some(1),
            has_finalizer: true,
            deleting: false,
        }
    }

    fn placed(created: [bool; 2]) -> StorageSubscriptionStatus {
        StorageSubscriptionStatus {
            replicas: vec![
                replica("a1", "a", created[0]),
                replica("b1", "b", created[1]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn r24_a_new_subscription_is_finalized_then_placed_as_a_pair() {
        let spec = spec();
        let status = StorageSubscriptionStatus::default();
        let mut f = facts(&spec, &status);
        f.has_finalizer = false;
        assert_eq!(
            plan(f, &[], test_time()).next,
            Some(StorageAction::AddFinalizer)
        );
        let decision = plan(facts(&spec, &status), &[], test_time());
        assert_eq!(decision.next, Some(StorageAction::Schedule));
        assert_eq!(decision.status.phase, StoragePhase::Pending);
        assert!(!decision.status.replicas_in_sync);
    }

    #[test]
    fn r24_copies_are_created_one_by_one_and_ready_only_with_both() {
        let spec = spec();
        let status = placed([false, false]);
        let decision = plan(
            facts(&spec, &status),
            &[CopyObservation::Absent, CopyObservation::Absent],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::EnsureCopy {
                index: 0,
                create: true
            })
        );
        assert_eq!(decision.status.phase, StoragePhase::Provisioning);
        assert_eq!(decision.status.zones.as_deref(), Some("a,b"));

        let decision = plan(
            facts(&spec, &status),
            &[present(), CopyObservation::Absent],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::EnsureCopy {
                index: 1,
                create: true
            })
        );
        assert!(decision.status.replicas[0].created);
        assert_eq!(
            decision.status.replicas[0].pool.as_deref(),
            Some("stratus-a")
        );
        assert_eq!(
            decision.status.replicas[0].path.as_deref(),
            Some("/pool/stratus-acc-1.st-1-store-v0.raw")
        );
        assert!(!decision.status.replicas_in_sync);
        assert_ne!(decision.status.phase, StoragePhase::Ready);

        let decision = plan(facts(&spec, &status), &[present(), present()], test_time());
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Ready);
        assert!(decision.status.replicas_in_sync);
        assert!(conditions::is_true(
            &decision.status.conditions,
            ConditionType::ReplicasInSync
        ));
    }

    #[test]
    fn r24_a_lost_or_unreachable_copy_is_degraded_never_recreated_empty() {
        let spec = spec();
        let status = placed([true, true]);
        let decision = plan(
            facts(&spec, &status),
            &[present(), CopyObservation::Absent],
            test_time(),
        );
        assert_eq!(decision.next, None, "a lost copy is never created empty");
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
        assert!(!decision.status.replicas_in_sync);
        assert!(
            decision
                .status
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("b1") && r.contains("missing")),
            "{:?}",
            decision.status.reason
        );

        let decision = plan(
            facts(&spec, &status),
            &[CopyObservation::Unavailable("refused".into()), present()],
            test_time(),
        );
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
        assert!(!conditions::is_true(
            &decision.status.conditions,
            ConditionType::ReplicasInSync
        ));

        // While the first copy is still being made, an unreachable second
        // one is not "degraded" data: nothing was ever ready.
        let status = placed([false, false]);
        let decision = plan(
            facts(&spec, &status),
            &[
                CopyObservation::Absent,
                CopyObservation::Unavailable("refused".into()),
            ],
            test_time(),
        );
        assert_eq!(decision.status.phase, StoragePhase::Provisioning);
        assert_eq!(
            decision.next,
            Some(StorageAction::EnsureCopy {
                index: 0,
                create: true
            })
        );
    }

    #[test]
    fn r14_deletion_wipes_every_copy_before_the_object_goes() {
        let spec = spec();
        let status = placed([true, true]);
        let mut f = facts(&spec, &status);
        f.deleting = true;
        let decision = plan(f, &[present(), present()], test_time());
        assert_eq!(decision.next, Some(StorageAction::DestroyCopy { index: 0 }));
        assert_eq!(decision.status.phase, StoragePhase::Terminating);
        let decision = plan(f, &[CopyObservation::Absent, present()], test_time());
        assert_eq!(decision.next, Some(StorageAction::DestroyCopy { index: 1 }));
        // An unreachable copy holds the finalizer: it is wiped when its
        // hypervisor answers, never forgotten.
        let decision = plan(
            f,
            &[
                CopyObservation::Absent,
                CopyObservation::Unavailable("timed out".into()),
            ],
            test_time(),
        );
        assert_eq!(decision.next, None);
        assert!(decision.status.reason.unwrap().contains("b1: timed out"));
        let decision = plan(
            f,
            &[CopyObservation::Absent, CopyObservation::Absent],
            test_time(),
        );
        assert_eq!(decision.next, Some(StorageAction::RemoveFinalizer));
        // Never placed: nothing to wipe.
        let unplaced = StorageSubscriptionStatus::default();
        let mut f = facts(&spec, &unplaced);
        f.deleting = true;
        assert_eq!(
            plan(f, &[], test_time()).next,
            Some(StorageAction::RemoveFinalizer)
        );
    }
}
