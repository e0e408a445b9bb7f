//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never act at once. The decision is `core::leadership`; this
//! module reads and writes the Lease through the resource store (an API
//! server's Lease in Kubernetes mode, the same object in the embedded store).
//!
//! Three things keep leaders from overlapping:
//! * every write carries the resourceVersion read before it, so two
//!   candidates can never both win a round and a deposed leader's renewal
//!   fails;
//! * a follower takes over only after seeing the lease unchanged for a whole
//!   lease duration on its own monotonic clock (clock skew does not matter);
//! * the leader stops acting at its renew deadline (shorter than the lease)
//!   after the start of its last successful renewal, by a local timer, even
//!   when a renewal hangs; the agent client (`HttpAgentClient::fenced`)
//!   refuses calls from then on, so a reconcile already running cannot act
//!   for a deposed leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use stratus_core::Clock;
use stratus_core::leadership::{self, LeaseDecision, LeaseState};
use stratus_store::{Resources, StoreError};
use tokio::sync::watch;

pub struct LeaderElector {
    pub leases: Resources<Lease>,
    /// Namespace of the Lease (the control plane's).
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub clock: Arc<dyn Clock>,
    /// The last version of the lease this replica saw, and when (monotonic).
    observed: Mutex<Option<(String, Duration)>>,
}

/// Another candidate wrote first.
fn lost_race(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }
    )
}

impl LeaderElector {
    pub fn new(
        leases: Resources<Lease>,
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            leases,
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            clock,
            observed: Mutex::new(None),
        }
    }

    /// How long we have seen `lease` as it is now.
    fn unchanged_for(&self, lease: &Lease) -> Duration {
        let spec = lease.spec.clone().unwrap_or_default();
        let version = format!(
            "{}|{:?}|{:?}",
            lease.resource_version().unwrap_or_default(),
            spec.holder_identity,
            spec.renew_time.map(|t| t.0)
        );
        let now = self.clock.monotonic();
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some((seen, since)) if *seen == version => now.saturating_sub(*since),
            _ => {
                *observed = Some((version, now));
                Duration::ZERO
            }
        }
    }

    /// One round: acquires, renews or takes over the lease if it may.
    /// Returns whether we lead afterwards.
    pub async fn try_lead(&self) -> Result<bool, StoreError> {
        let current = self.leases.get(Some(&self.namespace), &self.name).await?;
        let state = current.as_ref().map(|lease| {
            let spec = lease.spec.clone().unwrap_or_default();
            LeaseState {
                holder: spec.holder_identity,
                duration: Duration::from_secs(
                    spec.lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(self.lease_duration.as_secs()),
                ),
                unchanged_for: self.unchanged_for(lease),
            }
        });
        let decision = leadership::decide(state.as_ref(), &self.identity);
        // Informational for people reading the lease; no replica compares it
        // with its own clock.
        let stamp = Some(MicroTime(self.clock.now()));
        let result = match (decision, current) {
            (LeaseDecision::Wait { holder, remaining }, _) => {
                tracing::debug!(%holder, ?remaining, "another replica leads");
                return Ok(false);
            }
            (LeaseDecision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: stamp.clone(),
                        renew_time: stamp,
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.leases.create(&lease).await.map(drop)
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if decision == LeaseDecision::TakeOver {
                    tracing::info!(
                        previous = spec.holder_identity.as_deref().unwrap_or("none"),
                        "taking over the leader lease"
                    );
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = stamp.clone();
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.renew_time = stamp;
                spec.lease_duration_seconds = Some(self.duration_seconds());
                // Carries the resourceVersion read above: a concurrent writer makes this fail.
                self.leases.replace(&lease).await.map(drop)
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(error) if lost_race(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Keeps trying to lead and renewing, publishing whether we lead. A
    /// leader steps down at its renew deadline unless a renewal that
    /// started before then succeeded; a renewal still running at the
    /// deadline is abandoned.
    pub async fn run(self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let renew_deadline = leadership::renew_deadline(self.lease_duration);
        let retry = self.lease_duration / 5;
        // Until when we may act (monotonic, this process's tokio clock).
        let mut valid_until: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            // A round never outlives our leadership, nor a lease duration.
            let cutoff = valid_until.unwrap_or(started + self.lease_duration);
            let outcome = tokio::time::timeout_at(cutoff, self.try_lead()).await;
            match outcome {
                Ok(Ok(true)) => {
                    if valid_until.is_none() {
                        tracing::info!(identity = %self.identity, "became the leader");
                    }
                    valid_until = Some(started + renew_deadline);
                    leading.send_replace(true);
                }
                Ok(Ok(false)) => {
                    if valid_until.take().is_some() {
                        tracing::warn!(identity = %self.identity, "lost the leader lease");
                    }
                    leading.send_replace(false);
                }
                Ok(Err(error)) => tracing::warn!(%error, "leader lease round failed"),
                Err(_) => tracing::warn!("leader lease round timed out"),
            }
            let now = tokio::time::Instant::now();
            if valid_until.is_some_and(|until| now >= until) {
                tracing::warn!(
                    "could not renew the leader lease before the renew deadline; stepping down"
                );
                valid_until = None;
                leading.send_replace(false);
            }
            let next = now + retry;
            let wake = valid_until.map_or(next, |until| next.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    leading.send_replace(false);
                    return;
                }
            }
        }
    }
}
