//! The agent's HTTP API, called as the controller calls it (no socket needed).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use stratus_agent::{AgentState, Driver, DriverConfig, router};
use tower::ServiceExt;

const TOKEN: &str = "agent-secret-token";

fn app() -> axum::Router {
    let driver = Driver::open(DriverConfig::for_uri("test:///default", "z")).unwrap();
    driver.seed_image("http-test.qcow2", 2).unwrap();
    router(AgentState::new(Arc::new(driver), TOKEN))
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn spec(create_disk: bool) -> Value {
    json!({
        "hostname": "web1", "vcpus": 1, "memory_mib": 1024, "disk_gib": 10,
        "image_volume": "http-test.qcow2", "mac_address": "52:54:00:00:00:01",
        "power": "Running", "create_disk": create_disk
    })
}

#[tokio::test]
async fn every_call_but_health_needs_the_token() {
    let app = app();
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = call(&app, Method::GET, "/v1/node", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = call(
            &app,
            Method::PUT,
            "/v1/domains/stratus-http-noauth",
            token,
            Some(spec(true)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/domains/stratus-http-noauth",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn domain_lifecycle_over_http() {
    let app = app();
    let path = "/v1/domains/stratus-http-cycle";
    let (status, body) = call(&app, Method::PUT, path, Some(TOKEN), Some(spec(true))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["disk_present"], true);
    let (_, observed) = call(&app, Method::GET, path, Some(TOKEN), None).await;
    assert_eq!(observed, body);
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("{path}/reboot"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, Method::DELETE, path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], Value::Null);
    assert_eq!(body["disk_present"], false);

    let (_, metrics) = (StatusCode::OK, {
        let response = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    });
    assert!(
        metrics.contains("stratus_agent_operations_total{operation=\"ensure\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let app = app();
    let mut unknown = spec(true);
    unknown["gpu"] = json!(1);
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/domains/stratus-http-bad",
        Some(TOKEN),
        Some(unknown),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("gpu"),
        "{body}"
    );

    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/domains/not-ours",
        Some(TOKEN),
        Some(spec(true)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/domains/stratus-http-nodisk",
        Some(TOKEN),
        Some(spec(false)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "disk_missing");

    let mut no_image = spec(true);
    no_image["image_volume"] = json!("missing.qcow2");
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/domains/stratus-http-noimg",
        Some(TOKEN),
        Some(no_image),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "image_missing");
}

/// Defect 3 of issue 25: long storage work is a job of the agent, started
/// by PUT under an id that says what it does and asked about by GET; a
/// job whose body does not match its id, or one never started, is refused
/// clearly; a failed job says why, and asking for it again answers the
/// same failure rather than running it a second time.
#[tokio::test]
async fn storage_work_runs_as_jobs_asked_about_by_id() {
    let app = app();
    let volume = "stratus-acc-0000000000000001.st-jobs";
    let checksum = json!({"kind": "checksum", "version": 1, "bytes": 1024});
    let path = format!("/v1/volumes/{volume}/jobs/checksum-v1-1024");

    let (status, body) = call(&app, Method::GET, &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_job");

    let wrong = format!("/v1/volumes/{volume}/jobs/checksum-v2-1024");
    let (status, body) = call(
        &app,
        Method::PUT,
        &wrong,
        Some(TOKEN),
        Some(checksum.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &app,
        Method::PUT,
        &path,
        Some(TOKEN),
        Some(json!({"kind": "format", "version": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The volume does not exist: the job fails, and says so.
    let (status, started) = call(
        &app,
        Method::PUT,
        &path,
        Some(TOKEN),
        Some(checksum.clone()),
    )
    .await;
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::OK,
        "{status}: {started}"
    );
    let mut outcome = started;
    for _ in 0..100 {
        if outcome["state"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        outcome = call(&app, Method::GET, &path, Some(TOKEN), None).await.1;
    }
    assert_eq!(outcome["state"], "failed", "{outcome}");
    assert!(outcome["error"]["code"].is_string(), "{outcome}");
    let (status, again) = call(&app, Method::PUT, &path, Some(TOKEN), Some(checksum)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, outcome, "the same job's outcome, not a second run");
}

/// Unloading the key of a version holding none (or a version that is not
/// there) changes nothing and says so plainly: an attach that lost a race
/// may ask for it whatever the volume is.
#[tokio::test]
async fn unloading_a_key_that_is_not_loaded_changes_nothing() {
    let app = app();
    let volume = "stratus-acc-0000000000000001.st-unlock";
    let (status, _) = call(
        &app,
        Method::PUT,
        &format!("/v1/volumes/{volume}"),
        Some(TOKEN),
        Some(json!({"size_gib": 1, "create": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for version in [0, 7] {
        let (status, body) = call(
            &app,
            Method::DELETE,
            &format!("/v1/volumes/{volume}/versions/{version}/unlock"),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{version}: {body}");
    }
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/volumes/not-managed/versions/0/unlock",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "only managed names");
}
