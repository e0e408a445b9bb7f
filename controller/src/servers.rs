//! The server reconciler: observe the hypervisor, decide with the pure
//! lifecycle plan, act through the agent, record the status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde_json::json;
use stratus_core::agent_api::DomainSpec;
use stratus_core::ids::{domain_name_for, mac_address_for};
use stratus_core::lifecycle::{self, Action, Observation, ServerFacts};
use stratus_core::resources::{
    Hypervisor, SERVER_FINALIZER, ServerPhase, ServerResources, VirtualServer, VirtualServerStatus,
};
use stratus_core::scheduling::{self, Candidate, Load};
use stratus_core::{Clock, Config};
use stratus_store::Resources;
use stratus_store::ledger::{AuditEntry, Ledger};
use stratus_store::secrets::Secrets;
use tracing::Instrument;

use crate::agent_client::{AgentCallError, AgentClient, AgentEndpoint};
use crate::error::ControllerError;
use crate::events::{EventType, Events, NoEvents};
use crate::metrics::ControllerMetrics;

/// Observe→plan→act rounds in one reconcile before yielding to other keys.
const MAX_PASSES: usize = 8;
/// How soon an unschedulable server is tried again.
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(10);

/// How long the placed-load snapshot is trusted before it is listed again.
/// Placements and releases made here update it at once; anything else (an
/// object removed by hand) waits for the next listing.
const PLACEMENTS_REFRESH: Duration = Duration::from_secs(5);

/// What is placed where: listing every server for every placement is the
/// cost that dominates a burst of orders.
#[derive(Default)]
struct Placements {
    listed_at: Option<Instant>,
    /// (namespace, name) → (hypervisor, reserved resources).
    servers: HashMap<(String, String), (String, ServerResources)>,
}

impl Placements {
    fn is_fresh(&self) -> bool {
        self.listed_at
            .is_some_and(|at| at.elapsed() < PLACEMENTS_REFRESH)
    }

    fn relist(&mut self, servers: Vec<VirtualServer>) {
        self.servers = servers
            .into_iter()
            .filter_map(|s| {
                let hypervisor = s.status.as_ref()?.hypervisor.clone()?;
                Some((
                    (s.namespace().unwrap_or_default(), s.name_any()),
                    (hypervisor, s.spec.resources),
                ))
            })
            .collect();
        self.listed_at = Some(Instant::now());
    }

    /// Load per hypervisor, leaving out `except`.
    fn load(&self, except: &(String, String)) -> HashMap<&str, Load> {
        let mut load: HashMap<&str, Load> = HashMap::new();
        for (key, (hypervisor, resources)) in &self.servers {
            if key != except {
                load.entry(hypervisor.as_str()).or_default().add(resources);
            }
        }
        load
    }
}

/// What the runtime should do with the key next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Converged (or gone); the periodic resync will look again.
    Done,
    RetryAfter(Duration),
}

pub struct ServerReconciler {
    pub servers: Resources<VirtualServer>,
    pub hypervisors: Resources<Hypervisor>,
    pub agents: Arc<dyn AgentClient>,
    pub credentials: Arc<dyn Secrets>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub ledger: Option<Ledger>,
    pub metrics: ControllerMetrics,
    pub events: Arc<dyn Events>,
    /// Placement decisions are taken one at a time so two servers never
    /// count the same free capacity; the lock also guards what is placed.
    scheduling: tokio::sync::Mutex<Placements>,
}

impl ServerReconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        servers: Resources<VirtualServer>,
        hypervisors: Resources<Hypervisor>,
        agents: Arc<dyn AgentClient>,
        credentials: Arc<dyn Secrets>,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        ledger: Option<Ledger>,
        metrics: ControllerMetrics,
    ) -> Self {
        Self {
            servers,
            hypervisors,
            agents,
            credentials,
            config,
            clock,
            ledger,
            metrics,
            events: Arc::new(NoEvents),
            scheduling: tokio::sync::Mutex::new(Placements::default()),
        }
    }

    /// Publishes events (Kubernetes) besides the audit log.
    pub fn with_events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = events;
        self
    }

    pub async fn reconcile(&self, namespace: &str, name: &str) -> Result<Outcome, ControllerError> {
        let span = tracing::info_span!("reconcile", kind = "VirtualServer", namespace, name);
        let started = Instant::now();
        let result = self
            .reconcile_passes(namespace, name)
            .instrument(span.clone())
            .await;
        let label = result.as_ref().err().map(ControllerError::metric_label);
        self.metrics.reconciled(started.elapsed(), label);
        if let Err(error) = &result {
            span.in_scope(|| tracing::warn!(%error, "reconcile failed; will retry"));
        }
        result
    }

    async fn reconcile_passes(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Outcome, ControllerError> {
        let domain = domain_name_for(name);
        for _ in 0..MAX_PASSES {
            let Some(server) = self.servers.get(Some(namespace), name).await? else {
                return Ok(Outcome::Done);
            };
            let current = server.status.clone().unwrap_or_default();
            let endpoint = match &current.hypervisor {
                None => None,
                Some(hypervisor) => Some(self.endpoint(hypervisor).await),
            };
            let observation = match &endpoint {
                None => Observation::NotPlaced,
                Some(Err(why)) => Observation::AgentUnavailable(why.clone()),
                Some(Ok(agent)) => match self.agents.observe(agent, &domain).await {
                    Ok(observed) => Observation::Domain(observed),
                    Err(e) => Observation::AgentUnavailable(e.to_string()),
                },
            };
            let facts = ServerFacts {
                spec: &server.spec,
                status: &current,
                generation: server.metadata.generation,
                has_finalizer: server.finalizers().iter().any(|f| f == SERVER_FINALIZER),
                deleting: server.metadata.deletion_timestamp.is_some(),
            };
            let decision = lifecycle::plan(facts, &observation, self.clock.now());
            let mut next = decision.status;
            let agent = endpoint.and_then(Result::ok);
            // The plan only asks for agent actions once it observed the agent.
            let placed = |agent: Option<AgentEndpoint>| {
                agent.ok_or_else(|| {
                    ControllerError::Malformed(name.into(), "no agent for a placed server".into())
                })
            };

            let Some(action) = decision.actions.first().copied() else {
                self.write_status(&server, &current, &next).await?;
                return match observation {
                    Observation::AgentUnavailable(why) => Err(ControllerError::Agent {
                        hypervisor: current.hypervisor.clone().unwrap_or_default(),
                        source: AgentCallError::Unreachable(why),
                    }),
                    _ => Ok(Outcome::Done),
                };
            };
            tracing::debug!(?action, "acting");
            match action {
                Action::AddFinalizer => {
                    self.servers
                        .add_finalizer(Some(namespace), name, SERVER_FINALIZER)
                        .await?;
                }
                Action::Schedule => {
                    if let Some(retry) = self.schedule(&server, &current, next).await? {
                        return Ok(Outcome::RetryAfter(retry));
                    }
                }
                Action::RemoveFinalizer => {
                    self.write_status(&server, &current, &next).await?;
                    self.servers
                        .remove_finalizer(Some(namespace), name, SERVER_FINALIZER)
                        .await?;
                    // Its room is free for the next placement at once.
                    self.scheduling
                        .lock()
                        .await
                        .servers
                        .remove(&(namespace.to_owned(), name.to_owned()));
                    self.audit(
                        &server,
                        "deleted",
                        json!({ "hypervisor": current.hypervisor }),
                    )
                    .await;
                    tracing::info!("server torn down and released");
                    return Ok(Outcome::Done);
                }
                Action::EnsureDomain { create_disk } => {
                    let agent = placed(agent)?;
                    let spec = self.domain_spec(&server, &current, create_disk)?;
                    let result = self.agents.ensure(&agent, &domain, &spec).await;
                    self.after_agent_call(&server, &current, &mut next, &agent, result.map(drop))
                        .await?;
                }
                Action::Reboot => {
                    let agent = placed(agent)?;
                    let result = self.agents.reboot(&agent, &domain).await;
                    self.after_agent_call(&server, &current, &mut next, &agent, result.map(drop))
                        .await?;
                    // The reboot is done: record it before looking again.
                    self.write_status(&server, &current, &next).await?;
                }
                Action::Destroy => {
                    let agent = placed(agent)?;
                    let result = self.agents.destroy(&agent, &domain).await;
                    self.after_agent_call(&server, &current, &mut next, &agent, result.map(drop))
                        .await?;
                    self.events
                        .publish(
                            &server,
                            EventType::Normal,
                            "Destroyed",
                            &format!(
                                "domain and disk destroyed on hypervisor {}",
                                agent.hypervisor
                            ),
                        )
                        .await;
                    self.audit(
                        &server,
                        "destroyed",
                        json!({ "hypervisor": agent.hypervisor, "domain": domain }),
                    )
                    .await;
                }
            }
        }
        // Still moving: let other keys run and come back soon.
        Ok(Outcome::RetryAfter(Duration::from_millis(200)))
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
        let now = self.clock.now().to_string();
        let (reachable, reason) = match &error {
            AgentCallError::Unreachable(_) => (false, "AgentUnavailable"),
            AgentCallError::Rejected { .. } => (true, "AgentRefused"),
        };
        stratus_core::conditions::set(
            &mut next.conditions,
            stratus_core::conditions::AGENT_REACHABLE,
            reachable,
            reason,
            error.to_string(),
            &now,
        );
        self.write_status(server, current, next).await?;
        Err(ControllerError::Agent {
            hypervisor: agent.hypervisor.clone(),
            source: error,
        })
    }

    async fn endpoint(&self, hypervisor: &str) -> Result<AgentEndpoint, String> {
        let found = self
            .hypervisors
            .get(None, hypervisor)
            .await
            .map_err(|e| format!("cannot read hypervisor {hypervisor}: {e}"))?
            .ok_or_else(|| format!("hypervisor {hypervisor} is not registered"))?;
        let token = self
            .credentials
            .get(&found.spec.credential)
            .await
            .map_err(|e| format!("cannot read credential {}: {e}", found.spec.credential))?
            .ok_or_else(|| {
                format!(
                    "credential {} of hypervisor {hypervisor} is missing",
                    found.spec.credential
                )
            })?;
        Ok(AgentEndpoint {
            hypervisor: hypervisor.to_owned(),
            url: found.spec.url.clone(),
            token,
        })
    }

    fn domain_spec(
        &self,
        server: &VirtualServer,
        status: &VirtualServerStatus,
        create_disk: bool,
    ) -> Result<DomainSpec, ControllerError> {
        let name = server.name_any();
        let image = self.config.image(&server.spec.image).ok_or_else(|| {
            ControllerError::Malformed(
                name.clone(),
                format!("image {} is not in the configuration", server.spec.image),
            )
        })?;
        Ok(DomainSpec {
            hostname: server.spec.hostname.clone(),
            vcpus: server.spec.resources.vcpus,
            memory_mib: server.spec.resources.memory_mib,
            disk_gib: server.spec.resources.disk_gib,
            image_volume: image.volume.clone(),
            mac_address: status
                .mac_address
                .clone()
                .unwrap_or_else(|| mac_address_for(&name)),
            power: server.spec.power,
            create_disk,
        })
    }

    /// Chooses a hypervisor and records it (or why there is none) before
    /// anything is created. Returns a retry delay when nothing fits.
    async fn schedule(
        &self,
        server: &VirtualServer,
        current: &VirtualServerStatus,
        mut next: VirtualServerStatus,
    ) -> Result<Option<Duration>, ControllerError> {
        let mut placements = self.scheduling.lock().await;
        let name = server.name_any();
        let key = (server.namespace().unwrap_or_default(), name.clone());
        let placement = match self.config.image(&server.spec.image) {
            None => Err(format!("image {} is no longer offered", server.spec.image)),
            Some(image) => {
                let hypervisors = self.hypervisors.list(None).await?.items;
                if !placements.is_fresh() {
                    placements.relist(self.servers.list(None).await?.items);
                }
                let load = placements.load(&key);
                let candidates: Vec<Candidate<'_>> = hypervisors
                    .iter()
                    .map(|hv| {
                        let status = hv.status.as_ref();
                        Candidate {
                            name: hv.metadata.name.as_deref().unwrap_or_default(),
                            zone: &hv.spec.zone,
                            reachable: status.is_some_and(|s| s.reachable),
                            cordoned: hv.spec.cordoned,
                            capacity: status.and_then(|s| s.capacity.as_ref()),
                            placed: load
                                .get(hv.metadata.name.as_deref().unwrap_or_default())
                                .copied()
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                scheduling::choose(
                    &server.spec.resources,
                    &image.volume,
                    server.spec.zone.as_deref(),
                    &candidates,
                )
                .map(str::to_owned)
                .map_err(|e| e.to_string())
            }
        };
        let placed = placement.is_ok();
        lifecycle::record_placement(
            &mut next,
            placement.as_deref().map_err(Clone::clone),
            &mac_address_for(&name),
            self.clock.now(),
        );
        self.write_status(server, current, &next).await?;
        if let Some(hypervisor) = &next.hypervisor {
            placements
                .servers
                .insert(key, (hypervisor.clone(), server.spec.resources));
        }
        if placed {
            Ok(None)
        } else {
            tracing::info!(
                reason = next.reason.as_deref().unwrap_or_default(),
                "server cannot be placed yet"
            );
            Ok(Some(UNSCHEDULABLE_RETRY))
        }
    }

    async fn write_status(
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
            let phase = next.phase.api_name();
            self.metrics.entered(phase);
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
            self.audit(server, "phase", detail).await;
            let (event_type, note) = match (&next.reason, next.phase) {
                (Some(reason), _) => (EventType::Warning, reason.clone()),
                (None, ServerPhase::Provisioning) => (
                    EventType::Normal,
                    format!(
                        "placed on hypervisor {}",
                        next.hypervisor.as_deref().unwrap_or("?")
                    ),
                ),
                (None, _) => (EventType::Normal, format!("server is {phase}")),
            };
            let reason = format!("{:?}", next.phase);
            self.events
                .publish(server, event_type, &reason, &note)
                .await;
        }
        Ok(())
    }

    async fn audit(&self, server: &VirtualServer, action: &str, detail: serde_json::Value) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let entry = AuditEntry {
            at: self.clock.now().as_millisecond(),
            actor: "controller".into(),
            action: action.into(),
            subject: format!(
                "server/{}/{}",
                server.namespace().unwrap_or_default(),
                server.name_any()
            ),
            detail: detail.to_string(),
        };
        // The audit trail must not be silently incomplete, but a failed audit
        // write must not stop the reconcile either: it is logged loudly.
        if let Err(error) = ledger.audit(&entry).await {
            tracing::error!(%error, action, "audit write failed");
        }
    }
}
