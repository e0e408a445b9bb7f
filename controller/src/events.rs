//! Kubernetes Events for what the controller did and why, so `kubectl
//! describe` tells the story. In embedded mode the audit log holds it.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use stratus_core::resources::VirtualServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Records that `reason` happened to `server`, explained by `note`.
    async fn publish(
        &self,
        server: &VirtualServer,
        event_type: EventType,
        reason: &str,
        note: &str,
    );
}

/// No events (the embedded backend: the audit log has the history).
pub struct NoEvents;

#[async_trait]
impl Events for NoEvents {
    async fn publish(&self, _: &VirtualServer, _: EventType, _: &str, _: &str) {}
}

/// `events.k8s.io/v1` Events in the server's namespace.
pub struct KubeEvents {
    client: kube::Client,
    /// The replica publishing, e.g. its pod name.
    instance: String,
}

const REPORTING_CONTROLLER: &str = "stratus.dev/controller";

impl KubeEvents {
    pub fn new(client: kube::Client, instance: &str) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
        }
    }
}

#[async_trait]
impl Events for KubeEvents {
    async fn publish(
        &self,
        server: &VirtualServer,
        event_type: EventType,
        reason: &str,
        note: &str,
    ) {
        let namespace = server.namespace().unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", server.name_any())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            action: Some(reason.to_owned()),
            reason: Some(reason.to_owned()),
            // The API server refuses notes over 1 kB.
            note: Some(note.chars().take(1000).collect()),
            type_: Some(
                match event_type {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            regarding: Some(ObjectReference {
                api_version: Some(VirtualServer::api_version(&()).into_owned()),
                kind: Some(VirtualServer::kind(&()).into_owned()),
                name: Some(server.name_any()),
                namespace: Some(namespace.clone()),
                uid: server.metadata.uid.clone(),
                resource_version: server.metadata.resource_version.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        // An event is an explanation, not state: failing to publish one must
        // not fail the reconcile.
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason, "publishing an event failed");
        }
    }
}
