//! What every reconciler acts and reports through: the clock, the agents,
//! the audit log, Kubernetes Events and the metrics.

use std::sync::Arc;

use kube::Resource;
use stratus_core::Clock;
use stratus_core::conditions::EventReason;
use stratus_store::ledger::{Actor, AuditAction, AuditEntry, AuditSubject, Ledger};

use crate::events::{EventType, Events, NoEvents, Regarding};
use crate::metrics::ControllerMetrics;
use stratus_agent_client::{AgentClient, AgentDirectory};

#[derive(Clone)]
pub struct Context {
    pub clock: Arc<dyn Clock>,
    pub agents: Arc<dyn AgentClient>,
    /// Where each hypervisor's agent is and how to authenticate to it.
    pub directory: AgentDirectory,
    /// The audit log and what is handed out uniquely (MAC addresses).
    pub ledger: Ledger,
    pub events: Arc<dyn Events>,
    pub metrics: ControllerMetrics,
}

impl Context {
    /// A context without events.
    pub fn new(
        clock: Arc<dyn Clock>,
        agents: Arc<dyn AgentClient>,
        directory: AgentDirectory,
        ledger: Ledger,
    ) -> Self {
        Self {
            clock,
            agents,
            directory,
            ledger,
            events: Arc::new(NoEvents),
            metrics: ControllerMetrics::default(),
        }
    }

    /// Publishes Kubernetes Events besides the audit log.
    pub fn with_events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = events;
        self
    }

    pub fn with_metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Appends to the audit log as the controller.
    pub async fn audit(
        &self,
        action: AuditAction,
        subject: AuditSubject,
        detail: serde_json::Value,
    ) {
        let entry = AuditEntry {
            at: self.clock.now().as_millisecond(),
            actor: Actor::Controller,
            action,
            subject,
            detail,
        };
        // The audit trail must not be silently incomplete, but a failed audit
        // write must not stop the reconcile either: it is logged loudly.
        if let Err(error) = self.ledger.audit().append(&entry).await {
            tracing::error!(%error, action = action.as_str(), "audit write failed");
        }
    }

    /// Publishes an event about `object`.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        event_type: EventType,
        reason: EventReason,
        note: &str,
    ) {
        self.events
            .publish(&Regarding::of(object), event_type, reason, note)
            .await;
    }
}
