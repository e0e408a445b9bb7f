//! Leader election through the real kube-rs client against a mock API
//! server that checks each Lease request.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use stratus_controller::leader::LeaderElector;
use stratus_core::ManualClock;
use stratus_store::{KubeObjectStore, ObjectStore, Resources};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/stratus/leases/stratus-controller";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/stratus/leases";
const NOW: &str = "2026-11-21T10:00:00Z";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn expect(
    handle: &mut Handle,
    method: Method,
    path_and_query: &str,
    status: u16,
    answer: Value,
) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.method(), method);
    assert_eq!(
        request.uri().path_and_query().map(|p| p.as_str()),
        Some(path_and_query)
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn elector(identity: &str) -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let store: Arc<dyn ObjectStore> = Arc::new(KubeObjectStore::new(client, "stratus-test"));
    let elector = LeaderElector {
        leases: Resources::new(store),
        namespace: "stratus".into(),
        name: "stratus-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        clock: Arc::new(ManualClock::new(NOW.parse().unwrap())),
    };
    (elector, handle)
}

fn lease(holder: &str, renewed: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "stratus-controller", "namespace": "stratus", "resourceVersion": "42"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": transitions}
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"})
}

#[tokio::test]
async fn the_first_replica_creates_the_lease() {
    let (elector, mut api) = elector("pod-a");
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(&mut api, Method::GET, LEASE, 404, not_found()).await;
        let body = expect(
            &mut api,
            Method::POST,
            &format!("{LEASES}?"),
            201,
            lease("pod-a", "2026-11-21T10:00:00.000000Z", 0),
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert!(
            body["spec"]["renewTime"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-21T10:00:00")
        );
    });
    assert!(led.unwrap());
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let (elector, mut api) = elector("pod-a");
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-b", "2026-11-21T09:59:55.000000Z", 3),
        )
        .await;
    });
    assert!(!led.unwrap(), "no write, no leadership");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (elector, mut api) = elector("pod-a");
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-b", "2026-11-21T09:59:30.000000Z", 3),
        )
        .await;
        let body = expect(
            &mut api,
            Method::PUT,
            &format!("{LEASE}?"),
            200,
            lease("pod-a", "2026-11-21T10:00:00.000000Z", 4),
        )
        .await;
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
    });
    assert!(led.unwrap());
}

#[tokio::test]
async fn renewal_keeps_leadership_and_a_lost_race_gives_it_up() {
    let (elector, mut api) = elector("pod-a");
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-a", "2026-11-21T09:59:55.000000Z", 1),
        )
        .await;
        let body = expect(
            &mut api,
            Method::PUT,
            &format!("{LEASE}?"),
            200,
            lease("pod-a", "2026-11-21T10:00:00.000000Z", 1),
        )
        .await;
        assert_eq!(
            body["spec"]["leaseTransitions"], 1,
            "renewing is not a transition"
        );
        assert!(
            body["spec"]["renewTime"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-21T10:00:00")
        );
    });
    assert!(led.unwrap());

    let (elector, mut api) = self::elector("pod-a");
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-b", "2026-11-21T09:00:00.000000Z", 1),
        )
        .await;
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "the object has been modified"});
        expect(&mut api, Method::PUT, &format!("{LEASE}?"), 409, conflict).await;
    });
    assert!(!led.unwrap(), "another replica took it first");
}

/// The same election on the embedded store: two controllers sharing one
/// database (e.g. on PostgreSQL) never lead at once.
#[tokio::test]
async fn on_the_embedded_store_one_leads_and_the_other_takes_over_when_it_stops() {
    let scratch = stratus_store::testing::sqlite().await;
    let clock = Arc::new(ManualClock::new(NOW.parse().unwrap()));
    let store: Arc<dyn ObjectStore> = Arc::new(stratus_store::SqlObjectStore::new(
        scratch.db.clone(),
        clock.clone(),
    ));
    let candidate = |identity: &str| LeaderElector {
        leases: Resources::new(store.clone()),
        namespace: "stratus-system".into(),
        name: "stratus-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        clock: clock.clone(),
    };
    let (a, b) = (candidate("pod-a"), candidate("pod-b"));
    let (first, second) = tokio::join!(a.try_lead(), b.try_lead());
    assert!(first.unwrap() ^ second.unwrap(), "exactly one leads");
    let (leader, follower) = if a.try_lead().await.unwrap() {
        (a, b)
    } else {
        (b, a)
    };
    clock.advance(jiff::SignedDuration::from_secs(10));
    assert!(leader.try_lead().await.unwrap(), "renewing keeps it");
    assert!(!follower.try_lead().await.unwrap());
    // The leader stops renewing; after the lease duration the follower takes over.
    clock.advance(jiff::SignedDuration::from_secs(16));
    assert!(follower.try_lead().await.unwrap());
    assert!(
        !leader.try_lead().await.unwrap(),
        "the old leader sees it lost"
    );
    let lease = Resources::<k8s_openapi::api::coordination::v1::Lease>::new(store)
        .get(Some("stratus-system"), "stratus-controller")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}
