//! The lifecycle of a storage subscription, decided purely: from what the
//! object says and what the agents of its two copies report, the one next
//! step and the status to record (R24, R14).

use jiff::Timestamp;

use crate::conditions::{self, ConditionType, Reason};
use crate::resources::{
    KeptVersion, Missing, REPLICAS, StorageEncryption, StoragePhase, StorageSubscriptionSpec,
    StorageSubscriptionStatus,
};

/// What the controller knows of a subscription object.
#[derive(Debug, Clone, Copy)]
pub struct StorageFacts<'a> {
    pub spec: &'a StorageSubscriptionSpec,
    pub status: &'a StorageSubscriptionStatus,
    pub generation: Option<i64>,
    pub has_finalizer: bool,
    pub deleting: bool,
    /// Verified versions the secondary keeps (`storage.versions`).
    pub versions_kept: u32,
    /// How often both copies are read back and checked (`storage.verifyInterval`).
    pub verify_interval: crate::policy::PolicyDuration,
    /// How often a primary that is a server's disk is copied to the
    /// secondary (`storage.replicationInterval`).
    pub replication_interval: crate::policy::PolicyDuration,
    /// What the servers of the account say of the subscription's disk.
    pub servers: &'a ServerFacts,
}

/// What the servers of a subscription's account say of its disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// Whether the server `attachedTo` names exists (and is not being
    /// deleted); false when it names none.
    pub attached_server_exists: bool,
    /// Servers whose agent reports the primary copy as one of their disks.
    pub holding: Vec<String>,
    /// Of a snapshot whose disk is not copied yet: the hypervisor of the
    /// server it copies, while that server exists, is not being deleted
    /// and is placed.
    pub snapshot_source: Option<crate::ids::HypervisorName>,
}

/// Whether the primary's current version is a LUKS volume whose key is not
/// loaded on its hypervisor, from what its agent reports.
pub fn key_missing(status: &StorageSubscriptionStatus, observed: &[CopyObservation]) -> bool {
    primary_key(status, observed) == Some(false)
}

/// Whether the key of the primary's current version is loaded, when that
/// version is a LUKS volume.
fn primary_key(status: &StorageSubscriptionStatus, observed: &[CopyObservation]) -> Option<bool> {
    let primary = status.replicas.first()?;
    match observed.first() {
        Some(CopyObservation::Present { versions, .. }) => versions
            .iter()
            .find(|v| v.version == primary.version && v.encrypted)
            .map(|v| v.unlocked),
        _ => None,
    }
}

/// How long a version above the recorded content may be an upload in
/// progress; after that it is one that never completed, and is deleted.
pub const UNFINISHED_UPLOAD: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// Observations in a row that must not show a copy, its current version
/// or a kept version, and how long since the first, before it counts as
/// lost: one empty listing (a pool's file system mounted late, an agent
/// restarting) never rebuilds a copy or forgets a restore point.
pub const CONFIRM_OBSERVATIONS: u32 = 3;
pub const CONFIRM_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Records one more observation that did not show something; true once
/// its loss is confirmed.
fn not_seen(missing: &mut Option<Missing>, now: Timestamp) -> bool {
    let entry = missing.get_or_insert_with(|| Missing {
        since: now.to_string(),
        seen: 0,
    });
    entry.seen = entry.seen.saturating_add(1);
    let since = entry.since.parse::<Timestamp>().unwrap_or(now);
    entry.seen >= CONFIRM_OBSERVATIONS
        && since
            .checked_add(CONFIRM_AFTER)
            .is_ok_and(|confirmed_at| confirmed_at <= now)
}

/// How a loss not yet confirmed is said.
fn unconfirmed(missing: Option<&Missing>) -> String {
    match missing {
        Some(m) => format!(
            "not seen in {} observation(s) since {}; acted on once that is confirmed",
            m.seen, m.since
        ),
        None => String::new(),
    }
}

/// Where a snapshot of a server's disk stands, as customers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Waiting for two zones with room (the reason says why).
    Pending,
    /// The disk is being copied, or the copy brought to the second zone.
    Copying,
    /// Both copies hold the disk as of one moment: it can be restored.
    Ready,
    /// The disk could not be copied (the reason says why).
    Failed,
}

impl SnapshotState {
    /// The name the REST API uses.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Copying => "copying",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// Where the snapshot `spec` describes stands, and why when it is not
/// ready. Ready means both copies are made and agree: only then is it
/// restored from. A snapshot held by the account's standing keeps the state
/// its copies have.
pub fn snapshot_state(
    spec: &StorageSubscriptionSpec,
    status: Option<&StorageSubscriptionStatus>,
) -> (SnapshotState, Option<String>) {
    let Some(status) = status else {
        return (SnapshotState::Pending, None);
    };
    if let Some(failed) = &status.capture_failed {
        return (SnapshotState::Failed, Some(failed.clone()));
    }
    if status.replicas.len() != REPLICAS {
        return (SnapshotState::Pending, status.reason.clone());
    }
    if spec.content.is_some() && status.replicas_in_sync {
        return (SnapshotState::Ready, None);
    }
    (SnapshotState::Copying, status.reason.clone())
}

/// Whether a server placed on `hypervisor` can have its disk copied from
/// the snapshot `spec`/`status` describe, as things stand: its disk
/// copied, the snapshot not terminated, its primary copy whole and on
/// that hypervisor. A server ordered from a snapshot that is then deleted
/// is still made from it only so, and the snapshot's wipe waits for it; a
/// server that could not be made now (unplaced, elsewhere, the primary to
/// be repaired, which a snapshot being deleted never is) would hold the
/// wipe for good, so it is not made from it at all.
pub fn disk_copyable_for(
    hypervisor: Option<&crate::ids::HypervisorName>,
    spec: &StorageSubscriptionSpec,
    status: Option<&StorageSubscriptionStatus>,
) -> bool {
    let (Some(content), Some(primary)) = (
        spec.content.as_ref(),
        status.and_then(|s| s.replicas.first()),
    ) else {
        return false;
    };
    spec.termination.is_none()
        && hypervisor == Some(&primary.hypervisor)
        && primary.version == content.version
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
    /// Copy `index` was lost whole: made again from the other copy, which
    /// holds the current content, and reported.
    RebuildCopy {
        index: usize,
    },
    /// Wipe and delete copy `index`.
    DestroyCopy {
        index: usize,
    },
    /// Copy `version` from the primary to the secondary, checking its
    /// SHA-256 on the way.
    Replicate {
        version: u64,
    },
    /// Wipe and delete `version` of copy `index`: superseded, beyond what
    /// the secondary keeps, or left by an upload that never completed.
    DeleteVersion {
        index: usize,
        version: u64,
    },
    /// A kept version whose loss was confirmed shows on the secondary
    /// again: its SHA-256 is read; the recorded one keeps it again (a
    /// restore point back), any other deletes it.
    RecoverVersion {
        version: u64,
    },
    /// Rebuild `version` (the content a restore recorded) on the primary
    /// from the verified version `from` the secondary keeps.
    Restore {
        from: u64,
        version: u64,
    },
    /// Read both copies back and check them against the recorded
    /// checksums (R26); a copy that no longer matches is repaired from the
    /// other and reported.
    Verify,
    /// The server `attachedTo` names is gone: the subscription is detached.
    ForgetAttachment,
    /// The primary copy was a server's disk and no server holds it any
    /// more: its content is copied into `version` on the primary, measured,
    /// and recorded as the subscription's content, then replicated.
    Settle {
        version: u64,
    },
    /// The primary copy is a server's disk and its last copy to the
    /// secondary is `storage.replicationInterval` old: it is copied into
    /// `version` with its guest paused, relayed to the secondary as a kept
    /// version (checked on the way), and deleted from the primary.
    Snapshot {
        version: u64,
    },
    /// A snapshot's content: the system disk of its server, copied by the
    /// server's hypervisor (the primary copy's) into `version` of the
    /// primary as of one moment (a backup job while the guest runs on, or
    /// the guest paused where libvirt has none), measured, and recorded as
    /// the content; the secondary is then brought to it.
    Capture {
        version: u64,
    },
    /// Nothing is left on any hypervisor: give back the quota, let it go.
    RemoveFinalizer,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageDecision {
    pub next: Option<StorageAction>,
    pub status: StorageSubscriptionStatus,
    /// With nothing to do now: when the next verification is due.
    pub recheck_in: Option<jiff::SignedDuration>,
    /// Losses confirmed by this observation (a kept version gone for
    /// good), to report.
    pub lost: Vec<String>,
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
    // Work under way is said by the controller while it does it; a new
    // observation starts from none (work a crash cut short is not left
    // holding attaches back).
    status.busy = None;
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
    let decide = |next, status| StorageDecision {
        next,
        status,
        recheck_in: None,
        lost: Vec::new(),
    };

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
        if !facts.servers.holding.is_empty() {
            // Never wiped under a running guest: its server lets go first.
            status.reason = Some(format!(
                "waiting for server {} to detach the primary copy before it is wiped",
                facts.servers.holding.join(", ")
            ));
            return decide(None, status);
        }
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
        if let Some(of) = &facts.spec.snapshot_of
            && facts.spec.content.is_none()
            && (status.capture_failed.is_some() || facts.servers.snapshot_source.is_none())
        {
            // Nothing to copy any more: no copy is placed for it.
            capture_failed(&mut status, of, None, now);
            return decide(None, status);
        }
        // Never one copy alone: both are placed together or not at all.
        status.phase = StoragePhase::Pending;
        return decide(Some(StorageAction::Schedule), status);
    }

    let mut problems = Vec::new();
    let mut lost = Vec::new();
    let mut next = None;
    for index in 0..status.replicas.len() {
        let replica = status.replicas[index].clone();
        let other = 1 - index;
        match observed.get(index) {
            Some(CopyObservation::Present { versions, .. }) => {
                if index == 1 {
                    let listed: Vec<u64> = versions.iter().map(|v| v.version).collect();
                    watch_kept(&mut status, &listed, facts.versions_kept, now, &mut lost);
                }
                let wanted = facts.spec.encryption.usable_bytes(facts.spec.size_gib);
                // A secondary behind the content is brought to it anyway,
                // and a primary that holds a newer content takes it (its
                // upload wrote it there): the version it had is no loss.
                let newer = facts
                    .spec
                    .content
                    .as_ref()
                    .filter(|c| replica.version < c.version);
                let lagging = match newer {
                    Some(_) if index == 1 => true,
                    Some(content) => versions.iter().any(|v| v.version == content.version),
                    None => false,
                };
                match versions.iter().find(|v| v.version == replica.version) {
                    None if lagging => status.replicas[index].missing = None,
                    None if !not_seen(&mut status.replicas[index].missing, now) => {
                        problems.push(format!(
                            "the copy on {} does not show its version {}: {}",
                            replica.hypervisor,
                            replica.version,
                            unconfirmed(status.replicas[index].missing.as_ref())
                        ));
                    }
                    None if index == 1 && secondary_refillable(&facts, observed) => {
                        // The primary holds the current content: the
                        // secondary is brought to it again, as after its
                        // creation; the versions it keeps stay.
                        let secondary = &mut status.replicas[1];
                        secondary.version = 0;
                        secondary.bytes = 0;
                        secondary.checksum = None;
                        secondary.verified_at = None;
                        secondary.missing = None;
                    }
                    None if index == 0
                        && facts.spec.content.is_some()
                        && rebuildable(&facts, observed, 0) =>
                    {
                        problems.push(format!(
                            "the copy on {} lost its version {}; it is being rebuilt from the copy on {}",
                            replica.hypervisor, replica.version, status.replicas[other].hypervisor
                        ));
                        next = next.or(Some(StorageAction::RebuildCopy { index }));
                    }
                    None => problems.push(format!(
                        "the copy on {} lacks its version {}",
                        replica.hypervisor, replica.version
                    )),
                    Some(current) => {
                        status.replicas[index].missing = None;
                        if current.capacity_bytes < wanted {
                            problems.push(format!(
                                "the copy on {} holds {} bytes, less than {wanted}",
                                replica.hypervisor, current.capacity_bytes
                            ));
                        }
                    }
                }
            }
            Some(CopyObservation::Absent) if !replica.created => {
                next = next.or(Some(StorageAction::EnsureCopy {
                    index,
                    create: true,
                }));
            }
            Some(CopyObservation::Absent) => {
                if !not_seen(&mut status.replicas[index].missing, now) {
                    problems.push(format!(
                        "the copy on {} is not seen: {}",
                        replica.hypervisor,
                        unconfirmed(status.replicas[index].missing.as_ref())
                    ));
                    continue;
                }
                match rebuildable(&facts, observed, index) {
                    true => {
                        problems.push(format!(
                            "the copy on {} was lost; it is being rebuilt from the copy on {}",
                            replica.hypervisor, status.replicas[other].hypervisor
                        ));
                        next = next.or(Some(StorageAction::RebuildCopy { index }));
                    }
                    false => problems.push(format!(
                        "the copy on {} is missing; it is not recreated empty",
                        replica.hypervisor
                    )),
                }
            }
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
    let mut replicating = None;
    // A snapshot whose disk is not copied yet: never in sync, never
    // verified.
    let mut capturing = false;
    let mut snapshot_recheck = None;
    let locked = key_missing(&status, observed);
    status.key_loaded = primary_key(&status, observed) == Some(true);
    let attached = attachment(&facts, &mut status, locked, now);
    if both_exist && problems.is_empty() && next.is_none() {
        if let Some(written) = &attached.written_by_guest {
            // The guest may have written to the primary: the secondary
            // holds the content as it was before, until it is settled, and
            // a copy taken on schedule.
            replicating = Some(written.clone());
            next = attached.next;
            let snapshot = snapshot_due(&facts, &status, now);
            if next.is_none() {
                // What a snapshot that failed midway left behind goes
                // first: never the in-flight one (its agent job may still
                // finish), never a copy's current or kept version.
                let in_flight = snapshot.as_ref().ok().copied();
                next = orphan(&status, observed, in_flight, now);
            }
            if next.is_none() {
                match snapshot {
                    Ok(version) => next = Some(StorageAction::Snapshot { version }),
                    Err(wait) => snapshot_recheck = wait,
                }
            }
        } else if let Some(of) = facts.spec.snapshot_of.as_ref()
            && facts.spec.content.is_none()
        {
            capturing = true;
            let host = &status.replicas[0].hypervisor;
            match &facts.servers.snapshot_source {
                _ if status.capture_failed.is_some() => {}
                Some(source) if source == host => {
                    next = Some(StorageAction::Capture {
                        version: of.version,
                    });
                    replicating = Some(format!(
                        "the disk of server {} is being copied on {host}",
                        of.server
                    ));
                }
                source => {
                    let source = source.clone();
                    capture_failed(&mut status, of, source.as_ref(), now);
                }
            }
        } else {
            let (step, lag) = content_step(&facts, &mut status, observed, now, &mut problems);
            next = step;
            replicating = lag;
        }
    } else if attached.next == Some(StorageAction::ForgetAttachment) {
        next = next.or(attached.next);
    }
    if let Some(lost) = &status.unrecoverable {
        problems.push(lost.clone());
    }
    let in_sync = both_exist && problems.is_empty() && replicating.is_none() && !capturing;
    let problems_free = in_sync;
    status.replicas_in_sync = in_sync;
    let (phase, reason) = match (next, problems.is_empty()) {
        (_, false) if both_exist => (StoragePhase::Degraded, Some(problems.join("; "))),
        (_, false) => (StoragePhase::Provisioning, Some(problems.join("; "))),
        _ if attached.written_by_guest.is_some() => (StoragePhase::Ready, replicating.clone()),
        _ if status.capture_failed.is_some() => {
            (StoragePhase::Error, status.capture_failed.clone())
        }
        _ if capturing => (StoragePhase::Provisioning, replicating.clone()),
        _ if replicating.is_some() => (StoragePhase::Degraded, replicating.clone()),
        (Some(_), true) if !both_exist => (StoragePhase::Provisioning, None),
        _ => (StoragePhase::Ready, None),
    };
    // A luks subscription is ready once formatted with its customer's key.
    let (phase, reason) = match (phase, &reason) {
        (StoragePhase::Ready, None)
            if facts.spec.encryption == StorageEncryption::Luks && facts.spec.content.is_none() =>
        {
            (
                StoragePhase::Provisioning,
                Some("the primary copy is being formatted with the key given at order (lost at a restart of the control plane: give it again with an attach)".to_owned()),
            )
        }
        _ => (phase, reason),
    };
    // Held by the account's standing: said first, whatever else is true;
    // the copies are still kept in sync, verified and repaired meanwhile.
    let (phase, reason) = match facts.spec.held() {
        Some(held) => (
            StoragePhase::Suspended,
            Some(match reason {
                Some(also) => format!("{held}; {also}"),
                None => held,
            }),
        ),
        None => (phase, reason),
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
        if in_sync && status.last_repair.is_some() {
            Reason::Repaired
        } else if in_sync {
            Reason::CopiesAgree
        } else if attached.written_by_guest.is_some() {
            Reason::DiskAttached
        } else if replicating.is_some() {
            Reason::Replicating
        } else if both_exist {
            Reason::CopyUnavailable
        } else {
            Reason::Provisioning
        },
        if in_sync {
            status
                .last_repair
                .clone()
                .unwrap_or_else(|| "both copies exist and hold the same bytes".to_owned())
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
    // Due for verification: on schedule, or when an operator asked.
    let mut recheck_in = None;
    if next.is_none()
        && matches!(phase, StoragePhase::Ready | StoragePhase::Suspended)
        && problems_free
        && facts.spec.content.is_some()
        && attached.written_by_guest.is_none()
    {
        match verification_due(&facts, &status, now) {
            Ok(()) => next = Some(StorageAction::Verify),
            Err(wait) => recheck_in = Some(wait),
        }
    }
    StorageDecision {
        next,
        status,
        recheck_in: recheck_in.or(snapshot_recheck),
        lost,
    }
}

/// Records that a snapshot's disk cannot be copied (its server is gone, or
/// on another hypervisor than the primary copy), once, with the reason.
fn capture_failed(
    status: &mut StorageSubscriptionStatus,
    of: &crate::resources::SnapshotOf,
    source: Option<&crate::ids::HypervisorName>,
    now: Timestamp,
) {
    let why = status.capture_failed.get_or_insert_with(|| match source {
        Some(source) => format!(
            "server {} is on {source}, not on the hypervisor of the snapshot's primary copy: its disk was not copied",
            of.server
        ),
        None => format!(
            "server {} was deleted before its disk was copied",
            of.server
        ),
    });
    let why = why.clone();
    status.phase = StoragePhase::Error;
    status.reason = Some(why.clone());
    conditions::set(
        &mut status.conditions,
        ConditionType::Ready,
        false,
        Reason::CaptureFailed,
        why,
        now,
    );
}

/// Whether copy `index`'s agent says it is writing `version` now.
fn being_written(observed: &[CopyObservation], index: usize, version: u64) -> bool {
    match observed.get(index) {
        Some(CopyObservation::Present { versions, .. }) => {
            versions.iter().any(|v| v.version == version && v.writing)
        }
        _ => false,
    }
}

/// A version on either copy that nobody needs while the primary is a
/// disk: not the copy's current one, not one the secondary keeps, not the
/// snapshot in flight, and older than an upload may take.
fn orphan(
    status: &StorageSubscriptionStatus,
    observed: &[CopyObservation],
    in_flight: Option<u64>,
    now: Timestamp,
) -> Option<StorageAction> {
    let old_before = now
        .checked_sub(UNFINISHED_UPLOAD)
        .map_or(0, |t| u64::try_from(t.as_millisecond()).unwrap_or(0));
    for (index, replica) in status.replicas.iter().enumerate() {
        let Some(CopyObservation::Present { versions, .. }) = observed.get(index) else {
            continue;
        };
        for listed in versions {
            let version = listed.version;
            // Only the secondary keeps versions, and loses them.
            match lost_and_found(&replica.lost, version, now).filter(|_| index == 1) {
                Some(true) => return Some(StorageAction::RecoverVersion { version }),
                Some(false) => continue,
                None => {}
            }
            let needed = version == replica.version
                || replica.kept.iter().any(|k| k.version == version)
                || Some(version) == in_flight
                || version >= old_before
                || listed.writing;
            if !needed {
                return Some(StorageAction::DeleteVersion { index, version });
            }
        }
    }
    None
}

/// `Ok(version)` when the primary, a disk of its server, is due to be
/// copied to the secondary (`storage.replicationInterval` after the last
/// copy, or after it became the disk); else how long until it is, if it is
/// a disk at all. The version is the due time's (or above every version the
/// subscription has): the same for every attempt at one snapshot, so the
/// agent's copy job is joined by a retry, never started again under
/// another number with the guest paused again.
fn snapshot_due(
    facts: &StorageFacts<'_>,
    status: &StorageSubscriptionStatus,
    now: Timestamp,
) -> Result<u64, Option<jiff::SignedDuration>> {
    let attached = conditions::get(&status.conditions, ConditionType::Attached)
        .filter(|c| c.status == conditions::ConditionStatus::True);
    let Some(attached) = attached else {
        return Err(None);
    };
    let since = status
        .last_snapshot_at
        .as_deref()
        .unwrap_or(&attached.last_transition_time);
    let Ok(since) = since.parse::<Timestamp>() else {
        return Err(None);
    };
    // A skipped copy counts as one: the next is an interval later, so a
    // guest is not paused in vain again and again.
    let since = status
        .snapshot_skipped
        .as_ref()
        .and_then(|skipped| skipped.at.parse::<Timestamp>().ok())
        .map_or(since, |skipped| skipped.max(since));
    let due = facts.replication_interval.after(since);
    if due > now {
        return Err(Some(now.duration_until(due)));
    }
    Ok(new_version(facts, status, due))
}

/// The number of a version made now: its time in Unix milliseconds, above
/// every version the subscription has or keeps.
fn new_version(
    facts: &StorageFacts<'_>,
    status: &StorageSubscriptionStatus,
    now: Timestamp,
) -> u64 {
    let after = status
        .replicas
        .iter()
        .map(|r| r.version)
        .chain(facts.spec.content.as_ref().map(|c| c.version))
        .chain(
            status
                .replicas
                .iter()
                .flat_map(|r| r.kept.iter().map(|k| k.version)),
        )
        .max()
        .unwrap_or(0);
    u64::try_from(now.as_millisecond())
        .unwrap_or(0)
        .max(after + 1)
}

/// Whether copy `lost` (absent, after it existed) can be made again from
/// the other one: that one answers with the current content (the
/// primary's version), and no guest may have written the primary since.
/// A rebuilt secondary holds the current content only: the versions the
/// lost one kept are gone (the report says so).
fn rebuildable(facts: &StorageFacts<'_>, observed: &[CopyObservation], lost: usize) -> bool {
    let status = facts.status;
    // A volume a domain uses is never written (nor is one the guest may
    // have written since).
    if facts.spec.written_by_guest.is_some()
        || !facts.servers.holding.is_empty()
        || status.replicas.len() != REPLICAS
    {
        return false;
    }
    // The current content is the primary's version; the secondary may
    // only rebuild the primary once it holds that version too, and only
    // as the recorded content (a primary with none is made again empty,
    // when it was lost whole).
    let current = status.replicas[0].version;
    let survivor = 1 - lost;
    let recorded = facts.spec.content.as_ref().map(|c| c.version);
    if lost == 0 && recorded != Some(current) && (recorded.is_some() || current != 0) {
        return false;
    }
    if survivor == 1 && status.replicas[1].version != current {
        return false;
    }
    match observed.get(survivor) {
        Some(CopyObservation::Present { versions, .. }) => {
            versions.iter().any(|v| v.version == current)
        }
        _ => false,
    }
}

/// Whether the secondary, present but without its current version, can
/// be brought to the content again from the primary: it could be rebuilt
/// from it, and the primary's version is the recorded content's.
fn secondary_refillable(facts: &StorageFacts<'_>, observed: &[CopyObservation]) -> bool {
    let primary = facts.status.replicas.first().map(|r| r.version);
    rebuildable(facts, observed, 1)
        && facts
            .spec
            .content
            .as_ref()
            .is_some_and(|c| Some(c.version) == primary)
}

/// What attaching the primary copy to a server asks for now.
struct Attachment {
    /// Why the secondary may differ: the primary is, or was, a disk.
    written_by_guest: Option<String>,
    next: Option<StorageAction>,
}

/// Sets the `Attached` condition, and says what attachment asks for: the
/// subscription is detached from a server that is gone, and a primary
/// copy no server holds any more is settled into a new version.
fn attachment(
    facts: &StorageFacts<'_>,
    status: &mut StorageSubscriptionStatus,
    locked: bool,
    now: Timestamp,
) -> Attachment {
    let spec = facts.spec;
    let holding = &facts.servers.holding;
    let (attached, reason, message) = match &spec.attached_to {
        Some(server) if !facts.servers.attached_server_exists => (
            false,
            Reason::ServerGone,
            format!("server {server} does not exist any more"),
        ),
        Some(server) if holding.contains(server) => (
            true,
            Reason::DiskAttached,
            format!("the primary copy is a disk of server {server}"),
        ),
        Some(server) if locked => (
            false,
            Reason::KeyRequired,
            format!(
                "the LUKS disk waits for its key: give it with an attach to server {server} (its key is unloaded whenever the server stops, its hypervisor restarts or a suspension holds it)"
            ),
        ),
        Some(server) => (
            false,
            Reason::Attaching,
            format!("the primary copy is being attached to server {server}"),
        ),
        None if !holding.is_empty() => (
            false,
            Reason::Attaching,
            format!(
                "the primary copy is being detached from server {}",
                holding.join(", ")
            ),
        ),
        None => (false, Reason::NotAttached, String::new()),
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::Attached,
        attached,
        reason,
        message,
        now,
    );
    let next = if spec.attached_to.is_some() && !facts.servers.attached_server_exists {
        Some(StorageAction::ForgetAttachment)
    } else if spec.attached_to.is_none() && holding.is_empty() && spec.written_by_guest.is_some() {
        // Numbered by when it was let go: every attempt at one settle has
        // the same version, so a retry joins the agent's copy job.
        let let_go = conditions::get(&status.conditions, ConditionType::Attached)
            .and_then(|c| c.last_transition_time.parse::<Timestamp>().ok())
            .unwrap_or(now);
        Some(StorageAction::Settle {
            version: new_version(facts, status, let_go),
        })
    } else {
        None
    };
    let written_by_guest = spec.written_by_guest.as_ref().map(|server| {
        if spec.attached_to.is_some() || !holding.is_empty() {
            let held = match &status.last_snapshot_at {
                Some(at) => format!(
                    "the primary copy is a disk of server {server}: the secondary holds a crash-consistent copy of it as of {at}, taken every {}, until it is detached",
                    facts.replication_interval
                ),
                None => format!(
                    "the primary copy is a disk of server {server}: the secondary holds the content from before it was attached, and a crash-consistent copy every {} it stays attached",
                    facts.replication_interval
                ),
            };
            match &status.snapshot_skipped {
                Some(skipped) => format!(
                    "{held}; the scheduled copy of {} was skipped: {}",
                    skipped.at, skipped.reason
                ),
                None => held,
            }
        } else {
            format!(
                "the primary copy was a disk of server {server}: its content is being copied into a new version, then to the secondary"
            )
        }
    });
    Attachment {
        written_by_guest,
        next,
    }
}

/// `Ok` when a verification is due; else how long until it is.
fn verification_due(
    facts: &StorageFacts<'_>,
    status: &StorageSubscriptionStatus,
    now: Timestamp,
) -> Result<(), jiff::SignedDuration> {
    if facts.spec.verify_requests > status.verifications_done {
        return Ok(());
    }
    let oldest = status
        .replicas
        .iter()
        .map(|r| {
            r.verified_at
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
        })
        .min()
        .flatten();
    let Some(oldest) = oldest else {
        return Ok(());
    };
    let due = facts.verify_interval.after(oldest);
    if due <= now {
        Ok(())
    } else {
        Err(now.duration_until(due))
    }
}

/// With both copies there and answering: the primary takes the recorded
/// content as current (its upload wrote it there), the secondary is
/// brought to it, and versions nobody needs are deleted. Answers the step
/// and, while the secondary lags, why the copies differ.
fn content_step(
    facts: &StorageFacts<'_>,
    status: &mut StorageSubscriptionStatus,
    observed: &[CopyObservation],
    now: Timestamp,
    problems: &mut Vec<String>,
) -> (Option<StorageAction>, Option<String>) {
    let versions_of = |index: usize| -> Vec<u64> {
        match observed.get(index) {
            Some(CopyObservation::Present { versions, .. }) => {
                versions.iter().map(|v| v.version).collect()
            }
            _ => Vec::new(),
        }
    };
    let wanted = facts.spec.content.as_ref();
    let wanted_version = wanted.map_or(0, |c| c.version);
    // The primary: its upload wrote the recorded content there.
    if let Some(content) = wanted
        && status.replicas[0].version < content.version
    {
        if versions_of(0).contains(&content.version) {
            let primary = &mut status.replicas[0];
            primary.version = content.version;
            primary.volume = crate::agent_api::storage_volume_name(
                &volume_base(&primary.volume),
                content.version,
            );
            primary.checksum = Some(content.sha256.clone());
            primary.bytes = content.bytes;
            primary.verified_at = Some(now.to_string());
            primary.path = None;
            // A new content replaces one both copies had lost, and what
            // was repaired of the last.
            status.unrecoverable = None;
            status.last_repair = None;
        } else if let Some(from) = facts.spec.restore_from
            && versions_of(1).contains(&from)
        {
            return (
                Some(StorageAction::Restore {
                    from,
                    version: content.version,
                }),
                Some(format!(
                    "the primary copy on {} is being rebuilt from version {from} of the secondary",
                    status.replicas[0].hypervisor
                )),
            );
        } else {
            problems.push(format!(
                "the primary copy on {} lacks the content's version {}",
                status.replicas[0].hypervisor, content.version
            ));
            return (None, None);
        }
    }
    let lag = (status.replicas[1].version < wanted_version).then(|| {
        format!(
            "the secondary copy on {} is being brought to version {wanted_version}",
            status.replicas[1].hypervisor
        )
    });
    if lag.is_some() {
        return (
            Some(StorageAction::Replicate {
                version: wanted_version,
            }),
            lag,
        );
    }
    // What each copy may keep: the primary its current version; the
    // secondary its current one and the newest verified earlier ones.
    let unfinished_before = now
        .checked_sub(UNFINISHED_UPLOAD)
        .map_or(0, |t| u64::try_from(t.as_millisecond()).unwrap_or(0));
    let keep_secondary = facts.versions_kept.max(1) as usize - 1;
    let excess = status.replicas[1].kept.len().saturating_sub(keep_secondary);
    let pruned: Vec<u64> = status.replicas[1]
        .kept
        .iter()
        .take(excess)
        .map(|k| k.version)
        .collect();
    for (index, replica) in status.replicas.iter().enumerate() {
        for version in versions_of(index) {
            // Only the secondary keeps versions, and loses them.
            match lost_and_found(&replica.lost, version, now).filter(|_| index == 1) {
                Some(true) => return (Some(StorageAction::RecoverVersion { version }), None),
                Some(false) => continue,
                None => {}
            }
            let kept = version == replica.version
                || (replica.kept.iter().any(|k| k.version == version)
                    && !pruned.contains(&version));
            // Above the recorded content: an upload, unless it is old and
            // its agent writes it no more.
            let uploading = version > wanted_version
                && (version >= unfinished_before || being_written(observed, index, version));
            if !kept && !uploading {
                return (Some(StorageAction::DeleteVersion { index, version }), None);
            }
        }
    }
    // Kept versions deleted as pruned are forgotten (one merely not shown
    // is forgotten only once its loss is confirmed: `watch_kept`).
    let present = versions_of(1);
    status.replicas[1]
        .kept
        .retain(|k| present.contains(&k.version) || !pruned.contains(&k.version));
    (None, None)
}

/// Every observation of the secondary that lists its versions: a kept
/// version it shows is no longer missing; one it does not show is counted,
/// and forgotten once its loss is confirmed (said in `lost`). Versions
/// beyond what is kept are pruned by stratus itself: no loss.
fn watch_kept(
    status: &mut StorageSubscriptionStatus,
    listed: &[u64],
    versions_kept: u32,
    now: Timestamp,
    lost: &mut Vec<String>,
) {
    let Some(secondary) = status.replicas.get_mut(1) else {
        return;
    };
    let keep = versions_kept.max(1) as usize - 1;
    let excess = secondary.kept.len().saturating_sub(keep);
    let pruned: Vec<u64> = secondary
        .kept
        .iter()
        .take(excess)
        .map(|k| k.version)
        .collect();
    let hypervisor = secondary.hypervisor.clone();
    let mut gone = Vec::new();
    for kept in &mut secondary.kept {
        if listed.contains(&kept.version) {
            kept.missing = None;
        } else if !pruned.contains(&kept.version) && not_seen(&mut kept.missing, now) {
            gone.push(kept.version);
            lost.push(format!(
                "the kept version {} is gone from the copy on {hypervisor} ({}): that restore point is lost",
                kept.version,
                unconfirmed(kept.missing.as_ref())
            ));
        }
    }
    let (lost_now, kept): (Vec<KeptVersion>, Vec<KeptVersion>) =
        std::mem::take(&mut secondary.kept)
            .into_iter()
            .partition(|k| gone.contains(&k.version));
    secondary.kept = kept;
    // Remembered, should the volumes come back (a late mount).
    secondary.remember_lost(lost_now, versions_kept);
}

/// What to do with `version`, listed on a copy that lost it once: read it
/// (`Some(true)`), leave it for now (`Some(false)`: its last reading failed
/// lately), or nothing to say (`None`: it was never lost).
fn lost_and_found(lost: &[KeptVersion], version: u64, now: Timestamp) -> Option<bool> {
    let record = lost.iter().find(|l| l.version == version)?;
    Some(
        record
            .recover_after
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_none_or(|after| after <= now),
    )
}

/// The managed name a copy's volume name starts with.
fn volume_base(volume: &str) -> String {
    volume
        .rsplit_once("-store-v")
        .map_or_else(|| volume.to_owned(), |(base, _)| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::clock::test_time;
    use crate::ids::HypervisorName;
    use crate::resources::{StorageEncryption, StorageReplica};

    #[test]
    fn r18_a_disk_is_copied_from_a_snapshot_only_where_its_primary_is_whole() {
        let a1 = HypervisorName::parse("a1").unwrap();
        let b1 = HypervisorName::parse("b1").unwrap();
        let spec = StorageSubscriptionSpec {
            content: Some(crate::resources::StorageContent {
                version: 7,
                bytes: 8,
                sha256: "ab".repeat(32),
                written_at: "2026-12-07T12:00:00Z".into(),
            }),
            ..snapshot_spec()
        };
        let status = |version: u64| {
            StorageSubscriptionStatus {
            replicas: vec![
                serde_json::from_value(serde_json::json!({"hypervisor": "a1", "zone": "a", "volume": "v", "version": version, "created": true})).unwrap(),
                serde_json::from_value(serde_json::json!({"hypervisor": "b1", "zone": "b", "volume": "v", "version": 7, "created": true})).unwrap(),
            ],
            ..StorageSubscriptionStatus::default()
        }
        };
        assert!(disk_copyable_for(Some(&a1), &spec, Some(&status(7))));
        assert!(
            !disk_copyable_for(Some(&b1), &spec, Some(&status(7))),
            "the secondary is not copied from"
        );
        assert!(
            !disk_copyable_for(None, &spec, Some(&status(7))),
            "not placed"
        );
        assert!(
            !disk_copyable_for(Some(&a1), &spec, Some(&status(6))),
            "the primary is to be repaired"
        );
        assert!(!disk_copyable_for(Some(&a1), &spec, None));
        let uncopied = StorageSubscriptionSpec {
            content: None,
            ..spec.clone()
        };
        assert!(!disk_copyable_for(Some(&a1), &uncopied, Some(&status(7))));
        let terminated = StorageSubscriptionSpec {
            termination: Some(crate::resources::ServerTermination {
                cause: crate::standing::TerminationCause::Abuse,
                at: "2026-12-07T12:00:00Z".into(),
                wipe_at: "2026-12-21T12:00:00Z".into(),
                wipe: false,
            }),
            ..spec.clone()
        };
        assert!(
            !disk_copyable_for(Some(&a1), &terminated, Some(&status(7))),
            "being wiped with its server"
        );
    }

    fn spec() -> StorageSubscriptionSpec {
        StorageSubscriptionSpec {
            name: "backup".into(),
            size_gib: 10,
            zone: None,
            encryption: StorageEncryption::Client,
            content: None,
            verify_requests: 0,
            keys_given: 0,
            restore_from: None,
            snapshot_of: None,
            attached_to: None,
            written_by_guest: None,
            suspension: None,
            termination: None,
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
            bytes: 0,
            checksum: None,
            verified_at: None,
            kept: Vec::new(),
            lost: Vec::new(),
            missing: None,
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
                physical_bytes: 10 << 30,
                encrypted: false,
                unlocked: false,
                writing: false,
            }],
        }
    }

    static NO_SERVERS: ServerFacts = ServerFacts {
        attached_server_exists: false,
        holding: Vec::new(),
        snapshot_source: None,
    };

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
            versions_kept: 3,
            verify_interval: crate::policy::PolicyDuration::hours(24),
            replication_interval: crate::policy::PolicyDuration::hours(1),
            servers: &NO_SERVERS,
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

    fn snapshot_spec() -> StorageSubscriptionSpec {
        StorageSubscriptionSpec {
            snapshot_of: Some(crate::resources::SnapshotOf {
                server: "vs-1".into(),
                image: "debian-12".into(),
                instance_generation: 0,
                version: 5_000,
                backup: false,
            }),
            ..spec()
        }
    }

    fn holding(versions: &[u64]) -> CopyObservation {
        CopyObservation::Present {
            pool: "stratus-a".into(),
            versions: versions
                .iter()
                .map(|&version| crate::agent_api::VolumeVersion {
                    version,
                    volume: crate::agent_api::storage_volume_name("stratus-acc-1.st-1", version),
                    path: None,
                    capacity_bytes: 10 << 30,
                    physical_bytes: 10 << 30,
                    encrypted: false,
                    unlocked: false,
                    writing: false,
                })
                .collect(),
        }
    }

    fn on(hypervisor: &str) -> ServerFacts {
        ServerFacts {
            snapshot_source: Some(HypervisorName::parse(hypervisor).unwrap()),
            ..ServerFacts::default()
        }
    }

    #[test]
    fn r18_a_snapshot_is_copied_on_its_servers_hypervisor_then_into_the_second_zone() {
        let now = test_time();
        let mut spec = snapshot_spec();
        let server_on_a1 = on("a1");
        let status = StorageSubscriptionStatus::default();
        let mut f = facts(&spec, &status);
        f.servers = &server_on_a1;
        assert_eq!(plan(f, &[], now).next, Some(StorageAction::Schedule));
        assert_eq!(
            snapshot_state(&spec, Some(&status)).0,
            SnapshotState::Pending
        );

        let status = placed([true, true]);
        let mut f = facts(&spec, &status);
        f.servers = &server_on_a1;
        let decision = plan(f, &[present(), present()], now);
        assert_eq!(
            decision.next,
            Some(StorageAction::Capture { version: 5_000 })
        );
        assert_eq!(decision.status.phase, StoragePhase::Provisioning);
        assert!(!decision.status.replicas_in_sync);
        assert_eq!(
            snapshot_state(&spec, Some(&decision.status)).0,
            SnapshotState::Copying
        );
        // However overdue, a copy not made is never "verified".
        let mut late = decision.status.clone();
        late.verifications_done = 0;
        let mut f = facts(&spec, &late);
        f.servers = &server_on_a1;
        f.verify_interval = crate::policy::PolicyDuration::seconds(0);
        assert_ne!(
            plan(f, &[present(), present()], now).next,
            Some(StorageAction::Verify)
        );

        // Copied and recorded: the server no longer matters (it may go);
        // the secondary is brought to the copy.
        spec.content = Some(crate::resources::StorageContent {
            version: 5_000,
            bytes: 10 << 30,
            sha256: "ab".repeat(32),
            written_at: now.to_string(),
        });
        let status = decision.status;
        let decision = plan(
            facts(&spec, &status),
            &[holding(&[0, 5_000]), present()],
            now,
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::Replicate { version: 5_000 })
        );
        assert_eq!(
            snapshot_state(&spec, Some(&decision.status)).0,
            SnapshotState::Copying
        );
        let mut status = decision.status;
        let secondary = &mut status.replicas[1];
        secondary.version = 5_000;
        secondary.volume = crate::agent_api::storage_volume_name("stratus-acc-1.st-1", 5_000);
        secondary.bytes = 10 << 30;
        secondary.checksum = Some("ab".repeat(32));
        secondary.verified_at = Some(now.to_string());
        let decision = plan(
            facts(&spec, &status),
            &[holding(&[5_000]), holding(&[5_000])],
            now,
        );
        assert!(decision.status.replicas_in_sync, "{decision:?}");
        assert_eq!(
            snapshot_state(&spec, Some(&decision.status)),
            (SnapshotState::Ready, None)
        );
    }

    #[test]
    fn r18_a_snapshot_whose_server_went_or_moved_fails_once_and_is_never_copied() {
        let now = test_time();
        let spec = snapshot_spec();
        // Gone before its copies were placed: none is.
        let status = StorageSubscriptionStatus::default();
        let decision = plan(facts(&spec, &status), &[], now);
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Error);
        let (state, reason) = snapshot_state(&spec, Some(&decision.status));
        assert_eq!(state, SnapshotState::Failed);
        assert!(reason.unwrap().contains("vs-1 was deleted"));

        // On another hypervisor than the primary copy's: not copied.
        let status = placed([true, true]);
        let server_on_b1 = on("b1");
        let mut f = facts(&spec, &status);
        f.servers = &server_on_b1;
        let decision = plan(f, &[present(), present()], now);
        assert_eq!(decision.next, None);
        let failed = decision.status.capture_failed.clone().unwrap();
        assert!(failed.contains("is on b1"), "{failed}");
        // Back where it was, it stays failed: the customer asks again.
        let server_on_a1 = on("a1");
        let mut f = facts(&spec, &decision.status);
        f.servers = &server_on_a1;
        let again = plan(f, &[present(), present()], now);
        assert_eq!(again.next, None);
        assert_eq!(again.status.capture_failed, Some(failed));
        // Its copies are wiped when it is deleted.
        let mut f = facts(&spec, &again.status);
        f.deleting = true;
        assert_eq!(
            plan(f, &[present(), present()], now).next,
            Some(StorageAction::DestroyCopy { index: 0 })
        );
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

    /// `status` with copy `index` already not seen as often and as long
    /// as confirms its loss at the next observation that does not show it.
    fn missing_long_enough(
        mut status: StorageSubscriptionStatus,
        index: usize,
    ) -> StorageSubscriptionStatus {
        status.replicas[index].missing = Some(Missing {
            since: (test_time() - CONFIRM_AFTER).to_string(),
            seen: CONFIRM_OBSERVATIONS - 1,
        });
        status
    }

    #[test]
    fn r24_a_lost_or_unreachable_copy_is_degraded_never_recreated_empty() {
        let spec = spec();
        let status = placed([true, true]);
        // Lost whole, the other holding the current content: rebuilt from
        // it (and reported), never merely created empty.
        for (observed, lost) in [
            ([present(), CopyObservation::Absent], 1),
            ([CopyObservation::Absent, present()], 0),
        ] {
            let status = missing_long_enough(status.clone(), lost);
            let decision = plan(facts(&spec, &status), &observed, test_time());
            assert_eq!(
                decision.next,
                Some(StorageAction::RebuildCopy { index: lost })
            );
            assert_eq!(decision.status.phase, StoragePhase::Degraded);
            assert!(!decision.status.replicas_in_sync);
            let host = ["a1", "b1"][lost];
            assert!(
                decision
                    .status
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains(host) && r.contains("rebuilt")),
                "{:?}",
                decision.status.reason
            );
        }
        // Both lost, the survivor behind, or the primary written by a
        // guest since: nothing to rebuild from, reported missing.
        let mut behind = placed([true, true]);
        behind.replicas[0].version = 5;
        let behind = missing_long_enough(missing_long_enough(behind, 0), 1);
        let status = missing_long_enough(missing_long_enough(status, 0), 1);
        let guest_written = StorageSubscriptionSpec {
            written_by_guest: Some("vs-00000000000000a1".into()),
            ..spec.clone()
        };
        let decision = plan(
            facts(&spec, &behind),
            &[versions(&[5]), CopyObservation::Absent],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::RebuildCopy { index: 1 }),
            "a lagging secondary is rebuilt from the primary all the same"
        );
        for (spec, status, observed) in [
            (
                &spec,
                &status,
                [CopyObservation::Absent, CopyObservation::Absent],
            ),
            (&spec, &behind, [CopyObservation::Absent, versions(&[0])]),
            (
                &guest_written,
                &status,
                [CopyObservation::Absent, present()],
            ),
        ] {
            let decision = plan(facts(spec, status), &observed, test_time());
            assert_eq!(decision.next, None, "{status:?} {observed:?}");
            assert_eq!(decision.status.phase, StoragePhase::Degraded);
            assert!(
                decision
                    .status
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("missing")),
                "{:?}",
                decision.status.reason
            );
        }

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

    fn versions(present: &[u64]) -> CopyObservation {
        CopyObservation::Present {
            pool: "p".into(),
            versions: present
                .iter()
                .map(|v| crate::agent_api::VolumeVersion {
                    version: *v,
                    volume: crate::agent_api::storage_volume_name("stratus-acc-1.st-1", *v),
                    path: None,
                    capacity_bytes: 10 << 30,
                    physical_bytes: 10 << 30,
                    encrypted: false,
                    unlocked: false,
                    writing: false,
                })
                .collect(),
        }
    }

    fn written(version: u64) -> StorageSubscriptionSpec {
        StorageSubscriptionSpec {
            content: Some(crate::resources::StorageContent {
                version,
                bytes: 5,
                sha256: "ab".repeat(32),
                written_at: "2026-12-05T12:00:00Z".into(),
            }),
            ..spec()
        }
    }

    #[test]
    fn an_attached_primary_is_not_verified_and_is_settled_into_a_new_version_once_detached() {
        let v = 1_000;
        let mut status = placed([true, true]);
        for replica in &mut status.replicas {
            replica.version = v;
            replica.checksum = Some("ab".repeat(32));
            replica.verified_at = Some("2020-01-01T00:00:00Z".into());
        }
        let observed = [versions(&[v]), versions(&[v])];
        let server = "vs-00000000000000a1".to_owned();
        let decide = |attached_to: Option<&str>, exists: bool, holding: &[&str]| {
            let spec = StorageSubscriptionSpec {
                attached_to: attached_to.map(str::to_owned),
                written_by_guest: Some(server.clone()),
                ..written(v)
            };
            let servers = ServerFacts {
                attached_server_exists: exists,
                holding: holding.iter().map(|s| (*s).to_owned()).collect(),
                snapshot_source: None,
            };
            let mut f = facts(&spec, &status);
            f.servers = &servers;
            plan(f, &observed, test_time())
        };
        let attached_cond = |d: &StorageDecision| {
            d.status
                .conditions
                .iter()
                .find(|c| c.type_ == ConditionType::Attached)
                .map(|c| {
                    (
                        c.status == crate::conditions::ConditionStatus::True,
                        c.reason.clone(),
                    )
                })
                .unwrap()
        };
        // Asked for, not yet a disk: no verification (overdue since 2020)
        // of a copy the guest may write, and nothing replicated.
        let attaching = decide(Some(&server), true, &[]);
        assert_eq!(attaching.next, None, "{attaching:?}");
        assert_eq!(attached_cond(&attaching), (false, "Attaching".into()));
        assert_eq!(attaching.status.phase, StoragePhase::Ready);
        assert!(!attaching.status.replicas_in_sync);
        let attached = decide(Some(&server), true, &[&server]);
        assert_eq!(attached.next, None);
        assert_eq!(attached_cond(&attached), (true, "DiskAttached".into()));
        assert!(!attached.status.replicas_in_sync);
        // Detached by the customer, the guest has not let go: wait.
        let detaching = decide(None, true, &[&server]);
        assert_eq!(detaching.next, None);
        assert_eq!(attached_cond(&detaching), (false, "Attaching".into()));
        // Let go: the content is settled into a newer version.
        let settling = decide(None, true, &[]);
        assert!(
            matches!(settling.next, Some(StorageAction::Settle { version }) if version > v),
            "{settling:?}"
        );
        assert_eq!(attached_cond(&settling), (false, "NotAttached".into()));
        // Its server deleted: the attachment is forgotten, then settled.
        let gone = decide(Some(&server), false, &[]);
        assert_eq!(gone.next, Some(StorageAction::ForgetAttachment));
        assert_eq!(attached_cond(&gone), (false, "ServerGone".into()));
    }

    #[test]
    fn r25_a_luks_disk_is_ready_once_formatted_and_waits_for_its_key_when_unloaded() {
        let v = 1_000;
        let mut status = placed([true, true]);
        let server = "vs-00000000000000a1".to_owned();
        let luks_versions = |encrypted: bool, unlocked: bool| CopyObservation::Present {
            pool: "p".into(),
            versions: vec![crate::agent_api::VolumeVersion {
                version: v,
                volume: crate::agent_api::storage_volume_name("stratus-acc-1.st-1", v),
                path: None,
                capacity_bytes: (10 << 30) - crate::resources::LUKS_RESERVED_BYTES,
                physical_bytes: (10 << 30) - (2 << 20),
                encrypted,
                unlocked,
                writing: false,
            }],
        };
        // Both (empty) copies exist, the key has not formatted the
        // primary yet: not ready.
        let unformatted = StorageSubscriptionSpec {
            encryption: StorageEncryption::Luks,
            ..spec()
        };
        let decision = plan(
            facts(&unformatted, &status),
            &[present(), present()],
            test_time(),
        );
        assert_eq!(decision.status.phase, StoragePhase::Provisioning);
        assert!(
            decision
                .status
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("formatted with the key"),
            "{decision:?}"
        );
        // A LUKS copy holds its size less the header: not "too small".
        for replica in &mut status.replicas {
            replica.version = v;
            replica.checksum = Some("ab".repeat(32));
            replica.verified_at = Some(test_time().to_string());
        }
        let formatted = StorageSubscriptionSpec {
            encryption: StorageEncryption::Luks,
            ..written(v)
        };
        let observed = [luks_versions(true, false), luks_versions(true, false)];
        let decision = plan(facts(&formatted, &status), &observed, test_time());
        assert_eq!(decision.status.phase, StoragePhase::Ready, "{decision:?}");
        // Attached, its key not loaded (the server started again): it waits
        // for the key, and says so.
        let attached = StorageSubscriptionSpec {
            attached_to: Some(server.clone()),
            written_by_guest: Some(server.clone()),
            ..formatted.clone()
        };
        let servers = ServerFacts {
            attached_server_exists: true,
            holding: Vec::new(),
            snapshot_source: None,
        };
        let attached_reason = |observed: &[CopyObservation]| {
            let mut f = facts(&attached, &status);
            f.servers = &servers;
            let decision = plan(f, observed, test_time());
            crate::conditions::get(&decision.status.conditions, ConditionType::Attached)
                .map(|c| c.reason.clone())
                .unwrap()
        };
        assert_eq!(attached_reason(&observed), "KeyRequired");
        let unlocked = [luks_versions(true, true), luks_versions(true, false)];
        assert_eq!(attached_reason(&unlocked), "Attaching");
    }

    #[test]
    fn r26_an_attached_primary_is_copied_to_the_secondary_every_replication_interval() {
        let v = 1_000;
        let mut status = placed([true, true]);
        for replica in &mut status.replicas {
            replica.version = v;
            replica.checksum = Some("ab".repeat(32));
            replica.verified_at = Some(test_time().to_string());
        }
        let observed = [versions(&[v]), versions(&[v])];
        let server = "vs-00000000000000a1".to_owned();
        let spec = StorageSubscriptionSpec {
            attached_to: Some(server.clone()),
            written_by_guest: Some(server.clone()),
            ..written(v)
        };
        let servers = ServerFacts {
            attached_server_exists: true,
            holding: vec![server.clone()],
            snapshot_source: None,
        };
        let decide = |status: &StorageSubscriptionStatus, at: Timestamp| {
            let mut f = facts(&spec, status);
            f.servers = &servers;
            plan(f, &observed, at)
        };
        // Just plugged in: the first copy is an interval away.
        let attached = decide(&status, test_time());
        assert_eq!(attached.next, None);
        assert_eq!(
            attached.recheck_in,
            Some(jiff::SignedDuration::from_hours(1))
        );
        let status = attached.status;
        let later = test_time() + jiff::SignedDuration::from_mins(61);
        let due = decide(&status, later);
        assert!(
            matches!(due.next, Some(StorageAction::Snapshot { version }) if version > v),
            "{due:?}"
        );
        // Copied: the next one an interval after it, and the reason says
        // how old the secondary's copy is.
        let mut copied = due.status.clone();
        copied.last_snapshot_at = Some(later.to_string());
        let after = decide(&copied, later + jiff::SignedDuration::from_mins(5));
        assert_eq!(after.next, None);
        assert!(
            after
                .status
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("crash-consistent copy of it as of"),
            "{after:?}"
        );
        // Skipped (the copy would have paused the guest too long): not
        // tried again at once, the reason says so, and the next one is an
        // interval later.
        let mut skipped = due.status.clone();
        skipped.snapshot_skipped = Some(crate::resources::SkippedSnapshot {
            at: later.to_string(),
            reason: "the guest would be paused too long".into(),
        });
        let soon = decide(&skipped, later + jiff::SignedDuration::from_mins(5));
        assert_eq!(soon.next, None, "{soon:?}");
        assert!(
            soon.status
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("was skipped: the guest would be paused too long"),
            "{soon:?}"
        );
        let next = decide(&skipped, later + jiff::SignedDuration::from_mins(61));
        assert!(
            matches!(next.next, Some(StorageAction::Snapshot { .. })),
            "{next:?}"
        );
        // Not a disk (yet): nothing is copied, however long.
        let mut not_held = ServerFacts {
            attached_server_exists: true,
            holding: Vec::new(),
            snapshot_source: None,
        };
        not_held.holding.clear();
        let mut f = facts(&spec, &status);
        f.servers = &not_held;
        assert_eq!(plan(f, &observed, later).next, None);
    }

    #[test]
    fn a_subscription_being_deleted_waits_for_its_server_to_let_go() {
        let spec = spec();
        let status = placed([true, true]);
        let holding = ServerFacts {
            attached_server_exists: true,
            holding: vec!["vs-00000000000000a1".into()],
            snapshot_source: None,
        };
        let mut f = facts(&spec, &status);
        f.deleting = true;
        f.servers = &holding;
        let decision = plan(f, &[present(), present()], test_time());
        assert_eq!(decision.next, None);
        assert!(
            decision
                .status
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("detach"),
            "{decision:?}"
        );
        f.servers = &NO_SERVERS;
        assert_eq!(
            plan(f, &[present(), present()], test_time()).next,
            Some(StorageAction::DestroyCopy { index: 0 })
        );
    }

    #[test]
    fn r26_a_new_content_is_taken_by_the_primary_then_replicated_then_old_versions_go() {
        let v = 1_000;
        let spec = written(v);
        let status = placed([true, true]);
        // The primary holds the upload: it becomes current, the secondary lags.
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[0, v]), versions(&[0])],
            test_time(),
        );
        assert_eq!(decision.next, Some(StorageAction::Replicate { version: v }));
        assert_eq!(decision.status.replicas[0].version, v);
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
        assert!(
            !decision.status.replicas_in_sync,
            "not in sync while one copy lags"
        );
        // Replicated: the superseded versions are deleted, primary first.
        let mut status = decision.status;
        status.replicas[1].version = v;
        status.replicas[1].checksum = Some("ab".repeat(32));
        status.replicas[1].verified_at = Some(test_time().to_string());
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[0, v]), versions(&[0, v])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::DeleteVersion {
                index: 0,
                version: 0
            })
        );
        let decision = plan(
            facts(&spec, &decision.status),
            &[versions(&[v]), versions(&[0, v])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::DeleteVersion {
                index: 1,
                version: 0
            })
        );
        let decision = plan(
            facts(&spec, &decision.status),
            &[versions(&[v]), versions(&[v])],
            test_time(),
        );
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Ready);
        assert!(decision.status.replicas_in_sync);
        assert_eq!(
            decision.recheck_in,
            Some(jiff::SignedDuration::from_hours(24)),
            "verified a day later"
        );
    }

    #[test]
    fn a_restore_rebuilds_the_primary_from_the_secondarys_version_then_replicates() {
        let mut spec = written(2_000);
        spec.restore_from = Some(1_000);
        let mut status = placed([true, true]);
        status.replicas[0].version = 1_500;
        status.replicas[1].version = 1_500;
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[1_500]), versions(&[1_000, 1_500])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::Restore {
                from: 1_000,
                version: 2_000
            })
        );
        assert!(!decision.status.replicas_in_sync);
        // Rebuilt: the secondary is brought to it like to any new content.
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[1_500, 2_000]), versions(&[1_000, 1_500])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::Replicate { version: 2_000 })
        );
        // A version the secondary does not have cannot be restored from.
        spec.restore_from = Some(999);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[1_500]), versions(&[1_000, 1_500])],
            test_time(),
        );
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
    }

    #[test]
    fn r27_a_primary_without_its_recorded_content_is_degraded() {
        let spec = written(1_000);
        let status = placed([true, true]);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[0]), versions(&[0])],
            test_time(),
        );
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
        assert!(
            decision
                .status
                .reason
                .unwrap()
                .contains("lacks the content's version 1000")
        );
    }

    #[test]
    fn r26_verification_is_due_on_schedule_or_when_asked() {
        let v = 1_000;
        let mut spec = written(v);
        let mut status = placed([true, true]);
        for replica in &mut status.replicas {
            replica.version = v;
            replica.verified_at = Some(test_time().to_string());
        }
        let both = [versions(&[v]), versions(&[v])];
        let later = |hours| test_time() + jiff::SignedDuration::from_hours(hours);
        let decision = plan(facts(&spec, &status), &both, later(23));
        assert_eq!(decision.next, None);
        assert_eq!(
            decision.recheck_in,
            Some(jiff::SignedDuration::from_hours(1))
        );
        assert_eq!(
            plan(facts(&spec, &status), &both, later(24)).next,
            Some(StorageAction::Verify)
        );
        spec.verify_requests = 1;
        assert_eq!(
            plan(facts(&spec, &status), &both, later(1)).next,
            Some(StorageAction::Verify)
        );
        status.verifications_done = 1;
        assert_eq!(plan(facts(&spec, &status), &both, later(1)).next, None);
        // Lost on both copies: reported, never verified in a loop, never in sync.
        status.unrecoverable = Some("both copies of version 1000 differ".into());
        let decision = plan(facts(&spec, &status), &both, later(48));
        assert_eq!(decision.next, None);
        assert_eq!(decision.status.phase, StoragePhase::Degraded);
        assert!(!decision.status.replicas_in_sync);
    }

    /// Both copies hold content version 100; the secondary keeps 90 and 80.
    fn in_sync_with_kept() -> (StorageSubscriptionSpec, StorageSubscriptionStatus) {
        let spec = written(100);
        let mut status = placed([true, true]);
        for replica in &mut status.replicas {
            replica.version = 100;
            replica.bytes = 5;
            replica.checksum = Some("ab".repeat(32));
            replica.verified_at = Some(test_time().to_string());
        }
        status.replicas[1].kept = [80, 90]
            .into_iter()
            .map(|version| crate::resources::KeptVersion {
                version,
                bytes: 5,
                sha256: "cd".repeat(32),
                verified_at: test_time().to_string(),
                missing: None,
                recover_after: None,
            })
            .collect();
        (spec, status)
    }

    /// R26 (defect 6 of issue 25): one empty listing of the secondary (its
    /// pool's file system mounted late) neither rebuilds it nor forgets a
    /// restore point; when the volumes show again, nothing was lost.
    #[test]
    fn r26_an_absent_observation_never_loses_a_kept_version() {
        use crate::resources::LOST_VERSIONS_REMEMBERED;
        let (spec, mut status) = in_sync_with_kept();
        let mut now = test_time();
        for observed in [
            [versions(&[100]), versions(&[])],
            [versions(&[100]), CopyObservation::Absent],
            [versions(&[100]), versions(&[100])],
        ] {
            let decision = plan(facts(&spec, &status), &observed, now);
            assert!(
                !matches!(
                    decision.next,
                    Some(StorageAction::RebuildCopy { .. } | StorageAction::DeleteVersion { .. })
                ),
                "{:?} on {observed:?}",
                decision.next
            );
            assert!(decision.lost.is_empty());
            let kept: Vec<u64> = decision.status.replicas[1]
                .kept
                .iter()
                .map(|k| k.version)
                .collect();
            assert_eq!(kept, [80, 90], "{observed:?}");
            status = decision.status;
            now += jiff::SignedDuration::from_secs(30);
        }
        // Shown again, whole.
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[100]), versions(&[80, 90, 100])],
            now,
        );
        assert!(decision.status.replicas.iter().all(|r| r.missing.is_none()));
        assert!(
            decision.status.replicas[1]
                .kept
                .iter()
                .all(|k| k.missing.is_none())
        );
        assert_eq!(decision.status.replicas[1].kept.len(), 2);
        // A kept version gone for good is forgotten once that is confirmed,
        // and said.
        let mut status = decision.status;
        let mut said = Vec::new();
        for _ in 0..CONFIRM_OBSERVATIONS + 1 {
            now += CONFIRM_AFTER;
            let decision = plan(
                facts(&spec, &status),
                &[versions(&[100]), versions(&[90, 100])],
                now,
            );
            said.extend(decision.lost);
            status = decision.status;
        }
        let kept: Vec<u64> = status.replicas[1].kept.iter().map(|k| k.version).collect();
        assert_eq!(kept, [90]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("kept version 80"), "{said:?}");
        // Remembered: should it show up again much later (a storage
        // mounted after the loss was confirmed), it is read, not deleted as
        // an unknown volume.
        assert_eq!(status.replicas[1].lost.len(), 1);
        assert_eq!(status.replicas[1].lost[0].sha256, "cd".repeat(32));
        now += jiff::SignedDuration::from_hours(48);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[100]), versions(&[80, 90, 100])],
            now,
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::RecoverVersion { version: 80 })
        );
        // One whose reading failed lately (its storage flapping) is left
        // alone for a while: neither read again at once nor deleted.
        let mut flapping = status.clone();
        flapping.replicas[1].lost[0].recover_after =
            Some((now + jiff::SignedDuration::from_mins(10)).to_string());
        let decision = plan(
            facts(&spec, &flapping),
            &[versions(&[100]), versions(&[80, 90, 100])],
            now,
        );
        assert!(
            !matches!(
                decision.next,
                Some(StorageAction::RecoverVersion { .. } | StorageAction::DeleteVersion { .. })
            ),
            "{decision:?}"
        );
        let decision = plan(
            facts(&spec, &flapping),
            &[versions(&[100]), versions(&[80, 90, 100])],
            now + jiff::SignedDuration::from_mins(11),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::RecoverVersion { version: 80 })
        );
        // Every version lost at once is remembered when the policy keeps
        // many; at least LOST_VERSIONS_REMEMBERED, the latest, otherwise.
        let many = |n: u64| {
            (1..=n).map(|version| crate::resources::KeptVersion {
                version,
                bytes: 5,
                sha256: "ef".repeat(32),
                verified_at: test_time().to_string(),
                missing: None,
                recover_after: None,
            })
        };
        let mut copy = status.replicas[1].clone();
        copy.lost.clear();
        copy.remember_lost(many(40), 7);
        assert_eq!(copy.lost.len(), LOST_VERSIONS_REMEMBERED);
        assert_eq!(copy.lost.last().map(|l| l.version), Some(40));
        copy.lost.clear();
        copy.remember_lost(many(40), 100);
        assert_eq!(copy.lost.len(), 40);
        let mut policy_many = status.clone();
        policy_many.replicas[1].kept = many(60).collect();
        let mut decision = plan(
            StorageFacts {
                versions_kept: 100,
                ..facts(&spec, &policy_many)
            },
            &[versions(&[100]), versions(&[100])],
            now,
        );
        let mut later = now;
        for _ in 0..CONFIRM_OBSERVATIONS + 1 {
            later += CONFIRM_AFTER;
            decision = plan(
                StorageFacts {
                    versions_kept: 100,
                    ..facts(&spec, &decision.status)
                },
                &[versions(&[100]), versions(&[100])],
                later,
            );
        }
        assert_eq!(decision.status.replicas[1].lost.len(), 61, "60 and 80");
    }

    /// R26 (defect 5 of issue 25): a copy present but without its current
    /// version (a repair that failed after deleting it) is not left so for
    /// ever: once confirmed, the secondary is brought to the content again
    /// from the primary (its kept versions stay), the primary rebuilt from
    /// the secondary.
    #[test]
    fn r26_a_copy_that_lost_its_current_version_is_made_whole_again() {
        let (spec, status) = in_sync_with_kept();
        let status = missing_long_enough(status, 1);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[100]), versions(&[80, 90])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::Replicate { version: 100 })
        );
        assert_eq!(
            decision.status.replicas[1].kept.len(),
            2,
            "its restore points stay"
        );
        let (spec, status) = in_sync_with_kept();
        let status = missing_long_enough(status, 0);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[]), versions(&[80, 90, 100])],
            test_time(),
        );
        assert_eq!(decision.next, Some(StorageAction::RebuildCopy { index: 0 }));
    }

    #[derive(Debug, Clone)]
    enum Seen {
        /// Everything the copy holds.
        All,
        /// An empty listing.
        Empty,
        /// Some of it.
        Some(Vec<bool>),
        Absent,
        Unavailable,
    }

    fn seen() -> impl proptest::strategy::Strategy<Value = Seen> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Seen::All),
            1 => Just(Seen::Empty),
            1 => proptest::collection::vec(any::<bool>(), 3).prop_map(Seen::Some),
            1 => Just(Seen::Absent),
            1 => Just(Seen::Unavailable),
        ]
    }

    fn observe(holds: &[u64], seen: &Seen) -> CopyObservation {
        match seen {
            Seen::All => versions(holds),
            Seen::Empty => versions(&[]),
            Seen::Some(mask) => versions(
                &holds
                    .iter()
                    .zip(mask.iter().cycle())
                    .filter(|(_, shown)| **shown)
                    .map(|(v, _)| *v)
                    .collect::<Vec<_>>(),
            ),
            Seen::Absent => CopyObservation::Absent,
            Seen::Unavailable => CopyObservation::Unavailable("timeout".into()),
        }
    }

    proptest::proptest! {
        /// R26: whatever the agents' listings say, in any order and at any
        /// pace, while the copies really hold what they should: no copy is
        /// rebuilt and no kept version forgotten unless it went unseen in
        /// every one of the last CONFIRM_OBSERVATIONS observations over at
        /// least CONFIRM_AFTER; no version is deleted that is a copy's
        /// current one, kept, or the content's on the copy that alone shows
        /// it; and a primary a server holds is never written.
        #[test]
        fn r26_no_sequence_of_observations_loses_what_the_copies_hold(
            steps in proptest::collection::vec((seen(), seen(), 0u64..240, proptest::bool::ANY), 1..40),
            attached in proptest::bool::ANY,
        ) {
            let (mut spec, mut status) = in_sync_with_kept();
            if attached {
                // The primary is a server's disk: copied on schedule,
                // what a failed copy left is cleaned up.
                spec.attached_to = Some("vs-00000000000000a1".into());
                spec.written_by_guest = Some("vs-00000000000000a1".into());
            }
            let holds = [vec![100u64], vec![80, 90, 100]];
            let held = ServerFacts { attached_server_exists: false, holding: vec!["vs-00000000000000a1".into()], snapshot_source: None };
            let mut now = test_time();
            // Per copy, per version: times it went unseen in a row since.
            let mut unseen: std::collections::HashMap<(usize, u64), (u32, Timestamp)> = Default::default();
            for (primary, secondary, seconds, holding) in steps {
                now += jiff::SignedDuration::from_secs(seconds as i64);
                let observed = [observe(&holds[0], &primary), observe(&holds[1], &secondary)];
                for (index, observation) in observed.iter().enumerate() {
                    let listed: Option<Vec<u64>> = match observation {
                        CopyObservation::Present { versions, .. } => Some(versions.iter().map(|v| v.version).collect()),
                        CopyObservation::Absent => Some(Vec::new()),
                        CopyObservation::Unavailable(_) => None,
                    };
                    let Some(listed) = listed else { continue };
                    for version in &holds[index] {
                        if listed.contains(version) {
                            unseen.remove(&(index, *version));
                        } else {
                            let entry = unseen.entry((index, *version)).or_insert((0, now));
                            entry.0 += 1;
                        }
                    }
                }
                let confirmed = |index: usize, version: u64| {
                    unseen.get(&(index, version)).is_some_and(|(count, since)| {
                        *count >= CONFIRM_OBSERVATIONS && *since + CONFIRM_AFTER <= now
                    })
                };
                let mut f = facts(&spec, &status);
                if holding {
                    f.servers = &held;
                }
                let kept_before: Vec<u64> = status.replicas[1].kept.iter().map(|k| k.version).collect();
                let decision = plan(f, &observed, now);
                match decision.next {
                    Some(StorageAction::RebuildCopy { index }) => {
                        proptest::prop_assert!(confirmed(index, 100),
                            "copy {} rebuilt on an unconfirmed absence", index);
                    }
                    Some(StorageAction::DeleteVersion { index, version }) => {
                        proptest::prop_assert!(version != status.replicas[index].version);
                        proptest::prop_assert!(!kept_before.contains(&version) || index == 0);
                        proptest::prop_assert!(version != 100, "the content's version deleted");
                        proptest::prop_assert!(
                            !status.replicas[index].lost.iter().any(|l| l.version == version),
                            "a lost restore point that came back deleted unread: {}", version
                        );
                    }
                    Some(StorageAction::RecoverVersion { version }) => {
                        proptest::prop_assert!(
                            status.replicas[1].lost.iter().any(|l| l.version == version),
                            "recovering {} that was never lost", version
                        );
                    }
                    _ => {}
                }
                if holding {
                    proptest::prop_assert!(!matches!(
                        decision.next,
                        Some(StorageAction::DeleteVersion { index: 0, .. }
                            | StorageAction::RebuildCopy { index: 0 }
                            | StorageAction::Restore { .. }
                            | StorageAction::Verify)
                    ), "{:?} while a server holds the primary", decision.next);
                }
                let kept_after: Vec<u64> = decision.status.replicas[1].kept.iter().map(|k| k.version).collect();
                for version in kept_before {
                    if !kept_after.contains(&version) {
                        proptest::prop_assert!(confirmed(1, version),
                            "kept version {} forgotten on an unconfirmed absence", version);
                        proptest::prop_assert!(
                            decision.status.replicas[1].lost.iter().any(|l| l.version == version),
                            "kept version {} lost and not remembered", version
                        );
                    }
                }
                status = decision.status;
            }
        }
    }

    /// R26 (defect 7 of issue 25): every attempt at one scheduled copy of
    /// an attached disk has the same version (its due time's), so a retry
    /// joins the agent's copy job rather than pausing the guest again under
    /// a new number; what a failed copy left on either copy is deleted
    /// first, never the copy in flight, a current or a kept version.
    #[test]
    fn r26_a_scheduled_copy_of_an_attached_disk_is_one_job_and_its_leftovers_go() {
        let (mut spec, mut status) = in_sync_with_kept();
        spec.attached_to = Some("vs-00000000000000a1".into());
        spec.written_by_guest = Some("vs-00000000000000a1".into());
        let servers = ServerFacts {
            attached_server_exists: true,
            holding: vec!["vs-00000000000000a1".into()],
            snapshot_source: None,
        };
        status.last_snapshot_at = Some(test_time().to_string());
        let plan_at =
            |status: &StorageSubscriptionStatus, observed: &[CopyObservation], at: Timestamp| {
                let mut f = facts(&spec, status);
                f.servers = &servers;
                plan(f, observed, at)
            };
        let both = [versions(&[100]), versions(&[80, 90, 100])];
        // Attached now (the condition records when).
        status = plan_at(&status, &both, test_time()).status;
        let due = test_time() + jiff::SignedDuration::from_hours(1);
        let later = due + jiff::SignedDuration::from_mins(7);
        let first = plan_at(&status, &both, due + jiff::SignedDuration::from_secs(1)).next;
        let again = plan_at(&status, &both, later).next;
        let version = u64::try_from(due.as_millisecond()).unwrap();
        assert_eq!(first, Some(StorageAction::Snapshot { version }));
        assert_eq!(again, first, "a retry is the same copy");
        // A copy that failed an interval ago left a version on the primary
        // and one on the secondary: both go before the next copy; the one
        // in flight stays.
        let stale =
            u64::try_from((test_time() - jiff::SignedDuration::from_hours(3)).as_millisecond())
                .unwrap();
        let leftovers = [
            versions(&[100, stale, version]),
            versions(&[80, 90, 100, stale]),
        ];
        let decision = plan_at(&status, &leftovers, later);
        assert_eq!(
            decision.next,
            Some(StorageAction::DeleteVersion {
                index: 0,
                version: stale
            })
        );
        let leftovers = [versions(&[100, version]), versions(&[80, 90, 100, stale])];
        let decision = plan_at(&status, &leftovers, later);
        assert_eq!(
            decision.next,
            Some(StorageAction::DeleteVersion {
                index: 1,
                version: stale
            })
        );
        let decision = plan_at(
            &status,
            &[versions(&[100, version]), versions(&[80, 90, 100])],
            later,
        );
        assert_eq!(decision.next, Some(StorageAction::Snapshot { version }));
    }

    /// An upload that takes longer than an hour (no total timeout on a
    /// stream) is not taken for one that never completed while its agent
    /// says it is still writing it.
    #[test]
    fn r27_an_upload_still_being_written_is_never_cleaned_up() {
        let (spec, status) = in_sync_with_kept();
        let started =
            u64::try_from((test_time() - jiff::SignedDuration::from_hours(3)).as_millisecond())
                .unwrap();
        let mut primary = versions(&[100, started]);
        let CopyObservation::Present {
            versions: listed, ..
        } = &mut primary
        else {
            unreachable!()
        };
        listed[1].version = started;
        listed.sort_by_key(|v| v.version);
        let writing = listed.iter_mut().find(|v| v.version == started).unwrap();
        writing.writing = true;
        let decision = plan(
            facts(&spec, &status),
            &[primary.clone(), versions(&[80, 90, 100])],
            test_time(),
        );
        assert!(
            !matches!(decision.next, Some(StorageAction::DeleteVersion { .. })),
            "{:?}",
            decision.next
        );
        // Written no more after three hours: an upload that never completed.
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[100, started]), versions(&[80, 90, 100])],
            test_time(),
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::DeleteVersion {
                index: 0,
                version: started
            })
        );
    }

    /// A primary that lost the version it had while a newer content was
    /// uploaded to it takes the newer one; nothing is "rebuilt" in a loop.
    #[test]
    fn r26_a_primary_holding_a_newer_content_is_not_rebuilt() {
        let (mut spec, status) = in_sync_with_kept();
        spec.content.as_mut().unwrap().version = 200;
        let status = missing_long_enough(status, 0);
        let decision = plan(
            facts(&spec, &status),
            &[versions(&[200]), versions(&[80, 90, 100])],
            test_time(),
        );
        assert_ne!(decision.next, Some(StorageAction::RebuildCopy { index: 0 }));
        assert_eq!(
            decision.status.replicas[0].version, 200,
            "the newer content is the primary's"
        );
        assert_eq!(
            decision.next,
            Some(StorageAction::Replicate { version: 200 })
        );
    }
}
