//! Allocation of addresses against the ledger and a real blacklist zone
//! on 127.0.0.1 (R19-R22), on SQLite and PostgreSQL.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use stratus_controller::addresses::{Addresses, Allocation, Holder, SweepRound};
use stratus_controller::dnsbl::BlacklistChecker;
use stratus_controller::dnsbl::zone_server::{TestZone, ZoneEntry};
use stratus_core::ManualClock;
use stratus_core::config::{Dnsbl, DnsblZone, ZoneMode};
use stratus_core::ip::Family;
use stratus_core::policy::Policy;
use stratus_core::resources::{IpPool, IpPoolSpec, Ipv4Block};
use stratus_store::ledger::{CheckRequest, CheckResult, Ledger};
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::{Database, ObjectStore, Resources, SqlObjectStore};

fn holder(i: usize) -> Holder {
    Holder {
        uid: format!("uid-{i}"),
        account: "acc-0000000000000001".into(),
        subject: format!("acc-0000000000000001/vs-{i}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

struct Setup {
    scratch: ScratchDatabase,
    db: Database,
    store: Arc<dyn ObjectStore>,
    clock: Arc<ManualClock>,
}

async fn setup(scratch: ScratchDatabase, cidr: &str, excluded: &[&str]) -> Setup {
    let clock = Arc::new(ManualClock::at_test_time());
    let db = scratch.db.clone();
    let store: Arc<dyn ObjectStore> = Arc::new(SqlObjectStore::new(db.clone(), clock.clone()));
    let gateway = cidr.replace("0/", "1/");
    let gateway = gateway.split('/').next().unwrap();
    Resources::<IpPool>::new(store.clone())
        .create(&IpPool::new(
            "pool-a",
            IpPoolSpec {
                zone: "fra1".into(),
                ipv4: Ipv4Block {
                    cidr: cidr.into(),
                    gateway: gateway.into(),
                    excluded: excluded.iter().map(|e| (*e).to_owned()).collect(),
                },
                ipv6: None,
            },
        ))
        .await
        .unwrap();
    Setup {
        scratch,
        db,
        store,
        clock,
    }
}

impl Setup {
    /// An allocator on its own database connection pool, as a second
    /// controller would have.
    async fn allocator(&self, dnsbl: &Dnsbl) -> Addresses {
        let own = Database::connect(&self.scratch.url).await.unwrap();
        Addresses::new(
            Ledger::new(own),
            Resources::new(self.store.clone()),
            Arc::new(BlacklistChecker::new(dnsbl).unwrap()),
            self.clock.clone(),
            Policy::default(),
        )
    }
}

fn blocking(zone: &TestZone) -> Dnsbl {
    Dnsbl {
        zones: vec![DnsblZone {
            name: zone.zone().into(),
            mode: ZoneMode::Blocking,
        }],
        resolver: Some(zone.address().to_string()),
        timeout_ms: 300,
        concurrency: 16,
    }
}

fn assigned(allocation: Allocation) -> String {
    match allocation {
        Allocation::Assigned(a) => a[0].holding.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn r20_listed_and_inconclusive_addresses_are_skipped_and_the_order_waits_for_a_clean_one() {
    for scratch in testing::both().await {
        let label = scratch.label;
        // A /29: .2 to .6 can be handed out.
        let s = setup(scratch, "192.0.2.0/29", &[]).await;
        let zone = TestZone::start("bl.test").await.unwrap();
        zone.list(ip("192.0.2.2"), "spam");
        zone.list(ip("192.0.2.3"), "spam");
        zone.set(ip("192.0.2.4"), ZoneEntry::Silent);
        zone.set(
            ip("192.0.2.5"),
            ZoneEntry::Answer {
                code: "127.255.255.254".parse().unwrap(),
                reason: "public resolver".into(),
            },
        );
        let addresses = s.allocator(&blocking(&zone)).await;
        assert_eq!(
            assigned(addresses.assign(&holder(1), "fra1").await.unwrap()),
            "192.0.2.6",
            "{label}"
        );
        // A retry returns the same address without asking again.
        assert_eq!(
            assigned(addresses.assign(&holder(1), "fra1").await.unwrap()),
            "192.0.2.6"
        );
        // Nothing clean is left: the second order waits, with the reason.
        match addresses.assign(&holder(2), "fra1").await.unwrap() {
            Allocation::NoCleanAddress(why) => assert!(why.contains("no clean ipv4"), "{why}"),
            other => panic!("{label}: {other:?}"),
        }
        let ledger = Ledger::new(s.db.clone());
        let ips = ledger.ips();
        // Listed ones are marked; inconclusive ones are not, and never clean.
        assert!(ips.listing("192.0.2.2").await.unwrap().is_some(), "{label}");
        assert!(ips.listing("192.0.2.4").await.unwrap().is_none(), "{label}");
        let checks = ips.checks("192.0.2.5", 10).await.unwrap();
        assert!(
            checks.iter().all(|c| c.result == CheckResult::Error),
            "{label}: {checks:?}"
        );
        assert_eq!(
            ips.usage("pool-a", Family::V4).await.unwrap().blacklisted,
            2
        );
        // Once the silent one answers NXDOMAIN, the order gets it.
        zone.clear(ip("192.0.2.4"));
        assert_eq!(
            assigned(addresses.assign(&holder(2), "fra1").await.unwrap()),
            "192.0.2.4",
            "{label}"
        );
        match addresses.assign(&holder(3), "elsewhere").await.unwrap() {
            Allocation::NoCleanAddress(why) => {
                assert!(why.contains("no IP pool serves zone elsewhere"))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn r21_blacklisted_ip_at_termination_records_cleanup_fee() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let s = setup(scratch, "192.0.2.0/29", &["192.0.2.3-192.0.2.6"]).await;
        // Listings change during the test: answers are not to be kept.
        let zone = TestZone::start_with_ttl("bl.test", 0).await.unwrap();
        let addresses = s.allocator(&blocking(&zone)).await;
        assert_eq!(
            assigned(addresses.assign(&holder(1), "fra1").await.unwrap()),
            "192.0.2.2"
        );
        // The customer got it listed while holding it.
        zone.list(ip("192.0.2.2"), "botnet C&C");
        addresses.release("uid-1").await.unwrap();
        addresses.release("uid-1").await.unwrap();
        let ledger = Ledger::new(s.db.clone());
        let charges = ledger
            .charges()
            .of_account("acc-0000000000000001", 10)
            .await
            .unwrap();
        assert_eq!(charges.len(), 1, "{label}: charged once");
        assert_eq!(
            (charges[0].kind.as_str(), charges[0].amount),
            ("ip_cleanup", 250_000)
        );
        assert_eq!(charges[0].subject, "192.0.2.2");
        assert_eq!(charges[0].detail["reason"], "botnet C&C");
        // Past the quarantine it stays out while listed, and returns once clean.
        s.clock.advance(jiff::SignedDuration::from_hours(8 * 24));
        assert_eq!(
            addresses.return_quarantined("pool-a", 10).await.unwrap(),
            0,
            "{label}"
        );
        assert!(matches!(
            addresses.assign(&holder(2), "fra1").await.unwrap(),
            Allocation::NoCleanAddress(_)
        ));
        zone.clear(ip("192.0.2.2"));
        assert_eq!(
            addresses.return_quarantined("pool-a", 10).await.unwrap(),
            1,
            "{label}"
        );
        assert!(ledger.ips().listing("192.0.2.2").await.unwrap().is_none());
        assert_eq!(
            assigned(addresses.assign(&holder(2), "fra1").await.unwrap()),
            "192.0.2.2"
        );
    }
}

/// R20's sweep: each held address is asked about again once per sweep
/// interval (its schedule in the ledger), a listing is recorded and the
/// server named, an inconclusive answer is retried sooner with backoff,
/// and a round never asks about more than its share.
#[tokio::test]
async fn r20_the_sweep_rechecks_held_addresses_once_per_interval_and_backs_off_inconclusive_ones() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let s = setup(scratch, "192.0.2.0/29", &[]).await;
        let zone = TestZone::start_with_ttl("bl.test", 0).await.unwrap();
        let addresses = s.allocator(&blocking(&zone)).await;
        let mut held = Vec::new();
        for i in 1..=4 {
            held.push(assigned(
                addresses.assign(&holder(i), "fra1").await.unwrap(),
            ));
        }
        let round = addresses.sweep("pool-a", 100).await.unwrap();
        assert_eq!(
            round,
            SweepRound::default(),
            "{label}: just checked, none due"
        );

        zone.list(ip(&held[1]), "spam trap hit");
        zone.set(ip(&held[2]), ZoneEntry::Silent);
        s.clock.advance(jiff::SignedDuration::from_hours(24));
        let round = addresses.sweep("pool-a", 100).await.unwrap();
        assert_eq!(
            (round.clean, round.listed, round.inconclusive),
            (2, 1, 1),
            "{label}"
        );
        assert_eq!(round.changed, ["acc-0000000000000001/vs-2"], "{label}");
        let ledger = Ledger::new(s.db.clone());
        let listing = ledger.ips().listing(&held[1]).await.unwrap().unwrap();
        assert_eq!(listing.reason, "spam trap hit");
        assert_eq!(
            ledger.ips().listings(None, 10).await.unwrap().len(),
            1,
            "{label}: operators see it"
        );
        let latest = ledger.ips().checks(&held[2], 1).await.unwrap();
        assert_eq!(latest[0].result, CheckResult::Error, "{label}");

        // The inconclusive one: again after 1 min, then after 2 more.
        assert_eq!(
            addresses.sweep("pool-a", 100).await.unwrap(),
            SweepRound::default()
        );
        s.clock.advance(jiff::SignedDuration::from_secs(61));
        assert_eq!(
            addresses.sweep("pool-a", 100).await.unwrap().inconclusive,
            1
        );
        s.clock.advance(jiff::SignedDuration::from_secs(61));
        assert_eq!(
            addresses.sweep("pool-a", 100).await.unwrap(),
            SweepRound::default(),
            "{label}: backed off"
        );
        zone.clear(ip(&held[2]));
        s.clock.advance(jiff::SignedDuration::from_secs(60));
        assert_eq!(
            addresses.sweep("pool-a", 100).await.unwrap().clean,
            1,
            "{label}"
        );

        // Delisted by the next day: the server is named again.
        zone.clear(ip(&held[1]));
        s.clock.advance(jiff::SignedDuration::from_hours(24));
        let round = addresses.sweep("pool-a", 2).await.unwrap();
        assert_eq!(round.clean, 2, "{label}: a round asks about its limit only");
        let rest = addresses.sweep("pool-a", 100).await.unwrap();
        assert_eq!(round.clean + rest.clean, 4, "{label}");
        let changed: Vec<String> = round.changed.into_iter().chain(rest.changed).collect();
        assert_eq!(changed, ["acc-0000000000000001/vs-2"], "{label}");
        assert!(ledger.ips().listing(&held[1]).await.unwrap().is_none());
    }
}

/// An operator's check request is answered by asking the zones now; the
/// verdict is on the request, and the holder is named when it changed.
#[tokio::test]
async fn r20_requested_checks_are_answered_in_the_pool_round() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let s = setup(scratch, "192.0.2.0/29", &[]).await;
        let zone = TestZone::start_with_ttl("bl.test", 0).await.unwrap();
        let addresses = s.allocator(&blocking(&zone)).await;
        let held = assigned(addresses.assign(&holder(1), "fra1").await.unwrap());
        zone.list(ip(&held), "listed an hour ago");
        let ledger = Ledger::new(s.db.clone());
        let request = ledger
            .ips()
            .request_check(&CheckRequest {
                id: 0,
                address: held.clone(),
                checked: held.clone(),
                pool: "pool-a".into(),
                family: Family::V4,
                slot: ip(&held)
                    .to_string()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap(),
                requested_by: "token:t1".into(),
                requested_at: 0,
                answered_at: None,
                verdict: None,
            })
            .await
            .unwrap();
        let changed = addresses.answer_requests("pool-a", 10).await.unwrap();
        assert_eq!(changed, ["acc-0000000000000001/vs-1"], "{label}");
        let answered = ledger.ips().requests_about(&held, 1).await.unwrap();
        assert_eq!(answered[0].id, request.id);
        assert_eq!(answered[0].verdict.as_deref(), Some("listed"), "{label}");
        assert!(ledger.ips().listing(&held).await.unwrap().is_some());
        assert!(
            addresses
                .answer_requests("pool-a", 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}: answered once"
        );
    }
}

/// Two controllers (two allocators, each on its own connections) number
/// 200 servers at once from one /24: every address distinct, the rest
/// refused clearly, and nothing leaked after the deletes.
#[tokio::test]
async fn r22_two_racing_allocators_never_hand_out_an_address_twice() {
    for scratch in testing::both().await {
        let label = scratch.label;
        // 200 addresses can be handed out: .2-.201.
        let s = setup(scratch, "203.0.113.0/24", &["203.0.113.202-203.0.113.254"]).await;
        let first = Arc::new(s.allocator(&Dnsbl::default()).await);
        let second = Arc::new(s.allocator(&Dnsbl::default()).await);
        let orders = (0..210).map(|i| {
            let allocator = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { allocator.assign(&holder(i), "fra1").await.unwrap() })
        });
        let mut handed = HashSet::new();
        let mut waiting = 0;
        for order in orders {
            match order.await.unwrap() {
                Allocation::Assigned(a) => {
                    assert!(handed.insert(a[0].holding.clone()), "{label}: twice")
                }
                Allocation::NoCleanAddress(_) => waiting += 1,
            }
        }
        assert_eq!((handed.len(), waiting), (200, 10), "{label}");
        let ips = Ledger::new(s.db.clone());
        let ips = ips.ips();
        assert_eq!(
            ips.usage("pool-a", Family::V4).await.unwrap().allocated,
            200
        );
        for i in 0..210 {
            first.release(&format!("uid-{i}")).await.unwrap();
        }
        let usage = ips.usage("pool-a", Family::V4).await.unwrap();
        assert_eq!((usage.allocated, usage.quarantined), (0, 200), "{label}");
        s.clock.advance(jiff::SignedDuration::from_hours(7 * 24));
        assert_eq!(first.return_quarantined("pool-a", 1000).await.unwrap(), 200);
        assert!(
            ips.unavailable_slots("pool-a", Family::V4)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
    }
}
