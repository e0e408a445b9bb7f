//! Addresses held by servers (R19–R22): pools, blacklists, quarantine.

mod support;

use support::*;

/// R19, R22: a server holds an IPv4 address and an IPv6 /64 before its
/// domain exists, keeps them through stops and restarts, and gives them
/// to quarantine when it is gone; the quarantine ends after `ip.quarantine`.
#[tokio::test]
async fn r19_r22_addresses_are_held_before_the_domain_sticky_and_quarantined_at_deletion() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        h.reconcile("vs-1").await.unwrap();
        let status = h.status("vs-1").await;
        let ipv4 = status.ipv4.clone().expect("an IPv4 address");
        let ipv6 = status.ipv6.clone().expect("an IPv6 prefix");
        assert!(ipv4.address.starts_with("192.0.2."), "{label}: {ipv4:?}");
        assert_eq!(
            (ipv4.prefix_length, ipv4.gateway.as_str()),
            (24, "192.0.2.1")
        );
        let prefix = ipv6.prefix.clone().unwrap();
        assert!(
            prefix.starts_with("2001:db8:") && prefix.ends_with("::/64"),
            "{prefix}"
        );
        assert_eq!(ipv6.address, prefix.replace("::/64", "::1"));
        assert!(conditions::is_true(
            &status.conditions,
            ConditionType::AddressesAssigned
        ));

        // Stop, start, and a reconcile after a restart: the same addresses.
        for power in [PowerState::Stopped, PowerState::Running] {
            h.servers
                .update(Some(NS), "vs-1", |s| {
                    s.spec.power = power;
                    true
                })
                .await
                .unwrap();
            h.clock.advance(jiff::SignedDuration::from_secs(600));
            h.reconcile("vs-1").await.unwrap();
            h.reconcile("vs-1").await.unwrap();
        }
        let again = h.status("vs-1").await;
        assert_eq!(
            (again.ipv4, again.ipv6),
            (Some(ipv4.clone()), Some(ipv6.clone())),
            "{label}"
        );

        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        let uid = server.metadata.uid.clone().unwrap();
        h.servers.delete(Some(NS), "vs-1").await.unwrap();
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let ips = h.ledger.ips();
        assert!(ips.held_by(&uid).await.unwrap().is_empty(), "{label}");
        let history = ips.history(&ipv4.address).await.unwrap();
        assert_eq!(history.len(), 1, "{label}");
        assert_eq!(history[0].account, NS);
        assert_eq!(history[0].subject, format!("{NS}/vs-1"));
        assert!(history[0].released_at.is_some());
        let quarantined = ips
            .usage("documentation", stratus_core::ip::Family::V4)
            .await
            .unwrap();
        assert_eq!(
            (quarantined.allocated, quarantined.quarantined),
            (0, 1),
            "{label}"
        );
        // Seven days later the address is free again (no blacklist lists it).
        let pools = h.pool_reconciler();
        pools
            .reconcile(&ObjectKey::new(None, "documentation"))
            .await
            .unwrap();
        assert_eq!(
            ips.usage("documentation", stratus_core::ip::Family::V4)
                .await
                .unwrap()
                .quarantined,
            1
        );
        h.clock.advance(jiff::SignedDuration::from_hours(7 * 24));
        pools
            .reconcile(&ObjectKey::new(None, "documentation"))
            .await
            .unwrap();
        let usage = ips
            .usage("documentation", stratus_core::ip::Family::V4)
            .await
            .unwrap();
        assert_eq!((usage.allocated, usage.quarantined), (0, 0), "{label}");
        let pool = Resources::<IpPool>::new(h.store.clone())
            .get(None, "documentation")
            .await
            .unwrap()
            .unwrap();
        let counts = pool.status.unwrap().ipv4;
        assert_eq!(
            (counts.total, counts.free, counts.allocated),
            (253, 253, 0),
            "{label}"
        );
    }
}

/// Two accounts may name a server alike (Kubernetes mode): on one
/// hypervisor they are two domains, and deleting one leaves the other.
/// A pool written with kubectl that overlaps an older one is the one
/// refused: its status says why and no server is numbered from it.
#[tokio::test]
async fn r19_a_kubectl_pool_overlapping_an_older_one_serves_nothing() {
    let h = harness().await;
    let pools = Resources::<IpPool>::new(h.store.clone());
    let older: Vec<IpPool> = pools
        .list(None)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.zone == "default")
        .collect();
    assert_eq!(older.len(), 1, "the harness's pool of zone default");
    let mut late = older[0].clone();
    late.metadata = kube::api::ObjectMeta {
        name: Some("late".into()),
        ..Default::default()
    };
    late.status = None;
    pools.create(&late).await.unwrap();
    let reconciler = h.pool_reconciler();
    reconciler
        .reconcile(&ObjectKey::new(None, "late"))
        .await
        .unwrap();
    let status = pools
        .get(None, "late")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    let ready = conditions::get(&status.conditions, ConditionType::Ready)
        .cloned()
        .unwrap();
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "Overlapping");
    let older_name = older[0].metadata.name.clone().unwrap();
    assert!(
        ready.message.contains(&format!("IP pool {older_name}")),
        "{ready:?}"
    );
    let older_key = ObjectKey::new(None, &older_name);
    reconciler.reconcile(&older_key).await.unwrap();
    let older_status = pools
        .get(None, &older_name)
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert!(conditions::is_true(
        &older_status.conditions,
        ConditionType::Ready
    ));

    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let held = h
        .ledger
        .ips()
        .held_by(
            &h.servers
                .get(Some(NS), "vs-1")
                .await
                .unwrap()
                .unwrap()
                .metadata
                .uid
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        held.iter().all(|holding| holding.pool == older_name),
        "{held:?}"
    );
    assert!(status.ipv4.is_some());
}

/// A listing the sweep found shows on the server (condition and event),
/// and so does its end.
#[tokio::test]
async fn r20_a_listed_address_is_said_on_its_server() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert!(conditions::is_true(
        &status.conditions,
        ConditionType::AddressesClean
    ));
    let ipv4 = status.ipv4.unwrap().address;
    let ips = h.ledger.ips();
    ips.mark_listed(&Listing {
        address: ipv4.clone(),
        pool: "default".into(),
        family: Family::V4,
        slot: 1,
        checked: ipv4.clone(),
        zone: "bl.test".into(),
        reason: "spam trap hit".into(),
        since: 0,
    })
    .await
    .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let condition = conditions::get(&status.conditions, ConditionType::AddressesClean)
        .cloned()
        .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "Blacklisted");
    assert_eq!(
        condition.message,
        format!("{ipv4} is listed by bl.test (spam trap hit)")
    );
    assert_eq!(
        status.phase,
        ServerPhase::Running,
        "the server keeps running"
    );
    ips.clear_listing(&ipv4).await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    assert!(conditions::is_true(
        &h.status("vs-1").await.conditions,
        ConditionType::AddressesClean
    ));
    let events = h.events.about("VirtualServer", "vs-1");
    assert_eq!(
        events[events.len() - 2..],
        [EventReason::AddressListed, EventReason::AddressDelisted],
        "one event per change: {events:?}"
    );
}

/// A server waiting for an address is tried again after as long as it
/// has waited (at least a minute, at most a quarter of an hour), so an
/// exhausted zone costs each waiting server a few checks an hour.
#[tokio::test]
async fn r20_a_server_waiting_for_an_address_is_tried_less_often_the_longer_it_waits() {
    let h = harness().await;
    h.add_hypervisor("hv1", "ams1", 8, 16384).await;
    h.order("vs-1", None).await;
    let mut delays = Vec::new();
    // Waited so far: 0 s, 30 s, 5 min, 1 h.
    for step in [0, 30, 270, 3300] {
        h.clock.advance(jiff::SignedDuration::from_secs(step));
        delays.push(h.reconcile("vs-1").await.unwrap());
    }
    let after = |secs| Outcome::RequeueAfter(Duration::from_secs(secs));
    assert_eq!(
        delays,
        [after(60), after(60), after(5 * 60), after(15 * 60)]
    );
    assert_eq!(
        h.status("vs-1").await.reason.as_deref(),
        Some("no_clean_address: no IP pool serves zone ams1")
    );
}

/// A pool that comes to offer addresses (created, or more of it free)
/// wakes the servers waiting for one at once, not at their next recheck.
#[tokio::test]
async fn r20_a_pool_that_offers_addresses_wakes_the_servers_waiting_for_one() {
    let h = harness().await;
    h.add_hypervisor("hv1", "ams1", 8, 16384).await;
    let (stop, running) = h.run_controller(Duration::from_secs(15));
    h.order("vs-1", None).await;
    let h = &h;
    wait_until("vs-1 waits for an address", || async {
        h.status("vs-1")
            .await
            .reason
            .is_some_and(|r| r.starts_with(lifecycle::NO_CLEAN_ADDRESS))
    })
    .await;
    Resources::<IpPool>::new(h.store.clone())
        .create(&IpPool::new(
            "ams1",
            SeededPool {
                name: "ams1".into(),
                zone: "ams1".into(),
                ipv4: Ipv4Block {
                    cidr: "203.0.113.0/24".into(),
                    gateway: "203.0.113.1".into(),
                    excluded: Vec::new(),
                },
                ipv6: None,
            }
            .spec(),
        ))
        .await
        .unwrap();
    wait_until("vs-1 numbered from the new pool", || async {
        h.status("vs-1")
            .await
            .ipv4
            .is_some_and(|a| a.address.starts_with("203.0.113."))
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn r19_a_hypervisor_that_must_filter_and_cannot_gets_no_server() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    let missing = AntiSpoofing {
        enforced: false,
        required: true,
        detail: Some("nwfilter: this function is not supported".into()),
    };
    h.sim.set_anti_spoofing("hv1", missing);
    h.prober.probe_all().await.unwrap();
    h.prober.probe_all().await.unwrap();
    let hypervisor = h.hypervisors.get(None, "hv1").await.unwrap();
    let condition = conditions::get(
        &hypervisor.unwrap().status.unwrap().conditions,
        ConditionType::AntiSpoofing,
    )
    .cloned()
    .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "FiltersUnavailable");
    assert!(condition.message.contains("not supported"), "{condition:?}");
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable, EventReason::AntiSpoofingUnavailable],
        "one warning, not one per probe"
    );

    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let waiting = h.status("vs-1").await;
    assert_eq!(waiting.phase, ServerPhase::Pending);
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("filter guest traffic"),
        "{waiting:?}"
    );

    h.sim.set_anti_spoofing(
        "hv1",
        AntiSpoofing {
            enforced: true,
            required: true,
            detail: None,
        },
    );
    assert!(
        h.prober.probe_all().await.unwrap() > 0,
        "waiting servers are woken"
    );
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
}
