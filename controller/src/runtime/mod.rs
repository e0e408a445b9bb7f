//! The reconciler runtime: runs any number of reconcilers, each over one kind
//! of the resource store (either backend).
//!
//! For each reconciler: list then watch its kind and queue the key of every
//! change that matters to it; queue every object again each resync interval;
//! hand keys to a bounded number of workers, one reconcile per key at a time;
//! act on the [`Outcome`]: done, again after a delay, or again at a time.
//! Failures go back to the queue with per-key exponential backoff.
//!
//! What was taken from where:
//! * kube-runtime's `Controller` (`controller/mod.rs`, `runner.rs`): the
//!   reconcile/error-policy pair and `Action::requeue`, bounded concurrency
//!   that never runs one key twice at once; its `scheduler.rs`: a key
//!   scheduled twice is held once and the earlier time wins. Its
//!   `Controller` itself cannot serve the embedded store (it watches through
//!   a kube `Api`), so this runtime watches through [`Resources`].
//! * client-go's workqueue (`queue.go`, `delaying_queue.go`,
//!   `rate_limiting_queue.go`): dirty and processing sets, delayed adds, the
//!   per-item exponential failure limiter kept inside the queue.
//! * omicron's background tasks (`nexus/src/app/background/driver.rs`): work
//!   woken both by a timer and explicitly ([`Requeue`] handles let one
//!   reconciler wake another's keys), one span and metrics per activation.
//!
//! Durable deadlines are [`Outcome::RequeueAt`]: nothing is kept in memory
//! that stored state cannot rebuild, because after a restart the first list
//! reconciles every object and each reconciler recomputes its deadlines.
//!
//! Adding a reconciler for a new kind: a struct, an `impl Reconcile`, and one
//! `runtime.add(...)` line in the wiring.

pub mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::Resource;
use stratus_core::Clock;
use stratus_store::objects::StoredKind;
use stratus_store::{Resources, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::error::ControllerError;
use crate::metrics::ControllerMetrics;
pub use queue::{QueueConfig, QueueKey, WorkQueue};

/// Which object a reconcile is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The account's namespace; `None` for cluster-wide kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    pub fn of<K: Resource>(object: &K) -> Self {
        Self {
            namespace: object.meta().namespace.clone(),
            name: object.meta().name.clone().unwrap_or_default(),
        }
    }
}

impl QueueKey for ObjectKey {
    /// Objects of one account share a lane; cluster-wide objects share one.
    fn fairness(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What the runtime does with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Converged (or gone); changes and the periodic resync bring it back.
    Done,
    /// Look again after this long (still moving, or waiting for room).
    RequeueAfter(Duration),
    /// Look again when the clock reaches this time (a deadline).
    RequeueAt(Timestamp),
}

impl Outcome {
    /// This outcome, or a look at `at` when that comes first.
    pub fn no_later_than(self, at: Timestamp, now: Timestamp) -> Self {
        match self {
            Self::Done => Self::RequeueAt(at),
            Self::RequeueAt(t) => Self::RequeueAt(t.min(at)),
            Self::RequeueAfter(after) => {
                let sooner = SignedDuration::try_from(after)
                    .ok()
                    .and_then(|after| now.checked_add(after).ok())
                    .is_some_and(|then| then <= at);
                if sooner { self } else { Self::RequeueAt(at) }
            }
        }
    }
}

/// What the runtime does with a key after a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Retry with the key's exponential backoff.
    Backoff,
    /// Retry after this long, whatever the failures so far.
    RequeueAfter(Duration),
}

/// Which watched changes queue a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every change, status included.
    AnyChange,
    /// Only new objects and changes of `metadata.generation` (spec edits),
    /// for reconcilers whose own status writes must not wake them again.
    GenerationChanged,
}

#[async_trait]
pub trait Reconcile: Send + Sync + 'static {
    /// The kind whose objects are reconciled.
    type Kind: StoredKind;

    /// Where the objects are read and watched.
    fn resources(&self) -> &Resources<Self::Kind>;

    /// Makes the world match one object. Runs again and again: it must be
    /// idempotent and converge whatever happened before.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError>;

    fn error_policy(&self, _key: &ObjectKey, _error: &ControllerError) -> ErrorAction {
        ErrorAction::Backoff
    }

    fn trigger(&self) -> Trigger {
        Trigger::AnyChange
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Reconciles of one reconciler running at once.
    pub workers: usize,
    /// Every object is queued again this often, changes or not.
    pub resync_interval: Duration,
    /// Pause before listing or watching again after a store error.
    pub watch_retry: Duration,
    pub queue: QueueConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            resync_interval: Duration::from_secs(60),
            watch_retry: Duration::from_secs(1),
            queue: QueueConfig::default(),
        }
    }
}

/// Queues keys of one reconciler from elsewhere (another reconciler, a test).
pub struct Requeue<K> {
    queue: Arc<WorkQueue<ObjectKey>>,
    resources: Resources<K>,
}

impl<K> Clone for Requeue<K> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            resources: self.resources.clone(),
        }
    }
}

impl<K: StoredKind> Requeue<K> {
    /// Queues every object of the kind that `wanted` selects.
    pub async fn matching(&self, wanted: impl Fn(&K) -> bool) -> Result<usize, ControllerError> {
        let mut queued = 0;
        for object in self.resources.list(None).await?.items {
            if wanted(&object) {
                self.queue.add(ObjectKey::of(&object));
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Queues these keys.
    pub fn keys(&self, keys: impl IntoIterator<Item = ObjectKey>) -> usize {
        let mut queued = 0;
        for key in keys {
            self.queue.add(key);
            queued += 1;
        }
        queued
    }
}

/// One registered reconciler, with its kind erased.
trait Runnable: Send {
    fn start(self: Box<Self>, tasks: &mut JoinSet<()>, shared: &Shared);
}

struct Registered<R: Reconcile> {
    reconciler: Arc<R>,
    queue: Arc<WorkQueue<ObjectKey>>,
}

#[derive(Clone)]
struct Shared {
    config: RuntimeConfig,
    metrics: ControllerMetrics,
}

pub struct Runtime {
    shared: Shared,
    clock: Arc<dyn Clock>,
    reconcilers: Vec<Box<dyn Runnable>>,
    queues: Vec<Arc<WorkQueue<ObjectKey>>>,
    /// Loops that are not reconcilers (the deadline runner), started and
    /// stopped with them: only the leader runs them.
    loops: Vec<LoopTask>,
}

type LoopTask = Box<
    dyn FnOnce(watch::Receiver<bool>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

impl Runtime {
    pub fn new(config: RuntimeConfig, clock: Arc<dyn Clock>, metrics: ControllerMetrics) -> Self {
        Self {
            shared: Shared { config, metrics },
            clock,
            reconcilers: Vec::new(),
            loops: Vec::new(),
            queues: Vec::new(),
        }
    }

    /// Registers a reconciler; the handle queues its keys from elsewhere.
    pub fn add<R: Reconcile>(&mut self, reconciler: Arc<R>) -> Requeue<R::Kind> {
        let queue = WorkQueue::new(self.clock.clone(), self.shared.config.queue.clone());
        let handle = Requeue {
            queue: queue.clone(),
            resources: reconciler.resources().clone(),
        };
        self.queues.push(queue.clone());
        self.reconcilers
            .push(Box::new(Registered { reconciler, queue }));
        handle
    }

    /// Runs `task` beside the reconcilers; it gets the shutdown signal.
    pub fn add_loop<F>(&mut self, task: impl FnOnce(watch::Receiver<bool>) -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.loops
            .push(Box::new(move |shutdown| Box::pin(task(shutdown))));
    }

    /// Runs every reconciler until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        for reconciler in self.reconcilers {
            reconciler.start(&mut tasks, &self.shared);
        }
        for task in self.loops {
            tasks.spawn(task(shutdown.clone()));
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
        for queue in &self.queues {
            queue.close();
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        tracing::info!("controller stopped");
    }
}

impl<R: Reconcile> Runnable for Registered<R> {
    fn start(self: Box<Self>, tasks: &mut JoinSet<()>, shared: &Shared) {
        let kind = self.reconciler.resources().kind().kind.clone();
        let generations = Generations::default();
        tasks.spawn(self.queue.clone().run_timer());
        tasks.spawn(watch_into_queue(
            self.reconciler.resources().clone(),
            self.reconciler.trigger(),
            self.queue.clone(),
            shared.config.watch_retry,
            generations.clone(),
        ));
        tasks.spawn(resync(
            self.reconciler.resources().clone(),
            self.queue.clone(),
            shared.config.resync_interval,
            generations,
        ));
        for _ in 0..shared.config.workers.max(1) {
            tasks.spawn(work(
                self.reconciler.clone(),
                self.queue.clone(),
                shared.metrics.clone(),
                kind.clone(),
            ));
        }
    }
}

/// Generations seen, for [`Trigger::GenerationChanged`]: one entry per live
/// object. A deletion missed while a watch was down is pruned at the next
/// resync, so entries never outlive their objects for long.
type Generations = Arc<std::sync::Mutex<HashMap<ObjectKey, Option<i64>>>>;

fn lock(generations: &Generations) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Option<i64>>> {
    generations.lock().unwrap_or_else(|p| p.into_inner())
}

async fn watch_into_queue<K: StoredKind>(
    resources: Resources<K>,
    trigger: Trigger,
    queue: Arc<WorkQueue<ObjectKey>>,
    retry: Duration,
    generations: Generations,
) {
    let mut events = Box::pin(resources.watcher(retry));
    while let Some(event) = events.next().await {
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                let key = ObjectKey::of(&object);
                let wanted = match trigger {
                    Trigger::AnyChange => true,
                    Trigger::GenerationChanged => {
                        let generation = object.meta().generation;
                        lock(&generations).insert(key.clone(), generation) != Some(generation)
                    }
                };
                if wanted {
                    queue.add(key);
                }
            }
            WatchEvent::Deleted(object) => {
                lock(&generations).remove(&ObjectKey::of(&object));
            }
            WatchEvent::Bookmark(_) => {}
        }
    }
}

async fn resync<K: StoredKind>(
    resources: Resources<K>,
    queue: Arc<WorkQueue<ObjectKey>>,
    interval: Duration,
    generations: Generations,
) {
    let mut tick = tokio::time::interval(interval);
    // The watch lists everything as it starts; the first resync is one interval later.
    tick.tick().await;
    loop {
        tick.tick().await;
        match resources.list(None).await {
            Ok(list) => {
                let live: Vec<ObjectKey> = list.items.iter().map(ObjectKey::of).collect();
                let listed: std::collections::HashSet<&ObjectKey> = live.iter().collect();
                lock(&generations).retain(|key, _| listed.contains(key));
                for key in &live {
                    queue.add(key.clone());
                }
            }
            Err(error) => {
                tracing::warn!(kind = %resources.kind().kind, %error, "resync list failed")
            }
        }
    }
}

async fn work<R: Reconcile>(
    reconciler: Arc<R>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: ControllerMetrics,
    kind: String,
) {
    while let Some(key) = queue.next().await {
        let span = tracing::info_span!(
            "reconcile",
            kind = %kind,
            namespace = key.namespace.as_deref().unwrap_or_default(),
            name = %key.name,
        );
        let started = Instant::now();
        let result = reconciler.reconcile(&key).instrument(span.clone()).await;
        metrics.reconciled(
            &kind,
            started.elapsed(),
            result.as_ref().err().map(ControllerError::metric_label),
        );
        match result {
            Ok(Outcome::Done) => queue.forget(&key),
            Ok(Outcome::RequeueAfter(delay)) => {
                queue.forget(&key);
                queue.add_after(key.clone(), delay);
            }
            Ok(Outcome::RequeueAt(at)) => {
                queue.forget(&key);
                queue.add_at(key.clone(), at);
            }
            Err(error) => {
                let retry = match reconciler.error_policy(&key, &error) {
                    ErrorAction::Backoff => queue.retry_with_backoff(key.clone()),
                    ErrorAction::RequeueAfter(delay) => {
                        queue.add_after(key.clone(), delay);
                        delay
                    }
                };
                span.in_scope(|| tracing::warn!(%error, ?retry, "reconcile failed; will retry"));
            }
        }
        metrics.queue_depth(&kind, queue.len());
        queue.done(&key);
    }
}

/// Calls `pass` every `poll` until `shutdown` says stop (a loop for
/// [`Runtime::add_loop`]): a pass that did something is logged with its
/// report, a failed one is logged and the next pass tries again.
pub async fn every<R, F, Fut>(
    what: &'static str,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut pass: F,
) where
    R: std::fmt::Debug + Default + PartialEq,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<R, ControllerError>>,
{
    loop {
        match pass().await {
            Ok(report) if report != R::default() => tracing::debug!(?report, "{what} pass"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "{what} pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
