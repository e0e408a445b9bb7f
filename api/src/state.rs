use std::sync::Arc;

use prometheus_client::registry::Registry;
use ring::rand::{SecureRandom, SystemRandom};
use stratus_core::agent_api::VolumeKey;
use stratus_core::quota::Quota;
use stratus_core::resources::{Account, Hypervisor, IpPool, StorageSubscription, VirtualServer};
use stratus_core::{Clock, Config};
use stratus_store::ledger::{Actor, AuditAction, AuditEntry, AuditSubject, Ledger};
use stratus_store::secrets::Secrets;
use stratus_store::{ObjectStore, Resources};

use crate::error::ApiError;
use crate::metrics::ApiMetrics;
use crate::rate_limit::RateLimiter;

/// Everything a handler may use.
#[derive(Clone)]
pub struct ApiState {
    pub servers: Resources<VirtualServer>,
    pub storage: Resources<StorageSubscription>,
    pub accounts: Resources<Account>,
    pub hypervisors: Resources<Hypervisor>,
    pub ip_pools: Resources<IpPool>,
    pub ledger: Ledger,
    /// Where agent tokens are kept (encrypted vault, or Kubernetes Secrets).
    pub secrets: Arc<dyn Secrets>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub metrics: ApiMetrics,
    /// The process's whole registry, served at `/metrics`.
    pub registry: Arc<Registry>,
    /// Per-token request rate (the configuration's `limits:`).
    pub rate_limiter: Arc<RateLimiter>,
    /// Requests with an invalid token, per client address.
    pub invalid_tokens: Arc<RateLimiter>,
    /// Tokens that authenticated lately: never held back by the above.
    pub recently_valid: Arc<crate::rate_limit::RecentlyValid>,
    /// `trustedProxies`, parsed.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// Content streams in flight, per account and per hypervisor.
    pub streams: crate::stream_slots::StreamSlots,
    /// What is placed on each hypervisor, listed once for many requests.
    pub placed: crate::placed::PlacedCache,
    /// Reads guests' serial consoles from their agents; absent in a process
    /// that holds no agent credentials.
    pub consoles: Option<Arc<dyn ServerConsoles>>,
    /// Writes and reads storage content on the agents; absent in a process
    /// that holds no agent credentials.
    pub contents: Option<Arc<dyn StorageContents>>,
    /// `luks` subscriptions being formatted with a key held in memory
    /// (never stored) until their primary copy exists.
    pub formatting: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Checks that a PTR's name resolves to its address, through the
    /// resolver of `dnsbl:`; absent without one.
    pub forward: Option<Arc<crate::forward::ForwardLookup>>,
    rng: SystemRandom,
}

/// A content streaming through the API, chunk by chunk: the agent
/// client's own, so a stream passes from a customer to an agent as it is.
pub use stratus_agent_client::ContentStream;

/// Why an agent did not store or serve a content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentError {
    /// Longer than the copy's size (R27): nothing of it was kept.
    TooLarge,
    /// The version exists already, or does not.
    Conflict(String),
    /// The agent could not be reached or failed.
    Unavailable(String),
    /// The key does not open the LUKS volume.
    WrongKey,
}

/// Storage content on the agents of the copies' hypervisors.
#[async_trait::async_trait]
pub trait StorageContents: Send + Sync + 'static {
    /// Writes `content` as a new `version` of the copy managed as `name`.
    async fn write(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        size_gib: u64,
        content: ContentStream,
    ) -> Result<stratus_core::agent_api::StoredContent, ContentError>;
    /// The first `bytes` of `version`.
    async fn read(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<ContentStream, ContentError>;
    /// Creates `version` as a LUKS volume formatted with `key`.
    async fn format(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        size_gib: u64,
        key: &VolumeKey,
    ) -> Result<stratus_core::agent_api::StoredContent, ContentError>;
    /// Unloads the key of `version` on its hypervisor.
    async fn lock(&self, hypervisor: &str, name: &str, version: u64) -> Result<(), ContentError>;
    /// Loads `key` for `version` on its hypervisor, once it opens it.
    async fn unlock(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        key: &VolumeKey,
    ) -> Result<(), ContentError>;
}

/// Reads the tail of a domain's serial console from its hypervisor's agent.
#[async_trait::async_trait]
pub trait ServerConsoles: Send + Sync + 'static {
    /// At most [`stratus_core::agent_api::CONSOLE_TAIL_BYTES`]; the error says
    /// why the agent could not answer.
    async fn tail(&self, hypervisor: &str, domain: &str) -> Result<Vec<u8>, String>;
}

/// What the API is built from.
pub struct ApiDeps {
    /// Where the resources live (embedded or Kubernetes).
    pub store: Arc<dyn ObjectStore>,
    pub ledger: Ledger,
    pub secrets: Arc<dyn Secrets>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    /// The process's registry; the API registers its metrics in it and serves it.
    pub registry: Registry,
}

impl ApiState {
    pub fn new(deps: ApiDeps) -> Self {
        let ApiDeps {
            store,
            ledger,
            secrets,
            config,
            clock,
            mut registry,
        } = deps;
        let metrics = ApiMetrics::register(&mut registry);
        Self {
            servers: Resources::new(store.clone()),
            storage: Resources::new(store.clone()),
            accounts: Resources::new(store.clone()),
            hypervisors: Resources::new(store.clone()),
            ip_pools: Resources::new(store),
            ledger,
            secrets,
            config: config.clone(),
            clock,
            metrics,
            registry: Arc::new(registry),
            rate_limiter: Arc::new(RateLimiter::new(config.limits)),
            invalid_tokens: Arc::new(RateLimiter::per_minute(
                config.limits.invalid_tokens_per_minute,
            )),
            trusted_proxies: Arc::new(config.trusted_proxy_networks()),
            recently_valid: Arc::default(),
            streams: Default::default(),
            placed: Default::default(),
            consoles: None,
            contents: None,
            formatting: Arc::default(),
            forward: config.dnsbl.resolver_address().and_then(|address| {
                let timeout = std::time::Duration::from_millis(config.dnsbl.timeout_ms);
                crate::forward::ForwardLookup::new(address, timeout)
                    .map_err(|error| tracing::warn!(%error, "PTR names cannot be checked"))
                    .ok()
                    .map(Arc::new)
            }),
            rng: SystemRandom::new(),
        }
    }

    /// Serves `GET /v1/servers/{id}/console` through `consoles`.
    pub fn with_consoles(mut self, consoles: Arc<dyn ServerConsoles>) -> Self {
        self.consoles = Some(consoles);
        self
    }

    /// Serves `/v1/storage/{id}/content` through `contents`.
    pub fn with_contents(mut self, contents: Arc<dyn StorageContents>) -> Self {
        self.contents = Some(contents);
        self
    }

    pub fn random_bytes<const N: usize>(&self) -> Result<[u8; N], ApiError> {
        let mut bytes = [0u8; N];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| ApiError::internal("no randomness available"))?;
        Ok(bytes)
    }

    pub fn random_u64(&self) -> Result<u64, ApiError> {
        Ok(u64::from_be_bytes(self.random_bytes::<8>()?))
    }

    /// The limits `account` orders within: its own, the provider's default
    /// for keys it has none of.
    pub fn quota_of(&self, account: &Account) -> Quota {
        account
            .spec
            .quota
            .unwrap_or_default()
            .or(self.config.quotas)
    }

    pub fn now_millis(&self) -> i64 {
        self.clock.now().as_millisecond()
    }
}

impl ApiState {
    /// Appends to the audit log; a failure is logged loudly (the change it
    /// records already happened and is not undone).
    pub async fn audit(
        &self,
        actor: Actor,
        action: AuditAction,
        subject: AuditSubject,
        detail: serde_json::Value,
    ) {
        let entry = AuditEntry {
            at: self.now_millis(),
            actor,
            action,
            subject,
            detail,
        };
        if let Err(error) = self.ledger.audit().append(&entry).await {
            tracing::error!(%error, action = %entry.action, subject = %entry.subject, "audit write failed");
        }
    }
}
