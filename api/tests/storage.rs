//! The REST API of storage subscriptions (R24–R27): orders, content,
//! restores, attachment, LUKS keys, and what a suspension holds.

mod support;

use support::*;

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
        // Defect 4 of issue 25: work on the copies under way (here a
        // verification) holds an attach back until it ends.
        let stored = api
            .state
            .storage
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        let mut busy = stored.status.clone().unwrap_or_default();
        busy.busy = Some(stratus_core::resources::Busy {
            what: "verifying both copies".into(),
            since: "2026-12-07T00:00:00Z".into(),
        });
        api.state
            .storage
            .patch_status(Some(&account), &id, &busy)
            .await
            .unwrap();
        let held = api
            .call(Method::POST, &path, &token, Some(attach.clone()))
            .await;
        assert_eq!(held.status, StatusCode::CONFLICT, "{label}: {}", held.body);
        assert!(
            held.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("verifying both copies"),
            "{label}: {}",
            held.body
        );
        busy.busy = None;
        api.state
            .storage
            .patch_status(Some(&account), &id, &busy)
            .await
            .unwrap();
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
