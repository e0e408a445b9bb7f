//! Events as the API server receives them, through the real kube-rs client.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::core::ObjectMeta;
use serde_json::Value;
use stratus_controller::events::{EventType, Events, KubeEvents, Regarding};
use stratus_core::conditions::EventReason;
use stratus_core::resources::VirtualServer;
use stratus_core::testing as fixtures;
use stratus_core::{ManualClock, test_time};

#[tokio::test]
async fn a_phase_change_becomes_an_event_regarding_the_server() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let clock = Arc::new(ManualClock::at_test_time());
    let events = KubeEvents::new(kube::Client::new(service, "default"), "controller-0", clock);
    let server = fixtures::server("vs-1").in_account("acc-1").build();
    let server = VirtualServer {
        metadata: ObjectMeta {
            uid: Some("11111111-2222-4333-8444-555555555555".into()),
            resource_version: Some("42".into()),
            ..server.metadata
        },
        ..server
    };
    let server_side = async {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path_and_query().unwrap().as_str(),
            "/apis/events.k8s.io/v1/namespaces/acc-1/events?"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["generateName"], "vs-1.");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "Error");
        assert_eq!(
            body["note"],
            "the system disk of this server is missing on hv1"
        );
        assert_eq!(body["reportingController"], "stratus.dev/controller");
        assert_eq!(body["reportingInstance"], "controller-0");
        assert_eq!(body["regarding"]["kind"], "VirtualServer");
        assert_eq!(body["regarding"]["apiVersion"], "stratus.dev/v1alpha1");
        assert_eq!(
            body["regarding"]["uid"],
            "11111111-2222-4333-8444-555555555555"
        );
        assert_eq!(
            body["eventTime"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap(),
            test_time(),
            "the event time comes from the injected clock"
        );
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    };
    let regarding = Regarding::of(&server);
    tokio::join!(
        events.publish(
            &regarding,
            EventType::Warning,
            EventReason::Error,
            "the system disk of this server is missing on hv1"
        ),
        server_side
    );
}

#[tokio::test]
async fn events_regard_cluster_wide_kinds_too() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let events = KubeEvents::new(
        kube::Client::new(service, "default"),
        "controller-0",
        Arc::new(ManualClock::at_test_time()),
    );
    let hypervisor = fixtures::hypervisor("hv1").build();
    let server_side = async {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            request.uri().path_and_query().unwrap().as_str(),
            "/apis/events.k8s.io/v1/namespaces/default/events?"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["regarding"]["kind"], "Hypervisor");
        assert_eq!(body["regarding"]["name"], "hv1");
        assert!(body["regarding"].get("namespace").is_none());
        assert_eq!(body["reason"], "Destroyed");
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    };
    let regarding = Regarding::of(&hypervisor);
    tokio::join!(
        events.publish(
            &regarding,
            EventType::Normal,
            EventReason::Destroyed,
            "a note"
        ),
        server_side
    );
}
