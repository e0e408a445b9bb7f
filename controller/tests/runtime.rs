//! The generic reconciler runtime with two toy reconcilers on the embedded
//! store: de-duplication, deadlines that survive a restart, backoff, and
//! fairness between accounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use stratus_controller::ControllerError;
use stratus_controller::metrics::ControllerMetrics;
use stratus_controller::runtime::queue::FAIR_STREAK;
use stratus_controller::runtime::{
    ObjectKey, Outcome, QueueConfig, Reconcile, Runtime, RuntimeConfig,
};
use stratus_core::resources::{Account, VirtualServer};
use stratus_core::testing as fixtures;
use stratus_core::{Clock, ManualClock};
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::{ObjectStore, Resources, SqlObjectStore};
use tokio::sync::{Semaphore, watch};

const DEADLINE: &str = "test.stratus.dev/deadline";
const WAIT: Duration = Duration::from_secs(10);

/// Records every reconcile; fails the first `failures[name]` reconciles of a
/// key; holds each reconcile until the gate lets it through.
struct Recorder {
    servers: Resources<VirtualServer>,
    /// Reconciles started (at the gate or past it).
    entered: std::sync::atomic::AtomicUsize,
    seen: Mutex<Vec<(ObjectKey, Instant)>>,
    failures: Mutex<HashMap<String, u32>>,
    gate: Semaphore,
}

#[async_trait]
impl Reconcile for Recorder {
    type Kind = VirtualServer;

    fn resources(&self) -> &Resources<VirtualServer> {
        &self.servers
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let permit = self.gate.acquire().await;
        drop(permit);
        self.seen
            .lock()
            .unwrap()
            .push((key.clone(), Instant::now()));
        let mut failures = self.failures.lock().unwrap();
        if let Some(left) = failures.get_mut(&key.name)
            && *left > 0
        {
            *left -= 1;
            return Err(ControllerError::Malformed(
                key.name.clone(),
                "injected".into(),
            ));
        }
        Ok(Outcome::Done)
    }
}

impl Recorder {
    fn times(&self, name: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.name == name)
            .map(|(_, at)| *at)
            .collect()
    }

    fn order(&self) -> Vec<ObjectKey> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Acts on an account once the clock reaches the deadline in its annotation,
/// and asks to be woken then: the deadline lives in stored state only.
struct Deadlines {
    accounts: Resources<Account>,
    clock: Arc<dyn Clock>,
    fired: Mutex<Vec<String>>,
}

#[async_trait]
impl Reconcile for Deadlines {
    type Kind = Account;

    fn resources(&self) -> &Resources<Account> {
        &self.accounts
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        let Some(account) = self.accounts.get(None, &key.name).await? else {
            return Ok(Outcome::Done);
        };
        let Some(deadline) = account
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEADLINE))
            .and_then(|raw| raw.parse::<Timestamp>().ok())
        else {
            return Ok(Outcome::Done);
        };
        if self.clock.now() < deadline {
            return Ok(Outcome::RequeueAt(deadline));
        }
        let mut fired = self.fired.lock().unwrap();
        if !fired.contains(&key.name) {
            fired.push(key.name.clone());
        }
        Ok(Outcome::Done)
    }
}

struct Setup {
    _scratch: ScratchDatabase,
    clock: Arc<ManualClock>,
    store: Arc<dyn ObjectStore>,
}

async fn setup() -> Setup {
    let scratch = testing::sqlite().await;
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> = Arc::new(
        SqlObjectStore::new(scratch.db.clone(), clock.clone())
            .with_poll_interval(Duration::from_millis(20)),
    );
    Setup {
        _scratch: scratch,
        clock,
        store,
    }
}

impl Setup {
    fn recorder(&self, open: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            servers: Resources::new(self.store.clone()),
            entered: Default::default(),
            seen: Mutex::default(),
            failures: Mutex::default(),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
        })
    }

    fn deadlines(&self) -> Arc<Deadlines> {
        Arc::new(Deadlines {
            accounts: Resources::new(self.store.clone()),
            clock: self.clock.clone(),
            fired: Mutex::default(),
        })
    }

    /// Both toy reconcilers on one runtime.
    fn start(
        &self,
        workers: usize,
        recorder: &Arc<Recorder>,
        deadlines: &Arc<Deadlines>,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let config = RuntimeConfig {
            workers,
            resync_interval: Duration::from_secs(3600),
            watch_retry: Duration::from_millis(50),
            queue: QueueConfig {
                backoff_base: Duration::from_millis(50),
                backoff_max: Duration::from_secs(5),
                clock_poll: Duration::from_millis(20),
            },
        };
        let mut runtime = Runtime::new(config, self.clock.clone(), ControllerMetrics::default());
        runtime.add(recorder.clone());
        runtime.add(deadlines.clone());
        let (stop, stopped) = watch::channel(false);
        (stop, tokio::spawn(runtime.run(stopped)))
    }

    async fn account_with_deadline(&self, id: &str, deadline: Timestamp) {
        let mut account = fixtures::account(id).build();
        account.metadata.annotations = Some([(DEADLINE.to_owned(), deadline.to_string())].into());
        Resources::<Account>::new(self.store.clone())
            .create(&account)
            .await
            .unwrap();
    }
}

async fn stop(running: (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    running.0.send(true).unwrap();
    tokio::time::timeout(WAIT, running.1)
        .await
        .unwrap()
        .unwrap();
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn changes_of_a_key_being_reconciled_are_held_once() {
    let s = setup().await;
    let (recorder, deadlines) = (s.recorder(false), s.deadlines());
    let servers = Resources::<VirtualServer>::new(s.store.clone());
    servers
        .create(&fixtures::server("vs-1").build())
        .await
        .unwrap();
    let running = s.start(4, &recorder, &deadlines);
    // The first reconcile is held at the gate while the object changes 20 times.
    eventually("the first reconcile reached the gate", || {
        recorder.entered.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    for i in 0..20u32 {
        servers
            .update(Some(fixtures::ACCOUNT), "vs-1", |s| {
                s.spec.reboot_requests = i + 1;
                true
            })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    recorder.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    eventually("the key ran again after its changes", || {
        recorder.times("vs-1").len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = recorder.times("vs-1").len();
    assert!(
        (2..=3).contains(&runs),
        "21 changes, held once while running: {runs} reconciles"
    );
    stop(running).await;
}

#[tokio::test]
async fn a_deadline_fires_when_the_clock_reaches_it_and_after_a_restart() {
    let s = setup().await;
    let recorder = s.recorder(true);
    let start = s.clock.now();
    s.account_with_deadline(
        "acc-0000000000000001",
        start + SignedDuration::from_hours(1),
    )
    .await;
    s.account_with_deadline(
        "acc-0000000000000002",
        start + SignedDuration::from_hours(48),
    )
    .await;

    let first = s.deadlines();
    let running = s.start(2, &recorder, &first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(first.fired.lock().unwrap().is_empty(), "nothing is due yet");
    // The clock reaches the first deadline while the runtime waits for it.
    s.clock.advance(SignedDuration::from_hours(2));
    eventually("the first deadline fired", || {
        first.fired.lock().unwrap().as_slice() == ["acc-0000000000000001"]
    })
    .await;
    stop(running).await;

    // Down for three days: the second deadline passed while nothing ran.
    s.clock.advance(SignedDuration::from_hours(72));
    let second = s.deadlines();
    let running = s.start(2, &recorder, &second);
    eventually("the missed deadline fired after the restart", || {
        second
            .fired
            .lock()
            .unwrap()
            .contains(&"acc-0000000000000002".to_owned())
    })
    .await;
    stop(running).await;
}

#[tokio::test]
async fn failures_are_retried_with_growing_backoff_then_forgotten() {
    let s = setup().await;
    let (recorder, deadlines) = (s.recorder(true), s.deadlines());
    recorder.failures.lock().unwrap().insert("vs-1".into(), 3);
    Resources::<VirtualServer>::new(s.store.clone())
        .create(&fixtures::server("vs-1").build())
        .await
        .unwrap();
    let running = s.start(2, &recorder, &deadlines);
    eventually("three failures and a success", || {
        recorder.times("vs-1").len() >= 4
    })
    .await;
    let times = recorder.times("vs-1");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 50 ms, 100 ms, 200 ms (timers never fire early).
    for (gap, expected) in gaps.iter().zip([50u64, 100, 200]) {
        assert!(
            *gap >= Duration::from_millis(expected),
            "gaps {gaps:?} must follow the backoff"
        );
    }
    assert!(gaps[2] > gaps[0], "backoff grows: {gaps:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.times("vs-1").len(), 4, "done after the success");
    stop(running).await;
}

#[tokio::test]
async fn one_accounts_thousand_keys_do_not_starve_another_accounts_one() {
    let s = setup().await;
    let (recorder, deadlines) = (s.recorder(false), s.deadlines());
    let servers = Resources::<VirtualServer>::new(s.store.clone());
    let (busy, quiet) = ("acc-00000000000000b1", "acc-00000000000000b2");
    for i in 0..1000 {
        servers
            .create(
                &fixtures::server(&format!("vs-{i:04}"))
                    .in_account(busy)
                    .build(),
            )
            .await
            .unwrap();
    }
    servers
        .create(&fixtures::server("vs-quiet").in_account(quiet).build())
        .await
        .unwrap();
    // One worker: the order of the queue is the order of the reconciles.
    // The gate opens once the first list has queued every key.
    let running = s.start(1, &recorder, &deadlines);
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    eventually("every key was reconciled", || {
        recorder.order().len() >= 1001
    })
    .await;
    let order = recorder.order();
    let position = order.iter().position(|key| key.name == "vs-quiet").unwrap();
    assert!(
        position <= FAIR_STREAK as usize,
        "the quiet account's key waited behind {position} keys of the busy one"
    );
    let busy_names: Vec<&str> = order
        .iter()
        .filter(|key| key.namespace.as_deref() == Some(busy))
        .map(|key| key.name.as_str())
        .collect();
    assert!(
        busy_names.windows(2).all(|w| w[0] < w[1]),
        "the busy account's keys kept their order"
    );
    stop(running).await;
}
