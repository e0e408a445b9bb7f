//! What the billing system and operators reported about each account
//! (append-only, idempotent by the reporter's id), and when each account's
//! standing next changes by itself (its durable deadline).

use sqlx::Row;
use sqlx::any::AnyRow;

use stratus_core::standing::{Fact, FactKind};

use crate::db::Database;
use crate::error::{Result, StoreError};

pub struct AccountFacts<'a> {
    pub(super) db: &'a Database,
}

/// A fact to record.
#[derive(Debug, Clone, Copy)]
pub struct NewFact<'a> {
    pub id: &'a str,
    pub account: &'a str,
    pub kind: &'a str,
    /// The fact as stratus reads it.
    pub fact: &'a serde_json::Value,
    /// The report as received, with its evidence.
    pub body: &'a serde_json::Value,
    pub actor: &'a str,
    pub recorded_at: i64,
}

/// A recorded fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFact {
    /// Its place in the order facts were recorded.
    pub seq: i64,
    pub id: String,
    pub account: String,
    pub kind: String,
    pub fact: serde_json::Value,
    pub body: serde_json::Value,
    pub actor: String,
    pub recorded_at: i64,
}

/// What recording a fact did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First time this id was reported.
    New(StoredFact),
    /// The same report again (same account, same body): the first one.
    Repeated(StoredFact),
    /// Another report under an id already taken: the one that holds it.
    Conflicting(StoredFact),
}

/// An account whose standing is due, as the deadline runner takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAccount {
    pub account: String,
    pub due_at: i64,
    /// Bumped by every new fact; the settle's write names it.
    pub revision: i64,
}

const COLUMNS: &str = "seq, fact_id, account, kind, fact, body, actor, recorded_at";

impl AccountFacts<'_> {
    /// Records `new` once: a second report with its id changes nothing and
    /// says whether it was the same report. A new fact makes its account
    /// due at `recorded_at` and bumps its revision in the same transaction,
    /// so a settle that read the facts before it cannot store a deadline
    /// computed without it ([`Self::settle_deadline`]), and a crash cannot
    /// keep the fact without making it due.
    pub async fn record(&self, new: &NewFact<'_>) -> Result<Recorded> {
        let mut tx = self.db.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO account_facts (fact_id, account, kind, fact, body, actor, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (fact_id) DO NOTHING",
        )
        .bind(new.id)
        .bind(new.account)
        .bind(new.kind)
        .bind(new.fact.to_string())
        .bind(new.body.to_string())
        .bind(new.actor)
        .bind(new.recorded_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            make_due(&mut *tx, new.account, new.recorded_at).await?;
        }
        // Only the constant column list is formatted in.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM account_facts WHERE fact_id = $1"
        )))
        .bind(new.id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let stored = row.as_ref().map(stored_fact).transpose()?.ok_or_else(|| {
            StoreError::Invalid(format!("fact {} vanished after it was recorded", new.id))
        })?;
        Ok(if inserted == 1 {
            Recorded::New(stored)
        } else if stored.account == new.account && &stored.body == new.body {
            Recorded::Repeated(stored)
        } else {
            Recorded::Conflicting(stored)
        })
    }

    pub async fn by_id(&self, id: &str) -> Result<Option<StoredFact>> {
        // Only the constant column list is formatted in.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM account_facts WHERE fact_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(stored_fact).transpose()
    }

    /// Up to `limit` facts of `account` recorded after `after_seq`, in the
    /// order they were recorded.
    pub async fn of_account(
        &self,
        account: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredFact>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM account_facts WHERE account = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        )))
        .bind(account)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(stored_fact).collect()
    }

    /// Every fact of `account` as its standing reads them, in the order
    /// they were recorded; more than `max` is refused rather than read
    /// without bound.
    pub async fn standing_facts(&self, account: &str, max: usize) -> Result<Vec<Fact>> {
        const PAGE: u32 = 1_000;
        let mut facts = Vec::new();
        let mut after = 0;
        loop {
            let page = self.of_account(account, after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            for stored in page {
                after = stored.seq;
                let kind: FactKind = serde_json::from_value(stored.fact)
                    .map_err(|e| StoreError::Invalid(format!("stored fact {}: {e}", stored.id)))?;
                let recorded_at = jiff::Timestamp::from_millisecond(stored.recorded_at)
                    .map_err(|e| StoreError::Invalid(format!("fact {}: {e}", stored.id)))?;
                facts.push(Fact {
                    id: stored.id,
                    recorded_at,
                    kind,
                });
            }
            if facts.len() > max {
                return Err(StoreError::Invalid(format!(
                    "account {account} has more than {max} facts"
                )));
            }
            if !full {
                return Ok(facts);
            }
        }
    }

    /// Makes `account` due at `at` (unless it was due earlier), as a new
    /// fact does: a settle running meanwhile will not overwrite it.
    pub async fn make_due(&self, account: &str, at: i64) -> Result<()> {
        make_due(self.db.pool(), account, at).await
    }

    /// Stores when `account`'s standing next changes by itself (`None`:
    /// nothing pending), as worked out by a settle that read its facts
    /// after seeing `revision` ([`DueAccount::revision`]). A fact recorded
    /// since then bumped the revision: nothing is written and the account
    /// stays due as that fact made it (false).
    pub async fn settle_deadline(
        &self,
        account: &str,
        due_at: Option<i64>,
        revision: i64,
    ) -> Result<bool> {
        let written = sqlx::query(
            "INSERT INTO account_deadlines (account, due_at, revision) VALUES ($1, $2, $3) \
             ON CONFLICT (account) DO UPDATE SET due_at = excluded.due_at \
             WHERE account_deadlines.revision = excluded.revision",
        )
        .bind(account)
        .bind(due_at)
        .bind(revision)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(written == 1)
    }

    /// Up to `limit` accounts whose deadline is at or before `now`, the
    /// most overdue first, each with the revision its settle must name.
    pub async fn due(&self, now: i64, limit: u32) -> Result<Vec<DueAccount>> {
        let rows = sqlx::query(
            "SELECT account, due_at, revision FROM account_deadlines \
             WHERE due_at IS NOT NULL AND due_at <= $1 \
             ORDER BY due_at, account LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueAccount {
                    account: row.try_get("account")?,
                    due_at: row.try_get("due_at")?,
                    revision: row.try_get("revision")?,
                })
            })
            .collect()
    }

    /// `account`'s deadline and revision (revision 0 and no deadline before
    /// its first fact).
    pub async fn deadline_of(&self, account: &str) -> Result<(Option<i64>, i64)> {
        let row = sqlx::query("SELECT due_at, revision FROM account_deadlines WHERE account = $1")
            .bind(account)
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            Some(row) => Ok((row.try_get("due_at")?, row.try_get("revision")?)),
            None => Ok((None, 0)),
        }
    }

    /// The earliest deadline of any account (to sleep until it).
    pub async fn next_deadline(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(due_at) AS due_at FROM account_deadlines")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>("due_at")?)
    }
}

/// Due at `at` (or earlier, if it already was) and one revision further:
/// the write of a new fact.
async fn make_due<'e, E>(executor: E, account: &str, at: i64) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // The earlier of the two: a deadline already due stays due (clocks of
    // API and controller processes may differ a little).
    sqlx::query(
        "INSERT INTO account_deadlines (account, due_at, revision) VALUES ($1, $2, 1) \
         ON CONFLICT (account) DO UPDATE SET \
         due_at = CASE WHEN account_deadlines.due_at IS NOT NULL \
                        AND account_deadlines.due_at < excluded.due_at \
                       THEN account_deadlines.due_at ELSE excluded.due_at END, \
         revision = account_deadlines.revision + 1",
    )
    .bind(account)
    .bind(at)
    .execute(executor)
    .await?;
    Ok(())
}

fn stored_fact(row: &AnyRow) -> Result<StoredFact> {
    let json = |column: &str| -> Result<serde_json::Value> {
        let raw: String = row.try_get(column)?;
        serde_json::from_str(&raw).map_err(|_| super::malformed("account fact", &raw))
    };
    Ok(StoredFact {
        seq: row.try_get("seq")?,
        id: row.try_get("fact_id")?,
        account: row.try_get("account")?,
        kind: row.try_get("kind")?,
        fact: json("fact")?,
        body: json("body")?,
        actor: row.try_get("actor")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
