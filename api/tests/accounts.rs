//! The REST API of accounts and access: tokens and their roles, rate
//! limits, the catalogue, OpenAPI and metrics (R28, R29).

mod support;

use support::*;

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
    let (acme, customer) = api.customer("ACME").await;
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
    // A customer behind the same address, whose token was valid lately,
    // goes on working; its token revoked, it is refused at once.
    assert_eq!(
        from_peer(&api, "198.51.100.9:1", &customer, &[]).await,
        StatusCode::OK
    );
    assert_eq!(
        from_peer(&api, "198.51.100.7:4003", &customer, &[]).await,
        StatusCode::OK,
        "a token valid lately is not held back by its neighbours' guesses"
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
    let tokens = api
        .call(
            Method::GET,
            &format!("/v1/accounts/{acme}/tokens"),
            &api.admin,
            None,
        )
        .await;
    let token_id = tokens.body["items"][0]["id"].as_str().unwrap().to_owned();
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        from_peer(&api, "198.51.100.7:4004", &customer, &[]).await,
        StatusCode::UNAUTHORIZED,
        "revoked at once, whatever its address"
    );
}
