//! MAC addresses of server NICs: unique among the addresses held, so a
//! few thousand servers on one L2 network never share one (24 hashed bits
//! made that likely). Released addresses stay as history.

use sqlx::Row;

use crate::db::Database;
use crate::error::{Result, StoreError};

/// QEMU's prefix; the other 24 bits are chosen at random and made unique
/// by the ledger.
const PREFIX: &str = "52:54:00";

/// Random picks before giving up: a pick misses only by hitting a held
/// address, so with half of the 16 M addresses held, 64 misses in a row
/// have a chance of 2^-64.
const ATTEMPTS: usize = 64;

pub struct MacAddresses<'a> {
    pub(super) db: &'a Database,
}

impl MacAddresses<'_> {
    /// The MAC address the object `holder_uid` holds, allocating a free one
    /// the first time (`subject`, its `namespace/name`, is kept for people
    /// reading the history). A retried reconcile gets the same address.
    pub async fn allocate(&self, holder_uid: &str, subject: &str, at: i64) -> Result<String> {
        for _ in 0..ATTEMPTS {
            let bits = uuid::Uuid::new_v4().as_u128() as u32 & 0x00ff_ffff;
            let candidate = format!(
                "{PREFIX}:{:02x}:{:02x}:{:02x}",
                bits >> 16,
                (bits >> 8) & 0xff,
                bits & 0xff
            );
            // Insert first: a new holder (the common case) costs one
            // statement. Refused either because the holder already has a
            // MAC (then it keeps it) or because the candidate is taken.
            if self.insert(holder_uid, subject, &candidate, at).await? {
                return Ok(candidate);
            }
            if let Some(held) = self.held_by(holder_uid).await? {
                return Ok(held);
            }
        }
        Err(StoreError::Invalid(format!(
            "no free MAC address found in {ATTEMPTS} tries: the {PREFIX} space is nearly full"
        )))
    }

    /// Records that `holder` already uses `mac` (a server placed before MACs
    /// were allocated here). False if someone else holds it.
    pub async fn adopt(&self, holder_uid: &str, subject: &str, mac: &str, at: i64) -> Result<bool> {
        if let Some(held) = self.held_by(holder_uid).await? {
            return Ok(held == mac);
        }
        self.insert(holder_uid, subject, mac, at).await
    }

    /// Gives the holder's address back; a second call changes nothing.
    pub async fn release(&self, holder_uid: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE mac_addresses SET released_at = $1 WHERE holder = $2 AND released_at IS NULL",
        )
        .bind(at)
        .bind(holder_uid)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The address `holder_uid` holds now.
    pub async fn held_by(&self, holder_uid: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT mac FROM mac_addresses WHERE holder = $1 AND released_at IS NULL")
                .bind(holder_uid)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(|r| r.get("mac")))
    }

    /// How many addresses are held now.
    pub async fn held(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM mac_addresses WHERE released_at IS NULL")
                .fetch_one(self.db.pool())
                .await?,
        )
    }

    /// Inserts unless the address or the holder is taken (the unique
    /// indexes decide, also between racing controllers).
    async fn insert(&self, holder_uid: &str, subject: &str, mac: &str, at: i64) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO mac_addresses (mac, holder, subject, allocated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(mac)
        .bind(holder_uid)
        .bind(subject)
        .bind(at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }
}
