//! The REST API of servers: orders, their refusals (status, body naming
//! the field, nothing created), idempotency, actions, listings, consoles.

mod support;

use support::*;

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
        json!({"servers": 2, "vcpus": null, "memoryMib": null, "diskGib": null, "storageGib": null,
               "snapshotGib": null})
    );
    assert_eq!(
        shown.body["usage"],
        json!({"servers": 2, "vcpus": 2, "memoryMib": 2048, "diskGib": 50, "storageGib": 0,
               "snapshotGib": 0})
    );
    // The same through the caller's own account, which only a customer
    // token has.
    let own = api.call(Method::GET, "/v1/account", &token, None).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body, shown.body);
    assert_eq!(own.body["id"], account.as_str());
    assert_eq!(own.body["state"], "active");
    let operator = api.call(Method::GET, "/v1/account", &api.admin, None).await;
    assert_eq!(operator.status, StatusCode::FORBIDDEN, "{}", operator.body);
    let nobody = api.call(Method::GET, "/v1/account", "", None).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED, "{}", nobody.body);

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

/// The server `id` placed on `hv-default` and running plan `small`, as the
/// controller would record it, on a hypervisor with `vcpus` and
/// `memory_mib`.
#[tokio::test]
async fn r23_a_resize_is_checked_charged_and_asked_for_in_one_step_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let mut config = Config::default();
        config.plans.push(stratus_core::config::Plan {
            name: "tiny".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 10,
        });
        let api = api_configured(scratch, config).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let ordered = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        assert_eq!(
            ordered.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            ordered.body
        );
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        let actions = format!("/v1/servers/{id}/actions");
        let resize = |plan: &str| json!({"type": "resize", "plan": plan});

        // Not provisioned yet: nothing to resize.
        let early = api
            .call(Method::POST, &actions, &token, Some(resize("medium")))
            .await;
        assert_error(&early, StatusCode::CONFLICT, "server_busy", None);
        assert_eq!(early.body["error"]["details"]["action"], "provisioning");

        // 4 vCPU and 8 GiB on its hypervisor.
        placed_and_running(&api, &account, &id, 4, 8192).await;
        let usage = || async { api.state.ledger.quotas().usage(&account).await.unwrap() };
        let before = usage().await;
        let spec_before = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;

        // Refusals name the field and change nothing.
        for (body, status, code, field) in [
            (
                json!({"type": "resize"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
            (
                resize("gigantic"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("plan"),
            ),
            (
                resize("small"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("plan"),
            ),
            (
                resize("tiny"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("plan"),
            ),
            (
                json!({"type": "resize", "plan": "medium", "gpu": 1}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
            (
                json!({"type": "explode"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("type"),
            ),
            (
                resize("xlarge"),
                StatusCode::CONFLICT,
                "insufficient_capacity",
                Some("plan"),
            ),
        ] {
            let reply = api
                .call(Method::POST, &actions, &token, Some(body.clone()))
                .await;
            assert_error(&reply, status, code, field);
            let _ = label;
        }
        let short = api
            .call(Method::POST, &actions, &token, Some(resize("xlarge")))
            .await;
        assert_eq!(
            short.body["error"]["details"]["missing"],
            json!({"vcpus": 4, "memory_mib": 8192, "disk_gib": 0}),
            "{label}"
        );
        // Over the quota: at most 3 vCPUs for this account.
        let quota = format!("/v1/admin/accounts/{account}/quota");
        let set = api
            .call(Method::PUT, &quota, &api.admin, Some(json!({"vcpus": 3})))
            .await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.body);
        let over = api
            .call(Method::POST, &actions, &token, Some(resize("large")))
            .await;
        assert_error(
            &over,
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota_exceeded",
            None,
        );
        assert_eq!(over.body["error"]["details"]["quota"], "vcpus");
        assert_eq!(
            usage().await,
            before,
            "{label}: a refusal charged something"
        );
        let spec_now = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        assert_eq!(
            spec_now, spec_before,
            "{label}: a refusal changed the server"
        );

        // Accepted: charged at once, shown in progress, audited with its actor.
        let accepted = api
            .call(Method::POST, &actions, &token, Some(resize("medium")))
            .await;
        assert_eq!(
            accepted.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            accepted.body
        );
        assert_eq!(
            accepted.body["plan"], "small",
            "the view shows the plan it runs with"
        );
        assert_eq!(accepted.body["vcpus"], 1);
        assert_eq!(accepted.body["action"]["type"], "resize");
        assert_eq!(accepted.body["action"]["state"], "in_progress");
        assert_eq!(accepted.body["action"]["to"], "medium");
        let after = usage().await;
        assert_eq!(
            (after.vcpus, after.memory_mib, after.disk_gib),
            (2, 4096, 80),
            "{label}"
        );
        assert_eq!(after.servers, before.servers);
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Server {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        let audited = trail
            .iter()
            .find(|e| e.action == AuditAction::ServerResize)
            .expect("audited");
        assert_eq!(audited.detail["from"], "small");
        assert_eq!(audited.detail["to"], "medium");

        // Busy until it is done: every other action is refused, naming it.
        for body in [
            resize("large"),
            json!({"type": "stop"}),
            json!({"type": "reboot"}),
        ] {
            let reply = api.call(Method::POST, &actions, &token, Some(body)).await;
            assert_error(&reply, StatusCode::CONFLICT, "server_busy", None);
            assert_eq!(reply.body["error"]["details"]["action"], "resize");
        }
        assert_eq!(usage().await, after, "{label}");

        // Until the controller stops it for the resize, going back to the
        // plan it runs with withdraws the resize and gives the charge back.
        let back = api
            .call(Method::POST, &actions, &token, Some(resize("small")))
            .await;
        assert_eq!(back.status, StatusCode::ACCEPTED, "{label}: {}", back.body);
        assert_eq!(usage().await, before, "{label}");
        let stop = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "stop"})),
            )
            .await;
        assert_eq!(stop.status, StatusCode::ACCEPTED, "{label}: {}", stop.body);

        // Another account's token cannot even see it.
        let (_, other) = api.customer("Other").await;
        let foreign = api
            .call(Method::POST, &actions, &other, Some(resize("large")))
            .await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{label}");
    }
}

#[tokio::test]
async fn r23_racing_resizes_charge_the_quota_exactly_once_each() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let mut ids = Vec::new();
        for i in 0..6 {
            let ordered = api
                .call(
                    Method::POST,
                    "/v1/servers",
                    &token,
                    Some(order(&format!("web{i}"))),
                )
                .await;
            ids.push(ordered.body["id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            placed_and_running(&api, &account, id, 64, 1 << 20).await;
        }
        // Room in the quota for three of the six to grow from 1 to 2 vCPUs.
        let quota = format!("/v1/admin/accounts/{account}/quota");
        api.call(Method::PUT, &quota, &api.admin, Some(json!({"vcpus": 9})))
            .await;
        let racing = ids.iter().flat_map(|id| {
            // Each twice at once: a retry racing its original.
            (0..2).map(move |_| (id.clone(), json!({"type": "resize", "plan": "medium"})))
        });
        let replies = futures::future::join_all(racing.map(|(id, body)| {
            let api = &api;
            let token = &token;
            async move {
                api.call(
                    Method::POST,
                    &format!("/v1/servers/{id}/actions"),
                    token,
                    Some(body),
                )
                .await
            }
        }))
        .await;
        let accepted = replies
            .iter()
            .filter(|r| r.status == StatusCode::ACCEPTED)
            .count();
        let usage = api.state.ledger.quotas().usage(&account).await.unwrap();
        let servers = api.state.servers.list(Some(&account)).await.unwrap().items;
        let medium = servers.iter().filter(|s| s.spec.plan == "medium").count();
        assert_eq!(accepted, medium, "{label}: one 202 per server moved");
        assert_eq!(
            medium,
            3,
            "{label}: {replies:?}",
            replies = replies
                .iter()
                .map(|r| r.body.to_string())
                .collect::<Vec<_>>()
        );
        assert_eq!(usage.vcpus, 9, "{label}");
        assert_eq!(usage.memory_mib, 3 * 4096 + 3 * 1024, "{label}");
    }
}

/// The deadline runner suspends servers by writing `spec.suspension` while
/// customers act on them: a resize racing it either loses (409, nothing
/// charged) or wins and the suspension still lands; the quota charged is
/// always what the specs ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r23_a_resize_racing_a_suspension_never_loses_it_and_charges_what_the_spec_says() {
    use stratus_core::policy::SuspensionMode;
    use stratus_core::standing::{Suspension, SuspensionReason};
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let quota = format!("/v1/admin/accounts/{account}/quota");
        api.call(
            Method::PUT,
            &quota,
            &api.admin,
            Some(json!({"servers": 100, "vcpus": 1000})),
        )
        .await;
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20 {
            let ordered = api
                .call(
                    Method::POST,
                    "/v1/servers",
                    &token,
                    Some(order(&format!("race{round}"))),
                )
                .await;
            let id = ordered.body["id"].as_str().unwrap().to_owned();
            placed_and_running(&api, &account, &id, 4096, 1 << 22).await;
            let actions = format!("/v1/servers/{id}/actions");
            let resize = api.call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "resize", "plan": "medium"})),
            );
            // Each round lets the resize get further before the
            // suspension is written, so the race lands at every step.
            let suspend = async {
                for _ in 0..round * 25 {
                    tokio::task::yield_now().await;
                }
                api.state
                    .servers
                    .update(Some(&account), &id, |s| {
                        s.spec.suspension = Some(Suspension {
                            reasons: vec![SuspensionReason::NonPayment],
                            mode: SuspensionMode::Stopped,
                        });
                        true
                    })
                    .await
            };
            let (reply, suspended) = tokio::join!(resize, suspend);
            suspended.unwrap();
            match reply.status {
                StatusCode::ACCEPTED => accepted += 1,
                StatusCode::CONFLICT => {
                    assert_eq!(reply.body["error"]["code"], "server_suspended", "{label}");
                    refused += 1;
                }
                other => panic!("{label}: {other} {}", reply.body),
            }
            let server = api
                .state
                .servers
                .get(Some(&account), &id)
                .await
                .unwrap()
                .unwrap();
            assert!(
                server.spec.suspension.is_some(),
                "{label}: the suspension was lost"
            );
        }
        let servers = api.state.servers.list(Some(&account)).await.unwrap().items;
        let asked: u64 = servers
            .iter()
            .map(|s| u64::from(s.spec.resources.vcpus))
            .sum();
        let usage = api.state.ledger.quotas().usage(&account).await.unwrap();
        assert_eq!(
            usage.vcpus, asked,
            "{label}: charged what the specs ask for"
        );
        assert_eq!(accepted + refused, 20);
        println!("{label}: {accepted} resizes won the race, {refused} lost it");
    }
}

#[tokio::test]
async fn a_rebuild_is_checked_asked_for_in_one_step_and_audited_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let mut config = Config::default();
        config.images.push(stratus_core::config::Image {
            name: "huge".into(),
            volume: "huge.qcow2".into(),
            description: String::new(),
            size_gib: 100,
            kernel: None,
            initrd: None,
            cmdline: None,
        });
        config.images.push(stratus_core::config::Image {
            name: "fresh".into(),
            volume: "fresh.qcow2".into(),
            description: String::new(),
            size_gib: 1,
            kernel: None,
            initrd: None,
            cmdline: None,
        });
        let api = api_configured(scratch, config).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let (_, other_token) = api.customer("Other").await;
        let ordered = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        let actions = format!("/v1/servers/{id}/actions");
        let rebuild = |image: &str| json!({"type": "rebuild", "image": image});

        // Not provisioned yet: nothing to rebuild.
        let early = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(rebuild("ubuntu-24.04")),
            )
            .await;
        assert_error(&early, StatusCode::CONFLICT, "server_busy", None);
        assert_eq!(early.body["error"]["details"]["action"], "provisioning");
        placed_and_running(&api, &account, &id, 4, 8192).await;
        let spec_before = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;

        // Refusals name the field and change nothing; another account's
        // server is not found.
        for (body, status, code, field) in [
            (
                json!({"type": "rebuild"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
            (
                rebuild("windows-95"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("image"),
            ),
            (
                rebuild("huge"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("image"),
            ),
            // Not on the server's hypervisor (yet).
            (
                rebuild("fresh"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("image"),
            ),
            (
                json!({"type": "rebuild", "image": "alma-9", "ssh_keys": ["not a key"]}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ssh_keys[0]"),
            ),
            (
                json!({"type": "rebuild", "image": "alma-9", "user_data": "x".repeat(20_000)}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("user_data"),
            ),
            (
                json!({"type": "rebuild", "image": "alma-9", "disk": 1}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
        ] {
            let reply = api
                .call(Method::POST, &actions, &token, Some(body.clone()))
                .await;
            assert_error(&reply, status, code, field);
        }
        let foreign = api
            .call(
                Method::POST,
                &actions,
                &other_token,
                Some(rebuild("alma-9")),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{label}");
        let server = api.state.servers.get(Some(&account), &id).await.unwrap();
        assert_eq!(
            server.unwrap().spec,
            spec_before,
            "{label}: a refusal changed the server"
        );

        // Accepted: asked in the spec, the view keeps the image it runs
        // until done, the audit names the actor and both images.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rebuild@example";
        let accepted = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "rebuild", "image": "alma-9", "ssh_keys": [key], "user_data": "#!/bin/sh\necho again\n"})),
            )
            .await;
        assert_eq!(
            accepted.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            accepted.body
        );
        assert_eq!(accepted.body["image"], "debian-12");
        assert_eq!(accepted.body["action"]["type"], "rebuild");
        assert_eq!(accepted.body["action"]["state"], "in_progress");
        assert_eq!(accepted.body["action"]["from"], "debian-12");
        assert_eq!(accepted.body["action"]["to"], "alma-9");
        let spec = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        let request = spec.rebuild.clone().unwrap();
        assert_eq!((request.image.as_str(), request.generation), ("alma-9", 1));
        // For the new system only: the running one keeps its own.
        assert_eq!(request.ssh_keys.as_deref(), Some(&[key.to_owned()][..]));
        assert_eq!(
            request.user_data.as_deref(),
            Some("#!/bin/sh\necho again\n")
        );
        assert_eq!(spec.ssh_keys, spec_before.ssh_keys);
        assert_eq!(spec.user_data, spec_before.user_data);
        assert_eq!(spec.resources, spec_before.resources);
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Server {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        let audited = trail
            .iter()
            .find(|e| e.action == AuditAction::ServerRebuild)
            .expect("audited");
        assert_eq!(audited.detail["from"], "debian-12");
        assert_eq!(audited.detail["to"], "alma-9");
        assert_eq!(audited.detail["generation"], 1);
        assert!(
            matches!(audited.actor, stratus_store::ledger::Actor::Token(_)),
            "{label}: {:?}",
            audited.actor
        );

        // Busy until it is done: every other action is refused, naming it.
        for body in [
            rebuild("ubuntu-24.04"),
            json!({"type": "resize", "plan": "medium"}),
            json!({"type": "stop"}),
            json!({"type": "reboot"}),
        ] {
            let reply = api.call(Method::POST, &actions, &token, Some(body)).await;
            assert_error(&reply, StatusCode::CONFLICT, "server_busy", None);
            assert_eq!(reply.body["error"]["details"]["action"], "rebuild");
        }

        // Done (as the controller records it): the view shows the new
        // image and the result, and a second rebuild raises the generation.
        let mut status = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap();
        status.disk_generation = 1;
        status.image = Some("alma-9".into());
        stratus_core::conditions::set(
            &mut status.conditions,
            stratus_core::conditions::ConditionType::Rebuilt,
            true,
            stratus_core::conditions::Reason::ImageApplied,
            "reinstalled from image alma-9 (was debian-12)",
            jiff::Timestamp::now(),
        );
        api.state
            .servers
            .patch_status(Some(&account), &id, &status)
            .await
            .unwrap();
        let view = api
            .call(Method::GET, &format!("/v1/servers/{id}"), &token, None)
            .await;
        assert_eq!(view.body["image"], "alma-9", "{label}");
        assert_eq!(view.body["action"]["type"], "rebuild");
        assert_eq!(view.body["action"]["state"], "done");
        let again = api
            .call(Method::POST, &actions, &token, Some(rebuild("debian-12")))
            .await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
        let spec = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        let request = spec.rebuild.unwrap();
        assert_eq!(request.generation, 2);
        assert_eq!(
            request.ssh_keys.as_deref(),
            Some(&[key.to_owned()][..]),
            "keys not given are those the system runs with"
        );
    }
}

/// Two rebuilds racing each other and the deadline runner's suspension:
/// at most one wins, and a suspension written meanwhile is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_rebuilds_and_a_suspension_leave_one_rebuild_and_the_suspension() {
    use stratus_core::policy::SuspensionMode;
    use stratus_core::standing::{Suspension, SuspensionReason};
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let quota = format!("/v1/admin/accounts/{account}/quota");
        api.call(
            Method::PUT,
            &quota,
            &api.admin,
            Some(json!({"servers": 100, "vcpus": 1000})),
        )
        .await;
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for round in 0..20 {
            let ordered = api
                .call(
                    Method::POST,
                    "/v1/servers",
                    &token,
                    Some(order(&format!("race{round}"))),
                )
                .await;
            let id = ordered.body["id"].as_str().unwrap().to_owned();
            placed_and_running(&api, &account, &id, 4096, 1 << 22).await;
            let actions = format!("/v1/servers/{id}/actions");
            let first = api.call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "rebuild", "image": "alma-9"})),
            );
            let second = api.call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "rebuild", "image": "ubuntu-24.04"})),
            );
            let suspend = async {
                for _ in 0..round * 25 {
                    tokio::task::yield_now().await;
                }
                api.state
                    .servers
                    .update(Some(&account), &id, |s| {
                        s.spec.suspension = Some(Suspension {
                            reasons: vec![SuspensionReason::NonPayment],
                            mode: SuspensionMode::Stopped,
                        });
                        true
                    })
                    .await
            };
            let (first, second, suspended) = tokio::join!(first, second, suspend);
            suspended.unwrap();
            let won: Vec<&Reply> = [&first, &second]
                .into_iter()
                .filter(|r| r.status == StatusCode::ACCEPTED)
                .collect();
            for reply in [&first, &second] {
                let outcome = match reply.status {
                    StatusCode::ACCEPTED => "accepted".to_owned(),
                    StatusCode::CONFLICT => {
                        reply.body["error"]["code"].as_str().unwrap().to_owned()
                    }
                    other => panic!("{label}: {other} {}", reply.body),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            assert!(won.len() <= 1, "{label}: both rebuilds were accepted");
            let server = api
                .state
                .servers
                .get(Some(&account), &id)
                .await
                .unwrap()
                .unwrap();
            assert!(
                server.spec.suspension.is_some(),
                "{label}: the suspension was lost"
            );
            match won.first() {
                Some(reply) => {
                    let request = server.spec.rebuild.expect("the accepted rebuild is asked");
                    assert_eq!(request.generation, 1, "{label}");
                    assert_eq!(reply.body["action"]["to"], request.image.as_str());
                }
                None => assert_eq!(server.spec.rebuild, None, "{label}"),
            }
        }
        println!("{label}: {outcomes:?}");
    }
}

#[tokio::test]
async fn rescue_mode_is_checked_asked_for_and_audited_on_both_databases() {
    for scratch in testing::both().await {
        // Without a rescue image configured, nothing is offered.
        let plain = api_on(scratch).await;
        plain.register_zone("default").await;
        let (account, token) = plain.customer("ACME").await;
        let ordered = plain
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        placed_and_running(&plain, &account, &id, 4, 8192).await;
        let actions = format!("/v1/servers/{id}/actions");
        let enable = |keys: serde_json::Value| json!({"type": "enable_rescue", "ssh_keys": keys});
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rescue@example";
        let reply = plain
            .call(Method::POST, &actions, &token, Some(enable(json!([key]))))
            .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("type"),
        );
        drop(plain);
    }
    for scratch in testing::both().await {
        let label = scratch.label;
        let config = Config {
            rescue_image: Some("debian-12".into()),
            ..Config::default()
        };
        let api = api_configured(scratch, config).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let (_, other_token) = api.customer("Other").await;
        let ordered = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        let actions = format!("/v1/servers/{id}/actions");
        let enable = |keys: serde_json::Value| json!({"type": "enable_rescue", "ssh_keys": keys});
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rescue@example";

        let early = api
            .call(Method::POST, &actions, &token, Some(enable(json!([key]))))
            .await;
        assert_error(&early, StatusCode::CONFLICT, "server_busy", None);
        placed_and_running(&api, &account, &id, 4, 8192).await;
        let spec_before = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        for (body, status, code, field) in [
            (
                json!({"type": "enable_rescue"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
            (
                enable(json!(["not a key"])),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ssh_keys[0]"),
            ),
            (
                json!({"type": "disable_rescue"}),
                StatusCode::CONFLICT,
                "conflict",
                None,
            ),
            (
                enable(json!([])),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ssh_keys"),
            ),
        ] {
            let reply = api
                .call(Method::POST, &actions, &token, Some(body.clone()))
                .await;
            assert_error(&reply, status, code, field);
        }
        let foreign = api
            .call(
                Method::POST,
                &actions,
                &other_token,
                Some(enable(json!([key]))),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{label}");
        let server = api.state.servers.get(Some(&account), &id).await.unwrap();
        assert_eq!(
            server.unwrap().spec,
            spec_before,
            "{label}: a refusal changed it"
        );

        let accepted = api
            .call(Method::POST, &actions, &token, Some(enable(json!([key]))))
            .await;
        assert_eq!(
            accepted.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            accepted.body
        );
        assert_eq!(accepted.body["rescue"], true);
        assert_eq!(accepted.body["action"]["type"], "enable_rescue");
        assert_eq!(accepted.body["action"]["state"], "in_progress");
        let spec = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        assert_eq!(spec.rescue.unwrap().ssh_keys, [key]);
        assert_eq!(
            spec.ssh_keys, spec_before.ssh_keys,
            "the server's own keys stay"
        );
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Server {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        let audited = trail
            .iter()
            .find(|e| e.action == AuditAction::ServerRescueEnable)
            .expect("audited");
        assert_eq!(audited.detail["ssh_keys"], 1);

        // In rescue mode: no resize or rebuild, no second enable.
        for (body, code) in [
            (json!({"type": "resize", "plan": "medium"}), "server_busy"),
            (json!({"type": "rebuild", "image": "alma-9"}), "server_busy"),
            (enable(json!([key])), "conflict"),
        ] {
            let reply = api.call(Method::POST, &actions, &token, Some(body)).await;
            assert_error(&reply, StatusCode::CONFLICT, code, None);
        }
        let disabled = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "disable_rescue"})),
            )
            .await;
        assert_eq!(
            disabled.status,
            StatusCode::ACCEPTED,
            "{label}: {}",
            disabled.body
        );
        assert_eq!(disabled.body["rescue"], false);
        let server = api.state.servers.get(Some(&account), &id).await.unwrap();
        assert_eq!(server.unwrap().spec.rescue, None);
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::Server {
                account: account.clone(),
                name: id.clone(),
            })
            .await
            .unwrap();
        assert!(
            trail
                .iter()
                .any(|e| e.action == AuditAction::ServerRescueDisable)
        );
    }
}
