//! A server's cloud-init NoCloud seed as a volume: its files written to an
//! ISO 9660 image labelled `cidata` (by `genisoimage`, from Debian's
//! packages, with Joliet and Rock Ridge names), uploaded into the storage
//! pool through libvirt, so it works on any pool type.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ring::digest::{SHA256, digest};
use stratus_core::agent_api::{SEED_HASH_DIGITS, seed_volume_prefix};
use stratus_core::cloud_init::Seed;
use virt::connect::Connect;
use virt::storage_vol::StorageVol;

use crate::error::AgentError;

/// The seed's volume name: the domain's seed prefix and a hash of the
/// seed's files, so a seed whose inputs changed is a new volume and an
/// unchanged one is never rebuilt.
pub fn volume_name(domain: &str, seed: &Seed) -> String {
    let mut hashed = Vec::new();
    for (name, content) in seed.files() {
        hashed.extend_from_slice(name.as_bytes());
        hashed.push(0);
        hashed.extend_from_slice(&(content.len() as u64).to_be_bytes());
        hashed.extend_from_slice(content.as_bytes());
    }
    let hash = digest(&SHA256, &hashed);
    let hex: String = hash.as_ref()[..SEED_HASH_DIGITS / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}{hex}.iso", seed_volume_prefix(domain))
}

/// A private scratch directory, removed when dropped: the seed holds the
/// customer's keys and user data.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| std::io::Error::other("no randomness for a scratch directory"))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("stratus-seed-{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }

    fn write(&self, name: &str, content: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.0.join(name))?
            .write_all(content.as_bytes())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn seed_error(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |error| AgentError::Seed(format!("{what}: {error}"))
}

/// The ISO image of a seed.
pub fn iso(seed: &Seed) -> Result<Vec<u8>, AgentError> {
    let scratch = Scratch::new().map_err(seed_error("creating a scratch directory"))?;
    let files = seed.files();
    for (name, content) in &files {
        scratch
            .write(name, content)
            .map_err(seed_error("writing the seed files"))?;
    }
    let output = Command::new("genisoimage")
        .args([
            "-quiet",
            "-input-charset",
            "utf-8",
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
        ])
        .args(files.iter().map(|(name, _)| scratch.0.join(name)))
        .stdin(Stdio::null())
        .output()
        .map_err(seed_error(
            "running genisoimage (install Debian's genisoimage package on the hypervisor)",
        ))?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(AgentError::Seed(format!(
            "genisoimage failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// Writes `bytes` into `volume` from its start through a libvirt stream.
pub fn upload(conn: &Connect, volume: &StorageVol, bytes: &[u8]) -> Result<(), AgentError> {
    let stream = virt::stream::Stream::new(conn, 0)?;
    volume.upload(&stream, 0, bytes.len() as u64, 0)?;
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.send(&bytes[sent..]) {
            Ok(n) if n > 0 => sent += n as usize,
            Ok(_) => {
                let _ = stream.abort();
                return Err(AgentError::Seed("the upload stream closed early".into()));
            }
            Err(error) => {
                let _ = stream.abort();
                return Err(error.into());
            }
        }
    }
    stream.finish()?;
    Ok(())
}

/// The serial console log of a domain in `dir`.
pub fn console_log(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.log"))
}

/// The last `limit` bytes of a file; nothing when there is no file.
pub fn tail(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(limit)))?;
    let mut out = Vec::with_capacity(length.min(limit) as usize);
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            instance_id: "stratus-vs-1".into(),
            hostname: "web1".into(),
            mac_address: "52:54:00:aa:bb:cc".into(),
            ipv4: None,
            ipv6: None,
            dns_servers: Vec::new(),
            ssh_keys: Vec::new(),
            user_data: None,
        }
    }

    #[test]
    fn the_seed_volume_changes_exactly_when_the_seed_does() {
        let name = volume_name("stratus-vs-1", &seed());
        assert!(name.starts_with("stratus-vs-1-seed-"), "{name}");
        assert!(name.ends_with(".iso"));
        assert_eq!(name, volume_name("stratus-vs-1", &seed()));
        let renamed = Seed {
            hostname: "web2".into(),
            ..seed()
        };
        assert_ne!(name, volume_name("stratus-vs-1", &renamed));
    }

    #[test]
    fn the_console_tail_is_the_end_of_the_log() {
        let dir = std::env::temp_dir().join(format!("stratus-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = console_log(&dir, "stratus-vs-1");
        assert!(tail(&log, 10).unwrap().is_empty(), "no log yet");
        std::fs::write(&log, b"0123456789abcdef").unwrap();
        assert_eq!(tail(&log, 6).unwrap(), b"abcdef");
        assert_eq!(tail(&log, 100).unwrap(), b"0123456789abcdef");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
