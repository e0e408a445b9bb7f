//! Snapshots of servers' disks against simulated agents (R3, R18, R26):
//! copied by the server's hypervisor as of one moment, kept as two copies
//! in two zones, restored into the server, never wiped under a restore.

mod support;

use stratus_core::resources::SnapshotOf;
use stratus_core::storage::{SnapshotState, snapshot_state};
use support::*;

/// The managed name of snapshot `st-5` on the agents.
const SNAPSHOT_COPY: &str = "stratus-acc-0000000000000001.st-5";
const TAKEN_AT: u64 = 1_765_000_000_000;

/// What the API does for `POST /v1/servers/{server}/snapshots`.
async fn take_snapshot(h: &Harness, name: &str, server: &str) {
    let mut snapshot = StorageSubscription::new(
        name,
        StorageSubscriptionSpec::snapshot(
            "before-upgrade".into(),
            25,
            SnapshotOf {
                server: server.into(),
                image: "debian-12".into(),
                instance_generation: 0,
                version: TAKEN_AT,
                backup: false,
            },
        ),
    );
    snapshot.metadata.namespace = Some(NS.into());
    h.storage.create(&snapshot).await.unwrap();
}

/// What the API does for `{"type": "restore", "snapshot": …}`.
fn ask_restore(spec: &mut VirtualServerSpec, snapshot: &str, generation: u32) {
    spec.rebuild = Some(stratus_core::resources::RebuildRequest {
        image: "debian-12".into(),
        generation,
        ssh_keys: None,
        user_data: None,
        snapshot: Some(snapshot.into()),
        instance_generation: Some(0),
    });
}

async fn running_server_in_zone_a(h: &Harness) {
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order("vs-1", Some("a")).await;
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.status("vs-1").await.hypervisor.unwrap().as_str(), "a1");
}

/// Reconciles the snapshot until nothing is left to do now (a
/// verification may be due later).
async fn settle(h: &Harness, name: &str) {
    for _ in 0..5 {
        match h.reconcile_storage(name).await.unwrap() {
            Outcome::RequeueAfter(soon) if soon <= Duration::from_secs(1) => {}
            _ => return,
        }
    }
    panic!("{name} still moves: {:?}", h.storage_status(name).await);
}

/// Reconciles snapshot `name` again and checks its server's disk was not
/// copied again.
async fn assert_not_copied_again(h: &Harness, name: &str, why: &str) {
    let calls = h.sim.calls().len();
    h.reconcile_storage(name).await.unwrap();
    assert!(
        !h.sim.calls()[calls..]
            .iter()
            .any(|c| c.starts_with("capture_disk")),
        "{why}"
    );
}

async fn snapshot_of(h: &Harness, name: &str) -> StorageSubscription {
    h.storage.get(Some(NS), name).await.unwrap().unwrap()
}

#[tokio::test]
async fn r18_a_snapshot_copies_the_disk_into_two_zones_and_a_restore_brings_it_back() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        running_server_in_zone_a(&h).await;
        h.sim.write_disk("a1", DOMAIN, b"marker A");
        let seed_before = h.sim.spec_of("a1", DOMAIN).unwrap().seed.unwrap();

        take_snapshot(&h, "st-5", "vs-1").await;
        settle(&h, "st-5").await;
        let snapshot = snapshot_of(&h, "st-5").await;
        let status = snapshot.status.clone().unwrap();
        assert_eq!(
            snapshot_state(&snapshot.spec, Some(&status)),
            (SnapshotState::Ready, None),
            "{label}: {status:?}"
        );
        let zones: Vec<&str> = status.replicas.iter().map(|r| r.zone.as_str()).collect();
        assert_eq!(zones, ["a", "b"], "made on the server's hypervisor first");
        assert_eq!(status.replicas[0].hypervisor.as_str(), "a1");
        let content = snapshot.spec.content.clone().unwrap();
        assert_eq!(content.version, TAKEN_AT);
        assert_eq!(content.bytes, 8);
        for hypervisor in ["a1", "b1"] {
            assert_eq!(
                h.sim.versions(hypervisor, SNAPSHOT_COPY)[&TAKEN_AT],
                b"marker A",
                "{label}: the copy on {hypervisor}"
            );
        }
        let captured = h
            .audited_storage("st-5", AuditAction::ServerSnapshotCaptured)
            .await;
        assert_eq!(captured.len(), 1, "{label}: {captured:?}");
        assert_eq!(captured[0]["method"], "backup", "the guest ran on");
        assert_eq!(captured[0]["sha256"], content.sha256.as_str());
        assert!(
            h.events
                .about("StorageSubscription", "st-5")
                .contains(&EventReason::SnapshotTaken)
        );
        // Looked at again: nothing is copied again.
        assert_not_copied_again(&h, "st-5", label).await;

        // The guest writes on; the restore brings the disk of the snapshot
        // back, beside the one it replaces, which is wiped.
        h.sim.write_disk("a1", DOMAIN, b"marker B");
        h.edit("vs-1", |spec| ask_restore(spec, "st-5", 1)).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.rebuild, None, "{label}: {status:?}");
        assert_eq!(status.disk_generation, 1);
        assert_eq!(status.instance_generation, Some(0));
        assert_eq!(status.phase, ServerPhase::Running);
        let disk = h.sim.disk_of("a1", DOMAIN).unwrap();
        assert_eq!(disk.content, b"marker A", "{label}");
        assert!(disk.leftovers.is_empty(), "{label}: the old disk is wiped");
        let seed = h.sim.spec_of("a1", DOMAIN).unwrap().seed.unwrap();
        assert_eq!(
            seed.instance_id, seed_before.instance_id,
            "the restored system is the same cloud-init instance"
        );
        let rebuilt = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
        assert!(
            rebuilt.message.contains("from snapshot st-5"),
            "{}",
            rebuilt.message
        );
        // The snapshot is as it was: restored from, never written.
        assert_eq!(h.sim.versions("a1", SNAPSHOT_COPY)[&TAKEN_AT], b"marker A");

        // Deleted: both copies are wiped and it goes.
        h.storage.delete(Some(NS), "st-5").await.unwrap();
        settle(&h, "st-5").await;
        assert!(
            h.storage.get(Some(NS), "st-5").await.unwrap().is_none(),
            "{label}"
        );
        for hypervisor in ["a1", "b1"] {
            assert!(
                !h.sim
                    .volumes(hypervisor)
                    .iter()
                    .any(|(name, _)| name == SNAPSHOT_COPY),
                "{label}: {hypervisor}"
            );
        }
    }
}

/// vs-1 running on a1 wrote marker A, was snapshotted as st-5 (ready in
/// zones a and b), then wrote marker B.
async fn snapshot_of_marker_a_then_b_written(h: &Harness) {
    running_server_in_zone_a(h).await;
    h.sim.write_disk("a1", DOMAIN, b"marker A");
    take_snapshot(h, "st-5", "vs-1").await;
    settle(h, "st-5").await;
    h.sim.write_disk("a1", DOMAIN, b"marker B");
}

/// A backup outlives the loss of the copy on its server's hypervisor: a
/// restore asked meanwhile waits, the copy is made again from the other
/// zone once the loss is confirmed, and the restore brings the data back.
#[tokio::test]
async fn r18_a_snapshot_whose_hypervisors_copy_is_lost_is_made_again_and_restores() {
    let h = harness().await;
    snapshot_of_marker_a_then_b_written(&h).await;

    h.sim.lose_volume("a1", SNAPSHOT_COPY);
    h.edit("vs-1", |spec| ask_restore(spec, "st-5", 1)).await;
    let _ = h.reconcile("vs-1").await;
    let status = h.status("vs-1").await;
    assert!(
        status.rebuild.is_some(),
        "the restore waits for its snapshot: {status:?}"
    );
    assert_eq!(h.sim.disk_of("a1", DOMAIN).unwrap().content, b"marker B");

    h.confirm_storage_loss("st-5").await;
    settle(&h, "st-5").await;
    let repaired = h.storage_status("st-5").await;
    assert!(repaired.replicas_in_sync, "{repaired:?}");
    assert_eq!(repaired.repairs, 1, "{repaired:?}");
    assert_eq!(h.sim.versions("a1", SNAPSHOT_COPY)[&TAKEN_AT], b"marker A");

    for _ in 0..3 {
        if h.reconcile("vs-1").await.is_ok() && h.status("vs-1").await.rebuild.is_none() {
            break;
        }
    }
    let status = h.status("vs-1").await;
    assert_eq!(status.rebuild, None, "{status:?}");
    assert_eq!(status.phase, ServerPhase::Running);
    assert_eq!(h.sim.disk_of("a1", DOMAIN).unwrap().content, b"marker A");
}

#[tokio::test]
async fn r18_deleting_a_snapshot_withdraws_a_restore_not_made_from_it_and_waits_for_it() {
    let h = harness().await;
    snapshot_of_marker_a_then_b_written(&h).await;
    h.edit("vs-1", |spec| ask_restore(spec, "st-5", 1)).await;

    // Deleted after the restore was asked: its copies are not wiped while
    // the server may still copy from them.
    h.storage.delete(Some(NS), "st-5").await.unwrap();
    h.reconcile_storage("st-5").await.unwrap();
    let waiting = snapshot_of(&h, "st-5").await.status.unwrap();
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("vs-1"),
        "{waiting:?}"
    );
    assert!(
        h.sim
            .volumes("a1")
            .iter()
            .any(|(name, _)| name == SNAPSHOT_COPY)
    );

    // The server never copies from a snapshot being deleted: its restore is
    // withdrawn and it runs on its own disk, then the snapshot goes.
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(server.spec.rebuild, None);
    let status = server.status.unwrap();
    assert_eq!(status.phase, ServerPhase::Running, "{status:?}");
    assert_eq!(status.disk_generation, 0);
    assert_eq!(h.sim.disk_of("a1", DOMAIN).unwrap().content, b"marker B");
    let withdrawn = h.audited("vs-1", AuditAction::ServerRestore).await;
    assert!(
        withdrawn[0]["withdrawn"]
            .as_str()
            .unwrap()
            .contains("being deleted"),
        "{withdrawn:?}"
    );
    settle(&h, "st-5").await;
    assert!(h.storage.get(Some(NS), "st-5").await.unwrap().is_none());
}

#[tokio::test]
async fn r18_a_restore_whose_snapshot_is_missing_is_withdrawn_never_made_from_the_image() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    h.sim.write_disk("a1", DOMAIN, b"marker B");
    h.edit("vs-1", |spec| ask_restore(spec, "st-404", 1)).await;
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(server.spec.rebuild, None, "withdrawn");
    let status = server.status.unwrap();
    assert_eq!(status.phase, ServerPhase::Running, "{status:?}");
    let rebuilt = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
    assert!(rebuilt.message.contains("withdrawn"), "{}", rebuilt.message);
    let disk = h.sim.disk_of("a1", DOMAIN).unwrap();
    assert_eq!(
        (disk.generation, disk.content.as_slice()),
        (0, &b"marker B"[..])
    );
    assert!(
        h.events
            .about("VirtualServer", "vs-1")
            .contains(&EventReason::Rebuilt)
    );
}

#[tokio::test]
async fn r18_a_snapshot_of_a_server_that_went_first_fails_and_places_no_copy() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    take_snapshot(&h, "st-5", "vs-9").await;
    h.reconcile_storage("st-5").await.unwrap();
    let snapshot = snapshot_of(&h, "st-5").await;
    let status = snapshot.status.clone().unwrap();
    let (state, reason) = snapshot_state(&snapshot.spec, Some(&status));
    assert_eq!(state, SnapshotState::Failed);
    assert!(reason.unwrap().contains("vs-9 was deleted"), "{status:?}");
    assert!(status.replicas.is_empty());
    assert!(h.sim.volumes("a1").is_empty() && h.sim.volumes("b1").is_empty());
    // Deleted as any other.
    h.storage.delete(Some(NS), "st-5").await.unwrap();
    h.reconcile_storage("st-5").await.unwrap();
    assert!(h.storage.get(Some(NS), "st-5").await.unwrap().is_none());
}

#[tokio::test]
async fn r26_a_snapshot_that_would_pause_its_guest_too_long_fails_and_is_not_tried_again() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    h.sim.set_copies_need_long_pauses("a1", true);
    take_snapshot(&h, "st-5", "vs-1").await;
    h.reconcile_storage("st-5").await.unwrap();
    let snapshot = snapshot_of(&h, "st-5").await;
    let (state, reason) = snapshot_state(&snapshot.spec, snapshot.status.as_ref());
    assert_eq!(state, SnapshotState::Failed, "{snapshot:?}");
    assert!(reason.unwrap().contains("paused longer"));
    assert!(snapshot.spec.content.is_none());
    assert!(
        h.events
            .about("StorageSubscription", "st-5")
            .contains(&EventReason::SnapshotFailed)
    );
    assert_eq!(
        h.audited_storage("st-5", AuditAction::ServerSnapshotFailed)
            .await
            .len(),
        1
    );
    h.sim.set_copies_need_long_pauses("a1", false);
    assert_not_copied_again(
        &h,
        "st-5",
        "a failed snapshot is not taken again behind the customer's back",
    )
    .await;
}

/// On a hypervisor that cannot read a volume back (libvirt's test driver)
/// a snapshot fails at once, said, instead of being copied again forever.
#[tokio::test]
async fn a_snapshot_on_a_hypervisor_that_cannot_stream_volumes_fails_and_says_why() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    h.sim.cannot_stream_volumes("a1");
    take_snapshot(&h, "st-5", "vs-1").await;
    h.reconcile_storage("st-5").await.unwrap();
    let snapshot = snapshot_of(&h, "st-5").await;
    let (state, reason) = snapshot_state(&snapshot.spec, snapshot.status.as_ref());
    assert_eq!(state, SnapshotState::Failed, "{snapshot:?}");
    assert!(
        reason.unwrap().contains("cannot stream volume bytes"),
        "{snapshot:?}"
    );
    assert_eq!(
        h.audited_storage("st-5", AuditAction::ServerSnapshotFailed)
            .await
            .len(),
        1
    );
    assert_not_copied_again(&h, "st-5", "not tried again").await;
}

/// The server's backups, oldest first: (name, version, being deleted).
async fn backups_of(h: &Harness, server: &str) -> Vec<(String, u64, bool)> {
    let mut found: Vec<(String, u64, bool)> = h
        .storage
        .list(Some(NS))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| {
            let of = s.spec.snapshot_of.as_ref()?;
            (of.backup && of.server == server).then(|| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    of.version,
                    s.metadata.deletion_timestamp.is_some(),
                )
            })
        })
        .collect();
    found.sort_by_key(|b| b.1);
    found
}

fn at(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

#[tokio::test]
async fn r18_daily_backups_are_taken_once_in_the_window_copied_and_the_oldest_beyond_keep_go() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        running_server_in_zone_a(&h).await;
        h.clock.set(at("2026-12-07T00:00:00Z"));
        h.edit("vs-1", |spec| {
            spec.backups = Some(stratus_core::resources::BackupSchedule { keep: 2 })
        })
        .await;
        // Before the window: nothing, and a look again at the server's minute.
        let slot = match h.reconcile("vs-1").await.unwrap() {
            Outcome::RequeueAt(slot) => slot,
            other => panic!("{label}: {other:?}"),
        };
        assert!(
            slot >= at("2026-12-07T02:00:00Z") && slot < at("2026-12-07T05:00:00Z"),
            "{slot}"
        );
        assert!(backups_of(&h, "vs-1").await.is_empty());

        // Its minute: taken once, however often it is looked at, and
        // copied like any snapshot.
        h.clock.set(slot);
        h.sim.write_disk("a1", DOMAIN, b"day one");
        h.reconcile("vs-1").await.unwrap();
        h.reconcile("vs-1").await.unwrap();
        let taken = backups_of(&h, "vs-1").await;
        assert_eq!(taken.len(), 1, "{label}: {taken:?}");
        let first = taken[0].0.clone();
        settle(&h, &first).await;
        let backup = snapshot_of(&h, &first).await;
        assert_eq!(
            snapshot_state(&backup.spec, backup.status.as_ref()).0,
            SnapshotState::Ready,
            "{label}"
        );
        assert!(
            backup.spec.name.starts_with("backup-2026-12-07-"),
            "{}",
            backup.spec.name
        );
        assert_eq!(
            h.ctx.ledger.quotas().usage(NS).await.unwrap().snapshot_gib,
            25,
            "{label}: charged the server's disk"
        );

        // Deleted by its customer inside the window: not taken again.
        h.storage.delete(Some(NS), &first).await.unwrap();
        settle(&h, &first).await;
        h.reconcile("vs-1").await.unwrap();
        assert!(backups_of(&h, "vs-1").await.is_empty(), "{label}");

        // Three more days: the newest two stay. The day's backup takes an
        // older one's place only once it is copied: looked at again within
        // the window meanwhile.
        for day in 0..3 {
            h.clock.advance(jiff::SignedDuration::from_hours(24));
            let again = h.reconcile("vs-1").await.unwrap();
            let newest = backups_of(&h, "vs-1").await.last().unwrap().0.clone();
            assert_eq!(
                backups_of(&h, "vs-1").await.iter().filter(|b| !b.2).count(),
                day + 1,
                "{label}: day {day}: nothing pruned for a backup not copied yet"
            );
            let Outcome::RequeueAt(soon) = again else {
                panic!("{label}: {again:?}");
            };
            assert!(
                soon.duration_since(h.clock.now()) <= jiff::SignedDuration::from_mins(5),
                "{label}: {soon}"
            );
            settle(&h, &newest).await;
            h.clock.set(soon);
            h.reconcile("vs-1").await.unwrap();
        }
        let left: Vec<bool> = backups_of(&h, "vs-1").await.iter().map(|b| b.2).collect();
        assert_eq!(
            left,
            [true, false, false],
            "{label}: the oldest is being deleted"
        );
        let pruned = h.audited("vs-1", AuditAction::ServerSnapshotDelete).await;
        assert_eq!(pruned.len(), 1, "{label}: {pruned:?}");
        assert_eq!(pruned[0]["pruned"], true);
    }
}

#[tokio::test]
async fn r18_a_backup_beyond_the_snapshot_quota_is_skipped_and_said() {
    let h = harness().await;
    let mut account = fixtures::account(NS).build();
    account.spec.quota = Some(Quota {
        snapshot_gib: Some(10),
        ..Quota::default()
    });
    Resources::<Account>::new(h.store.clone())
        .create(&account)
        .await
        .unwrap();
    running_server_in_zone_a(&h).await;
    h.clock.set(at("2026-12-07T00:00:00Z"));
    h.edit("vs-1", |spec| {
        spec.backups = Some(stratus_core::resources::BackupSchedule { keep: 7 })
    })
    .await;
    let Outcome::RequeueAt(slot) = h.reconcile("vs-1").await.unwrap() else {
        panic!("no slot");
    };
    h.clock.set(slot);
    h.reconcile("vs-1").await.unwrap();
    assert!(backups_of(&h, "vs-1").await.is_empty());
    let skipped = h.audited("vs-1", AuditAction::ServerSnapshotFailed).await;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("snapshotGib"),
        "{skipped:?}"
    );
    assert!(
        h.events
            .about("VirtualServer", "vs-1")
            .contains(&EventReason::SnapshotFailed)
    );
    assert_eq!(
        h.ctx.ledger.quotas().usage(NS).await.unwrap().snapshot_gib,
        0
    );
    // Said once per slot, not at every look.
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerSnapshotFailed)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn r3_r18_backups_outlive_a_destruction_for_non_payment_by_the_policys_time_only() {
    let h = harness().await;
    Resources::<Account>::new(h.store.clone())
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    running_server_in_zone_a(&h).await;
    take_snapshot(&h, "st-5", "vs-1").await;
    h.storage
        .update(Some(NS), "st-5", |s| {
            if let Some(of) = s.spec.snapshot_of.as_mut() {
                of.backup = true;
            }
            true
        })
        .await
        .unwrap();
    take_snapshot(&h, "st-6", "vs-1").await;
    settle(&h, "st-5").await;
    settle(&h, "st-6").await;
    let mut policy = Policy::default();
    policy.backups.keep_after_destruction = stratus_core::policy::PolicyDuration::days(30);
    let runner = h.deadline_runner_with(policy);
    h.report_overdue_invoice().await;
    runner.pass().await.unwrap();
    // Suspended after 15 days, destroyed 15 days later (R1, R3).
    h.clock.advance(jiff::SignedDuration::from_hours(15 * 24));
    runner.pass().await.unwrap();
    h.clock.advance(jiff::SignedDuration::from_hours(15 * 24));
    runner.pass().await.unwrap();
    let destroyed_at = h.clock.now();
    let snapshot = h.storage.get(Some(NS), "st-6").await.unwrap();
    assert!(
        snapshot.is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
        "a customer's snapshot goes with the destroyed data"
    );
    let backup = snapshot_of(&h, "st-5").await;
    assert!(backup.metadata.deletion_timestamp.is_none(), "{backup:?}");
    let held = backup.spec.termination.expect("held as terminated");
    let wipe_at: jiff::Timestamp = held.wipe_at.parse().unwrap();
    assert_eq!(
        wipe_at.duration_since(destroyed_at),
        jiff::SignedDuration::from_hours(30 * 24),
        "kept for keepAfterDestruction: {held:?}"
    );

    h.clock.advance(jiff::SignedDuration::from_hours(30 * 24));
    runner.pass().await.unwrap();
    let gone = h.storage.get(Some(NS), "st-5").await.unwrap();
    assert!(
        gone.is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
        "wiped once its time passed"
    );
}

#[tokio::test]
async fn r6_r14_a_servers_snapshots_follow_its_termination_and_are_wiped_with_its_data() {
    let h = harness().await;
    Resources::<Account>::new(h.store.clone())
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    running_server_in_zone_a(&h).await;
    take_snapshot(&h, "st-5", "vs-1").await;
    settle(&h, "st-5").await;
    let mut policy = Policy::default();
    policy.termination.data_retention = stratus_core::policy::PolicyDuration::days(7);
    let runner = h.deadline_runner_with(policy);
    h.report(
        "terminate-vs-1",
        FactKind::Terminate {
            server: "vs-1".into(),
            cause: TerminationCause::Abuse,
            immediate: true,
        },
    )
    .await;
    runner.pass().await.unwrap();
    let held = snapshot_of(&h, "st-5").await;
    let termination = held.spec.termination.expect("held with its server");
    assert_eq!(termination.cause, TerminationCause::Abuse);
    // Its content is put back on no server meanwhile.
    h.order("vs-2", Some("a")).await;
    h.reconcile("vs-2").await.unwrap();
    h.edit("vs-2", |spec| ask_restore(spec, "st-5", 1)).await;
    h.reconcile("vs-2").await.unwrap();
    assert_eq!(
        h.servers
            .get(Some(NS), "vs-2")
            .await
            .unwrap()
            .unwrap()
            .spec
            .rebuild,
        None,
        "withdrawn"
    );
    // Wiped with the server's data, after the same retention.
    h.clock.advance(jiff::SignedDuration::from_hours(7 * 24));
    runner.pass().await.unwrap();
    settle(&h, "st-5").await;
    assert!(h.storage.get(Some(NS), "st-5").await.unwrap().is_none());
    for hypervisor in ["a1", "b1"] {
        assert!(h.sim.versions(hypervisor, SNAPSHOT_COPY).is_empty());
    }
}

/// At a provider's scale: 1 000 snapshots of 200 servers asked at once are
/// all copied from the right disk into two zones, none twice. Prints how
/// long the controller took and what one listing of the account (what the
/// snapshot routes read) costs.
#[tokio::test]
async fn r18_a_thousand_snapshots_of_two_hundred_servers_are_all_copied_from_their_own_disk() {
    const SERVERS: usize = 200;
    const PER_SERVER: usize = 5;
    let h = harness().await;
    for (name, zone) in [("a1", "a"), ("b1", "b")] {
        h.sim
            .add_node(name, zone, 4096, 1 << 24, 1 << 20, &["debian-12.qcow2"]);
        h.hypervisors
            .create(
                &fixtures::hypervisor(name)
                    .zone(zone)
                    .credential("hv-token")
                    .build(),
            )
            .await
            .unwrap();
    }
    h.prober.probe_all().await.unwrap();
    let started = std::time::Instant::now();
    for n in 0..SERVERS {
        let name = format!("vs-{n}");
        h.order(&name, Some("a")).await;
        h.reconcile(&name).await.unwrap();
        let domain = stratus_core::ids::domain_name(NS, &name);
        h.sim.write_disk("a1", &domain, name.as_bytes());
    }
    let servers_took = started.elapsed();
    let started = std::time::Instant::now();
    for n in 0..SERVERS * PER_SERVER {
        take_snapshot(&h, &format!("st-{n}"), &format!("vs-{}", n % SERVERS)).await;
    }
    for n in 0..SERVERS * PER_SERVER {
        settle(&h, &format!("st-{n}")).await;
    }
    let snapshots_took = started.elapsed();
    let listed = std::time::Instant::now();
    let all = h.storage.list(Some(NS)).await.unwrap().items;
    let list_took = listed.elapsed();
    assert_eq!(all.len(), SERVERS * PER_SERVER);
    for snapshot in &all {
        let server = snapshot.spec.snapshot_of.as_ref().unwrap().server.clone();
        assert_eq!(
            snapshot_state(&snapshot.spec, snapshot.status.as_ref()),
            (SnapshotState::Ready, None),
            "{}",
            snapshot.metadata.name.as_deref().unwrap_or_default()
        );
        let copy = stratus_core::ids::domain_name(NS, snapshot.metadata.name.as_deref().unwrap());
        for hypervisor in ["a1", "b1"] {
            assert_eq!(
                h.sim.versions(hypervisor, &copy)[&TAKEN_AT],
                server.as_bytes(),
                "{copy} on {hypervisor}"
            );
        }
    }
    let captures = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.starts_with("capture_disk"))
        .count();
    assert_eq!(captures, SERVERS * PER_SERVER, "each disk copied once");
    println!(
        "{SERVERS} servers placed in {:.1} s; {} snapshots copied into two zones in {:.1} s ({:.1} ms each); one listing of the account's {} storage objects {:.1} ms",
        servers_took.as_secs_f64(),
        SERVERS * PER_SERVER,
        snapshots_took.as_secs_f64(),
        snapshots_took.as_secs_f64() * 1000.0 / (SERVERS * PER_SERVER) as f64,
        all.len(),
        list_took.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn r18_a_server_ordered_from_a_snapshot_is_placed_where_it_is_kept_and_starts_with_its_disk()
{
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        running_server_in_zone_a(&h).await;
        // An emptier hypervisor in the same zone: only the pin keeps the new
        // server off it.
        h.add_hypervisor("a2", "a", 64, 1 << 20).await;
        h.sim.write_disk("a1", DOMAIN, b"marker A");
        take_snapshot(&h, "st-5", "vs-1").await;
        settle(&h, "st-5").await;

        let mut server = fixtures::server("vs-2").in_account(NS).zone("a").build();
        server.spec.from_snapshot = Some("st-5".into());
        h.servers.create(&server).await.unwrap();
        // Placed where the snapshot's primary copy is, its disk not made
        // yet (its agent failed once)...
        h.sim.fail_next("a1", "ensure", 1);
        let _ = h.reconcile("vs-2").await;
        let placed = h.status("vs-2").await;
        assert_eq!(
            placed.hypervisor.as_ref().map(|h| h.as_str()),
            Some("a1"),
            "{label}: {placed:?}"
        );
        assert!(!placed.provisioned, "{label}");
        // ...when the snapshot is deleted: the order is carried out, and
        // the snapshot is wiped only after the server's disk was made.
        h.storage.delete(Some(NS), "st-5").await.unwrap();
        settle(&h, "st-5").await;
        assert!(
            h.storage.get(Some(NS), "st-5").await.unwrap().is_some(),
            "{label}: the wipe waits for the server made from it"
        );
        assert_eq!(h.reconcile("vs-2").await.unwrap(), Outcome::Done, "{label}");
        let made = h.status("vs-2").await;
        assert_eq!(made.phase, ServerPhase::Running, "{label}: {made:?}");
        assert_eq!(
            h.sim
                .disk_of("a1", "stratus-acc-0000000000000001.vs-2")
                .unwrap()
                .content,
            b"marker A",
            "{label}"
        );
        settle(&h, "st-5").await;
        assert!(
            h.storage.get(Some(NS), "st-5").await.unwrap().is_none(),
            "{label}: wiped once the disk was made"
        );

        // Deleted before the server ordered from it was placed: the wipe
        // does not wait for a server that may never be placed (no room
        // where the snapshot is), and the disk is not made from the image
        // instead; the server says why.
        take_snapshot(&h, "st-7", "vs-1").await;
        settle(&h, "st-7").await;
        let mut server = fixtures::server("vs-4").in_account(NS).zone("a").build();
        server.spec.from_snapshot = Some("st-7".into());
        h.servers.create(&server).await.unwrap();
        h.storage.delete(Some(NS), "st-7").await.unwrap();
        // Not placed from it while it is being deleted, before its wipe.
        let _ = h.reconcile("vs-4").await;
        assert!(h.status("vs-4").await.hypervisor.is_none(), "{label}");
        settle(&h, "st-7").await;
        assert!(
            h.storage.get(Some(NS), "st-7").await.unwrap().is_none(),
            "{label}"
        );
        assert_eq!(
            h.reconcile("vs-4").await.unwrap(),
            Outcome::RequeueAfter(UNSCHEDULABLE_RECHECK),
            "{label}"
        );
        let waiting = h.status("vs-4").await;
        assert!(
            waiting
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("st-7"),
            "{label}: {waiting:?}"
        );
        assert!(waiting.hypervisor.is_none());

        // From a snapshot kept: placed on its hypervisor, its disk a copy.
        take_snapshot(&h, "st-6", "vs-1").await;
        settle(&h, "st-6").await;
        let mut server = fixtures::server("vs-3").in_account(NS).zone("a").build();
        server.spec.from_snapshot = Some("st-6".into());
        h.servers.create(&server).await.unwrap();
        assert_eq!(h.reconcile("vs-3").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-3").await;
        assert_eq!(status.hypervisor.unwrap().as_str(), "a1", "{label}");
        assert_eq!(status.phase, ServerPhase::Running);
        let domain = "stratus-acc-0000000000000001.vs-3";
        let disk = h.sim.disk_of("a1", domain).unwrap();
        assert_eq!(disk.content, b"marker A", "{label}");
        let seed = h.sim.spec_of("a1", domain).unwrap().seed.unwrap();
        assert_eq!(
            seed.instance_id, "vs-3",
            "a new cloud-init instance of its own"
        );
        // Its snapshot is free to go once its disk is made.
        h.storage.delete(Some(NS), "st-6").await.unwrap();
        settle(&h, "st-6").await;
        assert!(h.storage.get(Some(NS), "st-6").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn r3_r18_a_destroyed_server_restored_from_its_backup_comes_back_with_its_data() {
    let h = harness().await;
    Resources::<Account>::new(h.store.clone())
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    running_server_in_zone_a(&h).await;
    h.sim.write_disk("a1", DOMAIN, b"marker A");
    take_snapshot(&h, "st-5", "vs-1").await;
    h.storage
        .update(Some(NS), "st-5", |s| {
            if let Some(of) = s.spec.snapshot_of.as_mut() {
                of.backup = true;
            }
            true
        })
        .await
        .unwrap();
    settle(&h, "st-5").await;
    let backups_seed = h.sim.spec_of("a1", DOMAIN).unwrap().seed.unwrap();
    // Rebuilt onto another image after the backup: a new cloud-init
    // instance on another system.
    h.sim.add_image("a1", "alma-9.qcow2");
    h.edit("vs-1", |spec| {
        spec.rebuild = Some(stratus_core::resources::RebuildRequest {
            image: "alma-9".into(),
            generation: 1,
            ssh_keys: None,
            user_data: None,
            snapshot: None,
            instance_generation: None,
        })
    })
    .await;
    h.reconcile("vs-1").await.unwrap();
    let rebuilt = h.status("vs-1").await;
    assert_eq!(rebuilt.image.as_deref(), Some("alma-9"), "{rebuilt:?}");
    assert_ne!(
        h.sim
            .spec_of("a1", DOMAIN)
            .unwrap()
            .seed
            .unwrap()
            .instance_id,
        backups_seed.instance_id
    );
    let mut policy = Policy::default();
    policy.backups.keep_after_destruction = stratus_core::policy::PolicyDuration::days(30);
    let runner = h.deadline_runner_with(policy);
    h.report_overdue_invoice().await;
    runner.pass().await.unwrap();
    for _ in 0..2 {
        h.clock.advance(jiff::SignedDuration::from_hours(15 * 24));
        runner.pass().await.unwrap();
        for _ in 0..3 {
            h.converge_all().await;
        }
    }
    let wiped = h.status("vs-1").await;
    assert!(wiped.wiped_at.is_some() && !wiped.provisioned, "{wiped:?}");
    assert!(h.sim.disk_of("a1", DOMAIN).is_none(), "destroyed");
    assert!(snapshot_of(&h, "st-5").await.spec.termination.is_some());

    // An operator's billable restore from the backup: the server comes
    // back with the backup's data.
    h.report(
        "restore-1",
        FactKind::Restore {
            server: "vs-1".into(),
            source: Some("st-5".into()),
        },
    )
    .await;
    runner.pass().await.unwrap();
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(server.spec.termination, None);
    assert_eq!(server.spec.from_snapshot.as_deref(), Some("st-5"));
    assert!(
        snapshot_of(&h, "st-5").await.spec.termination.is_none(),
        "its backup is no longer held"
    );
    for _ in 0..6 {
        h.converge_all().await;
    }
    // Made again with the backup's data; held stopped while the invoice
    // stays unpaid (R1), as any server of the account.
    let restored = h.status("vs-1").await;
    assert!(restored.provisioned, "{restored:?}");
    assert_eq!(restored.phase, ServerPhase::Suspended, "{restored:?}");
    assert_eq!(
        h.sim.disk_of("a1", DOMAIN).unwrap().content,
        b"marker A",
        "back with its data"
    );
    // As the system in the backup was: its image, and the cloud-init
    // instance it knows (so it is not taken for a new server).
    assert_eq!(restored.image.as_deref(), Some("debian-12"), "{restored:?}");
    let disk = h.sim.disk_of("a1", DOMAIN).unwrap();
    assert_eq!(disk.image.as_deref(), Some("debian-12.qcow2"), "{disk:?}");
    assert_eq!(
        h.sim
            .spec_of("a1", DOMAIN)
            .unwrap()
            .seed
            .unwrap()
            .instance_id,
        backups_seed.instance_id
    );
    let charges = h.ctx.ledger.charges().of_account(NS, 100).await.unwrap();
    assert!(
        charges.iter().any(|c| c.kind == "restore"),
        "the restore is billed: {charges:?}"
    );
}

/// R18 in Kubernetes mode, where names are reused: a restore's backup is
/// given to the server object it was asked for, never to a later object of
/// the same name.
#[tokio::test]
async fn r18_a_restores_backup_goes_to_the_server_it_was_asked_for_not_a_namesake() {
    let h = harness().await;
    Resources::<Account>::new(h.store.clone())
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    h.order("vs-1", Some("a")).await;
    let runner = h.deadline_runner();
    h.clock.advance(jiff::SignedDuration::from_hours(1));
    for (id, kind) in [
        (
            "terminate-vs-1",
            FactKind::Terminate {
                server: "vs-1".into(),
                cause: TerminationCause::Abuse,
                immediate: true,
            },
        ),
        (
            "restore-vs-1",
            FactKind::Restore {
                server: "vs-1".into(),
                source: Some("st-5".into()),
            },
        ),
    ] {
        h.report(id, kind).await;
        h.clock.advance(jiff::SignedDuration::from_secs(60));
    }
    runner.pass().await.unwrap();
    let restored = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(restored.spec.from_snapshot.as_deref(), Some("st-5"));

    // Deleted, and a new object of that name made later: not the server
    // the restore was about.
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.servers
        .update(Some(NS), "vs-1", |s| {
            s.metadata.finalizers = None;
            true
        })
        .await
        .unwrap();
    assert!(h.servers.get(Some(NS), "vs-1").await.unwrap().is_none());
    h.clock.advance(jiff::SignedDuration::from_hours(1));
    h.order("vs-1", Some("a")).await;
    // Any later fact settles the account's standing again.
    h.report(
        "reminder-9",
        FactKind::ReminderSent {
            invoice: invoice("inv-9"),
        },
    )
    .await;
    runner.pass().await.unwrap();
    let namesake = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(namesake.spec.from_snapshot, None, "{:?}", namesake.spec);
}

/// Two controllers (a leader and a deposed one, or one restarted) taking
/// the same server's backup of the same slot at once, in a loop: one
/// backup object and one `snapshotGib` charge per slot, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r18_two_controllers_taking_the_same_days_backup_make_one_and_charge_once() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    h.clock.set(at("2026-12-07T00:00:00Z"));
    h.edit("vs-1", |spec| {
        spec.backups = Some(stratus_core::resources::BackupSchedule { keep: 30 })
    })
    .await;
    let Outcome::RequeueAt(slot) = h.reconcile("vs-1").await.unwrap() else {
        panic!("no slot");
    };
    let accounts = Resources::<Account>::new(h.store.clone());
    for day in 0..20i64 {
        h.clock.set(
            slot.checked_add(jiff::SignedDuration::from_hours(24 * day))
                .unwrap(),
        );
        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        let taker = || stratus_controller::backups::BackupTaker {
            ctx: &h.ctx,
            servers: &h.servers,
            storage: &h.storage,
            accounts: Some(&accounts),
            defaults: Quota::default(),
            window: stratus_core::backups::DailyWindow::default(),
        };
        let (first, second) = (taker(), taker());
        let (a, b) = tokio::join!(first.run(&server), second.run(&server));
        a.unwrap();
        b.unwrap();
        let taken = backups_of(&h, "vs-1").await;
        assert_eq!(taken.len(), day as usize + 1, "day {day}: {taken:?}");
        assert_eq!(
            h.ctx.ledger.quotas().usage(NS).await.unwrap().snapshot_gib,
            25 * (day as u64 + 1),
            "day {day}: charged once"
        );
    }
}

/// The wipe of a snapshot being deleted (storage reconciler) and the first
/// disk of a server ordered from it (server reconciler) run at once, in a
/// loop, the server placed beforehand in half the rounds: the server is
/// either made with the snapshot's data or left waiting without a disk,
/// never made from the image; the snapshot is always wiped in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r18_a_snapshots_wipe_racing_a_server_made_from_it_never_gives_another_disk() {
    let h = harness().await;
    running_server_in_zone_a(&h).await;
    h.sim.write_disk("a1", DOMAIN, b"marker A");
    let (mut made, mut waiting) = (0, 0);
    for round in 0..16 {
        let snapshot = format!("st-{round}");
        let server = format!("vs-r{round}");
        take_snapshot(&h, &snapshot, "vs-1").await;
        settle(&h, &snapshot).await;
        let mut ordered = fixtures::server(&server).in_account(NS).zone("a").build();
        ordered.spec.from_snapshot = Some(snapshot.clone());
        h.servers.create(&ordered).await.unwrap();
        if round % 2 == 0 {
            // Placed where the primary is, its disk not made yet.
            h.sim.fail_next("a1", "ensure", 1);
            let _ = h.reconcile(&server).await;
            assert!(
                h.status(&server).await.hypervisor.is_some(),
                "round {round}"
            );
        }
        let wipe = async {
            h.storage.delete(Some(NS), &snapshot).await.unwrap();
            for _ in 0..10 {
                if h.reconcile_storage(&snapshot).await.is_err()
                    || h.storage.get(Some(NS), &snapshot).await.unwrap().is_none()
                {
                    break;
                }
                tokio::task::yield_now().await;
            }
        };
        let make = async {
            for _ in 0..3 {
                let _ = h.reconcile(&server).await;
                tokio::task::yield_now().await;
            }
        };
        tokio::join!(wipe, make);
        for _ in 0..3 {
            let _ = h.reconcile(&server).await;
            let _ = h.reconcile_storage(&snapshot).await;
        }
        let status = h.status(&server).await;
        let domain = format!("stratus-acc-0000000000000001.{server}");
        if status.provisioned {
            made += 1;
            assert_eq!(
                h.sim.disk_of("a1", &domain).unwrap().content,
                b"marker A",
                "round {round}: made with the snapshot's data"
            );
        } else {
            waiting += 1;
            assert!(
                h.sim.disk_of("a1", &domain).is_none(),
                "round {round}: never a disk from anything else: {status:?}"
            );
            assert!(
                status
                    .reason
                    .as_deref()
                    .unwrap_or_default()
                    .contains(&snapshot),
                "round {round}: says why: {status:?}"
            );
        }
        settle(&h, &snapshot).await;
        assert!(
            h.storage.get(Some(NS), &snapshot).await.unwrap().is_none(),
            "round {round}: the snapshot is wiped in the end"
        );
        // Its room given back for the next round.
        h.servers.delete(Some(NS), &server).await.unwrap();
        for _ in 0..3 {
            let _ = h.reconcile(&server).await;
        }
    }
    println!("{made} servers made from their snapshot, {waiting} left waiting for it");
    assert!(made >= 8, "every placed server is made: {made}");
}
