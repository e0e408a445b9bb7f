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
    let (elector, handle, _) = elector_with_clock(identity);
    (elector, handle)
}

fn elector_with_clock(identity: &str) -> (LeaderElector, Handle, Arc<ManualClock>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let store: Arc<dyn ObjectStore> = Arc::new(KubeObjectStore::new(client, "stratus-test"));
    let clock = Arc::new(ManualClock::new(NOW.parse().unwrap()));
    let elector = LeaderElector::new(
        Resources::new(store),
        "stratus",
        "stratus-controller",
        identity,
        Duration::from_secs(15),
        clock.clone(),
    );
    (elector, handle, clock)
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
    let (elector, mut api, clock) = elector_with_clock("pod-a");
    // However old its renewTime looks to us, the lease only expires once we
    // have seen it unchanged for its duration on our own clock.
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-b", "2026-11-21T09:00:00.000000Z", 3),
        )
        .await;
    });
    assert!(
        !led.unwrap(),
        "first sight of the lease: wait a lease duration"
    );
    clock.advance(jiff::SignedDuration::from_secs(16));
    let (led, ()) = tokio::join!(elector.try_lead(), async {
        expect(
            &mut api,
            Method::GET,
            LEASE,
            200,
            lease("pod-b", "2026-11-21T09:00:00.000000Z", 3),
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
            lease("pod-a", "2026-11-21T09:59:58.000000Z", 1),
        )
        .await;
        // Another replica wrote the lease since we read it: our renewal
        // carries the old resourceVersion and is refused.
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "the object has been modified"});
        expect(&mut api, Method::PUT, &format!("{LEASE}?"), 409, conflict).await;
    });
    assert!(
        !led.unwrap(),
        "a renewal that lost the race is no leadership"
    );
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
    let candidate = |identity: &str| {
        LeaderElector::new(
            Resources::new(store.clone()),
            "stratus-system",
            "stratus-controller",
            identity,
            Duration::from_secs(15),
            clock.clone(),
        )
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

/// The leader is paused past its renew deadline (its renewals hang) while
/// the other replica watches the lease from the moment it was written: the
/// leader stops acting at its deadline, and the other replica, judging
/// expiry by its own clock (the leader's wall clock is an hour off), takes
/// over only later. At no instant do both act.
#[tokio::test(start_paused = true)]
async fn a_paused_leader_stops_acting_before_another_takes_over() {
    use tokio::time::Instant;

    let (leader, mut leader_api, leader_clock) = elector_with_clock("pod-a");
    leader_clock.advance(jiff::SignedDuration::from_secs(3600));
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    tokio::spawn(leader.run(leading_tx, stopped));
    expect(&mut leader_api, Method::GET, LEASE, 404, not_found()).await;
    let written = lease("pod-a", "2026-11-21T11:00:00.000000Z", 0);
    expect(
        &mut leader_api,
        Method::POST,
        &format!("{LEASES}?"),
        201,
        written.clone(),
    )
    .await;
    leading.wait_for(|l| *l).await.unwrap();
    // From now on the leader's API connection hangs: requests are read,
    // never answered.
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = leader_api.next_request().await {
            held.push(request);
        }
    });
    let stopped_at = Arc::new(std::sync::Mutex::new(None));
    let recorder = stopped_at.clone();
    tokio::spawn(async move {
        leading.wait_for(|l| !*l).await.unwrap();
        *recorder.lock().unwrap() = Some(Instant::now());
    });

    // The follower, with a correct clock, polls the lease every second.
    let (follower, mut follower_api, follower_clock) = elector_with_clock("pod-b");
    let respond = |status: u16, body: &Value| {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    };
    let mut took_over = None;
    for _ in 0..40 {
        let round = async {
            let (request, send) = follower_api.next_request().await.unwrap();
            assert_eq!(request.method(), Method::GET);
            send.send_response(respond(200, &written));
            if let Ok(Some((request, send))) =
                tokio::time::timeout(Duration::from_millis(1), follower_api.next_request()).await
            {
                assert_eq!(request.method(), Method::PUT);
                send.send_response(respond(
                    200,
                    &lease("pod-b", "2026-11-21T10:00:30.000000Z", 1),
                ));
            }
        };
        let (led, ()) = tokio::join!(follower.try_lead(), round);
        if led.unwrap() {
            took_over = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        follower_clock.advance(jiff::SignedDuration::from_secs(1));
    }
    let took_over = took_over.expect("the follower took over");
    let stopped_at = stopped_at
        .lock()
        .unwrap()
        .expect("the paused leader stepped down");
    assert!(
        stopped_at - start <= Duration::from_secs(10),
        "the leader acted until {:?}",
        stopped_at - start
    );
    assert!(
        took_over > stopped_at,
        "takeover at {:?}, the leader stopped at {:?}",
        took_over - start,
        stopped_at - start
    );
    assert!(took_over - start >= Duration::from_secs(15));
    hung.abort();
}
