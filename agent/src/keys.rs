//! Customers' keys to LUKS copies (R25). A key reaches the hypervisor only
//! as an ephemeral, private libvirt secret (kept in the daemon's memory,
//! never on disk, never readable back), and only while a running guest
//! may use its volume: it is loaded when the customer gives it and
//! unloaded when the volume leaves its guest. The agent never writes a
//! key anywhere else and never logs one.

use std::io::Write;
use std::process::{Command, Stdio};

use stratus_core::agent_api::{StoredContent, VolumeKey, storage_volume_name};
use stratus_core::resources::LUKS_RESERVED_BYTES;
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::secret::Secret;
use virt::storage_vol::StorageVol;

use crate::driver::{Driver, check_managed_name};
use crate::error::AgentError;
use crate::xml;

const GIB: u64 = 1 << 30;

/// The program that checks a key opens a volume: libvirt offers no call
/// for it, and QEMU's own LUKS code is the one a guest's disk goes
/// through.
const QEMU_IO: &str = "qemu-io";

fn is_error(error: &virt::error::Error, number: ErrorNumber) -> bool {
    matches!(error.code(), virt::error::ErrorNumberEnum::Known(n) if n == number)
}

fn unsupported(error: virt::error::Error) -> AgentError {
    if is_error(&error, ErrorNumber::NoSupport) {
        AgentError::KeysUnsupported(error.message().to_owned())
    } else {
        AgentError::Libvirt(error)
    }
}

/// The secret holding the key of the volume at `path`, if one is loaded.
pub(crate) fn loaded_secret(conn: &Connect, path: &str) -> Result<Option<Secret>, AgentError> {
    match conn.lookup_secret_by_usage(virt::sys::VIR_SECRET_USAGE_TYPE_VOLUME as i32, path) {
        Ok(secret) => Ok(Some(secret)),
        Err(e) if is_error(&e, ErrorNumber::NoSecret) => Ok(None),
        // The test driver keeps no secrets: nothing is ever loaded there.
        Err(e) if is_error(&e, ErrorNumber::NoSupport) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads `key` for the volume at `path` (replacing a key loaded before),
/// as a secret libvirt keeps in memory only and never gives back.
fn load(conn: &Connect, path: &str, key: &VolumeKey) -> Result<Secret, AgentError> {
    unload(conn, path)?;
    let secret = conn
        .define_secret_xml(&xml::volume_secret(path), 0)
        .map_err(unsupported)?;
    if let Err(error) = secret.set_value(key.expose().as_bytes(), 0) {
        let _ = secret.undefine();
        return Err(error.into());
    }
    Ok(secret)
}

/// Unloads the key of the volume at `path`, if one is loaded.
pub(crate) fn unload(conn: &Connect, path: &str) -> Result<bool, AgentError> {
    match loaded_secret(conn, path)? {
        Some(secret) => {
            secret.undefine()?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Whether `key` opens the LUKS volume at `path`: QEMU opens it read-only,
/// sharing it with a guest that may have it, and reads the key from a
/// pipe, so it never lands on disk or in a process listing.
fn key_opens(path: &str, key: &VolumeKey) -> Result<bool, AgentError> {
    // `,` separates QEMU's options; one inside a value is written twice.
    let image = format!(
        "driver=luks,key-secret=key0,file.filename={}",
        path.replace(',', ",,")
    );
    let mut child = Command::new(QEMU_IO)
        .args(["-r", "-U", "--object", "secret,id=key0,file=/dev/stdin"])
        .args(["--image-opts", &image, "-c", "quit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::KeysUnsupported(format!("{QEMU_IO} cannot be run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A closed pipe means QEMU gave up early; its answer says why.
        let _ = stdin.write_all(key.expose().as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| AgentError::Worker(format!("{QEMU_IO}: {e}")))?;
    if output.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    if said.contains("Invalid password") {
        return Ok(false);
    }
    Err(AgentError::Worker(format!(
        "{QEMU_IO} could not open {path}: {}",
        said.trim()
    )))
}

impl Driver {
    /// Creates `version` of the copy of `name` as a LUKS volume of
    /// `size_gib` (less [`LUKS_RESERVED_BYTES`] for its header) formatted
    /// by libvirt with `key`, which is unloaded again once it is made. The
    /// new version holds only the LUKS header and ciphertext; its bytes are
    /// measured like a content's.
    pub fn format_version(
        &self,
        name: &str,
        version: u64,
        size_gib: u64,
        key: &VolumeKey,
    ) -> Result<StoredContent, AgentError> {
        check_managed_name(name)?;
        key.check().map_err(AgentError::BadRequest)?;
        let volume_name = storage_volume_name(name, version);
        let volume = {
            let lock = self.lock(name);
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let pool = self.pool()?;
            if Self::lookup_volume(&pool, &volume_name)?.is_some() {
                return Err(AgentError::VersionExists(volume_name.clone()));
            }
            self.check_room(&pool, size_gib)?;
            let path = format!("{}/{volume_name}", xml::pool_path(&pool.xml_desc(0)?)?);
            let secret = load(&self.conn, &path, key)?;
            let capacity = (size_gib * GIB).saturating_sub(LUKS_RESERVED_BYTES);
            let created = secret
                .uuid_string()
                .map_err(AgentError::from)
                .and_then(|uuid| {
                    StorageVol::create_xml(
                        &pool,
                        &xml::luks_volume(&volume_name, capacity, &uuid),
                        0,
                    )
                    .map_err(AgentError::from)
                });
            secret.undefine()?;
            created?
        };
        self.record_volume(&volume_name, &volume)?;
        let physical = physical_bytes(&volume)?;
        match self.read_version(name, version, physical, &mut |_| true) {
            Ok(stored) => {
                tracing::info!(volume = %volume_name, bytes = physical, "formatted a storage version as LUKS");
                Ok(stored)
            }
            Err(error) => {
                self.delete_version(name, version)?;
                Err(error)
            }
        }
    }

    /// Loads the key of `version` of the copy of `name`, once QEMU opened
    /// the volume with it: a wrong key is refused and nothing is loaded.
    pub fn unlock_version(
        &self,
        name: &str,
        version: u64,
        key: &VolumeKey,
    ) -> Result<(), AgentError> {
        check_managed_name(name)?;
        key.check().map_err(AgentError::BadRequest)?;
        let volume_name = storage_volume_name(name, version);
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let volume = Self::lookup_volume(&self.pool()?, &volume_name)?
            .ok_or_else(|| AgentError::VersionConflict(format!("{volume_name} does not exist")))?;
        // libvirt learns a volume is LUKS when it next refreshes the pool;
        // a version just written may not be known as one yet.
        if !is_luks(&volume)? && !self.has_luks_header(&volume)? {
            return Err(AgentError::BadRequest(format!(
                "{volume_name} is not a LUKS volume"
            )));
        }
        let path = volume.path()?;
        if !key_opens(&path, key)? {
            return Err(AgentError::WrongKey(volume_name));
        }
        load(&self.conn, &path, key)?;
        tracing::info!(volume = %volume_name, "loaded the key of a LUKS volume");
        Ok(())
    }

    /// Unloads the key of `version` of the copy of `name`: a key given for
    /// an attach that did not happen is not left loaded in libvirtd. A
    /// guest that has the disk plugged keeps it (QEMU holds what it opened).
    pub fn lock_version(&self, name: &str, version: u64) -> Result<(), AgentError> {
        check_managed_name(name)?;
        let volume = storage_volume_name(name, version);
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Never between an attach's look at the key and its plugging in
        // (it holds this lock for that), nor under a domain that has the
        // disk: that attach won and keeps what it needs.
        let volume_lock = self.volume_lock(&volume);
        let _volume_guard = volume_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(domain) = self.domain_using(&volume)? {
            tracing::info!(%volume, %domain, "the key stays: a domain has the disk");
            return Ok(());
        }
        self.unload_key(&volume)
    }

    /// Whether the volume starts with a LUKS header, read through libvirt.
    fn has_luks_header(&self, volume: &StorageVol) -> Result<bool, AgentError> {
        const MAGIC: &[u8] = b"LUKS\xba\xbe";
        let stream = virt::stream::Stream::new(&self.conn, 0)?;
        match volume.download(&stream, 0, MAGIC.len() as u64, 0) {
            Ok(()) => {}
            // A storage that cannot be read back (the test driver) holds
            // no LUKS volume: it cannot have formatted one.
            Err(e) if is_error(&e, ErrorNumber::NoSupport) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let mut head = Vec::with_capacity(MAGIC.len());
        let mut buffer = [0u8; 64];
        while head.len() < MAGIC.len() {
            match stream.recv(&mut buffer) {
                Ok(n) if n > 0 => head.extend_from_slice(&buffer[..n as usize]),
                Ok(_) => break,
                Err(error) => {
                    let _ = stream.abort();
                    return Err(error.into());
                }
            }
        }
        stream.finish()?;
        Ok(head.starts_with(MAGIC))
    }

    /// The secret holding the loaded key of the volume `volume_name`.
    pub(crate) fn key_secret_of(&self, volume_name: &str) -> Result<Option<String>, AgentError> {
        let Some(volume) = Self::lookup_volume(&self.pool()?, volume_name)? else {
            return Ok(None);
        };
        loaded_secret(&self.conn, &volume.path()?)?
            .map(|secret| secret.uuid_string().map_err(AgentError::from))
            .transpose()
    }

    /// Unloads the key of the volume `volume_name` of this agent's pool.
    pub(crate) fn unload_key(&self, volume_name: &str) -> Result<(), AgentError> {
        let Some(volume) = Self::lookup_volume(&self.pool()?, volume_name)? else {
            return Ok(());
        };
        if unload(&self.conn, &volume.path()?)? {
            tracing::info!(volume = %volume_name, "unloaded the key of a LUKS volume");
        }
        Ok(())
    }
}

/// Whether libvirt sees a LUKS header on the volume.
pub(crate) fn is_luks(volume: &StorageVol) -> Result<bool, AgentError> {
    xml::volume_is_luks(&volume.xml_desc(0)?)
}

/// The volume's bytes on the hypervisor (a LUKS volume's header
/// included); its capacity where the storage cannot tell (test driver).
pub(crate) fn physical_bytes(volume: &StorageVol) -> Result<u64, AgentError> {
    match volume.info_flags(virt::sys::VIR_STORAGE_VOL_GET_PHYSICAL) {
        Ok(info) => Ok(info.allocation),
        Err(e) if is_error(&e, ErrorNumber::NoSupport) => Ok(volume.info()?.capacity),
        Err(e) => Err(e.into()),
    }
}
