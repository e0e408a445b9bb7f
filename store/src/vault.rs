//! Secrets at rest (agent tokens), encrypted with ChaCha20-Poly1305 under the
//! control plane's master key. The credential name is bound in as associated
//! data, so a ciphertext cannot be swapped onto another credential.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use stratus_core::Clock;

use crate::db::Database;
use crate::error::{Result, StoreError};
use crate::private_files::{PrivateFileError, read_private_file, write_private_file};

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

    /// Reads the master key from `path` (hex). The file must exist: an API
    /// and a controller on two machines that each made up a key would
    /// silently disagree about every stored secret.
    pub fn load_key(path: &Path) -> Result<Vec<u8>> {
        let text = read_private_file(path).map_err(|e| match e {
            PrivateFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StoreError::MasterKey(format!(
                    "{} does not exist: create the master key once (`openssl rand -hex {KEY_LEN} > {0}; chmod 600 {0}`) and give every API and controller the same file or Kubernetes Secret",
                    path.display()
                ))
            }
            other => StoreError::MasterKey(other.to_string()),
        })?;
        unhex(text.trim())
            .filter(|k| k.len() == KEY_LEN)
            .ok_or_else(|| {
                StoreError::MasterKey(format!(
                    "{} does not hold {KEY_LEN} hex-encoded bytes",
                    path.display()
                ))
            })
    }

    /// The master key of `stratus up`, which is the only process using its
    /// data directory: created (mode 0600) on first use.
    pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Self::load_key(path);
        }
        let mut key = vec![0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StoreError::MasterKey("no randomness available".into()))?;
        write_private_file(path, hex(&key).as_bytes())
            .map_err(|e| StoreError::MasterKey(e.to_string()))?;
        Ok(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_key_is_never_made_up_outside_stratus_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let missing = Vault::load_key(&path).unwrap_err().to_string();
        assert!(missing.contains("openssl rand"), "{missing}");
        assert!(!path.exists(), "loading never creates the key");
        let made = Vault::load_or_create_key(&path).unwrap();
        assert_eq!(Vault::load_key(&path).unwrap(), made);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = Vault::load_key(&path).unwrap_err().to_string();
        assert!(loose.contains("chmod 600"), "{loose}");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
