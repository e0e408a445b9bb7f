//! Events as the API server receives them, through the real kube-rs client.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::core::ObjectMeta;
use serde_json::Value;
use stratus_controller::events::{EventType, Events, KubeEvents};
use stratus_core::resources::{PowerState, ServerResources, VirtualServer, VirtualServerSpec};

#[tokio::test]
async fn a_phase_change_becomes_an_event_regarding_the_server() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let events = KubeEvents::new(kube::Client::new(service, "default"), "controller-0");
    let server = VirtualServer {
        metadata: ObjectMeta {
            name: Some("vs-1".into()),
            namespace: Some("acc-1".into()),
            uid: Some("11111111-2222-4333-8444-555555555555".into()),
            resource_version: Some("42".into()),
            ..Default::default()
        },
        spec: VirtualServerSpec {
            hostname: "web1".into(),
            plan: "small".into(),
            image: "debian-12".into(),
            zone: None,
            resources: ServerResources {
                vcpus: 1,
                memory_mib: 1024,
                disk_gib: 25,
            },
            power: PowerState::Running,
            reboot_requests: 0,
        },
        status: None,
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
        assert!(body["eventTime"].as_str().is_some());
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    };
    tokio::join!(
        events.publish(
            &server,
            EventType::Warning,
            "Error",
            "the system disk of this server is missing on hv1"
        ),
        server_side
    );
}
