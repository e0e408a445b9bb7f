//! What every REST API test file shares: an API on a scratch database
//! (SQLite or PostgreSQL), callers, and the checks of a refusal.

#![allow(dead_code, unused_imports)]

pub use axum::body::Body;
pub use axum::http::{Method, Request, StatusCode};
pub use http_body_util::BodyExt;
pub use prometheus_client::registry::Registry;
pub use serde_json::{Value, json};
pub use std::sync::Arc;
pub use std::time::Duration;
pub use stratus_api::auth::issue_token;
pub use stratus_api::{ApiDeps, ApiState, app};
pub use stratus_core::ids::{AccountId, ServerId};
pub use stratus_core::{Config, ManualClock};
pub use stratus_store::ledger::{AuditAction, AuditSubject, Ledger, TokenScope};
pub use stratus_store::testing::{self, ScratchDatabase};
pub use stratus_store::vault::Vault;
pub use stratus_store::{ObjectStore, SqlObjectStore};
pub use tower::ServiceExt;

pub struct Api {
    pub _scratch: ScratchDatabase,
    pub state: ApiState,
    pub router: axum::Router,
    pub admin: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
}

pub async fn api_on(scratch: ScratchDatabase) -> Api {
    api_configured(scratch, Config::default()).await
}

pub async fn api_configured(scratch: ScratchDatabase, config: Config) -> Api {
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

pub async fn api() -> Api {
    api_on(testing::sqlite().await).await
}

impl Api {
    pub async fn raw(
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

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Reply {
        self.raw(method, path, Some(token), &[], body.map(|b| b.to_string()))
            .await
    }

    /// Claims `key` for an order of `name` as a first attempt that stopped
    /// right after claiming it would have; returns the id it bound.
    pub async fn claim_as_a_first_attempt(
        &self,
        account: &AccountId,
        key: &str,
        name: &str,
        id_bits: u64,
    ) -> ServerId {
        let body = stratus_api::views::OrderServer {
            name: name.into(),
            plan: "small".into(),
            image: Some("debian-12".into()),
            snapshot: None,
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
    pub async fn customer(&self, name: &str) -> (String, String) {
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
    pub async fn order_keyed(&self, token: &str, key: &str, name: &str) -> Reply {
        self.raw(
            Method::POST,
            "/v1/servers",
            Some(token),
            &[("idempotency-key", key)],
            Some(order(name).to_string()),
        )
        .await
    }

    pub async fn server_count(&self) -> usize {
        self.state.servers.list(None).await.unwrap().items.len()
    }

    pub async fn register_zone(&self, zone: &str) {
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

pub fn assert_error(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
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

pub fn order(name: &str) -> Value {
    json!({"name": name, "plan": "small", "image": "debian-12"})
}

/// Posts `event` about `account` as `token`.
pub async fn report(api: &Api, token: &str, account: &str, event: Value) -> Reply {
    api.call(
        Method::POST,
        &format!("/v1/admin/accounts/{account}/events"),
        token,
        Some(event),
    )
    .await
}

pub async fn facts_of(api: &Api, account: &str) -> usize {
    api.state
        .ledger
        .facts()
        .of_account(account, 0, 1000)
        .await
        .unwrap()
        .len()
}

pub fn storage_order(name: &str, size_gib: u64) -> Value {
    json!({"name": name, "size_gib": size_gib})
}

impl Api {
    pub async fn storage_count(&self) -> usize {
        self.state.storage.list(None).await.unwrap().items.len()
    }
}

/// The agents' side of content, in memory: what the API hands on and what
/// it answers, so the API's own checks can be seen.
#[derive(Default)]
pub struct MemoryContents {
    pub stored: std::sync::Mutex<std::collections::HashMap<(String, u64), Vec<u8>>>,
    /// LUKS versions, with the SHA-256 of the key they were formatted with.
    pub luks: std::sync::Mutex<std::collections::HashMap<(String, u64), Vec<u8>>>,
    /// Versions whose key was loaded, once per unlock.
    pub unlocked: std::sync::Mutex<Vec<(String, u64)>>,
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
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
            live_copy: None,
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
            live_copy: None,
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
    pub async fn ready_storage(&self, account: &str, token: &str, size_gib: u64) -> String {
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

/// The server `id` as the controller leaves it once it runs on
/// `hv-default`, a hypervisor with the given room and the usual images.
pub async fn placed_and_running(api: &Api, account: &str, id: &str, vcpus: u32, memory_mib: u64) {
    use stratus_core::resources::{
        AppliedPlan, HypervisorCapacity, HypervisorStatus, ServerPhase, VirtualServerStatus,
    };
    let hypervisor = stratus_core::ids::HypervisorName::parse("hv-default").unwrap();
    api.state
        .hypervisors
        .patch_status(
            None,
            "hv-default",
            &HypervisorStatus {
                reachable: true,
                capacity: Some(HypervisorCapacity {
                    vcpus,
                    memory_mib,
                    disk_gib: 1000,
                    images: vec![
                        "debian-12.qcow2".into(),
                        "ubuntu-24.04.qcow2".into(),
                        "alma-9.qcow2".into(),
                    ],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let server = api
        .state
        .servers
        .get(Some(account), id)
        .await
        .unwrap()
        .unwrap();
    api.state
        .servers
        .patch_status(
            Some(account),
            id,
            &VirtualServerStatus {
                phase: ServerPhase::Running,
                hypervisor: Some(hypervisor),
                provisioned: true,
                applied: Some(AppliedPlan::of(&server.spec)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}
