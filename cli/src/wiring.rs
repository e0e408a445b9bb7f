//! Building the parts from flags: database, resource store, secrets, API, controller, agent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::ResourceExt;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stratus_agent::{AgentState, Driver};
use stratus_api::{ApiDeps, ApiState};
use stratus_controller::events::KubeEvents;
use stratus_controller::metrics::ControllerMetrics;
use stratus_controller::{
    AgentClient, AgentDirectory, Context as ControllerContext, ControllerConfig, HttpAgentClient,
    Runtime,
};
use stratus_core::config::SeededPool;
use stratus_core::resources::{IpPool, IpPoolSpec};
use stratus_core::{Clock, Config, SystemClock};
use stratus_store::ledger::Ledger;
use stratus_store::secrets::{KubeSecrets, Secrets};
use stratus_store::vault::Vault;
use stratus_store::{Database, KubeObjectStore, ObjectStore, Resources, SqlObjectStore};
use tokio::sync::watch;

use crate::serving::ServerTls;
use crate::tls::{self, TlsFiles};

pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read configuration {}", path.display()))?;
            Config::from_yaml(&text).with_context(|| format!("configuration {}", path.display()))
        }
    }
}

/// Where the resources live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// In the SQL database, with Kubernetes semantics (the default).
    Embedded,
    /// As CustomResources in a Kubernetes API server (in-cluster or `KUBECONFIG`).
    Kubernetes,
}

/// The shared pieces every role needs.
pub struct Core {
    pub db: Database,
    /// The embedded store, when resources live in the database.
    pub embedded: Option<SqlObjectStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub kube: Option<kube::Client>,
    pub ledger: Ledger,
    pub secrets: Arc<dyn Secrets>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
}

impl Core {
    /// Opens the database (ledger, and resources in embedded mode) and, in
    /// Kubernetes mode, the API server connection. `namespace` is the
    /// control plane's own namespace (Secrets, Lease) in Kubernetes mode.
    pub async fn open(
        database_url: &str,
        master_key: MasterKey<'_>,
        config: Config,
        backend: BackendKind,
        namespace: &str,
        field_manager: &str,
    ) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let db = Database::connect(database_url)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(database_url)))?;
        let (embedded, objects, kube, secrets): (_, Arc<dyn ObjectStore>, _, Arc<dyn Secrets>) =
            match backend {
                BackendKind::Embedded => {
                    let key = match master_key {
                        MasterKey::Existing(path) => Vault::load_key(path)?,
                        MasterKey::CreateIfMissing(path) => Vault::load_or_create_key(path)?,
                    };
                    let store = SqlObjectStore::new(db.clone(), clock.clone());
                    (
                        Some(store.clone()),
                        Arc::new(store),
                        None,
                        Arc::new(Vault::new(db.clone(), &key, clock.clone())?),
                    )
                }
                BackendKind::Kubernetes => {
                    let client = kube::Client::try_default().await.context(
                        "cannot reach the Kubernetes API (in-cluster configuration or KUBECONFIG)",
                    )?;
                    (
                        None,
                        Arc::new(KubeObjectStore::new(client.clone(), field_manager)),
                        Some(client.clone()),
                        Arc::new(KubeSecrets::new(client, namespace)),
                    )
                }
            };
        Ok(Self {
            embedded,
            objects,
            kube,
            ledger: Ledger::new(db.clone()),
            secrets,
            config: Arc::new(config),
            clock,
            db,
        })
    }

    /// Creates the configuration's IP pools that do not exist yet (in
    /// embedded mode; in Kubernetes mode pools are kubectl's). Without an
    /// `ipPools:` section, `documentation_when_absent` seeds the
    /// documentation ranges so a quickstart shows addresses. A pool that
    /// exists by name is left as an operator may have changed it; one
    /// overlapping another pool stops the start, naming both.
    pub async fn seed_ip_pools(&self, documentation_when_absent: bool) -> anyhow::Result<()> {
        if self.embedded.is_none() {
            return Ok(());
        }
        let seeded = match &self.config.ip_pools {
            Some(pools) => pools.clone(),
            None if documentation_when_absent => SeededPool::documentation(),
            None => return Ok(()),
        };
        let pools = Resources::<IpPool>::new(self.objects());
        let mut existing = pools.list(None).await?.items;
        for pool in seeded {
            if existing.iter().any(|p| p.name_any() == pool.name) {
                continue;
            }
            let spec = pool.spec();
            let layout = spec
                .layout()
                .map_err(|e| anyhow::anyhow!("ipPools: pool {}: {e}", pool.name))?;
            let named: Vec<(String, &IpPoolSpec)> =
                existing.iter().map(|p| (p.name_any(), &p.spec)).collect();
            if let Some((other, family)) =
                stratus_core::ip::overlapping(&layout, named.iter().map(|(n, s)| (n.as_str(), *s)))
            {
                anyhow::bail!(
                    "ipPools: the {family} addresses of pool {} overlap those of pool {other}",
                    pool.name
                );
            }
            existing.push(pools.create(&IpPool::new(&pool.name, spec)).await?);
            tracing::info!(pool = %pool.name, zone = %pool.zone, "IP pool created from the configuration");
        }
        Ok(())
    }

    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        self.objects.clone()
    }

    /// The REST API's state; its metrics join `registry`, which it serves.
    pub fn api_state(&self, registry: Registry) -> ApiState {
        ApiState::new(ApiDeps {
            store: self.objects(),
            ledger: self.ledger.clone(),
            secrets: self.secrets.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            registry,
        })
    }

    /// Every reconciler, on one runtime, reaching agents through `agents`;
    /// `instance` names this replica in events.
    pub fn controller(
        &self,
        registry: &mut Registry,
        settings: ControllerConfig,
        instance: &str,
        agents: Arc<dyn AgentClient>,
    ) -> anyhow::Result<Runtime> {
        let directory = AgentDirectory::new(Resources::new(self.objects()), self.secrets.clone());
        let mut ctx =
            ControllerContext::new(self.clock.clone(), agents, directory, self.ledger.clone())
                .with_metrics(ControllerMetrics::register(registry));
        if let Some(client) = &self.kube {
            ctx = ctx.with_events(Arc::new(KubeEvents::new(
                client.clone(),
                instance,
                self.clock.clone(),
            )));
        }
        Ok(stratus_controller::controller(
            ctx,
            self.objects(),
            self.config.clone(),
            settings,
        )?)
    }

    /// Forgets deletion records older than a generous window, so the
    /// database does not grow without bound; late watchers relist.
    pub fn spawn_compaction(&self) {
        let Some(store) = self.embedded.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            loop {
                tick.tick().await;
                match store.current_revision().await {
                    Ok(current) if current > 10_000 => {
                        if let Err(error) = store.compact(current - 10_000).await {
                            tracing::warn!(%error, "compaction failed");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "compaction failed"),
                }
            }
        });
    }
}

/// Where the master key of the embedded backend's vault comes from.
#[derive(Debug, Clone, Copy)]
pub enum MasterKey<'a> {
    /// A file the operator created (API and controller: they must agree).
    Existing(&'a Path),
    /// Made on first use (`stratus up`, the only user of its data dir).
    CreateIfMissing(&'a Path),
}

/// Hides the password of a database URL in messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for the {what}"))
}

/// The agent's API over mutual TLS with `files` (reloaded when they change).
pub fn agent_service(
    driver: Arc<Driver>,
    token: &str,
    files: TlsFiles,
) -> anyhow::Result<(axum::Router, ServerTls)> {
    let state = AgentState::new(driver, token);
    let tls = tls::watch_files(
        "agent",
        files,
        tls::server_config,
        state.metrics().certificate_expiry(),
        tls::RELOAD_CHECK,
    )?;
    Ok((stratus_agent::router(state), tls))
}

/// The controller's client of the agents, over mutual TLS with `files`
/// (reloaded when they change); the certificate's expiry joins `registry`.
pub fn agent_client(files: TlsFiles, registry: &mut Registry) -> anyhow::Result<HttpAgentClient> {
    let expiry = Gauge::default();
    registry.register(
        "stratus_controller_agent_client_certificate_expiry_timestamp_seconds",
        "When the certificate the controller presents to agents expires (seconds since the epoch)",
        expiry.clone(),
    );
    let http = tls::watch_files(
        "agent client",
        files,
        |files| {
            let (config, not_after) = tls::client_config(files)?;
            Ok((HttpAgentClient::https_client(config)?, not_after))
        },
        expiry,
        tls::RELOAD_CHECK,
    )?;
    Ok(HttpAgentClient::new(http))
}

/// Turns SIGINT/SIGTERM into the shutdown signal.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("shutting down");
        let _ = sender.send(true);
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://stratus:s3cret@db:5432/stratus"),
            "postgres://stratus:***@db:5432/stratus"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/stratus.db"),
            "sqlite:///var/lib/stratus.db"
        );
    }

    #[test]
    fn the_example_configuration_is_valid_and_matches_the_defaults() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/stratus.example.yaml");
        assert_eq!(load_config(Some(&example)).unwrap(), Config::default());
        // It documents every policy key, not only the defaults by omission.
        let text = std::fs::read_to_string(&example).unwrap();
        let written: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            written["policy"],
            serde_yaml::to_value(stratus_core::policy::Policy::default()).unwrap()
        );
    }

    #[test]
    fn configuration_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stratus.yaml");
        std::fs::write(&path, "plans: []\nbogus: 1\n").unwrap();
        let err = format!("{:#}", load_config(Some(&path)).unwrap_err());
        assert!(
            err.contains("stratus.yaml") && err.contains("bogus"),
            "{err}"
        );
    }
}
