//! The REST API as customers and operators use it, including every refusal
//! (status, body naming the field, and nothing changed).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use stratus_api::auth::issue_token;
use stratus_api::{ApiDeps, ApiState, app};
use stratus_core::ids::{AccountId, ServerId};
use stratus_core::{Config, ManualClock};
use stratus_store::ledger::{AuditAction, AuditSubject, Ledger, TokenScope};
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::vault::Vault;
use stratus_store::{ObjectStore, SqlObjectStore};
use tower::ServiceExt;

struct Api {
    _scratch: ScratchDatabase,
    state: ApiState,
    router: axum::Router,
    admin: String,
}

struct Reply {
    status: StatusCode,
    body: Value,
    headers: axum::http::HeaderMap,
}

async fn api_on(scratch: ScratchDatabase) -> Api {
    api_configured(scratch, Config::default()).await
}

async fn api_configured(scratch: ScratchDatabase, config: Config) -> Api {
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> =
        Arc::new(SqlObjectStore::new(scratch.db.clone(), clock.clone()));
    let state = ApiState::new(ApiDeps {
        store,
        ledger: Ledger::new(scratch.db.clone()),
        secrets: Arc::new(Vault::new(scratch.db.clone(), &[3u8; 32], clock.clone()).unwrap()),
        config: Arc::new(config),
        clock,
        registry: Registry::default(),
    });
    let (_, admin) = issue_token(&state, None, "bootstrap", TokenScope::Admin)
        .await
        .unwrap();
    let router = app(state.clone());
    Api {
        _scratch: scratch,
        state,
        router,
        admin,
    }
}

async fn api() -> Api {
    api_on(testing::sqlite().await).await
}

impl Api {
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            body,
            headers,
        }
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        self.raw(method, path, Some(token), &[], body.map(|b| b.to_string()))
            .await
    }

    /// Claims `key` for an order of `name` as a first attempt that stopped
    /// right after claiming it would have; returns the id it bound.
    async fn claim_as_a_first_attempt(
        &self,
        account: &AccountId,
        key: &str,
        name: &str,
        id_bits: u64,
    ) -> ServerId {
        let body = stratus_api::views::OrderServer {
            name: name.into(),
            plan: "small".into(),
            image: "debian-12".into(),
            zone: None,
            ssh_keys: Vec::new(),
            user_data: None,
        };
        let hash = stratus_api::auth::hash_token(&serde_json::to_string(&body).unwrap());
        let claimed = ServerId::from_random(id_bits);
        self.state
            .ledger
            .idempotency()
            .claim(account, key, &hash, claimed.as_str(), 1)
            .await
            .unwrap();
        claimed
    }

    /// Opens an account and returns (account id, customer token).
    async fn customer(&self, name: &str) -> (String, String) {
        let account = self
            .call(
                Method::POST,
                "/v1/accounts",
                &self.admin,
                Some(json!({"name": name, "email": "ops@example.com"})),
            )
            .await;
        assert_eq!(account.status, StatusCode::CREATED, "{}", account.body);
        let id = account.body["id"].as_str().unwrap().to_owned();
        let token = self
            .call(
                Method::POST,
                &format!("/v1/accounts/{id}/tokens"),
                &self.admin,
                Some(json!({"name": "cli"})),
            )
            .await;
        assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
        (id, token.body["token"].as_str().unwrap().to_owned())
    }

    /// Orders server `name` with an `Idempotency-Key`.
    async fn order_keyed(&self, token: &str, key: &str, name: &str) -> Reply {
        self.raw(
            Method::POST,
            "/v1/servers",
            Some(token),
            &[("idempotency-key", key)],
            Some(order(name).to_string()),
        )
        .await
    }

    async fn server_count(&self) -> usize {
        self.state.servers.list(None).await.unwrap().items.len()
    }

    async fn register_zone(&self, zone: &str) {
        let reply = self
            .call(
                Method::POST,
                "/v1/admin/hypervisors",
                &self.admin,
                Some(json!({"name": format!("hv-{zone}"), "url": "https://127.0.0.1:1", "zone": zone, "token": "0123456789abcdef0123"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
}

fn assert_error(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(
            reply.body["error"]["details"]["field"], field,
            "{}",
            reply.body
        );
    }
}

fn order(name: &str) -> Value {
    json!({"name": name, "plan": "small", "image": "debian-12"})
}

#[tokio::test]
async fn authentication_is_required_and_revocation_is_immediate() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let missing = api.raw(Method::GET, "/v1/servers", None, &[], None).await;
    assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let wrong = api
        .call(Method::GET, "/v1/servers", "stx_not-a-token", None)
        .await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let basic = api
        .raw(
            Method::GET,
            "/v1/servers",
            None,
            &[("authorization", "Basic YTpi")],
            None,
        )
        .await;
    assert_error(&basic, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert_eq!(
        api.call(Method::GET, "/v1/servers", &token, None)
            .await
            .status,
        StatusCode::OK
    );

    let tokens = api
        .state
        .ledger
        .tokens()
        .by_hash(&stratus_api::auth::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    let revoke = api
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{}", tokens.id),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    let after = api.call(Method::GET, "/v1/servers", &token, None).await;
    assert_error(&after, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(
        after.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    assert_eq!(
        api.raw(Method::GET, "/healthz", None, &[], None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tokens_are_shown_once_and_stored_hashed() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    assert!(token.starts_with("stx_") && token.len() > 60);
    let list = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{account}/tokens"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert!(
        !list.body.to_string().contains(&token[4..]),
        "list must not show the secret"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(api._scratch.db.pool())
        .await
        .unwrap();
    assert!(stored.iter().all(|h| !h.contains(&token[4..])));
    // A customer cannot issue tokens nor open accounts.
    let denied = api
        .call(
            Method::POST,
            &format!("/v1/accounts/{account}/tokens"),
            &token,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    let denied = api
        .call(
            Method::POST,
            "/v1/accounts",
            &token,
            Some(json!({"name": "x", "email": "a@b.co"})),
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    let unknown = api
        .call(
            Method::POST,
            "/v1/accounts/acc-0000000000000000/tokens",
            &api.admin,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn account_creation_validates_every_field() {
    let api = api().await;
    let cases = [
        (
            json!({"name": "ACME", "email": "not-an-email"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "email",
        ),
        (
            json!({"name": "   ", "email": "ops@acme.example"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            json!({"name": "ACME"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "email",
        ),
        (
            json!({"name": "ACME", "email": "ops@acme.example", "vip": true}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "vip",
        ),
        (
            json!({"name": 5, "email": "ops@acme.example"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name",
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = api
            .call(Method::POST, "/v1/accounts", &api.admin, Some(body))
            .await;
        assert_error(&reply, status, code, Some(field));
    }
    let garbage = api
        .raw(
            Method::POST,
            "/v1/accounts",
            Some(&api.admin),
            &[],
            Some("{not json".into()),
        )
        .await;
    assert_error(&garbage, StatusCode::BAD_REQUEST, "bad_request", None);
    assert!(
        api.state
            .accounts
            .list(None)
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was created"
    );
    let ok = api
        .call(
            Method::POST,
            "/v1/accounts",
            &api.admin,
            Some(json!({"name": "ACME", "email": "ops@acme.example"})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert!(ok.body["id"].as_str().unwrap().starts_with("acc-"));
    assert_eq!(ok.body["state"], "active");
}

#[tokio::test]
async fn catalog_lists_plans_and_images() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let plans = api.call(Method::GET, "/v1/plans", &token, None).await;
    assert_eq!(plans.status, StatusCode::OK);
    let small = plans.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "small")
        .unwrap();
    assert_eq!(
        small,
        &json!({"name": "small", "vcpus": 1, "memory_mib": 1024, "disk_gib": 25})
    );
    let images = api.call(Method::GET, "/v1/images", &token, None).await;
    assert!(
        images.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "debian-12")
    );
}

#[tokio::test]
async fn an_order_is_accepted_and_visible_to_its_account_only() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token) = api.customer("ACME").await;
        let (_, other) = api.customer("Globex").await;
        let reply = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            reply.body
        );
        let id = reply.body["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("vs-"));
        assert_eq!(
            reply.headers["location"],
            format!("/v1/servers/{id}").as_str()
        );
        assert_eq!(reply.body["status"], "pending");
        assert_eq!(reply.body["name"], "web1");
        assert_eq!(reply.body["account_id"], account.as_str());
        assert_eq!(
            (
                reply.body["vcpus"].clone(),
                reply.body["memory_mib"].clone()
            ),
            (json!(1), json!(1024))
        );

        let mine = api.call(Method::GET, "/v1/servers", &token, None).await;
        assert_eq!(mine.body["items"].as_array().unwrap().len(), 1, "{label}");
        assert_eq!(mine.body["next_cursor"], Value::Null);
        let theirs = api.call(Method::GET, "/v1/servers", &other, None).await;
        assert!(
            theirs.body["items"].as_array().unwrap().is_empty(),
            "{label}"
        );
        for (method, path, body) in [
            (Method::GET, format!("/v1/servers/{id}"), None),
            (Method::DELETE, format!("/v1/servers/{id}"), None),
            (
                Method::POST,
                format!("/v1/servers/{id}/actions"),
                Some(json!({"type": "stop"})),
            ),
        ] {
            let reply = api.call(method, &path, &other, body).await;
            assert_error(&reply, StatusCode::NOT_FOUND, "not_found", None);
        }
        let still = api
            .call(Method::GET, &format!("/v1/servers/{id}"), &token, None)
            .await;
        assert_eq!(
            still.body["desired_power"], "running",
            "{label}: another account changed nothing"
        );
        // Operators see everything.
        let all = api
            .call(
                Method::GET,
                &format!("/v1/servers?account={account}"),
                &api.admin,
                None,
            )
            .await;
        assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
        let one = api
            .call(Method::GET, &format!("/v1/servers/{id}"), &api.admin, None)
            .await;
        assert_eq!(one.status, StatusCode::OK, "{label}: {}", one.body);
        assert_eq!(one.body["account_id"], account.as_str());
    }
}

/// Path ids are parsed before anything is looked up, so nothing a client
/// writes in a path reaches a store or an API-server URL.
#[tokio::test]
async fn malformed_path_ids_are_refused_naming_the_id() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let created = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let upper = id.to_uppercase();
    for (who, path) in [
        (&token, "/v1/servers/web1".to_owned()),
        (&api.admin, "/v1/servers/vs-..%2F..%2Fnamespaces".to_owned()),
        (&api.admin, format!("/v1/servers/{upper}")),
        (&api.admin, format!("/v1/servers/{id}%3FfieldSelector=x")),
        (&api.admin, "/v1/accounts/..".to_owned()),
        (&api.admin, format!("/v1/accounts/{account}x/tokens")),
        (&api.admin, "/v1/admin/hypervisors/Hv1".to_owned()),
    ] {
        let reply = api.call(Method::GET, &path, who, None).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", Some("id"));
    }
    let reply = api
        .call(Method::DELETE, "/v1/tokens/tok-1", &api.admin, None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", Some("id"));
    let reply = api
        .call(
            Method::POST,
            &format!("/v1/servers/{upper}/actions"),
            &token,
            Some(json!({"type": "stop"})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", Some("id"));
    let reply = api
        .call(
            Method::DELETE,
            &format!("/v1/servers/{id}x"),
            &api.admin,
            None,
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", Some("id"));
    let still = api
        .call(Method::GET, &format!("/v1/servers/{id}"), &token, None)
        .await;
    assert_eq!(still.body["desired_power"], "running");
}

#[tokio::test]
async fn bad_orders_are_refused_and_create_nothing() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    api.register_zone("par1").await;
    let cases = [
        (
            json!({"name": "web1", "plan": "huge", "image": "debian-12"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "plan",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "windows"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "image",
        ),
        (
            json!({"name": "-bad_host-", "plan": "small", "image": "debian-12"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "debian-12", "zone": "mars"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "zone",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "debian-12", "gpu": 1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "gpu",
        ),
        (
            json!({"name": "web1", "image": "debian-12"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "plan",
        ),
        (
            json!({"name": ["web1"], "plan": "small", "image": "debian-12"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "debian-12",
                   "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D a", "ssh-rsa not-a-key"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "ssh_keys[1]",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "debian-12",
                   "ssh_keys": vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D"; 17]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "ssh_keys",
        ),
        (
            json!({"name": "web1", "plan": "small", "image": "debian-12",
                   "user_data": "#!/bin/sh\n".repeat(2000)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "user_data",
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = api
            .call(Method::POST, "/v1/servers", &token, Some(body.clone()))
            .await;
        assert_error(&reply, status, code, Some(field));
    }
    let huge = format!(
        "{{\"name\": \"{}\", \"plan\": \"small\", \"image\": \"debian-12\"}}",
        "a".repeat(100_000)
    );
    let reply = api
        .raw(Method::POST, "/v1/servers", Some(&token), &[], Some(huge))
        .await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let empty = api
        .raw(
            Method::POST,
            "/v1/servers",
            Some(&token),
            &[],
            Some(String::new()),
        )
        .await;
    assert_error(&empty, StatusCode::BAD_REQUEST, "bad_request", Some("body"));
    let admin_order = api
        .call(Method::POST, "/v1/servers", &api.admin, Some(order("web1")))
        .await;
    assert_error(&admin_order, StatusCode::FORBIDDEN, "forbidden", None);
    assert_eq!(
        api.server_count().await,
        0,
        "no refused order created anything"
    );
    let zoned = api
        .call(
            Method::POST,
            "/v1/servers",
            &token,
            Some(json!({"name": "web1", "plan": "small", "image": "debian-12", "zone": "par1"})),
        )
        .await;
    assert_eq!(zoned.status, StatusCode::ACCEPTED, "{}", zoned.body);
    assert_eq!(zoned.body["zone"], "par1");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_server_and_refuses_another_body() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let key = "order-42";
    let first = api.order_keyed(&token, key, "web1").await;
    let again = api.order_keyed(&token, key, "web1").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["id"], again.body["id"]);
    let other = api.order_keyed(&token, key, "web2").await;
    assert_error(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("Idempotency-Key"),
    );
    assert_eq!(api.server_count().await, 1);

    // Concurrent retries with one key still make one server.
    let replies = futures_join(&api, &token, &[("idempotency-key", "burst")]).await;
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(api.server_count().await, 2);

    // After deletion the key does not resurrect the server.
    let id = first.body["id"].as_str().unwrap();
    api.call(Method::DELETE, &format!("/v1/servers/{id}"), &token, None)
        .await;
    let replay = api.order_keyed(&token, "order-42", "web1").await;
    assert_error(&replay, StatusCode::CONFLICT, "conflict", None);
    let bad_key = api.order_keyed(&token, "has space", "web1").await;
    assert_error(
        &bad_key,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("Idempotency-Key"),
    );
}

/// The first attempt claimed its key and stopped before creating the server
/// (a crash, a timeout): the retry creates it under the claimed id, and once
/// created and deleted the key refuses to bring it back.
/// Consoles answered as an agent would, recording which domain was asked for.
#[derive(Default)]
struct RecordedConsoles(std::sync::Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl stratus_api::ServerConsoles for RecordedConsoles {
    async fn tail(&self, hypervisor: &str, domain: &str) -> Result<Vec<u8>, String> {
        self.0
            .lock()
            .unwrap()
            .push((hypervisor.to_owned(), domain.to_owned()));
        if hypervisor == "hv-down" {
            return Err("connection refused".into());
        }
        Ok(b"stratus-tiny: hostname=web1\n\xff".to_vec())
    }
}

#[tokio::test]
async fn a_servers_console_is_read_from_its_agent_by_its_owner_only() {
    let mut api = api().await;
    let (account, token) = api.customer("ACME").await;
    let (_, other) = api.customer("Other").await;
    let ordered = api
        .call(
            Method::POST,
            "/v1/servers",
            &token,
            Some(json!({"name": "web1", "plan": "small", "image": "debian-12",
                        "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D ops@acme"],
                        "user_data": "#cloud-config\n{}\n"})),
        )
        .await;
    assert_eq!(ordered.status, StatusCode::ACCEPTED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    let stored = api
        .state
        .servers
        .get(Some(&account), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.spec.ssh_keys.len(), 1);
    assert_eq!(
        stored.spec.user_data.as_deref(),
        Some("#cloud-config\n{}\n")
    );
    let path = format!("/v1/servers/{id}/console");

    // A process without agent credentials says so.
    let reply = api.call(Method::GET, &path, &token, None).await;
    assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);

    let consoles = Arc::new(RecordedConsoles::default());
    api.router = app(api.state.clone().with_consoles(consoles.clone()));
    let reply = api.call(Method::GET, &path, &token, None).await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict", None);
    let placed = |hypervisor: &str| stratus_core::resources::VirtualServerStatus {
        hypervisor: stratus_core::ids::HypervisorName::parse(hypervisor),
        domain: Some(format!("stratus-{account}.{id}")),
        ..Default::default()
    };
    api.state
        .servers
        .patch_status(Some(&account), &id, &placed("hv-a"))
        .await
        .unwrap();
    let reply = api.call(Method::GET, &path, &token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(reply.body, "stratus-tiny: hostname=web1\n\u{fffd}");
    assert_eq!(
        consoles.0.lock().unwrap().last().unwrap(),
        &("hv-a".to_owned(), format!("stratus-{account}.{id}"))
    );
    let reply = api.call(Method::GET, &path, &api.admin, None).await;
    assert_eq!(reply.status, StatusCode::OK, "operators read it too");
    let asked = consoles.0.lock().unwrap().len();
    let reply = api.call(Method::GET, &path, &other, None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(
        consoles.0.lock().unwrap().len(),
        asked,
        "no agent asked for a stranger"
    );

    api.state
        .servers
        .patch_status(Some(&account), &id, &placed("hv-down"))
        .await
        .unwrap();
    let reply = api.call(Method::GET, &path, &token, None).await;
    assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
}

#[tokio::test]
async fn a_retry_after_an_interrupted_order_creates_the_claimed_server_once() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let account = AccountId::parse(&account).unwrap();
    let key = "interrupted";
    let claimed = api
        .claim_as_a_first_attempt(&account, key, "web1", 0xab)
        .await;
    let retry = api.order_keyed(&token, key, "web1").await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert_eq!(retry.body["id"], claimed.as_str());
    api.call(
        Method::DELETE,
        &format!("/v1/servers/{claimed}"),
        &token,
        None,
    )
    .await;
    let replay = api.order_keyed(&token, key, "web1").await;
    assert_error(&replay, StatusCode::CONFLICT, "conflict", None);
    assert_eq!(api.server_count().await, 0);
}

/// A crash after the server was created but before its key was marked
/// fulfilled, then a deletion: a retry with the key must not bring it back.
#[tokio::test]
async fn a_server_deleted_after_an_interrupted_order_is_not_recreated_by_a_retry() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token) = api.customer("ACME").await;
        let account = AccountId::parse(&account).unwrap();
        let claimed = api
            .claim_as_a_first_attempt(&account, "crashed", "web1", 0xcd)
            .await;
        // What the crashed attempt did: the server exists, the key is unfulfilled.
        api.state
            .servers
            .create(
                &stratus_core::testing::server(claimed.as_str())
                    .in_account(account.as_str())
                    .build(),
            )
            .await
            .unwrap();
        let deleted = api
            .call(
                Method::DELETE,
                &format!("/v1/servers/{claimed}"),
                &token,
                None,
            )
            .await;
        assert_eq!(
            deleted.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            deleted.body
        );
        let retry = api.order_keyed(&token, "crashed", "web1").await;
        assert_error(&retry, StatusCode::CONFLICT, "conflict", None);
        assert_eq!(api.server_count().await, 0, "{label}");
    }
}

/// Sends six identical keyed orders at once, so they race on the database.
async fn futures_join(api: &Api, token: &str, key: &[(&str, &str)]) -> Vec<Reply> {
    let calls = (0..6).map(|_| {
        api.raw(
            Method::POST,
            "/v1/servers",
            Some(token),
            key,
            Some(order("burst").to_string()),
        )
    });
    let replies = futures::future::join_all(calls).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    replies
}

#[tokio::test]
async fn actions_change_the_desired_state() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let id = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/servers/{id}/actions");
    let stop = api
        .call(Method::POST, &path, &token, Some(json!({"type": "stop"})))
        .await;
    assert_eq!(stop.status, StatusCode::ACCEPTED);
    assert_eq!(stop.body["desired_power"], "stopped");
    let reboot = api
        .call(Method::POST, &path, &token, Some(json!({"type": "reboot"})))
        .await;
    assert_error(&reboot, StatusCode::CONFLICT, "conflict", None);
    let start = api
        .call(Method::POST, &path, &token, Some(json!({"type": "start"})))
        .await;
    assert_eq!(start.body["desired_power"], "running");
    let reboot = api
        .call(Method::POST, &path, &token, Some(json!({"type": "reboot"})))
        .await;
    assert_eq!(reboot.status, StatusCode::ACCEPTED);
    let server = api.state.servers.list(None).await.unwrap().items.remove(0);
    assert_eq!(server.spec.reboot_requests, 1);
    let unknown = api
        .call(
            Method::POST,
            &path,
            &token,
            Some(json!({"type": "hibernate"})),
        )
        .await;
    assert_error(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("type"),
    );
    let extra = api
        .call(
            Method::POST,
            &path,
            &token,
            Some(json!({"type": "stop", "force": true})),
        )
        .await;
    assert_error(
        &extra,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("force"),
    );

    let deleted = api
        .call(Method::DELETE, &format!("/v1/servers/{id}"), &token, None)
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    assert_eq!(deleted.body["status"], "terminating");
    // No controller ran, so no finalizer held it: it is gone already.
    let gone = api
        .call(Method::GET, &format!("/v1/servers/{id}"), &token, None)
        .await;
    assert_error(&gone, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn servers_are_listed_page_by_page() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    for i in 0..5 {
        api.call(
            Method::POST,
            "/v1/servers",
            &token,
            Some(order(&format!("web{i}"))),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/servers?limit=2".to_owned();
    loop {
        let page = api.call(Method::GET, &path, &token, None).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/servers?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let bad = api
        .call(Method::GET, "/v1/servers?limit=0", &token, None)
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request", Some("limit"));

    // A cursor is read back, never trusted: a forged one, or one pointing
    // into another account's servers, is refused naming `cursor`.
    let (other_account, other_token) = api.customer("Globex").await;
    let mine = api
        .call(Method::GET, "/v1/servers?limit=2", &token, None)
        .await;
    let cursor = mine.body["next_cursor"].as_str().unwrap().to_owned();
    let elsewhere = api
        .call(
            Method::GET,
            &format!("/v1/servers?limit=2&cursor={cursor}"),
            &other_token,
            None,
        )
        .await;
    assert_error(
        &elsewhere,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("cursor"),
    );
    for forged in ["%2E%2E", "bm90LWEtdG9rZW4", "_w"] {
        let refused = api
            .call(
                Method::GET,
                &format!("/v1/servers?cursor={forged}"),
                &token,
                None,
            )
            .await;
        assert_error(
            &refused,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("cursor"),
        );
    }
    let by_operator = api
        .call(
            Method::GET,
            &format!("/v1/servers?account={other_account}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(by_operator.status, StatusCode::OK);
    assert_eq!(by_operator.body["items"], json!([]));
    let bad_account = api
        .call(Method::GET, "/v1/servers?account=..%2Fx", &api.admin, None)
        .await;
    assert_error(
        &bad_account,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("account"),
    );
}

#[tokio::test]
async fn accounts_are_listed_page_by_page() {
    let api = api().await;
    for name in ["ACME", "Globex", "Initech"] {
        api.customer(name).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/accounts?limit=2".to_owned();
    loop {
        let page = api.call(Method::GET, &path, &api.admin, None).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/accounts?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "each account once, in id order");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn hypervisor_registration_keeps_the_token_secret() {
    let api = api().await;
    let (_, customer) = api.customer("ACME").await;
    let body = json!({"name": "hv1", "url": "https://127.0.0.1:9090", "zone": "par1", "token": "agent-token-0123456789"});
    let denied = api
        .call(
            Method::POST,
            "/v1/admin/hypervisors",
            &customer,
            Some(body.clone()),
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    let created = api
        .call(
            Method::POST,
            "/v1/admin/hypervisors",
            &api.admin,
            Some(body.clone()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(
        !created.body.to_string().contains("agent-token"),
        "{}",
        created.body
    );
    assert_eq!(created.body["reachable"], false);
    assert_eq!(
        api.state
            .secrets
            .get("hypervisor/hv1")
            .await
            .unwrap()
            .as_deref(),
        Some("agent-token-0123456789"),
        "stored encrypted, readable by the control plane"
    );
    let again = api
        .call(
            Method::POST,
            "/v1/admin/hypervisors",
            &api.admin,
            Some(body.clone()),
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT, "conflict", None);
    let mut other_token = body.clone();
    other_token["token"] = json!("another-token-0123456789");
    let hijack = api
        .call(
            Method::POST,
            "/v1/admin/hypervisors",
            &api.admin,
            Some(other_token),
        )
        .await;
    assert_error(&hijack, StatusCode::CONFLICT, "conflict", None);
    assert_eq!(
        api.state
            .secrets
            .get("hypervisor/hv1")
            .await
            .unwrap()
            .as_deref(),
        Some("agent-token-0123456789"),
        "a refused registration leaves the existing credential alone"
    );
    for (field, value) in [
        ("url", json!("ftp://x")),
        // Agents serve mutual TLS only: a clear-text URL is refused.
        ("url", json!("http://127.0.0.1:9091")),
        ("url", json!("https://")),
        ("zone", json!("Par 1")),
        ("token", json!("short")),
        ("name", json!("HV!")),
        // Both would name the Secret stratus-hypervisor-hv-1 on Kubernetes
        // if mapped, and neither is a valid object name there.
        ("name", json!("hv_1")),
        ("name", json!("hv.1")),
        ("name", json!("hv1-")),
    ] {
        let mut bad = json!({"name": "hv2", "url": "https://127.0.0.1:9091", "zone": "par1", "token": "agent-token-0123456789"});
        bad[field] = value;
        let reply = api
            .call(Method::POST, "/v1/admin/hypervisors", &api.admin, Some(bad))
            .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(field),
        );
    }
    let list = api
        .call(Method::GET, "/v1/admin/hypervisors", &api.admin, None)
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        list.body["items"][0]["placed"],
        json!({"vcpus": 0, "memory_mib": 0, "disk_gib": 0})
    );
    let one = api
        .call(Method::GET, "/v1/admin/hypervisors/hv1", &api.admin, None)
        .await;
    assert_eq!(one.body["zone"], "par1");
    let audit = api
        .state
        .ledger
        .audit()
        .trail(&AuditSubject::Hypervisor("hv1".into()))
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|e| !e.detail.to_string().contains("agent-token"))
    );
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let api = api().await;
    let doc = api.raw(Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/v1/servers",
        "/v1/servers/{id}",
        "/v1/servers/{id}/actions",
        "/v1/accounts",
        "/v1/admin/hypervisors",
        "/v1/tokens/{id}",
    ] {
        assert!(
            doc.body["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc.body["components"]["schemas"]["OrderServer"].is_object());
    api.raw(Method::GET, "/v1/plans", None, &[], None).await;
    let metrics = api.raw(Method::GET, "/metrics", None, &[], None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(
            "stratus_api_requests_total{method=\"GET\",route=\"/v1/plans\",status=\"401\"}"
        ),
        "{text}"
    );
    let unknown = api.raw(Method::GET, "/v2/nothing", None, &[], None).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", None);
}

/// Anyone can send requests without a token; none of them may add label
/// values (time series kept forever) beyond a closed set.
#[tokio::test]
async fn metric_labels_stay_bounded_whatever_clients_send() {
    let api = api().await;
    for i in 0..50 {
        let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        api.raw(method, "/v1/plans", None, &[], None).await;
        api.raw(Method::GET, &format!("/nothing/{i}"), None, &[], None)
            .await;
        api.raw(Method::GET, &format!("/v1/servers/vs-{i}"), None, &[], None)
            .await;
    }
    let metrics = api.raw(Method::GET, "/metrics", None, &[], None).await;
    let text = metrics.body.as_str().unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("stratus_api_requests_total{"))
        .collect();
    assert!(
        series
            .iter()
            .all(|l| !l.contains("X1") && !l.contains("/nothing/")),
        "{text}"
    );
    assert!(
        text.contains("method=\"other\",route=\"/v1/plans\""),
        "{text}"
    );
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(series.len() <= 5, "{series:#?}");
}

#[tokio::test]
async fn orders_beyond_the_quota_are_refused_naming_it_and_create_nothing() {
    let config = Config {
        quotas: stratus_core::quota::Quota {
            servers: Some(2),
            ..Default::default()
        },
        ..Config::default()
    };
    let api = api_configured(testing::sqlite().await, config).await;
    let (account, token) = api.customer("ACME").await;
    for name in ["web1", "web2"] {
        let reply = api
            .call(Method::POST, "/v1/servers", &token, Some(order(name)))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let refused = api.order_keyed(&token, "third-order", "web3").await;
    assert_error(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
        None,
    );
    assert_eq!(
        refused.body["error"]["details"],
        json!({"quota": "servers", "limit": 2, "used": 2, "requested": 1})
    );
    assert_eq!(
        api.server_count().await,
        2,
        "a refused order creates nothing"
    );

    let shown = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{account}"),
            &token,
            None,
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        shown.body["quota"],
        json!({"servers": 2, "vcpus": null, "memoryMib": null, "diskGib": null, "storageGib": null})
    );
    assert_eq!(
        shown.body["usage"],
        json!({"servers": 2, "vcpus": 2, "memoryMib": 2048, "diskGib": 50, "storageGib": 0})
    );

    // Bad quotas are refused naming the field, and change nothing.
    let path = format!("/v1/admin/accounts/{account}/quota");
    for (body, field) in [
        (json!({"servers": -1}), "servers"),
        (json!({"gpus": 4}), "gpus"),
        (json!({"vcpus": "many"}), "vcpus"),
    ] {
        let reply = api.call(Method::PUT, &path, &api.admin, Some(body)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request", Some(field));
    }
    let customer = api
        .call(Method::PUT, &path, &token, Some(json!({"servers": 100})))
        .await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN, "{}", customer.body);
    let nobody = api
        .call(
            Method::PUT,
            "/v1/admin/accounts/acc-00000000000000ff/quota",
            &api.admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{}", nobody.body);

    // The account's own quota: more servers, but at most 3 vCPUs.
    let set = api
        .call(
            Method::PUT,
            &path,
            &api.admin,
            Some(json!({"servers": 10, "vcpus": 3})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["quota"]["servers"], 10);
    // The refused key was forgotten: the same key orders now.
    let retried = api.order_keyed(&token, "third-order", "web3").await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{}", retried.body);
    let over = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web4")))
        .await;
    assert_error(
        &over,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
        None,
    );
    assert_eq!(over.body["error"]["details"]["quota"], "vcpus");

    // Racing orders cannot overshoot: room for 4 more servers, 12 race.
    api.call(Method::PUT, &path, &api.admin, Some(json!({"servers": 7})))
        .await;
    let racing = (0..12).map(|i| {
        api.call(
            Method::POST,
            "/v1/servers",
            &token,
            Some(order(&format!("race{i}"))),
        )
    });
    let replies = futures::future::join_all(racing).await;
    let accepted = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 4);
    assert_eq!(api.server_count().await, 7);
    let audit = api
        .state
        .ledger
        .audit()
        .trail(&AuditSubject::Account(account.clone()))
        .await
        .unwrap();
    assert!(
        audit.iter().any(|e| e.action == AuditAction::AccountQuota),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_token_beyond_its_rate_is_answered_429_with_retry_after_and_others_are_not() {
    let config = Config {
        limits: stratus_core::config::Limits {
            requests_per_second: 1,
            // The operator opens both accounts within it too.
            burst: 5,
            ..Default::default()
        },
        ..Config::default()
    };
    let api = api_configured(testing::sqlite().await, config).await;
    let (_, hasty) = api.customer("Hasty").await;
    let (_, calm) = api.customer("Calm").await;
    for _ in 0..5 {
        let reply = api.call(Method::GET, "/v1/servers", &hasty, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let limited = api.call(Method::GET, "/v1/servers", &hasty, None).await;
    assert_error(
        &limited,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    );
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // A refused order creates nothing.
    let order = api
        .call(Method::POST, "/v1/servers", &hasty, Some(order("web1")))
        .await;
    assert_eq!(order.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.server_count().await, 0);
    // Another account's token is served as before.
    let other = api.call(Method::GET, "/v1/servers", &calm, None).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
}

#[tokio::test]
async fn r19_ip_pools_are_validated_refuse_overlaps_and_cannot_be_deleted_in_use() {
    let api = api().await;
    let (_, customer) = api.customer("ACME").await;
    let pool = json!({"name": "fra1-a", "zone": "fra1",
        "ipv4": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "excluded": ["203.0.113.2-203.0.113.9"]},
        "ipv6": {"prefix": "2001:db8:100::/48", "gateway": "2001:db8:100::1"}});
    let denied = api
        .call(
            Method::POST,
            "/v1/admin/ip-pools",
            &customer,
            Some(pool.clone()),
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    let created = api
        .call(
            Method::POST,
            "/v1/admin/ip-pools",
            &api.admin,
            Some(pool.clone()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["ipv4_counts"]["total"], 256 - 3 - 8);
    assert_eq!(created.body["ipv6_counts"]["total"], 65_535);
    assert_eq!(created.body["ipv6"]["serverPrefixLength"], 64);

    let bad = |field: &str, body: Value| (field.to_owned(), body);
    for (field, body) in [
        bad(
            "ipv4.cidr",
            json!({"name": "b", "zone": "fra1", "ipv4": {"cidr": "198.51.100.7/24", "gateway": "198.51.100.1"}}),
        ),
        bad(
            "ipv4.gateway",
            json!({"name": "b", "zone": "fra1", "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.101.1"}}),
        ),
        bad(
            "ipv4.excluded[0]",
            json!({"name": "b", "zone": "fra1", "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1", "excluded": ["10.0.0.1"]}}),
        ),
        bad(
            "ipv6.serverPrefixLength",
            json!({"name": "b", "zone": "fra1", "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1"},
            "ipv6": {"prefix": "2001:db8:200::/48", "gateway": "2001:db8:200::1", "serverPrefixLength": 40}}),
        ),
        bad(
            "name",
            json!({"name": "Bad_Name", "zone": "fra1", "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1"}}),
        ),
    ] {
        let refused = api
            .call(Method::POST, "/v1/admin/ip-pools", &api.admin, Some(body))
            .await;
        assert_error(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(&field),
        );
    }
    let overlapping = api
        .call(Method::POST, "/v1/admin/ip-pools", &api.admin, Some(json!({"name": "b", "zone": "fra2",
            "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1"},
            "ipv6": {"prefix": "2001:db8::/32", "gateway": "2001:db8::1", "serverPrefixLength": 56}})))
        .await;
    assert_error(&overlapping, StatusCode::CONFLICT, "conflict", Some("ipv6"));
    assert!(
        overlapping.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fra1-a")
    );
    assert_eq!(
        api.state.ip_pools.list(None).await.unwrap().items.len(),
        1,
        "refusals created nothing"
    );

    // A held address keeps the pool; history answers who held it when.
    let ips = api.state.ledger.ips();
    let hold = |address: &'static str, family, prefix_len, uid: &'static str, at: i64| {
        stratus_store::ledger::NewHolding {
            pool: "fra1-a",
            family,
            slot: 1,
            address,
            prefix_len,
            holder: uid,
            account: "acc-0000000000000001",
            subject: "acc-0000000000000001/web",
            at,
            next_check_at: at,
        }
    };
    use stratus_core::ip::Family;
    let march_3 = "2026-03-03T14:02:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    assert!(
        ips.try_hold(&hold(
            "203.0.113.10",
            Family::V4,
            32,
            "uid-1",
            march_3 - 1000
        ))
        .await
        .unwrap()
    );
    assert!(
        ips.try_hold(&hold(
            "2001:db8:100:7::/64",
            Family::V6,
            64,
            "uid-1",
            march_3 - 1000
        ))
        .await
        .unwrap()
    );
    let in_use = api
        .call(
            Method::DELETE,
            "/v1/admin/ip-pools/fra1-a",
            &api.admin,
            None,
        )
        .await;
    assert_error(&in_use, StatusCode::CONFLICT, "conflict", None);
    ips.release("uid-1", march_3 + 1000, march_3 + 2000)
        .await
        .unwrap();
    let history = api
        .call(
            Method::GET,
            "/v1/admin/ips/203.0.113.10/history?at=2026-03-03T14:02:00Z",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    assert_eq!(
        history.body["holdings"][0]["account_id"], "acc-0000000000000001",
        "{}",
        history.body
    );
    assert_eq!(
        history.body["holdings"][0]["server"],
        "acc-0000000000000001/web"
    );
    let later = api
        .call(
            Method::GET,
            "/v1/admin/ips/203.0.113.10/history?at=2026-03-04T00:00:00Z",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(
        later.body["holdings"].as_array().unwrap().len(),
        0,
        "{}",
        later.body
    );
    // Any address inside the IPv6 prefix finds its holder.
    let v6 = api
        .call(
            Method::GET,
            "/v1/admin/ips/2001:db8:100:7:dead:beef::1/history?at=2026-03-03T14:02:00Z",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(
        v6.body["holdings"][0]["address"], "2001:db8:100:7::/64",
        "{}",
        v6.body
    );
    for (path, field) in [
        ("/v1/admin/ips/203.0.113.10/history?at=yesterday", "at"),
        ("/v1/admin/ips?blacklisted=false", "blacklisted"),
    ] {
        let refused = api.call(Method::GET, path, &api.admin, None).await;
        assert_error(
            &refused,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(field),
        );
    }
    let customers = api
        .call(
            Method::GET,
            "/v1/admin/ips/203.0.113.10/history",
            &customer,
            None,
        )
        .await;
    assert_error(&customers, StatusCode::FORBIDDEN, "forbidden", None);
    let listed = api
        .call(
            Method::GET,
            "/v1/admin/ips?blacklisted=true",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(listed.body, json!([]));
}

/// Operators override the blacklists' verdict on an address (audited, at
/// once) and ask for checks, which wait for the controller's answer;
/// customers can do neither, and bad input changes nothing.
#[tokio::test]
async fn r20_operators_override_verdicts_and_request_checks() {
    let api = api().await;
    let (_, customer) = api.customer("ACME").await;
    let created = api
        .call(
            Method::POST,
            "/v1/admin/ip-pools",
            &api.admin,
            Some(json!({"name": "fra1-a", "zone": "fra1",
            "ipv4": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1"},
            "ipv6": {"prefix": "2001:db8:100::/48", "gateway": "2001:db8:100::1"}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let ips = api.state.ledger.ips();

    let listed = json!({"verdict": "listed", "reason": "ticket 4711: spam complaints"});
    let denied = api
        .call(
            Method::POST,
            "/v1/admin/ips/203.0.113.7/override",
            &customer,
            Some(listed.clone()),
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    for (body, field) in [
        (json!({"verdict": "maybe", "reason": "x"}), "verdict"),
        (json!({"verdict": "clean", "reason": "  "}), "reason"),
    ] {
        let refused = api
            .call(
                Method::POST,
                "/v1/admin/ips/203.0.113.7/override",
                &api.admin,
                Some(body),
            )
            .await;
        assert_error(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(field),
        );
    }
    let outside = api
        .call(
            Method::POST,
            "/v1/admin/ips/198.51.100.7/override",
            &api.admin,
            Some(listed.clone()),
        )
        .await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND, "{}", outside.body);
    assert!(
        ips.override_of("203.0.113.7").await.unwrap().is_none(),
        "refusals change nothing"
    );

    let decided = api
        .call(
            Method::POST,
            "/v1/admin/ips/203.0.113.7/override",
            &api.admin,
            Some(listed),
        )
        .await;
    assert_eq!(decided.status, StatusCode::OK, "{}", decided.body);
    assert_eq!(decided.body["verdict"], "listed");
    let listing = ips
        .listing("203.0.113.7")
        .await
        .unwrap()
        .expect("out of circulation at once");
    assert_eq!(
        (listing.zone.as_str(), listing.reason.as_str()),
        ("operator", "ticket 4711: spam complaints")
    );
    let blacklisted = api
        .call(
            Method::GET,
            "/v1/admin/ips?blacklisted=true",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(blacklisted.body[0]["address"], "203.0.113.7");
    let cleared = api
        .call(
            Method::POST,
            "/v1/admin/ips/203.0.113.7/override",
            &api.admin,
            Some(json!({"verdict": "clean", "reason": "delisted by the zone operator"})),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert!(ips.listing("203.0.113.7").await.unwrap().is_none());
    assert_eq!(
        ips.override_of("203.0.113.7")
            .await
            .unwrap()
            .map(|o| o.listed),
        Some(false)
    );
    let withdrawn = api
        .call(
            Method::DELETE,
            "/v1/admin/ips/203.0.113.7/override",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(withdrawn.status, StatusCode::NO_CONTENT);
    let again = api
        .call(
            Method::DELETE,
            "/v1/admin/ips/203.0.113.7/override",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let audit = api
        .state
        .ledger
        .audit()
        .trail(&AuditSubject::IpPool("fra1-a".into()))
        .await
        .unwrap();
    let actions: Vec<AuditAction> = audit.iter().map(|e| e.action).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == AuditAction::IpOverride)
            .count(),
        2,
        "{actions:?}"
    );
    assert!(actions.contains(&AuditAction::IpOverrideWithdraw));

    // A check of an IPv6 address asks about its prefix's NIC address.
    let requested = api
        .call(
            Method::POST,
            "/v1/admin/ips/2001:db8:100:5::abcd/check",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    assert_eq!(requested.body["status"], "pending");
    assert_eq!(requested.body["address"], "2001:db8:100:5::/64");
    assert_eq!(requested.body["checked"], "2001:db8:100:5::1");
    let twice = api
        .call(
            Method::POST,
            "/v1/admin/ips/2001:db8:100:5::1/check",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(
        twice.body["id"], requested.body["id"],
        "one check waits, not two"
    );
    let denied = api
        .call(
            Method::POST,
            "/v1/admin/ips/2001:db8:100:5::1/check",
            &customer,
            None,
        )
        .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden", None);
    let pending = ips.pending_requests("fra1-a", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    ips.answer_request(pending[0].id, "clean", 0).await.unwrap();
    let checks = api
        .call(
            Method::GET,
            "/v1/admin/ips/2001:db8:100:5::1/checks",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(checks.status, StatusCode::OK, "{}", checks.body);
    assert_eq!(checks.body["requests"][0]["status"], "answered");
    assert_eq!(checks.body["requests"][0]["verdict"], "clean");
    let malformed = api
        .call(
            Method::POST,
            "/v1/admin/ips/not-an-ip/check",
            &api.admin,
            None,
        )
        .await;
    // Like every malformed id in a path: not found, naming its shape.
    assert_error(&malformed, StatusCode::NOT_FOUND, "not_found", Some("id"));
}

/// Posts `event` about `account` as `token`.
async fn report(api: &Api, token: &str, account: &str, event: Value) -> Reply {
    api.call(
        Method::POST,
        &format!("/v1/admin/accounts/{account}/events"),
        token,
        Some(event),
    )
    .await
}

async fn facts_of(api: &Api, account: &str) -> usize {
    api.state
        .ledger
        .facts()
        .of_account(account, 0, 1000)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn r10_account_events_are_recorded_once_by_id_and_bad_ones_change_nothing() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (acme, acme_token) = api.customer("ACME").await;
        let (globex, globex_token) = api.customer("Globex").await;
        let theirs = api
            .call(
                Method::POST,
                "/v1/servers",
                &globex_token,
                Some(order("db1")),
            )
            .await;
        let theirs = theirs.body["id"].as_str().unwrap().to_owned();

        let overdue = json!({"id": "inv-7-overdue", "type": "invoice_overdue", "invoice_id": "inv-7", "due_at": "2026-11-01T00:00:00Z"});
        let first = report(&api, &api.admin, &acme, overdue.clone()).await;
        assert_eq!(
            first.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            first.body
        );
        assert_eq!(first.body["result"], "recorded");
        assert_eq!(first.body["facts"][0]["type"], "invoice_overdue");
        assert_eq!(first.body["facts"][0]["account_id"], acme.as_str());
        let again = report(&api, &api.admin, &acme, overdue.clone()).await;
        assert_eq!(again.status, StatusCode::OK, "{label}: {}", again.body);
        assert_eq!(again.body["result"], "repeated");
        assert_eq!(
            again.body["facts"][0]["recorded_at"],
            first.body["facts"][0]["recorded_at"]
        );

        let mut other_body = overdue.clone();
        other_body["invoice_id"] = json!("inv-8");
        let refusals = [
            (other_body, "id"),
            (
                json!({"id": "x1", "type": "invoice_overdue", "invoice_id": "inv-9"}),
                "due_at",
            ),
            (
                json!({"id": "x2", "type": "invoice_overdue", "invoice_id": "inv-9", "due_at": "yesterday"}),
                "due_at",
            ),
            (
                json!({"id": "x3", "type": "invoice_paid", "invoice_id": "inv-9", "amount": 5}),
                "amount",
            ),
            (
                json!({"id": "x4", "type": "invoice_lost", "invoice_id": "inv-9"}),
                "type",
            ),
            (json!({"type": "invoice_paid", "invoice_id": "inv-9"}), "id"),
            (
                json!({"id": "", "type": "invoice_paid", "invoice_id": "inv-9"}),
                "id",
            ),
            (
                json!({"id": "x5", "type": "abuse_report", "server": theirs}),
                "server",
            ),
            (
                json!({"id": "x6", "type": "abuse_report", "server": "vs-00000000000000ff"}),
                "server",
            ),
            (
                json!({"id": "x7", "type": "abuse_report", "ip": "192.0.2.77", "received_at": "2026-11-01T00:00:00Z"}),
                "ip",
            ),
            (
                json!({"id": "x8", "type": "abuse_report", "ip": "not-an-ip"}),
                "ip",
            ),
            (
                json!({"id": "x9", "type": "terminate", "server": theirs, "reason": "abuse", "notice": "policy"}),
                "server",
            ),
            (
                json!({"id": "x10", "type": "terminate", "server": theirs, "reason": "boredom", "notice": "policy"}),
                "body",
            ),
            (
                json!({"id": "x11", "type": "maintenance", "hypervisor": "hv-nowhere"}),
                "hypervisor",
            ),
        ];
        for (body, field) in refusals {
            let reply = report(&api, &api.admin, &acme, body.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{label}: {body}: {}",
                reply.body
            );
            assert_eq!(reply.body["error"]["code"], "validation_failed", "{body}");
            if field != "body" {
                assert_eq!(
                    reply.body["error"]["details"]["field"], field,
                    "{body}: {}",
                    reply.body
                );
            }
        }
        assert_eq!(
            facts_of(&api, &acme).await,
            1,
            "{label}: refusals record nothing"
        );
        assert_eq!(facts_of(&api, &globex).await, 0, "{label}");

        for token in [&acme_token, &globex_token] {
            let reply = report(
                &api,
                token,
                &acme,
                json!({"id": "c1", "type": "invoice_paid", "invoice_id": "inv-7"}),
            )
            .await;
            assert_error(&reply, StatusCode::FORBIDDEN, "forbidden", None);
        }
        let unknown = report(
            &api,
            &api.admin,
            "acc-00000000000000ff",
            json!({"id": "u1", "type": "kyc_incomplete"}),
        )
        .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{label}");

        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Account(acme.clone()))
            .await
            .unwrap();
        let reported: Vec<_> = trail
            .iter()
            .filter(|e| e.action == AuditAction::AccountFact)
            .collect();
        assert_eq!(reported.len(), 1, "{label}: audited once");
        assert!(
            reported[0].actor.to_string().starts_with("token:"),
            "the token is the actor"
        );
        assert_eq!(reported[0].detail["report"]["invoice_id"], "inv-7");
        let due = api.state.ledger.facts().due(i64::MAX, 10).await.unwrap();
        assert!(
            due.iter().any(|d| d.account == acme),
            "{label}: due at once for the controller"
        );
    }
}

#[tokio::test]
async fn billing_tokens_report_billing_facts_and_nothing_else() {
    let api = api().await;
    let (acme, _) = api.customer("ACME").await;
    let (_, billing) = api
        .state
        .ledger
        .tokens()
        .issue(1, None, "billing-system", TokenScope::Billing)
        .await
        .unwrap();
    let paid = report(
        &api,
        &billing,
        &acme,
        json!({"id": "p1", "type": "invoice_paid", "invoice_id": "inv-1"}),
    )
    .await;
    assert_eq!(paid.status, StatusCode::ACCEPTED, "{}", paid.body);
    for (body, path) in [
        (
            Some(json!({"id": "a1", "type": "kyc_incomplete"})),
            format!("/v1/admin/accounts/{acme}/events"),
        ),
        (None, "/v1/servers".to_owned()),
        (None, "/v1/accounts".to_owned()),
        (None, "/v1/admin/ip-pools".to_owned()),
    ] {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let reply = api.call(method, &path, &billing, body).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "forbidden", None);
    }
    assert_eq!(facts_of(&api, &acme).await, 1);
}

#[tokio::test]
async fn r22_an_abuse_report_by_address_and_time_names_whoever_held_it_then() {
    let api = api().await;
    let (acme, acme_token) = api.customer("ACME").await;
    let (globex, globex_token) = api.customer("Globex").await;
    let mut ids = Vec::new();
    for (token, name) in [(&acme_token, "web1"), (&globex_token, "db1")] {
        let reply = api
            .call(Method::POST, "/v1/servers", token, Some(order(name)))
            .await;
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    // 192.0.2.77: ACME's web1 from t=1000 to t=5000, then Globex's db1.
    let ips = api.state.ledger.ips();
    for (account, server, from) in [(&acme, &ids[0], 1_000), (&globex, &ids[1], 6_000)] {
        let subject = format!("{account}/{server}");
        let held = ips
            .try_hold(&stratus_store::ledger::NewHolding {
                pool: "doc",
                family: stratus_core::ip::Family::V4,
                slot: 77,
                address: "192.0.2.77",
                prefix_len: 24,
                holder: server,
                account,
                subject: &subject,
                at: from,
                next_check_at: i64::MAX,
            })
            .await
            .unwrap();
        assert!(held);
        if from == 1_000 {
            ips.release(server, 5_000, 5_500).await.unwrap();
            ips.return_to_pool(ips.history("192.0.2.77").await.unwrap()[0].id, 5_500)
                .await
                .unwrap();
        }
    }
    let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let reply = api
        .call(
            Method::POST,
            "/v1/admin/events",
            &api.admin,
            Some(json!({"id": "spam-1", "type": "abuse_report", "ip": "192.0.2.77", "received_at": at(2_000), "evidence": "From: victim\n..."})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["facts"][0]["account_id"], acme.as_str());
    assert_eq!(reply.body["facts"][0]["fact"]["server"], ids[0].as_str());
    assert_eq!(
        facts_of(&api, &globex).await,
        0,
        "only the account that held it then"
    );

    let later = api
        .call(
            Method::POST,
            "/v1/admin/events",
            &api.admin,
            Some(json!({"id": "spam-2", "type": "abuse_report", "ip": "192.0.2.77", "received_at": at(7_000)})),
        )
        .await;
    assert_eq!(
        later.body["facts"][0]["account_id"],
        globex.as_str(),
        "{}",
        later.body
    );
    let through_acme = report(&api, &api.admin, &acme, json!({"id": "spam-3", "type": "abuse_report", "ip": "192.0.2.77", "received_at": at(7_000)})).await;
    assert_eq!(
        through_acme.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        through_acme.body
    );
    assert_eq!(through_acme.body["error"]["details"]["field"], "ip");
}

#[tokio::test]
async fn r2_r5_suspended_servers_and_accounts_refuse_the_customers_actions() {
    let api = api().await;
    let (acme, token) = api.customer("ACME").await;
    let reply = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    api.state
        .servers
        .update(Some(&acme), &id, |s| {
            s.spec.suspension = Some(stratus_core::standing::Suspension {
                reasons: vec![stratus_core::standing::SuspensionReason::Abuse],
                mode: stratus_core::policy::SuspensionMode::NetworkIsolated,
            });
            true
        })
        .await
        .unwrap();
    let shown = api
        .call(Method::GET, &format!("/v1/servers/{id}"), &token, None)
        .await;
    assert_eq!(shown.body["status"], "suspended");
    assert_eq!(shown.body["status_reason"], "abuse");
    assert_eq!(shown.body["suspension"]["mode"], "network_isolated");
    for action in ["stop", "start", "reboot"] {
        let reply = api
            .call(
                Method::POST,
                &format!("/v1/servers/{id}/actions"),
                &token,
                Some(json!({"type": action})),
            )
            .await;
        assert_error(&reply, StatusCode::CONFLICT, "server_suspended", None);
        assert_eq!(reply.body["error"]["details"]["reason"], "abuse");
    }
    let delete = api
        .call(Method::DELETE, &format!("/v1/servers/{id}"), &token, None)
        .await;
    assert_error(&delete, StatusCode::CONFLICT, "server_suspended", None);
    assert!(
        api.state
            .servers
            .get(Some(&acme), &id)
            .await
            .unwrap()
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none(),
        "the evidence is kept"
    );

    api.state
        .accounts
        .patch_status(
            None,
            &acme,
            &stratus_core::resources::AccountStatus {
                suspensions: vec![stratus_core::resources::AccountSuspension {
                    reason: stratus_core::standing::SuspensionReason::NonPayment,
                    since: "2026-11-16T00:00:00Z".into(),
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let refused = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web2")))
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "account_suspended", None);
    assert_eq!(refused.body["error"]["details"]["reason"], "non_payment");
    let account = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{acme}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(account.body["state"], "suspended");
    assert_eq!(account.body["suspensions"][0]["reason"], "non_payment");
}

#[tokio::test]
async fn r7_billing_events_are_read_by_cursor_each_exactly_once() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (acme, token) = api.customer("ACME").await;
        let record = |n: u64| stratus_store::ledger::Charge {
            key: format!("{acme}/abuse_report:r{n}"),
            account: acme.clone(),
            kind: "abuse_report".into(),
            amount: 50_000,
            currency: "EUR".into(),
            subject: format!("server/{acme}/vs-0000000000000001"),
            detail: json!({"report": n}),
            created_at: 1_000 + n as i64,
        };
        for n in 0..5 {
            assert!(api.state.ledger.charges().record(&record(n)).await.unwrap());
        }
        assert!(
            !api.state.ledger.charges().record(&record(0)).await.unwrap(),
            "once by key"
        );
        let mut seen = Vec::new();
        let mut cursor = "0".to_owned();
        // A consumer polls: on PostgreSQL, other tests' open transactions
        // hold back what is shown for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < 5 && std::time::Instant::now() < deadline {
            let page = api
                .call(
                    Method::GET,
                    &format!("/v1/admin/billing-events?since={cursor}&limit=2"),
                    &api.admin,
                    None,
                )
                .await;
            assert_eq!(page.status, StatusCode::OK, "{label}: {}", page.body);
            for item in page.body["items"].as_array().unwrap() {
                assert_eq!(
                    (item["amount"].as_u64(), item["currency"].as_str()),
                    (Some(50_000), Some("EUR"))
                );
                seen.push(item["id"].as_str().unwrap().to_owned());
            }
            cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
        }
        let expected: Vec<String> = (0..5).map(|n| record(n).key).collect();
        assert_eq!(seen, expected, "{label}: each once, in order");
        api.state.ledger.charges().record(&record(9)).await.unwrap();
        // Shown once every older transaction on the server ended: polled.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut after = Vec::new();
        while after.is_empty() && std::time::Instant::now() < deadline {
            let next = api
                .call(
                    Method::GET,
                    &format!("/v1/admin/billing-events?since={cursor}"),
                    &api.admin,
                    None,
                )
                .await;
            assert_eq!(next.status, StatusCode::OK, "{label}: {}", next.body);
            after = next.body["items"].as_array().unwrap().clone();
            if after.is_empty() {
                assert_eq!(next.body["next_cursor"], cursor.as_str(), "{label}: stays");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let ids: Vec<&str> = after.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [record(9).key.as_str()], "{label}: only the new one");

        let customer = api
            .call(Method::GET, "/v1/admin/billing-events", &token, None)
            .await;
        assert_error(&customer, StatusCode::FORBIDDEN, "forbidden", None);
        let bad = api
            .call(
                Method::GET,
                "/v1/admin/billing-events?since=-4",
                &api.admin,
                None,
            )
            .await;
        assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request", Some("since"));
        for bad in ["1.", ".1", "1.2.3", "x.1", "99999999999999999999"] {
            let reply = api
                .call(
                    Method::GET,
                    &format!("/v1/admin/billing-events?since={bad}"),
                    &api.admin,
                    None,
                )
                .await;
            assert_error(
                &reply,
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some("since"),
            );
        }
    }
}

#[tokio::test]
async fn r10_operators_read_the_whole_trail_and_customers_their_history_without_evidence() {
    let api = api().await;
    let (acme, token) = api.customer("ACME").await;
    let (_, other) = api.customer("Globex").await;
    let server = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    let server = server.body["id"].as_str().unwrap().to_owned();
    let reply = report(
        &api,
        &api.admin,
        &acme,
        json!({"id": "abuse-9", "type": "abuse_report", "server": server, "evidence": "Received: from mx.victim.example CONFIDENTIAL"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);

    let trail = api
        .call(
            Method::GET,
            &format!("/v1/admin/accounts/{acme}/audit"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.body);
    assert!(
        trail.body.to_string().contains("CONFIDENTIAL"),
        "operators see the evidence"
    );
    let actions: Vec<&str> = trail.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"server.order") && actions.contains(&"account.fact"),
        "{actions:?}"
    );

    let own = api
        .call(Method::GET, "/v1/account/events", &token, None)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert!(
        !own.body.to_string().contains("CONFIDENTIAL"),
        "{}",
        own.body
    );
    assert!(
        own.body.to_string().contains("abuse_report"),
        "the customer sees what was reported"
    );
    let theirs = api
        .call(Method::GET, "/v1/account/events", &other, None)
        .await;
    assert!(
        theirs.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| !i["subject"].as_str().unwrap().contains(&acme))
    );
    let customer_reads_audit = api
        .call(
            Method::GET,
            &format!("/v1/admin/accounts/{acme}/audit"),
            &token,
            None,
        )
        .await;
    assert_error(
        &customer_reads_audit,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
}

/// Operators see the outbox by state and queue a failed notification
/// again; a bad state or id is refused naming it; a customer or the
/// billing system sees none of it.
#[tokio::test]
async fn failed_notifications_are_listed_for_operators_and_queued_again() {
    use stratus_store::ledger::{Channel, NewNotification};
    let api = api().await;
    let (acme, customer) = api.customer("ACME").await;
    let outbox = api.state.ledger.notifications();
    for key in ["n-1", "n-2", "n-3"] {
        outbox
            .enqueue(&NewNotification {
                key: format!("{acme}/{key}/email"),
                account: acme.clone(),
                channel: Channel::Email,
                recipient: "ops@acme.example".into(),
                message: json!({"subject": format!("subject {key}")}),
                created_at: 1,
            })
            .await
            .unwrap();
    }
    let claimed = outbox.claim_due(i64::MAX - 1, i64::MAX, 3).await.unwrap();
    outbox.delivered(claimed[0].id, 2).await.unwrap();
    outbox
        .attempt_failed(claimed[1].id, "SMTP: 550 mailbox unavailable", None)
        .await
        .unwrap();

    let failed = api
        .call(
            Method::GET,
            "/v1/admin/notifications?state=failed",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    let items = failed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", failed.body);
    assert_eq!(items[0]["subject"], "subject n-2");
    assert_eq!(items[0]["last_error"], "SMTP: 550 mailbox unavailable");
    assert_eq!(items[0]["channel"], "email");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let all = api
        .call(
            Method::GET,
            "/v1/admin/notifications?limit=2",
            &api.admin,
            None,
        )
        .await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let rest = api
        .call(
            Method::GET,
            &format!(
                "/v1/admin/notifications?since={}",
                all.body["next_cursor"].as_str().unwrap()
            ),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(rest.body["items"][0]["state"], "pending", "{}", rest.body);

    for (path, field) in [
        ("/v1/admin/notifications?state=lost", "state"),
        ("/v1/admin/notifications?limit=0", "limit"),
        ("/v1/admin/notifications?since=-4", "since"),
    ] {
        let refused = api.call(Method::GET, path, &api.admin, None).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(refused.body["error"]["details"]["field"], field, "{path}");
    }
    let (_, billing) = api
        .state
        .ledger
        .tokens()
        .issue(1, None, "billing-system", TokenScope::Billing)
        .await
        .unwrap();
    for token in [&customer, &billing] {
        let denied = api
            .call(Method::GET, "/v1/admin/notifications", token, None)
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let denied = api
            .call(
                Method::POST,
                &format!("/v1/admin/notifications/{id}/retry"),
                token,
                Some(json!({})),
            )
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
    }

    let delivered = claimed[0].id;
    let not_failed = api
        .call(
            Method::POST,
            &format!("/v1/admin/notifications/{delivered}/retry"),
            &api.admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        not_failed.status,
        StatusCode::CONFLICT,
        "{}",
        not_failed.body
    );
    for missing in ["999", "abc"] {
        let reply = api
            .call(
                Method::POST,
                &format!("/v1/admin/notifications/{missing}/retry"),
                &api.admin,
                Some(json!({})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}");
    }
    let retried = api
        .call(
            Method::POST,
            &format!("/v1/admin/notifications/{id}/retry"),
            &api.admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(
        (
            retried.body["state"].as_str(),
            retried.body["attempts"].as_u64()
        ),
        (Some("pending"), Some(0))
    );
    assert!(retried.body["next_attempt_at"].is_string());
    let failed = api
        .call(
            Method::GET,
            "/v1/admin/notifications?state=failed",
            &api.admin,
            None,
        )
        .await;
    assert!(failed.body["items"].as_array().unwrap().is_empty());
}

/// R29 (defect 8 of issue 25): only an operator, or a customer for its own
/// account's tokens, revokes a token; a billing token revokes none, an
/// operator's least of all. A customer's history names operators and the
/// billing system by their role, never by a token id of the provider's.
#[tokio::test]
async fn r29_a_billing_token_revokes_nothing_and_customers_never_see_provider_token_ids() {
    let api = api().await;
    let (acme, customer) = api.customer("ACME").await;
    let issue = |name: &'static str, role: &'static str| {
        api.call(
            Method::POST,
            "/v1/admin/tokens",
            &api.admin,
            Some(json!({"name": name, "role": role})),
        )
    };
    let billing = issue("billing-system", "billing").await;
    let (billing_id, billing) = (
        billing.body["id"].as_str().unwrap().to_owned(),
        billing.body["token"].as_str().unwrap().to_owned(),
    );
    let operator = issue("alice", "operator").await;
    let (operator_id, operator) = (
        operator.body["id"].as_str().unwrap().to_owned(),
        operator.body["token"].as_str().unwrap().to_owned(),
    );
    let own = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{acme}/tokens"),
            &api.admin,
            None,
        )
        .await;
    let customer_id = own.body["items"][0]["id"].as_str().unwrap().to_owned();
    for target in [&operator_id, &customer_id, &billing_id] {
        let refused = api
            .call(
                Method::DELETE,
                &format!("/v1/tokens/{target}"),
                &billing,
                None,
            )
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "forbidden", None);
    }
    let theirs = api
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{operator_id}"),
            &customer,
            None,
        )
        .await;
    assert_error(&theirs, StatusCode::NOT_FOUND, "not_found", None);
    for token in [&operator, &billing, &customer] {
        let still = api.call(Method::GET, "/v1/plans", token, None).await;
        assert_eq!(still.status, StatusCode::OK, "nothing was revoked");
    }

    // Facts reported by the billing system and an operator, a server
    // ordered by the customer: the customer's history says who by role.
    for (id, token, body) in [
        (
            "inv-1",
            &billing,
            json!({"type": "invoice_overdue", "invoice_id": "inv-1", "due_at": "2026-01-01T00:00:00Z"}),
        ),
        ("kyc-1", &operator, json!({"type": "kyc_incomplete"})),
    ] {
        let mut body = body;
        body["id"] = json!(id);
        let reply = report(&api, token, &acme, body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let ordered = api
        .call(Method::POST, "/v1/servers", &customer, Some(order("web1")))
        .await;
    assert_eq!(ordered.status, StatusCode::ACCEPTED, "{}", ordered.body);
    let history = api
        .call(Method::GET, "/v1/account/events", &customer, None)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let text = history.body.to_string();
    for provider in [&billing_id, &operator_id] {
        assert!(
            !text.contains(provider.as_str()),
            "{provider} shown: {text}"
        );
    }
    let actors: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["actor"].as_str().unwrap())
        .collect();
    assert!(actors.contains(&"billing"), "{actors:?}");
    assert!(actors.contains(&"operator"), "{actors:?}");
    assert!(
        actors.contains(&format!("token:{customer_id}").as_str()),
        "the account's own token by its id: {actors:?}"
    );
    assert!(
        actors
            .iter()
            .all(|a| ["billing", "operator", "controller"].contains(a)
                || *a == format!("token:{customer_id}")),
        "{actors:?}"
    );
}

/// Operators make billing tokens through the API as through the CLI; a
/// bad role or name is refused naming it and issues nothing; customers
/// and billing tokens cannot make any.
#[tokio::test]
async fn operators_issue_billing_tokens_through_the_admin_api() {
    let api = api().await;
    let (acme, customer) = api.customer("ACME").await;
    let made = api
        .call(
            Method::POST,
            "/v1/admin/tokens",
            &api.admin,
            Some(json!({"name": "billing-system", "role": "billing"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["role"], "billing");
    assert!(made.body["account_id"].is_null());
    let billing = made.body["token"].as_str().unwrap().to_owned();
    let paid = report(
        &api,
        &billing,
        &acme,
        json!({"id": "p1", "type": "invoice_paid", "invoice_id": "inv-1"}),
    )
    .await;
    assert_eq!(paid.status, StatusCode::ACCEPTED, "{}", paid.body);
    let refused = api.call(Method::GET, "/v1/servers", &billing, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    for (body, field) in [
        (json!({"name": "x", "role": "root"}), Some("role")),
        (json!({"name": " ", "role": "billing"}), Some("name")),
        (
            json!({"name": "x", "role": "billing", "account": "acc-1"}),
            None,
        ),
        (json!({"name": "x"}), None),
    ] {
        let reply = api
            .call(
                Method::POST,
                "/v1/admin/tokens",
                &api.admin,
                Some(body.clone()),
            )
            .await;
        assert!(reply.status.is_client_error(), "{body}: {}", reply.status);
        if let Some(field) = field {
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
        }
    }
    for token in [&customer, &billing] {
        let denied = api
            .call(
                Method::POST,
                "/v1/admin/tokens",
                token,
                Some(json!({"name": "mine", "role": "operator"})),
            )
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
    }
    let operator = api
        .call(
            Method::POST,
            "/v1/admin/tokens",
            &api.admin,
            Some(json!({"name": "alice", "role": "operator"})),
        )
        .await;
    let alice = operator.body["token"].as_str().unwrap().to_owned();
    let accounts = api.call(Method::GET, "/v1/accounts", &alice, None).await;
    assert_eq!(
        accounts.status,
        StatusCode::OK,
        "an operator token does everything"
    );
    let trail = api
        .state
        .ledger
        .audit()
        .trail(&AuditSubject::Operators)
        .await
        .unwrap();
    let issued: Vec<_> = trail
        .iter()
        .filter(|e| e.action == AuditAction::TokenIssue)
        .collect();
    assert_eq!(
        issued.len(),
        2,
        "the two made through the API, audited; nothing for the refused ones"
    );
}

fn storage_order(name: &str, size_gib: u64) -> Value {
    json!({"name": name, "size_gib": size_gib})
}

impl Api {
    async fn storage_count(&self) -> usize {
        self.state.storage.list(None).await.unwrap().items.len()
    }
}

#[tokio::test]
async fn r24_storage_is_ordered_and_shown_to_its_account_only() {
    for scratch in testing::both().await {
        let api = api_on(scratch).await;
        let (account, token) = api.customer("ACME").await;
        let (_, other) = api.customer("Other").await;
        api.register_zone("a").await;
        let ordered = api
            .call(
                Method::POST,
                "/v1/storage",
                &token,
                Some(json!({"name": "backup", "size_gib": 64, "zone": "a"})),
            )
            .await;
        assert_eq!(ordered.status, StatusCode::ACCEPTED, "{}", ordered.body);
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("st-"), "{id}");
        assert_eq!(
            ordered.headers["location"].to_str().unwrap(),
            format!("/v1/storage/{id}")
        );
        assert_eq!(ordered.body["status"], "pending");
        assert_eq!(ordered.body["encryption"], "client");
        assert_eq!(ordered.body["size_gib"], 64);
        assert_eq!(ordered.body["account_id"], account.as_str());

        // What the controller records: customers see zones and checksums,
        // operators also where each copy lives on the hosts.
        let status = json!({
            "phase": "Ready",
            "replicas": [
                {"hypervisor": "hv-a", "zone": "a", "volume": "stratus-x-store.raw", "pool": "pool-a",
                 "path": "/pools/a/stratus-x-store.raw", "created": true},
                {"hypervisor": "hv-b", "zone": "b", "volume": "stratus-x-store.raw", "pool": "pool-b",
                 "path": "/pools/b/stratus-x-store.raw", "created": true}
            ],
            "zones": "a,b",
            "replicasInSync": true
        });
        api.state
            .storage
            .patch_status(Some(&account), &id, &status)
            .await
            .unwrap();
        let mine = api
            .call(Method::GET, &format!("/v1/storage/{id}"), &token, None)
            .await;
        assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
        assert_eq!(mine.body["status"], "ready");
        assert_eq!(mine.body["replicas_in_sync"], true);
        assert_eq!(mine.body["replicas"][1]["zone"], "b");
        for hidden in ["pool", "volume", "path"] {
            assert!(
                mine.body["replicas"][0].get(hidden).is_none(),
                "a customer is not shown {hidden}: {}",
                mine.body
            );
        }
        let operator = api
            .call(Method::GET, &format!("/v1/storage/{id}"), &api.admin, None)
            .await;
        assert_eq!(
            operator.body["replicas"][1]["path"],
            "/pools/b/stratus-x-store.raw"
        );
        assert_eq!(operator.body["replicas"][0]["pool"], "pool-a");

        // Another account can neither see, list nor delete it.
        let theirs = api
            .call(Method::GET, &format!("/v1/storage/{id}"), &other, None)
            .await;
        assert_error(&theirs, StatusCode::NOT_FOUND, "not_found", None);
        let listed = api.call(Method::GET, "/v1/storage", &other, None).await;
        assert_eq!(listed.body["items"], json!([]), "{}", listed.body);
        let deleted = api
            .call(Method::DELETE, &format!("/v1/storage/{id}"), &other, None)
            .await;
        assert_error(&deleted, StatusCode::NOT_FOUND, "not_found", None);
        let listed = api.call(Method::GET, "/v1/storage", &token, None).await;
        assert_eq!(
            listed.body["items"][0]["id"],
            id.as_str(),
            "{}",
            listed.body
        );
        let malformed = api
            .call(Method::GET, "/v1/storage/vs-0000000000000001", &token, None)
            .await;
        assert_error(&malformed, StatusCode::NOT_FOUND, "not_found", Some("id"));

        let audit = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Storage {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(audit[0].action, AuditAction::StorageOrder);
        assert_eq!(audit[0].detail["size_gib"], 64);

        // Deleting it: terminating until the controller has wiped both copies.
        let deleting = api
            .call(Method::DELETE, &format!("/v1/storage/{id}"), &token, None)
            .await;
        assert_eq!(deleting.status, StatusCode::ACCEPTED, "{}", deleting.body);
        assert_eq!(deleting.body["status"], "terminating");
    }
}

#[tokio::test]
async fn bad_storage_orders_are_refused_naming_the_field_and_create_nothing() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    api.register_zone("a").await;
    let cases = [
        (
            json!({"name": "Backup_1", "size_gib": 10}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            json!({"name": "backup", "size_gib": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "size_gib",
        ),
        (
            json!({"name": "backup", "size_gib": 65537}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "size_gib",
        ),
        (
            json!({"name": "backup", "size_gib": -1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "size_gib",
        ),
        (
            json!({"name": "backup", "size_gib": 10, "zone": "mars"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "zone",
        ),
        (
            json!({"name": "backup", "size_gib": 10, "encryption": "rot13"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "encryption",
        ),
        (
            json!({"name": "backup", "size_gib": 10, "replicas": 1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "replicas",
        ),
        (
            json!({"name": "backup"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "size_gib",
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = api
            .call(Method::POST, "/v1/storage", &token, Some(body.clone()))
            .await;
        assert_error(&reply, status, code, Some(field));
    }
    let admin_order = api
        .call(
            Method::POST,
            "/v1/storage",
            &api.admin,
            Some(storage_order("backup", 1)),
        )
        .await;
    assert_error(&admin_order, StatusCode::FORBIDDEN, "forbidden", None);
    assert_eq!(
        api.storage_count().await,
        0,
        "no refused order created anything"
    );
}

#[tokio::test]
async fn r27_storage_beyond_the_quota_is_refused_and_the_quota_is_its_own() {
    let config = Config {
        quotas: stratus_core::quota::Quota {
            storage_gib: Some(100),
            disk_gib: Some(1),
            ..Default::default()
        },
        ..Config::default()
    };
    let api = api_configured(testing::sqlite().await, config).await;
    let (account, token) = api.customer("ACME").await;
    let first = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("one", 60)),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let refused = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("two", 41)),
        )
        .await;
    assert_error(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
        None,
    );
    assert_eq!(
        refused.body["error"]["details"],
        json!({"quota": "storageGib", "limit": 100, "used": 60, "requested": 41})
    );
    assert_eq!(api.storage_count().await, 1);
    let fits = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("two", 40)),
        )
        .await;
    assert_eq!(fits.status, StatusCode::ACCEPTED, "{}", fits.body);
    let shown = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{account}"),
            &token,
            None,
        )
        .await;
    assert_eq!(shown.body["usage"]["storageGib"], 100, "{}", shown.body);
    assert_eq!(shown.body["usage"]["diskGib"], 0, "{}", shown.body);
}

#[tokio::test]
async fn storage_idempotency_keys_return_the_same_subscription_and_never_serve_two_kinds() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let keyed = |body: Value, path: &'static str| {
        let token = token.clone();
        let api = &api;
        async move {
            api.raw(
                Method::POST,
                path,
                Some(&token),
                &[("idempotency-key", "k-1")],
                Some(body.to_string()),
            )
            .await
        }
    };
    let first = keyed(storage_order("backup", 10), "/v1/storage").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = keyed(storage_order("backup", 10), "/v1/storage").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(api.storage_count().await, 1);
    let other_body = keyed(storage_order("backup", 11), "/v1/storage").await;
    assert_error(
        &other_body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("Idempotency-Key"),
    );
    let server = keyed(order("web1"), "/v1/servers").await;
    assert_error(
        &server,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("Idempotency-Key"),
    );
    assert_eq!(api.server_count().await, 0);
}

/// R8 (defect 9 of issue 25): a hold for an authority's request or an
/// incomplete identity file keeps the account's data as evidence as abuse
/// does: its customer deletes neither servers nor storage (409 naming the
/// hold), nothing changes; once the hold is lifted, both can be deleted;
/// non-payment alone holds nothing as evidence.
#[tokio::test]
async fn r8_every_hold_keeps_servers_and_storage_as_evidence() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let server = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    let server = server.body["id"].as_str().unwrap().to_owned();
    let storage = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("files", 5)),
        )
        .await;
    let storage = storage.body["id"].as_str().unwrap().to_owned();
    // Reported, not yet carried out by any controller: already held.
    let reply = report(
        &api,
        &api.admin,
        &account,
        json!({"id": "court-1", "type": "legal_hold"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    for path in [
        format!("/v1/servers/{server}"),
        format!("/v1/storage/{storage}"),
    ] {
        let refused = api.call(Method::DELETE, &path, &token, None).await;
        assert_eq!(
            refused.status,
            StatusCode::CONFLICT,
            "{path}: {}",
            refused.body
        );
        assert_eq!(
            refused.body["error"]["details"]["reason"], "legal",
            "{path}"
        );
    }
    let reply = report(
        &api,
        &api.admin,
        &account,
        json!({"id": "court-2", "type": "legal_release"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let hold = |reason: &str| json!({"state": "Suspended", "suspensions": [{"reason": reason, "since": "2026-11-01T00:00:00Z"}]});
    for reason in ["legal", "kyc"] {
        api.state
            .accounts
            .patch_status(None, &account, &hold(reason))
            .await
            .unwrap();
        for (path, code) in [
            (format!("/v1/servers/{server}"), "server_suspended"),
            (format!("/v1/storage/{storage}"), "account_suspended"),
        ] {
            let refused = api.call(Method::DELETE, &path, &token, None).await;
            assert_error(&refused, StatusCode::CONFLICT, code, None);
            assert_eq!(refused.body["error"]["details"]["reason"], reason, "{path}");
        }
        let server_kept = api
            .state
            .servers
            .get(Some(&account), &server)
            .await
            .unwrap()
            .unwrap();
        let storage_kept = api
            .state
            .storage
            .get(Some(&account), &storage)
            .await
            .unwrap()
            .unwrap();
        assert!(
            server_kept.metadata.deletion_timestamp.is_none(),
            "{reason}"
        );
        assert!(
            storage_kept.metadata.deletion_timestamp.is_none(),
            "{reason}"
        );
    }
    api.state
        .accounts
        .patch_status(None, &account, &hold("non_payment"))
        .await
        .unwrap();
    for path in [
        format!("/v1/servers/{server}"),
        format!("/v1/storage/{storage}"),
    ] {
        let deleted = api.call(Method::DELETE, &path, &token, None).await;
        assert_eq!(
            deleted.status,
            StatusCode::ACCEPTED,
            "{path}: {}",
            deleted.body
        );
    }
}

#[tokio::test]
async fn r5_storage_of_an_account_held_for_abuse_cannot_be_deleted_by_its_customer() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let ordered = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("evidence", 5)),
        )
        .await;
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    api.state
        .accounts
        .patch_status(
            None,
            &account,
            &json!({"state": "Suspended", "suspensions": [{"reason": "abuse", "since": "2026-11-01T00:00:00Z"}]}),
        )
        .await
        .unwrap();
    let refused = api
        .call(Method::DELETE, &format!("/v1/storage/{id}"), &token, None)
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "account_suspended", None);
    assert_eq!(refused.body["error"]["details"]["reason"], "abuse");
    // Nor overwritten or restored: read-only while suspended.
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/v1/storage/{id}/content"),
            "x".to_owned(),
        ),
        (
            Method::POST,
            format!("/v1/storage/{id}/actions"),
            json!({"type": "restore"}).to_string(),
        ),
    ] {
        let reply = api.raw(method, &path, Some(&token), &[], Some(body)).await;
        assert_error(&reply, StatusCode::CONFLICT, "account_suspended", None);
    }
    let kept = api
        .state
        .storage
        .get(Some(&account), &id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "nothing changed"
    );
    // An operator may.
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/v1/storage/{id}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{}", deleted.body);
}

/// The agents' side of content, in memory: what the API hands on and what
/// it answers, so the API's own checks can be seen.
#[derive(Default)]
struct MemoryContents {
    stored: std::sync::Mutex<std::collections::HashMap<(String, u64), Vec<u8>>>,
    /// LUKS versions, with the SHA-256 of the key they were formatted with.
    luks: std::sync::Mutex<std::collections::HashMap<(String, u64), Vec<u8>>>,
    /// Versions whose key was loaded, once per unlock.
    unlocked: std::sync::Mutex<Vec<(String, u64)>>,
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[async_trait::async_trait]
impl stratus_api::StorageContents for MemoryContents {
    async fn write(
        &self,
        _hypervisor: &str,
        name: &str,
        version: u64,
        size_gib: u64,
        mut content: stratus_api::ContentStream,
    ) -> Result<stratus_core::agent_api::StoredContent, stratus_api::ContentError> {
        use futures::StreamExt;
        let mut bytes = Vec::new();
        while let Some(chunk) = content.next().await {
            bytes.extend_from_slice(&chunk.map_err(stratus_api::ContentError::Unavailable)?);
            if bytes.len() as u64 > size_gib << 30 {
                return Err(stratus_api::ContentError::TooLarge);
            }
        }
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let length = bytes.len() as u64;
        self.stored
            .lock()
            .unwrap()
            .insert((name.to_owned(), version), bytes);
        Ok(stratus_core::agent_api::StoredContent {
            version,
            bytes: length,
            sha256,
        })
    }

    async fn read(
        &self,
        _hypervisor: &str,
        name: &str,
        version: u64,
        _bytes: u64,
    ) -> Result<stratus_api::ContentStream, stratus_api::ContentError> {
        let bytes = self
            .stored
            .lock()
            .unwrap()
            .get(&(name.to_owned(), version))
            .cloned()
            .ok_or_else(|| stratus_api::ContentError::Conflict("no such version".into()))?;
        Ok(Box::pin(futures::stream::iter([Ok(bytes)])))
    }

    async fn format(
        &self,
        _hypervisor: &str,
        name: &str,
        version: u64,
        _size_gib: u64,
        key: &stratus_core::agent_api::VolumeKey,
    ) -> Result<stratus_core::agent_api::StoredContent, stratus_api::ContentError> {
        let mut header = b"LUKS\xba\xbe".to_vec();
        header.resize(512, 0);
        let stored = stratus_core::agent_api::StoredContent {
            version,
            bytes: header.len() as u64,
            sha256: sha256(&header).iter().map(|b| format!("{b:02x}")).collect(),
        };
        self.stored
            .lock()
            .unwrap()
            .insert((name.to_owned(), version), header);
        self.luks
            .lock()
            .unwrap()
            .insert((name.to_owned(), version), sha256(key.expose().as_bytes()));
        Ok(stored)
    }

    async fn lock(
        &self,
        _hypervisor: &str,
        name: &str,
        version: u64,
    ) -> Result<(), stratus_api::ContentError> {
        self.unlocked
            .lock()
            .unwrap()
            .retain(|unlocked| *unlocked != (name.to_owned(), version));
        Ok(())
    }

    async fn unlock(
        &self,
        _hypervisor: &str,
        name: &str,
        version: u64,
        key: &stratus_core::agent_api::VolumeKey,
    ) -> Result<(), stratus_api::ContentError> {
        let wanted = self
            .luks
            .lock()
            .unwrap()
            .get(&(name.to_owned(), version))
            .cloned()
            .ok_or_else(|| stratus_api::ContentError::Conflict("not a LUKS version".into()))?;
        if wanted != sha256(key.expose().as_bytes()) {
            return Err(stratus_api::ContentError::WrongKey);
        }
        self.unlocked
            .lock()
            .unwrap()
            .push((name.to_owned(), version));
        Ok(())
    }
}

impl Api {
    /// A storage subscription of `token`'s account whose copies exist.
    async fn ready_storage(&self, account: &str, token: &str, size_gib: u64) -> String {
        let ordered = self
            .call(
                Method::POST,
                "/v1/storage",
                token,
                Some(storage_order("backup", size_gib)),
            )
            .await;
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        let status = json!({"phase": "Ready", "replicasInSync": true, "replicas": [
            {"hypervisor": "hv-a", "zone": "a", "volume": "v", "created": true},
            {"hypervisor": "hv-b", "zone": "b", "volume": "v", "created": true}]});
        self.state
            .storage
            .patch_status(Some(account), &id, &status)
            .await
            .unwrap();
        id
    }
}

#[tokio::test]
async fn r27_content_is_stored_whole_or_refused_without_touching_the_previous_one() {
    let scratch = testing::sqlite().await;
    let mut api = api_on(scratch).await;
    api.state = api
        .state
        .clone()
        .with_contents(Arc::new(MemoryContents::default()));
    api.router = app(api.state.clone());
    let (account, token) = api.customer("ACME").await;
    let id = api.ready_storage(&account, &token, 1).await;
    let path = format!("/v1/storage/{id}/content");

    let nothing = api.raw(Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(nothing.status, StatusCode::NO_CONTENT);
    let written = api
        .raw(
            Method::PUT,
            &path,
            Some(&token),
            &[],
            Some("ciphertext".into()),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.body);
    assert_eq!(written.body["bytes"], 10);
    let sha = written.body["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha.len(), 64);
    let back = api.raw(Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(back.body, "ciphertext");
    assert_eq!(back.headers["x-content-sha256"].to_str().unwrap(), sha);
    let audit = api
        .state
        .ledger
        .audit()
        .trail(&AuditSubject::Storage {
            account: account.clone(),
            name: id.clone(),
        })
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == AuditAction::StorageWrite && e.detail["sha256"] == sha.as_str())
    );

    // A declared length beyond the size: refused before anything is sent on.
    let declared = api
        .raw(
            Method::PUT,
            &path,
            Some(&token),
            &[("content-length", "1073741825")],
            Some(String::new()),
        )
        .await;
    assert_error(
        &declared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "content_too_large",
        None,
    );
    assert_eq!(declared.body["error"]["details"]["limit_bytes"], 1u64 << 30);
    let still = api.raw(Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(
        still.body, "ciphertext",
        "the previous content is unchanged"
    );
    let subscription = api
        .state
        .storage
        .get(Some(&account), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(subscription.spec.content.unwrap().sha256, sha);

    // Nobody else reads or writes it, operators neither.
    let (_, other) = api.customer("Other").await;
    for method in [Method::GET, Method::PUT] {
        let reply = api
            .raw(method, &path, Some(&other), &[], Some("x".into()))
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found", None);
    }
    for method in [Method::GET, Method::PUT] {
        let operator = api
            .raw(method, &path, Some(&api.admin), &[], Some("x".into()))
            .await;
        assert_error(&operator, StatusCode::FORBIDDEN, "forbidden", None);
    }
}

#[tokio::test]
async fn content_needs_created_copies_and_an_api_that_reaches_the_agents() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let ordered = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(storage_order("backup", 1)),
        )
        .await;
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/storage/{id}/content");
    let early = api
        .raw(Method::PUT, &path, Some(&token), &[], Some("x".into()))
        .await;
    assert_error(&early, StatusCode::CONFLICT, "conflict", None);
    let ready = api.ready_storage(&account, &token, 1).await;
    let unreachable = api
        .raw(
            Method::PUT,
            &format!("/v1/storage/{ready}/content"),
            Some(&token),
            &[],
            Some("x".into()),
        )
        .await;
    assert_error(
        &unreachable,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        None,
    );
}

#[tokio::test]
async fn r26_restores_name_a_kept_version_or_are_refused_naming_it() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let id = api.ready_storage(&account, &token, 1).await;
    let path = format!("/v1/storage/{id}/actions");
    let nothing = api
        .call(
            Method::POST,
            &path,
            &token,
            Some(json!({"type": "restore"})),
        )
        .await;
    assert_error(&nothing, StatusCode::CONFLICT, "conflict", None);
    let sha = |c: char| c.to_string().repeat(64);
    let status = json!({"phase": "Ready", "replicasInSync": true, "replicas": [
        {"hypervisor": "hv-a", "zone": "a", "volume": "v", "created": true, "version": 300,
         "bytes": 3, "checksum": sha('c'), "verifiedAt": "2026-12-05T12:00:00Z"},
        {"hypervisor": "hv-b", "zone": "b", "volume": "v", "created": true, "version": 300,
         "bytes": 3, "checksum": sha('c'), "verifiedAt": "2026-12-05T12:00:00Z",
         "kept": [{"version": 100, "bytes": 1, "sha256": sha('a'), "verifiedAt": "2026-12-05T12:00:00Z"},
                  {"version": 200, "bytes": 2, "sha256": sha('b'), "verifiedAt": "2026-12-05T12:00:00Z"}]}]});
    api.state
        .storage
        .patch_status(Some(&account), &id, &status)
        .await
        .unwrap();
    let shown = api
        .call(Method::GET, &format!("/v1/storage/{id}"), &token, None)
        .await;
    let listed: Vec<u64> = shown.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [300, 200, 100], "{}", shown.body);
    for (body, code, field) in [
        (
            json!({"type": "restore", "version": 150}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "version",
        ),
        (
            json!({"type": "rewind"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "type",
        ),
        (
            json!({"type": "restore", "at": 1}),
            StatusCode::BAD_REQUEST,
            "at",
        ),
    ] {
        let reply = api.call(Method::POST, &path, &token, Some(body)).await;
        assert_eq!(reply.status, code, "{}", reply.body);
        assert_eq!(
            reply.body["error"]["details"]["field"], field,
            "{}",
            reply.body
        );
    }
    let subscription = api
        .state
        .storage
        .get(Some(&account), &id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        subscription.spec.restore_from.is_none(),
        "refusals change nothing"
    );
    let restored = api
        .call(
            Method::POST,
            &path,
            &token,
            Some(json!({"type": "restore", "version": 100})),
        )
        .await;
    assert_eq!(restored.status, StatusCode::ACCEPTED, "{}", restored.body);
    assert_eq!(restored.body["content"]["sha256"], sha('a'));
    let subscription = api
        .state
        .storage
        .get(Some(&account), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(subscription.spec.restore_from, Some(100));
    assert!(subscription.spec.content.unwrap().version > 300);
}

#[tokio::test]
async fn storage_is_attached_only_to_a_server_of_its_account_on_the_hypervisor_holding_it() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token) = api.customer("ACME").await;
        let (other_account, other) = api.customer("Other").await;
        let id = api.ready_storage(&account, &token, 1).await;
        let server_on = |account: String, token: String, hypervisor: &'static str| {
            let api = &api;
            async move {
                let ordered = api
                    .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
                    .await;
                let server = ordered.body["id"].as_str().unwrap().to_owned();
                api.state
                    .servers
                    .patch_status(
                        Some(&account),
                        &server,
                        &json!({ "hypervisor": hypervisor }),
                    )
                    .await
                    .unwrap();
                server
            }
        };
        let near = server_on(account.clone(), token.clone(), "hv-a").await;
        let far = server_on(account.clone(), token.clone(), "hv-b").await;
        let foreign = server_on(other_account.clone(), other.clone(), "hv-a").await;
        let path = format!("/v1/storage/{id}/actions");
        for (body, status, field) in [
            (json!({"type": "attach"}), StatusCode::BAD_REQUEST, "server"),
            (
                json!({"type": "attach", "server": "web1"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "server",
            ),
            (
                json!({"type": "attach", "server": foreign}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "server",
            ),
            (
                json!({"type": "attach", "server": far}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "server",
            ),
            (
                json!({"type": "attach", "server": near, "version": 1}),
                StatusCode::BAD_REQUEST,
                "version",
            ),
            (
                json!({"type": "detach", "server": near}),
                StatusCode::BAD_REQUEST,
                "server",
            ),
        ] {
            let reply = api
                .call(Method::POST, &path, &token, Some(body.clone()))
                .await;
            assert_eq!(reply.status, status, "{label} {body}: {}", reply.body);
            assert_eq!(
                reply.body["error"]["details"]["field"], field,
                "{label} {body}"
            );
        }
        // Another account cannot even see it.
        let reply = api
            .call(
                Method::POST,
                &path,
                &other,
                Some(json!({"type": "attach", "server": foreign})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{label}");
        let untouched = api
            .state
            .storage
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            untouched.spec.attached_to, None,
            "{label}: refusals change nothing"
        );
        assert_eq!(untouched.spec.written_by_guest, None);

        let attach = json!({"type": "attach", "server": near});
        let attached = api
            .call(Method::POST, &path, &token, Some(attach.clone()))
            .await;
        assert_eq!(
            attached.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            attached.body
        );
        assert_eq!(attached.body["attached_to"], near.as_str());
        assert_eq!(
            attached.body["attached"], false,
            "not a disk until the agent says"
        );
        let again = api.call(Method::POST, &path, &token, Some(attach)).await;
        assert_eq!(
            again.status,
            StatusCode::ACCEPTED,
            "{label}: attaching again is harmless"
        );

        // Its content is the server's now.
        let content = format!("/v1/storage/{id}/content");
        for (method, path, body) in [
            (Method::PUT, content.as_str(), None),
            (
                Method::POST,
                path.as_str(),
                Some(json!({"type": "restore"})),
            ),
            (
                Method::POST,
                path.as_str(),
                Some(json!({"type": "attach", "server": far})),
            ),
            (Method::DELETE, &format!("/v1/storage/{id}"), None),
        ] {
            let reply = api.call(method.clone(), path, &token, body).await;
            assert_error(&reply, StatusCode::CONFLICT, "storage_attached", None);
            assert_eq!(
                reply.body["error"]["details"]["server"],
                near.as_str(),
                "{label} {method} {path}"
            );
        }

        let detached = api
            .call(Method::POST, &path, &token, Some(json!({"type": "detach"})))
            .await;
        assert_eq!(
            detached.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            detached.body
        );
        assert_eq!(detached.body["attached_to"], Value::Null);
        // Until what the guest left is settled, the content is not written.
        let reply = api.call(Method::PUT, &content, &token, None).await;
        assert_error(&reply, StatusCode::CONFLICT, "storage_attached", None);

        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Storage {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        let actions: Vec<&str> = trail
            .iter()
            .map(|e| e.action.as_str())
            .filter(|a| a.starts_with("storage.attach") || a.starts_with("storage.detach"))
            .collect();
        assert_eq!(actions, ["storage.attach", "storage.detach"], "{label}");
    }
}

#[tokio::test]
async fn r3_operators_terminate_one_storage_subscription_and_held_storage_is_read_only() {
    let api = api().await;
    let (account, token) = api.customer("ACME").await;
    let (other_account, other) = api.customer("Other").await;
    let id = api.ready_storage(&account, &token, 1).await;
    let theirs = api.ready_storage(&other_account, &other, 1).await;
    for (event, field) in [
        (
            json!({"id": "t1", "type": "terminate", "storage": theirs, "reason": "operator", "notice": "immediate"}),
            "storage",
        ),
        (
            json!({"id": "t2", "type": "terminate", "storage": "st-1", "reason": "operator", "notice": "immediate"}),
            "storage",
        ),
        (
            json!({"id": "t3", "type": "terminate", "storage": id, "server": "vs-0000000000000001", "reason": "operator", "notice": "immediate"}),
            "server",
        ),
    ] {
        let reply = report(&api, &api.admin, &account, event.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{event}: {}",
            reply.body
        );
        assert_eq!(reply.body["error"]["details"]["field"], field, "{event}");
    }
    assert_eq!(facts_of(&api, &account).await, 0, "refusals record nothing");
    let reply = report(
        &api,
        &api.admin,
        &account,
        json!({"id": "t4", "type": "terminate", "storage": id, "reason": "operator", "notice": "immediate"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let facts = api
        .state
        .ledger
        .facts()
        .of_account(&account, 0, 10)
        .await
        .unwrap();
    assert_eq!(facts.len(), 1);
    assert_eq!(
        facts[0].fact["server"],
        id.as_str(),
        "the standing names it"
    );

    // Held by the controller (as the deadline runner writes it): read-only.
    api.state
        .storage
        .update(Some(&account), &id, |s| {
            s.spec.termination = Some(stratus_core::resources::ServerTermination {
                cause: stratus_core::standing::TerminationCause::Operator,
                at: "2026-12-05T12:00:00Z".into(),
                wipe_at: "2026-12-12T12:00:00Z".into(),
                wipe: false,
            });
            true
        })
        .await
        .unwrap();
    for (method, path, body) in [
        (Method::PUT, format!("/v1/storage/{id}/content"), None),
        (
            Method::POST,
            format!("/v1/storage/{id}/actions"),
            Some(json!({"type": "restore"})),
        ),
    ] {
        let reply = api.call(method, &path, &token, body).await;
        assert_error(&reply, StatusCode::CONFLICT, "account_suspended", None);
        assert_eq!(reply.body["error"]["details"]["reason"], "operator");
    }
}

#[tokio::test]
async fn storage_ordered_attached_to_a_server_names_one_of_its_account() {
    let api = api().await;
    let (_, token) = api.customer("ACME").await;
    let (_, other) = api.customer("Other").await;
    let ordered = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    let mine = ordered.body["id"].as_str().unwrap().to_owned();
    let ordered = api
        .call(Method::POST, "/v1/servers", &other, Some(order("web1")))
        .await;
    let theirs = ordered.body["id"].as_str().unwrap().to_owned();
    for attach_to in ["web1", theirs.as_str()] {
        let reply = api
            .call(
                Method::POST,
                "/v1/storage",
                &token,
                Some(json!({"name": "data", "size_gib": 1, "attach_to": attach_to})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(reply.body["error"]["details"]["field"], "attach_to");
    }
    assert_eq!(api.storage_count().await, 0, "refusals create nothing");
    let reply = api
        .call(
            Method::POST,
            "/v1/storage",
            &token,
            Some(json!({"name": "data", "size_gib": 1, "attach_to": mine})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["attached_to"], mine.as_str());
}

/// The key of a `luks` subscription in the tests; it must appear nowhere
/// stratus writes.
const LUKS_KEY: &str = "correct horse battery staple 7f3a";

#[tokio::test]
async fn r25_a_luks_key_formats_and_unlocks_the_disk_and_is_never_kept() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let database_dir = scratch
            .url
            .strip_prefix("sqlite://")
            .map(|file| std::path::PathBuf::from(file).with_file_name(""));
        let mut api = api_on(scratch).await;
        let contents = Arc::new(MemoryContents::default());
        api.state = api.state.clone().with_contents(contents.clone());
        api.router = app(api.state.clone());
        let (account, token) = api.customer("ACME").await;
        let luks = |extra: Value| {
            let mut body =
                json!({"name": "disk", "size_gib": 1, "encryption": "luks", "key": LUKS_KEY});
            for (field, value) in extra.as_object().unwrap() {
                if value.is_null() {
                    body.as_object_mut().unwrap().remove(field);
                } else {
                    body[field] = value.clone();
                }
            }
            body
        };
        for (body, status, field) in [
            (luks(json!({"key": null})), StatusCode::BAD_REQUEST, "key"),
            (
                luks(json!({"encryption": null})),
                StatusCode::BAD_REQUEST,
                "key",
            ),
            (
                luks(json!({"key": "too short"})),
                StatusCode::UNPROCESSABLE_ENTITY,
                "key",
            ),
            (
                luks(json!({"key": "x".repeat(513)})),
                StatusCode::UNPROCESSABLE_ENTITY,
                "key",
            ),
            (
                luks(json!({"attach_to": "vs-00000000000000aa"})),
                StatusCode::UNPROCESSABLE_ENTITY,
                "attach_to",
            ),
            (
                luks(json!({"encryption": "sealed"})),
                StatusCode::UNPROCESSABLE_ENTITY,
                "encryption",
            ),
        ] {
            let reply = api
                .call(Method::POST, "/v1/storage", &token, Some(body.clone()))
                .await;
            assert_eq!(reply.status, status, "{label} {body}: {}", reply.body);
            assert_eq!(
                reply.body["error"]["details"]["field"], field,
                "{label} {body}"
            );
            assert!(
                !reply.body.to_string().contains(LUKS_KEY),
                "{label}: {}",
                reply.body
            );
        }
        assert_eq!(
            api.storage_count().await,
            0,
            "{label}: refused orders change nothing"
        );

        let ordered = api
            .call(Method::POST, "/v1/storage", &token, Some(luks(json!({}))))
            .await;
        assert_eq!(
            ordered.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            ordered.body
        );
        assert_eq!(ordered.body["encryption"], "luks", "{label}");
        assert!(!ordered.body.to_string().contains(LUKS_KEY), "{label}");
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        let name = stratus_core::ids::domain_name(&account, &id);
        // Formatted once both copies exist, with the order's key.
        let created = json!({"phase": "Provisioning", "replicas": [
            {"hypervisor": "hv-a", "zone": "a", "volume": "v", "created": true},
            {"hypervisor": "hv-b", "zone": "b", "volume": "v", "created": true}]});
        api.state
            .storage
            .patch_status(Some(&account), &id, &created)
            .await
            .unwrap();
        let mut content = None;
        for _ in 0..100 {
            let subscription = api
                .state
                .storage
                .get(Some(&account), &id)
                .await
                .unwrap()
                .unwrap();
            if let Some(found) = subscription.spec.content {
                content = Some(found);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let content =
            content.unwrap_or_else(|| panic!("{label}: the order's key formats the primary copy"));
        assert_eq!(content.bytes, 512, "{label}");
        assert!(
            contents
                .luks
                .lock()
                .unwrap()
                .contains_key(&(name.clone(), content.version)),
            "{label}: formatted on the primary's hypervisor"
        );

        // The content API is not a luks subscription's.
        let path = format!("/v1/storage/{id}/content");
        let put = api
            .raw(Method::PUT, &path, Some(&token), &[], Some("bytes".into()))
            .await;
        assert_eq!(put.status, StatusCode::CONFLICT, "{label}");
        let get = api.raw(Method::GET, &path, Some(&token), &[], None).await;
        assert_eq!(get.status, StatusCode::CONFLICT, "{label}");

        // Attached with its key only, to a running server.
        let in_sync = json!({"phase": "Ready", "replicasInSync": true, "replicas": [
            {"hypervisor": "hv-a", "zone": "a", "volume": "v", "created": true, "version": content.version},
            {"hypervisor": "hv-b", "zone": "b", "volume": "v", "created": true, "version": content.version}]});
        api.state
            .storage
            .patch_status(Some(&account), &id, &in_sync)
            .await
            .unwrap();
        let server = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await
            .body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        api.state
            .servers
            .patch_status(
                Some(&account),
                &server,
                &json!({ "hypervisor": "hv-a", "phase": "Stopped" }),
            )
            .await
            .unwrap();
        let actions = format!("/v1/storage/{id}/actions");
        let attach = |key: Option<&str>| {
            let mut body = json!({"type": "attach", "server": server});
            if let Some(key) = key {
                body["key"] = json!(key);
            }
            body
        };
        let wrong = "correct horse battery staple 7f3b";
        for (body, status, field) in [
            (attach(None), StatusCode::BAD_REQUEST, Some("key")),
            (attach(Some(LUKS_KEY)), StatusCode::CONFLICT, None),
            (
                json!({"type": "restore", "key": LUKS_KEY}),
                StatusCode::BAD_REQUEST,
                Some("key"),
            ),
        ] {
            let reply = api
                .call(Method::POST, &actions, &token, Some(body.clone()))
                .await;
            assert_eq!(reply.status, status, "{label} {body}: {}", reply.body);
            if let Some(field) = field {
                assert_eq!(reply.body["error"]["details"]["field"], field, "{label}");
            }
        }
        api.state
            .servers
            .patch_status(
                Some(&account),
                &server,
                &json!({ "hypervisor": "hv-a", "phase": "Running" }),
            )
            .await
            .unwrap();
        let refused = api
            .call(Method::POST, &actions, &token, Some(attach(Some(wrong))))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}: {}",
            refused.body
        );
        assert_eq!(refused.body["error"]["details"]["field"], "key", "{label}");
        let unchanged = api
            .state
            .storage
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            unchanged.spec.attached_to, None,
            "{label}: a wrong key changes nothing"
        );
        assert!(contents.unlocked.lock().unwrap().is_empty(), "{label}");

        let attached = api
            .call(Method::POST, &actions, &token, Some(attach(Some(LUKS_KEY))))
            .await;
        assert_eq!(
            attached.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            attached.body
        );
        assert_eq!(attached.body["attached_to"], server.as_str(), "{label}");
        // Given again (its server started again): loaded again.
        let again = api
            .call(Method::POST, &actions, &token, Some(attach(Some(LUKS_KEY))))
            .await;
        assert_eq!(
            again.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            again.body
        );
        assert_eq!(
            *contents.unlocked.lock().unwrap(),
            [
                (name.clone(), content.version),
                (name.clone(), content.version)
            ],
            "{label}"
        );

        // Nowhere kept: not in the audit, not in the objects, not in the
        // database's files.
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Storage {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        let actions_audited: Vec<AuditAction> = trail.iter().map(|e| e.action).collect();
        for wanted in [
            AuditAction::StorageOrder,
            AuditAction::StorageFormatted,
            AuditAction::StorageUnlocked,
            AuditAction::StorageAttach,
        ] {
            assert!(
                actions_audited.contains(&wanted),
                "{label}: {actions_audited:?}"
            );
        }
        assert!(!format!("{trail:?}").contains(LUKS_KEY), "{label}");
        let object = api
            .state
            .storage
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !serde_json::to_string(&object).unwrap().contains(LUKS_KEY),
            "{label}"
        );
        if let Some(dir) = &database_dir {
            for file in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(file.unwrap().path()).unwrap();
                assert!(
                    !bytes
                        .windows(LUKS_KEY.len())
                        .any(|w| w == LUKS_KEY.as_bytes()),
                    "{label}: the key is in the database"
                );
            }
        }
    }
}

/// Defect 12 of issue 25: in Kubernetes mode two accounts (namespaces) may
/// each have a server of the same name. An abuse report naming only the
/// server is refused as ambiguous, naming the accounts, and records
/// nothing; reported under its account, it reaches that account's server.
#[tokio::test]
async fn r5_an_abuse_report_by_a_server_name_two_accounts_share_is_refused_not_guessed() {
    let api = api().await;
    let (acme, _) = api.customer("ACME").await;
    let (globex, _) = api.customer("Globex").await;
    let name = "vs-00000000000000aa";
    for account in [&acme, &globex] {
        let mut server =
            stratus_core::resources::VirtualServer::new(name, stratus_core::testing::server_spec());
        server.metadata.namespace = Some(account.clone());
        api.state.servers.create(&server).await.unwrap();
    }
    let reply = api
        .call(
            Method::POST,
            "/v1/admin/events",
            &api.admin,
            Some(json!({"id": "abuse-shared", "type": "abuse_report", "server": name})),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("server"),
    );
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&acme) && message.contains(&globex),
        "{message}"
    );
    assert_eq!(
        facts_of(&api, &acme).await + facts_of(&api, &globex).await,
        0
    );

    let reply = report(
        &api,
        &api.admin,
        &globex,
        json!({"id": "abuse-globex", "type": "abuse_report", "server": name}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(
        reply.body["facts"][0]["account_id"],
        globex.as_str(),
        "{}",
        reply.body
    );
    assert_eq!(
        (facts_of(&api, &acme).await, facts_of(&api, &globex).await),
        (0, 1)
    );
}

/// Sends a GET from `peer` (as the server's connection layer says) with
/// `headers`; the status.
async fn from_peer(api: &Api, peer: &str, token: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = Request::builder()
        .uri("/v1/plans")
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    request.extensions_mut().insert(axum::extract::ConnectInfo(
        peer.parse::<std::net::SocketAddr>().unwrap(),
    ));
    api.router.clone().oneshot(request).await.unwrap().status()
}

/// R29 (defect 12 of issue 25): a client guessing tokens gets
/// `limits.invalidTokensPerMinute` tries, then 429 without its token being
/// looked up, while other clients and valid tokens go on. Behind a trusted
/// proxy the client is the one `X-Forwarded-For` names; anyone else's
/// `X-Forwarded-For` is ignored.
#[tokio::test]
async fn r29_invalid_tokens_are_limited_per_client_address() {
    let mut config = Config::default();
    config.limits.invalid_tokens_per_minute = 5;
    config.trusted_proxies = vec!["10.0.0.0/8".into()];
    let api = api_configured(testing::sqlite().await, config).await;
    let (_, customer) = api.customer("ACME").await;
    let guess = "stratus_not-a-token";
    for _ in 0..5 {
        assert_eq!(
            from_peer(&api, "198.51.100.7:4000", guess, &[]).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from_peer(&api, "198.51.100.7:4001", guess, &[]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the sixth guess is not looked up"
    );
    // Spoofing X-Forwarded-For from an untrusted address changes nothing.
    assert_eq!(
        from_peer(
            &api,
            "198.51.100.7:4002",
            guess,
            &[("x-forwarded-for", "203.0.113.9")]
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from_peer(&api, "198.51.100.8:4000", &customer, &[]).await,
        StatusCode::OK
    );
    assert_eq!(
        from_peer(&api, "198.51.100.8:4000", guess, &[]).await,
        StatusCode::UNAUTHORIZED
    );
    // Behind the load balancer, each client is counted apart.
    for _ in 0..5 {
        let status = from_peer(
            &api,
            "10.1.1.1:443",
            guess,
            &[("x-forwarded-for", "203.0.113.50, 10.2.2.2")],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        from_peer(
            &api,
            "10.1.1.1:443",
            guess,
            &[("x-forwarded-for", "203.0.113.50")]
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from_peer(
            &api,
            "10.1.1.1:443",
            guess,
            &[("x-forwarded-for", "203.0.113.51")]
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "another client behind the same proxy"
    );
    // IPv6 clients are one per /64.
    for _ in 0..5 {
        from_peer(&api, "[2001:db8:1:2::10]:1", guess, &[]).await;
    }
    assert_eq!(
        from_peer(&api, "[2001:db8:1:2::99]:1", guess, &[]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Defect 10 of issue 25: a plan whose disk is smaller than the image's
/// file system cannot boot it. Such an order is refused naming `plan`,
/// with both sizes, and creates nothing; the catalogue shows each image's
/// smallest disk.
#[tokio::test]
async fn an_order_whose_disk_cannot_hold_its_image_is_refused_naming_the_plan() {
    let mut config = Config::default();
    config.plans[0].disk_gib = 1;
    let micro = config.plans[0].name.clone();
    config.images[0].size_gib = 3;
    let image = config.images[0].name.clone();
    let api = api_configured(testing::sqlite().await, config).await;
    let (acme, token) = api.customer("ACME").await;
    let images = api.call(Method::GET, "/v1/images", &token, None).await;
    let shown = images.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == image.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["min_disk_gib"], 3, "{shown}");
    let refused = api
        .call(
            Method::POST,
            "/v1/servers",
            &token,
            Some(json!({"name": "web1", "plan": micro, "image": image})),
        )
        .await;
    assert_error(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("plan"),
    );
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1 GiB") && message.contains("3 GiB"),
        "{message}"
    );
    assert!(
        api.state
            .servers
            .list(Some(&acme))
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing created"
    );
}
