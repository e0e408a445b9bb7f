//! Kubernetes Events for what the controller did and why, about an object of
//! any kind, so `kubectl describe` tells the story. In embedded mode the
//! audit log holds it.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource};
use stratus_core::Clock;
use stratus_core::conditions::EventReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regarding {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None` for cluster-wide kinds.
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Regarding {
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
        }
    }
}

#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Records that `reason` happened to `regarding`, explained by `note`.
    async fn publish(
        &self,
        regarding: &Regarding,
        event_type: EventType,
        reason: EventReason,
        note: &str,
    );
}

/// No events (the embedded backend: the audit log has the history).
pub struct NoEvents;

#[async_trait]
impl Events for NoEvents {
    async fn publish(&self, _: &Regarding, _: EventType, _: EventReason, _: &str) {}
}

/// `events.k8s.io/v1` Events in the object's namespace (`default` for
/// cluster-wide objects, as kubectl does).
pub struct KubeEvents {
    client: kube::Client,
    /// The replica publishing, e.g. its pod name.
    instance: String,
    clock: Arc<dyn Clock>,
}

const REPORTING_CONTROLLER: &str = "stratus.dev/controller";

impl KubeEvents {
    pub fn new(client: kube::Client, instance: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
            clock,
        }
    }
}

#[async_trait]
impl Events for KubeEvents {
    async fn publish(
        &self,
        regarding: &Regarding,
        event_type: EventType,
        reason: EventReason,
        note: &str,
    ) {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", regarding.name)),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(self.clock.now())),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            action: Some(reason.as_str().to_owned()),
            reason: Some(reason.as_str().to_owned()),
            // The API server refuses notes over 1 kB.
            note: Some(note.chars().take(1000).collect()),
            type_: Some(event_type.as_str().to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some(regarding.api_version.clone()),
                kind: Some(regarding.kind.clone()),
                name: Some(regarding.name.clone()),
                namespace: regarding.namespace.clone(),
                uid: regarding.uid.clone(),
                resource_version: regarding.resource_version.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        // An event is an explanation, not state: failing to publish one must
        // not fail the reconcile.
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason = reason.as_str(), "publishing an event failed");
        }
    }
}
