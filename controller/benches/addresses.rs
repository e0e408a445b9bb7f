//! Address allocation and blacklist checks at a provider's scale; prints
//! figures (no pass/fail).
//!
//! `cargo bench -p stratus-controller --bench addresses`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use stratus_controller::addresses::{Addresses, Allocation, Holder};
use stratus_controller::dnsbl::BlacklistChecker;
use stratus_controller::dnsbl::zone_server::TestZone;
use stratus_core::ManualClock;
use stratus_core::config::{Dnsbl, DnsblZone, ZoneMode};
use stratus_core::policy::Policy;
use stratus_core::resources::{IpPool, IpPoolSpec, Ipv4Block};
use stratus_store::ledger::Ledger;
use stratus_store::{Database, ObjectStore, Resources, SqlObjectStore};

/// Servers numbered in the allocation run.
const SERVERS: usize = 2_000;

fn dnsbl(zone: Option<&TestZone>) -> Dnsbl {
    match zone {
        None => Dnsbl::default(),
        Some(zone) => Dnsbl {
            zones: vec![DnsblZone {
                name: zone.zone().into(),
                mode: ZoneMode::Blocking,
            }],
            resolver: Some(zone.address().to_string()),
            timeout_ms: 2_000,
            concurrency: 16,
        },
    }
}

async fn allocations(label: &str, zone: Option<&TestZone>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Database::connect(&format!("sqlite://{}", dir.path().join("b.db").display()))
        .await
        .expect("database");
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> = Arc::new(SqlObjectStore::new(db.clone(), clock.clone()));
    Resources::<IpPool>::new(store.clone())
        .create(&IpPool::new(
            "bench",
            IpPoolSpec {
                zone: "fra1".into(),
                ipv4: Ipv4Block {
                    cidr: "10.64.0.0/20".into(),
                    gateway: "10.64.0.1".into(),
                    excluded: Vec::new(),
                },
                ipv6: None,
            },
        ))
        .await
        .expect("pool");
    let addresses = Arc::new(Addresses::new(
        Ledger::new(db),
        Resources::new(store),
        Arc::new(BlacklistChecker::new(&dnsbl(zone)).expect("checker")),
        clock,
        Policy::default(),
    ));
    let started = Instant::now();
    // Orders arrive 16 at a time, as the controller's workers take them.
    for batch in (0..SERVERS).collect::<Vec<_>>().chunks(16) {
        let results = join_all(batch.iter().map(|i| {
            let addresses = addresses.clone();
            let holder = Holder {
                uid: format!("uid-{i}"),
                account: "acc-0000000000000001".into(),
                subject: format!("acc-0000000000000001/vs-{i}"),
            };
            async move { addresses.assign(&holder, "fra1").await }
        }))
        .await;
        for result in results {
            assert!(matches!(result, Ok(Allocation::Assigned(_))), "{result:?}");
        }
    }
    let elapsed = started.elapsed();
    println!(
        "allocation ({label}): {SERVERS} servers from a /20 in {:.2} s: {:.0} allocations/s",
        elapsed.as_secs_f64(),
        SERVERS as f64 / elapsed.as_secs_f64()
    );
}

async fn sweep(zone: &TestZone) {
    let checker = BlacklistChecker::new(&dnsbl(Some(zone))).expect("checker");
    // Every 50th address listed, as a bad neighbourhood would have.
    let base = u32::from(Ipv4Addr::new(10, 80, 0, 0));
    for i in (0..4096).step_by(50) {
        zone.list(IpAddr::V4(Ipv4Addr::from(base + i)), "bench listing");
    }
    let started = Instant::now();
    let results =
        join_all((0..4096u32).map(|i| checker.ask(IpAddr::V4(Ipv4Addr::from(base + i))))).await;
    let elapsed = started.elapsed();
    let listed = results
        .iter()
        .filter(|r| matches!(r[0].answer, stratus_core::dnsbl::ZoneAnswer::Listed { .. }))
        .count();
    println!(
        "sweep: 4096 addresses of a /20 against the local zone in {:.2} s: {:.0} addresses/s ({listed} listed)",
        elapsed.as_secs_f64(),
        4096.0 / elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    allocations("no blacklist zone", None).await;
    let zone = TestZone::start("bl.bench").await.expect("zone server");
    allocations("one blacklist zone on 127.0.0.1", Some(&zone)).await;
    sweep(&zone).await;
}
