//! The server reconciler: observe the hypervisor, decide with the pure
//! lifecycle plan, act through the agent, record the status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::ResourceExt;
use serde_json::json;
use stratus_core::Config;
use stratus_core::agent_api::{
    AgentErrorCode, DataDisk, DiskDisposal, DomainSpec, MAX_DATA_DISKS, RescueBoot,
    storage_volume_name,
};
use stratus_core::cloud_init::Seed;
use stratus_core::conditions::{self, ConditionStatus, ConditionType, EventReason, Reason};
use stratus_core::ids::{self, AccountId};
use stratus_core::lifecycle::{
    self, Action, LegacyDomain, ListedAddress, Observation, ServerFacts,
};
use stratus_core::quota::{Usage, charged_object};
use stratus_core::resources::{
    Account, DEFAULT_ZONE, SERVER_FINALIZER, ServerPhase, SnapshotOf, StorageEncryption,
    StorageSubscription, VirtualServer, VirtualServerStatus,
};
use stratus_core::scheduling;
use stratus_store::Resources;
use stratus_store::ledger::{AuditAction, AuditSubject, Charge};

use crate::addresses::{Addresses, Allocation, Holder};
use crate::context::Context;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::placements::{Placing, Scheduling, Waiting};
use crate::runtime::{ObjectKey, Outcome, Reconcile};
use stratus_agent_client::{AgentCallError, AgentEndpoint};

/// Observe→plan→act rounds in one reconcile before yielding to other keys.
const MAX_PASSES: usize = 8;
/// How soon a server still moving after [`MAX_PASSES`] is looked at again.
const STILL_MOVING: Duration = Duration::from_millis(200);
/// Why a restore's snapshot cannot be copied from now.
enum RestoreSource {
    /// Soon it can (its primary copy is being made whole again).
    Waits(String),
    /// It never will (deleted, held, never copied, elsewhere): the
    /// restore is withdrawn rather than left holding the server stopped.
    Gone(String),
}

/// The copy of a snapshot a disk is made from, and what it copies.
struct RestoreCopy {
    /// The volume of its primary copy on the server's hypervisor.
    volume: String,
    of: SnapshotOf,
}

/// How soon a restore that waits for its snapshot looks again (the
/// snapshot's own changes wake it sooner only through the server's).
const RESTORE_SOURCE_RECHECK: Duration = Duration::from_secs(10);
/// How soon a server that cannot be placed is tried again when nothing
/// wakes it before: a change that could place it (room freed here, a
/// hypervisor that becomes reachable or reports other capacity or images)
/// queues it at once, so this recheck only bounds what a missed wake costs.
pub const UNSCHEDULABLE_RECHECK: Duration = Duration::from_secs(300);

/// How soon a server waiting for a clean address is first tried again
/// when nothing wakes it before (addresses that become free in a pool of
/// its zone wake it at once): an inconclusive check may have passed.
pub const NO_CLEAN_ADDRESS_RECHECK: Duration = Duration::from_secs(60);
/// The longest a waiting server goes untried. Between the two, a server
/// is tried again after as long as it has waited so far, so that a pool
/// that stays exhausted, or a blacklist that keeps failing, costs each
/// waiting server a few checks an hour, not one a minute.
pub const NO_CLEAN_ADDRESS_RECHECK_MAX: Duration = Duration::from_secs(15 * 60);

/// How one observe→plan→act pass ended.
enum Pass {
    /// Acted: observe again.
    Again,
    Finished(Outcome),
}

pub struct ServerReconciler {
    ctx: Context,
    addresses: Arc<Addresses>,
    servers: Resources<VirtualServer>,
    config: Arc<Config>,
    /// Storage subscriptions, whose copies take room in the same pools.
    storage: Resources<StorageSubscription>,
    /// Placement decisions are taken one at a time, servers and storage
    /// alike, so two never count the same free capacity.
    scheduling: Arc<Scheduling>,
    /// Accounts, for their own quotas (backups are charged to them).
    accounts: Option<Resources<Account>>,
}

#[async_trait]
impl Reconcile for ServerReconciler {
    type Kind = VirtualServer;

    fn resources(&self) -> &Resources<VirtualServer> {
        &self.servers
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        // The agent is resolved once per reconcile, not once per pass.
        let mut agent = None;
        // The LUKS disks the agent last left out for want of their key.
        let mut waiting_for_key = Vec::new();
        for _ in 0..MAX_PASSES {
            let Some(server) = self
                .servers
                .get(key.namespace.as_deref(), &key.name)
                .await?
            else {
                self.scheduling
                    .placements
                    .lock()
                    .await
                    .waiting_servers
                    .remove(key);
                return Ok(Outcome::Done);
            };
            if let Pass::Finished(outcome) =
                self.pass(&server, &mut agent, &mut waiting_for_key).await?
            {
                let backups = crate::backups::BackupTaker {
                    ctx: &self.ctx,
                    servers: &self.servers,
                    storage: &self.storage,
                    accounts: self.accounts.as_ref(),
                    defaults: self.config.quotas,
                    window: self.config.policy.backups.window,
                };
                let now = self.ctx.clock.now();
                return Ok(match backups.run(&server).await {
                    Ok(Some(next)) => outcome.no_later_than(next, now),
                    Ok(None) => outcome,
                    // The server itself is as it should be: its backup is
                    // tried again soon, its reconcile not failed for it.
                    Err(error) => {
                        tracing::warn!(%error, "daily backup not dealt with; tried again in a minute");
                        outcome.no_later_than(
                            now.checked_add(jiff::SignedDuration::from_secs(60))
                                .unwrap_or(now),
                            now,
                        )
                    }
                });
            }
        }
        // Still moving: let other keys run and come back soon.
        Ok(Outcome::RequeueAfter(STILL_MOVING))
    }
}

impl ServerReconciler {
    pub fn new(
        ctx: Context,
        servers: Resources<VirtualServer>,
        storage: Resources<StorageSubscription>,
        config: Arc<Config>,
        addresses: Arc<Addresses>,
        scheduling: Arc<Scheduling>,
    ) -> Self {
        Self {
            ctx,
            addresses,
            servers,
            storage,
            config,
            scheduling,
            accounts: None,
        }
    }

    /// Charges backups to the accounts' own quotas, not only the defaults.
    pub fn with_accounts(mut self, accounts: Resources<Account>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Observes, plans, and takes the one next action.
    async fn pass(
        &self,
        server: &VirtualServer,
        resolved: &mut Option<AgentEndpoint>,
        waiting_for_key: &mut Vec<String>,
    ) -> Result<Pass, ControllerError> {
        let name = server.name_any();
        let current = server.status.clone().unwrap_or_default();
        if current.hypervisor.is_some() && current.domain.is_none() {
            self.adopt_legacy_placement(server, &current, resolved)
                .await?;
            return Ok(Pass::Again);
        }
        let offered = self
            .config
            .plan(&server.spec.plan)
            .map(stratus_core::config::Plan::resources);
        if let Some(resources) =
            lifecycle::resources_for_edited_plan(&server.spec, &current, offered)
        {
            // Kubernetes mode: `spec.plan` edited alone moves the server to
            // that plan as the catalogue offers it (R23).
            let asked = server.spec.clone();
            self.servers
                .update(server.namespace().as_deref(), &name, |s| {
                    let unchanged =
                        s.spec.plan == asked.plan && s.spec.resources == asked.resources;
                    if unchanged {
                        s.spec.resources = resources;
                    }
                    unchanged
                })
                .await?;
            tracing::info!(plan = %asked.plan, "spec.plan edited alone: its resources filled in from the catalogue");
            return Ok(Pass::Again);
        }
        let domain = domain_of(server, &current);
        let (agent, observation) = self.observe(&current, &domain, resolved).await;
        let (data_disks, mut keyed_disks) = self.data_disks(server, &current).await?;
        keyed_disks.extend(waiting_for_key.iter().cloned());
        keyed_disks.sort();
        keyed_disks.dedup();
        let wanted_disks: Vec<String> = data_disks.iter().map(|d| d.serial.clone()).collect();
        let facts = ServerFacts {
            spec: &server.spec,
            status: &current,
            generation: server.metadata.generation,
            has_finalizer: server.finalizers().iter().any(|f| f == SERVER_FINALIZER),
            deleting: server.metadata.deletion_timestamp.is_some(),
            shutdown_grace: self.config.policy.power.shutdown_grace,
            data_disks: &wanted_disks,
            keyed_disks: &keyed_disks,
            offered,
        };
        let deleting = facts.deleting;
        let decision = lifecycle::plan(facts, &observation, self.ctx.clock.now());
        let mut next = decision.status;
        self.tell_storage_of_attachments(server, &current, &next);
        if !deleting && (next.ipv4.is_some() || next.ipv6.is_some()) {
            self.note_listings(server, &mut next).await?;
        }
        // The plan only asks for agent actions once it observed the agent.
        let placed = |agent: Option<AgentEndpoint>| {
            agent.ok_or_else(|| {
                ControllerError::Malformed(name.clone(), "no agent for a placed server".into())
            })
        };

        let Some(action) = decision.next else {
            self.record_status(server, &current, &next).await?;
            return match (observation, current.hypervisor) {
                (Observation::AgentUnavailable(why), Some(hypervisor)) => {
                    Err(ControllerError::Agent {
                        hypervisor,
                        source: AgentCallError::Unreachable(why),
                    })
                }
                // A guest shutting down: look again, without holding a worker.
                _ => Ok(Pass::Finished(match decision.recheck_in {
                    Some(after) => {
                        Outcome::RequeueAfter(Duration::try_from(after).unwrap_or(STILL_MOVING))
                    }
                    None => Outcome::Done,
                })),
            };
        };
        tracing::debug!(?action, "acting");
        match action {
            Action::AddFinalizer => {
                self.servers
                    .add_finalizer(server.namespace().as_deref(), &name, SERVER_FINALIZER)
                    .await?;
            }
            Action::Schedule => {
                if let Some(retry) = self.schedule(server, &current, next).await? {
                    return Ok(Pass::Finished(Outcome::RequeueAfter(retry)));
                }
            }
            Action::AssignAddresses => {
                if let Some(retry) = self.assign_addresses(server, &current, next).await? {
                    return Ok(Pass::Finished(Outcome::RequeueAfter(retry)));
                }
            }
            Action::RemoveFinalizer => {
                self.release(server, &current, &next).await?;
                return Ok(Pass::Finished(Outcome::Done));
            }
            Action::ReleaseTerminated => {
                self.release_terminated(server, &current, next).await?;
                return Ok(Pass::Finished(Outcome::Done));
            }
            Action::ReserveRoom => {
                if let Some(retry) = self.reserve_room(server, &current, next).await? {
                    return Ok(Pass::Finished(Outcome::RequeueAfter(retry)));
                }
            }
            Action::FinishResize => {
                self.finish_resize(server, &current, next).await?;
            }
            Action::FinishRebuild => {
                self.finish_rebuild(server, &current, next).await?;
            }
            Action::FinishRescue => {
                let now = self.ctx.clock.now();
                if let Some(enabled) = lifecycle::record_rescue_changed(&mut next, now) {
                    self.record_status(server, &current, &next).await?;
                    let (reason, message) = if enabled {
                        (EventReason::RescueEnabled, "booted the rescue system")
                    } else {
                        (
                            EventReason::RescueDisabled,
                            "booted from its own disk again",
                        )
                    };
                    tracing::info!(rescue = enabled, "rescue mode changed");
                    self.ctx
                        .publish(server, EventType::Normal, reason, message)
                        .await;
                }
            }
            Action::EnsureDomain {
                create_disk,
                power_off,
            } => {
                let agent = placed(agent)?;
                if power_off {
                    tracing::warn!(grace = %self.config.policy.power.shutdown_grace, "guest did not shut down in time; powering it off");
                }
                let mut spec = self.domain_spec(server, &next, create_disk, power_off)?;
                spec.data_disks = data_disks;
                if let Some(snapshot) = lifecycle::disk_shape(&server.spec, &next).snapshot {
                    match self.restore_source(server, &next, snapshot).await? {
                        Ok(copy)
                            if lifecycle::takes_backups_system(
                                &server.name_any(),
                                &next,
                                &copy.of,
                            ) =>
                        {
                            // Made again from one of its own backups (R18):
                            // the system in it is of the image and the
                            // cloud-init instance it had then, which the
                            // status says before the disk is made, so the
                            // guest boots that image's way and cloud-init
                            // does not take it for a new server.
                            next.image = Some(copy.of.image.clone());
                            next.instance_generation = Some(copy.of.instance_generation);
                            self.record_status(server, &current, &next).await?;
                            return Ok(Pass::Again);
                        }
                        Ok(copy) => spec.disk_source = Some(copy.volume),
                        Err(RestoreSource::Gone(why)) if next.rebuild.is_some() => {
                            // Never a disk from anything else: the restore
                            // is withdrawn and the server runs on as it was.
                            self.withdraw_restore(server, snapshot, &why).await?;
                            return Ok(Pass::Again);
                        }
                        Err(RestoreSource::Gone(why) | RestoreSource::Waits(why)) => {
                            // The disk is never made from the image instead:
                            // a restore waits, a server ordered from the
                            // snapshot is not made, said on the server.
                            tracing::warn!(%snapshot, %why, "a disk waits for its snapshot");
                            let (condition, reason) = if next.rebuild.is_some() {
                                (ConditionType::Rebuilt, Reason::Rebuilding)
                            } else {
                                next.reason = Some(format!(
                                    "its disk is to be a copy of snapshot {snapshot}: {why}"
                                ));
                                (ConditionType::Provisioned, Reason::Provisioning)
                            };
                            conditions::set(
                                &mut next.conditions,
                                condition,
                                false,
                                reason,
                                why,
                                self.ctx.clock.now(),
                            );
                            self.record_status(server, &current, &next).await?;
                            return Ok(Pass::Finished(Outcome::RequeueAfter(
                                RESTORE_SOURCE_RECHECK,
                            )));
                        }
                    }
                }
                let result = self.ctx.agents.ensure(&agent, &domain, &spec).await;
                if let Ok(answer) = &result {
                    waiting_for_key.clone_from(&answer.waiting_for_key);
                    if let Some(disposal) = &answer.disk_disposal {
                        self.report_replaced_disk(server, &agent, disposal).await;
                    }
                    if spec.retired_disk_generation.is_some() {
                        lifecycle::record_disk_replaced(&mut next, answer.disk_generation);
                    }
                }
                // The shutdown request is made once, and a resize's or
                // rebuild's steps are kept: recorded before looking again.
                let asked_to_stop = result.is_ok()
                    && (next.stop_requested_at != current.stop_requested_at
                        || next.applied != current.applied
                        || next.resize != current.resize
                        || next.rebuild != current.rebuild
                        || next.disk_generation != current.disk_generation
                        || next.rescue_change != current.rescue_change);
                self.after_agent_call(server, &current, &mut next, &agent, result.map(drop))
                    .await?;
                if asked_to_stop {
                    self.record_status(server, &current, &next).await?;
                }
            }
            Action::Reboot => {
                let agent = placed(agent)?;
                let result = self.ctx.agents.reboot(&agent, &domain).await;
                if let Err(AgentCallError::Unreachable(_)) = &result {
                    // Not carried out: the retry must reboot, not skip it.
                    next.reboots_done = current.reboots_done;
                }
                self.after_agent_call(server, &current, &mut next, &agent, result.map(drop))
                    .await?;
                // The reboot is done: record it before looking again.
                self.record_status(server, &current, &next).await?;
            }
            Action::Destroy => {
                let agent = placed(agent)?;
                let result = self.ctx.agents.destroy(&agent, &domain).await;
                let disposal = result.as_ref().ok().and_then(|d| d.disk_disposal.clone());
                self.after_agent_call(server, &current, &mut next, &agent, result.map(drop))
                    .await?;
                self.report_destruction(server, &agent, &domain, disposal)
                    .await;
            }
        }
        Ok(Pass::Again)
    }

    /// Asks the agent of the server's hypervisor about its domain; `resolved`
    /// keeps the agent found for the next pass.
    async fn observe(
        &self,
        current: &VirtualServerStatus,
        domain: &str,
        resolved: &mut Option<AgentEndpoint>,
    ) -> (Option<AgentEndpoint>, Observation) {
        let Some(hypervisor) = &current.hypervisor else {
            return (None, Observation::NotPlaced);
        };
        let agent = match resolved.take() {
            Some(agent) if agent.hypervisor == *hypervisor => agent,
            _ => match self.ctx.directory.by_name(hypervisor).await {
                Ok(agent) => agent,
                Err(why) => return (None, Observation::AgentUnavailable(why)),
            },
        };
        *resolved = Some(agent.clone());
        let observation = match self.ctx.agents.observe(&agent, domain).await {
            Ok(observed) => Observation::Domain(observed),
            Err(e) => Observation::AgentUnavailable(e.to_string()),
        };
        (Some(agent), observation)
    }

    /// Nothing of the server is left on any hypervisor: record it and let
    /// the object go.
    async fn release(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        self.record_status(server, current, next).await?;
        // Given back before the finalizer goes: after it, nothing would.
        self.give_back(server).await?;
        self.servers
            .remove_finalizer(
                server.namespace().as_deref(),
                &server.name_any(),
                SERVER_FINALIZER,
            )
            .await?;
        // Its subscriptions are detached with its domain gone.
        self.tell_storage_of_attachments(server, current, &VirtualServerStatus::default());
        self.ctx
            .audit(
                AuditAction::ServerReleased,
                AuditSubject::server(server),
                json!({ "hypervisor": current.hypervisor }),
            )
            .await;
        tracing::info!("server torn down and released");
        Ok(())
    }

    /// A terminated server's domain and disk are gone (R14): its holdings
    /// are given back, then the wipe is recorded; the object stays, listed
    /// as terminated, until the deadline runner forgets it.
    async fn release_terminated(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        // Given back first: a crash before the status is recorded gives
        // back again (each step is idempotent), never leaks.
        self.give_back(server).await?;
        next.hypervisor = None;
        next.ipv4 = None;
        next.ipv6 = None;
        // Its disk is gone: a restore (R18) provisions it afresh, or from
        // the backup it names; a rebuild cut short by the termination is
        // over with it.
        next.provisioned = false;
        next.rebuild = None;
        next.stop_requested_at = None;
        next.wiped_at = Some(self.ctx.clock.now().to_string());
        self.record_status(server, current, &next).await?;
        self.ctx
            .audit(
                AuditAction::ServerReleased,
                AuditSubject::server(server),
                json!({ "hypervisor": current.hypervisor, "terminated": true }),
            )
            .await;
        tracing::info!("terminated server wiped and released; it stays listed as terminated");
        Ok(())
    }

    /// Gives back what the server held: its MAC address, its addresses
    /// (to quarantine, with the termination blacklist check), its quota,
    /// and its room on the hypervisor.
    async fn give_back(&self, server: &VirtualServer) -> Result<(), ControllerError> {
        let (uid, _) = ledger_holder(server)?;
        self.ctx
            .ledger
            .macs()
            .release(&uid, self.now_millis())
            .await?;
        self.addresses.release(&uid).await?;
        if let Some(namespace) = server.namespace() {
            self.ctx
                .ledger
                .quotas()
                .release(&charged_object(&namespace, &server.name_any()))
                .await?;
        }
        // The server existed: a retried order naming it must not bring it
        // back (kubectl deletes do not pass through the API).
        if let Some(account) = server.namespace().as_deref().and_then(AccountId::parse) {
            self.ctx
                .ledger
                .idempotency()
                .fulfil_resource(&account, &server.name_any(), self.now_millis())
                .await?;
        }
        // Its room is free for the next placement at once, and whoever
        // waits for room may take it.
        let waiting = self
            .scheduling
            .placements
            .lock()
            .await
            .remove_server(&ObjectKey::of(server));
        self.scheduling.wake(waiting);
        Ok(())
    }

    /// On an agent failure, records why in the status and fails the reconcile
    /// (the runtime retries with backoff).
    async fn after_agent_call(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &mut VirtualServerStatus,
        agent: &AgentEndpoint,
        result: Result<(), AgentCallError>,
    ) -> Result<(), ControllerError> {
        let Err(error) = result else {
            return Ok(());
        };
        let (reachable, reason) = match &error {
            AgentCallError::Unreachable(_) => (false, Reason::AgentUnavailable),
            AgentCallError::Rejected { code, .. } => {
                if *code == AgentErrorCode::Unauthorized {
                    // Perhaps rotated: the retry reads the token again.
                    self.ctx.directory.forget_token(&agent.hypervisor);
                }
                (true, Reason::AgentRefused)
            }
        };
        conditions::set(
            &mut next.conditions,
            ConditionType::AgentReachable,
            reachable,
            reason,
            error.to_string(),
            self.ctx.clock.now(),
        );
        self.record_status(server, current, next).await?;
        Err(ControllerError::Agent {
            hypervisor: agent.hypervisor.clone(),
            source: error,
        })
    }

    fn domain_spec(
        &self,
        server: &VirtualServer,
        status: &VirtualServerStatus,
        create_disk: bool,
        power_off: bool,
    ) -> Result<DomainSpec, ControllerError> {
        let name = server.name_any();
        let disk = lifecycle::disk_shape(&server.spec, status);
        let image = self.config.image(disk.image).ok_or_else(|| {
            ControllerError::Malformed(
                name.clone(),
                format!("image {} is not in the configuration", disk.image),
            )
        })?;
        let mac_address = status.mac_address.clone().ok_or_else(|| {
            ControllerError::Malformed(name.clone(), "placed without a MAC address".into())
        })?;
        let mut seed = Seed {
            instance_id: lifecycle::instance_id(&name, disk.instance_generation),
            hostname: server.spec.hostname.clone(),
            mac_address: mac_address.clone(),
            ipv4: status.ipv4.clone(),
            ipv6: status.ipv6.clone(),
            dns_servers: self.config.cloud_init.dns_servers.clone(),
            ssh_keys: Vec::new(),
            user_data: None,
        };
        let (ssh_keys, user_data) = lifecycle::guest_inputs(&server.spec, disk.generation);
        seed.ssh_keys = ssh_keys.to_vec();
        seed.user_data = user_data.map(str::to_owned);
        let rescue = match lifecycle::rescue_layout(&server.spec, status) {
            Some(request) => {
                let rescue_image = self
                    .config
                    .rescue_image
                    .as_deref()
                    .and_then(|name| self.config.image(name))
                    .ok_or_else(|| {
                        ControllerError::Malformed(
                            name.clone(),
                            "in rescue mode and the configuration names no rescueImage".into(),
                        )
                    })?;
                // The rescue system is another instance, with the keys and
                // user data given for it.
                seed.instance_id = format!("{}-rescue", seed.instance_id);
                seed.ssh_keys.clone_from(&request.ssh_keys);
                seed.user_data.clone_from(&request.user_data);
                Some(RescueBoot {
                    image_volume: rescue_image.volume.clone(),
                    boot: rescue_image.kernel_boot(),
                })
            }
            None => None,
        };
        let (resources, power) = lifecycle::domain_shape(&server.spec, status);
        Ok(DomainSpec {
            hostname: server.spec.hostname.clone(),
            vcpus: resources.vcpus,
            memory_mib: resources.memory_mib,
            disk_gib: resources.disk_gib,
            image_volume: image.volume.clone(),
            disk_generation: disk.generation,
            retired_disk_generation: disk.retired,
            disk_source: None,
            mac_address,
            power,
            create_disk,
            power_off,
            ipv4: status.ipv4.clone(),
            ipv6: status.ipv6.clone(),
            suspension: server.spec.hold(),
            boot: image.kernel_boot(),
            seed: Some(seed),
            rescue,
            data_disks: Vec::new(),
        })
    }

    /// The volume a restore's new disk is a copy of: the current version
    /// of the primary copy of `snapshot`, a snapshot of the server's
    /// account whose disk was copied, not being deleted, and whose primary
    /// copy is on the server's hypervisor. Else why the restore waits, or
    /// why it can never be made. A snapshot being deleted is copied from
    /// only for a server ordered from it that can be made at once: its
    /// wipe waits for that one (`storage::restores_from`); any other copy
    /// could meet a wipe under way.
    async fn restore_source(
        &self,
        server: &VirtualServer,
        status: &VirtualServerStatus,
        snapshot: &str,
    ) -> Result<Result<RestoreCopy, RestoreSource>, ControllerError> {
        let found = self
            .storage
            .get(server.namespace().as_deref(), snapshot)
            .await?;
        let Some((found, of)) = found.and_then(|s| s.spec.snapshot_of.clone().map(|of| (s, of)))
        else {
            return Ok(Err(RestoreSource::Gone(format!(
                "snapshot {snapshot} does not exist"
            ))));
        };
        // A restore not made yet is withdrawn when its snapshot is deleted
        // (the server keeps its disk); a server ordered from it, placed
        // where its primary copy is whole, has no other disk to keep, so
        // its order is carried out: the snapshot's wipe waits for it.
        let made_while_deleted = status.rebuild.is_none()
            && server.spec.termination.is_none()
            && stratus_core::storage::disk_copyable_for(
                status.hypervisor.as_ref(),
                &found.spec,
                found.status.as_ref(),
            );
        if found.metadata.deletion_timestamp.is_some() && !made_while_deleted {
            return Ok(Err(RestoreSource::Gone(format!(
                "snapshot {snapshot} is being deleted"
            ))));
        }
        // Terminated with its server, it is being wiped; a suspension only
        // keeps it read-only, which a copy from it respects (the API
        // refuses customers' restores from held ones).
        if let Some(termination) = &found.spec.termination {
            return Ok(Err(RestoreSource::Gone(format!(
                "snapshot {snapshot} was terminated ({}) and is wiped at {}",
                termination.cause.as_str(),
                termination.wipe_at
            ))));
        }
        let (Some(content), Some(primary)) = (
            found.spec.content.as_ref(),
            found.status.as_ref().and_then(|s| s.replicas.first()),
        ) else {
            return Ok(Err(RestoreSource::Gone(format!(
                "snapshot {snapshot} holds no copied disk"
            ))));
        };
        if status.hypervisor.as_ref() != Some(&primary.hypervisor) {
            return Ok(Err(RestoreSource::Gone(format!(
                "snapshot {snapshot} is kept on {}, not on the server's hypervisor",
                primary.hypervisor
            ))));
        }
        if primary.version != content.version {
            return Ok(Err(RestoreSource::Waits(format!(
                "the restore waits for the primary copy of snapshot {snapshot} to be whole again"
            ))));
        }
        Ok(Ok(RestoreCopy {
            volume: storage_volume_name(
                &ids::domain_name(
                    found.namespace().as_deref().unwrap_or_default(),
                    &found.name_any(),
                ),
                content.version,
            ),
            of,
        }))
    }

    /// The hypervisor keeping the primary copy of `snapshot`, which a
    /// server ordered from it is placed on; else why it cannot be placed.
    async fn snapshot_host(
        &self,
        server: &VirtualServer,
        snapshot: &str,
    ) -> Result<Result<stratus_core::ids::HypervisorName, String>, ControllerError> {
        let found = self
            .storage
            .get(server.namespace().as_deref(), snapshot)
            .await?
            // One being deleted places no new server: its wipe does not
            // wait for servers not placed yet.
            .filter(|s| s.spec.snapshot_of.is_some() && s.metadata.deletion_timestamp.is_none());
        let host = found
            .filter(|s| s.spec.content.is_some())
            .and_then(|s| s.status)
            .and_then(|s| s.replicas.first().map(|r| r.hypervisor.clone()));
        Ok(host.ok_or_else(|| {
            format!("snapshot {snapshot} it is ordered from is gone or holds no copied disk")
        }))
    }

    /// Withdraws the restore from `snapshot` the spec asks for, in one
    /// compare-and-set (a restore or rebuild asked since is kept): the
    /// lifecycle then gives the server back its own disk, as when a
    /// customer withdraws it.
    async fn withdraw_restore(
        &self,
        server: &VirtualServer,
        snapshot: &str,
        why: &str,
    ) -> Result<(), ControllerError> {
        let asked = server.spec.rebuild.clone();
        let withdrawn = self
            .servers
            .update(server.namespace().as_deref(), &server.name_any(), |s| {
                let same = s.spec.rebuild == asked
                    && asked.as_ref().and_then(|r| r.snapshot.as_deref()) == Some(snapshot);
                if same {
                    s.spec.rebuild = None;
                }
                same
            })
            .await?;
        if withdrawn.is_some_and(|s| s.spec.rebuild.is_none()) {
            let message = format!("the restore was withdrawn: {why}; the server keeps its disk");
            tracing::warn!(%snapshot, %why, "restore withdrawn");
            self.ctx
                .publish(server, EventType::Warning, EventReason::Rebuilt, &message)
                .await;
            self.ctx
                .audit(
                    AuditAction::ServerRestore,
                    AuditSubject::server(server),
                    json!({ "snapshot": snapshot, "withdrawn": why }),
                )
                .await;
        }
        Ok(())
    }

    /// The primary copies of the storage subscriptions attached to the
    /// server that can be its disks: of its account, created, on its
    /// hypervisor, not held by the account's standing. None once it is
    /// being deleted (its disks are detached before its domain goes) or
    /// while it is held.
    ///
    /// Also answers those of them that wait for their key (LUKS copies
    /// whose key is not loaded): the server does without them until it is.
    async fn data_disks(
        &self,
        server: &VirtualServer,
        status: &VirtualServerStatus,
    ) -> Result<(Vec<DataDisk>, Vec<String>), ControllerError> {
        let Some(hypervisor) = &status.hypervisor else {
            return Ok(Default::default());
        };
        // A suspended or terminated server holds no storage: it is
        // plugged in again when the suspension is lifted.
        if server.metadata.deletion_timestamp.is_some() || server.spec.hold().is_some() {
            return Ok(Default::default());
        }
        let name = server.name_any();
        let mut waiting_for_key = Vec::new();
        let mut disks: Vec<DataDisk> = self
            .storage
            .list(server.namespace().as_deref())
            .await?
            .items
            .into_iter()
            .filter(|s| {
                s.spec.attached_to.as_deref() == Some(name.as_str())
                    && s.metadata.deletion_timestamp.is_none()
                    && s.spec.held().is_none()
            })
            .filter_map(|s| {
                let status = s.status.as_ref()?;
                let primary = status.replicas.first()?;
                let encrypted = s.spec.encryption == StorageEncryption::Luks;
                if encrypted && !status.key_loaded {
                    waiting_for_key.push(s.name_any());
                }
                (primary.created && primary.hypervisor == *hypervisor).then(|| DataDisk {
                    volume: primary.volume.clone(),
                    serial: s.name_any(),
                    encrypted,
                })
            })
            .collect();
        disks.sort_by(|a, b| a.serial.cmp(&b.serial));
        disks.truncate(MAX_DATA_DISKS);
        waiting_for_key.sort();
        Ok((disks, waiting_for_key))
    }

    /// Queues the subscriptions whose disk the agent reported attached or
    /// detached, so their `Attached` condition follows.
    fn tell_storage_of_attachments(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &VirtualServerStatus,
    ) {
        if current.attached_storage == next.attached_storage {
            return;
        }
        let namespace = server.namespace();
        let changed = current
            .attached_storage
            .iter()
            .filter(|s| !next.attached_storage.contains(s))
            .chain(
                next.attached_storage
                    .iter()
                    .filter(|s| !current.attached_storage.contains(s)),
            )
            .map(|s| ObjectKey::new(namespace.as_deref(), s))
            .collect();
        self.scheduling.wake(Waiting {
            servers: Vec::new(),
            storage: changed,
        });
    }

    /// Holds the server's addresses from a pool of its hypervisor's zone
    /// and records them; with none clean and free, records why and
    /// returns when to try again.
    async fn assign_addresses(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<Option<Duration>, ControllerError> {
        let hypervisor = current.hypervisor.as_ref().ok_or_else(|| {
            ControllerError::Malformed(
                server.name_any(),
                "addresses asked for before placement".into(),
            )
        })?;
        let zone = match self
            .ctx
            .directory
            .hypervisors
            .get(None, hypervisor.as_str())
            .await?
        {
            Some(h) => h.spec.zone,
            None => server
                .spec
                .zone
                .clone()
                .unwrap_or_else(|| DEFAULT_ZONE.to_owned()),
        };
        let (uid, subject) = ledger_holder(server)?;
        let holder = Holder {
            uid,
            account: server.namespace().unwrap_or_default(),
            subject,
        };
        let now = self.ctx.clock.now();
        match self.addresses.assign(&holder, &zone).await? {
            Allocation::Assigned(assigned) => {
                lifecycle::record_addresses(&mut next, &assigned, now);
                self.record_status(server, current, &next).await?;
                Ok(None)
            }
            Allocation::NoCleanAddress(why) => {
                lifecycle::record_no_clean_address(&mut next, why, now);
                if current.reason != next.reason {
                    tracing::warn!(
                        reason = next.reason.as_deref().unwrap_or_default(),
                        "server waits for an address"
                    );
                }
                self.record_status(server, current, &next).await?;
                Ok(Some(no_clean_address_recheck(&next, now)))
            }
        }
    }

    /// Chooses a hypervisor and records it (or why there is none) before
    /// anything is created. Returns a retry delay when nothing fits.
    async fn schedule(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<Option<Duration>, ControllerError> {
        // The MAC is held in the ledger before the placement is recorded, so
        // a crash in between leaves a holding the retry finds again. It is
        // taken before the scheduling lock: placements never wait on a
        // ledger write. A server waiting for room keeps its MAC meanwhile.
        let (uid, subject) = ledger_holder(server)?;
        let mac = self
            .ctx
            .ledger
            .macs()
            .allocate(&uid, &subject, self.now_millis())
            .await?;
        let mut placements = self.scheduling.placements.lock().await;
        let key = ObjectKey::of(server);
        // Ordered from a snapshot: only the hypervisor keeping its primary
        // copy can make the disk.
        let pinned = match &server.spec.from_snapshot {
            Some(snapshot) => Some(self.snapshot_host(server, snapshot).await?),
            None => None,
        };
        let placement = match self.config.image(&server.spec.image) {
            None => Err(format!("image {} is no longer offered", server.spec.image)),
            Some(_) if matches!(pinned, Some(Err(_))) => {
                Err(pinned.clone().and_then(Result::err).unwrap_or_default())
            }
            Some(image) => {
                let mut hypervisors = self.ctx.directory.hypervisors.list(None).await?.items;
                if let Some(Ok(host)) = &pinned {
                    hypervisors.retain(|h| h.name_any() == host.as_str());
                }
                placements.refresh(&self.servers, &self.storage).await?;
                scheduling::choose_hypervisor(
                    &server.spec.resources,
                    &image.volume,
                    server.spec.zone.as_deref(),
                    &hypervisors,
                    &placements.load(Placing::Server(&key)),
                )
                .map_err(|e| e.to_string())
                .and_then(|chosen| {
                    let zone = hypervisors
                        .iter()
                        .find(|h| h.name_any() == chosen.as_str())
                        .map(|h| h.spec.zone.clone())
                        .ok_or_else(|| format!("hypervisor {chosen} vanished while chosen"))?;
                    Ok((chosen, zone))
                })
            }
        };
        lifecycle::record_placement(
            &mut next,
            placement
                .as_ref()
                .map(|(name, zone)| (name, zone.as_str()))
                .map_err(Clone::clone),
            &domain_of(server, current),
            &mac,
            self.ctx.clock.now(),
        );
        self.record_status(server, current, &next).await?;
        if let Some(hypervisor) = &next.hypervisor {
            placements.place_server(key.clone(), hypervisor.clone(), server.held_resources());
        }
        if placement.is_ok() {
            return Ok(None);
        }
        placements.waiting_servers.insert(key);
        // A waiting server is tried again on every wake; only a new reason
        // is worth a log line.
        if current.reason != next.reason {
            tracing::info!(
                reason = next.reason.as_deref().unwrap_or_default(),
                "server cannot be placed yet"
            );
        }
        Ok(Some(UNSCHEDULABLE_RECHECK))
    }

    /// Holds room for the plan a resize moves to (R23) on the server's own
    /// hypervisor, under the placements' lock so no order is placed into
    /// it meanwhile; or says what is missing and waits for room to be
    /// freed. Returns a retry delay while it waits.
    async fn reserve_room(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<Option<Duration>, ControllerError> {
        let Some(hypervisor) = next.hypervisor.clone() else {
            return Ok(Some(UNSCHEDULABLE_RECHECK));
        };
        let now = self.ctx.clock.now();
        let key = ObjectKey::of(server);
        let mut placements = self.scheduling.placements.lock().await;
        placements.refresh(&self.servers, &self.storage).await?;
        let capacity = self
            .ctx
            .directory
            .hypervisors
            .get(None, hypervisor.as_str())
            .await?
            .and_then(|h| h.status.and_then(|s| s.capacity));
        let others = placements
            .load(Placing::Server(&key))
            .get(&hypervisor)
            .map(|p| p.load)
            .unwrap_or_default();
        let held = server.held_resources();
        let from = next
            .applied
            .as_ref()
            .map_or(server.spec.resources, |a| a.resources);
        let missing = match &capacity {
            None => Some(format!(
                "hypervisor {hypervisor} has not reported its capacity"
            )),
            Some(capacity) => {
                scheduling::growth_shortfall(capacity, others, &from, &server.spec.resources)
                    .map(|lacking| format!("hypervisor {hypervisor} lacks {lacking}"))
            }
        };
        let Some(missing) = missing else {
            if let Some(progress) = next.resize.as_mut() {
                progress.room_reserved = true;
            }
            self.record_status(server, current, &next).await?;
            placements.place_server(key, hypervisor, held);
            tracing::info!(plan = %server.spec.plan, "room held for a resize");
            return Ok(None);
        };
        let message = format!(
            "moving to plan {} waits for room: {missing}",
            server.spec.plan
        );
        let said_before = conditions::get(&current.conditions, ConditionType::Resized)
            .is_some_and(|c| c.message == message);
        conditions::set(
            &mut next.conditions,
            ConditionType::Resized,
            false,
            Reason::InsufficientCapacity,
            message.clone(),
            now,
        );
        self.record_status(server, current, &next).await?;
        placements.waiting_servers.insert(key);
        drop(placements);
        if !said_before {
            tracing::info!(%message, "resize waits for room");
            self.ctx
                .publish(
                    server,
                    EventType::Warning,
                    EventReason::ResizeWaiting,
                    &message,
                )
                .await;
        }
        Ok(Some(UNSCHEDULABLE_RECHECK))
    }

    /// The server runs with its new plan: the plan change goes to billing
    /// (once, whatever retries), then the resize is recorded as done.
    async fn finish_resize(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        let now = self.ctx.clock.now();
        let Some(progress) = next.resize.clone() else {
            return Ok(());
        };
        let account = server.namespace().unwrap_or_default();
        let name = server.name_any();
        let charge = Charge {
            key: format!("plan_changed:{account}/{name}:{}", progress.started_at),
            account: account.clone(),
            kind: "plan_changed".into(),
            amount: 0,
            currency: self.config.policy.currency.clone(),
            subject: name.clone(),
            detail: json!({
                "server": name,
                "from": progress.from,
                "to": server.spec.plan,
                "at": now.to_string(),
                "requested_at": progress.started_at,
            }),
            created_at: now.as_millisecond(),
        };
        self.ctx.ledger.charges().record(&charge).await?;
        // The quota was charged the larger of both plans while it moved
        // (asked through the API), or still the old plan (a spec edited
        // in Kubernetes mode charges nothing when asked): now the new one.
        // A charge changed otherwise meanwhile (a new resize, the server's
        // deletion) is left as it is.
        if let Some(from) = progress.from_resources {
            let charged_as = charged_object(&account, &name);
            let new = Usage::of_server(&server.spec.resources);
            let mut settled = false;
            let during = from.larger_of(server.spec.resources);
            let tried = if during == from {
                &[during][..]
            } else {
                &[during, from][..]
            };
            for charged in tried {
                let moved = self
                    .ctx
                    .ledger
                    .quotas()
                    .recharge(
                        &account,
                        &charged_as,
                        Usage::of_server(charged),
                        new,
                        stratus_core::quota::Quota::default(),
                        now.as_millisecond(),
                    )
                    .await?;
                if moved.is_ok() {
                    settled = true;
                    break;
                }
            }
            if !settled {
                tracing::info!("the quota charge changed during the resize; left as it is");
            }
        }
        let downtime = lifecycle::record_resized(&mut next, now);
        self.record_status(server, current, &next).await?;
        let message = conditions::get(&next.conditions, ConditionType::Resized)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        tracing::info!(
            from = %progress.from,
            to = %server.spec.plan,
            downtime_ms = downtime.map(|d| d.as_millis()),
            "resized"
        );
        self.ctx
            .publish(server, EventType::Normal, EventReason::Resized, &message)
            .await;
        Ok(())
    }

    /// The server runs on its new disk and the old one is wiped: the
    /// rebuild is recorded as done.
    async fn finish_rebuild(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        let Some(progress) = next.rebuild.clone() else {
            return Ok(());
        };
        let downtime = lifecycle::record_rebuilt(&mut next, self.ctx.clock.now());
        self.record_status(server, current, &next).await?;
        let message = conditions::get(&next.conditions, ConditionType::Rebuilt)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        tracing::info!(
            from = %progress.from_image,
            to = %progress.image,
            generation = progress.generation,
            downtime_ms = downtime.map(|d| d.as_millis()),
            "rebuilt"
        );
        self.ctx
            .publish(server, EventType::Normal, EventReason::Rebuilt, &message)
            .await;
        Ok(())
    }

    /// Event and audit row of a disk a rebuild replaced, or of a rescue
    /// disk, deleted while the server stays: honest about its wipe.
    async fn report_replaced_disk(
        &self,
        server: &VirtualServer,
        agent: &AgentEndpoint,
        disposal: &DiskDisposal,
    ) {
        if let DiskDisposal::DeletedWithoutWipe { reason } = disposal {
            tracing::warn!(%reason, hypervisor = %agent.hypervisor, "a replaced disk was deleted without being wiped");
            self.ctx
                .publish(
                    server,
                    EventType::Warning,
                    EventReason::DiskNotWiped,
                    reason,
                )
                .await;
        }
        self.ctx
            .audit(
                AuditAction::ServerDiskReplaced,
                AuditSubject::server(server),
                json!({ "hypervisor": agent.hypervisor, "disposal": disposal }),
            )
            .await;
    }

    /// Event and audit row of a destroyed domain, saying honestly what became
    /// of the disk's data.
    async fn report_destruction(
        &self,
        server: &VirtualServer,
        agent: &AgentEndpoint,
        domain: &str,
        disposal: Option<DiskDisposal>,
    ) {
        let (disk, note) = match &disposal {
            Some(DiskDisposal::Wiped) => (
                "wiped",
                "domain destroyed, disk wiped and deleted".to_owned(),
            ),
            Some(DiskDisposal::DeletedWithoutWipe { reason }) => (
                "deleted without wipe",
                format!("domain destroyed, disk deleted WITHOUT wipe: {reason}"),
            ),
            // Gone already (an earlier attempt deleted it).
            None => ("already gone", "domain destroyed, no disk left".to_owned()),
        };
        let note = format!("{note} on hypervisor {}", agent.hypervisor);
        self.ctx
            .publish(server, EventType::Normal, EventReason::Destroyed, &note)
            .await;
        if let Some(DiskDisposal::DeletedWithoutWipe { reason }) = &disposal {
            tracing::warn!(%reason, hypervisor = %agent.hypervisor, "a disk was deleted without being wiped");
            self.ctx
                .publish(
                    server,
                    EventType::Warning,
                    EventReason::DiskNotWiped,
                    reason,
                )
                .await;
        }
        self.ctx
            .audit(
                AuditAction::ServerDestroyed,
                AuditSubject::server(server),
                json!({ "hypervisor": agent.hypervisor, "domain": domain, "disk": disk, "disposal": disposal }),
            )
            .await;
    }

    /// A server placed before domain names and MACs were recorded keeps its
    /// domain (named after the object alone) and its MAC, which the ledger
    /// now holds for it so that no other server is given it.
    async fn adopt_legacy_placement(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        resolved: &mut Option<AgentEndpoint>,
    ) -> Result<(), ControllerError> {
        let mut next = current.clone();
        let legacy = ids::legacy_domain_name(&server.name_any());
        let observed = match self.observe(current, &legacy, resolved).await {
            (_, Observation::Domain(observed)) => observed,
            (_, Observation::AgentUnavailable(why)) => {
                // Which domain is the server's is decided only on what its
                // agent says: never guessed.
                return Err(ControllerError::Hypervisor(
                    current
                        .hypervisor
                        .as_ref()
                        .map(|h| h.to_string())
                        .unwrap_or_default(),
                    format!("cannot tell whether {legacy} is this server's domain: {why}"),
                ));
            }
            (_, Observation::NotPlaced) => return Ok(()),
        };
        match lifecycle::legacy_domain(current.mac_address.as_deref(), &observed) {
            LegacyDomain::Adopt => {
                if let Some(mac) = &current.mac_address {
                    let (uid, subject) = ledger_holder(server)?;
                    let adopted = self
                        .ctx
                        .ledger
                        .macs()
                        .adopt(&uid, &subject, mac, self.now_millis())
                        .await?;
                    if !adopted {
                        tracing::warn!(%mac, "the MAC of this server is held by another server too: one of them needs a new one");
                    }
                }
                tracing::info!(domain = %legacy, "domain of a server placed by an earlier release recorded");
                next.domain = Some(legacy);
            }
            found => {
                let domain = ids::domain_name(
                    server.namespace().as_deref().unwrap_or_default(),
                    &server.name_any(),
                );
                if found == LegacyDomain::NotOurs {
                    tracing::warn!(legacy = %legacy, %domain, "a domain named after this server by an earlier release carries another MAC: it is another account's, left alone");
                }
                next.domain = Some(domain);
            }
        }
        self.record_status(server, current, &next).await
    }

    /// Says on the server whether a blacklist lists its addresses (the
    /// ledger knows, from the checks at allocation and the sweep's).
    async fn note_listings(
        &self,
        server: &VirtualServer,
        next: &mut VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        let (uid, _) = ledger_holder(server)?;
        let listed: Vec<ListedAddress> = self
            .ctx
            .ledger
            .ips()
            .listings_held_by(&uid)
            .await?
            .into_iter()
            .map(|l| ListedAddress {
                address: l.checked,
                zone: l.zone,
                reason: l.reason,
            })
            .collect();
        lifecycle::record_listings(next, &listed, self.ctx.clock.now());
        Ok(())
    }

    fn now_millis(&self) -> i64 {
        self.ctx.clock.now().as_millisecond()
    }

    /// Writes the status when it changed, and reports a phase change.
    async fn record_status(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &VirtualServerStatus,
    ) -> Result<(), ControllerError> {
        if server.status.as_ref() == Some(next) {
            return Ok(());
        }
        self.servers
            .patch_status(server.namespace().as_deref(), &server.name_any(), next)
            .await?;
        if current.phase != next.phase {
            self.report_transition(server, current, next).await;
        }
        self.report_listing_change(server, current, next).await;
        Ok(())
    }

    /// An event when the server's addresses become listed, or clean again.
    async fn report_listing_change(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &VirtualServerStatus,
    ) {
        let clean = |status: &VirtualServerStatus| {
            conditions::get(&status.conditions, ConditionType::AddressesClean)
                .map(|c| (c.status, c.message.clone()))
        };
        let (before, after) = (clean(current), clean(next));
        if before.as_ref().map(|b| b.0) == after.as_ref().map(|a| a.0) {
            return;
        }
        match after {
            Some((ConditionStatus::False, message)) => {
                tracing::warn!(%message, "server's address is blacklisted");
                self.ctx
                    .publish(
                        server,
                        EventType::Warning,
                        EventReason::AddressListed,
                        &message,
                    )
                    .await;
            }
            Some((ConditionStatus::True, _)) if before.is_some() => {
                self.ctx
                    .publish(
                        server,
                        EventType::Normal,
                        EventReason::AddressDelisted,
                        "no blacklist lists the server's addresses any more",
                    )
                    .await;
            }
            _ => {}
        }
    }

    /// Metrics, log, audit row and event for a server entering a phase.
    async fn report_transition(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        next: &VirtualServerStatus,
    ) {
        let phase = next.phase.api_name();
        self.ctx.metrics.entered(phase);
        tracing::info!(
            from = current.phase.api_name(),
            to = phase,
            reason = next.reason.as_deref().unwrap_or_default(),
            "phase changed"
        );
        let detail = json!({
            "from": current.phase.api_name(),
            "to": phase,
            "reason": next.reason,
            "hypervisor": next.hypervisor,
        });
        self.ctx
            .audit(
                AuditAction::ServerPhase,
                AuditSubject::server(server),
                detail,
            )
            .await;
        let (event_type, note) = match (&next.reason, next.phase, &next.hypervisor) {
            (Some(reason), _, _) => (EventType::Warning, reason.clone()),
            (None, ServerPhase::Provisioning, Some(hypervisor)) => (
                EventType::Normal,
                format!("placed on hypervisor {hypervisor}"),
            ),
            (None, _, _) => (EventType::Normal, format!("server is {phase}")),
        };
        self.ctx
            .publish(server, event_type, EventReason::entered(next.phase), &note)
            .await;
    }
}

/// How soon a server waiting for an address is tried again: after as
/// long as it has waited (read from its condition, so a failover keeps
/// the pace), within [`NO_CLEAN_ADDRESS_RECHECK`]..=[`NO_CLEAN_ADDRESS_RECHECK_MAX`].
fn no_clean_address_recheck(status: &VirtualServerStatus, now: jiff::Timestamp) -> Duration {
    let waited = conditions::since(&status.conditions, ConditionType::AddressesAssigned, false)
        .and_then(|since| Duration::try_from(now.duration_since(since)).ok())
        .unwrap_or_default();
    waited.clamp(NO_CLEAN_ADDRESS_RECHECK, NO_CLEAN_ADDRESS_RECHECK_MAX)
}

/// The domain of a server: the one recorded at placement, else the one it
/// will get.
pub(crate) fn domain_of(server: &VirtualServer, status: &VirtualServerStatus) -> String {
    status.domain.clone().unwrap_or_else(|| {
        ids::domain_name(
            server.namespace().as_deref().unwrap_or_default(),
            &server.name_any(),
        )
    })
}

/// What the ledger (MACs and addresses) knows a server by: its uid (a server created again
/// under the same name does not share it) and, for people, its
/// `namespace/name`.
fn ledger_holder(server: &VirtualServer) -> Result<(String, String), ControllerError> {
    let uid = server.metadata.uid.clone().ok_or_else(|| {
        ControllerError::Malformed(server.name_any(), "the object has no uid".into())
    })?;
    let subject = format!(
        "{}/{}",
        server.namespace().unwrap_or_default(),
        server.name_any()
    );
    Ok((uid, subject))
}
