//! The IP pool reconciler: counts each pool's addresses into its status
//! (total, allocated, quarantined, blacklisted, free) and returns the
//! pool's quarantined addresses whose time is over to the free set once a
//! blacklist check finds them clean (R22). The deadlines are the ledger's
//! `quarantine_until`: a restart forgets nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stratus_core::conditions::{self, ConditionType, Reason};
use stratus_core::dnsbl;
use stratus_core::ip::{self, Family, SlotSpace};
use stratus_core::lifecycle::NO_CLEAN_ADDRESS;
use stratus_core::resources::{AddressCounts, IpPool, IpPoolStatus, VirtualServer};
use stratus_store::Resources;

use crate::addresses::Addresses;
use crate::context::Context;
use crate::error::ControllerError;
use crate::runtime::{ObjectKey, Outcome, Reconcile, Requeue, Trigger};

/// Quarantined addresses looked at per round and pool.
const RETURNS_PER_ROUND: u32 = 256;
/// Operators' check requests answered per round and pool.
const REQUESTS_PER_ROUND: u32 = 64;

pub struct IpPoolReconciler {
    ctx: Context,
    pools: Resources<IpPool>,
    addresses: Arc<Addresses>,
    interval: Duration,
    /// Servers waiting for a clean address, queued when addresses return.
    waiting_servers: Option<Requeue<VirtualServer>>,
}

#[async_trait]
impl Reconcile for IpPoolReconciler {
    type Kind = IpPool;

    fn resources(&self) -> &Resources<IpPool> {
        &self.pools
    }

    /// Its own status writes must not trigger it again.
    fn trigger(&self) -> Trigger {
        Trigger::GenerationChanged
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Outcome, ControllerError> {
        let Some(pool) = self.pools.get(None, &key.name).await? else {
            return Ok(Outcome::Done);
        };
        let returned = self
            .addresses
            .return_quarantined(&key.name, RETURNS_PER_ROUND)
            .await?;
        if returned > 0 {
            tracing::info!(returned, "quarantined addresses returned to the free set");
        }
        let status = self.count(&pool).await?;
        if status.offers_more_than(pool.status.as_ref()) {
            self.wake_waiting_servers().await?;
        }
        if pool.status.as_ref() != Some(&status) {
            self.pools.patch_status(None, &key.name, &status).await?;
        }
        self.sweep(&key.name, &status).await?;
        Ok(Outcome::RequeueAfter(self.interval))
    }
}

impl IpPoolReconciler {
    pub fn new(
        ctx: Context,
        pools: Resources<IpPool>,
        addresses: Arc<Addresses>,
        interval: Duration,
    ) -> Self {
        Self {
            ctx,
            pools,
            addresses,
            interval,
            waiting_servers: None,
        }
    }

    pub fn requeueing(mut self, waiting_servers: Requeue<VirtualServer>) -> Self {
        self.waiting_servers = Some(waiting_servers);
        self
    }

    /// Queues the servers waiting for a clean address: this pool has more
    /// to offer than when it was last counted.
    async fn wake_waiting_servers(&self) -> Result<(), ControllerError> {
        if let Some(waiting) = &self.waiting_servers {
            let woken = waiting
                .matching(|server| {
                    server.status.as_ref().is_some_and(|s| {
                        s.reason
                            .as_deref()
                            .is_some_and(|r| r.starts_with(NO_CLEAN_ADDRESS))
                    })
                })
                .await?;
            if woken > 0 {
                tracing::info!(woken, "servers waiting for an address queued again");
            }
        }
        Ok(())
    }

    /// One round of R20's sweep over the pool's held addresses, sized so
    /// that every one is asked about within the sweep interval; servers
    /// whose addresses became listed or clean are queued to say so.
    async fn sweep(&self, pool: &str, status: &IpPoolStatus) -> Result<(), ControllerError> {
        let held = status.ipv4.allocated + status.ipv6.as_ref().map_or(0, |c| c.allocated);
        let limit = dnsbl::sweep_batch(held, self.interval, self.addresses.sweep_interval());
        let mut round = self.addresses.sweep(pool, limit).await?;
        round.changed.extend(
            self.addresses
                .answer_requests(pool, REQUESTS_PER_ROUND)
                .await?,
        );
        self.ctx
            .metrics
            .swept(round.clean, round.listed, round.inconclusive);
        if round.clean + round.listed + round.inconclusive > 0 {
            tracing::info!(
                clean = round.clean,
                listed = round.listed,
                inconclusive = round.inconclusive,
                "blacklist sweep round"
            );
        }
        if let Some(servers) = &self.waiting_servers {
            servers.keys(round.changed.iter().filter_map(|subject| {
                let (namespace, name) = subject.split_once('/')?;
                Some(ObjectKey {
                    namespace: Some(namespace.to_owned()),
                    name: name.to_owned(),
                })
            }));
        }
        Ok(())
    }

    /// The pool's status as the ledger counts it now.
    async fn count(&self, pool: &IpPool) -> Result<IpPoolStatus, ControllerError> {
        let mut status = pool.status.clone().unwrap_or_default();
        let name = kube::ResourceExt::name_any(pool);
        let now = self.ctx.clock.now();
        let all = self.pools.list(None).await?.items;
        let overlap = ip::later_overlaps(&all)
            .into_iter()
            .find(|o| o.pool == name);
        match (pool.spec.layout(), overlap) {
            (Ok(layout), overlap) => {
                status.ipv4 = self.family_counts(&name, Family::V4, &layout.ipv4).await?;
                status.ipv6 = match &layout.ipv6 {
                    Some(space) => Some(self.family_counts(&name, Family::V6, space).await?),
                    None => None,
                };
                let (ready, reason, message) = match overlap {
                    Some(overlap) => (false, Reason::Overlapping, overlap.to_string()),
                    None => (true, Reason::Answered, "pool is valid".to_owned()),
                };
                conditions::set(
                    &mut status.conditions,
                    ConditionType::Ready,
                    ready,
                    reason,
                    message,
                    now,
                );
            }
            (Err(error), _) => {
                conditions::set(
                    &mut status.conditions,
                    ConditionType::Ready,
                    false,
                    Reason::Invalid,
                    error.to_string(),
                    now,
                );
            }
        }
        Ok(status)
    }

    async fn family_counts(
        &self,
        pool: &str,
        family: Family,
        space: &SlotSpace,
    ) -> Result<AddressCounts, ControllerError> {
        let usage = self.ctx.ledger.ips().usage(pool, family).await?;
        Ok(AddressCounts::new(
            space.usable(),
            usage.allocated,
            usage.quarantined,
            usage.blacklisted,
        ))
    }
}
