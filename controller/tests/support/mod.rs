//! What every reconciler test file shares: a controller's context on a
//! scratch database with the simulated agent (faults injected at will),
//! the reconcilers, and helpers to order and look.

#![allow(dead_code, unused_imports)]

pub use std::collections::HashMap;
pub use std::sync::Arc;
pub use std::time::Duration;
pub use stratus_agent_client::simulated::SimulatedAgent;
pub use stratus_controller::addresses::Addresses;
pub use stratus_controller::dnsbl::BlacklistChecker;
pub use stratus_controller::events::{EventType, Events, Regarding};
pub use stratus_controller::hypervisors::HypervisorProber;
pub use stratus_controller::ip_pools::IpPoolReconciler;
pub use stratus_controller::placements::Scheduling;
pub use stratus_controller::runtime::{ObjectKey, Outcome, Reconcile, RuntimeConfig};
pub use stratus_controller::servers::{ServerReconciler, UNSCHEDULABLE_RECHECK};
pub use stratus_controller::storage::StorageReconciler;
pub use stratus_controller::{AgentDirectory, Context, ControllerConfig, ControllerError};
pub use stratus_core::agent_api::{AntiSpoofing, DomainState};
pub use stratus_core::conditions::{self, ConditionStatus, ConditionType, EventReason};
pub use stratus_core::config::{Dnsbl, SeededPool};
pub use stratus_core::ids::HypervisorName;
pub use stratus_core::ip::Family;
pub use stratus_core::lifecycle;
pub use stratus_core::policy::{Policy, SuspensionMode};
pub use stratus_core::quota::{Quota, Usage, charged_object};
pub use stratus_core::resources::{
    Account, AccountState, Hypervisor, PowerState, ServerPhase, ServerResources, VirtualServer,
    VirtualServerSpec, VirtualServerStatus,
};
pub use stratus_core::resources::{
    IpPool, Ipv4Block, StorageEncryption, StoragePhase, StorageSubscription,
    StorageSubscriptionSpec, StorageSubscriptionStatus,
};
pub use stratus_core::standing::{FactKind, SuspensionReason, TerminationCause};
pub use stratus_core::testing as fixtures;
pub use stratus_core::{Clock, Config, ManualClock};
pub use stratus_store::ledger::{AuditAction, AuditSubject, Ledger, Listing, NewFact, Recorded};
pub use stratus_store::testing::{self, ScratchDatabase};
pub use stratus_store::vault::Vault;
pub use stratus_store::{ObjectStore, Resources, SqlObjectStore};

pub const NS: &str = "acc-0000000000000001";
/// The domain of server `vs-1` of account `NS`.
pub const DOMAIN: &str = "stratus-acc-0000000000000001.vs-1";

pub struct Harness {
    pub _scratch: ScratchDatabase,
    pub store: Arc<dyn ObjectStore>,
    pub servers: Resources<VirtualServer>,
    pub hypervisors: Resources<Hypervisor>,
    pub sim: Arc<SimulatedAgent>,
    pub ctx: Context,
    pub reconciler: Arc<ServerReconciler>,
    pub storage: Resources<StorageSubscription>,
    pub storage_reconciler: Arc<StorageReconciler>,
    pub prober: Arc<HypervisorProber>,
    pub ledger: Ledger,
    pub addresses: Arc<Addresses>,
    pub events: Arc<RecordedEvents>,
    pub clock: Arc<ManualClock>,
}

pub async fn harness_on(scratch: ScratchDatabase) -> Harness {
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> = Arc::new(
        SqlObjectStore::new(scratch.db.clone(), clock.clone())
            .with_poll_interval(Duration::from_millis(20)),
    );
    let servers = Resources::<VirtualServer>::new(store.clone());
    let hypervisors = Resources::<Hypervisor>::new(store.clone());
    let sim = Arc::new(SimulatedAgent::default());
    let credentials = Arc::new(Vault::new(scratch.db.clone(), &[9u8; 32], clock.clone()).unwrap());
    credentials.put("hv-token", "t", 0).await.unwrap();
    let ledger = Ledger::new(scratch.db.clone());
    let directory = AgentDirectory::new(hypervisors.clone(), credentials);
    let events = Arc::new(RecordedEvents::default());
    let ctx = Context::new(clock.clone(), sim.clone(), directory, ledger.clone())
        .with_events(events.clone());
    let pools = Resources::<IpPool>::new(store.clone());
    // The default zone's documentation pool, one for par1, and one for
    // zone a (where storage tests attach to servers).
    let mut seeded = SeededPool::documentation();
    seeded.push(SeededPool {
        name: "par1".into(),
        zone: "par1".into(),
        ipv4: Ipv4Block {
            cidr: "198.51.100.0/24".into(),
            gateway: "198.51.100.1".into(),
            excluded: Vec::new(),
        },
        ipv6: None,
    });
    seeded.push(SeededPool {
        name: "zone-a".into(),
        zone: "a".into(),
        ipv4: Ipv4Block {
            cidr: "100.64.10.0/24".into(),
            gateway: "100.64.10.1".into(),
            excluded: Vec::new(),
        },
        ipv6: None,
    });
    for seeded in seeded {
        pools
            .create(&IpPool::new(&seeded.name, seeded.spec()))
            .await
            .unwrap();
    }
    let addresses = Arc::new(Addresses::new(
        ledger.clone(),
        pools,
        Arc::new(BlacklistChecker::new(&Dnsbl::default()).unwrap()),
        clock.clone(),
        Policy::default(),
    ));
    let storage = Resources::<StorageSubscription>::new(store.clone());
    let scheduling = Scheduling::shared();
    let reconciler = Arc::new(
        ServerReconciler::new(
            ctx.clone(),
            servers.clone(),
            storage.clone(),
            Arc::new(harness_config()),
            addresses.clone(),
            scheduling.clone(),
        )
        .with_accounts(Resources::new(store.clone())),
    );
    let storage_reconciler = Arc::new(StorageReconciler::new(
        ctx.clone(),
        storage.clone(),
        servers.clone(),
        scheduling,
        Policy::default().storage,
    ));
    let prober = Arc::new(HypervisorProber::new(
        ctx.clone(),
        hypervisors.clone(),
        Duration::from_secs(15),
    ));
    Harness {
        clock,
        _scratch: scratch,
        store,
        servers,
        hypervisors,
        sim,
        ctx,
        reconciler,
        storage,
        storage_reconciler,
        prober,
        ledger,
        addresses,
        events,
    }
}

/// Events as (kind, name, reason), in the order published.
#[derive(Default)]
pub struct RecordedEvents(pub std::sync::Mutex<Vec<(String, String, EventReason)>>);

#[async_trait::async_trait]
impl Events for RecordedEvents {
    async fn publish(&self, regarding: &Regarding, _: EventType, reason: EventReason, _: &str) {
        self.0
            .lock()
            .unwrap()
            .push((regarding.kind.clone(), regarding.name.clone(), reason));
    }
}

impl RecordedEvents {
    pub fn about(&self, kind: &str, name: &str) -> Vec<EventReason> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, reason)| *reason)
            .collect()
    }
}

pub async fn harness() -> Harness {
    harness_on(testing::sqlite().await).await
}

impl Harness {
    pub async fn add_hypervisor(&self, name: &str, zone: &str, vcpus: u32, memory_mib: u64) {
        self.sim
            .add_node(name, zone, vcpus, memory_mib, 1000, &["debian-12.qcow2"]);
        self.hypervisors
            .create(
                &fixtures::hypervisor(name)
                    .zone(zone)
                    .credential("hv-token")
                    .build(),
            )
            .await
            .unwrap();
        self.prober.probe_all().await.unwrap();
    }

    pub async fn order(&self, name: &str, zone: Option<&str>) {
        let mut server = fixtures::server(name).in_account(NS);
        if let Some(zone) = zone {
            server = server.zone(zone);
        }
        self.servers.create(&server.build()).await.unwrap();
    }

    /// The whole controller on its runtime, as `stratus up` runs it.
    pub fn run_controller(
        &self,
        probe_interval: Duration,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let settings = ControllerConfig {
            runtime: RuntimeConfig {
                workers: 2,
                ..Default::default()
            },
            probe_interval,
            pool_interval: Duration::from_secs(60),
            deadline_poll: Duration::from_millis(50),
            notification_poll: Duration::from_millis(50),
        };
        let runtime = stratus_controller::controller(
            self.ctx.clone(),
            self.store.clone(),
            Arc::new(harness_config()),
            settings,
        )
        .unwrap();
        (stop, tokio::spawn(runtime.run(stopped)))
    }

    pub fn pool_reconciler(&self) -> IpPoolReconciler {
        IpPoolReconciler::new(
            self.ctx.clone(),
            Resources::new(self.store.clone()),
            self.addresses.clone(),
            Duration::from_secs(60),
        )
    }

    pub async fn reconcile(&self, name: &str) -> Result<Outcome, ControllerError> {
        self.reconciler
            .reconcile(&ObjectKey::new(Some(NS), name))
            .await
    }

    pub async fn order_storage(&self, name: &str, size_gib: u64, zone: Option<&str>) {
        let mut subscription = StorageSubscription::new(
            name,
            StorageSubscriptionSpec {
                name: "backup".into(),
                size_gib,
                zone: zone.map(str::to_owned),
                encryption: StorageEncryption::Client,
                content: None,
                verify_requests: 0,
                keys_given: 0,
                restore_from: None,
                snapshot_of: None,
                attached_to: None,
                written_by_guest: None,
                suspension: None,
                termination: None,
            },
        );
        subscription.metadata.namespace = Some(NS.into());
        self.storage.create(&subscription).await.unwrap();
    }

    pub async fn reconcile_storage(&self, name: &str) -> Result<Outcome, ControllerError> {
        self.storage_reconciler
            .reconcile(&ObjectKey::new(Some(NS), name))
            .await
    }

    /// Reconciles `name` as often and as long apart as confirms that a copy
    /// the agents stopped showing is gone (one empty listing is not).
    pub async fn confirm_storage_loss(&self, name: &str) {
        let step = stratus_core::storage::CONFIRM_AFTER / 2 + jiff::SignedDuration::from_secs(1);
        for _ in 0..stratus_core::storage::CONFIRM_OBSERVATIONS {
            let _ = self.reconcile_storage(name).await;
            self.clock.advance(step);
        }
        let _ = self.reconcile_storage(name).await;
    }

    pub async fn storage_status(&self, name: &str) -> StorageSubscriptionStatus {
        self.storage
            .get(Some(NS), name)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Details of the audit rows of `action` about subscription `name` of `NS`.
    pub async fn audited_storage(&self, name: &str, action: AuditAction) -> Vec<serde_json::Value> {
        let subject = AuditSubject::Storage {
            account: NS.into(),
            name: name.into(),
        };
        let trail = self.ledger.audit().trail(&subject).await.unwrap();
        trail
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| e.detail)
            .collect()
    }

    pub async fn status(&self, name: &str) -> VirtualServerStatus {
        self.servers
            .get(Some(NS), name)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Details of the audit rows of `action` about server `name` of `NS`.
    pub async fn audited(&self, name: &str, action: AuditAction) -> Vec<serde_json::Value> {
        let subject = AuditSubject::Server {
            account: NS.into(),
            name: name.into(),
        };
        let trail = self.ledger.audit().trail(&subject).await.unwrap();
        trail
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| e.detail)
            .collect()
    }

    pub async fn edit(&self, name: &str, f: impl Fn(&mut VirtualServerSpec)) {
        self.servers
            .update(Some(NS), name, |s| {
                f(&mut s.spec);
                true
            })
            .await
            .unwrap();
    }
}

/// Polls `check` until it holds, failing after 3 s (the recheck of a
/// waiting server is minutes away, so only a wake can pass in time).
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second account, whose servers a fact about `NS` must never touch.
pub const OTHER: &str = "acc-0000000000000002";

impl Harness {
    pub fn deadline_runner(&self) -> stratus_controller::deadlines::DeadlineRunner {
        stratus_controller::deadlines::DeadlineRunner::new(
            self.ctx.clone(),
            Resources::new(self.store.clone()),
            self.servers.clone(),
            Arc::new(Policy::default()),
            Duration::from_millis(50),
        )
    }

    /// A deadline runner on `policy` that also holds storage (and a
    /// server's snapshots) as the account's standing says.
    pub fn deadline_runner_with(
        &self,
        policy: Policy,
    ) -> stratus_controller::deadlines::DeadlineRunner {
        stratus_controller::deadlines::DeadlineRunner::new(
            self.ctx.clone(),
            Resources::new(self.store.clone()),
            self.servers.clone(),
            Arc::new(policy),
            Duration::from_millis(50),
        )
        .holding_storage(self.storage.clone())
    }

    /// Invoice `inv-1` overdue as of now and its reminder sent: the start
    /// of R1's suspension and R3's destruction.
    pub async fn report_overdue_invoice(&self) {
        let due_at = self.clock.now();
        self.report(
            "inv-1-overdue",
            FactKind::InvoiceOverdue {
                invoice: invoice("inv-1"),
                due_at,
            },
        )
        .await;
        self.report(
            "inv-1-reminder",
            FactKind::ReminderSent {
                invoice: invoice("inv-1"),
            },
        )
        .await;
    }

    /// Records a fact about `NS` now, as the API does, and makes it due.
    pub async fn report(&self, id: &str, kind: FactKind) {
        let fact = serde_json::to_value(&kind).unwrap();
        let now = self.clock.now().as_millisecond();
        let recorded = self
            .ledger
            .facts()
            .record(&NewFact {
                id,
                account: NS,
                kind: fact["type"].as_str().unwrap(),
                fact: &fact,
                body: &fact,
                actor: "test",
                recorded_at: now,
            })
            .await
            .unwrap();
        assert!(matches!(recorded, Recorded::New(_)), "{recorded:?}");
    }

    /// Two running servers of `NS` and one of `OTHER`, and both accounts.
    pub async fn three_running_servers(&self) {
        self.add_hypervisor("hv1", "default", 64, 65536).await;
        let accounts = Resources::<Account>::new(self.store.clone());
        for account in [NS, OTHER] {
            accounts
                .create(&fixtures::account(account).build())
                .await
                .unwrap();
        }
        self.order("vs-1", None).await;
        self.order("vs-2", None).await;
        self.servers
            .create(&fixtures::server("vs-9").in_account(OTHER).build())
            .await
            .unwrap();
        for _ in 0..6 {
            self.converge_all().await;
        }
        for (account, name) in [(NS, "vs-1"), (NS, "vs-2"), (OTHER, "vs-9")] {
            assert_eq!(
                self.phase_of(account, name).await,
                ServerPhase::Running,
                "{name}"
            );
        }
    }

    pub async fn converge_all(&self) {
        for (account, name) in [(NS, "vs-1"), (NS, "vs-2"), (OTHER, "vs-9")] {
            let _ = self
                .reconciler
                .reconcile(&ObjectKey::new(Some(account), name))
                .await;
        }
    }

    pub async fn phase_of(&self, account: &str, name: &str) -> ServerPhase {
        self.servers
            .get(Some(account), name)
            .await
            .unwrap()
            .and_then(|s| s.status)
            .unwrap_or_default()
            .phase
    }

    pub async fn standing_changes(&self) -> usize {
        let trail = self
            .ledger
            .audit()
            .account_trail(&stratus_core::ids::AccountId::parse(NS).unwrap())
            .await
            .unwrap();
        trail
            .iter()
            .filter(|e| e.action == AuditAction::StandingChange)
            .count()
    }
}

pub fn invoice(id: &str) -> String {
    id.to_owned()
}

/// Channels pointed at local receivers, with the secret files they sign with.
pub fn local_channels(
    dir: &std::path::Path,
    smtp: &stratus_controller::receivers::SmtpSink,
    hook: &stratus_controller::receivers::WebhookReceiver,
    billing: &stratus_controller::receivers::WebhookReceiver,
) -> stratus_core::notices::Notifications {
    use stratus_core::notices::{EmailChannel, Notifications, Smtp, SmtpTls, Webhook};
    let secret = dir.join("webhook.secret");
    stratus_store::private_files::write_private_file(&secret, WEBHOOK_SECRET.as_bytes()).unwrap();
    let webhook = |url: String| Webhook {
        url,
        secret_file: secret.display().to_string(),
    };
    Notifications {
        email: Some(EmailChannel {
            smtp: Smtp {
                host: "127.0.0.1".into(),
                port: Some(smtp.port()),
                tls: SmtpTls::None,
                username: None,
                password_file: None,
            },
            from: "Example Hosting <noc@example.net>".into(),
        }),
        webhook: Some(webhook(hook.url("/notices"))),
        billing_webhook: Some(webhook(billing.url("/billing"))),
        max_attempts: 3,
    }
}

pub const WEBHOOK_SECRET: &str = "a-shared-secret-of-32-characters";

/// Checks a webhook call's signature as a receiver would: HMAC-SHA256 of
/// `"<t>.<body>"` with the shared secret.
pub fn signed(call: &stratus_controller::receivers::ReceivedCall) -> bool {
    let Some(header) = call.headers.get("stratus-signature") else {
        return false;
    };
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut signed = t.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&call.body);
    let Ok(tag) = hex::decode(v1) else {
        return false;
    };
    ring::hmac::verify(&key, &signed, &tag).is_ok()
}

/// The managed name of subscription `st-1` of `NS` on the agents.
pub const STORAGE: &str = "stratus-acc-0000000000000001.st-1";

impl Harness {
    pub fn agent(&self, hypervisor: &str) -> stratus_controller::AgentEndpoint {
        stratus_controller::AgentEndpoint {
            hypervisor: HypervisorName::parse(hypervisor).unwrap(),
            url: "https://simulated".into(),
            token: "t".into(),
        }
    }

    /// What the API does for an upload: the content into a new version of
    /// the primary, then recorded in the spec.
    pub async fn upload(&self, primary: &str, version: u64, content: &[u8]) {
        use stratus_controller::AgentClient;
        let chunks: Vec<Result<Vec<u8>, String>> = vec![Ok(content.to_vec())];
        let stored = self
            .sim
            .write_version(
                &self.agent(primary),
                STORAGE,
                version,
                10,
                Box::pin(futures::stream::iter(chunks)),
            )
            .await
            .unwrap();
        self.storage
            .update(Some(NS), "st-1", |s| {
                s.spec.content = Some(stratus_core::resources::StorageContent {
                    version,
                    bytes: stored.bytes,
                    sha256: stored.sha256.clone(),
                    written_at: "2026-12-05T12:00:00Z".into(),
                });
                true
            })
            .await
            .unwrap();
    }
}

pub async fn stored_and_in_sync(h: &Harness, content: &[u8]) -> u64 {
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let version = 1_764_936_000_000;
    h.upload("a1", version, content).await;
    h.reconcile_storage("st-1").await.unwrap();
    assert!(h.storage_status("st-1").await.replicas_in_sync);
    version
}

/// What the API does for an attach: the server recorded, and from then on
/// the primary copy may be written by its guest.
pub async fn attach(h: &Harness, server: Option<&str>) {
    h.storage
        .update(Some(NS), "st-1", |s| {
            s.spec.attached_to = server.map(str::to_owned);
            if let Some(server) = server {
                s.spec.written_by_guest = Some(server.to_owned());
            }
            true
        })
        .await
        .unwrap();
}

pub fn attached_condition(status: &StorageSubscriptionStatus) -> (bool, String) {
    let condition = conditions::get(&status.conditions, ConditionType::Attached).unwrap();
    (
        conditions::is_true(&status.conditions, ConditionType::Attached),
        condition.reason.clone(),
    )
}

/// The catalogue the harness's controller runs with: the default one,
/// with a rescue system.
pub fn harness_config() -> Config {
    Config {
        rescue_image: Some("debian-12".into()),
        ..Config::default()
    }
}
