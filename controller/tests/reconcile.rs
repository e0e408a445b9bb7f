//! The server reconciler against the simulated agent, with injected faults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stratus_controller::addresses::Addresses;
use stratus_controller::dnsbl::BlacklistChecker;
use stratus_controller::events::{EventType, Events, Regarding};
use stratus_controller::hypervisors::HypervisorProber;
use stratus_controller::ip_pools::IpPoolReconciler;
use stratus_controller::placements::Scheduling;
use stratus_controller::runtime::{ObjectKey, Outcome, Reconcile, RuntimeConfig};
use stratus_controller::servers::{ServerReconciler, UNSCHEDULABLE_RECHECK};
use stratus_controller::simulated::SimulatedAgent;
use stratus_controller::storage::StorageReconciler;
use stratus_controller::{AgentDirectory, Context, ControllerConfig, ControllerError};
use stratus_core::agent_api::{AntiSpoofing, DomainState};
use stratus_core::conditions::{self, ConditionStatus, ConditionType, EventReason};
use stratus_core::config::{Dnsbl, SeededPool};
use stratus_core::ids::HypervisorName;
use stratus_core::ip::Family;
use stratus_core::lifecycle;
use stratus_core::policy::{Policy, SuspensionMode};
use stratus_core::quota::{Quota, Usage, charged_object};
use stratus_core::resources::{
    Account, AccountState, Hypervisor, PowerState, ServerPhase, VirtualServer, VirtualServerSpec,
    VirtualServerStatus,
};
use stratus_core::resources::{
    IpPool, Ipv4Block, StorageEncryption, StoragePhase, StorageSubscription,
    StorageSubscriptionSpec, StorageSubscriptionStatus,
};
use stratus_core::standing::{FactKind, SuspensionReason, TerminationCause};
use stratus_core::testing as fixtures;
use stratus_core::{Clock, Config, ManualClock};
use stratus_store::ledger::{AuditAction, AuditSubject, Ledger, Listing, NewFact, Recorded};
use stratus_store::testing::{self, ScratchDatabase};
use stratus_store::vault::Vault;
use stratus_store::{ObjectStore, Resources, SqlObjectStore};

const NS: &str = "acc-0000000000000001";
/// The domain of server `vs-1` of account `NS`.
const DOMAIN: &str = "stratus-acc-0000000000000001.vs-1";

struct Harness {
    _scratch: ScratchDatabase,
    store: Arc<dyn ObjectStore>,
    servers: Resources<VirtualServer>,
    hypervisors: Resources<Hypervisor>,
    sim: Arc<SimulatedAgent>,
    ctx: Context,
    reconciler: Arc<ServerReconciler>,
    storage: Resources<StorageSubscription>,
    storage_reconciler: Arc<StorageReconciler>,
    prober: Arc<HypervisorProber>,
    ledger: Ledger,
    addresses: Arc<Addresses>,
    events: Arc<RecordedEvents>,
    clock: Arc<ManualClock>,
}

async fn harness_on(scratch: ScratchDatabase) -> Harness {
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
    let reconciler = Arc::new(ServerReconciler::new(
        ctx.clone(),
        servers.clone(),
        storage.clone(),
        Arc::new(Config::default()),
        addresses.clone(),
        scheduling.clone(),
    ));
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
struct RecordedEvents(std::sync::Mutex<Vec<(String, String, EventReason)>>);

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
    fn about(&self, kind: &str, name: &str) -> Vec<EventReason> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, reason)| *reason)
            .collect()
    }
}

async fn harness() -> Harness {
    harness_on(testing::sqlite().await).await
}

impl Harness {
    async fn add_hypervisor(&self, name: &str, zone: &str, vcpus: u32, memory_mib: u64) {
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

    async fn order(&self, name: &str, zone: Option<&str>) {
        let mut server = fixtures::server(name).in_account(NS);
        if let Some(zone) = zone {
            server = server.zone(zone);
        }
        self.servers.create(&server.build()).await.unwrap();
    }

    /// The whole controller on its runtime, as `stratus up` runs it.
    fn run_controller(
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
            Arc::new(Config::default()),
            settings,
        )
        .unwrap();
        (stop, tokio::spawn(runtime.run(stopped)))
    }

    fn pool_reconciler(&self) -> IpPoolReconciler {
        IpPoolReconciler::new(
            self.ctx.clone(),
            Resources::new(self.store.clone()),
            self.addresses.clone(),
            Duration::from_secs(60),
        )
    }

    async fn reconcile(&self, name: &str) -> Result<Outcome, ControllerError> {
        self.reconciler
            .reconcile(&ObjectKey::new(Some(NS), name))
            .await
    }

    async fn order_storage(&self, name: &str, size_gib: u64, zone: Option<&str>) {
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
                attached_to: None,
                written_by_guest: None,
                suspension: None,
                termination: None,
            },
        );
        subscription.metadata.namespace = Some(NS.into());
        self.storage.create(&subscription).await.unwrap();
    }

    async fn reconcile_storage(&self, name: &str) -> Result<Outcome, ControllerError> {
        self.storage_reconciler
            .reconcile(&ObjectKey::new(Some(NS), name))
            .await
    }

    /// Reconciles `name` as often and as long apart as confirms that a copy
    /// the agents stopped showing is gone (one empty listing is not).
    async fn confirm_storage_loss(&self, name: &str) {
        let step = stratus_core::storage::CONFIRM_AFTER / 2 + jiff::SignedDuration::from_secs(1);
        for _ in 0..stratus_core::storage::CONFIRM_OBSERVATIONS {
            let _ = self.reconcile_storage(name).await;
            self.clock.advance(step);
        }
        let _ = self.reconcile_storage(name).await;
    }

    async fn storage_status(&self, name: &str) -> StorageSubscriptionStatus {
        self.storage
            .get(Some(NS), name)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Details of the audit rows of `action` about subscription `name` of `NS`.
    async fn audited_storage(&self, name: &str, action: AuditAction) -> Vec<serde_json::Value> {
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

    async fn status(&self, name: &str) -> VirtualServerStatus {
        self.servers
            .get(Some(NS), name)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Details of the audit rows of `action` about server `name` of `NS`.
    async fn audited(&self, name: &str, action: AuditAction) -> Vec<serde_json::Value> {
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

    async fn edit(&self, name: &str, f: impl Fn(&mut VirtualServerSpec)) {
        self.servers
            .update(Some(NS), name, |s| {
                f(&mut s.spec);
                true
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_order_runs_on_both_databases() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let status = h.status("vs-1").await;
        assert_eq!(status.phase, ServerPhase::Running, "{label}: {status:?}");
        assert_eq!(
            status.hypervisor.as_ref().map(HypervisorName::as_str),
            Some("hv1")
        );
        assert!(status.provisioned);
        assert!(conditions::is_true(
            &status.conditions,
            ConditionType::Ready
        ));
        assert_eq!(
            h.sim.domains("hv1"),
            [(DOMAIN.to_owned(), Some(DomainState::Running), true)]
        );
        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        assert_eq!(
            server.metadata.finalizers.as_deref(),
            Some(&["stratus.dev/teardown".to_owned()][..])
        );
        assert_eq!(status.observed_generation, server.metadata.generation);
        // The audit log tells the story.
        let server_subject = AuditSubject::Server {
            account: NS.into(),
            name: "vs-1".into(),
        };
        let trail = h.ledger.audit().trail(&server_subject).await.unwrap();
        let phases: Vec<String> = trail
            .iter()
            .filter(|e| e.action == AuditAction::ServerPhase)
            .map(|e| e.detail["to"].to_string())
            .collect();
        assert_eq!(phases, ["\"provisioning\"", "\"running\""], "{label}");
        // The domain got what the plan says.
        let spec = h.sim.spec_of("hv1", DOMAIN).unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disk_gib), (1, 1024, 25));
        assert_eq!(spec.image_volume, "debian-12.qcow2");
        assert_eq!(spec.ipv4, status.ipv4, "{label}");
        assert_eq!(spec.ipv6, status.ipv6, "{label}");
        // The guest's cloud-init seed says who it is and where it is.
        let seed = spec.seed.as_ref().expect("every domain gets a seed");
        assert_eq!(seed.instance_id, "vs-1");
        assert_eq!(seed.hostname, "web1");
        assert_eq!((&seed.ipv4, &seed.ipv6), (&status.ipv4, &status.ipv6));
        assert_eq!(Some(&seed.mac_address), status.mac_address.as_ref());
        assert_eq!(Some(spec.mac_address), status.mac_address);
        assert_eq!(spec.boot, None, "debian-12 boots from its disk");
    }
}

/// R19, R22: a server holds an IPv4 address and an IPv6 /64 before its
/// domain exists, keeps them through stops and restarts, and gives them
/// to quarantine when it is gone; the quarantine ends after `ip.quarantine`.
#[tokio::test]
async fn r19_r22_addresses_are_held_before_the_domain_sticky_and_quarantined_at_deletion() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.add_hypervisor("hv1", "default", 8, 16384).await;
        h.order("vs-1", None).await;
        h.reconcile("vs-1").await.unwrap();
        let status = h.status("vs-1").await;
        let ipv4 = status.ipv4.clone().expect("an IPv4 address");
        let ipv6 = status.ipv6.clone().expect("an IPv6 prefix");
        assert!(ipv4.address.starts_with("192.0.2."), "{label}: {ipv4:?}");
        assert_eq!(
            (ipv4.prefix_length, ipv4.gateway.as_str()),
            (24, "192.0.2.1")
        );
        let prefix = ipv6.prefix.clone().unwrap();
        assert!(
            prefix.starts_with("2001:db8:") && prefix.ends_with("::/64"),
            "{prefix}"
        );
        assert_eq!(ipv6.address, prefix.replace("::/64", "::1"));
        assert!(conditions::is_true(
            &status.conditions,
            ConditionType::AddressesAssigned
        ));

        // Stop, start, and a reconcile after a restart: the same addresses.
        for power in [PowerState::Stopped, PowerState::Running] {
            h.servers
                .update(Some(NS), "vs-1", |s| {
                    s.spec.power = power;
                    true
                })
                .await
                .unwrap();
            h.clock.advance(jiff::SignedDuration::from_secs(600));
            h.reconcile("vs-1").await.unwrap();
            h.reconcile("vs-1").await.unwrap();
        }
        let again = h.status("vs-1").await;
        assert_eq!(
            (again.ipv4, again.ipv6),
            (Some(ipv4.clone()), Some(ipv6.clone())),
            "{label}"
        );

        let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
        let uid = server.metadata.uid.clone().unwrap();
        h.servers.delete(Some(NS), "vs-1").await.unwrap();
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done, "{label}");
        let ips = h.ledger.ips();
        assert!(ips.held_by(&uid).await.unwrap().is_empty(), "{label}");
        let history = ips.history(&ipv4.address).await.unwrap();
        assert_eq!(history.len(), 1, "{label}");
        assert_eq!(history[0].account, NS);
        assert_eq!(history[0].subject, format!("{NS}/vs-1"));
        assert!(history[0].released_at.is_some());
        let quarantined = ips
            .usage("documentation", stratus_core::ip::Family::V4)
            .await
            .unwrap();
        assert_eq!(
            (quarantined.allocated, quarantined.quarantined),
            (0, 1),
            "{label}"
        );
        // Seven days later the address is free again (no blacklist lists it).
        let pools = h.pool_reconciler();
        pools
            .reconcile(&ObjectKey::new(None, "documentation"))
            .await
            .unwrap();
        assert_eq!(
            ips.usage("documentation", stratus_core::ip::Family::V4)
                .await
                .unwrap()
                .quarantined,
            1
        );
        h.clock.advance(jiff::SignedDuration::from_hours(7 * 24));
        pools
            .reconcile(&ObjectKey::new(None, "documentation"))
            .await
            .unwrap();
        let usage = ips
            .usage("documentation", stratus_core::ip::Family::V4)
            .await
            .unwrap();
        assert_eq!((usage.allocated, usage.quarantined), (0, 0), "{label}");
        let pool = Resources::<IpPool>::new(h.store.clone())
            .get(None, "documentation")
            .await
            .unwrap()
            .unwrap();
        let counts = pool.status.unwrap().ipv4;
        assert_eq!(
            (counts.total, counts.free, counts.allocated),
            (253, 253, 0),
            "{label}"
        );
    }
}

/// Two accounts may name a server alike (Kubernetes mode): on one
/// hypervisor they are two domains, and deleting one leaves the other.
/// A pool written with kubectl that overlaps an older one is the one
/// refused: its status says why and no server is numbered from it.
#[tokio::test]
async fn r19_a_kubectl_pool_overlapping_an_older_one_serves_nothing() {
    let h = harness().await;
    let pools = Resources::<IpPool>::new(h.store.clone());
    let older: Vec<IpPool> = pools
        .list(None)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.zone == "default")
        .collect();
    assert_eq!(older.len(), 1, "the harness's pool of zone default");
    let mut late = older[0].clone();
    late.metadata = kube::api::ObjectMeta {
        name: Some("late".into()),
        ..Default::default()
    };
    late.status = None;
    pools.create(&late).await.unwrap();
    let reconciler = h.pool_reconciler();
    reconciler
        .reconcile(&ObjectKey::new(None, "late"))
        .await
        .unwrap();
    let status = pools
        .get(None, "late")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    let ready = conditions::get(&status.conditions, ConditionType::Ready)
        .cloned()
        .unwrap();
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "Overlapping");
    let older_name = older[0].metadata.name.clone().unwrap();
    assert!(
        ready.message.contains(&format!("IP pool {older_name}")),
        "{ready:?}"
    );
    let older_key = ObjectKey::new(None, &older_name);
    reconciler.reconcile(&older_key).await.unwrap();
    let older_status = pools
        .get(None, &older_name)
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert!(conditions::is_true(
        &older_status.conditions,
        ConditionType::Ready
    ));

    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let held = h
        .ledger
        .ips()
        .held_by(
            &h.servers
                .get(Some(NS), "vs-1")
                .await
                .unwrap()
                .unwrap()
                .metadata
                .uid
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        held.iter().all(|holding| holding.pool == older_name),
        "{held:?}"
    );
    assert!(status.ipv4.is_some());
}

/// A listing the sweep found shows on the server (condition and event),
/// and so does its end.
#[tokio::test]
async fn r20_a_listed_address_is_said_on_its_server() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert!(conditions::is_true(
        &status.conditions,
        ConditionType::AddressesClean
    ));
    let ipv4 = status.ipv4.unwrap().address;
    let ips = h.ledger.ips();
    ips.mark_listed(&Listing {
        address: ipv4.clone(),
        pool: "default".into(),
        family: Family::V4,
        slot: 1,
        checked: ipv4.clone(),
        zone: "bl.test".into(),
        reason: "spam trap hit".into(),
        since: 0,
    })
    .await
    .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let condition = conditions::get(&status.conditions, ConditionType::AddressesClean)
        .cloned()
        .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "Blacklisted");
    assert_eq!(
        condition.message,
        format!("{ipv4} is listed by bl.test (spam trap hit)")
    );
    assert_eq!(
        status.phase,
        ServerPhase::Running,
        "the server keeps running"
    );
    ips.clear_listing(&ipv4).await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    assert!(conditions::is_true(
        &h.status("vs-1").await.conditions,
        ConditionType::AddressesClean
    ));
    let events = h.events.about("VirtualServer", "vs-1");
    assert_eq!(
        events[events.len() - 2..],
        [EventReason::AddressListed, EventReason::AddressDelisted],
        "one event per change: {events:?}"
    );
}

#[tokio::test]
async fn same_named_servers_of_two_accounts_never_share_a_domain() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    const OTHER: &str = "acc-0000000000000002";
    h.order("vs-1", None).await;
    h.servers
        .create(&fixtures::server("vs-1").in_account(OTHER).build())
        .await
        .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconciler
        .reconcile(&ObjectKey::new(Some(OTHER), "vs-1"))
        .await
        .unwrap();
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(domains, [DOMAIN, "stratus-acc-0000000000000002.vs-1"]);
    let mine = h.status("vs-1").await;
    let theirs = h
        .servers
        .get(Some(OTHER), "vs-1")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_ne!(mine.mac_address, theirs.mac_address);

    h.servers.delete(Some(OTHER), "vs-1").await.unwrap();
    h.reconciler
        .reconcile(&ObjectKey::new(Some(OTHER), "vs-1"))
        .await
        .unwrap();
    assert_eq!(
        h.sim.domains("hv1"),
        [(DOMAIN.to_owned(), Some(DomainState::Running), true)],
        "the other account's server and disk are untouched"
    );
    assert_eq!(
        h.ledger.macs().held().await.unwrap(),
        1,
        "its MAC was released"
    );
}

/// A server placed by an earlier release (domain named after the object
/// alone, MAC hashed from the name) keeps both; the ledger now holds its MAC.
#[tokio::test]
async fn a_server_placed_by_an_earlier_release_keeps_its_domain_and_mac() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    // Rewind the hypervisor, the status and the ledger to what the earlier
    // release left.
    h.sim.rename_domain("hv1", DOMAIN, "stratus-vs-1");
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let uid = server.metadata.uid.clone().unwrap();
    let mut legacy = server.status.clone().unwrap();
    let mac = legacy.mac_address.clone().unwrap();
    legacy.domain = None;
    h.servers
        .patch_status(Some(NS), "vs-1", &legacy)
        .await
        .unwrap();
    h.ledger.macs().release(&uid, 0).await.unwrap();

    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.domain.as_deref(), Some("stratus-vs-1"));
    assert_eq!(status.phase, ServerPhase::Running, "{status:?}");
    assert_eq!(status.mac_address.as_deref(), Some(mac.as_str()));
    assert_eq!(
        h.ledger.macs().held_by(&uid).await.unwrap().as_deref(),
        Some(mac.as_str())
    );
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(domains, ["stratus-vs-1"], "no second domain was created");
}

/// Defect 12 of issue 25: an earlier release named domains after the
/// server alone, so same-named servers of two accounts on one hypervisor
/// share that name. A server whose domain was never recorded adopts the
/// legacy domain only when it carries its own MAC; another account's is
/// never adopted (deleting one would have wiped the other's disk), and
/// the server is told its own disk is missing rather than given a new one.
#[tokio::test]
async fn a_legacy_domain_of_another_account_is_never_adopted() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    // The other account's server of the same name holds the legacy name.
    h.sim.rename_domain("hv1", DOMAIN, "stratus-vs-1");
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let mut legacy = server.status.clone().unwrap();
    legacy.domain = None;
    legacy.mac_address = Some("52:54:00:aa:bb:cc".into());
    h.servers
        .patch_status(Some(NS), "vs-1", &legacy)
        .await
        .unwrap();
    let _ = h.reconcile("vs-1").await;
    let status = h.status("vs-1").await;
    assert_eq!(
        status.domain.as_deref(),
        Some(DOMAIN),
        "today's name, never the other account's domain"
    );
    assert_ne!(status.phase, ServerPhase::Running, "{status:?}");
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(
        domains,
        ["stratus-vs-1"],
        "the other domain is untouched and no empty disk was made"
    );
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    for _ in 0..4 {
        let _ = h.reconcile("vs-1").await;
    }
    let domains: Vec<String> = h.sim.domains("hv1").into_iter().map(|d| d.0).collect();
    assert_eq!(
        domains,
        ["stratus-vs-1"],
        "deleting this server leaves the other's domain"
    );
}

#[tokio::test]
async fn reconciling_again_changes_nothing() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let before = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let calls = h.sim.calls().len();
    for _ in 0..3 {
        assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    }
    let after = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "no write when nothing changed"
    );
    let new_calls = &h.sim.calls()[calls..];
    assert!(
        new_calls.iter().all(|c| c.starts_with("observe")),
        "{new_calls:?}"
    );
    assert_eq!(h.sim.domains("hv1").len(), 1);
}

#[tokio::test]
async fn a_crash_between_agent_and_status_is_adopted_not_duplicated() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // The agent fails after the placement was recorded, as if the controller died there.
    h.sim.fail_next("hv1", "ensure", 1);
    assert!(h.reconcile("vs-1").await.is_err());
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Provisioning);
    assert_eq!(
        status.hypervisor.as_ref().map(HypervisorName::as_str),
        Some("hv1"),
        "the choice is recorded before acting"
    );
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::AgentReachable
    ));
    // The retry converges to one running domain.
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
    assert_eq!(h.sim.domains("hv1").len(), 1);
}

#[tokio::test]
async fn an_unreachable_agent_leaves_the_server_provisioning_with_a_reason() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // Reachable when probed, gone when the server is provisioned.
    h.sim.set_reachable("hv1", false);
    let err = h.reconcile("vs-1").await.unwrap_err();
    assert_eq!(err.metric_label(), "agent_unreachable");
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Provisioning);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::AgentReachable)
        .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert!(
        condition.message.contains("connection refused"),
        "{condition:?}"
    );
    h.sim.set_reachable("hv1", true);
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
}

#[tokio::test]
async fn a_vanished_disk_is_reported_and_not_recreated() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.sim.lose_disk("hv1", DOMAIN);
    let calls_before = h.sim.calls().len();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Error);
    assert!(
        status.reason.as_deref().unwrap().contains("disk"),
        "{status:?}"
    );
    let new_calls = &h.sim.calls()[calls_before..];
    assert!(
        new_calls.iter().all(|c| c.starts_with("observe")),
        "nothing was created again: {new_calls:?}"
    );
    assert!(h.sim.domains("hv1").iter().all(|(_, _, disk)| !disk));
}

/// A guest that ignores ACPI does not hold a worker: the reconcile asks,
/// returns with a recheck, and a later one powers the guest off once the
/// grace period is over.
#[tokio::test]
async fn a_guest_ignoring_shutdown_is_powered_off_after_the_grace_period() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.sim.guests_ignore_acpi("hv1");
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.edit("vs-1", |s| s.power = PowerState::Stopped).await;
    let outcome = h.reconcile("vs-1").await.unwrap();
    assert!(
        matches!(outcome, Outcome::RequeueAfter(after) if after <= Duration::from_secs(5)),
        "{outcome:?}"
    );
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
    let asked = |h: &Harness| {
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("ensure"))
            .count()
    };
    let asked_once = asked(&h);
    h.clock.advance(jiff::SignedDuration::from_secs(60));
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        asked(&h),
        asked_once,
        "no second shutdown request within the grace period"
    );
    h.clock.advance(jiff::SignedDuration::from_secs(120));
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Stopped));
    let forced = h.sim.spec_of("hv1", DOMAIN).unwrap();
    assert!(forced.power_off, "the last call powered it off");
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Stopped);
    assert_eq!(status.stop_requested_at, None);
}

/// Defect 10 of issue 25: a domain that runs while its guest stopped
/// booting (its console shows why) is not called running and ready: the
/// server says the guest did not come up, with what its console showed.
#[tokio::test]
async fn a_guest_that_did_not_come_up_is_said_so_not_called_ready() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Running);
    assert!(conditions::is_true(
        &status.conditions,
        ConditionType::GuestBooted
    ));
    h.sim.fail_boot(
        "hv1",
        DOMAIN,
        "its root file system is larger than its disk (EXT4-fs (vda): bad geometry)",
    );
    h.reconcile("vs-1").await.unwrap();
    let status = h.status("vs-1").await;
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("the guest did not come up: its root file system is larger"),
        "{status:?}"
    );
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::GuestBooted
    ));
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::Ready
    ));
}

#[tokio::test]
async fn power_changes_follow_the_spec() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.edit("vs-1", |s| s.power = PowerState::Stopped).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Stopped);
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Stopped));
    h.edit("vs-1", |s| s.power = PowerState::Running).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
    h.edit("vs-1", |s| s.reboot_requests += 1).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("reboot"))
            .count(),
        1
    );
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("reboot"))
            .count(),
        1,
        "one reboot per request"
    );
    assert_eq!(h.status("vs-1").await.reboots_done, 1);
    // A reboot that failed on a transient error is retried, not marked done.
    h.edit("vs-1", |s| s.reboot_requests += 1).await;
    h.sim.fail_next("hv1", "reboot", 1);
    assert!(h.reconcile("vs-1").await.is_err());
    assert_eq!(h.status("vs-1").await.reboots_done, 1, "not done yet");
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.reboots_done, 2);
    let reboots = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.starts_with("reboot"))
        .count();
    assert_eq!(reboots, 3, "the failed reboot was tried again");
    // A guest that powers itself off is started again: the customer asked for running.
    h.sim.power_off("hv1", DOMAIN);
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.sim.domains("hv1")[0].1, Some(DomainState::Running));
}

#[tokio::test]
async fn deletion_destroys_then_releases_the_object() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    // What the API charged the account for it.
    let quotas = h.ledger.quotas();
    let charge = Usage {
        servers: 1,
        vcpus: 1,
        memory_mib: 1024,
        disk_gib: 25,
        storage_gib: 0,
    };
    let charged = charged_object(NS, "vs-1");
    quotas
        .charge(NS, &charged, charge, Quota::default(), 0)
        .await
        .unwrap()
        .unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.sim.set_reachable("hv1", false);
    assert!(
        h.reconcile("vs-1").await.is_err(),
        "agent down: the finalizer stays"
    );
    assert_eq!(
        quotas.usage(NS).await.unwrap(),
        charge,
        "held until torn down"
    );
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Terminating);
    h.sim.set_reachable("hv1", true);
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert!(h.servers.get(Some(NS), "vs-1").await.unwrap().is_none());
    assert!(h.sim.domains("hv1").is_empty());
    assert_eq!(
        quotas.usage(NS).await.unwrap(),
        Usage::default(),
        "the quota is given back"
    );
    assert_eq!(
        h.reconcile("vs-1").await.unwrap(),
        Outcome::Done,
        "reconciling a gone server is harmless"
    );
    let destroyed = h.audited("vs-1", AuditAction::ServerDestroyed).await;
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0]["disk"], "wiped");
}

/// Where storage cannot overwrite a disk, the audit and an operator-visible
/// warning say "deleted without wipe"; nothing claims a wipe.
#[tokio::test]
async fn a_disk_deleted_without_wipe_is_said_so() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    h.sim.cannot_wipe("hv1");
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    let destroyed = h.audited("vs-1", AuditAction::ServerDestroyed).await;
    assert_eq!(destroyed[0]["disk"], "deleted without wipe");
    assert!(
        h.events
            .about("VirtualServer", "vs-1")
            .contains(&EventReason::DiskNotWiped)
    );
}

#[tokio::test]
async fn scheduling_respects_zone_and_capacity() {
    let h = harness().await;
    h.add_hypervisor("par-a", "par1", 2, 2048).await;
    h.add_hypervisor("ams-a", "ams1", 8, 16384).await;
    h.order("vs-1", Some("par1")).await;
    h.order("vs-2", Some("par1")).await;
    h.order("vs-3", Some("par1")).await;
    h.order("vs-4", Some("lon1")).await;
    for name in ["vs-1", "vs-2"] {
        h.reconcile(name).await.unwrap();
        assert_eq!(
            h.status(name)
                .await
                .hypervisor
                .as_ref()
                .map(HypervisorName::as_str),
            Some("par-a")
        );
        assert_eq!(
            h.status(name).await.zone.as_deref(),
            Some("par1"),
            "the zone it runs in is recorded with the placement"
        );
    }
    assert_eq!(
        h.reconcile("vs-3").await.unwrap(),
        Outcome::RequeueAfter(UNSCHEDULABLE_RECHECK)
    );
    let full = h.status("vs-3").await;
    assert_eq!(full.phase, ServerPhase::Pending);
    assert!(
        full.reason
            .as_deref()
            .unwrap()
            .contains("no hypervisor in zone par1 has room"),
        "{full:?}"
    );
    h.reconcile("vs-4").await.unwrap();
    assert!(h.status("vs-4").await.reason.unwrap().contains("lon1"));
    // Room appears when a server goes away.
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile("vs-3").await.unwrap();
    assert_eq!(h.status("vs-3").await.phase, ServerPhase::Running);
}

/// A waiting server costs nothing while it waits: it is not retried on a
/// short timer, but woken by what could place it.
#[tokio::test]
async fn a_waiting_server_is_woken_by_freed_room_and_by_new_capacity() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 2, 2048).await;
    let (stop, running) = h.run_controller(Duration::from_millis(100));
    for name in ["vs-1", "vs-2", "vs-3"] {
        h.order(name, None).await;
    }
    let h = &h;
    let placed =
        |name: &'static str| async move { h.status(name).await.phase == ServerPhase::Running };
    wait_until("two servers placed", || async {
        placed("vs-1").await && placed("vs-2").await && h.status("vs-3").await.reason.is_some()
    })
    .await;
    assert_eq!(h.status("vs-3").await.phase, ServerPhase::Pending);

    // Room freed by a deletion is taken at once, well before any recheck.
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    wait_until("vs-3 placed in freed room", || placed("vs-3")).await;

    // A hypervisor that reports more capacity wakes the next waiting one.
    h.order("vs-4", None).await;
    wait_until("vs-4 waits", || async {
        h.status("vs-4").await.reason.is_some()
    })
    .await;
    h.sim.set_capacity("hv1", 4, 4096);
    wait_until("vs-4 placed on grown capacity", || placed("vs-4")).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

/// A server waiting for an address is tried again after as long as it
/// has waited (at least a minute, at most a quarter of an hour), so an
/// exhausted zone costs each waiting server a few checks an hour.
#[tokio::test]
async fn r20_a_server_waiting_for_an_address_is_tried_less_often_the_longer_it_waits() {
    let h = harness().await;
    h.add_hypervisor("hv1", "ams1", 8, 16384).await;
    h.order("vs-1", None).await;
    let mut delays = Vec::new();
    // Waited so far: 0 s, 30 s, 5 min, 1 h.
    for step in [0, 30, 270, 3300] {
        h.clock.advance(jiff::SignedDuration::from_secs(step));
        delays.push(h.reconcile("vs-1").await.unwrap());
    }
    let after = |secs| Outcome::RequeueAfter(Duration::from_secs(secs));
    assert_eq!(
        delays,
        [after(60), after(60), after(5 * 60), after(15 * 60)]
    );
    assert_eq!(
        h.status("vs-1").await.reason.as_deref(),
        Some("no_clean_address: no IP pool serves zone ams1")
    );
}

/// A pool that comes to offer addresses (created, or more of it free)
/// wakes the servers waiting for one at once, not at their next recheck.
#[tokio::test]
async fn r20_a_pool_that_offers_addresses_wakes_the_servers_waiting_for_one() {
    let h = harness().await;
    h.add_hypervisor("hv1", "ams1", 8, 16384).await;
    let (stop, running) = h.run_controller(Duration::from_secs(15));
    h.order("vs-1", None).await;
    let h = &h;
    wait_until("vs-1 waits for an address", || async {
        h.status("vs-1")
            .await
            .reason
            .is_some_and(|r| r.starts_with(lifecycle::NO_CLEAN_ADDRESS))
    })
    .await;
    Resources::<IpPool>::new(h.store.clone())
        .create(&IpPool::new(
            "ams1",
            SeededPool {
                name: "ams1".into(),
                zone: "ams1".into(),
                ipv4: Ipv4Block {
                    cidr: "203.0.113.0/24".into(),
                    gateway: "203.0.113.1".into(),
                    excluded: Vec::new(),
                },
                ipv6: None,
            }
            .spec(),
        ))
        .await
        .unwrap();
    wait_until("vs-1 numbered from the new pool", || async {
        h.status("vs-1")
            .await
            .ipv4
            .is_some_and(|a| a.address.starts_with("203.0.113."))
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

/// Polls `check` until it holds, failing after 3 s (the recheck of a
/// waiting server is minutes away, so only a wake can pass in time).
async fn wait_until<F, Fut>(what: &str, check: F)
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

#[tokio::test]
async fn concurrent_orders_never_overbook_a_hypervisor() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 4, 4096).await;
    h.add_hypervisor("hv2", "default", 4, 4096).await;
    let names: Vec<String> = (0..10).map(|i| format!("vs-{i}")).collect();
    for name in &names {
        h.order(name, None).await;
    }
    let runs = names.iter().map(|n| h.reconcile(n));
    futures::future::join_all(runs).await;
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for name in &names {
        if let Some(hv) = h.status(name).await.hypervisor {
            *per_host.entry(hv.to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_host.get("hv1"), Some(&4), "{per_host:?}");
    assert_eq!(per_host.get("hv2"), Some(&4), "{per_host:?}");
}

#[tokio::test]
async fn the_controller_runtime_drives_orders_from_watch_events() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    let (stop, running) = h.run_controller(Duration::from_secs(15));
    h.order("vs-1", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.status("vs-1").await.phase != ServerPhase::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not reach running: {:?}",
            h.status("vs-1").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    while h.servers.get(Some(NS), "vs-1").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server was not torn down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_new_hypervisor_is_probed_and_used_at_once() {
    let h = harness().await;
    let (stop, running) = h.run_controller(Duration::from_secs(3600));
    h.order("vs-1", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.status("vs-1").await.reason.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no placement attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Pending);
    assert!(
        h.status("vs-1")
            .await
            .reason
            .unwrap()
            .contains("no reachable hypervisor in any zone")
    );

    // Registered without probing: the controller's watch must probe it, and
    // the waiting server must not wait for its recheck.
    h.sim
        .add_node("hv1", "default", 8, 16384, 1000, &["debian-12.qcow2"]);
    h.hypervisors
        .create(&fixtures::hypervisor("hv1").credential("hv-token").build())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while h.status("vs-1").await.phase != ServerPhase::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server not placed promptly: {:?}",
            h.status("vs-1").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn r19_a_hypervisor_that_must_filter_and_cannot_gets_no_server() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    let missing = AntiSpoofing {
        enforced: false,
        required: true,
        detail: Some("nwfilter: this function is not supported".into()),
    };
    h.sim.set_anti_spoofing("hv1", missing);
    h.prober.probe_all().await.unwrap();
    h.prober.probe_all().await.unwrap();
    let hypervisor = h.hypervisors.get(None, "hv1").await.unwrap();
    let condition = conditions::get(
        &hypervisor.unwrap().status.unwrap().conditions,
        ConditionType::AntiSpoofing,
    )
    .cloned()
    .unwrap();
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "FiltersUnavailable");
    assert!(condition.message.contains("not supported"), "{condition:?}");
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable, EventReason::AntiSpoofingUnavailable],
        "one warning, not one per probe"
    );

    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let waiting = h.status("vs-1").await;
    assert_eq!(waiting.phase, ServerPhase::Pending);
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("filter guest traffic"),
        "{waiting:?}"
    );

    h.sim.set_anti_spoofing(
        "hv1",
        AntiSpoofing {
            enforced: true,
            required: true,
            detail: None,
        },
    );
    assert!(
        h.prober.probe_all().await.unwrap() > 0,
        "waiting servers are woken"
    );
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Running);
}

#[tokio::test]
async fn servers_and_hypervisors_explain_themselves_in_events() {
    let h = harness().await;
    h.add_hypervisor("hv1", "default", 8, 16384).await;
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable]
    );
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(
        h.events.about("VirtualServer", "vs-1"),
        [EventReason::Provisioning, EventReason::Running]
    );
    h.sim.set_reachable("hv1", false);
    h.prober.probe_all().await.unwrap();
    h.prober.probe_all().await.unwrap();
    assert_eq!(
        h.events.about("Hypervisor", "hv1"),
        [EventReason::Reachable, EventReason::Unreachable],
        "one event per change, not per probe"
    );
}

/// A second account, whose servers a fact about `NS` must never touch.
const OTHER: &str = "acc-0000000000000002";

impl Harness {
    fn deadline_runner(&self) -> stratus_controller::deadlines::DeadlineRunner {
        stratus_controller::deadlines::DeadlineRunner::new(
            self.ctx.clone(),
            Resources::new(self.store.clone()),
            self.servers.clone(),
            Arc::new(Policy::default()),
            Duration::from_millis(50),
        )
    }

    /// Records a fact about `NS` now, as the API does, and makes it due.
    async fn report(&self, id: &str, kind: FactKind) {
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
    async fn three_running_servers(&self) {
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

    async fn converge_all(&self) {
        for (account, name) in [(NS, "vs-1"), (NS, "vs-2"), (OTHER, "vs-9")] {
            let _ = self
                .reconciler
                .reconcile(&ObjectKey::new(Some(account), name))
                .await;
        }
    }

    async fn phase_of(&self, account: &str, name: &str) -> ServerPhase {
        self.servers
            .get(Some(account), name)
            .await
            .unwrap()
            .and_then(|s| s.status)
            .unwrap_or_default()
            .phase
    }

    async fn standing_changes(&self) -> usize {
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

fn invoice(id: &str) -> String {
    id.to_owned()
}

#[tokio::test]
async fn r1_r2_r4_suspend_after_passes_every_server_of_the_account_stops_once_and_payment_restores_them()
 {
    for scratch in testing::both().await {
        let h = harness_on(scratch).await;
        h.three_running_servers().await;
        let runner = h.deadline_runner();
        let due_at = h.clock.now();
        h.report(
            "inv-1-overdue",
            FactKind::InvoiceOverdue {
                invoice: invoice("inv-1"),
                due_at,
            },
        )
        .await;
        h.report(
            "inv-1-reminder",
            FactKind::ReminderSent {
                invoice: invoice("inv-1"),
            },
        )
        .await;
        runner.pass().await.unwrap();
        let spec = |name: &'static str| {
            let servers = h.servers.clone();
            async move { servers.get(Some(NS), name).await.unwrap().unwrap().spec }
        };
        assert_eq!(
            spec("vs-1").await.suspension,
            None,
            "not before suspendAfter"
        );

        h.clock.advance(jiff::SignedDuration::from_hours(15 * 24));
        let report = runner.pass().await.unwrap();
        assert_eq!(report.settled, 1);
        for name in ["vs-1", "vs-2"] {
            let suspension = spec(name).await.suspension.expect("suspended");
            assert_eq!(suspension.reasons, vec![SuspensionReason::NonPayment]);
            assert_eq!(suspension.mode, SuspensionMode::Stopped);
        }
        h.converge_all().await;
        h.converge_all().await;
        for name in ["vs-1", "vs-2"] {
            let status = h.status(name).await;
            assert_eq!(status.phase, ServerPhase::Suspended, "{name}");
            assert_eq!(status.reason.as_deref(), Some("suspended for non-payment"));
            let domain = h
                .servers
                .get(Some(NS), name)
                .await
                .unwrap()
                .unwrap()
                .status
                .unwrap()
                .domain
                .unwrap();
            assert_eq!(h.sim.state_of("hv1", &domain), Some(DomainState::Stopped));
        }
        assert_eq!(
            h.phase_of(OTHER, "vs-9").await,
            ServerPhase::Running,
            "another account is untouched"
        );
        let account = Resources::<Account>::new(h.store.clone())
            .get(None, NS)
            .await
            .unwrap()
            .unwrap();
        let status = account.status.unwrap();
        assert_eq!(status.suspensions.len(), 1);
        assert_eq!(status.suspensions[0].reason, SuspensionReason::NonPayment);
        assert_eq!(
            status.state,
            AccountState::Suspended,
            "kubectl's State column"
        );

        // Worked out again (a restart, another pass): nothing is done twice.
        let changes = h.standing_changes().await;
        assert!(changes >= 1);
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
        assert_eq!(h.standing_changes().await, changes);
        assert_eq!(
            h.events.about("Account", NS),
            [EventReason::Suspended],
            "one Event on the Account, however often it is worked out"
        );

        h.report(
            "inv-1-paid",
            FactKind::InvoicePaid {
                invoice: invoice("inv-1"),
            },
        )
        .await;
        runner.pass().await.unwrap();
        assert_eq!(spec("vs-1").await.suspension, None, "R4: payment lifts it");
        assert_eq!(
            h.events.about("Account", NS),
            [EventReason::Suspended, EventReason::SuspensionLifted]
        );
        let account = Resources::<Account>::new(h.store.clone())
            .get(None, NS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(account.status.unwrap().state, AccountState::Active);
        for _ in 0..2 {
            h.converge_all().await;
        }
        for name in ["vs-1", "vs-2"] {
            assert_eq!(
                h.phase_of(NS, name).await,
                ServerPhase::Running,
                "{name} runs again"
            );
        }
    }
}

#[tokio::test]
async fn r5_r7_an_abuse_report_cuts_one_servers_network_at_once_and_charges_once() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "abuse-1",
        FactKind::AbuseReport {
            server: "vs-1".into(),
        },
    )
    .await;
    runner.pass().await.unwrap();
    h.converge_all().await;
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let suspension = server.spec.suspension.clone().expect("suspended at once");
    assert_eq!(suspension.mode, SuspensionMode::NetworkIsolated);
    let domain = server.status.clone().unwrap().domain.unwrap();
    assert_eq!(
        h.sim.state_of("hv1", &domain),
        Some(DomainState::Running),
        "R5: it keeps running"
    );
    assert_eq!(
        h.sim.spec_of("hv1", &domain).map(|s| s.link_up()),
        Some(false),
        "its link is down"
    );
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Suspended);
    assert_eq!(
        h.phase_of(NS, "vs-2").await,
        ServerPhase::Running,
        "only the reported server"
    );

    for _ in 0..2 {
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
    }
    let charges = h.ledger.charges().of_account(NS, 100).await.unwrap();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(
        (charges[0].kind.as_str(), charges[0].amount),
        ("abuse_report", 50_000)
    );
}

#[tokio::test]
async fn r6_r14_a_server_terminated_with_notice_is_wiped_and_gone_at_the_deadline() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "terminate-1",
        FactKind::Terminate {
            server: "vs-1".into(),
            cause: TerminationCause::Abuse,
            immediate: false,
        },
    )
    .await;
    runner.pass().await.unwrap();
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert!(
        server.metadata.deletion_timestamp.is_none(),
        "not before the notice ends"
    );
    assert!(server.spec.termination.is_none());

    h.clock.advance(jiff::SignedDuration::from_hours(72));
    runner.pass().await.unwrap();
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert!(
        server.metadata.deletion_timestamp.is_none(),
        "kept, listed as terminated"
    );
    assert!(
        server.spec.termination.as_ref().is_some_and(|t| t.wipe),
        "the wipe is due"
    );
    for _ in 0..4 {
        h.converge_all().await;
    }
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Terminated);
    assert!(status.wiped_at.is_some(), "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .unwrap()
            .starts_with("terminated (abuse); its disk was wiped at")
    );
    assert_eq!(
        (status.hypervisor, status.ipv4),
        (None, None),
        "its addresses are given back"
    );
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerDestroyed).await.len(),
        1,
        "destroyed once"
    );
    for _ in 0..2 {
        h.converge_all().await;
    }
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerReleased).await.len(),
        1,
        "released once"
    );

    // termination.recordRetention (30 days) later it is forgotten.
    h.clock
        .advance(jiff::SignedDuration::from_hours(30 * 24 - 1));
    runner.pass().await.unwrap();
    assert!(
        h.servers
            .get(Some(NS), "vs-1")
            .await
            .unwrap()
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    h.clock.advance(jiff::SignedDuration::from_hours(1));
    assert_eq!(
        runner.pass().await.unwrap().settled,
        1,
        "its deadline was stored"
    );
    for _ in 0..2 {
        h.converge_all().await;
    }
    assert!(
        h.servers.get(Some(NS), "vs-1").await.unwrap().is_none(),
        "gone"
    );
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerDestroyed).await.len(),
        1
    );
    assert_eq!(h.phase_of(NS, "vs-2").await, ServerPhase::Running);
}

/// Channels pointed at local receivers, with the secret files they sign with.
fn local_channels(
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

const WEBHOOK_SECRET: &str = "a-shared-secret-of-32-characters";

/// Checks a webhook call's signature as a receiver would: HMAC-SHA256 of
/// `"<t>.<body>"` with the shared secret.
fn signed(call: &stratus_controller::receivers::ReceivedCall) -> bool {
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

/// R5, R6, R7, notices: an abuse report and a termination with notice tell
/// the account at once by e-mail and by signed webhook (the suspension,
/// the termination scheduled, the 72h notice), and the 24h notice when it
/// is owed; a refusing receiver is tried again after the backoff, then
/// given up and listed as failed until an operator queues it again; a
/// standing worked out again (a restart) queues nothing twice; the abuse
/// fee reaches the billing webhook once.
#[tokio::test]
async fn r6_notices_reach_smtp_and_webhook_once_and_refusals_are_retried() {
    use stratus_controller::notifier::{Notifier, Outbox};
    use stratus_controller::receivers::{SmtpSink, WebhookReceiver};
    use stratus_store::ledger::DeliveryState;
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.three_running_servers().await;
        let dir = tempfile::tempdir().unwrap();
        let (smtp, hook, billing) = (
            SmtpSink::start().await.unwrap(),
            WebhookReceiver::start().await.unwrap(),
            WebhookReceiver::start().await.unwrap(),
        );
        let channels = local_channels(dir.path(), &smtp, &hook, &billing);
        let runner = h.deadline_runner().notifying(Outbox::new(&channels));
        let notifier = Notifier::new(h.ctx.clone(), &channels, Duration::from_millis(50)).unwrap();

        h.report(
            "abuse-1",
            FactKind::AbuseReport {
                server: "vs-1".into(),
            },
        )
        .await;
        h.report(
            "terminate-1",
            FactKind::Terminate {
                server: "vs-1".into(),
                cause: TerminationCause::Abuse,
                immediate: false,
            },
        )
        .await;
        runner.pass().await.unwrap();
        hook.refuse_next(1);
        let first = notifier.pass().await.unwrap();
        assert_eq!(
            (first.delivered, first.retrying),
            (5, 1),
            "{label}: {first:?}"
        );
        assert_eq!(first.billing_events, 1, "{label}");

        let subjects: Vec<String> = smtp
            .received()
            .iter()
            .map(|m| m.header("Subject").unwrap())
            .collect();
        assert_eq!(subjects.len(), 3, "{label}: {subjects:?}");
        assert!(
            subjects.contains(&"Your server vs-1 suspended for abuse".to_owned()),
            "{subjects:?}"
        );
        assert!(
            subjects
                .iter()
                .any(|s| s.starts_with("Your server vs-1 will be terminated on"))
        );
        for mail in smtp.received() {
            assert_eq!(mail.to, ["ops@acme.example"], "{label}");
            assert_eq!(mail.from, "noc@example.net");
            assert!(
                mail.header("Message-ID")
                    .unwrap()
                    .ends_with("@example.net>")
            );
        }
        assert!(
            hook.calls().iter().all(signed),
            "{label}: every call is signed"
        );
        assert_eq!(
            hook.accepted().len(),
            2,
            "{label}: one of three was refused"
        );

        // The refused one is tried again after the backoff, not before.
        assert_eq!(notifier.pass().await.unwrap().delivered, 0);
        h.clock.advance(jiff::SignedDuration::from_secs(30));
        assert_eq!(notifier.pass().await.unwrap().delivered, 1, "{label}");
        let received = hook.accepted();
        assert_eq!(received.len(), 3);
        let mut ids: Vec<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{label}: three different messages");
        assert!(received.iter().all(|m| m["account"] == NS));

        // Worked out again, as after a restart: nothing new is queued.
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
        assert_eq!(
            notifier.pass().await.unwrap(),
            Default::default(),
            "{label}"
        );

        // 24h before the termination: one more notice, which the SMTP
        // server refuses every time until it is given up.
        smtp.refuse_next(3);
        h.clock.advance(jiff::SignedDuration::from_hours(48));
        runner.pass().await.unwrap();
        let due = notifier.pass().await.unwrap();
        assert_eq!((due.delivered, due.retrying), (1, 1), "{label}: {due:?}");
        h.clock.advance(jiff::SignedDuration::from_secs(30));
        assert_eq!(notifier.pass().await.unwrap().retrying, 1);
        h.clock.advance(jiff::SignedDuration::from_secs(60));
        assert_eq!(
            notifier.pass().await.unwrap().failed,
            1,
            "{label}: given up after 3 attempts"
        );
        let outbox = h.ledger.notifications();
        let failed = outbox
            .page(Some(DeliveryState::Failed), 0, 10)
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{label}");
        assert!(
            failed[0].last_error.as_deref().unwrap().contains("451"),
            "{:?}",
            failed[0].last_error
        );
        assert!(
            outbox
                .retry(failed[0].id, h.clock.now().as_millisecond())
                .await
                .unwrap()
        );
        assert_eq!(
            notifier.pass().await.unwrap().delivered,
            1,
            "{label}: queued again by an operator"
        );
        let last = smtp.received().pop().unwrap();
        assert!(
            last.header("Subject")
                .unwrap()
                .starts_with("Reminder: your server vs-1 will be terminated on")
        );
        assert_eq!(smtp.received().len(), 4, "{label}");
        assert_eq!(billing.accepted().len(), 1, "{label}: the fee once");
        let fee = &billing.accepted()[0]["events"][0];
        assert_eq!(
            (fee["type"].as_str(), fee["amount"].as_u64()),
            (Some("abuse_report"), Some(50_000))
        );
        assert!(billing.calls().iter().all(signed));
    }
}

/// R14, R18: a terminated server wiped at once stays listed as terminated;
/// an operator's restore provisions it afresh (its disk was destroyed)
/// with new addresses, and it runs again.
#[tokio::test]
async fn r18_a_restore_after_the_wipe_provisions_the_server_afresh() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "terminate-now",
        FactKind::Terminate {
            server: "vs-2".into(),
            cause: TerminationCause::Operator,
            immediate: true,
        },
    )
    .await;
    runner.pass().await.unwrap();
    for _ in 0..4 {
        h.converge_all().await;
    }
    let wiped = h.status("vs-2").await;
    assert_eq!(wiped.phase, ServerPhase::Terminated);
    assert!(wiped.wiped_at.is_some() && !wiped.provisioned, "{wiped:?}");

    h.report(
        "restore-1",
        FactKind::Restore {
            server: "vs-2".into(),
        },
    )
    .await;
    runner.pass().await.unwrap();
    assert!(
        h.servers
            .get(Some(NS), "vs-2")
            .await
            .unwrap()
            .unwrap()
            .spec
            .termination
            .is_none()
    );
    for _ in 0..6 {
        h.converge_all().await;
    }
    let restored = h.status("vs-2").await;
    assert_eq!(restored.phase, ServerPhase::Running, "{restored:?}");
    assert!(restored.provisioned && restored.ipv4.is_some());
}

/// The managed name of subscription `st-1` of `NS` on the agents.
const STORAGE: &str = "stratus-acc-0000000000000001.st-1";

#[tokio::test]
async fn r24_storage_gets_two_copies_in_two_zones_then_is_ready() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("a2", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 100, Some("b")).await;
    assert_eq!(h.reconcile_storage("st-1").await.unwrap(), Outcome::Done);
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(status.replicas_in_sync);
    let placed: Vec<(&str, &str)> = status
        .replicas
        .iter()
        .map(|r| (r.hypervisor.as_str(), r.zone.as_str()))
        .collect();
    assert_eq!(
        placed,
        [("b1", "b"), ("a1", "a")],
        "primary in the zone asked for"
    );
    assert_eq!(status.zones.as_deref(), Some("b,a"));
    for replica in &status.replicas {
        assert!(replica.created);
        assert_eq!(replica.volume, format!("{STORAGE}-store-v0.raw"));
        assert!(
            replica
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("-store-v0.raw"))
        );
    }
    assert_eq!(h.sim.volumes("b1"), [(STORAGE.to_owned(), 100)]);
    assert_eq!(h.sim.volumes("a1"), [(STORAGE.to_owned(), 100)]);
    assert!(h.sim.volumes("a2").is_empty());
    for condition in [
        ConditionType::Scheduled,
        ConditionType::Provisioned,
        ConditionType::ReplicasInSync,
        ConditionType::Ready,
    ] {
        assert!(
            conditions::is_true(&status.conditions, condition),
            "{condition:?}: {status:?}"
        );
    }
    let phases: Vec<String> = h
        .audited_storage("st-1", AuditAction::StoragePhase)
        .await
        .iter()
        .map(|d| d["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        phases.last().map(String::as_str),
        Some("ready"),
        "{phases:?}"
    );
    assert!(
        h.events
            .about("StorageSubscription", "st-1")
            .contains(&EventReason::Ready)
    );
    // Reconciling again changes nothing and creates nothing.
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(h.storage_status("st-1").await, status);
}

#[tokio::test]
async fn r24_one_zone_never_holds_a_subscription_alone() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("a2", "a", 8, 16384).await;
    h.order_storage("st-1", 10, None).await;
    assert_eq!(
        h.reconcile_storage("st-1").await.unwrap(),
        Outcome::RequeueAfter(UNSCHEDULABLE_RECHECK)
    );
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Pending);
    assert!(status.replicas.is_empty(), "no single copy is placed");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("single copy")),
        "{status:?}"
    );
    assert!(h.sim.volumes("a1").is_empty() && h.sim.volumes("a2").is_empty());
    assert!(!status.replicas_in_sync);
    // A second zone appears: the subscription is placed across both.
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready);
    assert_eq!(status.zones.as_deref(), Some("a,b"));
}

#[tokio::test]
async fn r24_storage_and_servers_share_the_room_of_each_pool() {
    let h = harness().await;
    // Each simulated pool holds 1000 GiB.
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 990, None).await;
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(h.storage_status("st-1").await.phase, StoragePhase::Ready);
    // A server's 25 GiB disk no longer fits on either.
    h.order("vs-1", None).await;
    h.reconcile("vs-1").await.unwrap();
    let server = h.status("vs-1").await;
    assert!(server.hypervisor.is_none());
    assert!(
        server.reason.as_deref().is_some_and(|r| r.contains("room")),
        "{server:?}"
    );
    // Nor does a second subscription.
    h.order_storage("st-2", 20, None).await;
    h.reconcile_storage("st-2").await.unwrap();
    assert_eq!(h.storage_status("st-2").await.phase, StoragePhase::Pending);
}

#[tokio::test]
async fn r24_copies_lost_on_both_sides_are_reported_degraded_and_never_recreated_empty() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    h.sim.lose_volume("a1", STORAGE);
    h.sim.lose_volume("b1", STORAGE);
    h.reconcile_storage("st-1").await.unwrap();
    let first = h.storage_status("st-1").await;
    assert_eq!(first.phase, StoragePhase::Degraded);
    assert!(
        first
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("not seen")),
        "one empty listing is not yet a loss: {first:?}"
    );
    h.confirm_storage_loss("st-1").await;
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Degraded);
    assert!(!status.replicas_in_sync);
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("b1") && r.contains("missing")),
        "{status:?}"
    );
    assert!(h.sim.volumes("b1").is_empty(), "never recreated empty");
    assert!(h.sim.volumes("a1").is_empty(), "never recreated empty");
    assert!(!conditions::is_true(
        &status.conditions,
        ConditionType::ReplicasInSync
    ));
    assert!(
        h.events
            .about("StorageSubscription", "st-1")
            .contains(&EventReason::Degraded)
    );
    // An unreachable hypervisor also degrades it, until it answers again.
    h.add_hypervisor("b2", "b", 8, 16384).await;
    h.sim.set_reachable("a1", false);
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(h.storage_status("st-1").await.phase, StoragePhase::Degraded);
}

#[tokio::test]
async fn r14_deleting_storage_wipes_both_copies_then_gives_back_its_quota() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 50, None).await;
    let quotas = h.ledger.quotas();
    let charged = charged_object(NS, "st-1");
    quotas
        .charge(NS, &charged, Usage::of_storage(50), Quota::default(), 0)
        .await
        .unwrap()
        .unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    h.sim.set_reachable("b1", false);
    h.storage.delete(Some(NS), "st-1").await.unwrap();
    // The copy on the unreachable hypervisor holds the object.
    assert!(h.reconcile_storage("st-1").await.is_ok());
    assert!(h.sim.volumes("a1").is_empty());
    assert_eq!(h.sim.volumes("b1").len(), 1);
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Terminating);
    assert!(
        status.reason.as_deref().is_some_and(|r| r.contains("b1")),
        "{status:?}"
    );
    assert_eq!(quotas.usage(NS).await.unwrap().storage_gib, 50);
    h.sim.set_reachable("b1", true);
    assert_eq!(h.reconcile_storage("st-1").await.unwrap(), Outcome::Done);
    assert!(h.sim.volumes("b1").is_empty());
    assert!(h.storage.get(Some(NS), "st-1").await.unwrap().is_none());
    assert_eq!(quotas.usage(NS).await.unwrap().storage_gib, 0);
    let destroyed = h
        .audited_storage("st-1", AuditAction::StorageCopyDestroyed)
        .await;
    let wiped: Vec<(&str, &str)> = destroyed
        .iter()
        .map(|d| {
            (
                d["hypervisor"].as_str().unwrap_or_default(),
                d["disposal"]["kind"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(wiped, [("a1", "wiped"), ("b1", "wiped")]);
    assert_eq!(
        h.audited_storage("st-1", AuditAction::StorageReleased)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn r14_a_copy_its_storage_cannot_wipe_is_reported_not_hidden() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.sim.cannot_wipe("b1");
    h.order_storage("st-1", 5, None).await;
    h.reconcile_storage("st-1").await.unwrap();
    h.storage.delete(Some(NS), "st-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    let destroyed = h
        .audited_storage("st-1", AuditAction::StorageCopyDestroyed)
        .await;
    assert!(
        destroyed
            .iter()
            .any(|d| d["hypervisor"] == "b1" && d["disposal"]["kind"] == "deleted_without_wipe"),
        "{destroyed:?}"
    );
    assert!(
        h.events
            .about("StorageSubscription", "st-1")
            .contains(&EventReason::DiskNotWiped)
    );
}

impl Harness {
    fn agent(&self, hypervisor: &str) -> stratus_controller::AgentEndpoint {
        stratus_controller::AgentEndpoint {
            hypervisor: HypervisorName::parse(hypervisor).unwrap(),
            url: "https://simulated".into(),
            token: "t".into(),
        }
    }

    /// What the API does for an upload: the content into a new version of
    /// the primary, then recorded in the spec.
    async fn upload(&self, primary: &str, version: u64, content: &[u8]) {
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

#[tokio::test]
async fn r26_a_written_content_is_copied_to_the_secondary_and_verified() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let version = 1_764_936_000_000;
    h.upload("a1", version, b"customer ciphertext").await;
    assert_eq!(
        h.reconcile_storage("st-1").await.unwrap(),
        Outcome::RequeueAfter(Duration::from_secs(24 * 3600)),
        "done until the next verification"
    );
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(status.replicas_in_sync);
    for (replica, hypervisor) in status.replicas.iter().zip(["a1", "b1"]) {
        assert_eq!(replica.version, version);
        assert_eq!(replica.bytes, 19);
        assert_eq!(
            h.sim
                .versions(hypervisor, STORAGE)
                .into_iter()
                .collect::<Vec<_>>(),
            [(version, b"customer ciphertext".to_vec())],
            "{hypervisor} keeps the content only (version 0 is gone)"
        );
    }
    assert_eq!(status.replicas[0].checksum, status.replicas[1].checksum);
    assert!(status.replicas[1].verified_at.is_some());
}

#[tokio::test]
async fn r26_the_secondary_keeps_the_last_verified_versions_the_primary_only_its_current() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let base = 1_764_936_000_000;
    // The default policy keeps 7 versions on the secondary.
    for n in 0..9u64 {
        h.upload("a1", base + n, format!("version {n}").as_bytes())
            .await;
        h.reconcile_storage("st-1").await.unwrap();
    }
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert_eq!(
        h.sim
            .versions("a1", STORAGE)
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [base + 8]
    );
    let secondary: Vec<u64> = h.sim.versions("b1", STORAGE).keys().copied().collect();
    assert_eq!(secondary, (2..9).map(|n| base + n).collect::<Vec<_>>());
    let kept: Vec<u64> = status.replicas[1].kept.iter().map(|k| k.version).collect();
    assert_eq!(kept, (2..8).map(|n| base + n).collect::<Vec<_>>());
    assert!(status.replicas[1].kept.iter().all(|k| k.sha256.len() == 64));
}

#[tokio::test]
async fn r26_a_copy_that_arrives_different_is_deleted_and_never_called_in_sync() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let version = 1_764_936_000_000;
    h.upload("a1", version, b"customer ciphertext").await;
    // The primary's bytes change after the upload measured them.
    h.sim.corrupt_version("a1", STORAGE, version);
    assert!(h.reconcile_storage("st-1").await.is_err());
    let status = h.storage_status("st-1").await;
    assert!(!status.replicas_in_sync);
    assert_ne!(status.phase, StoragePhase::Ready);
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("SHA-256")),
        "{status:?}"
    );
    assert!(
        !h.sim.versions("b1", STORAGE).contains_key(&version),
        "the bad copy is not kept"
    );
}

#[tokio::test]
async fn r27_an_upload_that_never_completed_is_deleted_after_an_hour_not_before() {
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    use stratus_controller::AgentClient;
    let started = u64::try_from(h.clock.now().as_millisecond()).unwrap();
    let chunks: Vec<Result<Vec<u8>, String>> = vec![Ok(b"half".to_vec())];
    h.sim
        .write_version(
            &h.agent("a1"),
            STORAGE,
            started,
            10,
            Box::pin(futures::stream::iter(chunks)),
        )
        .await
        .unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    assert!(
        h.sim.versions("a1", STORAGE).contains_key(&started),
        "may still be uploading"
    );
    h.clock.advance(jiff::SignedDuration::from_hours(2));
    h.reconcile_storage("st-1").await.unwrap();
    assert!(!h.sim.versions("a1", STORAGE).contains_key(&started));
    assert_eq!(h.storage_status("st-1").await.phase, StoragePhase::Ready);
}

async fn stored_and_in_sync(h: &Harness, content: &[u8]) -> u64 {
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

/// R26 (defect 5 of issue 25): a repair that deleted the bad copy and
/// then failed to write it again does not leave that copy without its
/// current version for ever: once the loss is confirmed it is brought to
/// the content again and the subscription is in sync; replication and
/// verification go on.
#[tokio::test]
async fn r26_a_repair_that_fails_midway_is_made_whole_again() {
    for corrupted in ["b1", "a1"] {
        let h = harness().await;
        let version = stored_and_in_sync(&h, b"customer ciphertext").await;
        h.sim.corrupt_version(corrupted, STORAGE, version);
        h.sim.fail_next(corrupted, "write_version", 1);
        h.clock.advance(jiff::SignedDuration::from_hours(25));
        let _ = h.reconcile_storage("st-1").await;
        assert!(
            !h.sim.versions(corrupted, STORAGE).contains_key(&version),
            "{corrupted}: the bad version was deleted and its rewrite failed"
        );
        h.confirm_storage_loss("st-1").await;
        for _ in 0..3 {
            let _ = h.reconcile_storage("st-1").await;
        }
        for hypervisor in ["a1", "b1"] {
            assert_eq!(
                h.sim
                    .versions(hypervisor, STORAGE)
                    .get(&version)
                    .map(Vec::as_slice),
                Some(&b"customer ciphertext"[..]),
                "{hypervisor} holds the content again (corrupted: {corrupted})"
            );
        }
        let status = h.storage_status("st-1").await;
        assert!(status.replicas_in_sync, "{corrupted}: {status:?}");
        assert_eq!(status.phase, StoragePhase::Ready, "{corrupted}");
    }
}

/// R26 (defect 6 of issue 25): a replication that finds its version
/// already on the secondary (an earlier attempt stored it, then the
/// controller stopped) checks its SHA-256 and keeps it when it holds the
/// content, rather than deleting it unseen.
#[tokio::test]
async fn r26_a_version_already_on_the_secondary_is_checked_not_deleted() {
    use stratus_controller::AgentClient;
    let h = harness().await;
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let version = 1_764_936_000_000;
    let content = b"customer ciphertext";
    let chunks: Vec<Result<Vec<u8>, String>> = vec![Ok(content.to_vec())];
    h.sim
        .write_version(
            &h.agent("b1"),
            STORAGE,
            version,
            10,
            Box::pin(futures::stream::iter(chunks)),
        )
        .await
        .unwrap();
    h.upload("a1", version, content).await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert!(status.replicas_in_sync, "{status:?}");
    assert_eq!(status.replicas[1].version, version);
    let calls = h.sim.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("checksum_version b1")),
        "its SHA-256 was checked: {calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("read_version a1"))
            .count(),
        1,
        "never deleted and copied again: {calls:?}"
    );
    assert_eq!(
        h.sim
            .versions("b1", STORAGE)
            .get(&version)
            .map(Vec::as_slice),
        Some(&content[..])
    );
}

#[tokio::test]
async fn r26_a_corrupted_copy_is_found_repaired_from_the_other_and_reported() {
    for corrupted in ["b1", "a1"] {
        let h = harness().await;
        let version = stored_and_in_sync(&h, b"customer ciphertext").await;
        h.sim.corrupt_version(corrupted, STORAGE, version);
        // Not yet due: nothing is read back.
        h.clock.advance(jiff::SignedDuration::from_hours(23));
        h.reconcile_storage("st-1").await.unwrap();
        assert!(
            !h.sim
                .calls()
                .iter()
                .any(|c| c.starts_with("checksum_version"))
        );
        h.clock.advance(jiff::SignedDuration::from_hours(2));
        h.reconcile_storage("st-1").await.unwrap();
        for hypervisor in ["a1", "b1"] {
            assert_eq!(
                h.sim.versions(hypervisor, STORAGE)[&version],
                b"customer ciphertext",
                "{hypervisor} holds the original again (corrupted: {corrupted})"
            );
        }
        let status = h.storage_status("st-1").await;
        assert_eq!(status.repairs, 1);
        assert_eq!(status.phase, StoragePhase::Ready);
        let in_sync = conditions::get(&status.conditions, ConditionType::ReplicasInSync).unwrap();
        assert_eq!(in_sync.reason, "Repaired");
        assert!(in_sync.message.contains(corrupted), "{}", in_sync.message);
        assert!(
            h.events
                .about("StorageSubscription", "st-1")
                .contains(&EventReason::CopyRepaired)
        );
        let reported = h
            .audited_storage("st-1", AuditAction::StorageRepaired)
            .await;
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0]["hypervisor"], corrupted);
        // Verified again a day later, with nothing more to repair.
        h.clock.advance(jiff::SignedDuration::from_hours(25));
        h.reconcile_storage("st-1").await.unwrap();
        assert_eq!(h.storage_status("st-1").await.repairs, 1);
    }
}

#[tokio::test]
async fn r26_an_operator_can_ask_for_a_verification_and_it_runs_once() {
    let h = harness().await;
    stored_and_in_sync(&h, b"ciphertext").await;
    match h.reconcile_storage("st-1").await.unwrap() {
        Outcome::RequeueAfter(after) => assert!(
            after > Duration::from_secs(23 * 3600) && after <= Duration::from_secs(24 * 3600),
            "{after:?}"
        ),
        other => panic!("the next verification is scheduled, not {other:?}"),
    }
    let checks = |h: &Harness| {
        h.sim
            .calls()
            .iter()
            .filter(|c| c.starts_with("checksum_version"))
            .count()
    };
    assert_eq!(checks(&h), 0);
    h.storage
        .update(Some(NS), "st-1", |s| {
            s.spec.verify_requests += 1;
            true
        })
        .await
        .unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(checks(&h), 2, "both copies read back once");
    assert_eq!(h.storage_status("st-1").await.verifications_done, 1);
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(checks(&h), 2);
}

#[tokio::test]
async fn r26_content_lost_on_both_copies_is_reported_never_called_in_sync() {
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"ciphertext").await;
    h.sim.corrupt_version("a1", STORAGE, version);
    h.sim.corrupt_version("b1", STORAGE, version);
    h.clock.advance(jiff::SignedDuration::from_hours(25));
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Degraded, "{status:?}");
    assert!(!status.replicas_in_sync);
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("both copies"))
    );
    // A new content replaces it.
    h.upload("a1", version + 1, b"new ciphertext").await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(status.unrecoverable.is_none());
}

#[tokio::test]
async fn r26_a_restore_brings_a_kept_version_back_on_both_copies() {
    let h = harness().await;
    let first = stored_and_in_sync(&h, b"monday's backup").await;
    h.upload("a1", first + 1, b"ransomware").await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.replicas[1].kept.len(), 1, "{status:?}");
    let kept = status.replicas[1].kept[0].clone();
    assert_eq!(kept.version, first);
    // What the API records for a restore of the kept version.
    let restored = first + 2;
    h.storage
        .update(Some(NS), "st-1", |s| {
            s.spec.content = Some(stratus_core::resources::StorageContent {
                version: restored,
                bytes: kept.bytes,
                sha256: kept.sha256.clone(),
                written_at: "2026-12-05T12:00:00Z".into(),
            });
            s.spec.restore_from = Some(first);
            true
        })
        .await
        .unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    for hypervisor in ["a1", "b1"] {
        assert_eq!(
            h.sim.versions(hypervisor, STORAGE)[&restored],
            b"monday's backup",
            "{hypervisor}"
        );
    }
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(status.replicas_in_sync);
    // The content before the restore stays restorable.
    assert!(
        status.replicas[1]
            .kept
            .iter()
            .any(|k| k.version == first + 1)
    );
    assert_eq!(
        h.audited_storage("st-1", AuditAction::StorageRestored)
            .await[0]["from"],
        first
    );
}

#[tokio::test]
async fn r26_the_customer_is_told_of_a_repaired_copy_once() {
    use stratus_core::notices::{Notifications, Webhook};
    use stratus_store::ledger::DeliveryState;
    let h = harness().await;
    let accounts = Resources::<Account>::new(h.store.clone());
    accounts
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    let channels = Notifications {
        webhook: Some(Webhook {
            url: "https://hooks.example.net/notices".into(),
            secret_file: "/nonexistent".into(),
        }),
        ..Notifications::default()
    };
    let reconciler = StorageReconciler::new(
        h.ctx.clone(),
        h.storage.clone(),
        h.servers.clone(),
        Scheduling::shared(),
        Policy::default().storage,
    )
    .notifying(
        stratus_controller::notifier::Outbox::new(&channels),
        accounts,
    );
    let version = stored_and_in_sync(&h, b"ciphertext").await;
    h.sim.corrupt_version("b1", STORAGE, version);
    h.clock.advance(jiff::SignedDuration::from_hours(25));
    let key = ObjectKey::new(Some(NS), "st-1");
    reconciler.reconcile(&key).await.unwrap();
    reconciler.reconcile(&key).await.unwrap();
    let queued = h
        .ledger
        .notifications()
        .page(Some(DeliveryState::Pending), 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].message["type"], "storage.repaired");
    assert!(
        queued[0].message["subject"]
            .as_str()
            .unwrap()
            .contains("a copy was repaired"),
        "{:?}",
        queued[0].message
    );
}

/// What the API does for an attach: the server recorded, and from then on
/// the primary copy may be written by its guest.
async fn attach(h: &Harness, server: Option<&str>) {
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

fn attached_condition(status: &StorageSubscriptionStatus) -> (bool, String) {
    let condition = conditions::get(&status.conditions, ConditionType::Attached).unwrap();
    (
        conditions::is_true(&status.conditions, ConditionType::Attached),
        condition.reason.clone(),
    )
}

#[tokio::test]
async fn attached_storage_is_a_disk_of_its_server_and_what_the_guest_left_is_settled_and_copied() {
    use stratus_controller::AgentClient;
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"before the attach").await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.hypervisor.unwrap().as_str(), "a1");

    attach(&h, Some("vs-1")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(attached_condition(&status), (false, "Attaching".into()));
    assert!(!status.replicas_in_sync, "the guest may write: {status:?}");
    assert_eq!(status.phase, StoragePhase::Ready);

    h.reconcile("vs-1").await.unwrap();
    let disks = h.sim.spec_of("a1", DOMAIN).unwrap().data_disks;
    assert_eq!(
        disks,
        [stratus_core::agent_api::DataDisk {
            volume: stratus_core::agent_api::storage_volume_name(STORAGE, version),
            serial: "st-1".into(),
            encrypted: false,
        }]
    );
    assert_eq!(h.status("vs-1").await.attached_storage, ["st-1"]);
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(attached_condition(&status), (true, "DiskAttached".into()));

    // The guest writes; a copy it did not settle is never verified (and
    // so never "repaired" back), however overdue.
    h.sim.corrupt_version("a1", STORAGE, version);
    let written = h.sim.versions("a1", STORAGE)[&version].clone();
    h.clock.advance(jiff::SignedDuration::from_hours(48));
    h.reconcile_storage("st-1").await.unwrap();
    assert!(
        !h.sim
            .calls()
            .iter()
            .any(|c| c.starts_with("checksum_version")),
        "{:?}",
        h.sim.calls()
    );
    assert_eq!(h.storage_status("st-1").await.repairs, 0);
    // Nor copied while it is a disk.
    let refused = h
        .sim
        .copy_version(&h.agent("a1"), STORAGE, version, version + 1, false)
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // Detached: the guest lets go, then what it left becomes a version.
    attach(&h, None).await;
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(
        attached_condition(&h.storage_status("st-1").await),
        (false, "Attaching".into()),
        "waits for the guest to let go"
    );
    h.reconcile("vs-1").await.unwrap();
    assert!(h.sim.spec_of("a1", DOMAIN).unwrap().data_disks.is_empty());
    assert!(h.status("vs-1").await.attached_storage.is_empty());
    h.reconcile_storage("st-1").await.unwrap();
    let subscription = h.storage.get(Some(NS), "st-1").await.unwrap().unwrap();
    assert_eq!(subscription.spec.written_by_guest, None);
    let content = subscription.spec.content.unwrap();
    assert!(content.version > version);
    assert_eq!(
        content.sha256,
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &written))
    );
    let status = subscription.status.unwrap();
    assert!(status.replicas_in_sync, "{status:?}");
    assert_eq!(attached_condition(&status), (false, "NotAttached".into()));
    for hypervisor in ["a1", "b1"] {
        assert_eq!(
            h.sim.versions(hypervisor, STORAGE).get(&content.version),
            Some(&written),
            "{hypervisor}"
        );
    }
    assert!(
        h.sim.versions("b1", STORAGE).contains_key(&version),
        "the secondary still keeps the content from before the attach"
    );
    assert!(!h.sim.versions("a1", STORAGE).contains_key(&version));
    let settled = h.audited_storage("st-1", AuditAction::StorageSettled).await;
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0]["from"], version);
}

#[tokio::test]
async fn a_deleted_server_lets_go_of_its_storage_which_is_detached_and_settled() {
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"before the attach").await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    attach(&h, Some("vs-1")).await;
    h.reconcile("vs-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    assert!(attached_condition(&h.storage_status("st-1").await).0);

    // The subscription cannot go while the guest holds it.
    h.storage.delete(Some(NS), "st-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert!(
        status
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("detach"),
        "{status:?}"
    );
    assert!(
        h.sim.versions("a1", STORAGE).contains_key(&version),
        "not wiped under its guest"
    );

    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    assert_eq!(h.reconcile("vs-1").await.unwrap(), Outcome::Done);
    assert!(h.servers.get(Some(NS), "vs-1").await.unwrap().is_none());
    assert_eq!(h.reconcile_storage("st-1").await.unwrap(), Outcome::Done);
    assert!(h.storage.get(Some(NS), "st-1").await.unwrap().is_none());
    assert!(h.sim.versions("a1", STORAGE).is_empty());
    assert!(h.sim.versions("b1", STORAGE).is_empty());
}

#[tokio::test]
async fn storage_attached_to_a_server_that_is_gone_is_detached_then_settled() {
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"before the attach").await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    attach(&h, Some("vs-1")).await;
    h.reconcile("vs-1").await.unwrap();
    h.servers.delete(Some(NS), "vs-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    let subscription = h.storage.get(Some(NS), "st-1").await.unwrap().unwrap();
    assert_eq!(subscription.spec.attached_to, None);
    assert!(subscription.spec.content.unwrap().version > version);
    let detached = h.audited_storage("st-1", AuditAction::StorageDetach).await;
    assert_eq!(detached.len(), 1);
    assert_eq!(detached[0]["cause"], "server_gone");
    assert!(subscription.status.unwrap().replicas_in_sync);
}

#[tokio::test]
async fn r1_r3_r14_storage_follows_its_accounts_standing_detached_read_only_then_wiped() {
    let h = harness().await;
    Resources::<Account>::new(h.store.clone())
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    let version = stored_and_in_sync(&h, b"customer data").await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    attach(&h, Some("vs-1")).await;
    h.reconcile("vs-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    assert!(attached_condition(&h.storage_status("st-1").await).0);
    let mut policy = Policy::default();
    policy.termination.data_retention = stratus_core::policy::PolicyDuration::days(7);
    let runner = stratus_controller::deadlines::DeadlineRunner::new(
        h.ctx.clone(),
        Resources::new(h.store.clone()),
        h.servers.clone(),
        Arc::new(policy),
        Duration::from_millis(50),
    )
    .holding_storage(h.storage.clone());

    // Suspended: detached from its (also held) server, said suspended.
    h.report("legal-1", FactKind::LegalHold).await;
    runner.pass().await.unwrap();
    let held = h.storage.get(Some(NS), "st-1").await.unwrap().unwrap();
    assert_eq!(
        held.spec.suspension.as_ref().map(|s| s.reasons.clone()),
        Some(vec![SuspensionReason::Legal])
    );
    h.reconcile("vs-1").await.unwrap();
    assert!(h.sim.spec_of("a1", DOMAIN).unwrap().data_disks.is_empty());
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Suspended, "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .unwrap()
            .starts_with("suspended (legal)")
    );
    assert!(!attached_condition(&status).0);

    // Lifted: attached again.
    h.report("legal-2", FactKind::LegalRelease).await;
    runner.pass().await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.sim.spec_of("a1", DOMAIN).unwrap().data_disks.len(), 1);
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(attached_condition(&status).0);

    // Terminated on its own: held (detached, read-only) until its data is
    // due, then both copies are wiped and it goes.
    h.report(
        "terminate-st",
        FactKind::Terminate {
            server: "st-1".into(),
            cause: TerminationCause::Operator,
            immediate: true,
        },
    )
    .await;
    runner.pass().await.unwrap();
    let held = h.storage.get(Some(NS), "st-1").await.unwrap().unwrap();
    assert!(held.spec.termination.is_some());
    assert!(
        held.metadata.deletion_timestamp.is_none(),
        "kept for dataRetention"
    );
    h.reconcile("vs-1").await.unwrap();
    assert!(h.sim.spec_of("a1", DOMAIN).unwrap().data_disks.is_empty());
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Suspended);
    assert!(
        status
            .reason
            .as_deref()
            .unwrap()
            .starts_with("terminated (operator)"),
        "{status:?}"
    );
    assert_eq!(
        h.phase_of(NS, "vs-1").await,
        ServerPhase::Running,
        "its server is not"
    );

    h.clock.advance(jiff::SignedDuration::from_hours(7 * 24));
    runner.pass().await.unwrap();
    let terminated = h
        .audited_storage("st-1", AuditAction::StorageTerminated)
        .await;
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0]["cause"], "operator");
    for _ in 0..3 {
        h.reconcile("vs-1").await.unwrap();
        let _ = h.reconcile_storage("st-1").await;
    }
    assert!(
        h.storage.get(Some(NS), "st-1").await.unwrap().is_none(),
        "gone"
    );
    assert!(h.sim.versions("a1", STORAGE).is_empty());
    assert!(h.sim.versions("b1", STORAGE).is_empty());
    assert!(!h.sim.versions("a1", STORAGE).contains_key(&version));
    let destroyed = h
        .audited_storage("st-1", AuditAction::StorageCopyDestroyed)
        .await;
    assert_eq!(destroyed.len(), 2, "{destroyed:?}");
    runner.pass().await.unwrap();
    assert_eq!(
        h.audited_storage("st-1", AuditAction::StorageTerminated)
            .await
            .len(),
        1,
        "recorded once"
    );
}

#[tokio::test]
async fn storage_ordered_attached_to_a_server_has_its_primary_on_that_servers_hypervisor() {
    let h = harness().await;
    h.add_hypervisor("a2", "a", 8, 16384).await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.hypervisor.unwrap().as_str(), "a2");
    // a1 sorts first: unpinned, the primary would go there.
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, None).await;
    attach(&h, Some("vs-1")).await;
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    let hosts: Vec<&str> = status
        .replicas
        .iter()
        .map(|r| r.hypervisor.as_str())
        .collect();
    assert_eq!(hosts, ["a2", "b1"], "{status:?}");
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.sim.spec_of("a2", DOMAIN).unwrap().data_disks.len(), 1);
    h.reconcile_storage("st-1").await.unwrap();
    assert!(attached_condition(&h.storage_status("st-1").await).0);
}

#[tokio::test]
async fn r24_a_copy_lost_whole_is_rebuilt_from_the_other_and_reported() {
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"customer ciphertext").await;
    for (lost, repairs) in [("b1", 1), ("a1", 2)] {
        h.sim.lose_volume(lost, STORAGE);
        h.reconcile_storage("st-1").await.unwrap();
        let seen_once = h.storage_status("st-1").await;
        assert_eq!(
            seen_once.repairs,
            repairs - 1,
            "{lost}: not rebuilt on one observation"
        );
        h.confirm_storage_loss("st-1").await;
        let status = h.storage_status("st-1").await;
        assert!(status.replicas_in_sync, "{lost}: {status:?}");
        assert_eq!(status.phase, StoragePhase::Ready);
        assert_eq!(status.repairs, repairs);
        for hypervisor in ["a1", "b1"] {
            assert_eq!(
                h.sim
                    .versions(hypervisor, STORAGE)
                    .get(&version)
                    .map(Vec::as_slice),
                Some(&b"customer ciphertext"[..]),
                "{hypervisor} holds the content again (lost: {lost})"
            );
        }
        let in_sync = conditions::get(&status.conditions, ConditionType::ReplicasInSync).unwrap();
        assert_eq!(in_sync.reason, "Repaired");
        assert!(in_sync.message.contains(lost), "{}", in_sync.message);
    }
    let reported = h
        .audited_storage("st-1", AuditAction::StorageRepaired)
        .await;
    let hosts: Vec<&str> = reported
        .iter()
        .map(|r| r["hypervisor"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["b1", "a1"]);
    assert!(
        h.events
            .about("StorageSubscription", "st-1")
            .contains(&EventReason::CopyRepaired)
    );
}

#[tokio::test]
async fn r25_a_luks_disk_without_its_key_waits_and_its_customer_is_asked_once() {
    use stratus_controller::AgentClient;
    use stratus_core::agent_api::{LuksFormat, VolumeKey, VolumeUnlock};
    use stratus_core::notices::{Notifications, Webhook};
    use stratus_store::ledger::DeliveryState;
    let h = harness().await;
    let accounts = Resources::<Account>::new(h.store.clone());
    accounts
        .create(&fixtures::account(NS).build())
        .await
        .unwrap();
    let channels = Notifications {
        webhook: Some(Webhook {
            url: "https://hooks.example.net/notices".into(),
            secret_file: "/nonexistent".into(),
        }),
        ..Notifications::default()
    };
    let reconciler = StorageReconciler::new(
        h.ctx.clone(),
        h.storage.clone(),
        h.servers.clone(),
        Scheduling::shared(),
        Policy::default().storage,
    )
    .notifying(
        stratus_controller::notifier::Outbox::new(&channels),
        accounts,
    );
    let storage_key = ObjectKey::new(Some(NS), "st-1");
    h.add_hypervisor("a1", "a", 8, 16384).await;
    h.add_hypervisor("b1", "b", 8, 16384).await;
    h.order_storage("st-1", 10, Some("a")).await;
    h.storage
        .update(Some(NS), "st-1", |s| {
            s.spec.encryption = StorageEncryption::Luks;
            true
        })
        .await
        .unwrap();
    reconciler.reconcile(&storage_key).await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Provisioning, "{status:?}");
    assert!(status.reason.unwrap().contains("formatted with the key"));

    // Formatted with the order's key, as the API does, then copied.
    let key = VolumeKey::new("correct horse battery staple".into());
    let version = 1_764_936_000_000;
    let format = LuksFormat {
        size_gib: 10,
        key: key.clone(),
    };
    let stored = h
        .sim
        .format_version(&h.agent("a1"), STORAGE, version, &format)
        .await
        .unwrap();
    h.storage
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
    reconciler.reconcile(&storage_key).await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(status.phase, StoragePhase::Ready, "{status:?}");
    assert!(status.replicas_in_sync && !status.key_loaded);

    // Attached with its key to a running server: plugged in.
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    h.sim
        .unlock_version(
            &h.agent("a1"),
            STORAGE,
            version,
            &VolumeUnlock { key: key.clone() },
        )
        .await
        .unwrap();
    attach(&h, Some("vs-1")).await;
    reconciler.reconcile(&storage_key).await.unwrap();
    assert!(h.storage_status("st-1").await.key_loaded);
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.attached_storage, ["st-1"]);
    reconciler.reconcile(&storage_key).await.unwrap();
    let status = h.storage_status("st-1").await;
    assert_eq!(attached_condition(&status), (true, "DiskAttached".into()));

    // Stopped and started again: its key went with the guest, the server
    // runs without the disk, and the customer is asked for the key once.
    for power in [PowerState::Stopped, PowerState::Running] {
        h.servers
            .update(Some(NS), "vs-1", |s| {
                s.spec.power = power;
                true
            })
            .await
            .unwrap();
        for _ in 0..3 {
            h.reconcile("vs-1").await.unwrap();
            h.clock.advance(jiff::SignedDuration::from_secs(120));
        }
    }
    let status = h.status("vs-1").await;
    assert_eq!(
        status.phase,
        ServerPhase::Running,
        "{status:?} {:?}",
        h.sim.calls()
    );
    for _ in 0..2 {
        reconciler.reconcile(&storage_key).await.unwrap();
    }
    let status = h.storage_status("st-1").await;
    assert_eq!(attached_condition(&status), (false, "KeyRequired".into()));
    assert!(!status.key_loaded);
    let queued = h
        .ledger
        .notifications()
        .page(Some(DeliveryState::Pending), 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].message["type"], "storage.key_required");
    assert!(!queued[0].message.to_string().contains("correct horse"));
    // The server converged without it: nothing asked of its agent again.
    let calls = h.sim.calls().len();
    h.reconcile("vs-1").await.unwrap();
    assert!(
        !h.sim.calls()[calls..]
            .iter()
            .any(|c| c.starts_with("ensure")),
        "{:?}",
        &h.sim.calls()[calls..]
    );

    // The key given again: plugged in again.
    h.sim
        .unlock_version(&h.agent("a1"), STORAGE, version, &VolumeUnlock { key })
        .await
        .unwrap();
    reconciler.reconcile(&storage_key).await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    assert_eq!(h.status("vs-1").await.attached_storage, ["st-1"]);
}

#[tokio::test]
async fn r26_an_attached_primary_is_copied_to_the_secondary_on_schedule_and_kept() {
    let h = harness().await;
    let version = stored_and_in_sync(&h, b"before the attach").await;
    h.order("vs-1", Some("a")).await;
    h.reconcile("vs-1").await.unwrap();
    attach(&h, Some("vs-1")).await;
    h.reconcile_storage("st-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    h.reconcile_storage("st-1").await.unwrap();
    assert!(attached_condition(&h.storage_status("st-1").await).0);

    // The guest writes; an interval later its disk is copied (the guest
    // paused for it) to the secondary, kept there, and gone from the primary.
    h.sim.corrupt_version("a1", STORAGE, version);
    let written = h.sim.versions("a1", STORAGE)[&version].clone();
    h.clock.advance(jiff::SignedDuration::from_mins(30));
    h.reconcile_storage("st-1").await.unwrap();
    assert!(h.storage_status("st-1").await.last_snapshot_at.is_none());
    h.clock.advance(jiff::SignedDuration::from_mins(31));
    h.reconcile_storage("st-1").await.unwrap();
    let status = h.storage_status("st-1").await;
    assert!(status.last_snapshot_at.is_some(), "{status:?}");
    let kept = status.replicas[1].kept.last().cloned().unwrap();
    assert!(kept.version > version);
    assert_eq!(h.sim.versions("b1", STORAGE)[&kept.version], written);
    assert!(
        !h.sim.versions("a1", STORAGE).contains_key(&kept.version),
        "the primary keeps only the disk"
    );
    assert_eq!(status.replicas[0].version, version, "the disk is unchanged");
    assert!(
        h.sim
            .calls()
            .iter()
            .any(|c| c.starts_with("copy_version a1")),
        "{:?}",
        h.sim.calls()
    );
    assert_eq!(
        h.audited_storage("st-1", AuditAction::StorageSnapshot)
            .await
            .len(),
        1
    );
    // Not again before the next interval.
    h.reconcile_storage("st-1").await.unwrap();
    assert_eq!(
        h.storage_status("st-1").await.replicas[1].kept.len(),
        status.replicas[1].kept.len()
    );

    // Detached later: settled as usual, the copies taken meanwhile stay
    // restorable.
    attach(&h, None).await;
    h.reconcile_storage("st-1").await.unwrap();
    h.reconcile("vs-1").await.unwrap();
    for _ in 0..4 {
        h.reconcile_storage("st-1").await.unwrap();
    }
    let status = h.storage_status("st-1").await;
    assert!(status.replicas_in_sync, "{status:?}");
    assert!(
        status.replicas[1]
            .kept
            .iter()
            .any(|k| k.version == kept.version),
        "{status:?}"
    );
}
