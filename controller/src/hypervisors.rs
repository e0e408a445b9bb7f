//! The hypervisor prober: asks each agent for its capacity and records in
//! the Hypervisor's status whether it answered. A reconciler like any other:
//! a new or edited hypervisor is probed at once, then every probe interval.

use std::time::Duration;

use async_trait::async_trait;
use stratus_core::conditions::{self, ConditionStatus, ConditionType, EventReason, Reason};
use stratus_core::ids::HypervisorName;
use stratus_core::resources::{
    Hypervisor, HypervisorCapacity, HypervisorStatus, StorageSubscription, VirtualServer,
};
use stratus_store::Resources;

use crate::context::Context;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::runtime::{ObjectKey, Outcome, Reconcile, Requeue, Trigger};

const GIB: u64 = 1 << 30;

pub struct HypervisorProber {
    ctx: Context,
    hypervisors: Resources<Hypervisor>,
    interval: Duration,
    /// Servers waiting for room get another chance when a hypervisor becomes usable.
    waiting_servers: Option<Requeue<VirtualServer>>,
    /// So do storage subscriptions waiting for two zones with room.
    waiting_storage: Option<Requeue<StorageSubscription>>,
}

#[async_trait]
impl Reconcile for HypervisorProber {
    type Kind = Hypervisor;

    fn resources(&self) -> &Resources<Hypervisor> {
        &self.hypervisors
    }

    /// The prober's own status writes must not trigger probes.
    fn trigger(&self) -> Trigger {
        Trigger::GenerationChanged
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        let Some(hypervisor) = self.hypervisors.get(None, &key.name).await? else {
            return Ok(Outcome::Done);
        };
        let became_usable = self.probe(&hypervisor).await?;
        if became_usable && let Some(waiting) = &self.waiting_servers {
            let queued = waiting
                .matching(|server| {
                    server
                        .status
                        .as_ref()
                        .is_none_or(|s| s.hypervisor.is_none())
                })
                .await?;
            tracing::debug!(queued, "servers waiting for room queued again");
        }
        if became_usable && let Some(waiting) = &self.waiting_storage {
            let queued = waiting
                .matching(|subscription| {
                    subscription
                        .status
                        .as_ref()
                        .is_none_or(|s| s.replicas.is_empty())
                })
                .await?;
            tracing::debug!(queued, "storage waiting for room queued again");
        }
        Ok(Outcome::RequeueAfter(self.interval))
    }
}

impl HypervisorProber {
    pub fn new(ctx: Context, hypervisors: Resources<Hypervisor>, interval: Duration) -> Self {
        Self {
            ctx,
            hypervisors,
            interval,
            waiting_servers: None,
            waiting_storage: None,
        }
    }

    /// Queues unplaced servers again whenever a hypervisor becomes usable or
    /// reports other capacity or images.
    pub fn requeueing(mut self, waiting_servers: Requeue<VirtualServer>) -> Self {
        self.waiting_servers = Some(waiting_servers);
        self
    }

    /// Queues unplaced storage subscriptions again likewise.
    pub fn requeueing_storage(mut self, waiting: Requeue<StorageSubscription>) -> Self {
        self.waiting_storage = Some(waiting);
        self
    }

    /// Probes every hypervisor; returns how many could now place more.
    pub async fn probe_all(&self) -> Result<usize, ControllerError> {
        let hypervisors = self.hypervisors.list(None).await?.items;
        let probes = hypervisors.iter().map(|hv| self.probe(hv));
        let mut became_reachable = 0;
        for result in futures::future::join_all(probes).await {
            became_reachable += usize::from(result?);
        }
        Ok(became_reachable)
    }

    /// Probes one hypervisor; returns whether it could now place servers it
    /// could not place before (it became reachable, or reports other
    /// capacity or images).
    pub async fn probe(&self, hypervisor: &Hypervisor) -> Result<bool, ControllerError> {
        let mut status: HypervisorStatus = hypervisor.status.clone().unwrap_or_default();
        let was_reachable = status.reachable;
        let now = self.ctx.clock.now();
        // A probe always reads the current token: a rotation is picked up
        // within one probe interval.
        self.ctx
            .directory
            .forget_token(&HypervisorName::of(hypervisor));
        let answer = match self.ctx.directory.endpoint(hypervisor).await {
            Ok(endpoint) => self
                .ctx
                .agents
                .node(&endpoint)
                .await
                .map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        match answer {
            Ok(report) => {
                if report.zone != hypervisor.spec.zone {
                    tracing::warn!(agent_zone = %report.zone, registered_zone = %hypervisor.spec.zone, "agent reports another zone than registered");
                }
                status.reachable = true;
                status.last_contact = Some(now.to_string());
                status.message = None;
                status.capacity = Some(HypervisorCapacity {
                    vcpus: report.vcpus,
                    memory_mib: report.memory_mib,
                    disk_gib: report.pool.capacity_bytes / GIB,
                    images: report.images,
                });
                conditions::set(
                    &mut status.conditions,
                    ConditionType::Ready,
                    true,
                    Reason::AgentAnswered,
                    "",
                    now,
                );
                let (enforced, reason, message) = report.anti_spoofing.condition();
                conditions::set(
                    &mut status.conditions,
                    ConditionType::AntiSpoofing,
                    enforced,
                    reason,
                    message,
                    now,
                );
            }
            Err(why) => {
                if status.reachable {
                    tracing::warn!(reason = %why, "hypervisor became unreachable");
                }
                status.reachable = false;
                conditions::set(
                    &mut status.conditions,
                    ConditionType::Ready,
                    false,
                    Reason::AgentUnavailable,
                    why.clone(),
                    now,
                );
                status.message = Some(why);
            }
        }
        if hypervisor.status.as_ref() != Some(&status) {
            self.hypervisors
                .patch_status(
                    None,
                    hypervisor.metadata.name.as_deref().unwrap_or_default(),
                    &status,
                )
                .await?;
        }
        match (was_reachable, status.reachable) {
            (false, true) => {
                self.ctx
                    .publish(
                        hypervisor,
                        EventType::Normal,
                        EventReason::Reachable,
                        "the agent answered",
                    )
                    .await;
            }
            (true, false) => {
                let note = status.message.as_deref().unwrap_or_default();
                self.ctx
                    .publish(
                        hypervisor,
                        EventType::Warning,
                        EventReason::Unreachable,
                        note,
                    )
                    .await;
            }
            _ => {}
        }
        let anti_spoofing = |s: Option<&HypervisorStatus>| {
            s.and_then(|s| conditions::get(&s.conditions, ConditionType::AntiSpoofing))
                .map(|c| (c.status, c.reason.clone(), c.message.clone()))
        };
        let was = anti_spoofing(hypervisor.status.as_ref());
        let now_is = anti_spoofing(Some(&status));
        if was != now_is
            && let Some((ConditionStatus::False, _, message)) = &now_is
        {
            tracing::warn!(%message, "hypervisor does not filter guest traffic");
            self.ctx
                .publish(
                    hypervisor,
                    EventType::Warning,
                    EventReason::AntiSpoofingUnavailable,
                    message,
                )
                .await;
        }
        let capacity_changed = hypervisor.status.as_ref().and_then(|s| s.capacity.as_ref())
            != status.capacity.as_ref();
        Ok(status.reachable && (!was_reachable || capacity_changed || was != now_is))
    }
}
