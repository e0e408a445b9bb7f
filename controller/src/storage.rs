//! The storage reconciler: observe both copies of a subscription, decide
//! with the pure storage plan, act through the agents, record the status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::ResourceExt;
use serde_json::json;
use stratus_core::agent_api::{
    AgentErrorCode, DiskDisposal, StoredContent, VolumeSpec, storage_volume_name,
};
use stratus_core::conditions::{self, ConditionType, EventReason, Reason};
use stratus_core::ids::{self, AccountId, HypervisorName};
use stratus_core::policy::StoragePolicy;
use stratus_core::quota::charged_object;
use stratus_core::resources::{
    Account, Busy, KeptVersion, STORAGE_FINALIZER, SkippedSnapshot, StorageContent, StoragePhase,
    StorageReplica, StorageSubscription, StorageSubscriptionStatus, VirtualServer,
};
use stratus_core::scheduling::{self, Candidate};
use stratus_core::storage::{self, CopyObservation, ServerFacts, StorageAction, StorageFacts};
use stratus_store::Resources;
use stratus_store::ledger::{AuditAction, AuditSubject};

use crate::context::Context;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::notifier::Outbox;
use crate::placements::{Placing, Scheduling, Waiting};
use crate::runtime::{ObjectKey, Outcome, Reconcile};
use crate::servers::UNSCHEDULABLE_RECHECK;
use stratus_agent_client::{AgentCallError, AgentEndpoint};

/// A lost kept version that showed up again and could not be read is
/// read again after this long.
const LOST_VERSION_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);
/// Observe→plan→act rounds in one reconcile before yielding to other keys.
const MAX_PASSES: usize = 8;
/// How soon a subscription still moving after [`MAX_PASSES`] is looked at again.
const STILL_MOVING: Duration = Duration::from_millis(200);
/// How soon a degraded subscription (a copy unreachable or missing) is
/// looked at again.
const DEGRADED_RECHECK: Duration = Duration::from_secs(30);
/// How soon a subscription waiting for the server it is attached to to be
/// placed, or for its disk to be plugged or unplugged, looks again (both
/// take seconds).
const SERVER_PLACEMENT_RECHECK: Duration = Duration::from_secs(2);

pub struct StorageReconciler {
    ctx: Context,
    storage: Resources<StorageSubscription>,
    servers: Resources<VirtualServer>,
    scheduling: Arc<Scheduling>,
    policy: StoragePolicy,
    /// Where customers are told of damage found on their storage.
    outbox: Outbox,
    accounts: Option<Resources<Account>>,
}

#[async_trait]
impl Reconcile for StorageReconciler {
    type Kind = StorageSubscription;

    fn resources(&self) -> &Resources<StorageSubscription> {
        &self.storage
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        for _ in 0..MAX_PASSES {
            let Some(subscription) = self
                .storage
                .get(key.namespace.as_deref(), &key.name)
                .await?
            else {
                self.scheduling
                    .placements
                    .lock()
                    .await
                    .waiting_storage
                    .remove(key);
                return Ok(Outcome::Done);
            };
            if let Some(outcome) = self.pass(&subscription).await? {
                return Ok(outcome);
            }
        }
        Ok(Outcome::RequeueAfter(STILL_MOVING))
    }
}

/// Where a subscription's primary copy may be placed.
enum PrimaryHost {
    Any,
    On(HypervisorName),
    /// Attached to a server that has no hypervisor yet.
    ServerUnplaced(String),
}

/// Whether `server`'s disk is to be made from `snapshot` and is not made
/// yet: a restore asked or under way, or a server ordered from it (or made
/// again from it after a destruction, R18) that can be made from it now.
/// The snapshot's wipe waits for it. A restore is withdrawn when its
/// snapshot is deleted; a server ordered from it is made from it only when
/// it can be at once (`storage::disk_copyable_for`), so neither waits for
/// the other for good. Its agent never copies from copies being wiped (the
/// copy and the wipe take the same lock).
fn restores_from(server: &VirtualServer, snapshot: &StorageSubscription) -> bool {
    let id = snapshot.name_any();
    let id = id.as_str();
    let made = server.status.as_ref().map_or(0, |s| s.disk_generation);
    let ordered = server.spec.from_snapshot.as_deref() == Some(id)
        && server.spec.termination.is_none()
        && server.metadata.deletion_timestamp.is_none()
        && server.status.as_ref().is_some_and(|s| {
            !s.provisioned
                && s.rebuild.is_none()
                && stratus_core::storage::disk_copyable_for(
                    s.hypervisor.as_ref(),
                    &snapshot.spec,
                    snapshot.status.as_ref(),
                )
        });
    let asked = server
        .spec
        .rebuild
        .as_ref()
        .is_some_and(|r| r.snapshot.as_deref() == Some(id) && r.generation > made);
    let under_way = server
        .status
        .as_ref()
        .and_then(|s| s.rebuild.as_ref())
        .is_some_and(|p| p.snapshot.as_deref() == Some(id) && p.generation > made);
    ordered || asked || under_way
}

/// The name the agents manage the copies of `subscription` by.
fn managed_name(subscription: &StorageSubscription) -> String {
    ids::domain_name(
        subscription.namespace().as_deref().unwrap_or_default(),
        &subscription.name_any(),
    )
}

impl StorageReconciler {
    pub fn new(
        ctx: Context,
        storage: Resources<StorageSubscription>,
        servers: Resources<VirtualServer>,
        scheduling: Arc<Scheduling>,
        policy: StoragePolicy,
    ) -> Self {
        Self {
            ctx,
            storage,
            servers,
            scheduling,
            policy,
            outbox: Outbox::default(),
            accounts: None,
        }
    }

    /// Tells customers, through `outbox`, of damage found on their storage.
    pub fn notifying(mut self, outbox: Outbox, accounts: Resources<Account>) -> Self {
        self.outbox = outbox;
        self.accounts = Some(accounts);
        self
    }

    /// Observes, plans, and takes the one next action; `Some` ends the
    /// reconcile.
    async fn pass(
        &self,
        subscription: &StorageSubscription,
    ) -> Result<Option<Outcome>, ControllerError> {
        let current = subscription.status.clone().unwrap_or_default();
        let name = managed_name(subscription);
        let mut agents = Vec::with_capacity(current.replicas.len());
        let mut observed = Vec::with_capacity(current.replicas.len());
        for replica in &current.replicas {
            let (agent, observation) = self.observe(&replica.hypervisor, &name).await;
            agents.push(agent);
            observed.push(observation);
        }
        let servers = self.server_facts(subscription).await?;
        let facts = StorageFacts {
            spec: &subscription.spec,
            status: &current,
            generation: subscription.metadata.generation,
            has_finalizer: subscription
                .finalizers()
                .iter()
                .any(|f| f == STORAGE_FINALIZER),
            deleting: subscription.metadata.deletion_timestamp.is_some(),
            versions_kept: self.policy.versions,
            verify_interval: self.policy.verify_interval,
            replication_interval: self.policy.replication_interval,
            servers: &servers,
        };
        let decision = storage::plan(facts, &observed, self.ctx.clock.now());
        for loss in &decision.lost {
            tracing::error!(%loss, "storage loss confirmed");
            self.report_damage(subscription, loss, None).await;
        }
        let next = decision.status;
        let Some(action) = decision.next else {
            self.record_status(subscription, &current, &next).await?;
            // Woken once the status they read says what changed (a key
            // loaded, say).
            self.wake_servers(subscription, &next, &servers);
            let unreachable = observed
                .iter()
                .any(|o| matches!(o, CopyObservation::Unavailable(_)));
            // A disk being plugged or unplugged: the server's status may
            // lag its agent, so look again soon besides being woken.
            let attaching = next.conditions.iter().any(|c| {
                c.type_ == ConditionType::Attached && c.reason == Reason::Attaching.as_str()
            });
            return Ok(Some(match next.phase {
                _ if attaching => Outcome::RequeueAfter(SERVER_PLACEMENT_RECHECK),
                _ if unreachable => Outcome::RequeueAfter(DEGRADED_RECHECK),
                StoragePhase::Degraded => Outcome::RequeueAfter(DEGRADED_RECHECK),
                _ => match decision.recheck_in.and_then(|d| Duration::try_from(d).ok()) {
                    Some(after) => Outcome::RequeueAfter(after),
                    None => Outcome::Done,
                },
            }));
        };
        self.wake_servers(subscription, &next, &servers);
        tracing::debug!(?action, "acting");
        let agent_of = |index: usize| {
            agents.get(index).cloned().flatten().ok_or_else(|| {
                ControllerError::Malformed(
                    subscription.name_any(),
                    format!("no agent for copy {index}"),
                )
            })
        };
        match action {
            StorageAction::AddFinalizer => {
                self.record_status(subscription, &current, &next).await?;
                self.storage
                    .add_finalizer(
                        subscription.namespace().as_deref(),
                        &subscription.name_any(),
                        STORAGE_FINALIZER,
                    )
                    .await?;
            }
            StorageAction::Schedule => {
                if let Some(retry) = self.schedule(subscription, &current, next).await? {
                    return Ok(Some(Outcome::RequeueAfter(retry)));
                }
            }
            StorageAction::EnsureCopy { index, create } => {
                let agent = agent_of(index)?;
                self.record_status(subscription, &current, &next).await?;
                let spec = VolumeSpec {
                    size_gib: subscription.spec.size_gib,
                    create,
                };
                match self.ctx.agents.ensure_volume(&agent, &name, &spec).await {
                    Ok(_) => {
                        tracing::info!(hypervisor = %agent.hypervisor, "copy created");
                    }
                    Err(error) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::DestroyCopy { index } => {
                let agent = agent_of(index)?;
                self.record_status(subscription, &current, &next).await?;
                match self.ctx.agents.destroy_volume(&agent, &name).await {
                    Ok(destroyed) => {
                        self.report_destruction(subscription, &agent, destroyed.disposal)
                            .await;
                    }
                    Err(error) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::RemoveFinalizer => {
                self.release(subscription, &current, &next).await?;
                return Ok(Some(Outcome::Done));
            }
            StorageAction::Replicate { version } => {
                let (primary, secondary) = (agent_of(0)?, agent_of(1)?);
                self.record_status(subscription, &current, &next).await?;
                let mut replicated = next.clone();
                match self
                    .replicate(
                        subscription,
                        &name,
                        version,
                        &primary,
                        &secondary,
                        &mut replicated,
                    )
                    .await
                {
                    Ok(()) => self.record_status(subscription, &next, &replicated).await?,
                    Err((agent, error)) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::Restore { from, version } => {
                let (primary, secondary) = (agent_of(0)?, agent_of(1)?);
                let (busy, next) = self.busy(next, "restoring a kept version");
                self.record_status(subscription, &current, &busy).await?;
                if let Err((agent, error)) = self
                    .restore(subscription, &name, from, version, &primary, &secondary)
                    .await
                {
                    return self.agent_failed(subscription, &next, &agent, error).await;
                }
            }
            StorageAction::Verify => {
                let agents = [agent_of(0)?, agent_of(1)?];
                let (busy, next) = self.busy(next, "verifying both copies");
                self.record_status(subscription, &current, &busy).await?;
                let mut verified = next.clone();
                match self
                    .verify(subscription, &name, &agents, &mut verified)
                    .await
                {
                    Ok(()) => self.record_status(subscription, &busy, &verified).await?,
                    Err((agent, error)) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::RebuildCopy { index } => {
                let agents = [agent_of(0)?, agent_of(1)?];
                let (busy, next) = self.busy(next, "rebuilding a lost copy");
                self.record_status(subscription, &current, &busy).await?;
                let mut rebuilt = next.clone();
                match self
                    .rebuild(subscription, &name, &agents, index, &mut rebuilt)
                    .await
                {
                    Ok(()) => self.record_status(subscription, &busy, &rebuilt).await?,
                    Err((agent, error)) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::ForgetAttachment => {
                self.record_status(subscription, &current, &next).await?;
                self.forget_attachment(subscription).await?;
            }
            StorageAction::Snapshot { version } => {
                let (primary, secondary) = (agent_of(0)?, agent_of(1)?);
                self.record_status(subscription, &current, &next).await?;
                let mut copied = next.clone();
                match self
                    .snapshot(
                        subscription,
                        &name,
                        version,
                        &primary,
                        &secondary,
                        &mut copied,
                    )
                    .await
                {
                    Ok(()) => self.record_status(subscription, &next, &copied).await?,
                    Err((agent, error)) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::Settle { version } => {
                let agent = agent_of(0)?;
                self.record_status(subscription, &current, &next).await?;
                if let Err(error) = self.settle(subscription, &name, &agent, version).await {
                    return self.agent_failed(subscription, &next, &agent, error).await;
                }
            }
            StorageAction::RecoverVersion { version } => {
                let agent = agent_of(1)?;
                self.record_status(subscription, &current, &next).await?;
                let mut recovered = next.clone();
                if let Err(error) = self
                    .recover_version(subscription, &name, &agent, version, &mut recovered)
                    .await
                {
                    return self.agent_failed(subscription, &next, &agent, error).await;
                }
                self.record_status(subscription, &next, &recovered).await?;
            }
            StorageAction::Capture { version } => {
                let agent = agent_of(0)?;
                let (busy, next) = self.busy(next, "copying the server's disk");
                self.record_status(subscription, &current, &busy).await?;
                match self.capture(subscription, &name, &agent, version).await {
                    Ok(None) => {}
                    Ok(Some(failed)) => {
                        let mut failed_status = next.clone();
                        failed_status.capture_failed = Some(failed);
                        self.record_status(subscription, &busy, &failed_status)
                            .await?;
                    }
                    Err(error) => {
                        return self.agent_failed(subscription, &next, &agent, error).await;
                    }
                }
            }
            StorageAction::DeleteVersion { index, version } => {
                let agent = agent_of(index)?;
                self.record_status(subscription, &current, &next).await?;
                if let Err(error) = self.ctx.agents.delete_version(&agent, &name, version).await {
                    return self.agent_failed(subscription, &next, &agent, error).await;
                }
                tracing::info!(hypervisor = %agent.hypervisor, version, "storage version deleted");
            }
        }
        Ok(None)
    }

    /// Where the primary copy must go: on the hypervisor of the server it
    /// was ordered attached to, once that server is placed.
    async fn primary_host(
        &self,
        subscription: &StorageSubscription,
    ) -> Result<PrimaryHost, ControllerError> {
        // A snapshot's primary copy is made by its server's hypervisor.
        let pinned_to = subscription
            .spec
            .snapshot_of
            .as_ref()
            .map(|of| &of.server)
            .or(subscription.spec.attached_to.as_ref());
        let Some(server) = pinned_to else {
            return Ok(PrimaryHost::Any);
        };
        let found = self
            .servers
            .get(subscription.namespace().as_deref(), server)
            .await?;
        Ok(match found {
            // Gone: placed anywhere, and detached by the plan.
            None => PrimaryHost::Any,
            Some(found) => match found.status.and_then(|s| s.hypervisor) {
                Some(host) => PrimaryHost::On(host),
                None => PrimaryHost::ServerUnplaced(server.clone()),
            },
        })
    }

    /// What the servers of the subscription's account say of its disk.
    async fn server_facts(
        &self,
        subscription: &StorageSubscription,
    ) -> Result<ServerFacts, ControllerError> {
        let spec = &subscription.spec;
        if let Some(of) = &spec.snapshot_of {
            return self.snapshot_facts(subscription, of).await;
        }
        if spec.attached_to.is_none() && spec.written_by_guest.is_none() {
            // Never attached since its content was last settled: no server
            // of the account is read.
            return Ok(ServerFacts::default());
        }
        let id = subscription.name_any();
        let mut facts = ServerFacts::default();
        for server in self
            .servers
            .list(subscription.namespace().as_deref())
            .await?
            .items
        {
            let name = server.name_any();
            if spec.attached_to.as_deref() == Some(name.as_str())
                && server.metadata.deletion_timestamp.is_none()
            {
                facts.attached_server_exists = true;
            }
            if server
                .status
                .as_ref()
                .is_some_and(|s| s.attached_storage.contains(&id))
            {
                facts.holding.push(name);
            }
        }
        facts.holding.sort();
        Ok(facts)
    }

    /// What the servers of a snapshot's account say of it: where the server
    /// it copies is, while its disk is not copied yet; and, while it is
    /// being deleted, the servers whose restore from it is not done (their
    /// new disk is made from its primary copy, which is not wiped under
    /// them).
    async fn snapshot_facts(
        &self,
        subscription: &StorageSubscription,
        of: &stratus_core::resources::SnapshotOf,
    ) -> Result<ServerFacts, ControllerError> {
        let namespace = subscription.namespace();
        let mut facts = ServerFacts::default();
        if subscription.spec.content.is_none() {
            facts.snapshot_source = self
                .servers
                .get(namespace.as_deref(), &of.server)
                .await?
                .filter(|server| server.metadata.deletion_timestamp.is_none())
                .and_then(|server| server.status)
                .filter(|status| status.provisioned)
                .and_then(|status| status.hypervisor);
        }
        if subscription.metadata.deletion_timestamp.is_some() {
            for server in self.servers.list(namespace.as_deref()).await?.items {
                if restores_from(&server, subscription) {
                    facts.holding.push(server.name_any());
                }
            }
            facts.holding.sort();
        }
        Ok(facts)
    }

    /// Queues the servers that must attach or let go of the disk.
    fn wake_servers(
        &self,
        subscription: &StorageSubscription,
        next: &StorageSubscriptionStatus,
        servers: &ServerFacts,
    ) {
        let attaching = next
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Attached && c.reason == Reason::Attaching.as_str());
        if !attaching {
            return;
        }
        let namespace = subscription.namespace();
        let mut keys: Vec<ObjectKey> = servers
            .holding
            .iter()
            .chain(subscription.spec.attached_to.iter())
            .map(|server| ObjectKey::new(namespace.as_deref(), server))
            .collect();
        keys.dedup();
        self.scheduling.wake(Waiting {
            servers: keys,
            storage: Vec::new(),
        });
    }

    /// The server the subscription was attached to is gone: it is detached.
    async fn forget_attachment(
        &self,
        subscription: &StorageSubscription,
    ) -> Result<(), ControllerError> {
        let Some(server) = subscription.spec.attached_to.clone() else {
            return Ok(());
        };
        let expected = server.clone();
        let updated = self
            .storage
            .update(
                subscription.namespace().as_deref(),
                &subscription.name_any(),
                move |s| {
                    if s.spec.attached_to.as_deref() != Some(expected.as_str()) {
                        return false;
                    }
                    s.spec.attached_to = None;
                    true
                },
            )
            .await?;
        if updated.is_some_and(|s| s.spec.attached_to.is_none()) {
            self.ctx
                .audit(
                    AuditAction::StorageDetach,
                    AuditSubject::storage(subscription),
                    json!({ "server": server, "cause": "server_gone" }),
                )
                .await;
            self.ctx
                .publish(
                    subscription,
                    EventType::Normal,
                    EventReason::DiskDetached,
                    &format!("detached: server {server} does not exist any more"),
                )
                .await;
        }
        Ok(())
    }

    /// Copies the primary's current version, which a guest may have
    /// written, into `version` beside it, and records what it measured as
    /// the subscription's content; the secondary then copies it like any
    /// new content.
    /// Copies the disk of the snapshot's server into `version` of the
    /// primary and records it as the content, once (a compare-and-set on
    /// the spec: a content recorded meanwhile is kept, this copy deleted).
    /// Answers why the disk cannot be copied, when it cannot (the server
    /// went, or the copy would pause its guest too long): the snapshot
    /// failed.
    async fn capture(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        primary: &AgentEndpoint,
        version: u64,
    ) -> Result<Option<String>, AgentCallError> {
        let Some(of) = subscription.spec.snapshot_of.clone() else {
            return Ok(None);
        };
        let namespace = subscription.namespace();
        let server = match self.servers.get(namespace.as_deref(), &of.server).await {
            Ok(Some(server)) if server.metadata.deletion_timestamp.is_none() => server,
            Ok(_) => {
                return Ok(Some(format!(
                    "server {} was deleted before its disk was copied",
                    of.server
                )));
            }
            Err(error) => {
                return Err(AgentCallError::Unreachable(format!(
                    "the server could not be read: {error}"
                )));
            }
        };
        let status = server.status.clone().unwrap_or_default();
        // Looked at again now: its disk is copied as it is, never while it
        // changes, and the snapshot says what it holds as copied.
        if server.rebuilding() || server.resizing() || server.in_rescue() {
            return Err(AgentCallError::Unreachable(format!(
                "server {} is changing its disk (a rebuild, restore, resize or rescue mode): its copy waits",
                of.server
            )));
        }
        let disk_gib = status
            .applied
            .as_ref()
            .map_or(server.spec.resources.disk_gib, |a| a.resources.disk_gib);
        if disk_gib != subscription.spec.size_gib {
            return Ok(Some(format!(
                "server {} has a {disk_gib} GiB disk now, not the {} GiB it had when the snapshot was asked for: take a new one",
                of.server, subscription.spec.size_gib
            )));
        }
        let image = server.image().to_owned();
        let instance_generation = status.instance_generation.unwrap_or(status.disk_generation);
        let domain = crate::servers::domain_of(&server, &status);
        let stored = match self
            .ctx
            .agents
            .capture_disk(primary, name, &domain, version)
            .await
        {
            Ok(stored) => stored,
            // Finished long ago, its result forgotten by the agent: what it
            // left is not known to be whole, so it goes and the disk is
            // copied again.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::VersionExists,
                ..
            }) => {
                let _ = self.ctx.agents.delete_version(primary, name, version).await;
                return Err(AgentCallError::Unreachable(format!(
                    "an earlier copy {version} of unknown outcome was on the primary; it was deleted and the disk is copied again"
                )));
            }
            // Never to succeed as asked (the guest would be paused too
            // long; this hypervisor cannot stream a disk's bytes at all):
            // the snapshot fails, said, and is not taken again.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::PauseLimit | AgentErrorCode::ContentUnsupported,
                message,
            }) => {
                let message: String = message.chars().take(500).collect();
                self.ctx
                    .publish(
                        subscription,
                        EventType::Warning,
                        EventReason::SnapshotFailed,
                        &format!("the disk of server {} was not copied: {message}", of.server),
                    )
                    .await;
                self.ctx
                    .audit(
                        AuditAction::ServerSnapshotFailed,
                        AuditSubject::storage(subscription),
                        json!({ "server": of.server, "version": version, "reason": message }),
                    )
                    .await;
                return Ok(Some(message));
            }
            Err(error) => return Err(error),
        };
        let content = StorageContent {
            version,
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            written_at: self.ctx.clock.now().to_string(),
        };
        let recorded = content.clone();
        let updated = self
            .storage
            .update(namespace.as_deref(), &subscription.name_any(), move |s| {
                if s.spec.content.is_some() || s.metadata.deletion_timestamp.is_some() {
                    return false;
                }
                let Some(of) = s.spec.snapshot_of.as_mut() else {
                    return false;
                };
                // What the copy holds, as of the copy.
                of.image.clone_from(&image);
                of.instance_generation = instance_generation;
                s.spec.content = Some(recorded.clone());
                true
            })
            .await;
        let captured = matches!(&updated, Ok(Some(s)) if s.spec.content.as_ref() == Some(&content));
        if !captured {
            let _ = self.ctx.agents.delete_version(primary, name, version).await;
            return match updated {
                Err(error) => Err(AgentCallError::Unreachable(format!(
                    "the copied disk could not be recorded: {error}"
                ))),
                Ok(_) => Ok(None),
            };
        }
        tracing::info!(version, bytes = stored.bytes, server = %of.server, "server disk copied into a snapshot");
        let (method, guest_paused_ms) = match &stored.live_copy {
            Some(live) => (serde_json::to_value(live.method).ok(), live.guest_paused_ms),
            None => (None, 0),
        };
        self.ctx
            .audit(
                AuditAction::ServerSnapshotCaptured,
                AuditSubject::storage(subscription),
                json!({ "server": of.server, "version": version, "bytes": stored.bytes,
                        "sha256": stored.sha256, "method": method, "guest_paused_ms": guest_paused_ms }),
            )
            .await;
        self.ctx
            .publish(
                subscription,
                EventType::Normal,
                EventReason::SnapshotTaken,
                &format!(
                    "the disk of server {} ({} bytes) was copied; it is being copied to the second zone",
                    of.server, stored.bytes
                ),
            )
            .await;
        Ok(None)
    }

    async fn settle(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        primary: &AgentEndpoint,
        version: u64,
    ) -> Result<(), AgentCallError> {
        let Some(replica) = subscription
            .status
            .as_ref()
            .and_then(|s| s.replicas.first())
        else {
            return Ok(());
        };
        let stored = self
            .ctx
            .agents
            .copy_version(primary, name, replica.version, version, false)
            .await?;
        let content = StorageContent {
            version,
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            written_at: self.ctx.clock.now().to_string(),
        };
        let recorded = content.clone();
        let before = subscription.spec.content.clone();
        let updated = self
            .storage
            .update(
                subscription.namespace().as_deref(),
                &subscription.name_any(),
                move |s| {
                    // Only what was decided on: attached again, or written
                    // since, and the copy is left for deletion as unfinished.
                    if s.spec.attached_to.is_some()
                        || s.spec.written_by_guest.is_none()
                        || s.spec.content != before
                    {
                        return false;
                    }
                    s.spec.content = Some(recorded.clone());
                    s.spec.written_by_guest = None;
                    true
                },
            )
            .await;
        let settled = matches!(&updated, Ok(Some(s)) if s.spec.content.as_ref() == Some(&content));
        if !settled {
            let _ = self.ctx.agents.delete_version(primary, name, version).await;
            return match updated {
                Err(error) => Err(AgentCallError::Unreachable(format!(
                    "the settled content could not be recorded: {error}"
                ))),
                Ok(_) => Ok(()),
            };
        }
        tracing::info!(
            version,
            bytes = stored.bytes,
            "content left by a guest settled"
        );
        self.ctx
            .audit(
                AuditAction::StorageSettled,
                AuditSubject::storage(subscription),
                json!({ "from": replica.version, "version": version, "bytes": stored.bytes, "sha256": stored.sha256 }),
            )
            .await;
        self.ctx
            .publish(
                subscription,
                EventType::Normal,
                EventReason::ContentSettled,
                &format!(
                    "the content its server left ({} bytes) is version {version}; it is being copied to the secondary",
                    stored.bytes
                ),
            )
            .await;
        Ok(())
    }

    /// Writes the secondary's verified version `from` into `version` of
    /// the primary (the content a restore recorded), checking its SHA-256;
    /// the secondary then copies it like any new content.
    async fn restore(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        from: u64,
        version: u64,
        primary: &AgentEndpoint,
        secondary: &AgentEndpoint,
    ) -> Result<(), (AgentEndpoint, AgentCallError)> {
        let Some(content) = subscription
            .spec
            .content
            .as_ref()
            .filter(|c| c.version == version)
        else {
            return Ok(());
        };
        let stream = self
            .ctx
            .agents
            .read_version(secondary, name, from, content.bytes)
            .await
            .map_err(|e| (secondary.clone(), e))?;
        let rebuilt = self
            .ctx
            .agents
            .write_version(primary, name, version, subscription.spec.size_gib, stream)
            .await
            .map_err(|e| (primary.clone(), e))?;
        if rebuilt.sha256 != content.sha256 {
            let _ = self.ctx.agents.delete_version(primary, name, version).await;
            return Err((
                primary.clone(),
                AgentCallError::Unreachable(format!(
                    "version {from} read back as {} instead of {}; the restore is tried again",
                    rebuilt.sha256, content.sha256
                )),
            ));
        }
        self.ctx
            .audit(
                AuditAction::StorageRestored,
                AuditSubject::storage(subscription),
                json!({ "from": from, "version": version, "sha256": content.sha256 }),
            )
            .await;
        self.ctx
            .publish(
                subscription,
                EventType::Normal,
                EventReason::Restored,
                &format!("the primary copy was rebuilt from verified version {from}"),
            )
            .await;
        tracing::info!(from, version, "primary rebuilt from a kept version");
        Ok(())
    }

    /// Reads both copies' current version back and checks each against
    /// the content's recorded SHA-256 (R26). A copy that no longer matches
    /// is the bad one: it is rewritten from the other, checked again, and
    /// reported (condition, Warning event, audit row, metric). Kept
    /// versions on the secondary are checked too; a bad one is deleted and
    /// reported, as no other copy of it exists.
    async fn verify(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        agents: &[AgentEndpoint; 2],
        status: &mut StorageSubscriptionStatus,
    ) -> Result<(), (AgentEndpoint, AgentCallError)> {
        let Some(content) = subscription.spec.content.clone() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let mut found = Vec::with_capacity(2);
        for agent in agents {
            let read = self
                .ctx
                .agents
                .checksum_version(agent, name, content.version, content.bytes)
                .await
                .map_err(|e| (agent.clone(), e))?;
            found.push(read.sha256);
        }
        let now = self.ctx.clock.now();
        let good: Vec<bool> = found.iter().map(|sha| *sha == content.sha256).collect();
        match (good[0], good[1]) {
            (true, true) => {}
            (false, false) => {
                let message = format!(
                    "both copies of version {} no longer match its SHA-256 {} (found {} and {}): restore a kept version",
                    content.version, content.sha256, found[0], found[1]
                );
                tracing::error!(%message, "storage content lost on both copies");
                status.unrecoverable = Some(message.clone());
                self.report_damage(subscription, &message, None).await;
                self.tell_customer(subscription, status.repairs, false, &message)
                    .await;
            }
            (primary_good, _) => {
                let (bad, from) = if primary_good { (1, 0) } else { (0, 1) };
                // The reads took a while: a customer may have made the
                // primary a disk meanwhile, and a guest's writes are no
                // damage. Looked at again before anything is rewritten (the
                // agent refuses to wipe a volume a domain uses, too).
                if self.became_a_disk(subscription).await {
                    tracing::info!(
                        "the copy became a server's disk during its verification: no repair; verified again once it is settled"
                    );
                    return Ok(());
                }
                self.ctx
                    .agents
                    .delete_version(&agents[bad], name, content.version)
                    .await
                    .map_err(|e| (agents[bad].clone(), e))?;
                let stream = self
                    .ctx
                    .agents
                    .read_version(&agents[from], name, content.version, content.bytes)
                    .await
                    .map_err(|e| (agents[from].clone(), e))?;
                let rewritten = self
                    .ctx
                    .agents
                    .write_version(
                        &agents[bad],
                        name,
                        content.version,
                        subscription.spec.size_gib,
                        stream,
                    )
                    .await
                    .map_err(|e| (agents[bad].clone(), e))?;
                if rewritten.sha256 != content.sha256 {
                    return Err((
                        agents[bad].clone(),
                        AgentCallError::Unreachable(format!(
                            "the repaired copy reads {} instead of {}; tried again",
                            rewritten.sha256, content.sha256
                        )),
                    ));
                }
                status.repairs += 1;
                let message = format!(
                    "the copy on {} no longer matched its SHA-256 (found {}, expected {}); it was rewritten from the copy on {} at {now} and verified",
                    agents[bad].hypervisor, found[bad], content.sha256, agents[from].hypervisor
                );
                tracing::warn!(%message, "storage copy repaired");
                self.ctx.metrics.storage_repaired();
                status.last_repair = Some(message.clone());
                self.tell_customer(subscription, status.repairs, true, &message)
                    .await;
                self.report_damage(subscription, &message, Some(&agents[bad]))
                    .await;
            }
        }
        // Earlier versions the secondary keeps: only it holds them.
        let mut kept = Vec::new();
        for version in std::mem::take(&mut status.replicas[1].kept) {
            // Not seen by the last observation: nothing to read; the plan
            // forgets it only once its loss is confirmed.
            if version.missing.is_some() {
                kept.push(version);
                continue;
            }
            let read = self
                .ctx
                .agents
                .checksum_version(&agents[1], name, version.version, version.bytes)
                .await
                .map_err(|e| (agents[1].clone(), e))?;
            if read.sha256 == version.sha256 {
                kept.push(KeptVersion {
                    verified_at: now.to_string(),
                    ..version
                });
            } else {
                let message = format!(
                    "the kept version {} on {} no longer matches its SHA-256 and was deleted (no other copy of it exists)",
                    version.version, agents[1].hypervisor
                );
                let _ = self
                    .ctx
                    .agents
                    .delete_version(&agents[1], name, version.version)
                    .await;
                self.report_damage(subscription, &message, Some(&agents[1]))
                    .await;
            }
        }
        status.replicas[1].kept = kept;
        for replica in &mut status.replicas {
            replica.verified_at = Some(now.to_string());
        }
        status.verifications_done = subscription.spec.verify_requests;
        tracing::info!(
            version = content.version,
            bytes = content.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "both copies verified"
        );
        Ok(())
    }

    /// A kept version whose loss was confirmed shows on the secondary
    /// again (its storage mounted late): kept again if it still has its
    /// recorded SHA-256, else deleted and said.
    async fn recover_version(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        secondary: &AgentEndpoint,
        version: u64,
        status: &mut StorageSubscriptionStatus,
    ) -> Result<(), AgentCallError> {
        let Some(copy) = status.replicas.get_mut(1) else {
            return Ok(());
        };
        let Some(at) = copy.lost.iter().position(|l| l.version == version) else {
            return Ok(());
        };
        let record = copy.lost[at].clone();
        let read = match self
            .ctx
            .agents
            .checksum_version(secondary, name, version, record.bytes)
            .await
        {
            Ok(read) => Some(read.sha256),
            // Shorter than its record: not it.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::BadRequest,
                ..
            }) => None,
            // Gone again, or unreadable now (its storage flapping): left
            // alone for a while, still remembered, neither read in a loop
            // nor holding back the subscription's other work.
            Err(error) => {
                let after = self.ctx.clock.now() + LOST_VERSION_RETRY;
                tracing::warn!(version, %error, %after, "a lost kept version that showed up again could not be read");
                copy.lost[at].recover_after = Some(after.to_string());
                return Ok(());
            }
        };
        if read.as_deref() == Some(record.sha256.as_str()) {
            copy.lost.remove(at);
            copy.kept.push(KeptVersion {
                verified_at: self.ctx.clock.now().to_string(),
                missing: None,
                recover_after: None,
                ..record
            });
            copy.kept.sort_by_key(|k| k.version);
            let message = format!(
                "the kept version {version} on {} showed up again with its SHA-256: that restore point is back",
                secondary.hypervisor
            );
            tracing::info!(version, "{message}");
            self.ctx
                .publish(
                    subscription,
                    EventType::Normal,
                    EventReason::VersionRecovered,
                    &message,
                )
                .await;
            return Ok(());
        }
        self.ctx
            .agents
            .delete_version(secondary, name, version)
            .await?;
        copy.lost.remove(at);
        let message = format!(
            "the kept version {version} on {} showed up again without its recorded SHA-256 and was deleted",
            secondary.hypervisor
        );
        self.report_damage(subscription, &message, Some(secondary))
            .await;
        Ok(())
    }

    /// `next` saying `what` is under way since now (to record before the
    /// work), and `next` as it is (to record the work's outcome on).
    fn busy(
        &self,
        next: StorageSubscriptionStatus,
        what: &str,
    ) -> (StorageSubscriptionStatus, StorageSubscriptionStatus) {
        let mut busy = next.clone();
        busy.busy = Some(Busy {
            what: what.to_owned(),
            since: self.ctx.clock.now().to_string(),
        });
        (busy, next)
    }

    /// Whether `subscription` is, or was since it was read, attached to a
    /// server (or cannot be read back to tell).
    async fn became_a_disk(&self, subscription: &StorageSubscription) -> bool {
        let namespace = subscription.namespace();
        match self
            .storage
            .get(namespace.as_deref(), &subscription.name_any())
            .await
        {
            Ok(Some(now)) => now.spec.attached_to.is_some() || now.spec.written_by_guest.is_some(),
            Ok(None) => true,
            Err(error) => {
                tracing::warn!(%error, "cannot read the subscription again before a repair");
                true
            }
        }
    }

    /// Makes copy `index`, lost whole, again from the other one: the
    /// primary's current version written back from the secondary (checked
    /// against its SHA-256), or an empty secondary that the next pass
    /// brings to the content like any new copy. Reported like a repair.
    async fn rebuild(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        agents: &[AgentEndpoint; 2],
        index: usize,
        status: &mut StorageSubscriptionStatus,
    ) -> Result<(), (AgentEndpoint, AgentCallError)> {
        let survivor = 1 - index;
        let lost = &agents[index];
        let current = status.replicas[0].version;
        let content = subscription
            .spec
            .content
            .as_ref()
            .filter(|c| c.version == current && current > 0);
        match (index, content) {
            (0, Some(content)) => {
                let stream = self
                    .ctx
                    .agents
                    .read_version(&agents[1], name, content.version, content.bytes)
                    .await
                    .map_err(|e| (agents[1].clone(), e))?;
                let written = self
                    .ctx
                    .agents
                    .write_version(
                        lost,
                        name,
                        content.version,
                        subscription.spec.size_gib,
                        stream,
                    )
                    .await
                    .map_err(|e| (lost.clone(), e))?;
                if written.sha256 != content.sha256 {
                    let _ = self
                        .ctx
                        .agents
                        .delete_version(lost, name, content.version)
                        .await;
                    return Err((
                        lost.clone(),
                        AgentCallError::Unreachable(format!(
                            "the rebuilt copy reads {} instead of {}; tried again",
                            written.sha256, content.sha256
                        )),
                    ));
                }
            }
            _ => {
                let spec = VolumeSpec {
                    size_gib: subscription.spec.size_gib,
                    create: true,
                };
                self.ctx
                    .agents
                    .ensure_volume(lost, name, &spec)
                    .await
                    .map_err(|e| (lost.clone(), e))?;
                if index == 1 {
                    let replica = &mut status.replicas[1];
                    let dropped = replica.kept.len();
                    replica.version = 0;
                    replica.volume = storage_volume_name(name, 0);
                    replica.bytes = 0;
                    replica.checksum = None;
                    replica.verified_at = None;
                    replica.path = None;
                    // Remembered: should its storage come back after all,
                    // they are read and kept again.
                    let kept = std::mem::take(&mut replica.kept);
                    replica.remember_lost(kept, self.policy.versions);
                    if dropped > 0 {
                        tracing::warn!(dropped, "the lost secondary's kept versions are gone");
                    }
                }
            }
        }
        status.repairs += 1;
        status.replicas[index].missing = None;
        let message = format!(
            "the copy on {} was lost whole; it was made again from the copy on {} at {}{}",
            lost.hypervisor,
            agents[survivor].hypervisor,
            self.ctx.clock.now(),
            if index == 1 {
                " (the earlier versions it kept are gone, and remembered should they show up again; the current content is copied to it next)"
            } else {
                " and verified"
            }
        );
        tracing::warn!(%message, "storage copy rebuilt");
        self.ctx.metrics.storage_repaired();
        status.last_repair = Some(message.clone());
        self.tell_customer(subscription, status.repairs, true, &message)
            .await;
        self.report_damage(subscription, &message, Some(lost)).await;
        Ok(())
    }

    /// Queues the customer's notice of damage found on its storage; a
    /// failure is logged, never stops the repair.
    async fn tell_customer(
        &self,
        subscription: &StorageSubscription,
        repairs: u32,
        repaired: bool,
        detail: &str,
    ) {
        self.notify_customer(subscription, "damage on its storage", |namespace, now| {
            stratus_core::notices::storage_damage(
                namespace,
                &subscription.name_any(),
                &subscription.spec.name,
                repairs,
                repaired,
                detail,
                now,
            )
        })
        .await;
    }

    /// Queues the message `notice` makes for the subscription's account, to
    /// its e-mail and webhook; a failure is logged (about `what`), never
    /// stops the reconcile.
    async fn notify_customer(
        &self,
        subscription: &StorageSubscription,
        what: &str,
        notice: impl FnOnce(&str, jiff::Timestamp) -> stratus_core::notices::Message,
    ) {
        let (Some(accounts), Some(namespace)) = (&self.accounts, subscription.namespace()) else {
            return;
        };
        let email = match accounts.get(None, &namespace).await {
            Ok(Some(account)) => account.spec.email,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "the customer could not be told of {what}");
                return;
            }
        };
        let now = self.ctx.clock.now();
        let message = notice(&namespace, now);
        if let Err(error) = self
            .outbox
            .queue(&self.ctx, &namespace, &email, vec![message], now)
            .await
        {
            tracing::warn!(%error, "the customer could not be told of {what}");
        }
    }

    /// Tells the customer and operators that a LUKS disk is detached until
    /// its key is given again; a failure to queue the notice is logged.
    async fn ask_for_key(&self, subscription: &StorageSubscription) {
        let server = subscription.spec.attached_to.clone().unwrap_or_default();
        let message = format!(
            "the LUKS disk is not plugged into server {server} until its key is given again (an attach action with the key)"
        );
        tracing::info!(%server, "a LUKS disk waits for its key");
        self.ctx
            .publish(
                subscription,
                EventType::Warning,
                EventReason::KeyRequired,
                &message,
            )
            .await;
        self.notify_customer(
            subscription,
            "a key its LUKS disk waits for",
            |namespace, now| {
                stratus_core::notices::storage_key_required(
                    namespace,
                    &subscription.name_any(),
                    &subscription.spec.name,
                    &server,
                    now,
                )
            },
        )
        .await;
    }

    /// A Warning event and an audit row about damage found on a copy.
    async fn report_damage(
        &self,
        subscription: &StorageSubscription,
        message: &str,
        hypervisor: Option<&AgentEndpoint>,
    ) {
        self.ctx
            .audit(
                AuditAction::StorageRepaired,
                AuditSubject::storage(subscription),
                json!({ "hypervisor": hypervisor.map(|a| &a.hypervisor), "message": message }),
            )
            .await;
        self.ctx
            .publish(
                subscription,
                EventType::Warning,
                EventReason::CopyRepaired,
                message,
            )
            .await;
    }

    /// Copies `version` from the primary to the secondary through this
    /// controller (the client of both agents), and records it on the
    /// secondary once the SHA-256 the secondary computed matches the
    /// content's. A mismatch leaves nothing: the copy is deleted again.
    async fn replicate(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        version: u64,
        primary: &AgentEndpoint,
        secondary: &AgentEndpoint,
        status: &mut StorageSubscriptionStatus,
    ) -> Result<(), (AgentEndpoint, AgentCallError)> {
        let Some(content) = subscription
            .spec
            .content
            .as_ref()
            .filter(|c| c.version == version)
        else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let stored = self
            .relay(
                subscription,
                name,
                version,
                (&content.sha256, content.bytes),
                primary,
                secondary,
            )
            .await?;
        let now = self.ctx.clock.now().to_string();
        let copy = &mut status.replicas[1];
        if copy.version > 0
            && let Some(checksum) = copy.checksum.clone()
        {
            copy.kept.push(KeptVersion {
                version: copy.version,
                bytes: copy.bytes,
                sha256: checksum,
                verified_at: copy.verified_at.clone().unwrap_or_else(|| now.clone()),
                missing: None,
                recover_after: None,
            });
        }
        copy.version = version;
        copy.bytes = content.bytes;
        copy.volume = storage_volume_name(name, version);
        copy.path = None;
        copy.checksum = Some(stored.sha256);
        copy.verified_at = Some(now);
        tracing::info!(
            version,
            bytes = content.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "content copied to the secondary and verified"
        );
        Ok(())
    }

    /// Streams `version` (of `expected` SHA-256 and length) from the
    /// primary to the secondary and checks what arrived; a version that
    /// arrived wrong, or an earlier attempt's, is deleted from the
    /// secondary and the copy is tried again later.
    async fn relay(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        version: u64,
        expected: (&str, u64),
        primary: &AgentEndpoint,
        secondary: &AgentEndpoint,
    ) -> Result<StoredContent, (AgentEndpoint, AgentCallError)> {
        let (sha256, bytes) = expected;
        let stream = self
            .ctx
            .agents
            .read_version(primary, name, version, bytes)
            .await
            .map_err(|e| (primary.clone(), e))?;
        let stored = match self
            .ctx
            .agents
            .write_version(secondary, name, version, subscription.spec.size_gib, stream)
            .await
        {
            Ok(stored) => stored,
            // An earlier attempt stored it: its checksum decides, and a
            // version holding the right bytes is kept, never deleted.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::VersionExists,
                ..
            }) => {
                let there = self
                    .ctx
                    .agents
                    .checksum_version(secondary, name, version, bytes)
                    .await
                    .map_err(|e| (secondary.clone(), e))?;
                if there.sha256 == sha256 && there.bytes == bytes {
                    tracing::info!(version, "the secondary already held this version, checked");
                    return Ok(there);
                }
                let _ = self
                    .ctx
                    .agents
                    .delete_version(secondary, name, version)
                    .await;
                return Err((
                    secondary.clone(),
                    AgentCallError::Unreachable(format!(
                        "a version {version} holding other bytes (SHA-256 {}) was on the secondary; it was deleted and is copied again",
                        there.sha256
                    )),
                ));
            }
            Err(error) => return Err((secondary.clone(), error)),
        };
        if stored.sha256 != sha256 || stored.bytes != bytes {
            let _ = self
                .ctx
                .agents
                .delete_version(secondary, name, version)
                .await;
            return Err((
                secondary.clone(),
                AgentCallError::Unreachable(format!(
                    "version {version} arrived with SHA-256 {} and {} bytes, not {sha256} and {bytes}; it was deleted and is copied again",
                    stored.sha256, stored.bytes
                )),
            ));
        }
        Ok(stored)
    }

    /// Copies the primary, a disk of its server, into `version` with its
    /// guest paused (crash-consistent as of the pause), relays that to the
    /// secondary as a kept version, and deletes it from the primary. The
    /// secondary keeps `storage.versions` of them, the oldest going first.
    async fn snapshot(
        &self,
        subscription: &StorageSubscription,
        name: &str,
        version: u64,
        primary: &AgentEndpoint,
        secondary: &AgentEndpoint,
        status: &mut StorageSubscriptionStatus,
    ) -> Result<(), (AgentEndpoint, AgentCallError)> {
        let Some(from) = status.replicas.first().map(|r| r.version) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        // An agent job, joined by a retry of this same copy (its version is
        // its due time's): the guest is paused once per scheduled copy.
        let copied = match self
            .ctx
            .agents
            .copy_version(primary, name, from, version, true)
            .await
        {
            Ok(copied) => copied,
            // Finished long ago, its result forgotten by the agent: what it
            // left is not known to be whole, so it goes and the next pass
            // copies again.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::VersionExists,
                ..
            }) => {
                let _ = self.ctx.agents.delete_version(primary, name, version).await;
                return Err((
                    primary.clone(),
                    AgentCallError::Unreachable(format!(
                        "an earlier copy {version} of unknown outcome was on the primary; it was deleted and the copy is made again"
                    )),
                ));
            }
            // Where the guest must be paused for the copy and it would take
            // too long: this copy is skipped (said on the object, as an
            // event and in the audit), the next is an interval later.
            Err(AgentCallError::Rejected {
                code: AgentErrorCode::PauseLimit,
                message,
            }) => {
                // The agent's words, bounded: they go into the status, an
                // event and the audit.
                let message: String = message.chars().take(500).collect();
                let at = self.ctx.clock.now().to_string();
                tracing::warn!(version, %message, "a scheduled copy of an attached disk was skipped");
                self.ctx
                    .publish(
                        subscription,
                        EventType::Warning,
                        EventReason::SnapshotSkipped,
                        &format!("the scheduled copy to the secondary was skipped: {message}"),
                    )
                    .await;
                self.ctx
                    .audit(
                        AuditAction::StorageSnapshotSkipped,
                        AuditSubject::storage(subscription),
                        json!({ "from": from, "version": version, "reason": message }),
                    )
                    .await;
                status.snapshot_skipped = Some(SkippedSnapshot {
                    at,
                    reason: message,
                });
                return Ok(());
            }
            Err(error) => return Err((primary.clone(), error)),
        };
        let relayed = self
            .relay(
                subscription,
                name,
                version,
                (&copied.sha256, copied.bytes),
                primary,
                secondary,
            )
            .await;
        // The primary's copy was only the way to the secondary.
        if let Err(error) = self.ctx.agents.delete_version(primary, name, version).await {
            tracing::warn!(%error, version, "a snapshot left on the primary is deleted later");
        }
        let stored = relayed?;
        let now = self.ctx.clock.now().to_string();
        let Some(copy) = status.replicas.get_mut(1) else {
            return Ok(());
        };
        copy.kept.push(KeptVersion {
            version,
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            verified_at: now.clone(),
            missing: None,
            recover_after: None,
        });
        let keep = usize::try_from(self.policy.versions).unwrap_or(usize::MAX);
        while copy.kept.len() > keep {
            let oldest = copy.kept[0].version;
            if let Err(error) = self
                .ctx
                .agents
                .delete_version(secondary, name, oldest)
                .await
            {
                tracing::warn!(%error, version = oldest, "an old kept version is deleted later");
                break;
            }
            copy.kept.remove(0);
        }
        status.last_snapshot_at = Some(now);
        status.snapshot_skipped = None;
        let live = copied.live_copy.as_ref();
        tracing::info!(
            version,
            bytes = stored.bytes,
            seconds = started.elapsed().as_secs_f64(),
            method = ?live.map(|l| l.method),
            guest_paused_ms = live.map(|l| l.guest_paused_ms),
            "attached primary copied to the secondary"
        );
        self.ctx
            .audit(
                AuditAction::StorageSnapshot,
                AuditSubject::storage(subscription),
                json!({
                    "from": from,
                    "version": version,
                    "bytes": stored.bytes,
                    "sha256": stored.sha256,
                    "method": live.map(|l| l.method),
                    "guest_paused_ms": live.map(|l| l.guest_paused_ms),
                }),
            )
            .await;
        Ok(())
    }

    /// What the agent of `hypervisor` says of the copy.
    async fn observe(
        &self,
        hypervisor: &HypervisorName,
        name: &str,
    ) -> (Option<AgentEndpoint>, CopyObservation) {
        let agent = match self.ctx.directory.by_name(hypervisor).await {
            Ok(agent) => agent,
            Err(why) => return (None, CopyObservation::Unavailable(why)),
        };
        let observation = match self.ctx.agents.observe_volume(&agent, name).await {
            Ok(seen) if seen.present() => CopyObservation::Present {
                pool: seen.pool,
                versions: seen.versions,
            },
            Ok(_) => CopyObservation::Absent,
            Err(error) => CopyObservation::Unavailable(error.to_string()),
        };
        (Some(agent), observation)
    }

    /// Chooses the two hypervisors and records both at once; with no pair
    /// in two zones with room, records why and returns when to try again.
    async fn schedule(
        &self,
        subscription: &StorageSubscription,
        current: &StorageSubscriptionStatus,
        mut next: StorageSubscriptionStatus,
    ) -> Result<Option<Duration>, ControllerError> {
        let key = ObjectKey::of(subscription);
        let mut placements = self.scheduling.placements.lock().await;
        let hypervisors = self.ctx.directory.hypervisors.list(None).await?.items;
        placements.refresh(&self.servers, &self.storage).await?;
        let load = placements.load(Placing::Storage(&key));
        let mut candidates: Vec<Candidate<'_>> = hypervisors
            .iter()
            .map(|hypervisor| {
                let placed = load
                    .get(&HypervisorName::of(hypervisor))
                    .map(|p| p.load)
                    .unwrap_or_default();
                Candidate::of(hypervisor, placed)
            })
            .collect();
        let now = self.ctx.clock.now();
        let mut zone = subscription.spec.zone.clone();
        let pinned = match self.primary_host(subscription).await? {
            PrimaryHost::Any => None,
            PrimaryHost::On(host) => Some(host),
            PrimaryHost::ServerUnplaced(server) => {
                drop(placements);
                let why = format!(
                    "waiting for server {server}, which it is attached to, to be placed: its primary copy goes on the same hypervisor"
                );
                next.phase = StoragePhase::Pending;
                next.reason = Some(why.clone());
                conditions::set(
                    &mut next.conditions,
                    ConditionType::Scheduled,
                    false,
                    Reason::Pending,
                    why,
                    now,
                );
                self.record_status(subscription, current, &next).await?;
                return Ok(Some(SERVER_PLACEMENT_RECHECK));
            }
        };
        if let Some(host) = &pinned {
            // The server's hypervisor is the only candidate of its zone for
            // the primary; the secondary is in another zone anyway.
            let host_zone = candidates
                .iter()
                .find(|c| c.name == host.as_str())
                .map(|c| c.zone.to_owned());
            if let Some(host_zone) = host_zone {
                candidates.retain(|c| c.zone != host_zone || c.name == host.as_str());
                zone = Some(host_zone);
            }
        }
        let chosen =
            scheduling::choose_replicas(subscription.spec.size_gib, zone.as_deref(), &candidates);
        match chosen {
            Ok(pair) => {
                let volume = storage_volume_name(&managed_name(subscription), 0);
                next.replicas = pair
                    .iter()
                    .filter_map(|name| {
                        let hypervisor = hypervisors
                            .iter()
                            .find(|h| h.metadata.name.as_deref() == Some(*name))?;
                        Some(StorageReplica {
                            hypervisor: HypervisorName::of(hypervisor),
                            zone: hypervisor.spec.zone.clone(),
                            volume: volume.clone(),
                            version: 0,
                            pool: None,
                            path: None,
                            created: false,
                            bytes: 0,
                            checksum: None,
                            verified_at: None,
                            kept: Vec::new(),
                            lost: Vec::new(),
                            missing: None,
                        })
                    })
                    .collect();
                next.zones = StorageSubscriptionStatus::zones_of(&next.replicas);
                next.phase = StoragePhase::Provisioning;
                next.reason = None;
                conditions::set(
                    &mut next.conditions,
                    ConditionType::Scheduled,
                    true,
                    Reason::Placed,
                    format!("copies on {}", pair.join(" and ")),
                    now,
                );
                self.record_status(subscription, current, &next).await?;
                placements.place_storage(
                    key,
                    next.replicas.iter().map(|r| r.hypervisor.clone()).collect(),
                    subscription.spec.size_gib,
                );
                Ok(None)
            }
            Err(why) => {
                next.phase = StoragePhase::Pending;
                next.reason = Some(why.to_string());
                conditions::set(
                    &mut next.conditions,
                    ConditionType::Scheduled,
                    false,
                    Reason::Unschedulable,
                    why.to_string(),
                    now,
                );
                self.record_status(subscription, current, &next).await?;
                placements.waiting_storage.insert(key);
                if current.reason != next.reason {
                    tracing::info!(reason = %why, "storage cannot be placed yet");
                }
                Ok(Some(UNSCHEDULABLE_RECHECK))
            }
        }
    }

    /// Records why an agent call failed and fails the reconcile (retried
    /// with backoff) unless the agent refused for good.
    async fn agent_failed(
        &self,
        subscription: &StorageSubscription,
        next: &StorageSubscriptionStatus,
        agent: &AgentEndpoint,
        error: AgentCallError,
    ) -> Result<Option<Outcome>, ControllerError> {
        let mut failed = next.clone();
        if matches!(error, AgentCallError::Rejected { .. }) {
            failed.phase = if failed.replicas.iter().all(|r| r.created) {
                StoragePhase::Degraded
            } else {
                StoragePhase::Error
            };
        }
        failed.reason = Some(format!("hypervisor {}: {error}", agent.hypervisor));
        self.record_status(subscription, next, &failed).await?;
        Err(ControllerError::Agent {
            hypervisor: agent.hypervisor.clone(),
            source: error,
        })
    }

    /// Event and audit row of a wiped copy, saying honestly what became of
    /// its data.
    async fn report_destruction(
        &self,
        subscription: &StorageSubscription,
        agent: &AgentEndpoint,
        disposal: Option<DiskDisposal>,
    ) {
        let (event_type, reason, note) = match &disposal {
            Some(DiskDisposal::Wiped) | None => (
                EventType::Normal,
                EventReason::Destroyed,
                format!("the copy on {} was wiped and deleted", agent.hypervisor),
            ),
            Some(DiskDisposal::DeletedWithoutWipe { reason }) => (
                EventType::Warning,
                EventReason::DiskNotWiped,
                format!(
                    "the copy on {} was deleted WITHOUT being wiped: {reason}",
                    agent.hypervisor
                ),
            ),
        };
        self.ctx
            .audit(
                AuditAction::StorageCopyDestroyed,
                AuditSubject::storage(subscription),
                json!({ "hypervisor": agent.hypervisor, "disposal": disposal }),
            )
            .await;
        self.ctx
            .publish(subscription, event_type, reason, &note)
            .await;
    }

    /// Both copies are gone: give back the quota and let the object go.
    async fn release(
        &self,
        subscription: &StorageSubscription,
        current: &StorageSubscriptionStatus,
        next: &StorageSubscriptionStatus,
    ) -> Result<(), ControllerError> {
        self.record_status(subscription, current, next).await?;
        // Given back before the finalizer goes: after it, nothing would.
        if let Some(namespace) = subscription.namespace() {
            self.ctx
                .ledger
                .quotas()
                .release(&charged_object(&namespace, &subscription.name_any()))
                .await?;
        }
        if let Some(account) = subscription
            .namespace()
            .as_deref()
            .and_then(AccountId::parse)
        {
            self.ctx
                .ledger
                .idempotency()
                .fulfil_resource(
                    &account,
                    &subscription.name_any(),
                    self.ctx.clock.now().as_millisecond(),
                )
                .await?;
        }
        let waiting = self
            .scheduling
            .placements
            .lock()
            .await
            .remove_storage(&ObjectKey::of(subscription));
        self.scheduling.wake(waiting);
        self.storage
            .remove_finalizer(
                subscription.namespace().as_deref(),
                &subscription.name_any(),
                STORAGE_FINALIZER,
            )
            .await?;
        self.ctx
            .audit(
                AuditAction::StorageReleased,
                AuditSubject::storage(subscription),
                json!({ "replicas": current.replicas.iter().map(|r| &r.hypervisor).collect::<Vec<_>>() }),
            )
            .await;
        tracing::info!("storage wiped and released");
        Ok(())
    }

    /// Writes the status when it changed, and reports a phase change.
    async fn record_status(
        &self,
        subscription: &StorageSubscription,
        current: &StorageSubscriptionStatus,
        next: &StorageSubscriptionStatus,
    ) -> Result<(), ControllerError> {
        if subscription.status.as_ref() == Some(next) {
            return Ok(());
        }
        self.storage
            .patch_status(
                subscription.namespace().as_deref(),
                &subscription.name_any(),
                next,
            )
            .await?;
        let waits_for_key = |status: &StorageSubscriptionStatus| {
            conditions::get(&status.conditions, ConditionType::Attached)
                .is_some_and(|c| c.reason == Reason::KeyRequired.as_str())
        };
        if waits_for_key(next) && !waits_for_key(current) {
            self.ask_for_key(subscription).await;
        }
        if current.phase != next.phase || subscription.status.is_none() {
            let phase = next.phase.api_name();
            self.ctx.metrics.storage_entered(phase);
            tracing::info!(
                from = current.phase.api_name(),
                to = phase,
                reason = next.reason.as_deref().unwrap_or_default(),
                "storage phase changed"
            );
            self.ctx
                .audit(
                    AuditAction::StoragePhase,
                    AuditSubject::storage(subscription),
                    json!({ "from": current.phase.api_name(), "to": phase, "reason": next.reason,
                            "zones": next.zones }),
                )
                .await;
            let (event_type, note) = match (&next.reason, next.phase) {
                (Some(reason), _) => (EventType::Warning, reason.clone()),
                (None, StoragePhase::Ready) => (
                    EventType::Normal,
                    format!(
                        "both copies exist ({})",
                        next.zones.as_deref().unwrap_or_default()
                    ),
                ),
                (None, _) => (EventType::Normal, format!("storage is {phase}")),
            };
            self.ctx
                .publish(
                    subscription,
                    event_type,
                    EventReason::storage_entered(next.phase),
                    &note,
                )
                .await;
        }
        Ok(())
    }
}
