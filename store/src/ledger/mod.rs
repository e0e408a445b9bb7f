//! Facts that are not desired state, one repository per table family:
//! [`tokens`] (API tokens, hashes only), [`idempotency`] (keys of retried
//! requests), [`macs`] (MAC addresses held), [`quotas`] (what each
//! account holds against its quota), [`audit`] (the append-only
//! audit log), [`ips`] (the IP ledger: holdings, blacklist state and
//! checks), [`charges`] (chargeable events for the provider's billing),
//! [`facts`] (what the billing system and operators reported about each
//! account, and each account's next deadline), [`notifications`] (the
//! outbox of notices to accounts and the positions of outbound feeds),
//! [`ptrs`] (reverse DNS records and their history).

pub mod audit;
pub mod charges;
pub mod facts;
pub mod idempotency;
pub mod ips;
pub mod macs;
pub mod notifications;
pub mod position;
pub mod ptrs;
pub mod quotas;
pub mod tokens;

pub use audit::{Actor, AuditAction, AuditEntry, AuditLog, AuditSubject};
pub use charges::{BillingEvent, Charge, Charges};
pub use facts::{AccountFacts, DueAccount, NewFact, Recorded, StoredFact};
pub use idempotency::{IdempotencyClaim, IdempotencyKeys};
pub use ips::{Check, CheckRequest, CheckResult, Holding, IpLedger, Listing, NewHolding, Override};
pub use macs::MacAddresses;
pub use notifications::{Channel, DeliveryState, NewNotification, Notification, Notifications};
pub use position::Position;
pub use ptrs::{PtrChange, PtrRecord, PtrRecords, SetPtr};
pub use quotas::{Quotas, RechargeRefused};
pub use tokens::{TokenRecord, TokenScope, Tokens};

use crate::db::Database;
use crate::error::StoreError;

/// The ledger database, handing out its repositories.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn tokens(&self) -> Tokens<'_> {
        Tokens { db: &self.db }
    }

    pub fn idempotency(&self) -> IdempotencyKeys<'_> {
        IdempotencyKeys { db: &self.db }
    }

    pub fn macs(&self) -> MacAddresses<'_> {
        MacAddresses { db: &self.db }
    }

    pub fn ptrs(&self) -> PtrRecords<'_> {
        PtrRecords { db: &self.db }
    }

    pub fn ips(&self) -> IpLedger<'_> {
        IpLedger { db: &self.db }
    }

    pub fn charges(&self) -> Charges<'_> {
        Charges { db: &self.db }
    }

    pub fn facts(&self) -> AccountFacts<'_> {
        AccountFacts { db: &self.db }
    }

    pub fn notifications(&self) -> Notifications<'_> {
        Notifications { db: &self.db }
    }

    pub fn quotas(&self) -> Quotas<'_> {
        Quotas { db: &self.db }
    }

    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog { db: &self.db }
    }
}

/// A stored value that does not parse: the ledger was written by something else.
fn malformed(what: &str, raw: &str) -> StoreError {
    StoreError::Invalid(format!("malformed {what} {raw:?} in the ledger"))
}
