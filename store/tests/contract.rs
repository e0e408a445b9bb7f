//! The resource store contract, run on every backend (SQLite and PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use stratus_core::ids::{AccountId, HypervisorName, TokenId};
use stratus_core::resources::{Account, PowerState, VirtualServer, VirtualServerStatus};
use stratus_core::testing as fixtures;
use stratus_store::ledger::{
    Actor, AuditAction, AuditEntry, AuditSubject, IdempotencyClaim, Ledger, TokenRecord, TokenScope,
};
use stratus_store::objects::Deletion;
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::vault::Vault;
use stratus_store::{
    KubeObjectStore, ObjectStore, Resources, SqlObjectStore, StoreError, WatchEvent,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn server(namespace: &str, name: &str) -> VirtualServer {
    fixtures::server(name).in_account(namespace).build()
}

fn account(name: &str) -> Account {
    fixtures::account(name).build()
}

/// A resource store to run the contract on: the embedded store on SQLite and
/// PostgreSQL, and the Kubernetes backend (kube-rs) talking to the
/// Kubernetes API as served from an embedded store.
struct Backend {
    label: &'static str,
    store: Arc<dyn ObjectStore>,
    _scratch: ScratchDatabase,
}

impl Backend {
    fn resources(&self) -> (Resources<VirtualServer>, Resources<Account>) {
        (
            Resources::new(self.store.clone()),
            Resources::new(self.store.clone()),
        )
    }
}

async fn backends() -> Vec<Backend> {
    let mut backends = Vec::new();
    for scratch in testing::both().await {
        let store = SqlObjectStore::new(scratch.db.clone(), testing::clock())
            .with_poll_interval(Duration::from_millis(50));
        backends.push(Backend {
            label: scratch.label,
            store: Arc::new(store),
            _scratch: scratch,
        });
    }
    let scratch = testing::sqlite().await;
    let served: Arc<dyn ObjectStore> = Arc::new(
        SqlObjectStore::new(scratch.db.clone(), testing::clock())
            .with_poll_interval(Duration::from_millis(50)),
    );
    let client = kube::Client::new(testing::apiserver::router(served), "default");
    backends.push(Backend {
        label: "kubernetes",
        store: Arc::new(KubeObjectStore::new(client, "stratus-test")),
        _scratch: scratch,
    });
    backends
}

fn stores(
    scratch: &ScratchDatabase,
) -> (SqlObjectStore, Resources<VirtualServer>, Resources<Account>) {
    let store = SqlObjectStore::new(scratch.db.clone(), testing::clock())
        .with_poll_interval(Duration::from_millis(50));
    let shared: Arc<dyn ObjectStore> = Arc::new(store.clone());
    (
        store,
        Resources::new(shared.clone()),
        Resources::new(shared),
    )
}

fn rv(object: &VirtualServer) -> u64 {
    object
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn create_assigns_metadata_and_rejects_duplicates() {
    for backend in backends().await {
        let (servers, _) = backend.resources();
        let created = servers.create(&server("acc-1", "vs-1")).await.unwrap();
        let meta = &created.metadata;
        assert!(meta.uid.is_some(), "{}", backend.label);
        assert_eq!(meta.generation, Some(1), "{}", backend.label);
        assert!(meta.creation_timestamp.is_some(), "{}", backend.label);
        assert_eq!(
            servers.get(Some("acc-1"), "vs-1").await.unwrap(),
            Some(created.clone())
        );
        let err = servers.create(&server("acc-1", "vs-1")).await.unwrap_err();
        assert!(
            matches!(err, StoreError::AlreadyExists { .. }),
            "{}: {err}",
            backend.label
        );
        // Same name in another namespace is another object.
        servers.create(&server("acc-2", "vs-1")).await.unwrap();
        assert_eq!(servers.list(Some("acc-1")).await.unwrap().items.len(), 1);
        assert_eq!(servers.list(None).await.unwrap().items.len(), 2);
        assert!(servers.get(Some("acc-3"), "vs-1").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn find_by_name_looks_in_every_namespace_and_skips_deleted() {
    for backend in backends().await {
        let label = backend.label;
        let (servers, _) = backend.resources();
        servers.create(&server("acc-a", "web1")).await.unwrap();
        servers.create(&server("acc-b", "web1")).await.unwrap();
        servers.create(&server("acc-b", "web2")).await.unwrap();
        let found = servers.find_by_name("web1").await.unwrap();
        let namespaces: Vec<_> = found
            .iter()
            .filter_map(|s| s.metadata.namespace.clone())
            .collect();
        assert_eq!(namespaces, ["acc-a", "acc-b"], "{label}");
        servers.delete(Some("acc-a"), "web1").await.unwrap();
        assert_eq!(
            servers.find_by_name("web1").await.unwrap().len(),
            1,
            "{label}"
        );
        assert!(
            servers.find_by_name("web3").await.unwrap().is_empty(),
            "{label}"
        );
        assert!(
            servers.find_by_name("web1,x").await.unwrap().is_empty(),
            "{label}: a name no object can have finds nothing"
        );
    }
}

#[tokio::test]
async fn pages_walk_every_live_object_once_in_key_order() {
    for backend in backends().await {
        let label = backend.label;
        let (servers, accounts) = backend.resources();
        let mut live = Vec::new();
        for (namespace, count) in [("acc-b", 3), ("acc-a", 5)] {
            for i in 0..count {
                servers
                    .create(&server(namespace, &format!("web{i}")))
                    .await
                    .unwrap();
                live.push(format!("{namespace}/web{i}"));
            }
        }
        servers.delete(Some("acc-a"), "web2").await.unwrap();
        live.retain(|key| key != "acc-a/web2");
        live.sort();

        let key = |s: &VirtualServer| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            )
        };
        let mut seen = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let page = servers.list_page(None, 3, token.as_deref()).await.unwrap();
            assert!(page.items.len() <= 3, "{label}");
            seen.extend(page.items.iter().map(key));
            pages += 1;
            match page.continue_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, live, "{label}: every live object once, in key order");
        assert_eq!(pages, 3, "{label}: 7 objects in pages of 3");

        let first = servers.list_page(Some("acc-b"), 2, None).await.unwrap();
        let names: Vec<_> = first.items.iter().map(key).collect();
        assert_eq!(names, ["acc-b/web0", "acc-b/web1"], "{label}");
        let next = first.continue_token.expect("a second page");
        let last = servers
            .list_page(Some("acc-b"), 2, Some(&next))
            .await
            .unwrap();
        assert_eq!(
            last.items.iter().map(key).collect::<Vec<_>>(),
            ["acc-b/web2"]
        );
        assert_eq!(last.continue_token, None, "{label}: a full last page ends");

        // A token handed out for one account's listing never reads another's.
        let foreign = servers.list_page(Some("acc-a"), 2, Some(&next)).await;
        assert!(
            matches!(foreign, Err(StoreError::InvalidContinue(_))),
            "{label}: {foreign:?}"
        );
        let forged = servers.list_page(Some("acc-a"), 2, Some("forged")).await;
        assert!(
            matches!(forged, Err(StoreError::InvalidContinue(_))),
            "{label}: {forged:?}"
        );

        for name in ["acc-3", "acc-1", "acc-2"] {
            accounts.create(&account(name)).await.unwrap();
        }
        let first = accounts.list_page(None, 2, None).await.unwrap();
        let rest = accounts
            .list_page(None, 2, first.continue_token.as_deref())
            .await
            .unwrap();
        let names: Vec<_> = first
            .items
            .iter()
            .chain(&rest.items)
            .filter_map(|a| a.metadata.name.clone())
            .collect();
        assert_eq!(names, ["acc-1", "acc-2", "acc-3"], "{label}");
        assert_eq!(rest.continue_token, None, "{label}");
    }
}

#[tokio::test]
async fn scope_is_enforced() {
    for backend in backends().await {
        let (servers, accounts) = backend.resources();
        let mut no_namespace = server("x", "vs-1");
        no_namespace.metadata.namespace = None;
        assert!(
            matches!(
                servers.create(&no_namespace).await,
                Err(StoreError::Invalid(_))
            ),
            "{}",
            backend.label
        );
        let mut namespaced_account = account("acc-1");
        namespaced_account.metadata.namespace = Some("x".into());
        assert!(matches!(
            accounts.create(&namespaced_account).await,
            Err(StoreError::Invalid(_))
        ));
        accounts.create(&account("acc-1")).await.unwrap();
        assert!(accounts.get(None, "acc-1").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn replace_checks_resource_version_and_moves_generation_only_on_spec_change() {
    for backend in backends().await {
        let (servers, _) = backend.resources();
        let created = servers.create(&server("acc-1", "vs-1")).await.unwrap();
        servers
            .patch_status(
                Some("acc-1"),
                "vs-1",
                &VirtualServerStatus {
                    provisioned: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // `created` now carries a stale resourceVersion.
        let mut stale = created.clone();
        stale.spec.power = PowerState::Stopped;
        let err = servers.replace(&stale).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { .. }),
            "{}: {err}",
            backend.label
        );

        let mut current = servers.get(Some("acc-1"), "vs-1").await.unwrap().unwrap();
        current.metadata.labels = Some([("tier".to_owned(), "gold".to_owned())].into());
        let relabelled = servers.replace(&current).await.unwrap();
        assert_eq!(relabelled.metadata.generation, Some(1), "{}", backend.label);
        assert!(rv(&relabelled) > rv(&current));

        let mut changed = relabelled.clone();
        changed.spec.power = PowerState::Stopped;
        changed.status = None; // replace never touches status
        let updated = servers.replace(&changed).await.unwrap();
        assert_eq!(updated.metadata.generation, Some(2), "{}", backend.label);
        assert!(updated.status.unwrap().provisioned, "{}", backend.label);
        assert_eq!(updated.metadata.uid, created.metadata.uid);
    }
}

#[tokio::test]
async fn status_patch_is_idempotent() {
    for backend in backends().await {
        let (servers, _) = backend.resources();
        servers.create(&server("acc-1", "vs-1")).await.unwrap();
        let status = VirtualServerStatus {
            hypervisor: HypervisorName::parse("hv1"),
            ..Default::default()
        };
        let first = servers
            .patch_status(Some("acc-1"), "vs-1", &status)
            .await
            .unwrap();
        let second = servers
            .patch_status(Some("acc-1"), "vs-1", &status)
            .await
            .unwrap();
        assert_eq!(
            rv(&first),
            rv(&second),
            "{}: unchanged status must not bump the revision",
            backend.label
        );
        assert_eq!(first.metadata.generation, Some(1));
        let err = servers
            .patch_status(Some("acc-1"), "vs-404", &status)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
    }
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    for backend in backends().await {
        let (servers, _) = backend.resources();
        servers.create(&server("acc-1", "plain")).await.unwrap();
        assert!(matches!(
            servers.delete(Some("acc-1"), "plain").await.unwrap(),
            Deletion::Deleted
        ));
        assert!(servers.get(Some("acc-1"), "plain").await.unwrap().is_none());
        assert!(matches!(
            servers.delete(Some("acc-1"), "plain").await,
            Err(StoreError::NotFound { .. })
        ));

        servers.create(&server("acc-1", "held")).await.unwrap();
        servers
            .add_finalizer(Some("acc-1"), "held", "stratus.dev/teardown")
            .await
            .unwrap();
        servers
            .add_finalizer(Some("acc-1"), "held", "stratus.dev/teardown")
            .await
            .unwrap();
        let Deletion::Pending(pending) = servers.delete(Some("acc-1"), "held").await.unwrap()
        else {
            panic!(
                "{}: deletion with a finalizer must be pending",
                backend.label
            );
        };
        assert!(pending.metadata.deletion_timestamp.is_some());
        assert_eq!(
            pending.metadata.finalizers.as_deref(),
            Some(&["stratus.dev/teardown".to_owned()][..])
        );
        // A second delete changes nothing.
        let Deletion::Pending(again) = servers.delete(Some("acc-1"), "held").await.unwrap() else {
            panic!()
        };
        assert_eq!(rv(&again), rv(&pending));
        assert!(servers.get(Some("acc-1"), "held").await.unwrap().is_some());
        servers
            .remove_finalizer(Some("acc-1"), "held", "stratus.dev/teardown")
            .await
            .unwrap();
        assert!(
            servers.get(Some("acc-1"), "held").await.unwrap().is_none(),
            "{}",
            backend.label
        );
        // The name can be used again, as a new object.
        let reborn = servers.create(&server("acc-1", "held")).await.unwrap();
        assert_ne!(reborn.metadata.uid, pending.metadata.uid);
        assert!(reborn.metadata.deletion_timestamp.is_none());
    }
}

fn describe(event: WatchEvent<VirtualServer>) -> String {
    match event {
        WatchEvent::Added(o) => format!("added {}", o.metadata.name.unwrap()),
        WatchEvent::Modified(o) => format!(
            "modified {} provisioned={}",
            o.metadata.name.unwrap(),
            o.status.unwrap().provisioned
        ),
        WatchEvent::Deleted(o) => format!("deleted {}", o.metadata.name.unwrap()),
        WatchEvent::Bookmark(rv) => format!("bookmark {rv}"),
    }
}

#[tokio::test]
async fn watch_streams_each_change_as_it_happens() {
    for backend in backends().await {
        let (servers, accounts) = backend.resources();
        servers.create(&server("acc-1", "before")).await.unwrap();
        let start = servers.list(None).await.unwrap().resource_version;
        let mut watch = Box::pin(servers.watch(&start));
        let mut next = async || {
            describe(
                tokio::time::timeout(TIMEOUT, watch.next())
                    .await
                    .expect("watch event")
                    .unwrap()
                    .unwrap(),
            )
        };

        servers.create(&server("acc-1", "vs-1")).await.unwrap();
        accounts.create(&account("acc-1")).await.unwrap(); // other kinds are not in this watch
        assert_eq!(next().await, "added vs-1", "{}", backend.label);
        servers
            .patch_status(
                Some("acc-1"),
                "vs-1",
                &VirtualServerStatus {
                    provisioned: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            next().await,
            "modified vs-1 provisioned=true",
            "{}",
            backend.label
        );
        servers.delete(Some("acc-1"), "vs-1").await.unwrap();
        assert_eq!(next().await, "deleted vs-1", "{}", backend.label);
    }
}

/// Embedded store: a watcher that reads late sees each changed object once,
/// in its latest state, in revision order (like a kube watcher that fell
/// behind and relisted). An API server keeps a window of every event instead.
#[tokio::test]
async fn late_watch_sees_latest_state_of_each_object_in_order() {
    for scratch in testing::both().await {
        let (_, servers, _) = stores(&scratch);
        let start = servers.list(None).await.unwrap().resource_version;
        servers.create(&server("acc-1", "vs-1")).await.unwrap();
        servers.create(&server("acc-1", "vs-2")).await.unwrap();
        servers
            .patch_status(
                Some("acc-1"),
                "vs-1",
                &VirtualServerStatus {
                    provisioned: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        servers.delete(Some("acc-1"), "vs-2").await.unwrap();
        let mut watch = Box::pin(servers.watch(&start));
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(describe(
                tokio::time::timeout(TIMEOUT, watch.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            ));
        }
        assert_eq!(seen, ["added vs-1", "deleted vs-2"], "{}", scratch.label);
    }
}

#[tokio::test]
async fn compacted_history_forces_a_relist() {
    for scratch in testing::both().await {
        let (store, servers, _) = stores(&scratch);
        servers.create(&server("acc-1", "vs-1")).await.unwrap();
        servers.delete(Some("acc-1"), "vs-1").await.unwrap();
        let current = store.current_revision().await.unwrap();
        assert_eq!(
            store.compact(current).await.unwrap(),
            1,
            "{}",
            scratch.label
        );
        let mut watch = Box::pin(servers.watch("0"));
        let event = tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(event, Err(StoreError::Gone(ref v)) if v == "0"),
            "{}",
            scratch.label
        );

        // The list+watch helper recovers by listing again.
        servers.create(&server("acc-1", "vs-2")).await.unwrap();
        let mut watcher = Box::pin(servers.watcher(Duration::from_millis(10)));
        let first = tokio::time::timeout(TIMEOUT, watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, WatchEvent::Added(ref o) if o.metadata.name.as_deref() == Some("vs-2"))
        );
        servers.create(&server("acc-1", "vs-3")).await.unwrap();
        let next = tokio::time::timeout(TIMEOUT, watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(next, WatchEvent::Added(ref o) if o.metadata.name.as_deref() == Some("vs-3")),
            "{}",
            scratch.label
        );
    }
}

#[tokio::test]
async fn concurrent_writers_never_lose_an_update() {
    for backend in backends().await {
        let (servers, _) = backend.resources();
        servers.create(&server("acc-1", "counter")).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let servers = servers.clone();
            tasks.push(tokio::spawn(async move {
                servers
                    .create(&server("acc-1", &format!("vs-{i}")))
                    .await
                    .unwrap();
                servers
                    .update(Some("acc-1"), "counter", |s| {
                        s.spec.reboot_requests += 1;
                        true
                    })
                    .await
                    .unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let counter = servers
            .get(Some("acc-1"), "counter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counter.spec.reboot_requests, 16, "{}", backend.label);
        let list = servers.list(Some("acc-1")).await.unwrap();
        assert_eq!(list.items.len(), 17);
        let mut versions: Vec<u64> = list.items.iter().map(rv).collect();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(
            versions.len(),
            17,
            "{}: every write gets its own revision",
            backend.label
        );
    }
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_revocable() {
    for scratch in testing::both().await {
        let ledger = Ledger::new(scratch.db.clone());
        let tokens = ledger.tokens();
        let (id, account) = (TokenId::from_random(1), AccountId::from_random(1));
        let record = TokenRecord {
            id: id.clone(),
            account_id: Some(account.clone()),
            name: "ci".into(),
            scope: TokenScope::Customer,
            created_at: 1000,
            revoked_at: None,
        };
        tokens.insert(&record, "hash-1").await.unwrap();
        assert_eq!(
            tokens.by_hash("hash-1").await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(tokens.by_hash("hash-2").await.unwrap(), None);
        assert!(!tokens.has_active_admin().await.unwrap());
        let revoked = tokens.revoke(&id, 2000).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(2000), "{}", scratch.label);
        let again = tokens.revoke(&id, 3000).await.unwrap().unwrap();
        assert_eq!(
            again.revoked_at,
            Some(2000),
            "{}: first revocation time is kept",
            scratch.label
        );
        assert_eq!(tokens.of_account(&account).await.unwrap().len(), 1);
        assert!(
            tokens
                .revoke(&TokenId::from_random(404), 1)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn idempotency_key_binds_once_under_concurrency() {
    for scratch in testing::both().await {
        let ledger = Ledger::new(scratch.db.clone());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                ledger
                    .idempotency()
                    .claim(
                        &AccountId::from_random(1),
                        "k1",
                        "h1",
                        &format!("vs-{i}"),
                        1,
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut claimed = 0;
        let mut bound = std::collections::BTreeSet::new();
        for task in tasks {
            match task.await.unwrap() {
                IdempotencyClaim::Claimed => claimed += 1,
                IdempotencyClaim::Existing { resource_name, .. } => {
                    bound.insert(resource_name);
                }
            }
        }
        assert_eq!(claimed, 1, "{}", scratch.label);
        assert!(bound.len() <= 1, "{}: {bound:?}", scratch.label);
        // Another account may use the same key.
        let other = ledger
            .idempotency()
            .claim(&AccountId::from_random(2), "k1", "h9", "vs-x", 1)
            .await
            .unwrap();
        assert_eq!(other, IdempotencyClaim::Claimed);
    }
}

#[tokio::test]
async fn an_idempotency_key_remembers_that_its_resource_was_created() {
    for scratch in testing::both().await {
        let keys = Ledger::new(scratch.db.clone());
        let keys = keys.idempotency();
        let account = AccountId::from_random(1);
        assert_eq!(
            keys.claim(&account, "k1", "h1", "vs-1", 1).await.unwrap(),
            IdempotencyClaim::Claimed
        );
        let before = keys.claim(&account, "k1", "h1", "vs-2", 2).await.unwrap();
        assert_eq!(
            before,
            IdempotencyClaim::Existing {
                request_hash: "h1".into(),
                resource_name: "vs-1".into(),
                fulfilled: false,
            },
            "{}: the first attempt has not created it yet",
            scratch.label
        );
        keys.fulfil(&account, "k1", 3).await.unwrap();
        keys.fulfil(&account, "k1", 4).await.unwrap();
        let after = keys.claim(&account, "k1", "h1", "vs-3", 5).await.unwrap();
        assert!(
            matches!(after, IdempotencyClaim::Existing { fulfilled: true, ref resource_name, .. } if resource_name == "vs-1"),
            "{}: {after:?}",
            scratch.label
        );
    }
}

#[tokio::test]
async fn audit_log_appends_and_filters_by_subject() {
    for scratch in testing::both().await {
        let ledger = Ledger::new(scratch.db.clone());
        let (one, ten) = (AccountId::from_random(1), AccountId::from_random(0x10));
        let server = |account: &AccountId, name: &str| AuditSubject::Server {
            account: account.to_string(),
            name: name.into(),
        };
        for (subject, action) in [
            (server(&one, "vs-1"), AuditAction::ServerOrder),
            (server(&one, "vs-1"), AuditAction::ServerStop),
            (server(&ten, "vs-2"), AuditAction::ServerOrder),
            (AuditSubject::account(&one), AuditAction::AccountCreate),
        ] {
            ledger
                .audit()
                .append(&AuditEntry {
                    at: 1,
                    actor: Actor::Token(TokenId::from_random(1)),
                    action,
                    subject,
                    detail: serde_json::json!({"plan": "small"}),
                })
                .await
                .unwrap();
        }
        let trail = ledger.audit().trail(&server(&one, "vs-1")).await.unwrap();
        assert_eq!(
            trail.iter().map(|e| e.action).collect::<Vec<_>>(),
            [AuditAction::ServerOrder, AuditAction::ServerStop],
            "{}",
            scratch.label
        );
        assert_eq!(trail[0].actor, Actor::Token(TokenId::from_random(1)));
        assert_eq!(trail[0].detail["plan"], "small");
        let account = ledger.audit().account_trail(&one).await.unwrap();
        assert_eq!(account.len(), 3, "{}: {account:?}", scratch.label);
    }
}

#[tokio::test]
async fn vault_encrypts_and_binds_to_key_and_name() {
    for scratch in testing::both().await {
        let vault = Vault::new(scratch.db.clone(), &[7u8; 32], testing::clock()).unwrap();
        vault
            .put("hypervisor/hv1", "s3cret-agent-token", 1)
            .await
            .unwrap();
        assert_eq!(
            vault.get("hypervisor/hv1").await.unwrap().as_deref(),
            Some("s3cret-agent-token")
        );
        let stored: String =
            sqlx::query_scalar("SELECT ciphertext FROM credentials WHERE name = 'hypervisor/hv1'")
                .fetch_one(scratch.db.pool())
                .await
                .unwrap();
        assert!(!stored.contains("s3cret"), "{}", scratch.label);
        let other_key = Vault::new(scratch.db.clone(), &[8u8; 32], testing::clock()).unwrap();
        assert!(matches!(
            other_key.get("hypervisor/hv1").await,
            Err(StoreError::Decrypt(_))
        ));
        // A ciphertext moved onto another name does not decrypt.
        sqlx::query("INSERT INTO credentials (name, nonce, ciphertext, created_at) SELECT 'hypervisor/hv2', nonce, ciphertext, 1 FROM credentials WHERE name = 'hypervisor/hv1'")
            .execute(scratch.db.pool())
            .await
            .unwrap();
        assert!(
            matches!(
                vault.get("hypervisor/hv2").await,
                Err(StoreError::Decrypt(_))
            ),
            "{}",
            scratch.label
        );
        vault.delete("hypervisor/hv1").await.unwrap();
        assert_eq!(vault.get("hypervisor/hv1").await.unwrap(), None);
    }
}

#[test]
fn master_key_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let key = Vault::load_or_create_key(&path).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(Vault::load_or_create_key(&path).unwrap(), key);
    std::fs::write(&path, "short").unwrap();
    assert!(Vault::load_or_create_key(&path).is_err());
}

/// Several processes (API, controllers) may open a new SQLite database at
/// the same moment; migrations must run once.
#[tokio::test]
async fn concurrent_first_opens_of_a_sqlite_database_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let opens = (0..6).map(|_| {
        let url = url.clone();
        // Each open is its own pool, as in separate processes.
        tokio::spawn(async move { stratus_store::Database::connect(&url).await.map(|_| ()) })
    });
    for result in futures::future::join_all(opens).await {
        result.unwrap().unwrap();
    }
}

/// Creation and deletion times come from the injected clock, so a test clock
/// moves them too.
#[tokio::test]
async fn object_timestamps_come_from_the_injected_clock() {
    for scratch in testing::both().await {
        let clock = testing::clock();
        let store: Arc<dyn ObjectStore> =
            Arc::new(SqlObjectStore::new(scratch.db.clone(), clock.clone()));
        let servers = Resources::<VirtualServer>::new(store);
        let created = servers
            .create(&fixtures::server("vs-1").finalized().build())
            .await
            .unwrap();
        let created_at = created.metadata.creation_timestamp.unwrap().0;
        assert_eq!(created_at, stratus_core::test_time(), "{}", scratch.label);
        clock.advance(jiff::SignedDuration::from_hours(24 * 15));
        let Deletion::Pending(deleting) = servers
            .delete(Some(fixtures::ACCOUNT), "vs-1")
            .await
            .unwrap()
        else {
            panic!("{}: a finalized object waits", scratch.label);
        };
        assert_eq!(
            deleting.metadata.deletion_timestamp.unwrap().0,
            stratus_core::test_time() + jiff::SignedDuration::from_hours(24 * 15),
            "{}",
            scratch.label
        );
    }
}

#[tokio::test]
async fn mac_addresses_are_unique_while_held_and_sticky_per_holder() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let macs = ledger.macs();
        let first = macs.allocate("uid-1", "acc-1/vs-1", 1).await.unwrap();
        assert!(first.starts_with("52:54:00:"), "{first}");
        assert_eq!(
            macs.allocate("uid-1", "acc-1/vs-1", 2).await.unwrap(),
            first,
            "{label}: a retry gets the same address"
        );
        // Racing allocations for distinct holders never share an address.
        let racing = (0..64).map(|i| {
            let ledger = ledger.clone();
            async move {
                ledger
                    .macs()
                    .allocate(&format!("uid-r{i}"), "acc-1/r", 3)
                    .await
                    .unwrap()
            }
        });
        let mut handed: Vec<String> = futures::future::join_all(racing).await;
        handed.push(first.clone());
        handed.sort();
        handed.dedup();
        assert_eq!(handed.len(), 65, "{label}");
        // A held address cannot be adopted by another; a released one can.
        assert!(!macs.adopt("uid-2", "acc-2/vs-2", &first, 4).await.unwrap());
        macs.release("uid-1", 5).await.unwrap();
        macs.release("uid-1", 6).await.unwrap();
        assert_eq!(macs.held_by("uid-1").await.unwrap(), None);
        assert!(macs.adopt("uid-2", "acc-2/vs-2", &first, 7).await.unwrap());
        assert_eq!(macs.held().await.unwrap(), 65, "{label}");
    }
}

#[tokio::test]
async fn concurrent_orders_never_take_an_account_past_its_quota() {
    use stratus_core::quota::{Quota, QuotaKind, Usage};
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let server = Usage {
            servers: 1,
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 25,
            storage_gib: 0,
            snapshot_gib: 0,
        };
        let limits = Quota {
            servers: Some(10),
            vcpus: Some(14),
            ..Default::default()
        };
        // 40 orders race for room for 7 (the vCPU limit binds first).
        let racing = (0..40).map(|i| {
            let ledger = ledger.clone();
            async move {
                ledger
                    .quotas()
                    .charge("acc-1", &format!("acc-1/vs-{i}"), server, limits, 1)
                    .await
                    .unwrap()
            }
        });
        let outcomes = futures::future::join_all(racing).await;
        let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(accepted, 7, "{label}");
        let refused = outcomes.iter().find_map(|o| o.err()).unwrap();
        assert_eq!(refused.quota, QuotaKind::Vcpus, "{label}");
        assert_eq!(
            (refused.limit, refused.used, refused.requested),
            (14, 14, 2)
        );
        let quotas = ledger.quotas();
        assert_eq!(
            quotas.usage("acc-1").await.unwrap(),
            Usage {
                servers: 7,
                vcpus: 14,
                memory_mib: 7 * 2048,
                disk_gib: 7 * 25,
                storage_gib: 0,
                snapshot_gib: 0,
            },
            "{label}"
        );
        // Charging an accepted order again (a retry) changes nothing.
        let accepted_name = (0..40)
            .find(|i| outcomes[*i].is_ok())
            .map(|i| format!("acc-1/vs-{i}"))
            .unwrap();
        assert_eq!(
            quotas
                .charge("acc-1", &accepted_name, server, limits, 2)
                .await
                .unwrap(),
            Ok(())
        );
        assert_eq!(quotas.usage("acc-1").await.unwrap().servers, 7, "{label}");
        // A release returns the charge once; another account is untouched.
        quotas
            .charge("acc-2", "acc-2/vs-1", server, Quota::default(), 3)
            .await
            .unwrap()
            .unwrap();
        quotas.release(&accepted_name).await.unwrap();
        quotas.release(&accepted_name).await.unwrap();
        quotas.release("acc-1/never-charged").await.unwrap();
        assert_eq!(quotas.usage("acc-1").await.unwrap().vcpus, 12, "{label}");
        assert_eq!(quotas.usage("acc-2").await.unwrap().servers, 1, "{label}");
        assert!(
            quotas
                .charge("acc-1", "acc-1/vs-new", server, limits, 4)
                .await
                .unwrap()
                .is_ok()
        );
    }
}

#[tokio::test]
async fn r27_storage_is_charged_against_its_own_quota_and_given_back() {
    use stratus_core::quota::{Quota, QuotaKind, Usage};
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let quotas = ledger.quotas();
        let limits = Quota {
            disk_gib: Some(25),
            storage_gib: Some(1000),
            ..Default::default()
        };
        // A server's disk and storage are counted apart.
        let server = Usage {
            servers: 1,
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 25,
            storage_gib: 0,
            snapshot_gib: 0,
        };
        quotas
            .charge("acc-1", "acc-1/vs-1", server, limits, 1)
            .await
            .unwrap()
            .unwrap();
        // 30 orders of 100 GiB race for 1000 GiB.
        let racing = (0..30).map(|i| {
            let ledger = ledger.clone();
            async move {
                ledger
                    .quotas()
                    .charge(
                        "acc-1",
                        &format!("acc-1/st-{i}"),
                        Usage::of_storage(100),
                        limits,
                        2,
                    )
                    .await
                    .unwrap()
            }
        });
        let outcomes = futures::future::join_all(racing).await;
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 10, "{label}");
        let refused = outcomes.iter().find_map(|o| o.err()).unwrap();
        assert_eq!(refused.quota, QuotaKind::StorageGib, "{label}");
        assert_eq!((refused.limit, refused.used), (1000, 1000), "{label}");
        let usage = quotas.usage("acc-1").await.unwrap();
        assert_eq!((usage.disk_gib, usage.storage_gib), (25, 1000), "{label}");
        let accepted = (0..30).find(|i| outcomes[*i].is_ok()).unwrap();
        quotas
            .release(&format!("acc-1/st-{accepted}"))
            .await
            .unwrap();
        let usage = quotas.usage("acc-1").await.unwrap();
        assert_eq!((usage.disk_gib, usage.storage_gib), (25, 900), "{label}");
    }
}
