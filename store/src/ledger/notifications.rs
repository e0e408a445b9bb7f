//! The notification outbox (notices and state changes owed to accounts)
//! and the positions of outbound feeds.
//!
//! A notification is queued once under a key derived from its cause, then
//! claimed, delivered and marked by the sender. A claim moves the row's
//! next attempt to the end of a lease: a sender that dies mid-delivery
//! leaves the row to be tried again when the lease runs out, and two
//! senders never claim the same row at once.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::position::Position;
use crate::db::Database;
use crate::error::{Result, StoreError};

pub struct Notifications<'a> {
    pub(super) db: &'a Database,
}

/// How a notification reaches its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "email" => Ok(Self::Email),
            "webhook" => Ok(Self::Webhook),
            other => Err(super::malformed("notification channel", other)),
        }
    }
}

/// Where a notification is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted now).
    Pending,
    Delivered,
    /// Every attempt failed; an operator may queue it again.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A notification to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// Derived from its cause and channel: queued once however often the
    /// cause is worked out again.
    pub key: String,
    pub account: String,
    pub channel: Channel,
    pub recipient: String,
    /// What is delivered: subject, text and the event.
    pub message: serde_json::Value,
    pub created_at: i64,
}

/// A queued notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub key: String,
    pub account: String,
    pub channel: Channel,
    pub recipient: String,
    pub message: serde_json::Value,
    pub state: DeliveryState,
    /// Attempts begun so far.
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

const COLUMNS: &str = "id, once_key, account, channel, recipient, message, state, attempts, \
                       next_attempt_at, last_error, created_at, delivered_at";

/// Errors kept per attempt: a receiver's whole answer is not stored.
const MAX_ERROR_CHARS: usize = 1_000;

impl Notifications<'_> {
    /// Queues `new` unless its key was queued before; true if new. It is
    /// due at once.
    pub async fn enqueue(&self, new: &NewNotification) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO notifications (once_key, account, channel, recipient, message, state, \
             attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&new.key)
        .bind(&new.account)
        .bind(new.channel.as_str())
        .bind(&new.recipient)
        .bind(new.message.to_string())
        .bind(new.created_at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Claims up to `limit` pending notifications due by `now`, oldest
    /// first: each one's attempt count goes up and its next attempt moves
    /// to `lease_until`, so nobody else claims it while it is delivered.
    pub async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        )))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut notification = notification(row)?;
            let taken = sqlx::query(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
            )
            .bind(lease_until)
            .bind(notification.id)
            .bind(notification.next_attempt_at)
            .execute(self.db.pool())
            .await?
            .rows_affected();
            if taken == 1 {
                notification.attempts += 1;
                notification.next_attempt_at = lease_until;
                claimed.push(notification);
            }
        }
        Ok(claimed)
    }

    /// The claimed notification `id` reached its recipient at `at`.
    pub async fn delivered(&self, id: i64, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE notifications SET state = 'delivered', delivered_at = $1, last_error = NULL \
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(at)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// An attempt of `id` failed with `error`: it is tried again at
    /// `retry_at`, or, with `None`, given up as failed.
    pub async fn attempt_failed(&self, id: i64, error: &str, retry_at: Option<i64>) -> Result<()> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let query = match retry_at {
            Some(at) => sqlx::query(
                "UPDATE notifications SET last_error = $1, next_attempt_at = $2 \
                 WHERE id = $3 AND state = 'pending'",
            )
            .bind(error)
            .bind(at),
            None => sqlx::query(
                "UPDATE notifications SET last_error = $1, state = 'failed' \
                 WHERE id = $2 AND state = 'pending'",
            )
            .bind(error),
        };
        query.bind(id).execute(self.db.pool()).await?;
        Ok(())
    }

    /// Queues the failed notification `id` again, due at `now` with its
    /// attempts counted afresh; false if there is no failed one by that id.
    pub async fn retry(&self, id: i64, now: i64) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE notifications SET state = 'pending', attempts = 0, next_attempt_at = $1 \
             WHERE id = $2 AND state = 'failed'",
        )
        .bind(now)
        .bind(id)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    pub async fn get(&self, id: i64) -> Result<Option<Notification>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(notification).transpose()
    }

    /// Up to `limit` notifications after `cursor` (their id; 0 for the
    /// first), in order, of one state or all.
    pub async fn page(
        &self,
        state: Option<DeliveryState>,
        cursor: i64,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        let rows = match state {
            Some(state) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM notifications WHERE state = $1 AND id > $2 \
                     ORDER BY id LIMIT $3"
                )))
                .bind(state.as_str())
                .bind(cursor)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM notifications WHERE id > $1 ORDER BY id LIMIT $2"
                )))
                .bind(cursor)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
        };
        rows.iter().map(notification).collect()
    }

    /// How many notifications are in `state`.
    pub async fn count(&self, state: DeliveryState) -> Result<u64> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM notifications WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(self.db.pool())
            .await?
            .try_get(0)?;
        u64::try_from(count).map_err(|_| super::malformed("count", &count.to_string()))
    }

    /// How far the outbound feed `feed` got (the start before it started).
    pub async fn feed_position(&self, feed: &str) -> Result<Position> {
        let row = sqlx::query("SELECT position, writer FROM feed_positions WHERE feed = $1")
            .bind(feed)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(row) = row else {
            return Ok(Position::Start);
        };
        let id: i64 = row.try_get("position")?;
        Ok(match row.try_get::<Option<i64>, _>("writer")? {
            Some(writer) => Position::Written { writer, id },
            None if id == 0 => Position::Start,
            None => Position::Id(id),
        })
    }

    /// Moves `feed` forward to `position`; never back.
    pub async fn advance_feed(&self, feed: &str, position: Position) -> Result<()> {
        let (writer, id) = match position {
            Position::Start => return Ok(()),
            Position::Id(id) => (None, id),
            Position::Written { writer, id } => (Some(writer), id),
        };
        // An id position is only ever followed by a written one (PostgreSQL
        // after an upgrade) or by a larger id (SQLite).
        sqlx::query(
            "INSERT INTO feed_positions (feed, position, writer) VALUES ($1, $2, $3) \
             ON CONFLICT (feed) DO UPDATE SET position = excluded.position, writer = excluded.writer \
             WHERE (excluded.writer IS NULL AND feed_positions.writer IS NULL \
                    AND feed_positions.position < excluded.position) \
                OR (excluded.writer IS NOT NULL AND (feed_positions.writer IS NULL \
                    OR feed_positions.writer < excluded.writer \
                    OR (feed_positions.writer = excluded.writer \
                        AND feed_positions.position < excluded.position)))",
        )
        .bind(feed)
        .bind(id)
        .bind(writer)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

fn notification(row: &AnyRow) -> Result<Notification> {
    let message: String = row.try_get("message")?;
    let state: String = row.try_get("state")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Notification {
        id: row.try_get("id")?,
        key: row.try_get("once_key")?,
        account: row.try_get("account")?,
        channel: Channel::parse(&row.try_get::<String, _>("channel")?)?,
        recipient: row.try_get("recipient")?,
        message: serde_json::from_str(&message)
            .map_err(|_| super::malformed("notification message", &message))?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| super::malformed("notification state", &state))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Invalid(format!("attempts {attempts} out of range")))?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}
