//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never reconcile at once. The decision is `core::leadership`;
//! this module reads and writes the Lease through the resource store (an API
//! server's Lease in Kubernetes mode, the same object in the embedded store),
//! relying on resourceVersion so two candidates can never both win a round.

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
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
}

/// Another candidate wrote first.
fn lost_race(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }
    )
}

impl LeaderElector {
    /// One round: acquires, renews or takes over the lease if it may.
    /// Returns whether we lead afterwards.
    pub async fn try_lead(&self) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let current = self.leases.get(Some(&self.namespace), &self.name).await?;
        let state = current.as_ref().map(|lease| {
            let spec = lease.spec.clone().unwrap_or_default();
            LeaseState {
                holder: spec.holder_identity,
                renewed_at: spec.renew_time.map(|t| t.0),
                duration: SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds
                        .unwrap_or(self.duration_seconds()),
                )),
            }
        });
        let decision = leadership::decide(state.as_ref(), &self.identity, now);
        let stamp = Some(MicroTime(now));
        let result = match (decision, current) {
            (LeaseDecision::Wait { holder, until }, _) => {
                tracing::debug!(%holder, %until, "another replica leads");
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
    /// leader that cannot renew within the lease duration steps down.
    pub async fn run(self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let interval = self.lease_duration / 3;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    last_renewal = tokio::time::Instant::now();
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.identity, "became the leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(identity = %self.identity, "lost the leader lease");
                    }
                    leading.send_replace(false);
                }
                Err(error) => {
                    tracing::warn!(%error, "leader lease round failed");
                    if *leading.borrow() && last_renewal.elapsed() >= self.lease_duration {
                        tracing::warn!("could not renew the leader lease in time; stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}
