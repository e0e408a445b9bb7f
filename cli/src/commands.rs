//! The subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kube::CustomResourceExt;
use kube::core::ObjectMeta;
use prometheus_client::registry::Registry;
use stratus_agent::{AntiSpoofingMode, CapacityOverride, Driver, DriverConfig};
use stratus_controller::leader::LeaderElector;
use stratus_controller::{ControllerConfig, RuntimeConfig};
use stratus_core::ids::HypervisorName;
use stratus_core::resources::{
    Account, Hypervisor, HypervisorSpec, IpPool, StorageSubscription, VirtualServer,
};
use stratus_core::{Clock, SystemClock};
use stratus_store::ledger::{Actor, AuditAction, AuditEntry, AuditSubject, Ledger, TokenScope};
use stratus_store::private_files::{ensure_private_dir, read_private_file, write_private_file};
use stratus_store::{Database, Resources};

use crate::serving::{self, Limits};
use crate::tls::{CERTIFICATE_DAYS, CertificateAuthority, Role, TlsFiles};
use crate::wiring::{self, BackendKind, Core, MasterKey};

/// Size of the simulated hypervisor `stratus up` runs on libvirt's test driver.
const SIMULATED_CAPACITY: &str = "vcpus=512,memory_mib=1048576,disk_gib=65536";
const LOCAL_HYPERVISOR: &str = "local";
const LOCAL_ZONE: &str = "default";

#[derive(Args)]
pub struct UpArgs {
    /// Where state lives: SQLite database, keys, tokens, hypervisor definitions.
    #[arg(long, default_value = ".stratus")]
    data_dir: PathBuf,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// libvirt URI of the local hypervisor (`test:///default` when the
    /// configuration lists no `localHypervisors:`).
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// YAML configuration (plans, images); built-in defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Database URL; defaults to SQLite in the data directory.
    #[arg(long, env = "STRATUS_DATABASE_URL")]
    database_url: Option<String>,
    /// Address of the in-process agent (loopback only; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    agent_listen: SocketAddr,
    /// Capacity the local hypervisor advertises (`vcpus=…,memory_mib=…,disk_gib=…`);
    /// on the test driver it defaults to a large simulated host.
    #[arg(long)]
    capacity: Option<CapacityOverride>,
    /// Reconciles run at once.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// The in-process agent's certificate and key, and the CA of the
    /// controller certificates it accepts; made in `DATA_DIR/tls` when absent.
    #[command(flatten)]
    agent_tls: AgentServerTlsArgs,
    /// The controller side's certificate and key, and the CA of agent
    /// certificates; made in `DATA_DIR/tls` when absent.
    #[command(flatten)]
    controller_tls: AgentClientTlsArgs,
}

/// The agent's side of the mutual TLS link.
#[derive(Args)]
pub struct AgentServerTlsArgs {
    /// The agent's certificate (PEM; reloaded when it changes).
    #[arg(long, env = "STRATUS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The agent's private key (PEM, mode 0600).
    #[arg(long, env = "STRATUS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA whose client certificates the agent accepts (the controller's).
    #[arg(long, env = "STRATUS_CLIENT_CA")]
    client_ca: Option<PathBuf>,
}

impl AgentServerTlsArgs {
    fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        TlsFiles::from_flags(
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.client_ca.as_ref(),
            ["tls-cert", "tls-key", "client-ca"],
        )
    }
}

/// The controller's side of the mutual TLS link to the agents.
#[derive(Args)]
pub struct AgentClientTlsArgs {
    /// The CA that signs the agents' certificates.
    #[arg(long, env = "STRATUS_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// The certificate the controller presents to agents (PEM; reloaded when it changes).
    #[arg(long, env = "STRATUS_AGENT_CLIENT_CERT")]
    agent_client_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, env = "STRATUS_AGENT_CLIENT_KEY")]
    agent_client_key: Option<PathBuf>,
}

impl AgentClientTlsArgs {
    fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        TlsFiles::from_flags(
            self.agent_client_cert.as_ref(),
            self.agent_client_key.as_ref(),
            self.agent_ca.as_ref(),
            ["agent-client-cert", "agent-client-key", "agent-ca"],
        )
    }
}

#[derive(Args)]
pub struct ApiArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    shared: SharedArgs,
    /// Writes a new admin token to this file (mode 0600) if no admin token exists yet.
    #[arg(long)]
    bootstrap_admin_token: Option<PathBuf>,
}

/// What the API and the controller both need.
#[derive(Args)]
pub struct SharedArgs {
    /// The ledger database (tokens, idempotency keys, audit), and the
    /// resources too with the embedded backend.
    #[arg(long, env = "STRATUS_DATABASE_URL")]
    database_url: String,
    /// Where the resources live.
    #[arg(long, value_enum, default_value = "embedded", env = "STRATUS_BACKEND")]
    backend: BackendKind,
    /// File holding the master key that encrypts stored agent tokens
    /// (embedded backend; must exist, mode 0600: create it once with
    /// `openssl rand -hex 32` and give every replica the same one).
    #[arg(long, env = "STRATUS_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The control plane's namespace (agent token Secrets, leader Lease) with
    /// the Kubernetes backend.
    #[arg(long, env = "POD_NAMESPACE", default_value = "stratus-system")]
    namespace: String,
    /// YAML configuration (plans, images).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl SharedArgs {
    async fn open(&self, field_manager: &str) -> anyhow::Result<Core> {
        let config = wiring::load_config(self.config.as_deref())?;
        let master_key_file = match (self.backend, &self.master_key_file) {
            (BackendKind::Embedded, None) => bail!(
                "--master-key-file (or STRATUS_MASTER_KEY_FILE) is required with the embedded backend"
            ),
            (_, Some(path)) => path.clone(),
            (BackendKind::Kubernetes, None) => PathBuf::new(),
        };
        Core::open(
            &self.database_url,
            MasterKey::Existing(&master_key_file),
            config,
            self.backend,
            &self.namespace,
            field_manager,
        )
        .await
    }
}

#[derive(Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    shared: SharedArgs,
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Address of the controller's /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9091")]
    metrics_listen: SocketAddr,
    /// Name of the Lease that elects the one active replica.
    #[arg(long, default_value = "stratus-controller")]
    lease_name: String,
    /// This replica's name in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a leader that stops renewing keeps the Lease.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    #[command(flatten)]
    agent_tls: AgentClientTlsArgs,
}

#[derive(Args)]
pub struct DnsArgs {
    #[command(flatten)]
    shared: SharedArgs,
    /// Where to listen, UDP and TCP (default: the configuration's
    /// `rdns.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct AgentArgs {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// File holding the bearer token the control plane must present.
    #[arg(long)]
    token_file: PathBuf,
    /// Zone (datacenter) of this hypervisor.
    #[arg(long)]
    zone: String,
    #[arg(long, default_value = "qemu:///system")]
    libvirt_uri: String,
    /// Storage pool for images and disks (default: `default`, `default-pool` on the test driver).
    #[arg(long)]
    pool: Option<String>,
    /// libvirt network for the servers' NICs.
    #[arg(long, default_value = "default")]
    network: String,
    /// Domain type (`kvm`, `qemu`; `test` on the test driver).
    #[arg(long)]
    domain_type: Option<String>,
    /// Capacity to advertise instead of what libvirt reports.
    #[arg(long)]
    capacity: Option<CapacityOverride>,
    /// Keep and replay definitions here (for the test driver, which forgets them).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Image volumes to create when missing (test driver only), e.g. `debian-12.qcow2`.
    #[arg(long)]
    seed_image: Vec<String>,
    /// `required` (the default; `best-effort` on the test driver): never
    /// start a guest without its anti-spoofing filter, so a host without
    /// libvirt's nwfilter starts none. `best-effort` runs guests unfiltered
    /// there: labs only, never customers' servers.
    #[arg(long)]
    anti_spoofing: Option<AntiSpoofingMode>,
    /// The longest, in seconds, a guest is paused for a copy of its disk
    /// where libvirt has no backup job (a LUKS disk): a copy that would
    /// take longer is dropped, the guest resumed, and the failure reported.
    #[arg(long, default_value_t = stratus_agent::driver::DEFAULT_MAX_GUEST_PAUSE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=600))]
    max_guest_pause_seconds: u64,
    /// This agent's hypervisor name, marked on every domain it defines:
    /// agents sharing one libvirt daemon (one per pool) each touch only
    /// their own domains. Unset, it takes unmarked domains as its own.
    #[arg(long)]
    agent_name: Option<String>,
    #[command(flatten)]
    tls: AgentServerTlsArgs,
}

#[derive(Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(clap::Subcommand)]
enum TlsCommand {
    /// Creates a CA (`ca.crt`, and `ca.key` mode 0600) in a directory, unless one is there.
    Ca {
        /// The CA's directory (made mode 0700).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issues a certificate from a CA made by `stratus tls ca` (or `stratus up`,
    /// in `DATA_DIR/tls`): writes `tls.crt`, `tls.key` (0600) and `ca.crt`.
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// What the certificate is for.
        #[arg(long, value_enum)]
        role: Role,
        /// Its subject name (the hypervisor's name, or `controller`).
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the agent is reached at (repeat for more).
        #[arg(long)]
        host: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = CERTIFICATE_DAYS)]
        days: i64,
        /// Where to write the files (made mode 0700).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn tls(args: TlsArgs) -> anyhow::Result<()> {
    match args.command {
        TlsCommand::Ca { dir } => {
            CertificateAuthority::open_or_create(&dir, "stratus agent-link CA")?;
            println!("{}", CertificateAuthority::certificate_path(&dir).display());
        }
        TlsCommand::Issue {
            ca_dir,
            role,
            name,
            host,
            days,
            out,
        } => {
            if !(1..=3650).contains(&days) {
                bail!("--days must be between 1 and 3650");
            }
            let files =
                CertificateAuthority::open(&ca_dir)?.issue(role, &name, &host, days, &out)?;
            println!(
                "{}\n{}\n{}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            );
        }
    }
    Ok(())
}

pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in [
        VirtualServer::crd(),
        Hypervisor::crd(),
        Account::crd(),
        IpPool::crd(),
        StorageSubscription::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let token = read_private_file(path)?;
    let token = token.trim().to_owned();
    if token.len() < 16 {
        bail!(
            "{} must hold a token of at least 16 characters",
            path.display()
        );
    }
    Ok(token)
}

/// A random secret in `path` (mode 0600), created on first use.
fn load_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if std::fs::symlink_metadata(path).is_ok() {
        return read_secret_file(path);
    }
    let token = stratus_store::vault::random_hex(32)?;
    write_private_file(path, token.as_bytes())?;
    Ok(token)
}

fn driver_config(
    uri: &str,
    zone: &str,
    pool: Option<String>,
    domain_type: Option<String>,
    network: String,
) -> DriverConfig {
    let mut config = DriverConfig::for_uri(uri, zone);
    if let Some(pool) = pool {
        config.pool = pool;
    }
    if let Some(domain_type) = domain_type {
        config.domain_type = domain_type;
    }
    config.network = network;
    config
}

async fn open_driver(config: DriverConfig) -> anyhow::Result<Arc<Driver>> {
    let uri = config.uri.clone();
    let driver = tokio::task::spawn_blocking(move || Driver::open(config))
        .await?
        .with_context(|| format!("cannot open libvirt at {uri}"))?;
    Ok(Arc::new(driver))
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    ensure_private_dir(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize()?;
    let config = wiring::load_config(args.config.as_deref())?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("stratus.db").display()));
    let master_key = data_dir.join("master.key");
    let core = Core::open(
        &database_url,
        MasterKey::CreateIfMissing(&master_key),
        config,
        BackendKind::Embedded,
        "",
        "stratus",
    )
    .await?;
    core.seed_ip_pools(true).await?;
    let shutdown = wiring::shutdown_signal();

    let local = local_hypervisors(&args, &core.config, &data_dir)?;
    if !args.agent_listen.ip().is_loopback() {
        bail!(
            "--agent-listen must be a loopback address: the in-process agent is for this machine only"
        );
    }
    let (agent_tls, controller_tls) = local_certificates(&args, &data_dir)?;
    let mut agent_services = Vec::new();
    for (index, hypervisor) in local.into_iter().enumerate() {
        let driver = open_driver(hypervisor.driver).await?;
        if hypervisor.seed_images {
            for image in &core.config.images {
                let (driver, volume, size) = (driver.clone(), image.volume.clone(), image.size_gib);
                tokio::task::spawn_blocking(move || driver.seed_image(&volume, size)).await??;
            }
        }
        let token = load_or_create_secret(&data_dir.join(hypervisor.token_file))?;
        // One agent per hypervisor, each on a port of its own.
        let mut listen = args.agent_listen;
        if index > 0 {
            listen.set_port(0);
        }
        let listener = wiring::bind(listen, "agent").await?;
        let url = format!("https://{}", listener.local_addr()?);
        register_local_hypervisor(&core, &hypervisor.name, &hypervisor.zone, &url, &token).await?;
        tracing::info!(hypervisor = %hypervisor.name, zone = %hypervisor.zone, agent = %url, "local hypervisor");
        let (router, server_tls) = wiring::agent_service(driver, &token, agent_tls.clone())?;
        agent_services.push((listener, router, server_tls));
    }
    let admin_token_path = data_dir.join("admin.token");
    let new_admin_token = bootstrap_admin(&core, &admin_token_path).await?;

    let mut registry = Registry::default();
    let agents: Arc<dyn stratus_controller::AgentClient> =
        Arc::new(wiring::agent_client(controller_tls, &mut registry)?);
    let agents_for_api = Arc::new(stratus_api::agents::AgentsForApi::new(
        core.objects(),
        core.secrets.clone(),
        agents.clone(),
    ));
    let controller = core.controller(
        &mut registry,
        ControllerConfig {
            runtime: RuntimeConfig {
                workers: args.workers,
                ..Default::default()
            },
            probe_interval: Duration::from_secs(5),
            ..Default::default()
        },
        "stratus-up",
        agents,
    )?;
    let api = stratus_api::app(
        core.api_state(registry)
            .with_consoles(agents_for_api.clone())
            .with_contents(agents_for_api),
    );
    let api_listener = wiring::bind(args.listen, "REST API").await?;
    let api_address = api_listener.local_addr()?;
    core.spawn_compaction();

    let agent_tasks: Vec<_> = agent_services
        .into_iter()
        .map(|(listener, router, server_tls)| {
            tokio::spawn(serving::serve(
                listener,
                router,
                Limits::AGENT,
                Some(server_tls),
                shutdown.clone(),
            ))
        })
        .collect();
    let controller_task = tokio::spawn(controller.run(shutdown.clone()));
    let dns_task = match core.config.rdns.listen {
        Some(_) => {
            let bound = reverse_dns(&core).bind().await?;
            Some(tokio::spawn(bound.serve(shutdown.clone())))
        }
        None => None,
    };
    let api_task = tokio::spawn(serving::serve(
        api_listener,
        api,
        Limits::API,
        None,
        shutdown.clone(),
    ));

    let order = FirstOrder {
        plan: core.config.plans.first().map_or("", |p| p.name.as_str()),
        image: core.config.images.first().map_or("", |i| i.name.as_str()),
    };
    print_welcome(
        &api_address,
        &admin_token_path,
        new_admin_token,
        &data_dir,
        order,
    );
    tracing::info!(api = %api_address, data_dir = %data_dir.display(), "stratus is up");

    api_task.await??;
    for agent_task in agent_tasks {
        agent_task.await??;
    }
    controller_task.await?;
    if let Some(dns_task) = dns_task {
        dns_task.await??;
    }
    core.db.close().await;
    Ok(())
}

/// The certificates of the in-process agent and of the controller side:
/// the flags' files, or issued at every start from a CA kept in
/// `DATA_DIR/tls` (made on first use), valid for the loopback names.
fn local_certificates(args: &UpArgs, data_dir: &Path) -> anyhow::Result<(TlsFiles, TlsFiles)> {
    let (agent, controller) = (args.agent_tls.files()?, args.controller_tls.files()?);
    if let (Some(agent), Some(controller)) = (&agent, &controller) {
        return Ok((agent.clone(), controller.clone()));
    }
    let tls_dir = data_dir.join("tls");
    let ca = CertificateAuthority::open_or_create(&tls_dir, "stratus up local CA")?;
    let agent = match agent {
        Some(files) => files,
        None => {
            let mut hosts = vec![
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
                "localhost".to_owned(),
            ];
            let listen = args.agent_listen.ip().to_string();
            if !hosts.contains(&listen) {
                hosts.push(listen);
            }
            ca.issue(
                Role::Agent,
                LOCAL_HYPERVISOR,
                &hosts,
                CERTIFICATE_DAYS,
                &tls_dir.join("agent"),
            )?
        }
    };
    let controller = match controller {
        Some(files) => files,
        None => ca.issue(
            Role::Controller,
            "controller",
            &[],
            CERTIFICATE_DAYS,
            &tls_dir.join("controller"),
        )?,
    };
    Ok((agent, controller))
}

/// A hypervisor `stratus up` runs an agent for.
struct LocalHypervisor {
    name: String,
    zone: String,
    driver: DriverConfig,
    /// Create the configuration's images as empty volumes (test driver).
    seed_images: bool,
    /// The agent token's file in the data directory.
    token_file: String,
}

/// The configuration's `localHypervisors:`, or one on `--libvirt-uri`
/// (libvirt's test driver by default) named `local`.
fn local_hypervisors(
    args: &UpArgs,
    config: &stratus_core::Config,
    data_dir: &Path,
) -> anyhow::Result<Vec<LocalHypervisor>> {
    if config.local_hypervisors.is_empty() {
        let uri = args.libvirt_uri.as_deref().unwrap_or("test:///default");
        let test_driver = uri.starts_with("test:");
        let mut driver = DriverConfig::for_uri(uri, LOCAL_ZONE);
        // The test driver forgets everything when the process ends, so its
        // definitions are kept under the data directory.
        if test_driver {
            driver.state_dir = Some(data_dir.join("hypervisor"));
            driver.capacity = SIMULATED_CAPACITY.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(capacity) = args.capacity {
            driver.capacity = capacity;
        }
        return Ok(vec![LocalHypervisor {
            name: LOCAL_HYPERVISOR.to_owned(),
            zone: LOCAL_ZONE.to_owned(),
            driver,
            seed_images: test_driver,
            token_file: "agent.token".to_owned(),
        }]);
    }
    if args.libvirt_uri.is_some() || args.capacity.is_some() {
        bail!(
            "--libvirt-uri and --capacity describe the one default hypervisor; the configuration's localHypervisors: lists them instead"
        );
    }
    Ok(config
        .local_hypervisors
        .iter()
        .map(|local| {
            let test_driver = local.libvirt_uri.starts_with("test:");
            let mut driver = DriverConfig::for_uri(&local.libvirt_uri, &local.zone);
            driver.pool = local.pool.clone();
            driver.network = local.network.clone();
            driver.domain_type = local.domain_type.clone();
            driver.console_dir = local.console_dir.as_ref().map(PathBuf::from);
            driver.cpu_overcommit = local.cpu_overcommit;
            driver.agent_name = Some(local.name.clone());
            if test_driver {
                driver.state_dir = Some(data_dir.join("hypervisors").join(&local.name));
            }
            LocalHypervisor {
                name: local.name.clone(),
                zone: local.zone.clone(),
                driver,
                seed_images: test_driver,
                token_file: format!("agent-{}.token", local.name),
            }
        })
        .collect())
}

async fn register_local_hypervisor(
    core: &Core,
    name: &str,
    zone: &str,
    url: &str,
    token: &str,
) -> anyhow::Result<()> {
    let hypervisor_name = HypervisorName::parse(name)
        .with_context(|| format!("local hypervisor name {name:?} is not a slug"))?;
    let credential = hypervisor_name.credential_name();
    core.secrets.put(&credential, token).await?;
    let hypervisors = stratus_store::Resources::<Hypervisor>::new(core.objects());
    let spec = HypervisorSpec {
        url: url.to_owned(),
        zone: zone.to_owned(),
        credential,
        cordoned: false,
    };
    // The in-process agent listens on a new port at every start.
    let updated = hypervisors
        .update(None, name, |hv| {
            if hv.spec == spec {
                return false;
            }
            hv.spec = spec.clone();
            true
        })
        .await?;
    if updated.is_none() {
        hypervisors
            .create(&Hypervisor {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                spec,
                status: None,
            })
            .await?;
    }
    Ok(())
}

/// Issues the first admin token into `path` (mode 0600) when none exists.
async fn bootstrap_admin(core: &Core, path: &Path) -> anyhow::Result<bool> {
    if core.ledger.tokens().has_active_admin().await? {
        return Ok(false);
    }
    let token = new_admin_token(
        &core.ledger,
        core.clock.as_ref(),
        "bootstrap",
        TokenScope::Admin,
        "stratus up",
    )
    .await?;
    write_private_file(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Issues an admin token, records it in the audit log, returns the secret.
async fn new_admin_token(
    ledger: &Ledger,
    clock: &dyn Clock,
    name: &str,
    scope: TokenScope,
    actor: &str,
) -> anyhow::Result<String> {
    let now = clock.now().as_millisecond();
    let (record, token) = ledger.tokens().issue(now, None, name, scope).await?;
    let entry = AuditEntry {
        at: now,
        actor: Actor::Command(actor.to_owned()),
        action: AuditAction::TokenIssue,
        subject: AuditSubject::Operators,
        detail: serde_json::json!({ "token_id": record.id, "name": name, "role": scope.role() }),
    };
    ledger.audit().append(&entry).await?;
    Ok(token)
}

#[derive(Args)]
pub struct AdminTokenArgs {
    /// The ledger database.
    #[arg(long, env = "STRATUS_DATABASE_URL")]
    database_url: String,
    /// What the token is for (shown in token lists and the audit log).
    #[arg(long, default_value = "operator")]
    name: String,
    /// `operator` (everything) or `billing` (posts invoices, reminders and
    /// payments, reads billing events; nothing else).
    #[arg(long, default_value = "operator", value_parser = ["operator", "billing"])]
    role: String,
}

/// Prints a new operator token (e.g. `kubectl exec deploy/…-api -- stratus admin-token`).
pub async fn admin_token(args: AdminTokenArgs) -> anyhow::Result<()> {
    let db = Database::connect(&args.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open database {}",
                wiring::redact_url(&args.database_url)
            )
        })?;
    let scope = if args.role == "billing" {
        TokenScope::Billing
    } else {
        TokenScope::Admin
    };
    let token = new_admin_token(
        &Ledger::new(db.clone()),
        &SystemClock,
        &args.name,
        scope,
        "stratus admin-token",
    )
    .await?;
    println!("{token}");
    db.close().await;
    Ok(())
}

/// What the quickstart orders: the configuration's first plan and image.
struct FirstOrder<'a> {
    plan: &'a str,
    image: &'a str,
}

fn print_welcome(
    api: &SocketAddr,
    admin_token_path: &Path,
    new_token: bool,
    data_dir: &Path,
    order: FirstOrder<'_>,
) {
    let token_line = if new_token {
        format!(
            "The admin token is in {} (written now, mode 0600).",
            admin_token_path.display()
        )
    } else if admin_token_path.exists() {
        format!(
            "The admin token is in {} (from an earlier start, mode 0600).",
            admin_token_path.display()
        )
    } else {
        // The database already had an operator: its token went wherever the
        // first `stratus up` or `stratus admin-token` on it wrote it.
        format!(
            "This database was initialized elsewhere: its admin token is not in {}.\n\
             Issue one with `stratus admin-token --database-url …` and write it there (mode 0600).",
            data_dir.display()
        )
    };
    println!(
        r#"
stratus is up: REST API on http://{api}  (data in {data})
{token_line}

Quickstart (bash):
  API=http://{api}
  ADMIN=$(cat {token})
  ACCOUNT=$(curl -s -X POST $API/v1/accounts -H "Authorization: Bearer $ADMIN" \
      -H 'Content-Type: application/json' -d '{{"name":"ACME","email":"ops@acme.example"}}' | jq -r .id)
  TOKEN=$(curl -s -X POST $API/v1/accounts/$ACCOUNT/tokens -H "Authorization: Bearer $ADMIN" \
      -H 'Content-Type: application/json' -d '{{"name":"cli"}}' | jq -r .token)
  curl -s -X POST $API/v1/servers -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' -d '{{"name":"web1","plan":"{plan}","image":"{image}"}}'
  curl -s $API/v1/servers -H "Authorization: Bearer $TOKEN"
  # the guest's serial console: curl -s $API/v1/servers/SERVER_ID/console -H "Authorization: Bearer $TOKEN"
"#,
        plan = order.plan,
        image = order.image,
        data = data_dir.display(),
        token = admin_token_path.display(),
    );
    if !new_token && !admin_token_path.exists() {
        tracing::warn!(data_dir = %data_dir.display(), "the database has an operator whose token is not in this data dir; issue one with `stratus admin-token`");
    }
}

pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let core = args.shared.open("stratus-api").await?;
    if let Some(path) = &args.bootstrap_admin_token {
        bootstrap_admin(&core, path).await?;
    }
    let shutdown = wiring::shutdown_signal();
    let app = stratus_api::app(core.api_state(Registry::default()));
    let listener = wiring::bind(args.listen, "REST API").await?;
    tracing::info!(listen = %args.listen, backend = ?args.shared.backend, "stratus API serving");
    serving::serve(listener, app, Limits::API, None, shutdown).await
}

/// The reverse DNS server of the configuration's `rdns:` section over the
/// store: PTRs customers set, the provider's defaults, SOA and NS.
fn reverse_dns(core: &Core) -> stratus_controller::rdns::ReverseDns {
    stratus_controller::rdns::ReverseDns {
        config: core.config.rdns.clone(),
        ledger: core.ledger.clone(),
        pools: Resources::new(core.objects()),
        served: Default::default(),
        clock: core.clock.clone(),
    }
}

pub async fn dns(args: DnsArgs) -> anyhow::Result<()> {
    let core = args.shared.open("stratus-dns").await?;
    let mut dns = reverse_dns(&core);
    if let Some(listen) = args.listen {
        dns.config.listen = Some(listen.to_string());
    }
    if dns.config.listen.is_none() {
        bail!(
            "--listen or the configuration's rdns.listen is required: the DNS server has nowhere to listen"
        );
    }
    let shutdown = wiring::shutdown_signal();
    dns.run(shutdown).await?;
    core.db.close().await;
    Ok(())
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let core = args.shared.open("stratus-controller").await?;
    let shutdown = wiring::shutdown_signal();
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "stratus".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let Some(agent_tls) = args.agent_tls.files()? else {
        bail!(
            "--agent-ca, --agent-client-cert and --agent-client-key are required: agents are reached over mutual TLS"
        );
    };
    let mut registry = Registry::default();
    // Agents answer only while this replica leads (see `leader`).
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let agents = wiring::agent_client(agent_tls, &mut registry)?.fenced(leading.clone());
    let controller = core.controller(
        &mut registry,
        ControllerConfig {
            runtime: RuntimeConfig {
                workers: args.workers,
                ..Default::default()
            },
            ..Default::default()
        },
        &identity,
        Arc::new(agents),
    )?;
    let registry = Arc::new(registry);
    let metrics_router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                    out
                }
            }),
        );
    let listener = wiring::bind(args.metrics_listen, "controller metrics").await?;
    core.spawn_compaction();
    let metrics_task = tokio::spawn(serving::serve(
        listener,
        metrics_router,
        Limits::METRICS,
        None,
        shutdown.clone(),
    ));

    // Only the Lease holder reconciles (the Lease lives in the resource
    // store, so this holds for both backends); a replica that loses the
    // Lease exits so it can never act beside the new leader.
    let elector = LeaderElector::new(
        Resources::new(core.objects()),
        args.shared.namespace.clone(),
        args.lease_name.clone(),
        identity.clone(),
        Duration::from_secs(args.lease_seconds.max(3)),
        core.clock.clone(),
    );
    tokio::spawn(elector.run(leading_tx, shutdown.clone()));
    tracing::info!(%identity, lease = %args.lease_name, namespace = %args.shared.namespace, "waiting to lead");
    let mut stop = shutdown.clone();
    tokio::select! {
        _ = leading.wait_for(|lead| *lead) => {}
        _ = stop.wait_for(|stop| *stop) => return metrics_task.await?,
    }
    tracing::info!(%identity, backend = ?args.shared.backend, "leading: stratus controller running");
    let (stop_controller, controller_stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(controller.run(controller_stopped));
    let mut stop = shutdown.clone();
    let lost = tokio::select! {
        _ = leading.wait_for(|lead| !*lead) => true,
        _ = stop.wait_for(|stop| *stop) => false,
    };
    let _ = stop_controller.send(true);
    running.await?;
    if lost {
        bail!(
            "lost the leader lease {}; exiting so that only the new leader acts",
            args.lease_name
        );
    }
    metrics_task.await?
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let Some(tls_files) = args.tls.files()? else {
        bail!(
            "--tls-cert, --tls-key and --client-ca are required: the agent serves mutual TLS only"
        );
    };
    let token = read_secret_file(&args.token_file)?;
    let mut config = driver_config(
        &args.libvirt_uri,
        &args.zone,
        args.pool,
        args.domain_type,
        args.network,
    );
    config.state_dir = args.state_dir;
    if let Some(capacity) = args.capacity {
        config.capacity = capacity;
    }
    if let Some(mode) = args.anti_spoofing {
        config.anti_spoofing = mode;
    }
    config.max_guest_pause = std::time::Duration::from_secs(args.max_guest_pause_seconds);
    config.agent_name = args.agent_name;
    let test_driver = args.libvirt_uri.starts_with("test:");
    if !args.seed_image.is_empty() && !test_driver {
        bail!("--seed-image creates empty images and is only for libvirt's test driver");
    }
    let driver = open_driver(config).await?;
    for image in args.seed_image {
        let driver = driver.clone();
        tokio::task::spawn_blocking(move || driver.seed_image(&image, 2)).await??;
    }
    let shutdown = wiring::shutdown_signal();
    let (router, tls) = wiring::agent_service(driver, &token, tls_files)?;
    let listener = wiring::bind(args.listen, "agent").await?;
    tracing::info!(listen = %args.listen, zone = %args.zone, uri = %args.libvirt_uri, "stratus agent serving (mutual TLS)");
    serving::serve(listener, router, Limits::AGENT, Some(tls), shutdown).await
}
