//! Addresses of servers (R19-R22): allocation from the pools of a zone
//! after a clean blacklist check, release to quarantine with R21's check
//! at termination, and the return of quarantined addresses to the free
//! set once they are clean. The ledger decides who holds what; this only
//! chooses candidates and asks the blacklists.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;
use stratus_core::Clock;
use stratus_core::dnsbl::{self, Verdict, ZoneAnswer, ZoneResult};
use stratus_core::ip::{self, Assignment, Family, PoolLayout};
use stratus_core::policy::Policy;
use stratus_core::resources::IpPool;
use stratus_store::Resources;
use stratus_store::ledger::{Charge, Check, CheckResult, Holding, Ledger, Listing, NewHolding};

use crate::dnsbl::BlacklistChecker;
use crate::error::ControllerError;

/// Candidates looked at per allocation and family before the order waits:
/// each costs a blacklist check, so a pool full of listed addresses does
/// not make one allocation ask thousands of names.
const MAX_CANDIDATES: usize = 64;
/// Candidates taken from the free set at a time.
const BATCH: usize = 8;
/// Addresses a sweep asks about at once (the checker bounds the queries
/// in flight across everything).
const SWEEP_PARALLEL: usize = 16;

/// Who an address is for.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The server's uid.
    pub uid: String,
    /// The account (the server's namespace).
    pub account: String,
    /// `namespace/name`, for people reading the history.
    pub subject: String,
}

/// The outcome of an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// What the server holds, one assignment per family its pool serves.
    Assigned(Vec<Assignment>),
    /// No clean address is free now: the order waits (`no_clean_address`).
    NoCleanAddress(String),
}

/// What one sweep round of a pool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepRound {
    pub clean: usize,
    pub listed: usize,
    pub inconclusive: usize,
    /// `namespace/name` of the servers whose addresses became listed or
    /// stopped being listed.
    pub changed: Vec<String>,
}

/// A pool as allocation sees it.
struct Pool {
    name: String,
    layout: PoolLayout,
}

pub struct Addresses {
    ledger: Ledger,
    pools: Resources<IpPool>,
    checker: Arc<BlacklistChecker>,
    clock: Arc<dyn Clock>,
    policy: Policy,
}

impl Addresses {
    pub fn new(
        ledger: Ledger,
        pools: Resources<IpPool>,
        checker: Arc<BlacklistChecker>,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        Self {
            ledger,
            pools,
            checker,
            clock,
            policy,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().as_millisecond()
    }

    /// `policy.dnsbl.sweepInterval` from now (calendar units make it vary).
    pub fn sweep_interval(&self) -> Duration {
        let now = self.clock.now();
        let next = self.policy.dnsbl.sweep_interval.after(now);
        Duration::try_from(now.duration_until(next)).unwrap_or_default()
    }

    /// The valid pools serving `zone`, by name. A pool whose spec does not
    /// parse, or that overlaps an older pool (both only possible with
    /// kubectl), is skipped, loudly.
    async fn pools_of(&self, zone: &str) -> Result<Vec<Pool>, ControllerError> {
        let all = self.pools.list(None).await?.items;
        let refused = ip::later_overlaps(&all);
        let mut pools: Vec<Pool> = all
            .into_iter()
            .filter(|p| p.spec.zone == zone)
            .filter(|p| {
                let overlapping = refused.iter().find(|o| o.pool == p.name_any());
                if let Some(overlap) = overlapping {
                    tracing::warn!(pool = %overlap.pool, %overlap, "IP pool overlaps another");
                }
                overlapping.is_none()
            })
            .filter_map(|p| match p.spec.layout() {
                Ok(layout) => Some(Pool {
                    name: p.name_any(),
                    layout,
                }),
                Err(error) => {
                    tracing::warn!(pool = %p.name_any(), %error, "IP pool is not valid; no address is taken from it");
                    None
                }
            })
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// What `holder` holds, allocating what it lacks from the pools of
    /// `zone`: an IPv4 address, and an IPv6 prefix when a pool of the zone
    /// has IPv6. A retried call returns the same addresses.
    pub async fn assign(&self, holder: &Holder, zone: &str) -> Result<Allocation, ControllerError> {
        let pools = self.pools_of(zone).await?;
        let held = self.ledger.ips().held_by(&holder.uid).await?;
        let mut assigned = Vec::new();
        for family in Family::ALL {
            if let Some(holding) = held.iter().find(|h| h.family == family) {
                assigned.push(self.assignment_of(holding, &pools).await?);
                continue;
            }
            let serving: Vec<&Pool> = pools
                .iter()
                .filter(|p| p.layout.family(family).is_some())
                .collect();
            if serving.is_empty() {
                if family == Family::V4 {
                    return Ok(Allocation::NoCleanAddress(format!(
                        "no IP pool serves zone {zone}"
                    )));
                }
                continue;
            }
            match self.take(family, &serving, holder).await? {
                Some(assignment) => assigned.push(assignment),
                None => {
                    return Ok(Allocation::NoCleanAddress(format!(
                        "no clean {family} address is free in the IP pools of zone {zone}"
                    )));
                }
            }
        }
        Ok(Allocation::Assigned(assigned))
    }

    /// The assignment of a holding, from its pool (which cannot be deleted
    /// while the holding lasts).
    async fn assignment_of(
        &self,
        holding: &Holding,
        zone_pools: &[Pool],
    ) -> Result<Assignment, ControllerError> {
        let layout = match zone_pools.iter().find(|p| p.name == holding.pool) {
            Some(pool) => pool.layout.clone(),
            None => {
                let pool = self.pools.get(None, &holding.pool).await?.ok_or_else(|| {
                    ControllerError::Malformed(
                        holding.subject.clone(),
                        format!(
                            "holds {} of pool {}, which is gone",
                            holding.address, holding.pool
                        ),
                    )
                })?;
                pool.spec
                    .layout()
                    .map_err(|e| ControllerError::Malformed(holding.pool.clone(), e.to_string()))?
            }
        };
        let space = layout.family(holding.family).ok_or_else(|| {
            ControllerError::Malformed(
                holding.pool.clone(),
                format!("no longer has {} addresses", holding.family),
            )
        })?;
        Ok(space.assignment(holding.slot))
    }

    /// Takes a clean free address of `family` from the first pool that
    /// has one. Candidates start at a random place, so racing controllers
    /// rarely reach for the same one; the ledger's unique index settles
    /// the races they do run.
    async fn take(
        &self,
        family: Family,
        pools: &[&Pool],
        holder: &Holder,
    ) -> Result<Option<Assignment>, ControllerError> {
        let mut looked_at = 0;
        for pool in pools {
            let Some(space) = pool.layout.family(family) else {
                continue;
            };
            let mut taken: HashSet<u64> = self
                .ledger
                .ips()
                .unavailable_slots(&pool.name, family)
                .await?;
            let mut start = uuid::Uuid::new_v4().as_u64_pair().0;
            while looked_at < MAX_CANDIDATES {
                let candidates = space.free_slots(start, &taken, BATCH);
                let Some(last) = candidates.last() else {
                    break;
                };
                start = last + 1;
                for slot in candidates {
                    looked_at += 1;
                    taken.insert(slot);
                    let assignment = space.assignment(slot);
                    let verdict = self.verdict(&pool.name, family, slot, &assignment).await?;
                    if verdict != Verdict::Clean {
                        continue;
                    }
                    let hold = NewHolding {
                        pool: &pool.name,
                        family,
                        slot,
                        address: &assignment.holding,
                        prefix_len: if family == Family::V4 {
                            32
                        } else {
                            assignment.prefix_len
                        },
                        holder: &holder.uid,
                        account: &holder.account,
                        subject: &holder.subject,
                        at: self.now(),
                        next_check_at: self
                            .policy
                            .dnsbl
                            .sweep_interval
                            .after(self.clock.now())
                            .as_millisecond(),
                    };
                    if self.ledger.ips().try_hold(&hold).await? {
                        tracing::info!(address = %assignment.holding, pool = %pool.name, "address allocated");
                        return Ok(Some(assignment));
                    }
                    // Refused: another controller took it first, or this
                    // holder took one in a retry that raced this one.
                    let held = self.ledger.ips().held_by(&holder.uid).await?;
                    if let Some(holding) = held.iter().find(|h| h.family == family) {
                        return self.assignment_of(holding, &[]).await.map(Some);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Asks the blacklists about an assignment's address, records every
    /// answer, and keeps the address's listing in step with a blocking
    /// verdict. An operator's override replaces the zones' verdict.
    pub async fn verdict(
        &self,
        pool: &str,
        family: Family,
        slot: u64,
        assignment: &Assignment,
    ) -> Result<Verdict, ControllerError> {
        let ips = self.ledger.ips();
        let overridden = ips
            .override_of(&assignment.holding)
            .await?
            .map(|o| o.listed);
        let results = self.checker.ask(assignment.address).await;
        let now = self.now();
        for result in &results {
            ips.record_check(&check_row(assignment.address, result, now))
                .await?;
        }
        let verdict = Verdict::of(&results, overridden);
        match verdict {
            Verdict::Listed => {
                let (zone, reason) = listing_reason(&results, overridden);
                ips.mark_listed(&Listing {
                    address: assignment.holding.clone(),
                    pool: pool.to_owned(),
                    family,
                    slot,
                    checked: assignment.address.to_string(),
                    zone,
                    reason,
                    since: now,
                })
                .await?;
            }
            Verdict::Clean => {
                if ips.clear_listing(&assignment.holding).await? {
                    tracing::info!(address = %assignment.holding, "address is no longer blacklisted");
                }
            }
            Verdict::Inconclusive => {}
        }
        Ok(verdict)
    }

    /// Ends the holdings of a server that is gone: each address is checked
    /// (R21: a listed one costs the leaving account the cleanup fee and
    /// stays out of circulation) and waits in quarantine (R22). A second
    /// call changes nothing.
    pub async fn release(&self, holder_uid: &str) -> Result<(), ControllerError> {
        let held = self.ledger.ips().held_by(holder_uid).await?;
        if held.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        for holding in &held {
            let Some(assignment) = self.pool_assignment(holding).await? else {
                continue;
            };
            let verdict = self
                .verdict(&holding.pool, holding.family, holding.slot, &assignment)
                .await?;
            if verdict == Verdict::Listed {
                self.charge_cleanup(holding, now).await?;
            }
        }
        let until = self.policy.ip.quarantine.after(now);
        self.ledger
            .ips()
            .release(holder_uid, now.as_millisecond(), until.as_millisecond())
            .await?;
        Ok(())
    }

    /// The assignment of a holding whose pool may be gone (then `None`).
    async fn pool_assignment(
        &self,
        holding: &Holding,
    ) -> Result<Option<Assignment>, ControllerError> {
        Ok(assignment_in(
            self.layout_of(&holding.pool).await?.as_ref(),
            holding.family,
            holding.slot,
        ))
    }

    /// A pool's layout; `None` when the pool is gone or no longer parses.
    async fn layout_of(&self, pool: &str) -> Result<Option<PoolLayout>, ControllerError> {
        Ok(self
            .pools
            .get(None, pool)
            .await?
            .and_then(|found| found.spec.layout().ok()))
    }

    /// Asks the blacklists about an address again (see [`Self::verdict`])
    /// and says whether its listing changed; an inconclusive answer
    /// changes nothing.
    async fn recheck(
        &self,
        pool: &str,
        family: Family,
        slot: u64,
        assignment: &Assignment,
    ) -> Result<(Verdict, bool), ControllerError> {
        let was_listed = self
            .ledger
            .ips()
            .listing(&assignment.holding)
            .await?
            .is_some();
        let verdict = self.verdict(pool, family, slot, assignment).await?;
        let changed = match verdict {
            Verdict::Listed => !was_listed,
            Verdict::Clean => was_listed,
            Verdict::Inconclusive => false,
        };
        Ok((verdict, changed))
    }

    async fn charge_cleanup(
        &self,
        holding: &Holding,
        now: Timestamp,
    ) -> Result<(), ControllerError> {
        let listing = self.ledger.ips().listing(&holding.address).await?;
        let charge = Charge {
            key: format!("ip_cleanup:{}", holding.id),
            account: holding.account.clone(),
            kind: "ip_cleanup".into(),
            amount: self.policy.ip.cleanup_fee,
            currency: self.policy.currency.clone(),
            subject: holding.address.clone(),
            detail: json!({
                "server": holding.subject,
                "allocated_at": holding.allocated_at,
                "zone": listing.as_ref().map(|l| &l.zone),
                "reason": listing.as_ref().map(|l| &l.reason),
            }),
            created_at: now.as_millisecond(),
        };
        if self.ledger.charges().record(&charge).await? {
            tracing::warn!(address = %holding.address, account = %holding.account, fee = charge.amount, "blacklisted address at termination: cleanup fee recorded");
        }
        Ok(())
    }

    /// R20's sweep: asks the blacklists again about up to `limit` held
    /// addresses of `pool` whose time has come, a few at a time. A clean or
    /// listed answer schedules the next check one sweep interval later; an
    /// inconclusive one is retried sooner, backing off. The schedule is in
    /// the ledger: a restart forgets nothing.
    pub async fn sweep(&self, pool: &str, limit: u32) -> Result<SweepRound, ControllerError> {
        let now = self.clock.now();
        let due = self
            .ledger
            .ips()
            .due_for_check(pool, now.as_millisecond(), limit)
            .await?;
        if due.is_empty() {
            return Ok(SweepRound::default());
        }
        let layout = self.layout_of(pool).await?;
        let next_sweep = self.policy.dnsbl.sweep_interval.after(now);
        let interval = self.sweep_interval();
        let checks = due.into_iter().map(|holding| {
            let assignment = assignment_in(layout.as_ref(), holding.family, holding.slot);
            async move {
                let Some(assignment) = assignment else {
                    // No pool to read the address from: look again later.
                    self.ledger
                        .ips()
                        .schedule_check(holding.id, next_sweep.as_millisecond(), 0)
                        .await?;
                    return Ok::<_, ControllerError>((holding, None));
                };
                let (verdict, changed) = self
                    .recheck(&holding.pool, holding.family, holding.slot, &assignment)
                    .await?;
                let (next, in_a_row) = match verdict {
                    Verdict::Inconclusive => {
                        let in_a_row = holding.inconclusive_checks.saturating_add(1);
                        let retry = dnsbl::retry_after(in_a_row, interval);
                        (
                            now.as_millisecond()
                                + i64::try_from(retry.as_millis()).unwrap_or(i64::MAX),
                            in_a_row,
                        )
                    }
                    Verdict::Clean | Verdict::Listed => (next_sweep.as_millisecond(), 0),
                };
                self.ledger
                    .ips()
                    .schedule_check(holding.id, next, in_a_row)
                    .await?;
                Ok((holding, Some((verdict, changed))))
            }
        });
        let mut round = SweepRound::default();
        let mut answers = futures::stream::iter(checks).buffer_unordered(SWEEP_PARALLEL);
        while let Some(answer) = answers.next().await {
            let (holding, Some((verdict, changed))) = answer? else {
                continue;
            };
            match verdict {
                Verdict::Clean => round.clean += 1,
                Verdict::Listed => {
                    round.listed += 1;
                    tracing::warn!(address = %holding.address, server = %holding.subject, "held address is blacklisted");
                }
                Verdict::Inconclusive => round.inconclusive += 1,
            }
            if changed {
                round.changed.push(holding.subject);
            }
        }
        Ok(round)
    }

    /// Answers up to `limit` checks operators asked for in `pool`: the
    /// blacklists are asked now and the verdict recorded on the request.
    /// Returns `namespace/name` of the holders whose listing changed.
    pub async fn answer_requests(
        &self,
        pool: &str,
        limit: u32,
    ) -> Result<Vec<String>, ControllerError> {
        let ips = self.ledger.ips();
        let pending = ips.pending_requests(pool, limit).await?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let layout = self.layout_of(pool).await?;
        let mut changed = Vec::new();
        for request in pending {
            let Some(assignment) = assignment_in(layout.as_ref(), request.family, request.slot)
            else {
                ips.answer_request(request.id, Verdict::Inconclusive.api_name(), self.now())
                    .await?;
                continue;
            };
            let (verdict, listing_changed) = self
                .recheck(pool, request.family, request.slot, &assignment)
                .await?;
            ips.answer_request(request.id, verdict.api_name(), self.now())
                .await?;
            tracing::info!(address = %request.address, requested_by = %request.requested_by, verdict = verdict.api_name(), "requested blacklist check answered");
            if listing_changed
                && let Some(holding) = ips
                    .history(&request.address)
                    .await?
                    .into_iter()
                    .find(|h| h.released_at.is_none())
            {
                changed.push(holding.subject);
            }
        }
        Ok(changed)
    }

    /// Returns quarantined addresses whose time is over to the free set
    /// once a check finds them clean (R22); listed or inconclusive ones
    /// wait for a later round. Returns how many were returned.
    pub async fn return_quarantined(
        &self,
        pool: &str,
        limit: u32,
    ) -> Result<usize, ControllerError> {
        let due = self
            .ledger
            .ips()
            .quarantine_over(pool, self.now(), limit)
            .await?;
        let mut returned = 0;
        for holding in due {
            let verdict = match self.pool_assignment(&holding).await? {
                Some(assignment) => {
                    self.verdict(&holding.pool, holding.family, holding.slot, &assignment)
                        .await?
                }
                // Its pool is gone: nothing hands it out again anyway.
                None => Verdict::Clean,
            };
            if verdict == Verdict::Clean {
                self.ledger
                    .ips()
                    .return_to_pool(holding.id, self.now())
                    .await?;
                returned += 1;
            }
        }
        Ok(returned)
    }
}

/// The assignment of a slot of a pool's family, if the pool has it.
fn assignment_in(layout: Option<&PoolLayout>, family: Family, slot: u64) -> Option<Assignment> {
    layout
        .and_then(|l| l.family(family))
        .map(|space| space.assignment(slot))
}

fn check_row(address: IpAddr, result: &ZoneResult, at: i64) -> Check {
    let (outcome, code, reason) = match &result.answer {
        ZoneAnswer::Listed { code, reason } => {
            (CheckResult::Listed, Some(code.to_string()), reason.clone())
        }
        ZoneAnswer::Clean => (CheckResult::Clean, None, None),
        ZoneAnswer::Error(why) => (CheckResult::Error, Some(why.clone()), None),
    };
    Check {
        address: address.to_string(),
        zone: result.zone.clone(),
        result: outcome,
        code,
        reason,
        checked_at: at,
    }
}

/// The zone and reason a listing is recorded with.
fn listing_reason(results: &[ZoneResult], overridden: Option<bool>) -> (String, String) {
    if overridden == Some(true) {
        return ("operator".into(), "listed by an operator's override".into());
    }
    results
        .iter()
        .find_map(|r| match &r.answer {
            ZoneAnswer::Listed { code, reason }
                if r.mode == stratus_core::config::ZoneMode::Blocking =>
            {
                Some((
                    r.zone.clone(),
                    reason
                        .clone()
                        .unwrap_or_else(|| format!("listed with code {code}")),
                ))
            }
            _ => None,
        })
        .unwrap_or_default()
}
