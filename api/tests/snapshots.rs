//! Snapshots of servers' disks through the REST API (R18, R26): checked,
//! charged to `snapshotGib`, listed with their server only, restored, and
//! deleted; every refusal names its field and changes nothing.

mod support;

use stratus_core::resources::{StorageContent, StorageSubscriptionStatus};
use support::*;

/// What the controller records once it placed the snapshot's copies, the
/// first on `hv-default` (the server's hypervisor), before the disk is
/// copied.
async fn placed(api: &Api, account: &str, snapshot: &str) {
    let status: StorageSubscriptionStatus = serde_json::from_value(json!({
        "phase": "Provisioning",
        "replicas": [
            {"hypervisor": "hv-default", "zone": "default", "volume": "v", "created": true},
            {"hypervisor": "hv-b", "zone": "b", "volume": "v", "created": true},
        ],
    }))
    .unwrap();
    api.state
        .storage
        .patch_status(Some(account), snapshot, &status)
        .await
        .unwrap();
}

/// What the controller records once the snapshot's disk was copied and
/// both copies agree: the first on `hv-default`, the server's hypervisor.
async fn ready(api: &Api, account: &str, snapshot: &str) {
    let replica = |hypervisor: &str, zone: &str| {
        json!({"hypervisor": hypervisor, "zone": zone, "volume": format!("stratus-{account}.{snapshot}-store-v5.raw"),
               "version": 5, "created": true, "bytes": 8, "checksum": "ab".repeat(32)})
    };
    let status: StorageSubscriptionStatus = serde_json::from_value(json!({
        "phase": "Ready",
        "replicas": [replica("hv-default", "default"), replica("hv-b", "b")],
        "zones": "default,b",
        "replicasInSync": true,
    }))
    .unwrap();
    api.state
        .storage
        .update(Some(account), snapshot, |s| {
            s.spec.content = Some(StorageContent {
                version: 5,
                bytes: 8,
                sha256: "ab".repeat(32),
                written_at: "2026-12-07T12:00:00Z".into(),
            });
            true
        })
        .await
        .unwrap();
    api.state
        .storage
        .patch_status(Some(account), snapshot, &status)
        .await
        .unwrap();
}

/// ACME, a customer in zone `default`, orders server `web1`: its account,
/// its token and the order's answer.
async fn acme_orders_web1(api: &Api) -> (String, String, serde_json::Value) {
    api.register_zone("default").await;
    let (account, token) = api.customer("ACME").await;
    let ordered = api
        .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
        .await;
    (account, token, ordered.body)
}

#[tokio::test]
async fn r18_snapshots_are_checked_charged_listed_restored_and_deleted_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token, ordered) = acme_orders_web1(&api).await;
        let (_, other_token) = api.customer("Other").await;
        let id = ordered["id"].as_str().unwrap().to_owned();
        let disk_gib = ordered["disk_gib"].as_u64().unwrap();
        api.call(
            Method::PUT,
            &format!("/v1/admin/accounts/{account}/quota"),
            &api.admin,
            Some(json!({"snapshotGib": disk_gib})),
        )
        .await;
        let snapshots = format!("/v1/servers/{id}/snapshots");
        let actions = format!("/v1/servers/{id}/actions");

        let early = api
            .call(
                Method::POST,
                &snapshots,
                &token,
                Some(json!({"name": "early"})),
            )
            .await;
        assert_error(&early, StatusCode::CONFLICT, "server_busy", None);
        placed_and_running(&api, &account, &id, 4, 8192).await;

        // Refusals name the field and change nothing.
        for (path, who, body, status, code, field) in [
            (
                snapshots.clone(),
                &token,
                json!({"name": "Not A Label"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("name"),
            ),
            (
                snapshots.clone(),
                &token,
                json!({"name": "ok", "extra": 1}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
            (
                snapshots.clone(),
                &other_token,
                json!({"name": "theirs"}),
                StatusCode::NOT_FOUND,
                "not_found",
                None,
            ),
            (
                "/v1/servers/nope/snapshots".to_owned(),
                &token,
                json!({"name": "ok"}),
                StatusCode::NOT_FOUND,
                "not_found",
                Some("id"),
            ),
        ] {
            let reply = api.call(Method::POST, &path, who, Some(body)).await;
            assert_error(&reply, status, code, field);
        }
        assert_eq!(api.storage_count().await, 0, "{label}");

        let taken = api
            .call(
                Method::POST,
                &snapshots,
                &token,
                Some(json!({"name": "before-upgrade"})),
            )
            .await;
        assert_eq!(taken.status, StatusCode::ACCEPTED, "{}", taken.body);
        assert_eq!(taken.body["state"], "pending");
        assert_eq!(taken.body["server"], id.as_str());
        assert_eq!(taken.body["image"], "debian-12");
        assert_eq!(taken.body["size_gib"], disk_gib);
        let sid = taken.body["id"].as_str().unwrap().to_owned();
        let listed = api.call(Method::GET, &snapshots, &token, None).await;
        assert_eq!(listed.body["items"][0]["id"], sid.as_str(), "{label}");
        let theirs = api.call(Method::GET, &snapshots, &other_token, None).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND);
        // Not storage the customer rents: never listed or reached there.
        let storage = api.call(Method::GET, "/v1/storage", &token, None).await;
        assert_eq!(storage.body["items"], json!([]), "{label}");
        let direct = api
            .call(Method::GET, &format!("/v1/storage/{sid}"), &token, None)
            .await;
        assert_eq!(direct.status, StatusCode::NOT_FOUND);
        let account_view = api
            .call(
                Method::GET,
                &format!("/v1/accounts/{account}"),
                &api.admin,
                None,
            )
            .await;
        assert_eq!(account_view.body["usage"]["snapshotGib"], disk_gib);
        let server = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::server(&server))
            .await
            .unwrap();
        assert!(
            trail
                .iter()
                .any(|e| e.action == AuditAction::ServerSnapshot
                    && e.detail["snapshot"] == sid.as_str()),
            "{label}: {trail:?}"
        );

        // The quota counts the disk of each.
        let beyond = api
            .call(
                Method::POST,
                &snapshots,
                &token,
                Some(json!({"name": "second"})),
            )
            .await;
        assert_error(
            &beyond,
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota_exceeded",
            None,
        );
        assert_eq!(beyond.body["error"]["details"]["quota"], "snapshotGib");

        // Not placed yet, it holds nothing back; placed and being copied,
        // the disk is not changed under it.
        placed(&api, &account, &sid).await;
        for body in [
            json!({"type": "rebuild", "image": "alma-9"}),
            json!({"type": "resize", "plan": "medium"}),
        ] {
            let reply = api.call(Method::POST, &actions, &token, Some(body)).await;
            assert_error(&reply, StatusCode::CONFLICT, "server_busy", None);
            assert_eq!(reply.body["error"]["details"]["action"], "snapshot");
        }

        // Restores: only a ready snapshot of this account.
        for snapshot in ["st-00000000000000ff", "xyz", sid.as_str()] {
            let reply = api
                .call(
                    Method::POST,
                    &actions,
                    &token,
                    Some(json!({"type": "restore", "snapshot": snapshot})),
                )
                .await;
            assert_error(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("snapshot"),
            );
        }
        ready(&api, &account, &sid).await;
        let listed = api.call(Method::GET, &snapshots, &token, None).await;
        assert_eq!(listed.body["items"][0]["state"], "ready", "{label}");
        assert_eq!(listed.body["items"][0]["content"]["bytes"], 8);
        let restored = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "restore", "snapshot": sid})),
            )
            .await;
        assert_eq!(restored.status, StatusCode::ACCEPTED, "{}", restored.body);
        assert_eq!(restored.body["action"]["type"], "restore");
        assert_eq!(restored.body["action"]["to"], sid.as_str());
        let request = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap()
            .spec
            .rebuild
            .unwrap();
        assert_eq!(request.snapshot.as_deref(), Some(sid.as_str()));
        assert_eq!(request.instance_generation, Some(0));
        assert_eq!(
            (request.image.as_str(), request.generation),
            ("debian-12", 1)
        );
        // Busy with it: no other action, no snapshot meanwhile.
        let busy = api
            .call(
                Method::POST,
                &snapshots,
                &token,
                Some(json!({"name": "meanwhile"})),
            )
            .await;
        assert_error(&busy, StatusCode::CONFLICT, "server_busy", None);
        let again = api
            .call(
                Method::POST,
                &actions,
                &token,
                Some(json!({"type": "restore", "snapshot": sid})),
            )
            .await;
        assert_error(&again, StatusCode::CONFLICT, "server_busy", None);

        // Listed with the account's too (those of deleted servers as well).
        let all = api.call(Method::GET, "/v1/snapshots", &token, None).await;
        assert_eq!(all.body["items"][0]["id"], sid.as_str(), "{label}");
        let none = api
            .call(Method::GET, "/v1/snapshots", &other_token, None)
            .await;
        assert_eq!(none.body["items"], json!([]));
        let theirs = api
            .call(
                Method::DELETE,
                &format!("/v1/snapshots/{sid}"),
                &other_token,
                None,
            )
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND);

        // Deleted by its owner only.
        let path = format!("{snapshots}/{sid}");
        let theirs = api.call(Method::DELETE, &path, &other_token, None).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND);
        let deleted = api.call(Method::DELETE, &path, &token, None).await;
        assert_eq!(deleted.status, StatusCode::ACCEPTED, "{}", deleted.body);
        assert_eq!(deleted.body["deleting"], true);
        let gone = api.call(Method::DELETE, &path, &token, None).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{label}");
        let gone = api
            .call(
                Method::DELETE,
                &format!("/v1/snapshots/{sid}"),
                &token,
                None,
            )
            .await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{label}");
        let usage = api
            .call(
                Method::GET,
                &format!("/v1/accounts/{account}"),
                &api.admin,
                None,
            )
            .await;
        assert_eq!(
            usage.body["usage"]["snapshotGib"], 0,
            "{label}: deleted before the controller made anything of it, its charge is given back at once"
        );
    }
}

#[tokio::test]
async fn a_suspended_or_terminated_server_takes_no_snapshot() {
    use stratus_core::policy::SuspensionMode;
    use stratus_core::standing::{Suspension, SuspensionReason};
    let api = api().await;
    let (account, token, ordered) = acme_orders_web1(&api).await;
    let id = ordered["id"].as_str().unwrap().to_owned();
    placed_and_running(&api, &account, &id, 4, 8192).await;
    api.state
        .servers
        .update(Some(&account), &id, |s| {
            s.spec.suspension = Some(Suspension {
                reasons: vec![SuspensionReason::Abuse],
                mode: SuspensionMode::Paused,
            });
            true
        })
        .await
        .unwrap();
    let reply = api
        .call(
            Method::POST,
            &format!("/v1/servers/{id}/snapshots"),
            &token,
            Some(json!({"name": "evidence"})),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "server_suspended", None);
    assert_eq!(api.storage_count().await, 0);
}

#[tokio::test]
async fn r18_daily_backups_are_turned_on_and_off_checked_and_audited_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token, ordered) = acme_orders_web1(&api).await;
        let (_, other_token) = api.customer("Other").await;
        let id = ordered["id"].as_str().unwrap().to_owned();
        assert_eq!(ordered["backups"], json!({"enabled": false, "keep": null}));
        let path = format!("/v1/servers/{id}/backups");
        for (body, status, code, field) in [
            (
                json!({"enabled": true}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("keep"),
            ),
            (
                json!({"enabled": true, "keep": 0}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("keep"),
            ),
            (
                json!({"enabled": true, "keep": 31}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("keep"),
            ),
            (
                json!({"enabled": false, "keep": 3}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("keep"),
            ),
            (
                json!({"enabled": "yes"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
            ),
        ] {
            let reply = api.call(Method::PUT, &path, &token, Some(body)).await;
            assert_error(&reply, status, code, field);
        }
        let theirs = api
            .call(
                Method::PUT,
                &path,
                &other_token,
                Some(json!({"enabled": true, "keep": 3})),
            )
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND);
        let server = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.spec.backups, None,
            "{label}: refusals change nothing"
        );

        let on = api
            .call(
                Method::PUT,
                &path,
                &token,
                Some(json!({"enabled": true, "keep": 7})),
            )
            .await;
        assert_eq!(on.status, StatusCode::OK, "{}", on.body);
        assert_eq!(on.body["backups"], json!({"enabled": true, "keep": 7}));
        let server = api
            .state
            .servers
            .get(Some(&account), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.spec.backups,
            Some(stratus_core::resources::BackupSchedule { keep: 7 })
        );
        let off = api
            .call(Method::PUT, &path, &token, Some(json!({"enabled": false})))
            .await;
        assert_eq!(off.body["backups"]["enabled"], false, "{label}");
        let trail = api
            .state
            .ledger
            .audit()
            .trail(&AuditSubject::server(&server))
            .await
            .unwrap();
        let changes: Vec<&Value> = trail
            .iter()
            .filter(|e| e.action == AuditAction::ServerBackups)
            .map(|e| &e.detail)
            .collect();
        assert_eq!(changes.len(), 2, "{label}: {changes:?}");
    }
}

#[tokio::test]
async fn r18_a_server_is_ordered_from_a_ready_snapshot_in_its_zone_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        api.register_zone("default").await;
        let (account, token) = api.customer("ACME").await;
        let (_, other_token) = api.customer("Other").await;
        let api_quota = format!("/v1/admin/accounts/{account}/quota");
        api.call(
            Method::PUT,
            &api_quota,
            &api.admin,
            Some(json!({"servers": 10})),
        )
        .await;
        let ordered = api
            .call(Method::POST, "/v1/servers", &token, Some(order("web1")))
            .await;
        let id = ordered.body["id"].as_str().unwrap().to_owned();
        placed_and_running(&api, &account, &id, 4, 8192).await;
        let taken = api
            .call(
                Method::POST,
                &format!("/v1/servers/{id}/snapshots"),
                &token,
                Some(json!({"name": "golden"})),
            )
            .await;
        let sid = taken.body["id"].as_str().unwrap().to_owned();
        let from = |extra: Value| {
            let mut body = json!({"name": "web2", "plan": "small"});
            for (key, value) in extra.as_object().unwrap() {
                body[key] = value.clone();
            }
            body
        };
        let servers_before = api.server_count().await;
        for (who, body, field) in [
            (&token, from(json!({"snapshot": sid})), "snapshot"),
            (&token, from(json!({})), "image"),
            (
                &token,
                from(json!({"snapshot": sid, "image": "debian-12"})),
                "image",
            ),
            (
                &token,
                from(json!({"snapshot": "st-00000000000000ff"})),
                "snapshot",
            ),
            (&other_token, from(json!({"snapshot": sid})), "snapshot"),
        ] {
            let reply = api.call(Method::POST, "/v1/servers", who, Some(body)).await;
            assert_error(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some(field),
            );
        }
        ready(&api, &account, &sid).await;
        let wrong_zone = api
            .call(
                Method::POST,
                "/v1/servers",
                &token,
                Some(from(json!({"snapshot": sid, "zone": "b"}))),
            )
            .await;
        assert_error(
            &wrong_zone,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("zone"),
        );
        assert_eq!(api.server_count().await, servers_before, "{label}");

        let made = api
            .call(
                Method::POST,
                "/v1/servers",
                &token,
                Some(from(json!({"snapshot": sid}))),
            )
            .await;
        assert_eq!(made.status, StatusCode::ACCEPTED, "{}", made.body);
        assert_eq!(made.body["image"], "debian-12");
        assert_eq!(made.body["zone"], "default", "the zone its copy is kept in");
        let new_id = made.body["id"].as_str().unwrap();
        let spec = api
            .state
            .servers
            .get(Some(&account), new_id)
            .await
            .unwrap()
            .unwrap()
            .spec;
        assert_eq!(spec.from_snapshot.as_deref(), Some(sid.as_str()), "{label}");
    }
}

#[tokio::test]
async fn r18_a_restore_fact_names_latest_or_a_copied_backup_of_its_server() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token, ordered) = acme_orders_web1(&api).await;
        let id = ordered["id"].as_str().unwrap().to_owned();
        placed_and_running(&api, &account, &id, 4, 8192).await;
        let restore = |n: u32, source: &str| json!({"id": format!("restore-{n}"), "type": "restore", "server": id, "source": source});
        // Nothing copied yet: neither `latest` nor a name is a source.
        for (n, source) in [(1, "latest"), (2, "backup-of-last-week"), (3, "")] {
            let reply = report(&api, &api.admin, &account, restore(n, source)).await;
            assert_error(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("source"),
            );
        }
        assert_eq!(facts_of(&api, &account).await, 0, "{label}");
        let taken = api
            .call(
                Method::POST,
                &format!("/v1/servers/{id}/snapshots"),
                &token,
                Some(json!({"name": "nightly"})),
            )
            .await;
        let sid = taken.body["id"].as_str().unwrap().to_owned();
        api.state
            .storage
            .update(Some(&account), &sid, |s| {
                if let Some(of) = s.spec.snapshot_of.as_mut() {
                    of.backup = true;
                }
                true
            })
            .await
            .unwrap();
        ready(&api, &account, &sid).await;
        let reply = report(&api, &api.admin, &account, restore(4, "latest")).await;
        assert!(reply.status.is_success(), "{label}: {}", reply.body);
        let facts = api
            .state
            .ledger
            .facts()
            .of_account(&account, 0, 10)
            .await
            .unwrap();
        assert_eq!(facts.len(), 1);
        assert_eq!(
            facts[0].fact["source"],
            sid.as_str(),
            "{label}: `latest` is recorded as the backup it meant: {:?}",
            facts[0].fact
        );

        // Being deleted, then its record gone (its retention passed): its
        // backup outlives it, but a restore of it would never be carried
        // out, so it is refused and recorded nowhere.
        api.state.servers.delete(Some(&account), &id).await.unwrap();
        let reply = report(&api, &api.admin, &account, restore(6, "latest")).await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("server"),
        );
        api.state
            .servers
            .update(Some(&account), &id, |s| {
                s.metadata.finalizers = None;
                true
            })
            .await
            .unwrap();
        assert!(
            api.state
                .servers
                .get(Some(&account), &id)
                .await
                .unwrap()
                .is_none(),
            "{label}"
        );
        let reply = report(&api, &api.admin, &account, restore(5, "latest")).await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("server"),
        );
        assert_eq!(facts_of(&api, &account).await, 1, "{label}");
    }
}

/// An account keeping a month of daily backups of its servers has
/// thousands: `GET /v1/snapshots` gives them a page at a time, oldest
/// first, each once, its storage left out; bad paging names its parameter.
#[tokio::test]
async fn the_accounts_snapshots_are_listed_a_page_at_a_time_on_both_databases() {
    use stratus_core::resources::{SnapshotOf, StorageSubscription, StorageSubscriptionSpec};
    const TAKEN: u64 = 1_050;
    for scratch in testing::both().await {
        let label = scratch.label;
        let api = api_on(scratch).await;
        let (account, token) = api.customer("ACME").await;
        let (other, _) = api.customer("Other").await;
        let object = |id: u64, version: Option<u64>| {
            let mut spec = StorageSubscriptionSpec::snapshot(
                format!("backup-{id}"),
                1,
                SnapshotOf {
                    server: format!("vs-{:016x}", id % 35),
                    image: "debian-12".into(),
                    instance_generation: 0,
                    version: version.unwrap_or(0),
                    backup: true,
                },
            );
            if version.is_none() {
                // A storage subscription of the account, no snapshot.
                spec.snapshot_of = None;
            }
            let mut snapshot = StorageSubscription::new(&format!("st-{id:016x}"), spec);
            snapshot.metadata.namespace = Some(account.clone());
            snapshot
        };
        // Created in another order than taken; two taken in one millisecond.
        for id in 1..=TAKEN {
            let version = 1_765_000_000_000 + (id * 7919) % TAKEN;
            api.state
                .storage
                .create(&object(id, Some(version.min(1_765_000_001_000))))
                .await
                .unwrap();
        }
        api.state
            .storage
            .create(&object(TAKEN + 1, None))
            .await
            .unwrap();

        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                None => "/v1/snapshots?limit=500".to_owned(),
                Some(cursor) => format!("/v1/snapshots?limit=500&cursor={cursor}"),
            };
            let page = api.call(Method::GET, &path, &token, None).await;
            assert_eq!(page.status, StatusCode::OK, "{label}: {}", page.body);
            pages += 1;
            seen.extend(
                page.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["id"].as_str().unwrap().to_owned()),
            );
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{label}");
        assert_eq!(seen.len() as u64, TAKEN, "{label}: each once, no storage");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len() as u64, TAKEN, "{label}");
        let taken = |id: &str| {
            let id = u64::from_str_radix(id.trim_start_matches("st-"), 16).unwrap();
            (
                (1_765_000_000_000 + (id * 7919) % TAKEN).min(1_765_000_001_000),
                id,
            )
        };
        assert!(
            seen.windows(2).all(|w| taken(&w[0]) < taken(&w[1])),
            "{label}: oldest first"
        );

        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            (&format!("account={other}") as &str, "account"),
        ] {
            let refused = api
                .call(Method::GET, &format!("/v1/snapshots?{query}"), &token, None)
                .await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{label}: {query}");
            assert_eq!(
                refused.body["error"]["details"]["field"], field,
                "{label}: {query}"
            );
        }
    }
}
