//! The server reconciler against the simulated agent, with injected
//! faults: placement, power, deletion, adoption, events.

mod support;

use support::*;

#[tokio::test]
async fn an_order_runs_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.phase, ServerPhase::Running, "{label}: {status:?}");
        assert_eq!(
            status.hypervisor.as_ref().map(HypervisorName::as_str),
            Some("hv1")
        );
        assert!(status.provisioned);
        assert!(conditions::is_true(
            &status.conditions,
            ConditionType::Ready
        ));
        assert_eq!(
            h.sim.domains("hv1"),
            [(DOMAIN.to_owned(), Some(DomainState::Running), true)]
        );
        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        assert_eq!(
            server.metadata.finalizers.as_deref(),
            Some(&["stratus.dev/teardown".to_owned()][..])
        );
        assert_eq!(status.observed_generation, server.metadata.generation);
        // The audit log tells the story.
        let server_subject = AuditSubject::Server {
            account: NS.into(),
            name: "vs-1".into(),
        };
        let trail = h.ledger.audit().trail(&server_subject).await.unwrap();
        let phases: Vec<String> = trail
            .iter()
            .filter(|e| e.action == AuditAction::ServerPhase)
            .map(|e| e.detail["to"].to_string())
            .collect();
        assert_eq!(phases, ["\"provisioning\"", "\"running\""], "{label}");
        // The domain got what the plan says.
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disk_gib), (1, 1024, 25));
        assert_eq!(spec.image_volume, "debian-12.qcow2");
        assert_eq!(spec.ipv4, status.ipv4, "{label}");
        assert_eq!(spec.ipv6, status.ipv6, "{label}");
        // The guest's cloud-init seed says who it is and where it is.
        let seed = spec.seed.as_ref().expect("every domain gets a seed");
        assert_eq!(seed.instance_id, "vs-1");
        assert_eq!(seed.hostname, "web1");
        assert_eq!((&seed.ipv4, &seed.ipv6), (&status.ipv4, &status.ipv6));
        assert_eq!(Some(&seed.mac_address), status.mac_address.as_ref());
        assert_eq!(Some(spec.mac_address), status.mac_address);
        assert_eq!(spec.boot, None, "debian-12 boots from its disk");
    }
}

#[tokio::test]
async fn same_named_servers_of_two_accounts_never_share_a_domain() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    const OTHER: &str = "acc-0000000000000002";
    h.order("vs-1", None).await;
    h.servers
        .create(&fixtures::server("vs-1").in_account(OTHER).build())
        .await
        .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconciler
        .reconcile(&ObjectKey::new(Some(OTHER), "vs-1"))
        .await
        .unwrap();
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(domains, [DOMAIN, "stratus-acc-0000000000000002.vs-1"]);
    let mine = h.status("vs-1").await;
    let theirs = h
        .servers
        .get(Some(OTHER), "vs-1")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_ne!(mine.mac_address, theirs.mac_address);

    h.servers.delete(Some(OTHER), "vs-1").await.unwrap();
    h.reconciler
        .reconcile(&ObjectKey::new(Some(OTHER), "vs-1"))
        .await
        .unwrap();
    assert_eq!(
        h.sim.domains("hv1"),
        [(DOMAIN.to_owned(), Some(DomainState::Running), true)],
        "the other account's server and disk are untouched"
    );
    assert_eq!(
        h.ledger.macs().held().await.unwrap(),
        1,
        "its MAC was released"
    );
}

/// A server placed by an earlier release (domain named after the object
/// alone, MAC hashed from the name) keeps both; the ledger now holds its MAC.
#[tokio::test]
async fn a_server_placed_by_an_earlier_release_keeps_its_domain_and_mac() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    // Rewind the hypervisor, the status and the ledger to what the earlier
    // release left.
    h.sim.rename_domain("hv1", DOMAIN, "stratus-vs-1");
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let uid = server.metadata.uid.clone().unwrap();
    let mut legacy = server.status.clone().unwrap();
    let mac = legacy.mac_address.clone().unwrap();
    legacy.domain = None;
    h.servers
        .patch_status(Some(NS), "vs-1", &legacy)
        .await
        .unwrap();
    h.ledger.macs().release(&uid, 0).await.unwrap();

    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.domain.as_deref(), Some("stratus-vs-1"));
    assert_eq!(status.phase, ServerPhase::Running, "{status:?}");
    assert_eq!(status.mac_address.as_deref(), Some(mac.as_str()));
    assert_eq!(
        h.ledger.macs().held_by(&uid).await.unwrap().as_deref(),
        Some(mac.as_str())
    );
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(domains, ["stratus-vs-1"], "no second domain was created");
}

/// Defect 12 of issue 25: an earlier release named domains after the
/// server alone, so same-named servers of two accounts on one hypervisor
/// share that name. A server whose domain was never recorded adopts the
/// legacy domain only when it carries its own MAC; another account's is
/// never adopted (deleting one would have wiped the other's disk), and
/// the server is told its own disk is missing rather than given a new one.
#[tokio::test]
async fn a_legacy_domain_of_another_account_is_never_adopted() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    // The other account's server of the same name holds the legacy name.
    h.sim.rename_domain("hv1", DOMAIN, "stratus-vs-1");
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let mut legacy = server.status.clone().unwrap();
    legacy.domain = None;
    legacy.mac_address = Some("52:54:00:aa:bb:cc".into());
    h.servers
        .patch_status(Some(NS), "vs-1", &legacy)
        .await
        .unwrap();
    let _ = h.reconcile("vs-1").await;
    let status = h.status("vs-1").await;
    assert_eq!(
        status.domain.as_deref(),
        Some(DOMAIN),
        "today's name, never the other account's domain"
    );
    assert_ne!(status.phase, ServerPhase::Running, "{status:?}");
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(
        domains,
        ["stratus-vs-1"],
        "the other domain is untouched and no empty disk was made"
    );
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    for _ in 0..4 {
        let _ = h.reconcile("vs-1").await;
    }
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(
        domains,
        ["stratus-vs-1"],
        "deleting this server leaves the other's domain"
    );
}

#[tokio::test]
async fn reconciling_again_changes_nothing() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let before = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let calls = h.sim.calls().len();
    for _ in 0..3 {
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    }
    let after = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "no write when nothing changed"
    );
    let new_calls = &h.sim.calls()[calls..];
    assert!(
        new_calls.iter().all(|c| c.starts_with("observe")),
        "{new_calls:?}"
    );
    assert_eq!(h.sim.domains("hv1").len(), 1);
}

#[tokio::test]
async fn a_crash_between_agent_and_status_is_adopted_not_duplicated() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // The agent fails after the placement was recorded, as if the controller died there.
    h.sim.fail_next("hv1", "ensure", 1);
    assert!(h.reconcile("vs-1").await.is_err());
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Provisioning);
    assert_eq!(
        status.hypervisor.as_ref().map(HypervisorName::as_str),
        Some("hv1"),
        "the choice is recorded before acting"
    );
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::AgentReachable
    ));
    // The retry converges to one running domain.
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
    assert_eq!(h.sim.domains("hv1").len(), 1);
}

#[tokio::test]
async fn an_unreachable_agent_leaves_the_server_provisioning_with_a_reason() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // Reachable when probed, gone when the server is provisioned.
    h.sim.set_reachable("hv1", false);
    let err = h.reconcile("vs-1").await.unwrap_err();
    assert_eq!(err.metric_label(), "agent_unreachable");
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Provisioning);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::AgentReachable)
        .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert!(
        condition.message.contains("connection refused"),
        "{condition:?}"
    );
    h.sim.set_reachable("hv1", true);
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
}

#[tokio::test]
async fn a_vanished_disk_is_reported_and_not_recreated() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.sim.lose_disk("hv1", DOMAIN);
    let calls_before = h.sim.calls().len();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Error);
    assert!(
        status.reason.as_deref().unwrap().contains("disk"),
        "{status:?}"
    );
    let new_calls = &h.sim.calls()[calls_before..];
    assert!(
        new_calls.iter().all(|c| c.starts_with("observe")),
        "nothing was created again: {new_calls:?}"
    );
    assert!(h.sim.domains("hv1").iter().all(|(_, _, disk)| !disk));
}

/// A guest that ignores ACPI does not hold a worker: the reconcile asks,
/// returns with a recheck, and a later one powers the guest off once the
/// grace period is over.
#[tokio::test]
async fn a_guest_ignoring_shutdown_is_powered_off_after_the_grace_period() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.sim.guests_ignore_acpi("hv1");
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.edit("vs-1", |s| s.power = PowerState::Stopped).await;
    let outcome = h.reconcile("vs-1").await.unwrap();
    assert!(
        matches!(outcome, Outcome::RequeueAfter(after) if after <= Duration::from_secs(5)),
        "{outcome:?}"
    );
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
    let asked = |h: &Harness| {
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("ensure"))
            .count()
    };
    let asked_once = asked(&h);
    h.clock.advance(jiff::SignedDuration::from_secs(60));
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        asked(&h),
        asked_once,
        "no second shutdown request within the grace period"
    );
    h.clock.advance(jiff::SignedDuration::from_secs(120));
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Stopped));
    let forced = h.sim.spec_of("hv1", DOMAIN).unwrap();
    assert!(forced.power_off, "the last call powered it off");
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Stopped);
    assert_eq!(status.stop_requested_at, None);
}

/// Defect 10 of issue 25: a domain that runs while its guest stopped
/// booting (its console shows why) is not called running and ready: the
/// server says the guest did not come up, with what its console showed.
#[tokio::test]
async fn a_guest_that_did_not_come_up_is_said_so_not_called_ready() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Running);
    assert!(conditions::is_true(
        &status.conditions,
        ConditionType::GuestBooted
    ));
    h.sim.fail_boot(
        "hv1",
        DOMAIN,
        "its root file system is larger than its disk (EXT4-fs (vda): bad geometry)",
    );
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("the guest did not come up: its root file system is larger"),
        "{status:?}"
    );
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::GuestBooted
    ));
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::Ready
    ));
}

#[tokio::test]
async fn power_changes_follow_the_spec() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.edit("vs-1", |s| s.power = PowerState::Stopped).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Stopped);
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Stopped));
    h.edit("vs-1", |s| s.power = PowerState::Running).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
    h.edit("vs-1", |s| s.reboot_requests += 1).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("reboot"))
            .count(),
        1
    );
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("reboot"))
            .count(),
        1,
        "one reboot per request"
    );
    assert_eq!(h.status("vs-1").await.reboots_done, 1);
    // A reboot that failed on a transient error is retried, not marked done.
    h.edit("vs-1", |s| s.reboot_requests += 1).await;
    h.sim.fail_next("hv1", "reboot", 1);
    assert!(h.reconcile("vs-1").await.is_err());
    assert_eq!(h.status("vs-1").await.reboots_done, 1, "not done yet");
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.reboots_done, 2);
    let reboots = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.starts_with("reboot"))
        .count();
    assert_eq!(reboots, 3, "the failed reboot was tried again");
    // A guest that powers itself off is started again: the customer asked for running.
    h.sim.power_off("hv1", DOMAIN);
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
}

#[tokio::test]
async fn deletion_destroys_then_releases_the_object() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // What the API charged the account for it.
    let quotas = h.ledger.quotas();
    let charge = Usage {
        servers: 1,
        vcpus: 1,
        memory_mib: 1024,
        disk_gib: 25,
        storage_gib: 0,
        snapshot_gib: 0,
    };
    let charged = charged_object(NS, "vs-1");
    quotas
        .charge(NS, &charged, charge, Quota::default(), 0)
        .await
        .unwrap()
        .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.sim.set_reachable("hv1", false);
    assert!(
        h.reconcile("vs-1").await.is_err(),
        "agent down: the finalizer stays"
    );
    assert_eq!(
        quotas.usage(NS).await.unwrap(),
        charge,
        "held until torn down"
    );
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Terminating);
    h.sim.set_reachable("hv1", true);
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert!(h.servers.get(Some(NS), "vs-1").await.unwrap().is_none());
    assert!(h.sim.domains("hv1").is_empty());
    assert_eq!(
        quotas.usage(NS).await.unwrap(),
        Usage::default(),
        "the quota is given back"
    );
    assert_eq!(
        h.reconcile("vs-1").await.unwrap(),
        Outcome::Done,
        "reconciling a gone server is harmless"
    );
    let destroyed = h.audited("vs-1", AuditAction::ServerDestroyed).await;
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0]["disk"], "wiped");
}

/// Where storage cannot overwrite a disk, the audit and an operator-visible
/// warning say "deleted without wipe"; nothing claims a wipe.
#[tokio::test]
async fn a_disk_deleted_without_wipe_is_said_so() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.sim.cannot_wipe("hv1");
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let destroyed = h.audited("vs-1", AuditAction::ServerDestroyed).await;
    assert_eq!(destroyed[0]["disk"], "deleted without wipe");
    assert!(
        h.events
            .about("VirtualServer", "vs-1")
            .contains(&EventReason::DiskNotWiped)
    );
}

#[tokio::test]
async fn scheduling_respects_zone_and_capacity() {
    let h = harness().await;
    h.add_hypervisor("par-a", "par1", 2, 2048).await;
    h.add_hypervisor("ams-a", "ams1", 8, 16384).await;
    h.order("vs-1", Some("par1")).await;
    h.order("vs-2", Some("par1")).await;
    h.order("vs-3", Some("par1")).await;
    h.order("vs-4", Some("lon1")).await;
    for name in ["vs-1", "vs-2"] {
        h.reconcile(name).await.unwrap();
        assert_eq!(
            h.status(name)
                .await
                .hypervisor
                .as_ref()
                .map(HypervisorName::as_str),
            Some("par-a")
        );
        assert_eq!(
            h.status(name).await.zone.as_deref(),
            Some("par1"),
            "the zone it runs in is recorded with the placement"
        );
    }
    assert_eq!(
        h.reconcile("vs-3").await.unwrap(),
        Outcome::RequeueAfter(UNSCHEDULABLE_RECHECK)
    );
    let full = h.status("vs-3").await;
    assert_eq!(full.phase, ServerPhase::Pending);
    assert!(
        full.reason
            .as_deref()
            .unwrap()
            .contains("no hypervisor in zone par1 has room"),
        "{full:?}"
    );
    h.reconcile("vs-4").await.unwrap();
    assert!(h.status("vs-4").await.reason.unwrap().contains("lon1"));
    // Room appears when a server goes away.
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-3").await.unwrap();
    assert_eq!(h.status("vs-3").await.phase, ServerPhase::Running);
}

/// A waiting server costs nothing while it waits: it is not retried on a
/// short timer, but woken by what could place it.
#[tokio::test]
async fn a_waiting_server_is_woken_by_freed_room_and_by_new_capacity() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 2, 2048).await;
    let (stop, controller) = h.run_controller(Duration::from_millis(100));
    for name in ["vs-1", "vs-2", "vs-3"] {
        h.order(name, None).await;
    }
    let h = &h;
    let placed =
        |name: &'static str| async move { h.status(name).await.phase == ServerPhase::Running };
    // Reconciled concurrently: any two of the three get the room (orders
    // are not placed in the order they came), the third waits.
    let split = || async {
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        for name in ["vs-1", "vs-2", "vs-3"] {
            let status = h.status(name).await;
            if status.phase == ServerPhase::Running {
                running.push(name);
            } else if status.phase == ServerPhase::Pending && status.reason.is_some() {
                waiting.push(name);
            }
        }
        (running, waiting)
    };
    wait_until("two servers placed, one waiting", || async {
        let (running, waiting) = split().await;
        running.len() == 2 && waiting.len() == 1
    })
    .await;
    let (placed_first, waiting) = split().await;

    // Room freed by a deletion is taken at once, well before any recheck.
    h.servers.delete(Some(NS), placed_first[0]).await.unwrap();
    wait_until("the waiting one placed in freed room", || {
        placed(waiting[0])
    })
    .await;

    // A hypervisor that reports more capacity wakes the next waiting one.
    h.order("vs-4", None).await;
    wait_until("vs-4 waits", || async {
        h.status("vs-4").await.reason.is_some()
    })
    .await;
    h.sim.set_capacity("hv1", 4, 4096);
    wait_until("vs-4 placed on grown capacity", || placed("vs-4")).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), controller)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn concurrent_orders_never_overbook_a_hypervisor() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 4, 4096).await;
    h.add_hypervisor("hv2", "default", 4, 4096).await;
    let names: Vec<String> = (0..10).map(|i| format!("vs-{i}")).collect();
    for name in &names {
        h.order(name, None).await;
    }
    let runs = names.iter().map(|n| h.reconcile(n));
    futures::future::join_all(runs).await;
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for name in &names {
        if let Some(hv) = h.status(name).await.hypervisor {
            *per_host.entry(hv.to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_host.get("hv1"), Some(&4), "{per_host:?}");
    assert_eq!(per_host.get("hv2"), Some(&4), "{per_host:?}");
}

#[tokio::test]
async fn the_controller_runtime_drives_orders_from_watch_events() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    let (stop, running) = h.run_controller(Duration::from_secs(15));
    h.order("vs-1", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.status("vs-1").await.phase != ServerPhase::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not reach running: {:?}",
            h.status("vs-1").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    while h.servers.get(Some(NS), "vs-1").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server was not torn down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_new_hypervisor_is_probed_and_used_at_once() {
    let h = harness().await;
    let (stop, running) = h.run_controller(Duration::from_secs(3600));
    h.order("vs-1", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.status("vs-1").await.reason.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no placement attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Pending);
    assert!(
        h.status("vs-1")
            .await
            .reason
            .unwrap()
            .contains("no reachable hypervisor in any zone")
    );

    // Registered without probing: the controller's watch must probe it, and
    // the waiting server must not wait for its recheck.
    h.sim
        .add_node("hv1", "default", 8, 16384, 1000, &["debian-12.qcow2"]);
    h.hypervisors
        .create(&fixtures::hypervisor("hv1").credential("hv-token").build())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while h.status("vs-1").await.phase != ServerPhase::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server not placed promptly: {:?}",
            h.status("vs-1").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn servers_and_hypervisors_explain_themselves_in_events() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable]
    );
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.events.about("VirtualServer", "vs-1"),
        [EventReason::Provisioning, EventReason::Running]
    );
    h.sim.set_reachable("hv1", false);
    h.prober.probe_all().await.unwrap();
    h.prober.probe_all().await.unwrap();
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable, EventReason::Unreachable],
        "one event per change, not per probe"
    );
}

/// Moves `name` to a plan of 2 vCPU, 4 GiB memory and a 50 GiB disk.
async fn ask_resize(h: &Harness, name: &str) {
    h.edit(name, |spec| {
        spec.plan = "medium".into();
        spec.resources = ServerResources {
            vcpus: 2,
            memory_mib: 4096,
            disk_gib: 50,
        };
    })
    .await;
}

#[tokio::test]
async fn r23_a_resize_stops_remakes_and_starts_the_server_and_bills_the_change_once() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let before = h.status("vs-1").await;
        assert_eq!(
            before.applied.as_ref().map(|a| a.plan.as_str()),
            Some("small")
        );

        ask_resize(&h, "vs-1").await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.resize, None, "{label}: {status:?}");
        assert_eq!(
            status.applied.as_ref().map(|a| a.plan.as_str()),
            Some("medium")
        );
        assert_eq!(status.phase, ServerPhase::Running, "{label}");
        let resized = conditions::get(&status.conditions, ConditionType::Resized).unwrap();
        assert_eq!(resized.status, ConditionStatus::True, "{label}");
        assert!(resized.message.contains("was down"), "{}", resized.message);
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disk_gib), (2, 4096, 50));
        assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
        // Stopped before it was made again, started after.
        let calls = h.sim.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("ensure")),
            "{label}: {calls:?}"
        );
        assert!(
            h.events
                .about("VirtualServer", "vs-1")
                .contains(&EventReason::Resized),
            "{label}"
        );
        // Billing hears of the change once, however often it is looked at.
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
        let charges = h.ledger.charges().of_account(NS, 100).await.unwrap();
        let changes: Vec<_> = charges
            .iter()
            .filter(|c| c.kind == "plan_changed")
            .collect();
        assert_eq!(changes.len(), 1, "{label}: {charges:?}");
        assert_eq!(changes[0].detail["from"], "small");
        assert_eq!(changes[0].detail["to"], "medium");
        assert_eq!(changes[0].amount, 0);
    }
}

#[tokio::test]
async fn r23_a_resize_without_room_waits_with_the_server_running_until_room_is_freed() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        // Room for two small servers (1 vCPU each), not for a medium beside one.
        h.add_hypervisor("hv1", "default", 2, 16384).await;
        h.order("vs-1", None).await;
        h.order("vs-2", None).await;
        h.reconcile("vs-1").await.unwrap();
        h.reconcile("vs-2").await.unwrap();

        ask_resize(&h, "vs-1").await;
        let outcome = h.reconcile("vs-1").await.unwrap();
        assert!(
            matches!(outcome, Outcome::RequeueAfter(_)),
            "{label}: {outcome:?}"
        );
        let status = h.status("vs-1").await;
        let waiting = conditions::get(&status.conditions, ConditionType::Resized).unwrap();
        assert_eq!(waiting.reason, "InsufficientCapacity", "{label}");
        assert!(
            waiting.message.contains("lacks 1 vCPU"),
            "{}",
            waiting.message
        );
        assert_eq!(status.applied.as_ref().unwrap().plan, "small");
        assert_eq!(status.phase, ServerPhase::Running);
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        assert_eq!(
            spec.vcpus, 1,
            "{label}: the domain keeps its plan while it waits"
        );
        assert!(
            h.events
                .about("VirtualServer", "vs-1")
                .contains(&EventReason::ResizeWaiting)
        );
        // The other server goes: room is freed and the resize goes on.
        h.servers.delete(Some(NS), "vs-2").await.unwrap();
        for _ in 0..3 {
            h.reconcile("vs-2").await.unwrap();
        }
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.applied.as_ref().unwrap().plan, "medium", "{label}");
        assert_eq!(status.resize, None);
    }
}

#[tokio::test]
async fn r23_kubernetes_mode_a_plan_edited_alone_takes_the_catalogues_size() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        h.reconcile("vs-1").await.unwrap();

        // A plan the catalogue does not offer: refused, it runs on.
        h.edit("vs-1", |spec| spec.plan = "gigantic".into()).await;
        h.reconcile("vs-1").await.unwrap();
        let status = h.status("vs-1").await;
        let refused = conditions::get(&status.conditions, ConditionType::Resized).unwrap();
        assert_eq!(refused.reason, "Invalid", "{label}");
        assert_eq!(status.applied.as_ref().unwrap().plan, "small");
        assert_eq!(h.sim.spec_of("hv1", DOMAIN).unwrap().vcpus, 1);

        // `kubectl edit` of spec.plan alone: sized as the catalogue says.
        h.edit("vs-1", |spec| spec.plan = "medium".into()).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        assert_eq!(
            (
                server.spec.resources.vcpus,
                server.spec.resources.memory_mib,
                server.spec.resources.disk_gib
            ),
            (2, 4096, 80),
            "{label}"
        );
        let status = h.status("vs-1").await;
        assert_eq!(status.applied.as_ref().unwrap().plan, "medium", "{label}");
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disk_gib), (2, 4096, 80));
    }
}

fn ask_rebuild(
    spec: &mut stratus_core::resources::VirtualServerSpec,
    image: &str,
    generation: u32,
) {
    spec.rebuild = Some(stratus_core::resources::RebuildRequest {
        image: image.into(),
        snapshot: None,
        instance_generation: None,
        generation,
        ssh_keys: None,
        user_data: None,
    });
}

#[tokio::test]
async fn a_rebuild_stops_the_server_gives_it_a_fresh_disk_and_a_new_seed_and_starts_it() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.sim.add_image("hv1", "alma-9.qcow2");
        h.order("vs-1", None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let before = h.status("vs-1").await;
        assert_eq!(before.image.as_deref(), Some("debian-12"), "{label}");
        let seed_before = h.sim.spec_of("hv1", DOMAIN).unwrap().seed.unwrap();
        let mac_before = before.mac_address.clone();

        h.edit("vs-1", |spec| ask_rebuild(spec, "alma-9", 1)).await;
        // The answer of the call that put the new disk in is lost (the
        // agent killed after acting): looked at again, the rebuild goes on.
        h.sim.lose_next_answers("hv1", "ensure", 2);
        for _ in 0..3 {
            if h.reconcile("vs-1").await.is_ok() {
                break;
            }
        }
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.rebuild, None, "{label}: {status:?}");
        assert_eq!(status.disk_generation, 1);
        assert_eq!(status.image.as_deref(), Some("alma-9"));
        assert_eq!(status.phase, ServerPhase::Running, "{label}");
        assert_eq!(status.mac_address, mac_before, "the MAC is kept");
        assert_eq!(status.ipv4, before.ipv4, "the address is kept");
        let rebuilt = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
        assert_eq!(rebuilt.status, ConditionStatus::True, "{label}");
        assert!(rebuilt.message.contains("alma-9"), "{}", rebuilt.message);
        let disk = h.sim.disk_of("hv1", DOMAIN).unwrap();
        assert_eq!(disk.generation, 1);
        assert_eq!(disk.image.as_deref(), Some("alma-9.qcow2"));
        assert!(disk.leftovers.is_empty(), "{label}: the old disk is wiped");
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        let seed = spec.seed.unwrap();
        assert_ne!(
            seed.instance_id, seed_before.instance_id,
            "cloud-init runs again"
        );
        assert_eq!(spec.retired_disk_generation, Some(0));
        assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
        assert!(
            h.events
                .about("VirtualServer", "vs-1")
                .contains(&EventReason::Rebuilt),
            "{label}"
        );
        // Nothing more to do, however often it is looked at.
        let calls = h.sim.calls().len();
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
        assert!(
            !h.sim.calls()[calls..]
                .iter()
                .any(|c| c.starts_with("ensure")),
            "{label}"
        );
    }
}

#[tokio::test]
async fn a_rebuild_waits_while_the_server_is_suspended_and_its_guest_runs_on_its_disk() {
    use stratus_core::policy::SuspensionMode;
    use stratus_core::standing::{Suspension, SuspensionReason};
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.sim.add_image("hv1", "alma-9.qcow2");
        h.order("vs-1", None).await;
        h.reconcile("vs-1").await.unwrap();
        h.edit("vs-1", |spec| {
            ask_rebuild(spec, "alma-9", 1);
            spec.suspension = Some(Suspension {
                reasons: vec![SuspensionReason::Abuse],
                mode: SuspensionMode::Paused,
            });
        })
        .await;
        h.reconcile("vs-1").await.unwrap();
        let status = h.status("vs-1").await;
        let waiting = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
        assert!(
            waiting.message.contains("waits for"),
            "{label}: {}",
            waiting.message
        );
        assert_eq!(h.sim.disk_of("hv1", DOMAIN).unwrap().generation, 0);
        // Lifted: the rebuild goes on.
        h.edit("vs-1", |spec| spec.suspension = None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.disk_generation, 1, "{label}");
        assert_eq!(h.sim.disk_of("hv1", DOMAIN).unwrap().generation, 1);
    }
}

#[tokio::test]
async fn rescue_mode_boots_the_rescue_image_with_its_own_seed_and_back() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        h.reconcile("vs-1").await.unwrap();
        let normal_seed = h.sim.spec_of("hv1", DOMAIN).unwrap().seed.unwrap();
        h.edit("vs-1", |spec| {
            spec.rescue = Some(stratus_core::resources::RescueRequest {
                ssh_keys: vec!["ssh-ed25519 AAAA rescue".into()],
                user_data: None,
            })
        })
        .await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        assert_eq!(
            h.sim.rescue_of("hv1", DOMAIN).as_deref(),
            Some("debian-12.qcow2"),
            "{label}"
        );
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        let seed = spec.seed.unwrap();
        assert_eq!(seed.ssh_keys, ["ssh-ed25519 AAAA rescue"]);
        assert_ne!(seed.instance_id, normal_seed.instance_id);
        let status = h.status("vs-1").await;
        assert!(status.rescue.is_some(), "{label}");
        assert_eq!(status.rescue_change, None);
        assert_eq!(status.phase, ServerPhase::Running);
        let rescue = conditions::get(&status.conditions, ConditionType::Rescue).unwrap();
        assert_eq!(rescue.status, ConditionStatus::True, "{label}");
        assert!(
            h.events
                .about("VirtualServer", "vs-1")
                .contains(&EventReason::RescueEnabled)
        );

        h.edit("vs-1", |spec| spec.rescue = None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        assert_eq!(h.sim.rescue_of("hv1", DOMAIN), None, "{label}");
        let seed = h.sim.spec_of("hv1", DOMAIN).unwrap().seed.unwrap();
        assert_eq!(seed, normal_seed, "its own system boots as before");
        let status = h.status("vs-1").await;
        assert_eq!(status.rescue, None);
        assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
        assert!(
            h.events
                .about("VirtualServer", "vs-1")
                .contains(&EventReason::RescueDisabled)
        );
    }
}
