//! The Kubernetes backend through the real kube-rs client, against a mock
//! API server that checks every request (method, path, query, body) and
//! answers as the API server does (the kube-rs `tower-test` pattern).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use stratus_core::ids::HypervisorName;
use stratus_core::resources::{VirtualServer, VirtualServerStatus};
use stratus_core::testing as fixtures;
use stratus_store::objects::Deletion;
use stratus_store::{KubeObjectStore, ObjectStore, Resources, StoreError, WatchEvent};

const TIMEOUT: Duration = Duration::from_secs(10);
const SERVERS: &str = "/apis/stratus.dev/v1alpha1/namespaces/acc-1/virtualservers";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Plays the API server: each `expect` takes the next request, checks it and answers.
struct ApiServer(Handle);

impl ApiServer {
    async fn expect(
        &mut self,
        method: Method,
        path_and_query: &str,
        status: u16,
        answer: Value,
    ) -> Value {
        let (request, send) = tokio::time::timeout(TIMEOUT, self.0.next_request())
            .await
            .expect("a request in time")
            .expect("the client is still there");
        assert_eq!(request.method(), method, "method of {}", request.uri());
        assert_eq!(
            request.uri().path_and_query().map(|p| p.as_str()),
            Some(path_and_query)
        );
        let content_type = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if method == Method::PATCH {
            assert_eq!(
                content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "status is written with server-side apply"
            );
        }
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        body
    }

    /// Answers a watch with newline-delimited events.
    async fn expect_watch(&mut self, path_and_query: &str, events: &[Value]) {
        let (request, send) = tokio::time::timeout(TIMEOUT, self.0.next_request())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path_and_query().map(|p| p.as_str()),
            Some(path_and_query)
        );
        let mut body = Vec::new();
        for event in events {
            body.extend(serde_json::to_vec(event).unwrap());
            body.push(b'\n');
        }
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(body))
                .unwrap(),
        );
    }
}

fn setup() -> (Resources<VirtualServer>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let store: Arc<dyn ObjectStore> = Arc::new(KubeObjectStore::new(client, "stratus-test"));
    (Resources::new(store), ApiServer(handle))
}

fn server(name: &str) -> VirtualServer {
    fixtures::server(name).in_account("acc-1").build()
}

/// The object as the API server returns it.
fn stored(name: &str, resource_version: &str, finalizers: &[&str], deleting: bool) -> Value {
    let mut object = serde_json::to_value(server(name)).unwrap();
    object["apiVersion"] = json!("stratus.dev/v1alpha1");
    object["kind"] = json!("VirtualServer");
    object["metadata"]["resourceVersion"] = json!(resource_version);
    object["metadata"]["uid"] = json!("2b1c3a5e-0000-4000-8000-000000000001");
    object["metadata"]["generation"] = json!(1);
    object["metadata"]["finalizers"] = json!(finalizers);
    if deleting {
        object["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:00Z");
    }
    object
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
}

async fn run<T>(client_side: impl Future<Output = T>, server_side: impl Future<Output = ()>) -> T {
    let (result, ()) =
        tokio::time::timeout(TIMEOUT, async { tokio::join!(client_side, server_side) })
            .await
            .expect("scenario finished in time");
    result
}

#[tokio::test]
async fn create_posts_the_object_and_maps_already_exists() {
    let (servers, mut api) = setup();
    let created = run(servers.create(&server("vs-1")), async {
        let body = api
            .expect(
                Method::POST,
                &format!("{SERVERS}?"),
                201,
                stored("vs-1", "100", &[], false),
            )
            .await;
        assert_eq!(body["apiVersion"], "stratus.dev/v1alpha1");
        assert_eq!(body["kind"], "VirtualServer");
        assert_eq!(body["metadata"]["name"], "vs-1");
        assert_eq!(body["spec"]["plan"], "small");
    })
    .await
    .unwrap();
    assert_eq!(created.metadata.resource_version.as_deref(), Some("100"));

    let err = run(servers.create(&server("vs-1")), async {
        api.expect(
            Method::POST,
            &format!("{SERVERS}?"),
            409,
            status(
                409,
                "AlreadyExists",
                "virtualservers \"vs-1\" already exists",
            ),
        )
        .await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");

    let err = run(servers.create(&server("vs-2")), async {
        api.expect(
            Method::POST,
            &format!("{SERVERS}?"),
            422,
            status(422, "Invalid", "spec.plan: Required value"),
        )
        .await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if m.contains("spec.plan")),
        "{err}"
    );
}

#[tokio::test]
async fn get_maps_not_found_to_none_and_list_keeps_the_version() {
    let (servers, mut api) = setup();
    let missing = run(servers.get(Some("acc-1"), "vs-404"), async {
        api.expect(
            Method::GET,
            &format!("{SERVERS}/vs-404"),
            404,
            status(404, "NotFound", "not found"),
        )
        .await;
    })
    .await
    .unwrap();
    assert!(missing.is_none());

    let list = run(servers.list(Some("acc-1")), async {
        let answer = json!({
            "apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList",
            "metadata": {"resourceVersion": "4711"},
            "items": [stored("vs-1", "100", &[], false), stored("vs-2", "101", &[], false)]
        });
        api.expect(Method::GET, &format!("{SERVERS}?"), 200, answer)
            .await;
    })
    .await
    .unwrap();
    assert_eq!(list.resource_version, "4711");
    assert_eq!(list.items.len(), 2);

    let all = run(servers.list(None), async {
        let answer = json!({"apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList", "metadata": {"resourceVersion": "4712"}, "items": []});
        api.expect(Method::GET, "/apis/stratus.dev/v1alpha1/virtualservers?", 200, answer).await;
    })
    .await
    .unwrap();
    assert!(all.items.is_empty());

    let found = run(servers.find_by_name("vs-1"), async {
        let answer = json!({"apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList", "metadata": {"resourceVersion": "4713"},
                            "items": [stored("vs-1", "100", &[], false)]});
        api.expect(
            Method::GET,
            "/apis/stratus.dev/v1alpha1/virtualservers?&fieldSelector=metadata.name%3Dvs-1",
            200,
            answer,
        )
        .await;
    })
    .await
    .unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn finalizer_add_retries_a_conflict_and_remove_lets_the_object_go() {
    let (servers, mut api) = setup();
    run(
        servers.add_finalizer(Some("acc-1"), "vs-1", "stratus.dev/teardown"),
        async {
            api.expect(
                Method::GET,
                &format!("{SERVERS}/vs-1"),
                200,
                stored("vs-1", "100", &[], false),
            )
            .await;
            let body = api
                .expect(
                    Method::PUT,
                    &format!("{SERVERS}/vs-1?"),
                    409,
                    status(409, "Conflict", "the object has been modified"),
                )
                .await;
            assert_eq!(
                body["metadata"]["resourceVersion"], "100",
                "replace carries the version it read"
            );
            api.expect(
                Method::GET,
                &format!("{SERVERS}/vs-1"),
                200,
                stored("vs-1", "101", &[], false),
            )
            .await;
            let body = api
                .expect(
                    Method::PUT,
                    &format!("{SERVERS}/vs-1?"),
                    200,
                    stored("vs-1", "102", &["stratus.dev/teardown"], false),
                )
                .await;
            assert_eq!(body["metadata"]["resourceVersion"], "101");
            assert_eq!(
                body["metadata"]["finalizers"],
                json!(["stratus.dev/teardown"])
            );
        },
    )
    .await
    .unwrap();

    let deletion = run(servers.delete(Some("acc-1"), "vs-1"), async {
        api.expect(
            Method::DELETE,
            &format!("{SERVERS}/vs-1?"),
            200,
            stored("vs-1", "103", &["stratus.dev/teardown"], true),
        )
        .await;
    })
    .await
    .unwrap();
    assert!(
        matches!(deletion, Deletion::Pending(ref s) if s.metadata.deletion_timestamp.is_some())
    );

    run(
        servers.remove_finalizer(Some("acc-1"), "vs-1", "stratus.dev/teardown"),
        async {
            api.expect(
                Method::GET,
                &format!("{SERVERS}/vs-1"),
                200,
                stored("vs-1", "103", &["stratus.dev/teardown"], true),
            )
            .await;
            let body = api
                .expect(
                    Method::PUT,
                    &format!("{SERVERS}/vs-1?"),
                    200,
                    stored("vs-1", "104", &[], true),
                )
                .await;
            assert_eq!(body["metadata"]["finalizers"], json!([]));
        },
    )
    .await
    .unwrap();

    let deletion = run(servers.delete(Some("acc-1"), "vs-2"), async {
        api.expect(
            Method::DELETE,
            &format!("{SERVERS}/vs-2?"),
            200,
            stored("vs-2", "105", &[], false),
        )
        .await;
    })
    .await
    .unwrap();
    assert!(matches!(deletion, Deletion::Deleted));
}

#[tokio::test]
async fn status_is_written_with_server_side_apply() {
    let (servers, mut api) = setup();
    let status = VirtualServerStatus {
        hypervisor: HypervisorName::parse("hv1"),
        provisioned: true,
        ..Default::default()
    };
    run(
        servers.patch_status(Some("acc-1"), "vs-1", &status),
        async {
            let mut answer = stored("vs-1", "110", &[], false);
            answer["status"] = serde_json::to_value(VirtualServerStatus {
                hypervisor: HypervisorName::parse("hv1"),
                provisioned: true,
                ..Default::default()
            })
            .unwrap();
            let body = api
                .expect(
                    Method::PATCH,
                    &format!("{SERVERS}/vs-1/status?&force=true&fieldManager=stratus-test"),
                    200,
                    answer,
                )
                .await;
            assert_eq!(body["apiVersion"], "stratus.dev/v1alpha1");
            assert_eq!(body["kind"], "VirtualServer");
            assert_eq!(body["metadata"]["name"], "vs-1");
            assert_eq!(body["status"]["hypervisor"], "hv1");
            assert!(
                body.get("spec").is_none(),
                "the controller applies status only"
            );
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn watch_maps_every_event_and_gone() {
    let (servers, mut api) = setup();
    let mut watch = Box::pin(servers.watch("100"));
    let events = [
        json!({"type": "ADDED", "object": stored("vs-1", "101", &[], false)}),
        json!({"type": "MODIFIED", "object": stored("vs-1", "102", &["stratus.dev/teardown"], false)}),
        json!({"type": "BOOKMARK", "object": {"apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServer", "metadata": {"resourceVersion": "150"}}}),
        json!({"type": "DELETED", "object": stored("vs-1", "151", &[], true)}),
        json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 100 (150)")}),
    ];
    let server_side = api.expect_watch(
        "/apis/stratus.dev/v1alpha1/virtualservers?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=100",
        &events,
    );
    let client_side = async {
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(match watch.next().await.unwrap() {
                Ok(WatchEvent::Added(o)) => {
                    format!("added {}", o.metadata.resource_version.unwrap())
                }
                Ok(WatchEvent::Modified(o)) => {
                    format!("modified {}", o.metadata.resource_version.unwrap())
                }
                Ok(WatchEvent::Bookmark(v)) => format!("bookmark {v}"),
                Ok(WatchEvent::Deleted(o)) => {
                    format!("deleted {}", o.metadata.resource_version.unwrap())
                }
                Err(StoreError::Gone(_)) => "gone".to_owned(),
                Err(other) => panic!("{other}"),
            });
        }
        seen
    };
    let seen = run(client_side, server_side).await;
    assert_eq!(
        seen,
        [
            "added 101",
            "modified 102",
            "bookmark 150",
            "deleted 151",
            "gone"
        ]
    );
}

#[tokio::test]
async fn the_watcher_relists_after_gone_and_resumes_after_a_closed_watch() {
    let (servers, mut api) = setup();
    let mut watcher = Box::pin(servers.watcher(Duration::from_millis(10)));
    let list = |version: &str, names: &[&str]| {
        json!({
            "apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList",
            "metadata": {"resourceVersion": version},
            "items": names.iter().map(|n| stored(n, version, &[], false)).collect::<Vec<_>>()
        })
    };
    let watch_path = |version: &str| {
        format!(
            "/apis/stratus.dev/v1alpha1/virtualservers?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={version}"
        )
    };
    let server_side = async {
        api.expect(
            Method::GET,
            "/apis/stratus.dev/v1alpha1/virtualservers?",
            200,
            list("5", &["vs-a"]),
        )
        .await;
        // The watch ends normally (server timeout): resume from the last version seen.
        api.expect_watch(
            &watch_path("5"),
            &[json!({"type": "ADDED", "object": stored("vs-b", "7", &[], false)})],
        )
        .await;
        api.expect_watch(
            &watch_path("7"),
            &[json!({"type": "ERROR", "object": status(410, "Expired", "too old")})],
        )
        .await;
        // History expired: list again.
        api.expect(
            Method::GET,
            "/apis/stratus.dev/v1alpha1/virtualservers?",
            200,
            list("9", &["vs-a", "vs-b", "vs-c"]),
        )
        .await;
    };
    let client_side = async {
        let mut names = Vec::new();
        for _ in 0..5 {
            match watcher.next().await.unwrap() {
                WatchEvent::Added(o) => names.push(o.metadata.name.unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        names
    };
    let names = run(client_side, server_side).await;
    assert_eq!(names, ["vs-a", "vs-b", "vs-a", "vs-b", "vs-c"]);
}

#[tokio::test]
async fn pages_are_read_with_limit_and_continue_and_an_expired_token_is_named() {
    let (servers, mut api) = setup();
    let first = run(servers.list_page(Some("acc-1"), 2, None), async {
        let answer = json!({
            "apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList",
            "metadata": {"resourceVersion": "4711", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDcxMSwic3RhcnQiOiJ2cy0yXHUwMDAwIn0="},
            "items": [stored("vs-1", "100", &[], false), stored("vs-2", "101", &[], false)]
        });
        api.expect(Method::GET, &format!("{SERVERS}?&limit=2"), 200, answer)
            .await;
    })
    .await
    .unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.continue_token.expect("a next page");

    let last = run(servers.list_page(Some("acc-1"), 2, Some(&token)), async {
        let answer = json!({
            "apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServerList",
            "metadata": {"resourceVersion": "4711", "continue": ""},
            "items": [stored("vs-3", "102", &[], false)]
        });
        api.expect(
            Method::GET,
            &format!(
                "{SERVERS}?&limit=2&continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDcxMSwic3RhcnQiOiJ2cy0yXHUwMDAwIn0%3D"
            ),
            200,
            answer,
        )
        .await;
    })
    .await
    .unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(
        last.continue_token, None,
        "an empty continue ends the listing"
    );

    let expired = run(servers.list_page(Some("acc-1"), 2, Some("stale")), async {
        api.expect(
            Method::GET,
            &format!("{SERVERS}?&limit=2&continue=stale"),
            410,
            status(410, "Expired", "The provided continue parameter is too old"),
        )
        .await;
    })
    .await;
    assert!(
        matches!(expired, Err(StoreError::InvalidContinue(_))),
        "{expired:?}"
    );
}
