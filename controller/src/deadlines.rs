//! The deadline runner: carries out each account's standing (R1–R10, R14,
//! R18) when a fact is reported or a deadline of the policy passes.
//!
//! The standing is recomputed from every fact of the account, so carrying
//! it out is level-triggered: suspensions and terminations are written onto
//! the servers as they should be now, and every change, charge and audit
//! row carries an id derived from its cause and is recorded once however
//! often it is worked out again. The next deadline is stored in the ledger,
//! never only in memory: a restart acts on every deadline that passed while
//! the process was down, at start.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;
use stratus_core::conditions::{self, ConditionType, EventReason, Reason};
use stratus_core::notices;
use stratus_core::policy::Policy;
use stratus_core::quota::charged_object;
use stratus_core::resources::{
    Account, AccountState, AccountStatus, AccountSuspension, ServerTermination,
    StorageSubscription, VirtualServer,
};
use stratus_core::standing::{self, Cause, ChangeKind, Standing, Subject, TerminationCause};
use stratus_store::ledger::{Actor, AuditAction, AuditEntry, AuditSubject, Charge, DueAccount};
use stratus_store::objects::Deletion;
use stratus_store::{Resources, StoreError};
use tokio::sync::watch;

use crate::context::Context;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::notifier::Outbox;
use crate::runtime;

/// An account with more facts than this is refused rather than read
/// without bound; no real account comes near it.
const MAX_FACTS: usize = 100_000;
/// Due accounts taken per query.
const DUE_BATCH: u32 = 500;
/// Times one pass settles again the accounts that got a fact during
/// their settle, before leaving them to the next pass.
const MAX_SUPERSEDED_ROUNDS: usize = 8;
/// Accounts carried out at once: each is independent of the others.
const SETTLE_CONCURRENCY: usize = 16;
/// How long an account whose standing could not be carried out waits
/// before it is tried again: a second after its first failure, doubling
/// at each failure in a row up to this. Standings are due at an instant
/// (a suspension, a notice), so a passing failure must not delay them long.
const RETRY_AFTER_AT_MOST: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);
/// Failures in a row remembered per account (an account that failed more
/// is tried every [`RETRY_AFTER_AT_MOST`]).
const MAX_FAILURES_KEPT: usize = 10_000;

/// The pause before the next attempt at an account that failed `failures`
/// times in a row.
fn retry_after(failures: u32) -> jiff::SignedDuration {
    let seconds = 1_i64 << failures.saturating_sub(1).min(5);
    jiff::SignedDuration::from_secs(seconds).min(RETRY_AFTER_AT_MOST)
}

/// Carries out accounts' standings when they are due.
pub struct DeadlineRunner {
    ctx: Context,
    accounts: Resources<Account>,
    servers: Resources<VirtualServer>,
    policy: Arc<Policy>,
    /// How often the ledger is asked for due accounts: a fact reported
    /// through the API (another process, maybe) is acted on within it.
    poll: Duration,
    /// Where the account is told of its standing.
    outbox: Outbox,
    /// Storage subscriptions, held and terminated like servers.
    storage: Option<Resources<StorageSubscription>>,
    /// Accounts whose standing failed, with their failures in a row.
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// What one settle came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Carried out, and the next deadline stored.
    Done,
    /// Carried out as far as the facts it read say, but a fact was
    /// recorded meanwhile: no deadline stored, the account stays due.
    Superseded,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Accounts whose standing was carried out.
    pub settled: usize,
    /// Settles overtaken by a fact recorded meanwhile (settled again).
    pub superseded: usize,
    /// Accounts that failed and will be tried again.
    pub failed: usize,
}

impl DeadlineRunner {
    pub fn new(
        ctx: Context,
        accounts: Resources<Account>,
        servers: Resources<VirtualServer>,
        policy: Arc<Policy>,
        poll: Duration,
    ) -> Self {
        Self {
            ctx,
            accounts,
            servers,
            policy,
            poll,
            outbox: Outbox::default(),
            storage: None,
            failures: Default::default(),
        }
    }

    /// Holds the account's storage subscriptions as its standing says too.
    pub fn holding_storage(mut self, storage: Resources<StorageSubscription>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Queues each change and notice for the configured channels.
    pub fn notifying(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Runs until `shutdown` says stop.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        runtime::every("deadline", self.poll, shutdown, || self.pass()).await;
    }

    /// Carries out every account due by now.
    pub async fn pass(&self) -> Result<PassReport, ControllerError> {
        let mut report = PassReport::default();
        // A fact reported during a settle leaves its account due: it is
        // settled again within this pass, a bounded number of times (a
        // stream of facts is then left to the next pass).
        let mut superseded_rounds = 0;
        loop {
            let now = self.ctx.clock.now();
            let due = self
                .ctx
                .ledger
                .facts()
                .due(now.as_millisecond(), DUE_BATCH)
                .await?;
            if due.is_empty() {
                return Ok(report);
            }
            let batch = due.len();
            let outcomes: Vec<(DueAccount, Result<Settled, ControllerError>)> =
                futures::stream::iter(due)
                    .map(|due| async move {
                        let outcome = self.settle(&due, now).await;
                        (due, outcome)
                    })
                    .buffer_unordered(SETTLE_CONCURRENCY)
                    .collect()
                    .await;
            let mut superseded = false;
            for (due, outcome) in outcomes {
                let account = due.account;
                let failures = {
                    let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    match &outcome {
                        Ok(_) => {
                            failures.remove(&account);
                            0
                        }
                        Err(_)
                            if failures.len() >= MAX_FAILURES_KEPT
                                && !failures.contains_key(&account) =>
                        {
                            u32::MAX
                        }
                        Err(_) => {
                            let count = failures.entry(account.clone()).or_insert(0);
                            *count = count.saturating_add(1);
                            *count
                        }
                    }
                };
                match outcome {
                    Ok(Settled::Done) => report.settled += 1,
                    Ok(Settled::Superseded) => {
                        report.superseded += 1;
                        superseded = true;
                    }
                    Err(error) => {
                        report.failed += 1;
                        let wait = retry_after(failures);
                        tracing::warn!(%account, %error, failures, retry_in = %wait, "could not carry out the account's standing; trying again");
                        let retry = (now + wait).as_millisecond();
                        // A fact reported meanwhile keeps the account due now.
                        self.ctx
                            .ledger
                            .facts()
                            .settle_deadline(&account, Some(retry), due.revision)
                            .await?;
                    }
                }
            }
            if superseded && superseded_rounds < MAX_SUPERSEDED_ROUNDS {
                superseded_rounds += 1;
                continue;
            }
            if batch < DUE_BATCH as usize {
                return Ok(report);
            }
        }
    }

    /// Carries out the standing of the account `due` names at `now` and
    /// stores its next deadline, unless a fact was recorded after the
    /// facts it read ([`Settled::Superseded`]: the account stays due).
    #[tracing::instrument(skip(self, due), fields(account = %due.account, revision = due.revision))]
    pub async fn settle(
        &self,
        due: &DueAccount,
        now: Timestamp,
    ) -> Result<Settled, ControllerError> {
        let account = due.account.as_str();
        // The revision was read before the facts: any fact missing from
        // them bumped it, and the deadline written below names it.
        let facts = self
            .ctx
            .ledger
            .facts()
            .standing_facts(account, MAX_FACTS)
            .await?;
        let standing = standing::standing(&facts, &self.policy, now);
        let Some(object) = self.accounts.get(None, account).await? else {
            tracing::warn!("facts name an account that does not exist; nothing to carry out");
            return self.store_deadline(due, None).await;
        };
        let next_forgotten = self.hold_servers(account, &standing, now).await?;
        let next_backup_wipe = self.hold_storage(account, &standing, now).await?;
        self.record_charges(account, &standing).await?;
        self.audit_changes(&object, &standing).await;
        self.queue_notifications(&object, &standing, now).await?;
        self.record_account_status(&object, &standing, now).await?;
        let next = [standing.next_deadline, next_forgotten, next_backup_wipe]
            .into_iter()
            .flatten()
            .min();
        self.store_deadline(due, next).await
    }

    async fn store_deadline(
        &self,
        due: &DueAccount,
        next: Option<Timestamp>,
    ) -> Result<Settled, ControllerError> {
        let written = self
            .ctx
            .ledger
            .facts()
            .settle_deadline(
                &due.account,
                next.map(Timestamp::as_millisecond),
                due.revision,
            )
            .await?;
        if written {
            Ok(Settled::Done)
        } else {
            tracing::info!("a fact was reported during the settle: the account is settled again");
            Ok(Settled::Superseded)
        }
    }

    /// Writes each server's suspension and termination as the standing has
    /// them now. A terminated server whose data is due is marked to be
    /// wiped (its agent wipes the disk, its addresses go to quarantine) and
    /// stays listed as terminated until `termination.recordRetention` has
    /// passed, when it is deleted; the instant of the next such deletion.
    async fn hold_servers(
        &self,
        account: &str,
        standing: &Standing,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, ControllerError> {
        let retention = self.policy.termination.record_retention;
        let mut next_forgotten: Option<Timestamp> = None;
        let servers = self.servers.list(Some(account)).await?.items;
        for server in servers {
            if server.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = server.name_any();
            let termination = standing.termination_of(&name).filter(|t| t.done);
            if let Some(t) = termination {
                let forget_at = retention.after(t.wipe_at);
                if forget_at <= now {
                    match self.servers.delete(Some(account), &name).await {
                        Ok(Deletion::Pending(_) | Deletion::Deleted)
                        | Err(StoreError::NotFound { .. }) => {}
                        Err(other) => return Err(other.into()),
                    }
                    tracing::info!(server = %name, "terminated server's record retention passed: deleted");
                    continue;
                }
                next_forgotten = Some(next_forgotten.map_or(forget_at, |n| n.min(forget_at)));
            }
            let suspension = standing.suspension_of(&name, &self.policy);
            let held_off = termination.map(|t| ServerTermination {
                cause: t.cause,
                at: t.at.to_string(),
                wipe_at: t.wipe_at.to_string(),
                wipe: t.wiped || t.wipe_at <= now,
            });
            // Restored (R18) from a backup while its data is gone: its disk
            // is made again as a copy of that backup.
            // Written whatever the server's status says now (its disk may be
            // released between this listing and the write): the lifecycle
            // uses it only while the server has no disk.
            let created = server.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let restore_from = standing
                .restored_from(&name, created)
                .filter(|_| termination.is_none())
                .map(str::to_owned);
            let from_snapshot = restore_from.or_else(|| server.spec.from_snapshot.clone());
            if server.spec.suspension == suspension
                && server.spec.termination == held_off
                && server.spec.from_snapshot == from_snapshot
            {
                continue;
            }
            self.servers
                .update(Some(account), &name, |s| {
                    let changed = s.spec.suspension != suspension
                        || s.spec.termination != held_off
                        || s.spec.from_snapshot != from_snapshot;
                    s.spec.suspension.clone_from(&suspension);
                    s.spec.termination.clone_from(&held_off);
                    s.spec.from_snapshot.clone_from(&from_snapshot);
                    changed
                })
                .await?;
            tracing::info!(server = %name, suspension = ?suspension, termination = ?held_off, "server held as the account's standing says");
        }
        Ok(next_forgotten)
    }

    /// Writes each storage subscription's suspension and termination as the
    /// standing has them now (the account's, or its own when a fact named
    /// it). A terminated subscription whose data is due is deleted: the
    /// controller wipes both copies, then lets it go (R3, R14). A server's
    /// backup outlives a destruction for non-payment by
    /// `backups.keepAfterDestruction` (R3, R18); answers the instant the
    /// next of those is due.
    async fn hold_storage(
        &self,
        account: &str,
        standing: &Standing,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, ControllerError> {
        let Some(storage) = &self.storage else {
            return Ok(None);
        };
        let mut next_wipe: Option<Timestamp> = None;
        for subscription in storage.list(Some(account)).await?.items {
            if subscription.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = subscription.name_any();
            // A snapshot follows its server: a fact that named the server
            // (an abuse termination, a legal hold) holds its copies too.
            let subject = subscription
                .spec
                .snapshot_of
                .as_ref()
                .map_or(name.clone(), |of| of.server.clone());
            let termination = standing.termination_of(&subject).filter(|t| t.done);
            let kept_longer = |t: &standing::Termination| {
                subscription
                    .spec
                    .snapshot_of
                    .as_ref()
                    .is_some_and(|of| of.backup)
                    && t.cause == TerminationCause::NonPayment
                    && !self.policy.backups.keep_after_destruction.is_zero()
            };
            // The instant its copies are wiped, and whether that came.
            let wipe = termination.map(|t| {
                if kept_longer(&t) {
                    let at = self.policy.backups.keep_after_destruction.after(t.wipe_at);
                    (at, at <= now)
                } else {
                    (t.wipe_at, t.wiped || t.wipe_at <= now)
                }
            });
            if let Some((at, false)) = wipe {
                next_wipe = Some(next_wipe.map_or(at, |n| n.min(at)));
            }
            if let Some(t) = termination
                && let Some((_, true)) = wipe
            {
                match storage.delete(Some(account), &name).await {
                    Ok(Deletion::Deleted) => {
                        // No finalizer yet: nothing was made of it, and
                        // nothing else gives its charge back.
                        self.ctx
                            .ledger
                            .quotas()
                            .release(&charged_object(account, &name))
                            .await?;
                    }
                    Ok(Deletion::Pending(_)) | Err(StoreError::NotFound { .. }) => {}
                    Err(other) => return Err(other.into()),
                }
                self.ctx
                    .audit(
                        AuditAction::StorageTerminated,
                        AuditSubject::storage(&subscription),
                        json!({ "cause": t.cause.as_str(), "at": t.at.to_string(), "wipe_at": t.wipe_at.to_string() }),
                    )
                    .await;
                tracing::info!(storage = %name, "terminated storage's data is due: both copies are wiped");
                continue;
            }
            let suspension = standing.suspension_of(&subject, &self.policy);
            let held_off = termination.map(|t| ServerTermination {
                cause: t.cause,
                at: t.at.to_string(),
                wipe_at: wipe.map_or(t.wipe_at, |(at, _)| at).to_string(),
                wipe: false,
            });
            if subscription.spec.suspension == suspension
                && subscription.spec.termination == held_off
            {
                continue;
            }
            storage
                .update(Some(account), &name, |s| {
                    let changed = s.spec.suspension != suspension || s.spec.termination != held_off;
                    s.spec.suspension.clone_from(&suspension);
                    s.spec.termination.clone_from(&held_off);
                    changed
                })
                .await?;
            tracing::info!(storage = %name, suspension = ?suspension, termination = ?held_off, "storage held as the account's standing says");
        }
        Ok(next_wipe)
    }

    async fn record_charges(
        &self,
        account: &str,
        standing: &Standing,
    ) -> Result<(), ControllerError> {
        for charge in &standing.charges {
            let kind = serde_json::to_value(charge.kind)
                .map_err(|e| ControllerError::Malformed(charge.id.clone(), e.to_string()))?;
            let recorded = Charge {
                key: format!("{account}/{}", charge.id),
                account: account.to_owned(),
                kind: kind.as_str().unwrap_or_default().to_owned(),
                amount: charge.amount,
                currency: self.policy.currency.clone(),
                subject: format!("server/{account}/{}", charge.server),
                detail: json!({ "server": charge.server, "charge": charge.id }),
                created_at: charge.at.as_millisecond(),
            };
            if self.ctx.ledger.charges().record(&recorded).await? {
                tracing::info!(charge = %charge.id, amount = charge.amount, "chargeable event recorded");
            }
        }
        Ok(())
    }

    /// Every change once in the audit log (R10), with its cause, and as
    /// an Event on the Account when it is first recorded.
    async fn audit_changes(&self, object: &Account, standing: &Standing) {
        let name = object.name_any();
        let account = name.as_str();
        for change in &standing.changes {
            let subject = match &change.subject {
                Subject::Account => AuditSubject::Account(account.to_owned()),
                Subject::Server(name) => AuditSubject::Server {
                    account: account.to_owned(),
                    name: name.clone(),
                },
            };
            let cause = match &change.cause {
                Cause::Fact(id) => json!({ "fact": id }),
                Cause::Policy => json!("policy"),
            };
            let entry = AuditEntry {
                at: change.at.as_millisecond(),
                actor: Actor::Controller,
                action: AuditAction::StandingChange,
                subject,
                detail: json!({ "change": change, "cause": cause }),
            };
            let key = format!("{account}/{}", change.id);
            match self.ctx.ledger.audit().append_once(&entry, &key).await {
                Ok(true) => {
                    tracing::info!(change = %change.id, "standing changed");
                    self.publish_change(object, change).await;
                }
                Ok(false) => {}
                Err(error) => tracing::error!(%error, change = %change.id, "audit write failed"),
            }
        }
    }

    async fn publish_change(&self, account: &Account, change: &standing::Change) {
        let reason = EventReason::changed(&change.kind);
        let (event_type, note) = match notices::for_change(&account.name_any(), change) {
            Some(message) => {
                let warning = matches!(
                    change.kind,
                    ChangeKind::Suspended { .. }
                        | ChangeKind::TerminationScheduled { .. }
                        | ChangeKind::Terminated { .. }
                        | ChangeKind::DataDestroyed
                );
                let kind = if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                (kind, message.text)
            }
            None => (
                EventType::Warning,
                "an invoice is past billing.suspendAfter without a reminder recorded: nothing is suspended until one is".to_owned(),
            ),
        };
        self.ctx.publish(account, event_type, reason, &note).await;
    }

    /// Every change the account is told of, and every notice owed, once
    /// per channel.
    async fn queue_notifications(
        &self,
        account: &Account,
        standing: &Standing,
        now: Timestamp,
    ) -> Result<(), ControllerError> {
        let name = account.name_any();
        let messages: Vec<_> = standing
            .changes
            .iter()
            .filter_map(|change| notices::for_change(&name, change))
            .chain(
                standing
                    .notices
                    .iter()
                    .map(|notice| notices::for_notice(&name, notice)),
            )
            .collect();
        let queued = self
            .outbox
            .queue(&self.ctx, &name, &account.spec.email, messages, now)
            .await?;
        if queued > 0 {
            tracing::info!(queued, "notifications queued");
        }
        Ok(())
    }

    async fn record_account_status(
        &self,
        account: &Account,
        standing: &Standing,
        now: Timestamp,
    ) -> Result<(), ControllerError> {
        let current = account.status.clone().unwrap_or_default();
        let mut status = AccountStatus {
            suspensions: standing
                .account_suspensions
                .iter()
                .map(|(reason, since)| AccountSuspension {
                    reason: *reason,
                    since: since.to_string(),
                })
                .collect(),
            data_destroyed_at: standing.data_destroyed_at.map(|t| t.to_string()),
            next_deadline: standing.next_deadline.map(|t| t.to_string()),
            ..current.clone()
        };
        status.state = match current.state {
            AccountState::Closed => AccountState::Closed,
            _ if status.suspensions.is_empty() => AccountState::Active,
            _ => AccountState::Suspended,
        };
        let first = status.suspensions.first().map(|s| s.reason);
        let message = status
            .suspensions
            .iter()
            .map(|s| format!("suspended {} since {}", s.reason.describe(), s.since))
            .collect::<Vec<_>>()
            .join("; ");
        conditions::set(
            &mut status.conditions,
            ConditionType::Suspended,
            first.is_some(),
            first.map_or(Reason::NotSuspended, Reason::suspended_for),
            message,
            now,
        );
        if status != current {
            self.accounts
                .patch_status(None, &account.name_any(), &status)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_standing_is_tried_again_soon_then_less_often() {
        let waits: Vec<i64> = [1, 2, 3, 4, 5, 6, 7, 100, u32::MAX]
            .into_iter()
            .map(|n| retry_after(n).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30, 30]);
    }
}
