//! The deadline runner against facts reported while it settles: many
//! accounts, reporters on several tasks, the runner passing all the while.
//! Whatever the interleaving, each account ends as all its facts say.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stratus_agent_client::simulated::SimulatedAgent;
use stratus_controller::deadlines::DeadlineRunner;
use stratus_controller::{AgentDirectory, Context};
use stratus_core::policy::Policy;
use stratus_core::resources::{Account, Hypervisor, VirtualServer};
use stratus_core::standing::{self, Fact, FactKind};
use stratus_core::testing as fixtures;
use stratus_core::{Clock, ManualClock};
use stratus_store::ledger::{Ledger, NewFact, Recorded};
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::vault::Vault;
use stratus_store::{ObjectStore, Resources, SqlObjectStore};

const ACCOUNTS: usize = 50;
const REPORTERS: usize = 4;
const FACTS_PER_REPORTER: usize = 150;

fn account_id(n: usize) -> String {
    format!("acc-{n:016x}")
}

fn server_name(n: usize) -> String {
    format!("vs-{n}")
}

/// A small deterministic generator: each reporter its own sequence.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// A random hold, release, or abuse report and its release.
fn random_fact(dice: &mut Dice) -> FactKind {
    let server = server_name(dice.roll(2));
    match dice.roll(6) {
        0 => FactKind::LegalHold,
        1 => FactKind::LegalRelease,
        2 => FactKind::KycIncomplete,
        3 => FactKind::KycComplete,
        4 => FactKind::AbuseReport { server },
        _ => FactKind::AbuseRelease { server },
    }
}

async fn run_on(scratch: ScratchDatabase) {
    let label = scratch.label;
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> = Arc::new(
        SqlObjectStore::new(scratch.db.clone(), clock.clone())
            .with_poll_interval(Duration::from_millis(20)),
    );
    let accounts = Resources::<Account>::new(store.clone());
    let servers = Resources::<VirtualServer>::new(store.clone());
    let ledger = Ledger::new(scratch.db.clone());
    let credentials = Arc::new(Vault::new(scratch.db.clone(), &[9u8; 32], clock.clone()).unwrap());
    let directory = AgentDirectory::new(Resources::<Hypervisor>::new(store.clone()), credentials);
    let ctx = Context::new(
        clock.clone(),
        Arc::new(SimulatedAgent::default()),
        directory,
        ledger.clone(),
    );
    for n in 0..ACCOUNTS {
        let account = account_id(n);
        accounts
            .create(&fixtures::account(&account).build())
            .await
            .unwrap();
        for s in 0..2 {
            servers
                .create(
                    &fixtures::server(&server_name(s))
                        .in_account(&account)
                        .build(),
                )
                .await
                .unwrap();
        }
    }
    let policy = Arc::new(Policy::default());
    let runner = Arc::new(DeadlineRunner::new(
        ctx,
        accounts.clone(),
        servers.clone(),
        policy.clone(),
        Duration::from_millis(10),
    ));

    // The runner passes without pause while the reporters report.
    let reporting = Arc::new(AtomicBool::new(true));
    let passing = {
        let runner = runner.clone();
        let reporting = reporting.clone();
        tokio::spawn(async move {
            let mut superseded = 0;
            while reporting.load(Ordering::Relaxed) {
                superseded += runner.pass().await.unwrap().superseded;
                tokio::task::yield_now().await;
            }
            superseded
        })
    };
    let reporters: Vec<_> = (0..REPORTERS)
        .map(|r| {
            let ledger = ledger.clone();
            let now = clock.now().as_millisecond();
            tokio::spawn(async move {
                let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ ((r as u64 + 1) * 0x2545_F491));
                for i in 0..FACTS_PER_REPORTER {
                    let account = account_id(dice.roll(ACCOUNTS));
                    let kind = random_fact(&mut dice);
                    let fact = serde_json::to_value(&kind).unwrap();
                    let recorded = ledger
                        .facts()
                        .record(&NewFact {
                            id: &format!("r{r}-{i}"),
                            account: &account,
                            kind: fact["type"].as_str().unwrap(),
                            fact: &fact,
                            body: &fact,
                            actor: "test",
                            recorded_at: now,
                        })
                        .await
                        .unwrap();
                    assert!(matches!(recorded, Recorded::New(_)));
                    if dice.roll(4) == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    for reporter in reporters {
        reporter.await.unwrap();
    }
    reporting.store(false, Ordering::Relaxed);
    let superseded = passing.await.unwrap();
    // What is still due is carried out by the runner's next passes.
    for _ in 0..10 {
        runner.pass().await.unwrap();
    }
    let now = clock.now();
    assert!(
        ledger
            .facts()
            .due(now.as_millisecond(), 10)
            .await
            .unwrap()
            .is_empty(),
        "{label}: nothing left due"
    );

    let mut held = 0;
    for n in 0..ACCOUNTS {
        let account = account_id(n);
        let facts: Vec<Fact> = ledger
            .facts()
            .of_account(&account, 0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|stored| Fact {
                id: stored.id,
                recorded_at: jiff::Timestamp::from_millisecond(stored.recorded_at).unwrap(),
                kind: serde_json::from_value(stored.fact).unwrap(),
            })
            .collect();
        let replay = standing::standing(&facts, &policy, now);
        for s in 0..2 {
            let name = server_name(s);
            let server = servers.get(Some(&account), &name).await.unwrap().unwrap();
            let expected = replay.suspension_of(&name, &policy);
            held += usize::from(expected.is_some());
            assert_eq!(
                server.spec.suspension,
                expected,
                "{label}: {account}/{name} is not held as its {} facts say",
                facts.len()
            );
        }
        let status = accounts
            .get(None, &account)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap_or_default();
        let reasons: Vec<_> = status.suspensions.iter().map(|s| s.reason).collect();
        let expected: Vec<_> = replay.account_suspensions.keys().copied().collect();
        assert_eq!(reasons, expected, "{label}: {account}'s suspensions");
    }
    eprintln!(
        "{label}: {} facts over {ACCOUNTS} accounts, {superseded} settles overtaken by a fact, {held} servers held at the end",
        REPORTERS * FACTS_PER_REPORTER
    );
}

/// R1–R9 (defect 1 of issue 25): facts reported concurrently with the
/// runner's settles, in random order and of random types from several
/// tasks, all end up carried out: every account's servers and status
/// match a replay of all its facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_r9_facts_reported_during_settles_are_all_carried_out() {
    for scratch in testing::both().await {
        run_on(scratch).await;
    }
}
