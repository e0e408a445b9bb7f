//! The REST API of an account's standing: facts reported (R1–R10),
//! holds and their evidence, billing events by cursor, history, notices.

mod support;

use support::*;

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
