//! The REST API of addresses: IP pools, blacklist verdicts and checks,
//! and who held an address when (R19–R22).

mod support;

use support::*;

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
