//! Reverse DNS through the REST API (R20–R22), on both databases: a
//! customer sets the PTR of an address its server holds, checked, kept
//! with its holder in the IP ledger, and forward-confirmed through a real
//! DNS server on 127.0.0.1 when the provider asks for it.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use serde_json::json;
use stratus_core::config::Config;
use stratus_core::ip::Family;
use stratus_core::resources::ServerAddress;
use stratus_store::ledger::{AuditAction, AuditSubject, NewHolding};
use stratus_store::testing;
use support::*;

/// A forward zone on 127.0.0.1: the A and AAAA records of `names`.
async fn forward_zone(names: HashMap<String, Vec<IpAddr>>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let names = Arc::new(Mutex::new(names));
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let Some(query) = request.queries.first() else {
                continue;
            };
            let name = query.name().to_ascii().to_ascii_lowercase();
            let mut response = Message::response(request.metadata.id, OpCode::Query);
            response.metadata.authoritative = true;
            response.add_query(query.clone());
            let found = names
                .lock()
                .unwrap()
                .get(name.trim_end_matches('.'))
                .cloned();
            match found {
                None => response.metadata.response_code = ResponseCode::NXDomain,
                Some(addresses) => {
                    for address in addresses {
                        let data = match (address, query.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                            _ => continue,
                        };
                        response.add_answer(Record::from_rdata(query.name().clone(), 0, data));
                    }
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    address
}

/// A server of `account` placed and numbered: 192.0.2.7 and the prefix
/// 2001:db8:0:7::/64, held in the IP ledger.
async fn numbered(api: &Api, account: &str, token: &str) -> String {
    let ordered = api
        .call(Method::POST, "/v1/servers", token, Some(order("mail")))
        .await;
    assert_eq!(ordered.status, StatusCode::ACCEPTED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    let server = api
        .state
        .servers
        .get(Some(account), &id)
        .await
        .unwrap()
        .unwrap();
    let uid = server.metadata.uid.clone().unwrap();
    let subject = format!("{account}/{id}");
    for (family, slot, address, prefix_len) in [
        (Family::V4, 7, "192.0.2.7", 32),
        (Family::V6, 7, "2001:db8:0:7::/64", 64),
    ] {
        assert!(
            api.state
                .ledger
                .ips()
                .try_hold(&NewHolding {
                    pool: "doc",
                    family,
                    slot,
                    address,
                    prefix_len,
                    holder: &uid,
                    account,
                    subject: &subject,
                    at: 1,
                    next_check_at: 2,
                })
                .await
                .unwrap()
        );
    }
    let mut status = server.status.unwrap_or_default();
    status.ipv4 = Some(ServerAddress {
        address: "192.0.2.7".into(),
        prefix: None,
        prefix_length: 24,
        gateway: "192.0.2.1".into(),
    });
    api.state
        .servers
        .patch_status(Some(account), &id, &status)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn r22_a_ptr_is_set_only_on_an_address_the_server_holds_and_kept_in_the_ledger() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let mut config = Config::default();
        config.rdns.require_forward_match = false;
        config.rdns.default_template = Some("static-{ip-dashed}.example.net".into());
        let api = api_configured(scratch, config).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let (_, other_token) = api.customer("Other").await;
        let id = numbered(&api, &account, &token).await;
        let path = format!("/v1/servers/{id}/ptr");

        let listed = api.call(Method::GET, &path, &token, None).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(
            listed.body["items"],
            json!([{"ip": "192.0.2.7", "hostname": "static-192-0-2-7.example.net", "default": true}]),
            "{label}"
        );
        for (body, status, code, field) in [
            (
                json!({"ip": "192.0.2.8", "hostname": "mail.example.com"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ip"),
            ),
            (
                json!({"ip": "2001:db8:0:8::1", "hostname": "mail.example.com"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ip"),
            ),
            (
                json!({"ip": "mail", "hostname": "mail.example.com"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("ip"),
            ),
            (
                json!({"ip": "192.0.2.7", "hostname": "not a name"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("hostname"),
            ),
            (
                json!({"ip": "192.0.2.7", "hostname": "localhost"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("hostname"),
            ),
            (
                json!({"ip": "192.0.2.7", "hostname": "x".repeat(300)}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("hostname"),
            ),
            (
                json!({"ip": "192.0.2.7", "hostname": "a.example.com", "ttl": 5}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
        ] {
            let reply = api
                .call(Method::PUT, &path, &token, Some(body.clone()))
                .await;
            assert_error(&reply, status, code, field);
        }
        let foreign = api
            .call(
                Method::PUT,
                &path,
                &other_token,
                Some(json!({"ip": "192.0.2.7", "hostname": "evil.example.com"})),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{label}");
        assert_eq!(
            api.state.ledger.ptrs().last_change().await.unwrap(),
            0,
            "{label}: refusals changed nothing"
        );

        for (ip, hostname) in [
            ("192.0.2.7", "Mail.Example.com."),
            ("2001:db8:0:7::25", "mx6.example.com"),
        ] {
            let set = api
                .call(
                    Method::PUT,
                    &path,
                    &token,
                    Some(json!({"ip": ip, "hostname": hostname})),
                )
                .await;
            assert_eq!(set.status, StatusCode::OK, "{label}: {}", set.body);
            assert_eq!(set.body["default"], false);
        }
        let listed = api.call(Method::GET, &path, &token, None).await;
        assert_eq!(
            listed.body["items"],
            json!([
                {"ip": "192.0.2.7", "hostname": "mail.example.com", "default": false},
                {"ip": "2001:db8:0:7::25", "hostname": "mx6.example.com", "default": false},
            ]),
            "{label}"
        );
        // Back to the default.
        let reset = api
            .call(
                Method::PUT,
                &path,
                &token,
                Some(json!({"ip": "192.0.2.7", "hostname": null})),
            )
            .await;
        assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
        assert_eq!(reset.body["hostname"], "static-192-0-2-7.example.net");
        assert_eq!(reset.body["default"], true);
        // At most 64 PTRs in one IPv6 prefix.
        for i in 0..63u32 {
            let reply = api
                .call(
                    Method::PUT,
                    &path,
                    &token,
                    Some(json!({"ip": format!("2001:db8:0:7::1:{i:x}"), "hostname": format!("h{i}.example.com")})),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{label}: {}", reply.body);
        }
        let over = api
            .call(
                Method::PUT,
                &path,
                &token,
                Some(json!({"ip": "2001:db8:0:7::2:1", "hostname": "one-too-many.example.com"})),
            )
            .await;
        assert_error(
            &over,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("ip"),
        );
        // A suspended server's reverse DNS stays as it is.
        api.state
            .servers
            .update(Some(&account), &id, |s| {
                s.spec.suspension = Some(stratus_core::standing::Suspension {
                    reasons: vec![stratus_core::standing::SuspensionReason::Abuse],
                    mode: stratus_core::policy::SuspensionMode::Stopped,
                });
                true
            })
            .await
            .unwrap();
        let held = api
            .call(
                Method::PUT,
                &path,
                &token,
                Some(json!({"ip": "192.0.2.7", "hostname": "spam.example.com"})),
            )
            .await;
        assert_error(&held, StatusCode::CONFLICT, "server_suspended", None);
        let history = api.state.ledger.ptrs().history("192.0.2.7").await.unwrap();
        let said: Vec<Option<&str>> = history.iter().map(|c| c.hostname.as_deref()).collect();
        assert_eq!(said, [Some("mail.example.com"), None], "{label}");
        assert!(history.iter().all(|c| c.actor.starts_with("token:")));
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
        assert_eq!(
            trail
                .iter()
                .filter(|e| e.action == AuditAction::ServerPtr)
                .count(),
            66,
            "{label}"
        );
    }
}

#[tokio::test]
async fn r22_a_ptr_must_resolve_forward_to_its_address_when_the_provider_says_so() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let zone = forward_zone(HashMap::from([
            (
                "mail.example.com".to_owned(),
                vec!["192.0.2.7".parse().unwrap()],
            ),
            (
                "elsewhere.example.com".to_owned(),
                vec!["198.51.100.9".parse().unwrap()],
            ),
        ]))
        .await;
        let mut config = Config::default();
        config.dnsbl.resolver = Some(zone.to_string());
        let api = api_configured(scratch, config).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let id = numbered(&api, &account, &token).await;
        let path = format!("/v1/servers/{id}/ptr");
        for hostname in ["elsewhere.example.com", "nowhere.example.com"] {
            let reply = api
                .call(
                    Method::PUT,
                    &path,
                    &token,
                    Some(json!({"ip": "192.0.2.7", "hostname": hostname})),
                )
                .await;
            assert_error(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("hostname"),
            );
        }
        let set = api
            .call(
                Method::PUT,
                &path,
                &token,
                Some(json!({"ip": "192.0.2.7", "hostname": "mail.example.com"})),
            )
            .await;
        assert_eq!(set.status, StatusCode::OK, "{label}: {}", set.body);
    }
    // Without a resolver to ask, a provider that asks for the check cannot
    // take PTRs: unavailable, saying why.
    for scratch in testing::both().await {
        let api = api_on(scratch).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let id = numbered(&api, &account, &token).await;
        let reply = api
            .call(
                Method::PUT,
                &format!("/v1/servers/{id}/ptr"),
                &token,
                Some(json!({"ip": "192.0.2.7", "hostname": "mail.example.com"})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("dnsbl.resolver")
        );
    }
}
