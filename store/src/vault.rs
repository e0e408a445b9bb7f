//! Secrets at rest (agent tokens), encrypted with ChaCha20-Poly1305 under the
//! control plane's master key. The credential name is bound in as associated
//! data, so a ciphertext cannot be swapped onto another credential.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use stratus_core::Clock;

use crate::db::Database;
use crate::error::{Result, StoreError};

const KEY_LEN: usize = 32;

pub struct Vault {
    db: Database,
    key: LessSafeKey,
    rng: SystemRandom,
    /// Stamps when a secret was written.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault { key: <redacted> }")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Vault {
    pub fn new(db: Database, master_key: &[u8], clock: Arc<dyn Clock>) -> Result<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, master_key)
            .map_err(|_| StoreError::MasterKey(format!("must be {KEY_LEN} bytes")))?;
        Ok(Self {
            db,
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            clock,
        })
    }

    pub(crate) fn now_millis(&self) -> i64 {
        self.clock.now().as_millisecond()
    }

    /// Reads the master key from `path` (hex), creating it with mode 0600 on first use.
    pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
        match std::fs::read_to_string(path) {
            Ok(text) => unhex(text.trim())
                .filter(|k| k.len() == KEY_LEN)
                .ok_or_else(|| {
                    StoreError::MasterKey(format!(
                        "{} does not hold {KEY_LEN} hex-encoded bytes",
                        path.display()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| StoreError::MasterKey("no randomness available".into()))?;
                write_private_file(path, hex(&key).as_bytes()).map_err(|e| {
                    StoreError::MasterKey(format!("cannot write {}: {e}", path.display()))
                })?;
                Ok(key)
            }
            Err(e) => Err(StoreError::MasterKey(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Stores (or replaces) secret `name`.
    pub async fn put(&self, name: &str, secret: &str, at: i64) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::MasterKey("no randomness available".into()))?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Decrypt(name.to_owned()))?;
        sqlx::query(
            "INSERT INTO credentials (name, nonce, ciphertext, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET nonce = $2, ciphertext = $3, created_at = $4",
        )
        .bind(name)
        .bind(hex(&nonce))
        .bind(hex(&sealed))
        .bind(at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<Option<String>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT nonce, ciphertext FROM credentials WHERE name = $1")
                .bind(name)
                .fetch_optional(self.db.pool())
                .await?;
        let Some((nonce, ciphertext)) = row else {
            return Ok(None);
        };
        let broken = || StoreError::Decrypt(name.to_owned());
        let nonce: [u8; NONCE_LEN] = unhex(&nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(broken)?;
        let mut sealed = unhex(&ciphertext).ok_or_else(broken)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| broken())?;
        String::from_utf8(plain.to_vec())
            .map(Some)
            .map_err(|_| broken())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM credentials WHERE name = $1")
            .bind(name)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

/// `bytes` random bytes, hex-encoded (for tokens and keys).
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| StoreError::MasterKey("no randomness available".into()))?;
    Ok(hex(&buffer))
}

/// Writes a file only its owner can read.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
