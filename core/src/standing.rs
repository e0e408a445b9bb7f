//! An account's standing under the provider's terms (R1–R9, R14, R18): a
//! pure function of the facts the billing system and operators reported,
//! the policy and the time.
//!
//! [`standing`] replays the facts in the order they were recorded and, in
//! between, fires every deadline they set (a suspension for non-payment,
//! the destruction of data, a termination with notice, the end of a
//! maintenance window, the close of an abuse case) at its own instant. It
//! returns what holds now, everything that happened with its cause (for
//! the audit and the customer's notices), the charges, the notices of
//! deadlines ahead, and the next instant anything changes. Every change and
//! charge carries an id derived from what caused it, so whoever carries
//! them out (the controller, after any number of restarts) does each once.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, SuspensionMode};

/// A server of the account, by the name of its object.
pub type ServerName = String;

/// Why a service is suspended, as customers read it (`status_reason`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SuspensionReason {
    /// R1: an invoice stayed unpaid; every service of the account (R2).
    NonPayment,
    /// R5: one abusing service, at once.
    Abuse,
    /// R8: an authority's request; every service, lifted by an operator.
    Legal,
    /// R8: an incomplete identity file; every service, lifted by an operator.
    Kyc,
    /// R9: one service, for a window; lifted when it ends.
    Maintenance,
}

impl SuspensionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonPayment => "non_payment",
            Self::Abuse => "abuse",
            Self::Legal => "legal",
            Self::Kyc => "kyc",
            Self::Maintenance => "maintenance",
        }
    }

    /// Whether a service held for this reason is evidence: its customer
    /// cannot destroy it until an operator lifts the hold or terminates it
    /// (R5 for abuse, R8 for an authority's request or an identity file).
    pub fn keeps_evidence(self) -> bool {
        matches!(self, Self::Abuse | Self::Legal | Self::Kyc)
    }

    /// Completes "suspended …" as customers read it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NonPayment => "for non-payment",
            Self::Abuse => "for abuse",
            Self::Legal => "on request of an authority",
            Self::Kyc => "until the identity file is complete",
            Self::Maintenance => "for maintenance",
        }
    }

    /// How a service suspended for this reason is held.
    pub fn mode(self, policy: &Policy) -> SuspensionMode {
        match self {
            Self::NonPayment => policy.billing.suspension_mode,
            Self::Abuse => policy.abuse.suspension_mode,
            Self::Legal | Self::Kyc | Self::Maintenance => SuspensionMode::Stopped,
        }
    }
}

/// Why a server ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationCause {
    /// R3: the account's data destroyed after an unpaid suspension.
    NonPayment,
    /// R6: an operator terminated an abusing server.
    Abuse,
    /// An operator terminated it for another reason.
    Operator,
}

impl TerminationCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonPayment => "non_payment",
            Self::Abuse => "abuse",
            Self::Operator => "operator",
        }
    }
}

/// A fact reported to stratus, in the order it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The reporter's unique id for it.
    pub id: String,
    /// When stratus recorded it: what it causes at once happens then.
    pub recorded_at: Timestamp,
    pub kind: FactKind,
}

/// Stored as JSON in the facts ledger, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum FactKind {
    InvoiceOverdue {
        invoice: String,
        due_at: Timestamp,
    },
    ReminderSent {
        invoice: String,
    },
    InvoicePaid {
        invoice: String,
    },
    /// Against a server (the caller resolved an IP and a time to it).
    AbuseReport {
        server: ServerName,
    },
    /// An operator lifts an abuse suspension.
    AbuseRelease {
        server: ServerName,
    },
    LegalHold,
    LegalRelease,
    KycIncomplete,
    KycComplete,
    /// A window for some servers of the account (a hypervisor's
    /// maintenance names the account's servers on it); without `until`,
    /// it lasts `maintenance.defaultWindow`.
    Maintenance {
        servers: Vec<ServerName>,
        from: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
    },
    Terminate {
        server: ServerName,
        cause: TerminationCause,
        /// At once rather than after `abuse.terminationNotice`.
        immediate: bool,
    },
    /// R18: an operator provisions a terminated server again.
    Restore {
        server: ServerName,
        /// The backup (or snapshot) of the server its disk is made from
        /// again (R18): its data comes back; absent, it starts afresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
}

/// What a change is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Subject {
    Account,
    Server(ServerName),
}

impl Subject {
    fn key(&self) -> String {
        match self {
            Self::Account => "account".to_owned(),
            Self::Server(name) => format!("server/{name}"),
        }
    }
}

/// What made a change happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Cause {
    /// A reported fact, by its id.
    Fact(String),
    /// A deadline of the policy passed.
    Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum ChangeKind {
    Suspended {
        reason: SuspensionReason,
    },
    Lifted {
        reason: SuspensionReason,
    },
    TerminationScheduled {
        cause: TerminationCause,
        at: Timestamp,
    },
    Terminated {
        cause: TerminationCause,
    },
    /// R3: every service's data destroyed.
    DataDestroyed,
    /// R14: a terminated server's data wiped.
    Wiped,
    Restored,
    /// R1 with `billing.requireReminder`: the deadline passed without a
    /// reminder recorded, so nothing is suspended; operators should know.
    ReminderMissing {
        invoice: String,
    },
}

/// One thing that happened, for the audit and the account's notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Derived from its cause: the same change always has the same id.
    pub id: String,
    pub at: Timestamp,
    pub subject: Subject,
    pub cause: Cause,
    #[serde(flatten)]
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeKind {
    /// R7: each report.
    AbuseReport,
    /// R7: what a closed case lacked to reach `abuse.minimumPerCase`.
    AbuseCaseMinimum,
    /// R18.
    Restore,
}

/// A chargeable event for the provider's billing, in minor units of the
/// policy's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub at: Timestamp,
    pub kind: ChargeKind,
    pub server: ServerName,
    pub amount: u64,
}

/// What a deadline ahead will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "what")]
pub enum Upcoming {
    Suspension,
    DataDestruction,
    Termination { server: ServerName },
}

/// A notice owed to the account `notice.before` ahead of a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub id: String,
    /// When it is owed.
    pub at: Timestamp,
    pub deadline: Timestamp,
    #[serde(flatten)]
    pub upcoming: Upcoming,
}

/// A termination, scheduled or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    pub cause: TerminationCause,
    /// When it was decided (notices are owed from then).
    pub decided_at: Timestamp,
    pub at: Timestamp,
    pub done: bool,
    /// R14: when its data is wiped (`termination.dataRetention` after it).
    pub wipe_at: Timestamp,
    pub wiped: bool,
}

impl Termination {
    /// R3: done and wiped at `at`.
    fn destroyed(at: Timestamp) -> Self {
        Self {
            cause: TerminationCause::NonPayment,
            decided_at: at,
            at,
            done: true,
            wipe_at: at,
            wiped: true,
        }
    }
}

/// What holds for one server beyond what holds for the whole account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStanding {
    /// Abuse and maintenance, with the instant each began.
    pub suspensions: BTreeMap<SuspensionReason, Timestamp>,
    pub termination: Option<Termination>,
    /// The backup its last restore (R18) brings its data back from.
    pub restored_from: Option<String>,
    /// When that restore was asked.
    pub restored_at: Option<Timestamp>,
}

/// The account as the facts, the policy and the time make it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// Reasons every service is suspended for, with the instant each began.
    pub account_suspensions: BTreeMap<SuspensionReason, Timestamp>,
    /// Servers some fact named.
    pub servers: BTreeMap<ServerName, ServerStanding>,
    /// R3: when every service's data was destroyed.
    pub data_destroyed_at: Option<Timestamp>,
    pub changes: Vec<Change>,
    pub charges: Vec<Charge>,
    /// Notices owed by now for deadlines still ahead when they were owed.
    pub notices: Vec<Notice>,
    /// The next instant the standing changes by itself.
    pub next_deadline: Option<Timestamp>,
}

/// How one server is suspended now: every reason (the account's and its
/// own) and the mode the strictest one asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    /// Every reason that holds, in a fixed order; the first is the one
    /// customers read as `status_reason`.
    #[schemars(length(min = 1, max = 5))]
    pub reasons: Vec<SuspensionReason>,
    pub mode: SuspensionMode,
}

impl Suspension {
    /// The reason customers read first.
    pub fn primary(&self) -> Option<SuspensionReason> {
        self.reasons.first().copied()
    }

    /// What the server's status says, as customers read it (R2).
    pub fn describe(&self) -> String {
        let each: Vec<&str> = self.reasons.iter().map(|r| r.describe()).collect();
        format!("suspended {}", each.join("; "))
    }
}

impl Standing {
    /// The suspension of `server`, if any holds.
    pub fn suspension_of(&self, server: &str, policy: &Policy) -> Option<Suspension> {
        let mut reasons: Vec<SuspensionReason> = self.account_suspensions.keys().copied().collect();
        if let Some(own) = self.servers.get(server) {
            reasons.extend(own.suspensions.keys().copied());
        }
        reasons.sort();
        reasons.dedup();
        let mode = reasons
            .iter()
            .map(|r| r.mode(policy))
            .max_by_key(|mode| strictness(*mode))?;
        Some(Suspension { reasons, mode })
    }

    /// The termination of `server`: its own, or R3's for every server.
    pub fn termination_of(&self, server: &str) -> Option<Termination> {
        let own = self.servers.get(server).and_then(|s| s.termination);
        match self.data_destroyed_at {
            Some(at)
                if !own.is_some_and(|t| t.done && t.at <= at)
                    && !self.restored_after(server, at) =>
            {
                Some(Termination::destroyed(at))
            }
            _ => own,
        }
    }

    /// The backup `server`'s last restore brings its data back from, for
    /// the server object of that name created at `created`: one created
    /// after the restore was asked (Kubernetes mode reuses names) is
    /// another server, which no restore of the old one's data concerns.
    pub fn restored_from(&self, server: &str, created: Option<Timestamp>) -> Option<&str> {
        let standing = self.servers.get(server)?;
        let asked_after_creation = match (created, standing.restored_at) {
            (Some(created), Some(asked)) => created <= asked,
            _ => true,
        };
        standing
            .restored_from
            .as_deref()
            .filter(|_| asked_after_creation)
    }

    /// Whether the customer may delete `server`: not while an abuse
    /// suspension keeps its disk as evidence (R5).
    pub fn customer_may_delete(&self, server: &str) -> bool {
        !self
            .servers
            .get(server)
            .is_some_and(|s| s.suspensions.contains_key(&SuspensionReason::Abuse))
    }

    fn restored_after(&self, server: &str, at: Timestamp) -> bool {
        self.changes.iter().any(|c| {
            c.at >= at
                && c.kind == ChangeKind::Restored
                && c.subject == Subject::Server(server.to_owned())
        })
    }
}

/// A running guest with its network cut is the least strict hold; a
/// stopped one the strictest.
fn strictness(mode: SuspensionMode) -> u8 {
    match mode {
        SuspensionMode::NetworkIsolated => 0,
        SuspensionMode::Paused => 1,
        SuspensionMode::Stopped => 2,
    }
}

#[derive(Debug, Clone)]
struct Invoice {
    recorded_at: Timestamp,
    due_at: Timestamp,
    reminded_at: Option<Timestamp>,
    paid: bool,
    /// The reminder-missing warning was given.
    warned: bool,
}

/// An abuse case: reports against one server within `abuse.caseWindow` of
/// its first.
#[derive(Debug, Clone)]
struct Case {
    first_fact: String,
    opened_at: Timestamp,
    reports: u64,
}

/// A deadline and what firing it does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Due {
    Suspend,
    ReminderMissing { invoice: String },
    Destroy,
    Terminate { server: ServerName },
    Wipe { server: ServerName },
    MaintenanceStarts { server: ServerName, fact: String },
    MaintenanceEnds { server: ServerName, fact: String },
    CloseCase { server: ServerName },
    Notify(Notice),
}

struct Replay<'a> {
    policy: &'a Policy,
    out: Standing,
    invoices: BTreeMap<String, Invoice>,
    cases: BTreeMap<ServerName, Case>,
    /// Maintenance windows not yet over: (server, fact) → (from, until).
    windows: BTreeMap<(ServerName, String), (Timestamp, Timestamp)>,
    /// Notices already owed, by id.
    noticed: BTreeSet<String>,
}

/// The account's standing at `now`, from its facts in the order they were
/// recorded.
pub fn standing(facts: &[Fact], policy: &Policy, now: Timestamp) -> Standing {
    let mut replay = Replay {
        policy,
        out: Standing::default(),
        invoices: BTreeMap::new(),
        cases: BTreeMap::new(),
        windows: BTreeMap::new(),
        noticed: Default::default(),
    };
    let mut ordered: Vec<&Fact> = facts.iter().collect();
    ordered.sort_by_key(|f| f.recorded_at);
    for fact in ordered {
        replay.advance(fact.recorded_at.min(now));
        if fact.recorded_at > now {
            break;
        }
        replay.apply(fact);
    }
    replay.advance(now);
    replay.out.next_deadline = replay.pending().into_iter().map(|(at, _)| at).min();
    replay.out
}

impl Replay<'_> {
    /// Fires, in time order, every deadline at or before `until`.
    fn advance(&mut self, until: Timestamp) {
        loop {
            let Some((at, due)) = self
                .pending()
                .into_iter()
                .filter(|(at, _)| *at <= until)
                .min_by_key(|(at, _)| *at)
            else {
                return;
            };
            self.fire(at, due);
        }
    }

    /// Every deadline the state sets now, each one firing changes the state
    /// so that it is never pending again.
    fn pending(&self) -> Vec<(Timestamp, Due)> {
        let mut due = Vec::new();
        let destroyed = self.out.data_destroyed_at.is_some();
        let in_debt = !self
            .out
            .account_suspensions
            .contains_key(&SuspensionReason::NonPayment);
        let mut suspension: Option<(Timestamp, Timestamp)> = None;
        for (id, invoice) in &self.invoices {
            if invoice.paid || destroyed {
                continue;
            }
            match self.suspension_deadline(invoice) {
                Some(at) if in_debt => {
                    let known_since = invoice.reminded_at.unwrap_or(invoice.recorded_at);
                    if suspension.is_none_or(|(earliest, _)| at < earliest) {
                        suspension = Some((at, known_since));
                    }
                }
                None if !invoice.warned => due.push((
                    self.policy
                        .billing
                        .suspend_after
                        .after(invoice.due_at)
                        .max(invoice.recorded_at),
                    Due::ReminderMissing {
                        invoice: id.clone(),
                    },
                )),
                _ => {}
            }
        }
        // The account is suspended once, at its earliest unpaid deadline.
        if let Some((at, known_since)) = suspension {
            due.push((at, Due::Suspend));
            self.notices(&mut due, at, Upcoming::Suspension, known_since);
        }
        if let Some(since) = self
            .out
            .account_suspensions
            .get(&SuspensionReason::NonPayment)
            && !destroyed
        {
            let at = self.policy.billing.destroy_data_after.after(*since);
            due.push((at, Due::Destroy));
            self.notices(&mut due, at, Upcoming::DataDestruction, *since);
        }
        for (name, server) in &self.out.servers {
            match server.termination {
                Some(t) if !t.done => {
                    due.push((
                        t.at,
                        Due::Terminate {
                            server: name.clone(),
                        },
                    ));
                    let upcoming = Upcoming::Termination {
                        server: name.clone(),
                    };
                    self.notices(&mut due, t.at, upcoming, t.decided_at);
                }
                Some(t) if !t.wiped => {
                    due.push((
                        t.wipe_at,
                        Due::Wipe {
                            server: name.clone(),
                        },
                    ));
                }
                _ => {}
            }
        }
        for ((server, fact), (from, until)) in &self.windows {
            let started = self
                .out
                .servers
                .get(server)
                .is_some_and(|s| s.suspensions.contains_key(&SuspensionReason::Maintenance));
            let what = if started {
                (
                    *until,
                    Due::MaintenanceEnds {
                        server: server.clone(),
                        fact: fact.clone(),
                    },
                )
            } else {
                (
                    *from,
                    Due::MaintenanceStarts {
                        server: server.clone(),
                        fact: fact.clone(),
                    },
                )
            };
            due.push(what);
        }
        for (server, case) in &self.cases {
            due.push((
                self.policy.abuse.case_window.after(case.opened_at),
                Due::CloseCase {
                    server: server.clone(),
                },
            ));
        }
        due
    }

    /// The notices owed ahead of a deadline at `deadline`, from when it was
    /// known (`known_since`; none owed before the deadline existed).
    fn notices(
        &self,
        due: &mut Vec<(Timestamp, Due)>,
        deadline: Timestamp,
        upcoming: Upcoming,
        known_since: Timestamp,
    ) {
        for before in &self.policy.notice.before {
            let at = before.before(deadline).max(known_since);
            if at >= deadline {
                continue;
            }
            let id = format!(
                "notice:{}:{}:{before}",
                upcoming_key(&upcoming),
                deadline.as_millisecond()
            );
            if self.noticed.contains(&id) {
                continue;
            }
            due.push((
                at,
                Due::Notify(Notice {
                    id,
                    at,
                    deadline,
                    upcoming: upcoming.clone(),
                }),
            ));
        }
    }

    fn suspension_deadline(&self, invoice: &Invoice) -> Option<Timestamp> {
        let billing = &self.policy.billing;
        let from = if billing.require_reminder {
            invoice.reminded_at?
        } else {
            invoice.due_at
        };
        Some(billing.suspend_after.after(from).max(invoice.recorded_at))
    }

    fn fire(&mut self, at: Timestamp, due: Due) {
        match due {
            Due::Suspend => self.suspend(
                Subject::Account,
                SuspensionReason::NonPayment,
                at,
                Cause::Policy,
            ),
            Due::ReminderMissing { invoice } => {
                if let Some(i) = self.invoices.get_mut(&invoice) {
                    i.warned = true;
                }
                self.change(
                    at,
                    Subject::Account,
                    Cause::Policy,
                    ChangeKind::ReminderMissing { invoice },
                );
            }
            Due::Destroy => {
                self.out.data_destroyed_at = Some(at);
                for server in self.out.servers.values_mut() {
                    server.suspensions.clear();
                    if !server.termination.is_some_and(|t| t.done) {
                        server.termination = Some(Termination::destroyed(at));
                    }
                }
                self.windows.clear();
                self.change(
                    at,
                    Subject::Account,
                    Cause::Policy,
                    ChangeKind::DataDestroyed,
                );
            }
            Due::Terminate { server } => self.terminate_now(&server, at),
            Due::Wipe { server } => {
                if let Some(t) = self
                    .out
                    .servers
                    .get_mut(&server)
                    .and_then(|s| s.termination.as_mut())
                {
                    t.wiped = true;
                }
                self.change(
                    at,
                    Subject::Server(server),
                    Cause::Policy,
                    ChangeKind::Wiped,
                );
            }
            Due::MaintenanceStarts { server, fact } => {
                if self.is_terminated(&server) {
                    self.windows.remove(&(server, fact));
                } else {
                    self.suspend(
                        Subject::Server(server),
                        SuspensionReason::Maintenance,
                        at,
                        Cause::Fact(fact),
                    );
                }
            }
            Due::MaintenanceEnds { server, fact } => {
                self.windows.remove(&(server.clone(), fact));
                let other_window_open = self
                    .windows
                    .iter()
                    .any(|((s, _), (from, _))| *s == server && *from <= at);
                if !other_window_open {
                    self.lift(
                        Subject::Server(server),
                        SuspensionReason::Maintenance,
                        at,
                        Cause::Policy,
                    );
                }
            }
            Due::CloseCase { server } => {
                if let Some(case) = self.cases.remove(&server) {
                    let charged = case.reports * self.policy.abuse.fee_per_report;
                    let minimum = self.policy.abuse.minimum_per_case;
                    if charged < minimum {
                        self.out.charges.push(Charge {
                            id: format!("abuse_case_minimum:{}", case.first_fact),
                            at,
                            kind: ChargeKind::AbuseCaseMinimum,
                            server,
                            amount: minimum - charged,
                        });
                    }
                }
            }
            Due::Notify(notice) => {
                self.noticed.insert(notice.id.clone());
                self.out.notices.push(notice);
            }
        }
    }

    fn apply(&mut self, fact: &Fact) {
        let at = fact.recorded_at;
        let cause = || Cause::Fact(fact.id.clone());
        match &fact.kind {
            FactKind::InvoiceOverdue { invoice, due_at } => {
                self.invoices.entry(invoice.clone()).or_insert(Invoice {
                    recorded_at: at,
                    due_at: *due_at,
                    reminded_at: None,
                    paid: false,
                    warned: false,
                });
            }
            FactKind::ReminderSent { invoice } => {
                if let Some(i) = self.invoices.get_mut(invoice) {
                    i.reminded_at.get_or_insert(at);
                }
            }
            FactKind::InvoicePaid { invoice } => {
                if let Some(i) = self.invoices.get_mut(invoice) {
                    i.paid = true;
                }
                let all_paid = self.invoices.values().all(|i| i.paid);
                if all_paid {
                    self.lift(Subject::Account, SuspensionReason::NonPayment, at, cause());
                }
            }
            FactKind::AbuseReport { server } => {
                self.out.charges.push(Charge {
                    id: format!("abuse_report:{}", fact.id),
                    at,
                    kind: ChargeKind::AbuseReport,
                    server: server.clone(),
                    amount: self.policy.abuse.fee_per_report,
                });
                self.cases
                    .entry(server.clone())
                    .or_insert_with(|| Case {
                        first_fact: fact.id.clone(),
                        opened_at: at,
                        reports: 0,
                    })
                    .reports += 1;
                if !self.is_terminated(server) {
                    self.suspend(
                        Subject::Server(server.clone()),
                        SuspensionReason::Abuse,
                        at,
                        cause(),
                    );
                }
            }
            FactKind::AbuseRelease { server } => self.lift(
                Subject::Server(server.clone()),
                SuspensionReason::Abuse,
                at,
                cause(),
            ),
            FactKind::LegalHold => {
                self.suspend(Subject::Account, SuspensionReason::Legal, at, cause())
            }
            FactKind::LegalRelease => {
                self.lift(Subject::Account, SuspensionReason::Legal, at, cause())
            }
            FactKind::KycIncomplete => {
                self.suspend(Subject::Account, SuspensionReason::Kyc, at, cause())
            }
            FactKind::KycComplete => {
                self.lift(Subject::Account, SuspensionReason::Kyc, at, cause())
            }
            FactKind::Maintenance {
                servers,
                from,
                until,
            } => {
                let from = (*from).max(at);
                let until =
                    until.unwrap_or_else(|| self.policy.maintenance.default_window.after(from));
                if until > from {
                    for server in servers {
                        if !self.is_terminated(server) {
                            self.windows
                                .insert((server.clone(), fact.id.clone()), (from, until));
                        }
                    }
                }
            }
            FactKind::Terminate {
                server,
                cause: why,
                immediate,
            } => {
                if self.is_terminated(server) {
                    return;
                }
                let when = if *immediate {
                    at
                } else {
                    self.policy.abuse.termination_notice.after(at)
                };
                let wipe_at = self.policy.termination.data_retention.after(when);
                let standing = self.out.servers.entry(server.clone()).or_default();
                let earlier = standing.termination.is_some_and(|t| t.at <= when);
                if earlier {
                    return;
                }
                standing.termination = Some(Termination {
                    cause: *why,
                    decided_at: at,
                    at: when,
                    done: false,
                    wipe_at,
                    wiped: false,
                });
                self.change(
                    at,
                    Subject::Server(server.clone()),
                    cause(),
                    ChangeKind::TerminationScheduled {
                        cause: *why,
                        at: when,
                    },
                );
                if when <= at {
                    self.terminate_now(server, at);
                }
            }
            FactKind::Restore { server, source } => {
                if !self.is_terminated(server) {
                    return;
                }
                let standing = self.out.servers.entry(server.clone()).or_default();
                standing.termination = None;
                standing.suspensions.clear();
                standing.restored_from.clone_from(source);
                standing.restored_at = Some(at);
                self.out.charges.push(Charge {
                    id: format!("restore:{}", fact.id),
                    at,
                    kind: ChargeKind::Restore,
                    server: server.clone(),
                    amount: self.policy.restore.fee,
                });
                self.change(
                    at,
                    Subject::Server(server.clone()),
                    cause(),
                    ChangeKind::Restored,
                );
            }
        }
    }

    fn is_terminated(&self, server: &str) -> bool {
        self.out.termination_of(server).is_some_and(|t| t.done)
    }

    fn terminate_now(&mut self, server: &str, at: Timestamp) {
        let Some(standing) = self.out.servers.get_mut(server) else {
            return;
        };
        let Some(termination) = &mut standing.termination else {
            return;
        };
        termination.done = true;
        let cause = termination.cause;
        standing.suspensions.clear();
        self.windows.retain(|(s, _), _| s != server);
        self.change(
            at,
            Subject::Server(server.to_owned()),
            Cause::Policy,
            ChangeKind::Terminated { cause },
        );
    }

    fn suspend(&mut self, subject: Subject, reason: SuspensionReason, at: Timestamp, cause: Cause) {
        let held = match &subject {
            Subject::Account => &mut self.out.account_suspensions,
            Subject::Server(name) => {
                &mut self
                    .out
                    .servers
                    .entry(name.clone())
                    .or_default()
                    .suspensions
            }
        };
        if held.contains_key(&reason) {
            return;
        }
        held.insert(reason, at);
        self.change(at, subject, cause, ChangeKind::Suspended { reason });
    }

    fn lift(&mut self, subject: Subject, reason: SuspensionReason, at: Timestamp, cause: Cause) {
        let held = match &subject {
            Subject::Account => Some(&mut self.out.account_suspensions),
            Subject::Server(name) => self.out.servers.get_mut(name).map(|s| &mut s.suspensions),
        };
        if held.and_then(|h| h.remove(&reason)).is_none() {
            return;
        }
        self.change(at, subject, cause, ChangeKind::Lifted { reason });
    }

    fn change(&mut self, at: Timestamp, subject: Subject, cause: Cause, kind: ChangeKind) {
        let id = format!(
            "{}:{}:{}",
            subject.key(),
            change_key(&kind),
            at.as_millisecond()
        );
        self.out.changes.push(Change {
            id,
            at,
            subject,
            cause,
            kind,
        });
    }
}

fn upcoming_key(upcoming: &Upcoming) -> String {
    match upcoming {
        Upcoming::Suspension => "suspension".to_owned(),
        Upcoming::DataDestruction => "data_destruction".to_owned(),
        Upcoming::Termination { server } => format!("termination/{server}"),
    }
}

fn change_key(kind: &ChangeKind) -> String {
    match kind {
        ChangeKind::Suspended { reason } => format!("suspended/{}", reason.as_str()),
        ChangeKind::Lifted { reason } => format!("lifted/{}", reason.as_str()),
        ChangeKind::TerminationScheduled { .. } => "termination_scheduled".to_owned(),
        ChangeKind::Terminated { .. } => "terminated".to_owned(),
        ChangeKind::DataDestroyed => "data_destroyed".to_owned(),
        ChangeKind::Wiped => "wiped".to_owned(),
        ChangeKind::Restored => "restored".to_owned(),
        ChangeKind::ReminderMissing { invoice } => format!("reminder_missing/{invoice}"),
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use proptest::prelude::*;

    use super::*;
    use crate::clock::test_time;
    use crate::policy::PolicyDuration;

    const DAY: i64 = 86_400;

    fn t(seconds: i64) -> Timestamp {
        test_time() + SignedDuration::from_secs(seconds)
    }

    fn days(n: i64) -> Timestamp {
        t(n * DAY)
    }

    fn fact(id: &str, at: Timestamp, kind: FactKind) -> Fact {
        Fact {
            id: id.to_owned(),
            recorded_at: at,
            kind,
        }
    }

    fn overdue(id: &str, at: Timestamp, invoice: &str) -> Fact {
        fact(
            id,
            at,
            FactKind::InvoiceOverdue {
                invoice: invoice.into(),
                due_at: at,
            },
        )
    }

    fn reminder(id: &str, at: Timestamp, invoice: &str) -> Fact {
        fact(
            id,
            at,
            FactKind::ReminderSent {
                invoice: invoice.into(),
            },
        )
    }

    fn paid(id: &str, at: Timestamp, invoice: &str) -> Fact {
        fact(
            id,
            at,
            FactKind::InvoicePaid {
                invoice: invoice.into(),
            },
        )
    }

    fn report(id: &str, at: Timestamp, server: &str) -> Fact {
        fact(
            id,
            at,
            FactKind::AbuseReport {
                server: server.into(),
            },
        )
    }

    fn suspended(standing: &Standing, server: &str) -> Vec<SuspensionReason> {
        standing
            .suspension_of(server, &Policy::default())
            .map(|s| s.reasons)
            .unwrap_or_default()
    }

    /// R1: suspension `billing.suspendAfter` after the reminder, not before.
    #[test]
    fn r1_unpaid_invoice_suspends_the_account_suspend_after_the_reminder() {
        let policy = Policy::default();
        let facts = [
            overdue("e1", days(0), "inv-1"),
            reminder("e2", days(2), "inv-1"),
        ];
        let before = standing(&facts, &policy, days(17) - SignedDuration::from_secs(1));
        assert!(before.account_suspensions.is_empty());
        assert_eq!(before.next_deadline, Some(days(17)));
        let after = standing(&facts, &policy, days(17));
        assert_eq!(
            after.account_suspensions.get(&SuspensionReason::NonPayment),
            Some(&days(17))
        );
        assert_eq!(
            suspended(&after, "any-server"),
            [SuspensionReason::NonPayment]
        );
        assert_eq!(
            after.suspension_of("web", &policy).unwrap().mode,
            SuspensionMode::Stopped
        );
        let change = after.changes.last().unwrap();
        assert_eq!(change.cause, Cause::Policy);
        assert_eq!(
            change.id,
            format!(
                "account:suspended/non_payment:{}",
                days(17).as_millisecond()
            )
        );
        // Next: the first notice ahead of the destruction at day 32 (R3).
        assert_eq!(after.next_deadline, Some(days(29)));
    }

    /// R1: with the reminder required and none recorded, nothing is
    /// suspended; operators are warned once the deadline is past.
    #[test]
    fn r1_without_a_reminder_nothing_is_suspended_and_operators_are_warned() {
        let policy = Policy::default();
        let facts = [overdue("e1", days(0), "inv-1")];
        let later = standing(&facts, &policy, days(60));
        assert!(later.account_suspensions.is_empty());
        let warnings: Vec<_> = later
            .changes
            .iter()
            .filter(|c| matches!(c.kind, ChangeKind::ReminderMissing { .. }))
            .collect();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].at, days(15));
        assert_eq!(later.next_deadline, None);
    }

    /// R1: `requireReminder: false, suspendAfter: 0s` suspends at the due date.
    #[test]
    fn r1_some_providers_suspend_at_the_due_date() {
        let mut policy = Policy::default();
        policy.billing.require_reminder = false;
        policy.billing.suspend_after = PolicyDuration::seconds(0);
        let facts = [fact(
            "e1",
            days(3),
            FactKind::InvoiceOverdue {
                invoice: "inv-1".into(),
                due_at: days(1),
            },
        )];
        let now = standing(&facts, &policy, days(3));
        assert_eq!(
            now.account_suspensions.get(&SuspensionReason::NonPayment),
            Some(&days(3)),
            "never before the fact was known"
        );
    }

    /// R3, R4: paid before destruction lifts everything; unpaid, the data
    /// is destroyed `destroyDataAfter` after the suspension and a later
    /// payment brings nothing back.
    #[test]
    fn r3_r4_payment_before_destruction_lifts_after_it_the_data_is_gone() {
        let policy = Policy::default();
        let base = vec![
            overdue("e1", days(0), "inv-1"),
            reminder("e2", days(0), "inv-1"),
        ];
        let mut paid_in_time = base.clone();
        paid_in_time.push(paid("e3", days(29), "inv-1"));
        let lifted = standing(&paid_in_time, &policy, days(100));
        assert!(lifted.account_suspensions.is_empty());
        assert_eq!(lifted.data_destroyed_at, None);
        assert_eq!(lifted.termination_of("web"), None);

        let mut paid_late = base;
        paid_late.push(paid("e3", days(31), "inv-1"));
        let gone = standing(&paid_late, &policy, days(100));
        assert_eq!(gone.data_destroyed_at, Some(days(30)));
        let termination = gone.termination_of("web").unwrap();
        assert!(termination.done && termination.wiped);
        assert_eq!(termination.cause, TerminationCause::NonPayment);
        assert!(
            gone.account_suspensions.is_empty(),
            "paid: orders allowed again"
        );
        // Notices came 72h and 24h before both deadlines.
        let owed: Vec<(Timestamp, &Upcoming)> =
            gone.notices.iter().map(|n| (n.at, &n.upcoming)).collect();
        assert_eq!(
            owed,
            [
                (days(12), &Upcoming::Suspension),
                (days(14), &Upcoming::Suspension),
                (days(27), &Upcoming::DataDestruction),
                (days(29), &Upcoming::DataDestruction),
            ]
        );
    }

    /// R2: one unpaid invoice suspends the whole account; a second
    /// invoice paid alone does not lift it.
    #[test]
    fn r2_the_account_is_suspended_as_a_whole_until_every_invoice_is_paid() {
        let policy = Policy::default();
        let facts = [
            overdue("e1", days(0), "a"),
            overdue("e2", days(0), "b"),
            reminder("e3", days(0), "a"),
            paid("e4", days(20), "a"),
        ];
        let now = standing(&facts, &policy, days(20));
        assert_eq!(suspended(&now, "web"), [SuspensionReason::NonPayment]);
        assert_eq!(suspended(&now, "db"), [SuspensionReason::NonPayment]);
        let both = [facts.to_vec(), vec![paid("e5", days(21), "b")]].concat();
        assert!(
            standing(&both, &policy, days(21))
                .account_suspensions
                .is_empty()
        );
    }

    /// R5, R7: a report isolates the server at once (it keeps running),
    /// charges a fee per report and at least the minimum per case.
    #[test]
    fn r5_r7_abuse_isolates_at_once_and_charges_per_report_with_a_minimum_per_case() {
        let policy = Policy::default();
        let facts = [report("r1", t(10), "web")];
        let now = standing(&facts, &policy, t(10));
        let suspension = now.suspension_of("web", &policy).unwrap();
        assert_eq!(suspension.reasons, [SuspensionReason::Abuse]);
        assert_eq!(suspension.mode, SuspensionMode::NetworkIsolated);
        assert_eq!(now.suspension_of("db", &policy), None, "others untouched");
        assert!(!now.customer_may_delete("web"));
        assert_eq!(now.charges.len(), 1);
        assert_eq!(now.charges[0].amount, 50_000);
        assert_eq!(
            now.next_deadline,
            Some(days(30) + SignedDuration::from_secs(10))
        );

        let facts = [facts.to_vec(), vec![report("r2", days(3), "web")]].concat();
        let closed = standing(&facts, &policy, days(31));
        let amounts: Vec<(ChargeKind, u64)> =
            closed.charges.iter().map(|c| (c.kind, c.amount)).collect();
        assert_eq!(
            amounts,
            [
                (ChargeKind::AbuseReport, 50_000),
                (ChargeKind::AbuseReport, 50_000)
            ],
            "two reports reach the minimum"
        );
        let one = standing(&[report("r1", t(10), "web")], &policy, days(31));
        assert_eq!(one.charges[1].kind, ChargeKind::AbuseCaseMinimum);
        assert_eq!(one.charges[1].amount, 50_000);
        assert_eq!(one.charges[1].id, "abuse_case_minimum:r1");
    }

    /// R3, R7: destroying the data waives no abuse charge: a case open
    /// at the destruction is still charged its minimum when it closes.
    #[test]
    fn r3_r7_destruction_keeps_the_case_minimum() {
        let policy = Policy::default();
        let facts = [
            overdue("e1", days(0), "inv"),
            reminder("e2", days(0), "inv"),
            report("r1", days(20), "web"),
        ];
        let now = standing(&facts, &policy, days(60));
        assert!(now.data_destroyed_at.is_some());
        let kinds: Vec<ChargeKind> = now.charges.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChargeKind::AbuseReport, ChargeKind::AbuseCaseMinimum]
        );
    }

    /// R6, R14: termination with notice; the data is wiped
    /// `termination.dataRetention` after it.
    #[test]
    fn r6_r14_termination_with_notice_then_the_wipe() {
        let mut policy = Policy::default();
        policy.termination.data_retention = PolicyDuration::days(1);
        let facts = [
            report("r1", t(0), "web"),
            fact(
                "k1",
                t(60),
                FactKind::Terminate {
                    server: "web".into(),
                    cause: TerminationCause::Abuse,
                    immediate: false,
                },
            ),
        ];
        let pending = standing(&facts, &policy, t(60));
        // The 72h notice is owed at once; next is the 24h one.
        assert_eq!(pending.notices.len(), 1);
        assert_eq!(pending.next_deadline, Some(t(60 + 48 * 3600)));
        let t72 = t(60 + 72 * 3600);
        let noticed = standing(&facts, &policy, t72 - SignedDuration::from_secs(1));
        assert_eq!(noticed.notices.len(), 2, "{:?}", noticed.notices);
        assert_eq!(noticed.notices[0].at, t(60), "72h ahead: at once");
        assert!(!noticed.termination_of("web").unwrap().done);
        let ended = standing(&facts, &policy, t72);
        let termination = ended.termination_of("web").unwrap();
        assert!(termination.done && !termination.wiped);
        assert_eq!(ended.suspension_of("web", &policy), None);
        let wiped = standing(&facts, &policy, t72 + SignedDuration::from_hours(24));
        assert!(wiped.termination_of("web").unwrap().wiped);
        assert_eq!(wiped.changes.last().unwrap().kind, ChangeKind::Wiped);

        let at_once = [fact(
            "k1",
            t(5),
            FactKind::Terminate {
                server: "web".into(),
                cause: TerminationCause::Abuse,
                immediate: true,
            },
        )];
        assert!(
            standing(&at_once, &policy, t(5))
                .termination_of("web")
                .unwrap()
                .done
        );
    }

    /// R8: legal and KYC suspensions hold every service until an operator
    /// lifts them, whatever the billing does.
    #[test]
    fn r8_legal_and_kyc_hold_until_an_operator_lifts_them() {
        let policy = Policy::default();
        let facts = [
            fact("l1", t(0), FactKind::LegalHold),
            fact("k1", t(1), FactKind::KycIncomplete),
            fact("k2", t(2), FactKind::KycComplete),
        ];
        let now = standing(&facts, &policy, days(400));
        assert_eq!(suspended(&now, "web"), [SuspensionReason::Legal]);
        assert_eq!(now.next_deadline, None);
        let released = [
            facts.to_vec(),
            vec![fact("l2", t(3), FactKind::LegalRelease)],
        ]
        .concat();
        assert!(
            standing(&released, &policy, t(3))
                .suspension_of("web", &policy)
                .is_none()
        );
    }

    /// R9: a maintenance window suspends its servers from `from` to
    /// `until` (or `maintenance.defaultWindow`) and lifts itself.
    #[test]
    fn r9_maintenance_lifts_itself_when_the_window_ends() {
        let policy = Policy::default();
        let facts = [fact(
            "m1",
            t(0),
            FactKind::Maintenance {
                servers: vec!["web".into()],
                from: t(3600),
                until: None,
            },
        )];
        assert_eq!(standing(&facts, &policy, t(0)).next_deadline, Some(t(3600)));
        let during = standing(&facts, &policy, t(3600));
        assert_eq!(suspended(&during, "web"), [SuspensionReason::Maintenance]);
        assert_eq!(suspended(&during, "db"), []);
        assert_eq!(during.next_deadline, Some(t(5 * 3600)));
        assert_eq!(
            suspended(&standing(&facts, &policy, t(5 * 3600)), "web"),
            []
        );
    }

    /// An invoice overdue from day 0 and paid on day 40, after R3 destroyed
    /// the account's data; server `web` restored on day 41 from `source`.
    fn destroyed_then_restored(source: Option<&str>) -> [Fact; 4] {
        [
            overdue("e1", days(0), "inv"),
            reminder("e2", days(0), "inv"),
            paid("e3", days(40), "inv"),
            fact(
                "x1",
                days(41),
                FactKind::Restore {
                    server: "web".into(),
                    source: source.map(str::to_owned),
                },
            ),
        ]
    }

    /// R18: a restore after destruction is billed and brings the server back.
    #[test]
    fn r18_a_restore_after_destruction_is_billed() {
        let policy = Policy::default();
        let facts = destroyed_then_restored(None);
        let now = standing(&facts, &policy, days(41));
        assert_eq!(now.termination_of("web"), None);
        assert!(
            now.termination_of("db").unwrap().done,
            "only the one restored"
        );
        assert_eq!(now.charges.last().unwrap().kind, ChargeKind::Restore);
        assert_eq!(now.charges.last().unwrap().amount, 159_000);
        let early = standing(&facts[..2], &policy, days(1));
        assert!(
            early.charges.is_empty(),
            "nothing to restore before destruction"
        );
    }

    /// R18: the backup a restore brings back is for the server object the
    /// restore was about; a later object of the same name (Kubernetes mode
    /// reuses names) is another server and gets none of its data.
    #[test]
    fn r18_a_restores_backup_is_for_the_server_object_it_was_asked_for() {
        let policy = Policy::default();
        let facts = destroyed_then_restored(Some("st-5"));
        let now = standing(&facts, &policy, days(42));
        assert_eq!(now.restored_from("web", Some(days(-30))), Some("st-5"));
        assert_eq!(now.restored_from("web", None), Some("st-5"));
        assert_eq!(now.restored_from("web", Some(days(41))), Some("st-5"));
        assert_eq!(
            now.restored_from("web", Some(days(42))),
            None,
            "created after the restore: another server"
        );
        assert_eq!(now.restored_from("db", Some(days(-30))), None);
    }

    /// Facts are stored as JSON tagged by `type`; what is stored reads back
    /// the same, and a stored fact of an unknown shape is refused.
    #[test]
    fn facts_are_stored_as_tagged_json() {
        let kinds = [
            FactKind::InvoiceOverdue {
                invoice: "inv-1".into(),
                due_at: days(1),
            },
            FactKind::Maintenance {
                servers: vec!["web".into()],
                from: days(2),
                until: None,
            },
            FactKind::Terminate {
                server: "web".into(),
                cause: TerminationCause::Abuse,
                immediate: true,
            },
            FactKind::LegalHold,
        ];
        for kind in kinds {
            let stored = serde_json::to_value(&kind).unwrap();
            assert_eq!(serde_json::from_value::<FactKind>(stored).unwrap(), kind);
        }
        assert_eq!(
            serde_json::to_value(FactKind::ReminderSent {
                invoice: "inv-1".into()
            })
            .unwrap(),
            serde_json::json!({"type": "reminder_sent", "invoice": "inv-1"})
        );
        let unknown = serde_json::json!({"type": "reminder_sent", "invoice": "i", "extra": 1});
        assert!(serde_json::from_value::<FactKind>(unknown).is_err());
    }

    /// Lifting one of two reasons keeps the server suspended.
    #[test]
    fn lifting_one_of_two_reasons_keeps_the_server_suspended() {
        let policy = Policy::default();
        let facts = [
            report("r1", t(0), "web"),
            fact("l1", t(1), FactKind::LegalHold),
            fact("l2", t(2), FactKind::LegalRelease),
        ];
        assert_eq!(
            suspended(&standing(&facts, &policy, t(2)), "web"),
            [SuspensionReason::Abuse]
        );
        let both = standing(&facts[..2], &policy, t(1));
        assert_eq!(
            both.suspension_of("web", &policy).unwrap().mode,
            SuspensionMode::Stopped,
            "the strictest mode holds"
        );
    }

    /// The same facts replayed later give the same changes with the same
    /// ids, and nothing twice.
    #[test]
    fn replaying_later_repeats_every_change_with_the_same_id() {
        let policy = Policy::default();
        let facts = [overdue("e1", days(0), "i"), reminder("e2", days(0), "i")];
        let first = standing(&facts, &policy, days(16));
        let later = standing(&facts, &policy, days(20));
        assert_eq!(first.changes, later.changes);
        let mut ids: Vec<&str> = later.changes.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), later.changes.len());
    }

    fn any_fact() -> impl Strategy<Value = FactKind> {
        let invoice = prop::sample::select(vec!["a", "b"]).prop_map(str::to_owned);
        let server = prop::sample::select(vec!["web", "db"]).prop_map(str::to_owned);
        prop_oneof![
            (invoice.clone(), 0..40i64).prop_map(|(invoice, d)| FactKind::InvoiceOverdue {
                invoice,
                due_at: days(d),
            }),
            invoice
                .clone()
                .prop_map(|invoice| FactKind::ReminderSent { invoice }),
            invoice.prop_map(|invoice| FactKind::InvoicePaid { invoice }),
            server
                .clone()
                .prop_map(|server| FactKind::AbuseReport { server }),
            server
                .clone()
                .prop_map(|server| FactKind::AbuseRelease { server }),
            Just(FactKind::LegalHold),
            Just(FactKind::LegalRelease),
            (server.clone(), any::<bool>()).prop_map(|(server, immediate)| FactKind::Terminate {
                server,
                cause: TerminationCause::Abuse,
                immediate,
            }),
            server.prop_map(|server| FactKind::Restore {
                server,
                source: None,
            }),
        ]
    }

    fn any_facts() -> impl Strategy<Value = Vec<Fact>> {
        prop::collection::vec((0..60 * DAY, any_fact()), 0..24).prop_map(|facts| {
            facts
                .into_iter()
                .enumerate()
                .map(|(i, (at, kind))| fact(&format!("f{i}"), t(at), kind))
                .collect()
        })
    }

    proptest! {
        /// No order of events destroys data before `destroyDataAfter` has
        /// run from a non-payment suspension.
        #[test]
        fn data_is_never_destroyed_before_destroy_data_after(facts in any_facts(), now in 0..120 * DAY) {
            let policy = Policy::default();
            let now = standing(&facts, &policy, t(now));
            if let Some(destroyed) = now.data_destroyed_at {
                let suspended = now.changes.iter().find(|c| {
                    c.kind == ChangeKind::Suspended { reason: SuspensionReason::NonPayment }
                });
                let since = suspended.map(|c| c.at);
                prop_assert!(since.is_some_and(|s| policy.billing.destroy_data_after.after(s) <= destroyed));
            }
        }

        /// An account that pays every invoice when it is recorded is never
        /// suspended for non-payment.
        #[test]
        fn a_paid_account_is_never_suspended_for_non_payment(facts in any_facts(), now in 0..120 * DAY) {
            let policy = Policy::default();
            let mut paying = Vec::new();
            for f in facts {
                let settle = match &f.kind {
                    FactKind::InvoiceOverdue { invoice, .. } => Some(paid(&format!("{}-paid", f.id), f.recorded_at, invoice)),
                    FactKind::InvoicePaid { .. } => None,
                    _ => None,
                };
                if !matches!(f.kind, FactKind::InvoicePaid { .. }) {
                    paying.push(f);
                }
                paying.extend(settle);
            }
            let now = standing(&paying, &policy, t(now));
            let non_payment = ChangeKind::Suspended { reason: SuspensionReason::NonPayment };
            let ever_suspended = now.changes.iter().any(|c| c.kind == non_payment);
            prop_assert!(!ever_suspended);
            prop_assert_eq!(now.data_destroyed_at, None);
        }

        /// An abuse suspension alone never powers the VM off.
        #[test]
        fn an_abuse_suspension_alone_never_stops_the_server(facts in any_facts(), now in 0..120 * DAY) {
            let policy = Policy::default();
            let now = standing(&facts, &policy, t(now));
            for server in ["web", "db"] {
                if let Some(s) = now.suspension_of(server, &policy)
                    && s.reasons == [SuspensionReason::Abuse]
                {
                    prop_assert_eq!(s.mode, SuspensionMode::NetworkIsolated);
                }
            }
        }

        /// Deadlines fire at their instant whatever `now` is: the standing
        /// at `now` agrees with the changes a later replay saw up to `now`.
        #[test]
        fn a_later_replay_agrees_with_an_earlier_one(facts in any_facts(), a in 0..120 * DAY, b in 0..120 * DAY) {
            let policy = Policy::default();
            let (early, late) = (t(a.min(b)), t(a.max(b)));
            let first = standing(&facts, &policy, early);
            let second = standing(&facts, &policy, late);
            let seen: Vec<&Change> = second.changes.iter().filter(|c| c.at <= early).collect();
            prop_assert_eq!(first.changes.iter().collect::<Vec<_>>(), seen);
            prop_assert!(first.next_deadline.is_none_or(|d| d > early));
        }
    }
}
