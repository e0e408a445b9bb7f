//! Copies of storage subscriptions on this hypervisor. A copy is a set of
//! versioned raw volumes in the agent's pool (`…-store-v{N}.raw`): a new
//! content is written into a new version beside the current one, so the
//! current one stays whole until the new one is complete, and a secondary
//! keeps several verified versions (R26, R27). Content streams through
//! libvirt's volume upload and download, and its SHA-256 is computed while
//! it passes.

use ring::digest::{Context, SHA256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stratus_core::agent_api::{
    DiskDisposal, DomainState, LiveCopy, LiveCopyMethod, StoredContent, VolumeObservation,
    VolumeSpec, VolumeVersion, storage_volume_name, storage_volume_version,
};
use stratus_core::resources::MAX_STORAGE_GIB;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::backup;
use crate::driver::{Driver, check_managed_name, fits, map_state, release_zero_runs, wipe};
use crate::error::AgentError;
use crate::keys::{is_luks, loaded_secret, physical_bytes};
use crate::xml;

const GIB: u64 = 1 << 30;

/// A backup job that copies no byte for this long is aborted.
const BACKUP_STALL: Duration = Duration::from_secs(600);
/// How often a backup job is asked where it stands.
const BACKUP_POLL: Duration = Duration::from_millis(100);
/// How long an aborted backup job may take to be over.
const BACKUP_ABORT_WAIT: Duration = Duration::from_secs(60);

/// How a running guest's disk is copied.
enum LiveRoute {
    /// By a backup job: done.
    Copied(StorageVol),
    /// The guest is paused for it.
    Pause,
    /// As it is: the domain does not run, or runs without it plugged in.
    Plain,
}

/// Resumes a guest paused for a copy, trying again briefly: a guest left
/// paused is an outage.
fn resume(guest: &virt::domain::Domain) -> Result<(), virt::error::Error> {
    let mut attempt = 0;
    loop {
        match guest.resume() {
            Ok(()) => return Ok(()),
            Err(error) if attempt >= 2 => return Err(error),
            Err(error) => {
                tracing::warn!(%error, attempt, "resuming a guest paused for a copy");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// What the watchdog of a paused copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watchdog {
    /// The copy ended within the limit.
    Quiet,
    /// The limit came: it resumed the guest.
    Resumed,
    /// The limit came and its resume failed (or it died).
    ResumeFailed,
}

/// One copy of a version into a new one.
struct Copying<'a> {
    pool: &'a virt::storage_pool::StoragePool,
    source: &'a StorageVol,
    from_name: &'a str,
    to_name: &'a str,
    /// The new volume's XML.
    target: String,
    /// Its capacity.
    size_gib: u64,
    /// What is copied: the source's first bytes.
    bytes: u64,
    /// The source is an image of another format (a server's qcow2 system
    /// disk): libvirt converts it, so its file is never streamed as bytes.
    convert: bool,
}

/// Bytes moved per libvirt stream call.
pub const CHUNK: usize = 1 << 20;

fn check_size(size_gib: u64) -> Result<(), AgentError> {
    if size_gib == 0 || size_gib > MAX_STORAGE_GIB {
        return Err(AgentError::BadRequest(format!(
            "size_gib must be from 1 to {MAX_STORAGE_GIB}"
        )));
    }
    Ok(())
}

/// The room left in a pool. libvirt refuses to refresh a pool while a
/// volume of it is being uploaded or wiped, so the figures of the last
/// refresh are used then (the create that follows still fails cleanly on
/// a full pool).
fn available_bytes(pool: &virt::storage_pool::StoragePool) -> Result<u64, AgentError> {
    if let Err(error) = pool.refresh(0) {
        tracing::debug!(%error, "pool not refreshed; using its last figures");
    }
    Ok(pool.info()?.available)
}

/// A volume stream libvirt refuses to open: where the storage cannot
/// stream at all (the test driver) it is said so, since no retry helps.
fn streaming(error: virt::error::Error) -> AgentError {
    match error.code() {
        virt::error::ErrorNumberEnum::Known(
            virt::error::ErrorNumber::NoSupport | virt::error::ErrorNumber::OperationUnsupported,
        ) => AgentError::ContentUnsupported(error.message().to_owned()),
        _ => AgentError::Libvirt(error),
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Driver {
    /// Every version of the copy of `name` in this agent's pool, oldest first.
    fn versions(&self, name: &str) -> Result<Vec<(VolumeVersion, StorageVol)>, AgentError> {
        let pool = self.pool()?;
        let mut found = Vec::new();
        // The allocating listing: `list_volumes` stops at 1 024 names.
        for volume in pool.list_all_volumes(0)? {
            let volume_name = volume.name()?;
            let Some(version) = storage_volume_version(name, &volume_name) else {
                continue;
            };
            let path = volume.path().ok();
            // A key is loaded only for a volume it opened: LUKS, even when
            // libvirt has not refreshed the pool since it was written.
            let unlocked = match &path {
                Some(path) => loaded_secret(&self.conn, path)?.is_some(),
                None => false,
            };
            let encrypted = unlocked || is_luks(&volume)?;
            let writing = self.is_being_written(&volume_name);
            found.push((
                VolumeVersion {
                    version,
                    volume: volume_name,
                    path,
                    capacity_bytes: volume.info()?.capacity,
                    physical_bytes: physical_bytes(&volume)?,
                    encrypted,
                    unlocked,
                    writing,
                },
                volume,
            ));
        }
        found.sort_by_key(|(v, _)| v.version);
        Ok(found)
    }

    fn observation(&self, name: &str) -> Result<VolumeObservation, AgentError> {
        Ok(VolumeObservation {
            pool: self.config.pool.clone(),
            versions: self.versions(name)?.into_iter().map(|(v, _)| v).collect(),
            disposal: None,
        })
    }

    /// What is there of the copy of the subscription managed as `name`.
    pub fn observe_volume(&self, name: &str) -> Result<VolumeObservation, AgentError> {
        check_managed_name(name)?;
        self.observation(name)
    }

    /// Makes the copy of `name` exist: with no version at all, its empty
    /// version 0 is created sparse (nothing is written until content is),
    /// when allowed. An existing copy is never recreated or shrunk.
    pub fn ensure_volume(
        &self,
        name: &str,
        spec: &VolumeSpec,
    ) -> Result<VolumeObservation, AgentError> {
        check_managed_name(name)?;
        check_size(spec.size_gib)?;
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let observed = self.observation(name)?;
        if observed.present() {
            return Ok(observed);
        }
        if !spec.create {
            return Err(AgentError::VolumeMissing(storage_volume_name(name, 0)));
        }
        self.create_version(name, 0, spec.size_gib)?;
        self.observation(name)
    }

    fn create_version(
        &self,
        name: &str,
        version: u64,
        size_gib: u64,
    ) -> Result<StorageVol, AgentError> {
        let pool = self.pool()?;
        let volume_name = storage_volume_name(name, version);
        self.check_room(&pool, size_gib)?;
        let volume = StorageVol::create_xml(&pool, &xml::storage_volume(&volume_name, size_gib), 0)
            .map_err(|error| {
                if Self::lookup_volume(&pool, &volume_name).is_ok_and(|v| v.is_some()) {
                    AgentError::VersionExists(volume_name.clone())
                } else {
                    AgentError::Libvirt(error)
                }
            })?;
        self.record_volume(&volume_name, &volume)?;
        tracing::info!(volume = %volume_name, size_gib, "created storage version");
        Ok(volume)
    }

    /// Has libvirt look at the pool's volumes again, so one just written
    /// is known for what its bytes are (a LUKS volume, say); when libvirt
    /// refuses (another volume is being written), the next refresh does.
    fn refresh_pool(&self) {
        if let Err(error) = self.pool().and_then(|pool| Ok(pool.refresh(0)?)) {
            tracing::debug!(%error, "pool not refreshed after a write");
        }
    }

    /// Refuses a new volume of `size_gib` the pool has no room for.
    pub(crate) fn check_room(
        &self,
        pool: &virt::storage_pool::StoragePool,
        size_gib: u64,
    ) -> Result<(), AgentError> {
        if fits(available_bytes(pool)?, size_gib) {
            return Ok(());
        }
        Err(AgentError::NoSpace {
            pool: self.config.pool.clone(),
            needed_gib: size_gib,
        })
    }

    /// Wipes and deletes every version of the copy of `name` (R14); what is
    /// already gone is skipped, so it can be repeated. The disposal is the
    /// worst of the versions'.
    pub fn destroy_volume(&self, name: &str) -> Result<VolumeObservation, AgentError> {
        check_managed_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut disposal = None;
        for (version, volume) in self.versions(name)? {
            let disposed = self.dispose(&version.volume, &volume)?;
            if !matches!(disposal, Some(DiskDisposal::DeletedWithoutWipe { .. })) {
                disposal = Some(disposed);
            }
        }
        let mut observed = self.observation(name)?;
        observed.disposal = disposal;
        Ok(observed)
    }

    /// Wipes and deletes one version of the copy of `name`.
    pub fn delete_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<VolumeObservation, AgentError> {
        check_managed_name(name)?;
        let volume_name = storage_volume_name(name, version);
        let mut disposal = None;
        if let Some(volume) = Self::lookup_volume(&self.pool()?, &volume_name)? {
            disposal = Some(self.dispose(&volume_name, &volume)?);
        }
        let mut observed = self.observation(name)?;
        observed.disposal = disposal;
        Ok(observed)
    }

    fn dispose(&self, volume_name: &str, volume: &StorageVol) -> Result<DiskDisposal, AgentError> {
        self.dispose_as(volume_name, volume, false)
    }

    /// Wipes and deletes a volume; `by_its_writer` when the writer of a
    /// volume being written gives up on it (anyone else is refused).
    fn dispose_as(
        &self,
        volume_name: &str,
        volume: &StorageVol,
        by_its_writer: bool,
    ) -> Result<DiskDisposal, AgentError> {
        // Held while checked and wiped: an attach of this volume waits.
        let lock = self.volume_lock(volume_name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !by_its_writer && self.is_being_written(volume_name) {
            return Err(AgentError::VersionConflict(format!(
                "{volume_name} is being written: it is not wiped under its writer"
            )));
        }
        if let Some(domain) = self.domain_using(volume_name)? {
            tracing::warn!(volume = %volume_name, %domain, "refused to wipe a volume a domain uses");
            return Err(AgentError::VolumeInUse {
                volume: volume_name.to_owned(),
                domain,
            });
        }
        let disposed = wipe(volume)?;
        volume.delete(0)?;
        self.forget(None, Some(volume_name))?;
        match &disposed {
            DiskDisposal::Wiped => {
                tracing::info!(volume = %volume_name, "wiped and deleted storage version")
            }
            DiskDisposal::DeletedWithoutWipe { reason } => {
                tracing::warn!(volume = %volume_name, %reason, "deleted storage version WITHOUT wiping it")
            }
        }
        Ok(disposed)
    }

    /// Writes a content into a new `version` of the copy of `name`, of
    /// `size_gib`, from `chunks` as they come. More than `size_gib` of
    /// content, or a sender that gives up, leaves nothing: the new version
    /// is wiped and deleted, and every other version is untouched (R27).
    pub fn write_version(
        &self,
        name: &str,
        version: u64,
        size_gib: u64,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, String>>,
    ) -> Result<StoredContent, AgentError> {
        check_managed_name(name)?;
        check_size(size_gib)?;
        let volume_name = storage_volume_name(name, version);
        let (volume, writing) = {
            let lock = self.lock(name);
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let volume = self.create_version(name, version, size_gib)?;
            // Marked under the copy's lock, before anyone can see it: a
            // pruning of "unfinished uploads" never wipes it mid-stream.
            (volume, self.writing(&volume_name))
        };
        let uploaded = self.upload(&volume, size_gib * GIB, chunks);
        drop(writing);
        match uploaded {
            Ok((bytes, sha256)) => {
                self.refresh_pool();
                tracing::info!(volume = %volume_name, bytes, "stored a content");
                Ok(StoredContent {
                    version,
                    bytes,
                    sha256,
                    live_copy: None,
                })
            }
            Err(error) => {
                tracing::warn!(volume = %volume_name, %error, "content refused; its version is deleted");
                self.dispose(&volume_name, &volume)?;
                Err(error)
            }
        }
    }

    fn upload(
        &self,
        volume: &StorageVol,
        limit: u64,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, String>>,
    ) -> Result<(u64, String), AgentError> {
        let stream = Stream::new(&self.conn, 0)?;
        volume.upload(&stream, 0, 0, 0).map_err(streaming)?;
        let mut digest = Context::new(&SHA256);
        let mut total: u64 = 0;
        let sent = (|| {
            for chunk in chunks {
                let chunk = chunk.map_err(AgentError::UploadAborted)?;
                total += chunk.len() as u64;
                if total > limit {
                    return Err(AgentError::ContentTooLarge { limit });
                }
                digest.update(&chunk);
                let mut at = 0;
                while at < chunk.len() {
                    match stream.send(&chunk[at..])? {
                        n if n > 0 => at += n as usize,
                        _ => {
                            return Err(AgentError::UploadAborted(
                                "the hypervisor closed the upload stream".into(),
                            ));
                        }
                    }
                }
            }
            Ok(())
        })();
        match sent {
            Ok(()) => {
                stream.finish()?;
                Ok((total, hex(digest.finish().as_ref())))
            }
            Err(error) => {
                let _ = stream.abort();
                Err(error)
            }
        }
    }

    /// Copies `from` of the copy of `name` into a new version `to` beside it
    /// and measures the new one: how a primary copy a guest wrote to
    /// becomes a content again. While a domain has `from` as a disk it is
    /// refused (its bytes would not be one moment's), unless
    /// `pause_guest`: a running guest's disk is then copied as of one
    /// moment, by a backup job while the guest runs on, or where libvirt
    /// has none (or the disk is LUKS) with the guest paused for at most
    /// `max_guest_pause` (QEMU completes the disk writes in flight when it
    /// pauses). A failure leaves no `to`; `from` is never changed.
    pub fn copy_version(
        &self,
        name: &str,
        from: u64,
        to: u64,
        pause_guest: bool,
    ) -> Result<StoredContent, AgentError> {
        check_managed_name(name)?;
        if to <= from {
            return Err(AgentError::BadRequest(format!(
                "the new version {to} must be above {from}"
            )));
        }
        let from_name = storage_volume_name(name, from);
        let to_name = storage_volume_name(name, to);
        let (copy, bytes, writing, live_copy) = {
            let lock = self.lock(name);
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let pool = self.pool()?;
            let source = Self::lookup_volume(&pool, &from_name)?.ok_or_else(|| {
                AgentError::VersionConflict(format!("{from_name} does not exist"))
            })?;
            let user = self.domain_using(&from_name)?;
            if let Some(domain) = user.as_ref().filter(|_| !pause_guest) {
                return Err(AgentError::VersionConflict(format!(
                    "{from_name} is a disk of domain {domain}"
                )));
            }
            if Self::lookup_volume(&pool, &to_name)?.is_some() {
                return Err(AgentError::VersionExists(to_name));
            }
            let bytes = physical_bytes(&source)?;
            let size_gib = bytes.max(source.info()?.capacity).div_ceil(GIB);
            self.check_room(&pool, size_gib)?;
            let copying = Copying {
                pool: &pool,
                source: &source,
                from_name: &from_name,
                to_name: &to_name,
                target: xml::storage_volume(&to_name, size_gib),
                size_gib,
                bytes,
                convert: false,
            };
            let writing = self.writing(&to_name).ok_or_else(|| {
                AgentError::VersionConflict(format!("{to_name} is being written"))
            })?;
            let (copy, live_copy) = match user {
                Some(domain) => self.copy_of_a_disk(&domain, &copying)?,
                None => (self.copy_bytes(&copying, None)?, None),
            };
            self.record_volume(&to_name, &copy)?;
            (copy, bytes, writing, live_copy)
        };
        let checked = self.read_version(name, to, bytes, &mut |_| true);
        drop(writing);
        match checked {
            Ok(stored) => {
                self.refresh_pool();
                tracing::info!(from = %from_name, to = %to_name, bytes, ?live_copy, "copied a storage version");
                Ok(StoredContent {
                    live_copy,
                    ..stored
                })
            }
            Err(error) => {
                self.dispose(&to_name, &copy)?;
                Err(error)
            }
        }
    }

    /// Copies the system disk of domain `domain` into the new version `to`
    /// of the copy of `name` (a snapshot of the server, of the same
    /// account) and measures it: the disk as the guest sees it, raw, as of
    /// one moment (a backup job while the guest runs on; where libvirt has
    /// none, the guest paused for at most `max_guest_pause`; a guest that
    /// does not run is copied as it is). A failure leaves no `to`.
    pub fn capture_disk(
        &self,
        name: &str,
        domain: &str,
        to: u64,
    ) -> Result<StoredContent, AgentError> {
        check_managed_name(name)?;
        check_managed_name(domain)?;
        let account = crate::driver::account_of(name);
        if account.is_none() || account != crate::driver::account_of(domain) {
            return Err(AgentError::BadRequest(format!(
                "domain {domain} is not of the account of {name}"
            )));
        }
        let to_name = storage_volume_name(name, to);
        let (copy, bytes, writing, live_copy) = {
            let lock = self.lock(name);
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let pool = self.pool()?;
            let from_name = self.system_disk_of(domain)?.ok_or_else(|| {
                AgentError::VersionConflict(format!("domain {domain} is not defined here"))
            })?;
            let source = Self::lookup_volume(&pool, &from_name)?.ok_or_else(|| {
                AgentError::VersionConflict(format!("{from_name} does not exist"))
            })?;
            if Self::lookup_volume(&pool, &to_name)?.is_some() {
                return Err(AgentError::VersionExists(to_name));
            }
            let size_gib = source.info()?.capacity.div_ceil(GIB).max(1);
            check_size(size_gib)?;
            self.check_room(&pool, size_gib)?;
            let bytes = size_gib.saturating_mul(GIB);
            let copying = Copying {
                pool: &pool,
                source: &source,
                from_name: &from_name,
                to_name: &to_name,
                target: xml::storage_volume(&to_name, size_gib),
                size_gib,
                bytes,
                convert: true,
            };
            let writing = self.writing(&to_name).ok_or_else(|| {
                AgentError::VersionConflict(format!("{to_name} is being written"))
            })?;
            let (copy, live_copy) = self.copy_of_a_disk(domain, &copying)?;
            self.record_volume(&to_name, &copy)?;
            (copy, bytes, writing, live_copy)
        };
        let checked = self.read_version(name, to, bytes, &mut |_| true);
        drop(writing);
        match checked {
            Ok(stored) => {
                self.refresh_pool();
                tracing::info!(%domain, to = %to_name, bytes, ?live_copy, "copied a server's disk");
                Ok(StoredContent {
                    live_copy,
                    ..stored
                })
            }
            Err(error) => {
                self.dispose(&to_name, &copy)?;
                Err(error)
            }
        }
    }

    /// Copies `copying.source`, a disk of `domain`: by a backup job while
    /// it runs; else with the guest paused for at most `max_guest_pause`;
    /// plainly while it does not run (its calls wait meanwhile, so it is
    /// not started under the copy).
    fn copy_of_a_disk(
        &self,
        domain: &str,
        copying: &Copying<'_>,
    ) -> Result<(StorageVol, Option<LiveCopy>), AgentError> {
        let pause = match self.backup_copy(domain, copying) {
            Ok(LiveRoute::Copied(copy)) => {
                return Ok((
                    copy,
                    Some(LiveCopy {
                        method: LiveCopyMethod::Backup,
                        guest_paused_ms: 0,
                    }),
                ));
            }
            Ok(LiveRoute::Pause) => true,
            Ok(LiveRoute::Plain) => false,
            Err(AgentError::Libvirt(error)) if backup::unsupported(&error) => {
                tracing::debug!(%error, "no backup jobs here: the guest is paused for the copy");
                true
            }
            Err(error) => return Err(error),
        };
        let lock = self.lock(domain);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Looked at again under the domain's lock (a start or a plug-in
        // waits for it): a guest that does not run, or runs without the
        // disk, writes nothing there while it is copied as it is.
        let running = if pause || self.writes_to(domain, copying.from_name)? {
            self.pause_for_copy(domain)?
        } else {
            None
        };
        let Some(running) = running else {
            return Ok((self.copy_bytes(copying, None)?, None));
        };
        let limit = self.config.max_guest_pause;
        let started = Instant::now();
        // At the limit the watchdog resumes the guest and stops the copy
        // (a stream copy stops at its next chunk; libvirt's own copy runs
        // to its end): what was copied is then dropped.
        let cancel = AtomicBool::new(false);
        let (copied, watchdog) = std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let (guest, cancel) = (&running, &cancel);
            let watchdog = scope.spawn(move || match finished.recv_timeout(limit) {
                Ok(()) => Watchdog::Quiet,
                // Timeout, or the copy panicked (its sender dropped).
                Err(_) => {
                    cancel.store(true, Ordering::SeqCst);
                    match guest.resume() {
                        Ok(()) => Watchdog::Resumed,
                        Err(error) => {
                            tracing::error!(%error, domain, "the guest paused for a copy could not be resumed at the limit");
                            Watchdog::ResumeFailed
                        }
                    }
                }
            });
            let copied = self.copy_bytes(copying, Some(cancel));
            let _ = done.send(());
            (copied, watchdog.join().unwrap_or(Watchdog::ResumeFailed))
        });
        let paused = started.elapsed();
        // Resumed whatever else happened; a resume that failed is the
        // first thing said.
        let resumed = match watchdog {
            Watchdog::Resumed => Ok(()),
            Watchdog::Quiet | Watchdog::ResumeFailed => resume(&running),
        };
        match &resumed {
            Ok(()) => {
                tracing::info!(volume = %copying.from_name, seconds = paused.as_secs_f64(), "guest resumed after a copy of its disk");
            }
            Err(error) => {
                tracing::error!(%error, domain, "a guest paused for a copy of its disk could not be resumed");
            }
        }
        let dropped = watchdog != Watchdog::Quiet || paused > limit;
        if (resumed.is_err() || dropped)
            && let Ok(copy) = &copied
            && let Err(error) = self.dispose_as(copying.to_name, copy, true)
        {
            tracing::error!(%error, volume = %copying.to_name, "a dropped copy is left for a later cleanup");
        }
        resumed?;
        if dropped {
            return Err(AgentError::PauseLimit {
                volume: copying.from_name.to_owned(),
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok((
            copied?,
            Some(LiveCopy {
                method: LiveCopyMethod::Paused,
                guest_paused_ms: u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
            }),
        ))
    }

    /// Copies `copying.source`, a disk of the running `domain`, by a
    /// push-mode backup job into a new volume, then gives back the blocks
    /// the job wrote as zeros. Else says how to copy it: with the guest
    /// paused (the disk is LUKS: QEMU would copy what the guest sees,
    /// plaintext; or not a whole-GiB file), or as it is (the domain does
    /// not run, or runs without it plugged in); a libvirt error saying so
    /// when this hypervisor has no backup jobs.
    fn backup_copy(&self, domain: &str, copying: &Copying<'_>) -> Result<LiveRoute, AgentError> {
        // libvirt runs one backup job per domain: two disks of one server
        // are copied one after the other. The domain's own calls go on (a
        // stop ends the job, and this copy fails and is made again).
        let lock = self.lock(&format!("{domain}#backup"));
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(guest) = self.lookup_domain(domain)? else {
            return Ok(LiveRoute::Plain);
        };
        if map_state(guest.state()?.0) != DomainState::Running {
            return Ok(LiveRoute::Plain);
        }
        let live = crate::driver::read_running(&guest)?;
        let Some(disk) = live.plugged(&self.config.pool, copying.from_name) else {
            return Ok(LiveRoute::Plain);
        };
        let capacity = copying.source.info()?.capacity;
        let source_path = copying.source.path()?;
        let regular = std::fs::metadata(&source_path).is_ok_and(|m| m.is_file());
        if disk.encrypted
            || is_luks(copying.source)?
            || !regular
            || capacity % GIB != 0
            || capacity.div_ceil(GIB) != copying.size_gib
        {
            return Ok(LiveRoute::Pause);
        }
        if backup::running(&guest)?.is_some() {
            return Err(AgentError::Busy(format!(
                "domain {domain} runs another job; the copy of {} waits for it",
                copying.from_name
            )));
        }
        let copy = StorageVol::create_xml(copying.pool, &copying.target, 0)?;
        let path = match copy.path() {
            Ok(path) => path,
            Err(error) => {
                self.dispose_as(copying.to_name, &copy, true)?;
                return Err(error.into());
            }
        };
        let description = xml::push_backup(&disk.target, &path, &live.targets());
        if let Err(error) = backup::begin(&guest, &description) {
            self.dispose_as(copying.to_name, &copy, true)?;
            return Err(error);
        }
        let copied = self
            .wait_for_backup(&guest, copying.from_name)
            .and_then(|()| {
                release_zero_runs(std::path::Path::new(&path)).map_err(|source| {
                    AgentError::Persist {
                        path: path.clone(),
                        source,
                    }
                })
            });
        if let Err(error) = copied {
            // QEMU may still write the target: it goes only once the job
            // is over; else it stays marked as written, so nothing wipes
            // it under QEMU, until the agent restarts.
            if self.stop_backup(&guest) {
                self.dispose_as(copying.to_name, &copy, true)?;
            } else {
                tracing::error!(volume = %copying.to_name, "a backup job would not stop; its target stays until the agent restarts");
                self.keep_marked_written(copying.to_name);
            }
            return Err(error);
        }
        Ok(LiveRoute::Copied(copy))
    }

    /// Waits for the backup job copying `volume` to end. It has no time
    /// limit (a disk can be large) but must move: a job that processes no
    /// byte for `BACKUP_STALL` fails.
    fn wait_for_backup(
        &self,
        guest: &virt::domain::Domain,
        volume: &str,
    ) -> Result<(), AgentError> {
        let mut progress = (0u64, Instant::now());
        while let Some(processed) = backup::running(guest)? {
            if processed != progress.0 {
                progress = (processed, Instant::now());
            } else if progress.1.elapsed() > BACKUP_STALL {
                return Err(AgentError::BackupFailed {
                    volume: volume.to_owned(),
                    message: format!("no byte copied for {} s", BACKUP_STALL.as_secs()),
                });
            }
            std::thread::sleep(BACKUP_POLL);
        }
        match backup::ended(guest)? {
            backup::Ended::Completed => Ok(()),
            backup::Ended::Failed(message) => Err(AgentError::BackupFailed {
                volume: volume.to_owned(),
                message,
            }),
            backup::Ended::Unknown => Err(AgentError::BackupFailed {
                volume: volume.to_owned(),
                message: "libvirt kept no outcome of the job".into(),
            }),
        }
    }

    /// Aborts the domain's backup job (this agent's: it holds the domain's
    /// backup lock) and waits for it to be over; false if it still runs
    /// after `BACKUP_ABORT_WAIT`.
    fn stop_backup(&self, guest: &virt::domain::Domain) -> bool {
        let deadline = Instant::now() + BACKUP_ABORT_WAIT;
        let mut asked = false;
        loop {
            match backup::running(guest) {
                Ok(None) => return true,
                // The domain is gone: so is its job.
                Err(_) if matches!(guest.is_active(), Ok(false)) => return true,
                _ => {}
            }
            if Instant::now() > deadline {
                return false;
            }
            if !asked {
                if let Err(error) = backup::abort(guest) {
                    tracing::warn!(%error, "aborting a backup job");
                }
                asked = true;
            }
            std::thread::sleep(BACKUP_POLL);
        }
    }

    /// Whether `domain` runs with `volume` of this pool plugged in.
    fn writes_to(&self, domain: &str, volume: &str) -> Result<bool, AgentError> {
        let Some(guest) = self.lookup_domain(domain)? else {
            return Ok(false);
        };
        if map_state(guest.state()?.0) != DomainState::Running {
            return Ok(false);
        }
        Ok(crate::driver::read_running(&guest)?
            .plugged(&self.config.pool, volume)
            .is_some())
    }

    /// Pauses the running domain `name` for a copy of one of its disks;
    /// answers it to resume, or none when it does not run (nothing writes).
    fn pause_for_copy(&self, name: &str) -> Result<Option<virt::domain::Domain>, AgentError> {
        let Some(domain) = self.lookup_domain(name)? else {
            return Ok(None);
        };
        if map_state(domain.state()?.0) != DomainState::Running {
            return Ok(None);
        }
        domain.suspend()?;
        Ok(Some(domain))
    }

    /// A new volume `to_name` (of `target`'s XML) holding the first `bytes`
    /// of `source`; nothing is left of it when the copy fails.
    /// `stoppable`: the bytes are streamed (a guest is paused meanwhile),
    /// so the copy stops at its next chunk once it is set; else libvirt
    /// copies a plain volume itself, to its end.
    fn copy_bytes(
        &self,
        copying: &Copying<'_>,
        stoppable: Option<&AtomicBool>,
    ) -> Result<StorageVol, AgentError> {
        let Copying {
            pool,
            source,
            to_name,
            target,
            bytes,
            ..
        } = copying;
        if copying.convert {
            // libvirt's own conversion runs to its end: a guest paused for
            // it is resumed at the limit by the watchdog all the same.
            return Ok(StorageVol::create_xml_from(pool, target, source, 0)?);
        }
        let never = AtomicBool::new(false);
        let stop = match stoppable {
            Some(stop) => stop,
            None if !is_luks(source)? => {
                return Ok(StorageVol::create_xml_from(pool, target, source, 0)?);
            }
            // libvirt copies a LUKS volume only by decrypting it with its
            // key; its bytes (ciphertext) are copied as they are.
            None => &never,
        };
        let copy = StorageVol::create_xml(pool, target, 0)?;
        if let Err(error) = self.stream_copy(source, &copy, *bytes, stop) {
            self.dispose_as(to_name, &copy, true)?;
            return Err(error);
        }
        Ok(copy)
    }

    /// Copies the first `bytes` of `source` into `target` through libvirt's
    /// download and upload streams.
    fn stream_copy(
        &self,
        source: &StorageVol,
        target: &StorageVol,
        bytes: u64,
        cancel: &AtomicBool,
    ) -> Result<(), AgentError> {
        let download = Stream::new(&self.conn, 0)?;
        source.download(&download, 0, bytes, 0).map_err(streaming)?;
        let mut read: u64 = 0;
        let mut failed = None;
        let mut chunks = std::iter::from_fn(|| {
            if read >= bytes || failed.is_some() {
                return None;
            }
            if cancel.load(Ordering::SeqCst) {
                return Some(Err("the copy was stopped".to_owned()));
            }
            let mut buffer = vec![0u8; CHUNK];
            match download.recv(&mut buffer) {
                Ok(n) if n > 0 => {
                    read += n as u64;
                    buffer.truncate(n as usize);
                    Some(Ok(buffer))
                }
                Ok(_) => None,
                Err(error) => {
                    let message = error.to_string();
                    failed = Some(error);
                    Some(Err(message))
                }
            }
        });
        let uploaded = self.upload(target, bytes, &mut chunks);
        if let Some(error) = failed {
            let _ = download.abort();
            return Err(error.into());
        }
        uploaded?;
        download.finish()?;
        if read != bytes {
            return Err(AgentError::BadRequest(format!(
                "the source gave {read} of {bytes} bytes"
            )));
        }
        Ok(())
    }

    /// Streams the first `bytes` of `version` of the copy of `name` to
    /// `sink` (which answers false to stop early) and returns their SHA-256.
    pub fn read_version(
        &self,
        name: &str,
        version: u64,
        bytes: u64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StoredContent, AgentError> {
        check_managed_name(name)?;
        let volume_name = storage_volume_name(name, version);
        let volume = Self::lookup_volume(&self.pool()?, &volume_name)?
            .ok_or_else(|| AgentError::VersionConflict(format!("{volume_name} does not exist")))?;
        let physical = physical_bytes(&volume)?;
        if bytes > physical {
            return Err(AgentError::BadRequest(format!(
                "{bytes} bytes asked of a {physical}-byte volume"
            )));
        }
        let mut digest = Context::new(&SHA256);
        if bytes > 0 {
            let stream = Stream::new(&self.conn, 0)?;
            volume.download(&stream, 0, bytes, 0).map_err(streaming)?;
            let mut buffer = vec![0u8; CHUNK];
            let mut read: u64 = 0;
            while read < bytes {
                let n = match stream.recv(&mut buffer) {
                    Ok(n) if n > 0 => n as usize,
                    Ok(_) => break,
                    Err(error) => {
                        let _ = stream.abort();
                        return Err(error.into());
                    }
                };
                read += n as u64;
                digest.update(&buffer[..n]);
                if !sink(&buffer[..n]) {
                    let _ = stream.abort();
                    return Err(AgentError::UploadAborted("the reader went away".into()));
                }
            }
            stream.finish()?;
            // The volume is long enough (checked above): the hypervisor's
            // trouble, worth trying again, never "not this content".
            if read != bytes {
                return Err(AgentError::Worker(format!(
                    "{volume_name} gave {read} of {bytes} bytes"
                )));
            }
        }
        Ok(StoredContent {
            version,
            bytes,
            sha256: hex(digest.finish().as_ref()),
            live_copy: None,
        })
    }
}
