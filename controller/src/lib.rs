//! The stratus controller: reconcilers that make hypervisors match the
//! resources, the generic runtime they run on, and leader election. They
//! act on hypervisors through `stratus_agent_client`.
//!
//! A new reconciler: a struct holding a [`Context`] and the
//! [`stratus_store::Resources`] of its kind, an `impl runtime::Reconcile`,
//! and one `runtime.add(...)` line in [`controller`].

pub mod addresses;
pub mod backups;
pub mod context;
pub mod deadlines;
pub mod dnsbl;
pub mod error;
pub mod events;
pub mod hypervisors;
pub mod ip_pools;
pub mod leader;
pub mod metrics;
pub mod notifier;
pub mod placements;
pub mod rdns;
#[cfg(any(test, feature = "testing"))]
pub mod receivers;
pub mod runtime;
pub mod servers;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

pub use context::Context;
pub use error::ControllerError;
pub use runtime::{Runtime, RuntimeConfig};
pub use stratus_agent_client::{
    AgentCallError, AgentClient, AgentDirectory, AgentEndpoint, HttpAgentClient,
};
use stratus_core::Config;
use stratus_store::{ObjectStore, Resources};

use crate::addresses::Addresses;
use crate::deadlines::DeadlineRunner;
use crate::dnsbl::BlacklistChecker;
use crate::hypervisors::HypervisorProber;
use crate::ip_pools::IpPoolReconciler;
use crate::notifier::{Notifier, Outbox};
use crate::placements::Scheduling;
use crate::servers::ServerReconciler;
use crate::storage::StorageReconciler;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub runtime: RuntimeConfig,
    /// How often every hypervisor's agent is asked for its capacity.
    pub probe_interval: Duration,
    /// How often each IP pool is counted and its quarantine looked at.
    pub pool_interval: Duration,
    /// How often the ledger is asked for accounts whose standing is due.
    pub deadline_poll: Duration,
    /// How often the outbox is asked for notifications due.
    pub notification_poll: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            runtime: RuntimeConfig::default(),
            probe_interval: Duration::from_secs(15),
            pool_interval: Duration::from_secs(60),
            deadline_poll: Duration::from_secs(1),
            notification_poll: Duration::from_secs(1),
        }
    }
}

/// Every reconciler of stratus on one runtime.
pub fn controller(
    ctx: Context,
    store: Arc<dyn ObjectStore>,
    config: Arc<Config>,
    settings: ControllerConfig,
) -> Result<Runtime, ControllerError> {
    let mut runtime = Runtime::new(settings.runtime, ctx.clock.clone(), ctx.metrics.clone());
    let addresses = Arc::new(Addresses::new(
        ctx.ledger.clone(),
        Resources::new(store.clone()),
        Arc::new(BlacklistChecker::new(&config.dnsbl)?),
        ctx.clock.clone(),
        config.policy.clone(),
    ));
    let deadlines = DeadlineRunner::new(
        ctx.clone(),
        Resources::new(store.clone()),
        Resources::new(store.clone()),
        Arc::new(config.policy.clone()),
        settings.deadline_poll,
    )
    .notifying(Outbox::new(&config.notifications))
    .holding_storage(Resources::new(store.clone()));
    runtime.add_loop(move |shutdown| deadlines.run(shutdown));
    let notifications = &config.notifications;
    if notifications.any_account_channel() || notifications.billing_webhook.is_some() {
        let notifier = Notifier::new(ctx.clone(), notifications, settings.notification_poll)?;
        runtime.add_loop(move |shutdown| notifier.run(shutdown));
    }
    let scheduling = Scheduling::shared();
    let storage_policy = config.policy.storage.clone();
    let storage_outbox = Outbox::new(&config.notifications);
    let servers = Arc::new(
        ServerReconciler::new(
            ctx.clone(),
            Resources::new(store.clone()),
            Resources::new(store.clone()),
            config,
            addresses.clone(),
            scheduling.clone(),
        )
        .with_accounts(Resources::new(store.clone())),
    );
    let waiting_servers = runtime.add(servers);
    let waiting_storage = runtime.add(Arc::new(
        StorageReconciler::new(
            ctx.clone(),
            Resources::new(store.clone()),
            Resources::new(store.clone()),
            scheduling.clone(),
            storage_policy,
        )
        .notifying(storage_outbox, Resources::new(store.clone())),
    ));
    scheduling.wakes_through(waiting_servers.clone(), waiting_storage.clone());
    runtime.add(Arc::new(
        IpPoolReconciler::new(
            ctx.clone(),
            Resources::new(store.clone()),
            addresses,
            settings.pool_interval,
        )
        .requeueing(waiting_servers.clone()),
    ));
    runtime.add(Arc::new(
        HypervisorProber::new(ctx, Resources::new(store), settings.probe_interval)
            .requeueing(waiting_servers)
            .requeueing_storage(waiting_storage),
    ));
    Ok(runtime)
}
