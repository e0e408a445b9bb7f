//! Wiring: watch servers into a work queue, run reconciles on a few workers
//! with per-key backoff, resync everything periodically, probe hypervisors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use stratus_core::resources::VirtualServer;
use stratus_store::{Resources, WatchEvent};
use tokio::sync::watch;

use crate::hypervisors::HypervisorProber;
use crate::queue::WorkQueue;
use crate::servers::{Outcome, ServerReconciler};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Reconciles running at once.
    pub workers: usize,
    /// Every server is looked at again this often, events or not.
    pub resync_interval: Duration,
    pub probe_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            resync_interval: Duration::from_secs(60),
            probe_interval: Duration::from_secs(15),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

type Key = (String, String);

pub struct Controller {
    pub servers: Arc<ServerReconciler>,
    pub prober: Arc<HypervisorProber>,
    pub config: ControllerConfig,
}

impl Controller {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
        let failures: Arc<Mutex<HashMap<Key, u32>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();

        let (prober, probe_queue, servers) = (
            self.prober.clone(),
            queue.clone(),
            self.servers.servers.clone(),
        );
        let probe_interval = self.config.probe_interval;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(probe_interval);
            // The watch below probes every hypervisor as it starts; the
            // periodic round begins one interval later.
            tick.tick().await;
            loop {
                tick.tick().await;
                match prober.probe_all().await {
                    Ok(0) => {}
                    Ok(_) => requeue_unplaced(&servers, &probe_queue).await,
                    Err(error) => tracing::warn!(%error, "hypervisor probe failed"),
                }
            }
        });
        // A hypervisor registered or changed is probed at once rather than at
        // the next tick (status writes do not move the generation, so the
        // prober's own writes do not trigger probes).
        let (prober, probe_queue, servers) = (
            self.prober.clone(),
            queue.clone(),
            self.servers.servers.clone(),
        );
        tasks.spawn(async move {
            let mut probed: HashMap<String, Option<i64>> = HashMap::new();
            let mut events = Box::pin(prober.hypervisors.watcher(Duration::from_secs(1)));
            while let Some(event) = events.next().await {
                let (WatchEvent::Added(hv) | WatchEvent::Modified(hv)) = event else {
                    continue;
                };
                if probed.insert(hv.name_any(), hv.metadata.generation) == Some(hv.metadata.generation) {
                    continue;
                }
                match prober.probe(&hv).await {
                    Ok(true) => requeue_unplaced(&servers, &probe_queue).await,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, hypervisor = %hv.name_any(), "hypervisor probe failed"),
                }
            }
        });

        let watcher_queue = queue.clone();
        let servers = self.servers.servers.clone();
        tasks.spawn(async move {
            let mut events = Box::pin(servers.watcher(Duration::from_secs(1)));
            while let Some(event) = events.next().await {
                match event {
                    WatchEvent::Added(s) | WatchEvent::Modified(s) => {
                        watcher_queue.add((s.namespace().unwrap_or_default(), s.name_any()));
                    }
                    WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => {}
                }
            }
        });

        let resync_queue = queue.clone();
        let servers = self.servers.servers.clone();
        let resync_interval = self.config.resync_interval;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(resync_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                match servers.list(None).await {
                    Ok(list) => {
                        for s in list.items {
                            resync_queue.add((s.namespace().unwrap_or_default(), s.name_any()));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "resync list failed"),
                }
            }
        });

        for _ in 0..self.config.workers.max(1) {
            let queue = queue.clone();
            let reconciler = self.servers.clone();
            let failures = failures.clone();
            let config = self.config.clone();
            tasks.spawn(async move {
                while let Some(key) = queue.next().await {
                    let outcome = reconciler.reconcile(&key.0, &key.1).await;
                    let mut failures_now = failures.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(Outcome::Done) => {
                            failures_now.remove(&key);
                        }
                        Ok(Outcome::RetryAfter(delay)) => {
                            failures_now.remove(&key);
                            queue.add_after(key.clone(), delay);
                        }
                        Err(_) => {
                            let count = failures_now.entry(key.clone()).or_insert(0);
                            *count = count.saturating_add(1);
                            let delay = config
                                .backoff_base
                                .saturating_mul(
                                    2u32.saturating_pow(count.saturating_sub(1).min(16)),
                                )
                                .min(config.backoff_max);
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    drop(failures_now);
                    queue.done(&key);
                }
            });
        }

        let _ = shutdown.wait_for(|stop| *stop).await;
        queue.close();
        tasks.abort_all();
        tracing::info!("controller stopped");
    }
}

/// Servers waiting for a hypervisor get another chance at once when capacity appears.
async fn requeue_unplaced(servers: &Resources<VirtualServer>, queue: &WorkQueue<Key>) {
    match servers.list(None).await {
        Ok(list) => {
            for server in list.items {
                if server
                    .status
                    .as_ref()
                    .is_none_or(|s| s.hypervisor.is_none())
                {
                    queue.add((server.namespace().unwrap_or_default(), server.name_any()));
                }
            }
        }
        Err(error) => tracing::warn!(%error, "listing servers to place failed"),
    }
}
