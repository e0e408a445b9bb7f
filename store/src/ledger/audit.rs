//! The append-only audit log: who or what did what to which object, when,
//! and the evidence. There is no update and no delete.

use std::fmt;

use kube::Resource;
use sqlx::Row;
use stratus_core::ids::{AccountId, TokenId};

use super::malformed;
use super::position::Position;
use crate::db::Database;
use crate::error::Result;

/// Who or what acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A caller of the REST API, by the id of its token.
    Token(TokenId),
    /// The controller, by policy or to converge.
    Controller,
    /// An operator at a command line (`stratus up`, `stratus admin-token`).
    Command(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(id) => write!(f, "token:{id}"),
            Self::Controller => f.write_str("controller"),
            Self::Command(command) => f.write_str(command),
        }
    }
}

impl Actor {
    fn parse(raw: &str) -> Result<Self> {
        Ok(match raw.strip_prefix("token:") {
            Some(id) => Self::Token(TokenId::parse(id).ok_or_else(|| malformed("actor", raw))?),
            None if raw == "controller" => Self::Controller,
            None => Self::Command(raw.to_owned()),
        })
    }
}

/// Defines the audit actions and their stored names in one table.
macro_rules! audit_actions {
    ($($(#[$doc:meta])* $variant:ident => $stored:literal),+ $(,)?) => {
        /// What was done.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AuditAction {
            $($(#[$doc])* $variant),+
        }

        impl AuditAction {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $stored),+
                }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw {
                    $($stored => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

audit_actions! {
    AccountCreate => "account.create",
    AccountQuota => "account.quota",
    TokenIssue => "token.issue",
    TokenRevoke => "token.revoke",
    HypervisorRegister => "hypervisor.register",
    IpPoolCreate => "ip_pool.create",
    IpPoolDelete => "ip_pool.delete",
    /// An operator's verdict on an address replaces the blacklists'.
    IpOverride => "ip.override",
    IpOverrideWithdraw => "ip.override_withdraw",
    IpCheckRequest => "ip.check",
    ServerOrder => "server.order",
    ServerStop => "server.stop",
    ServerStart => "server.start",
    ServerReboot => "server.reboot",
    /// A customer or an operator moved a server to another plan (R23).
    ServerResize => "server.resize",
    /// A customer or an operator reinstalled a server from an image.
    ServerRebuild => "server.rebuild",
    /// A customer or an operator booted a server in rescue mode.
    ServerRescueEnable => "server.rescue_enable",
    /// A customer or an operator booted a server from its own disk again.
    ServerRescueDisable => "server.rescue_disable",
    /// A disk a rebuild replaced, or a rescue disk, was deleted (wiped or
    /// not, as the detail says).
    ServerDiskReplaced => "server.disk_replaced",
    /// A customer set (or removed) the PTR of an address of its server.
    ServerPtr => "server.ptr",
    /// A customer asked for a snapshot of a server's disk.
    ServerSnapshot => "server.snapshot",
    /// A snapshot's disk was copied (its version, length, SHA-256 and how),
    /// or could not be (why).
    ServerSnapshotCaptured => "server.snapshot_captured",
    ServerSnapshotFailed => "server.snapshot_failed",
    /// A customer deleted a snapshot: both copies are wiped.
    ServerSnapshotDelete => "server.snapshot_delete",
    /// A customer asked for a server's disk to become a snapshot's content.
    ServerRestore => "server.restore",
    /// A customer turned daily backups of a server on (how many kept) or off.
    ServerBackups => "server.backups",
    ServerDelete => "server.delete",
    StorageOrder => "storage.order",
    StorageDelete => "storage.delete",
    /// A customer asked for a kept version to become the content again.
    StorageRestore => "storage.restore",
    /// The controller rebuilt the primary from the secondary's kept version.
    StorageRestored => "storage.restored",
    /// An operator asked for both copies to be verified now.
    StorageVerify => "storage.verify",
    /// A customer attached a subscription to a server.
    StorageAttach => "storage.attach",
    /// A subscription was detached: by its customer, or because its server
    /// went.
    StorageDetach => "storage.detach",
    /// The controller made what a guest left on a detached primary copy a
    /// new version.
    StorageSettled => "storage.settled",
    /// The account's standing terminated a subscription and its data is
    /// due: both copies are wiped, then it goes (R3, R14).
    StorageTerminated => "storage.terminated",
    /// A customer wrote a new content (its version, length and SHA-256).
    StorageWrite => "storage.write",
    /// The primary, a disk of a running server, was copied to the
    /// secondary as of one moment (version, length, SHA-256, and how: a
    /// backup job while the guest ran, or the guest paused and for how
    /// long).
    StorageSnapshot => "storage.snapshot",
    /// A scheduled copy of a server's disk was not made, and why.
    StorageSnapshotSkipped => "storage.snapshot_skipped",
    /// A `luks` subscription's primary copy was formatted with the
    /// customer's key (its version, length and SHA-256; never the key).
    StorageFormatted => "storage.formatted",
    /// A customer gave the key of a `luks` disk: loaded on its hypervisor
    /// (the key itself is never recorded).
    StorageUnlocked => "storage.unlocked",
    /// The controller moved a server to another phase.
    ServerPhase => "phase",
    /// The controller destroyed a server's domain and wiped its disk.
    ServerDestroyed => "destroyed",
    /// The controller released a deleted server's object.
    ServerReleased => "deleted",
    /// The controller moved a storage subscription to another phase.
    StoragePhase => "storage.phase",
    /// A copy no longer matched its checksum: repaired, or reported lost.
    StorageRepaired => "storage.repaired",
    /// The controller wiped and deleted a copy of a storage subscription.
    StorageCopyDestroyed => "storage.copy_destroyed",
    /// The controller released a deleted subscription's object.
    StorageReleased => "storage.deleted",
    /// A fact about an account was reported (an invoice, abuse, a hold).
    AccountFact => "account.fact",
    /// The account's standing changed by a fact or by policy (R10).
    StandingChange => "standing.change",
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action was done to. The stored form (`server/acc-…/vs-…`) is
/// what trails are searched by, so it is built here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditSubject {
    /// The operators' own things (operator tokens).
    Operators,
    Account(String),
    Hypervisor(String),
    IpPool(String),
    Server {
        account: String,
        name: String,
    },
    Storage {
        account: String,
        name: String,
    },
}

impl AuditSubject {
    pub fn account(id: &AccountId) -> Self {
        Self::Account(id.to_string())
    }

    /// A server object, by its namespace (the account) and name.
    pub fn server<K: Resource>(server: &K) -> Self {
        let meta = server.meta();
        Self::Server {
            account: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// A storage subscription object, by its namespace and name.
    pub fn storage<K: Resource>(subscription: &K) -> Self {
        let meta = subscription.meta();
        Self::Storage {
            account: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        let mut parts = raw.splitn(3, '/');
        Ok(match (parts.next(), parts.next(), parts.next()) {
            (Some("admin"), None, None) => Self::Operators,
            (Some("account"), Some(id), None) => Self::Account(id.to_owned()),
            (Some("hypervisor"), Some(name), None) => Self::Hypervisor(name.to_owned()),
            (Some("ip-pool"), Some(name), None) => Self::IpPool(name.to_owned()),
            (Some("server"), Some(account), Some(name)) => Self::Server {
                account: account.to_owned(),
                name: name.to_owned(),
            },
            (Some("storage"), Some(account), Some(name)) => Self::Storage {
                account: account.to_owned(),
                name: name.to_owned(),
            },
            _ => return Err(malformed("audit subject", raw)),
        })
    }
}

impl fmt::Display for AuditSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operators => f.write_str("admin"),
            Self::Account(id) => write!(f, "account/{id}"),
            Self::Hypervisor(name) => write!(f, "hypervisor/{name}"),
            Self::IpPool(name) => write!(f, "ip-pool/{name}"),
            Self::Server { account, name } => write!(f, "server/{account}/{name}"),
            Self::Storage { account, name } => write!(f, "storage/{account}/{name}"),
        }
    }
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: i64,
    pub actor: Actor,
    pub action: AuditAction,
    pub subject: AuditSubject,
    /// Cause and evidence.
    pub detail: serde_json::Value,
}

pub struct AuditLog<'a> {
    pub(super) db: &'a Database,
}

impl AuditLog<'_> {
    /// Appends an entry.
    pub async fn append(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(entry.at)
        .bind(entry.actor.to_string())
        .bind(entry.action.as_str())
        .bind(entry.subject.to_string())
        .bind(entry.detail.to_string())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Appends `entry` unless an entry with `once_key` exists; true if new.
    pub async fn append_once(&self, entry: &AuditEntry, once_key: &str) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO audit_log (at, actor, action, subject, detail, once_key) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(entry.at)
        .bind(entry.actor.to_string())
        .bind(entry.action.as_str())
        .bind(entry.subject.to_string())
        .bind(entry.detail.to_string())
        .bind(once_key)
        .execute(self.db.pool())
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The entries about `subject`, oldest first.
    pub async fn trail(&self, subject: &AuditSubject) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM audit_log WHERE subject = $1 ORDER BY id",
        )
        .bind(subject.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Up to `limit` entries about `account` and everything in it after
    /// `cursor`, oldest first, each with its own position ([`Position`]:
    /// never one skipped, on PostgreSQL too).
    pub async fn account_page(
        &self,
        account: &AccountId,
        cursor: Position,
        limit: u32,
    ) -> Result<Vec<(Position, AuditEntry)>> {
        let backend = self.db.backend();
        let (paging, binds) = cursor.paging(backend, "audit_log", 7);
        // Only constant SQL is formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, {writer}, at, actor, action, subject, detail FROM audit_log \
             WHERE (subject = $1 OR (subject >= $2 AND subject < $3) \
             OR (subject >= $4 AND subject < $5)) AND {after} \
             ORDER BY {order} LIMIT $6",
            writer = paging.writer,
            after = paging.after,
            order = paging.order,
        )))
        .bind(AuditSubject::account(account).to_string())
        // `server/<account>/` up to the next string after every name in it
        // ('0' follows '/'): an index range in both databases.
        .bind(format!("server/{account}/"))
        .bind(format!("server/{account}0"))
        .bind(format!("storage/{account}/"))
        .bind(format!("storage/{account}0"))
        .bind(i64::from(limit));
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|row| Ok((Position::of_row(backend, row)?, from_row(row)?)))
            .collect()
    }

    /// The entries about `account` and everything in it, oldest first.
    pub async fn account_trail(&self, account: &AccountId) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM audit_log \
             WHERE subject = $1 OR subject LIKE $2 OR subject LIKE $3 ORDER BY id",
        )
        .bind(AuditSubject::account(account).to_string())
        // Account ids are `acc-` and hex digits: nothing to escape in the pattern.
        .bind(format!("server/{account}/%"))
        .bind(format!("storage/{account}/%"))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    let actor: String = row.try_get("actor")?;
    let action: String = row.try_get("action")?;
    let subject: String = row.try_get("subject")?;
    let detail: String = row.try_get("detail")?;
    Ok(AuditEntry {
        at: row.try_get("at")?,
        actor: Actor::parse(&actor)?,
        action: AuditAction::parse(&action).ok_or_else(|| malformed("audit action", &action))?,
        subject: AuditSubject::parse(&subject)?,
        detail: serde_json::from_str(&detail)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_round_trip() {
        for subject in [
            AuditSubject::Operators,
            AuditSubject::Account("acc-0000000000000001".into()),
            AuditSubject::Hypervisor("hv1".into()),
            AuditSubject::Server {
                account: "acc-0000000000000001".into(),
                name: "vs-0000000000000002".into(),
            },
        ] {
            assert_eq!(AuditSubject::parse(&subject.to_string()).unwrap(), subject);
        }
        for actor in [
            Actor::Token(TokenId::from_random(7)),
            Actor::Controller,
            Actor::Command("stratus up".into()),
        ] {
            assert_eq!(Actor::parse(&actor.to_string()).unwrap(), actor);
        }
        assert_eq!(
            AuditAction::parse("server.order"),
            Some(AuditAction::ServerOrder)
        );
        assert_eq!(AuditAction::ServerReleased.as_str(), "deleted");
        assert_eq!(AuditAction::parse("server.explode"), None);
    }
}
