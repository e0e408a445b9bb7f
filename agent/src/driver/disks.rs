//! Disks of domains: the system disk grown for a resize, the cloud-init
//! seed, storage subscriptions as data disks, and how data is wiped.

use super::*;

/// A domain's data disks, those of the running guest first, and every
/// device name its definition or running guest uses.
pub(super) fn data_disks_of(
    domain: &Domain,
) -> Result<(Vec<xml::DefinedDataDisk>, Vec<String>), AgentError> {
    let DomainXml { inactive, live } = DomainXml::of(domain)?;
    let mut disks = live
        .as_ref()
        .map(xml::DomainDescription::data_disks)
        .unwrap_or_default();
    disks.extend(inactive.data_disks());
    let mut taken: Vec<String> = std::iter::once(&inactive)
        .chain(live.as_ref())
        .flat_map(xml::DomainDescription::targets)
        .collect();
    taken.sort();
    taken.dedup();
    Ok((disks, taken))
}

/// Overwrites a disk's data before it is deleted. A file on this host (a
/// dir pool) is overwritten here, extent by extent: libvirt's own wipe of a
/// qcow2 overlay only rewrites its header and leaves the guest's data in
/// the clusters behind it. Other volumes go through libvirt's wipe; a
/// storage that cannot wipe (the test driver) is reported, never hidden.
pub(crate) fn wipe(disk: &StorageVol) -> Result<DiskDisposal, AgentError> {
    if let Ok(path) = disk.path()
        && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
    {
        overwrite_data_extents(std::path::Path::new(&path)).map_err(|source| {
            AgentError::Persist {
                path: path.clone(),
                source,
            }
        })?;
        return Ok(DiskDisposal::Wiped);
    }
    match disk.wipe(0) {
        Ok(()) => Ok(DiskDisposal::Wiped),
        Err(e) if is_missing(&e, ErrorNumber::NoSupport) => Ok(DiskDisposal::DeletedWithoutWipe {
            reason: format!("the storage driver cannot wipe: {}", e.message()),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Writes zeros over every data extent of a (possibly sparse) file, so the
/// holes stay holes and only what was ever written is rewritten.
pub fn overwrite_data_extents(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let length = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    while offset < length {
        // SAFETY: lseek on a file descriptor owned by `file`, which lives
        // for the whole loop.
        let data = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            // ENXIO: no data after `offset`.
            if error.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(error);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (start, end) = (data as u64, (hole as u64).min(length));
        file.seek(SeekFrom::Start(start))?;
        let mut at = start;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            at += n as u64;
        }
        offset = end;
    }
    file.sync_all()
}

/// Gives back to the file system every block of `path` that reads as
/// zeros: a backup job writes a disk's holes out as zeros (or allocated,
/// unwritten extents), and a copy must take on disk what its data takes.
/// The bytes read are unchanged.
pub fn release_zero_runs(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 1 << 20;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let fd = file.as_raw_fd();
    let punch = |start: u64, length: u64| -> std::io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on a file descriptor owned by `file`, which
        // outlives the closure; KEEP_SIZE leaves the file's length alone.
        let done = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                length as libc::off_t,
            )
        };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let length = file.metadata()?.len();
    let mut buffer = vec![0u8; BLOCK as usize];
    let mut offset: u64 = 0;
    while offset < length {
        // SAFETY: lseek on `file`'s descriptor, alive for the whole loop.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENXIO) {
                // What is left reads as zeros: allocated or not, it goes.
                punch(offset, length - offset)?;
                break;
            }
            return Err(error);
        }
        let data = data as u64;
        // Reads as zeros (a hole, or an unwritten extent that still holds
        // blocks): given back.
        punch(offset, data - offset)?;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(length);
        let mut at = data;
        while at < end {
            // Whole blocks aligned on BLOCK, so punched ranges are the file
            // system's whole blocks.
            let n = (end - at).min(BLOCK - at % BLOCK);
            let chunk = &mut buffer[..n as usize];
            file.read_exact_at(chunk, at)?;
            if chunk.iter().all(|b| *b == 0) {
                punch(at, n)?;
            }
            at += n;
        }
        offset = end;
    }
    file.sync_all()
}

impl Driver {
    /// Creates the system disk `disk_name` of domain `name`: an overlay of
    /// the spec's image at the spec's size.
    pub(super) fn create_system_disk(
        &self,
        pool: &StoragePool,
        name: &str,
        disk_name: &str,
        spec: &DomainSpec,
    ) -> Result<(), AgentError> {
        if let Some(source) = &spec.disk_source {
            return self.restore_system_disk(pool, name, disk_name, spec, source);
        }
        let image = Self::lookup_volume(pool, &spec.image_volume)?
            .ok_or_else(|| AgentError::ImageMissing(spec.image_volume.clone()))?;
        let xml = xml::overlay_volume(disk_name, spec.disk_gib, &image.path()?);
        let disk = StorageVol::create_xml(pool, &xml, 0).map_err(|error| {
            // libvirt reports a full pool with a generic error number, so
            // the pool's own figures decide, not the message text.
            let available = pool
                .refresh(0)
                .and_then(|()| pool.info())
                .map(|i| i.available);
            match available {
                Ok(available) if !fits(available, spec.disk_gib) => AgentError::NoSpace {
                    pool: self.config.pool.clone(),
                    needed_gib: spec.disk_gib,
                },
                _ => AgentError::Libvirt(error),
            }
        })?;
        self.record_volume(disk_name, &disk)?;
        tracing::info!(domain = name, volume = %disk_name, image = %spec.image_volume, "created disk overlay");
        Ok(())
    }

    /// Makes the system disk `disk_name` of domain `name` a copy of
    /// `source`, a version of a snapshot's copy of the same account in this
    /// pool (a restore): a whole qcow2 image of the spec's size, libvirt
    /// converting the raw bytes. The source is never changed.
    fn restore_system_disk(
        &self,
        pool: &StoragePool,
        name: &str,
        disk_name: &str,
        spec: &DomainSpec,
        source: &str,
    ) -> Result<(), AgentError> {
        let snapshot = source
            .rsplit_once("-store-v")
            .map(|(base, _)| base)
            .filter(|base| {
                stratus_core::agent_api::storage_volume_version(base, source).is_some()
                    && check_managed_name(base).is_ok()
            })
            .ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "disk_source: {source} is not a version of a storage copy"
                ))
            })?;
        if account_of(snapshot).is_none() || account_of(snapshot) != account_of(name) {
            return Err(AgentError::BadRequest(format!(
                "disk_source: {source} is not of the account of domain {name}"
            )));
        }
        // The snapshot's copy is not wiped while it is copied (its
        // destruction takes the same lock), nor copied while it is wiped.
        let lock = self.lock(snapshot);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let source_volume = Self::lookup_volume(pool, source)?.ok_or_else(|| {
            AgentError::VersionConflict(format!("disk_source: {source} does not exist"))
        })?;
        let capacity_gib = source_volume
            .info()?
            .capacity
            .div_ceil(GIB)
            .max(spec.disk_gib);
        self.check_room(pool, capacity_gib)?;
        let xml = xml::image_volume(disk_name, capacity_gib);
        let disk = StorageVol::create_xml_from(pool, &xml, &source_volume, 0)?;
        self.record_volume(disk_name, &disk)?;
        tracing::info!(domain = name, volume = %disk_name, %source, "made the disk a copy of a snapshot");
        Ok(())
    }

    /// The system disks of domain `name` in `pool`, by generation (the
    /// allocating listing: `list_volumes` stops at 1 024 names).
    pub(super) fn system_disks(
        &self,
        pool: &StoragePool,
        name: &str,
    ) -> Result<Vec<(u32, String)>, AgentError> {
        let mut disks = Vec::new();
        for volume in pool.list_all_volumes(0)? {
            let volume = volume.name()?;
            if let Some(generation) = stratus_core::agent_api::system_disk_generation(name, &volume)
            {
                disks.push((generation, volume));
            }
        }
        disks.sort();
        Ok(disks)
    }

    /// Makes domain `name`'s rescue disk afresh: an overlay of the rescue
    /// image (a rescue disk left from an earlier rescue is deleted first:
    /// each rescue boots a clean system).
    pub(super) fn create_rescue_disk(
        &self,
        pool: &StoragePool,
        name: &str,
        rescue: &stratus_core::agent_api::RescueBoot,
    ) -> Result<String, AgentError> {
        let disk_name = stratus_core::agent_api::rescue_disk_name(name);
        self.dispose_of_disk(pool, &disk_name)?;
        let image = Self::lookup_volume(pool, &rescue.image_volume)?
            .ok_or_else(|| AgentError::ImageMissing(rescue.image_volume.clone()))?;
        let size_gib = image.info()?.capacity.div_ceil(GIB).max(1);
        let xml = xml::overlay_volume(&disk_name, size_gib, &image.path()?);
        let disk = StorageVol::create_xml(pool, &xml, 0)?;
        self.record_volume(&disk_name, &disk)?;
        tracing::info!(domain = name, volume = %disk_name, image = %rescue.image_volume, "created rescue disk");
        Ok(disk_name)
    }

    /// Wipes and deletes a system disk of a domain (a rebuild's old one,
    /// or any of a destroyed domain's), if it is there; says how its data
    /// went.
    pub(super) fn dispose_of_disk(
        &self,
        pool: &StoragePool,
        disk_name: &str,
    ) -> Result<Option<DiskDisposal>, AgentError> {
        let Some(disk) = Self::lookup_volume(pool, disk_name)? else {
            return Ok(None);
        };
        let disposed = wipe(&disk)?;
        disk.delete(0)?;
        match &disposed {
            DiskDisposal::Wiped => tracing::info!(volume = %disk_name, "wiped and deleted disk"),
            DiskDisposal::DeletedWithoutWipe { reason } => {
                tracing::warn!(volume = %disk_name, %reason, "deleted disk WITHOUT wiping it")
            }
        }
        self.forget(None, Some(disk_name))?;
        Ok(Some(disposed))
    }

    /// Grows the system disk of a domain that is off to the spec's size
    /// (R23); a disk never shrinks, and a running guest's disk is left
    /// alone (the controller stops it first). libvirt's test driver cannot
    /// resize volumes, so there the empty volume is made again at the new
    /// size.
    pub(super) fn grow_disk(
        &self,
        pool: &StoragePool,
        name: &str,
        disk_name: &str,
        spec: &DomainSpec,
    ) -> Result<(), AgentError> {
        let Some(disk) = Self::lookup_volume(pool, disk_name)? else {
            return Ok(());
        };
        let wanted = spec.disk_gib.saturating_mul(GIB);
        let capacity = disk.info()?.capacity;
        if capacity >= wanted {
            return Ok(());
        }
        // Refused while the guest still runs, so a pool without room never
        // leaves it stopped for a resize that cannot be done.
        let available = pool.refresh(0).and_then(|()| pool.info())?.available;
        let growth_gib = wanted.saturating_sub(capacity).div_ceil(GIB);
        if !fits(available, growth_gib) {
            return Err(AgentError::NoSpace {
                pool: self.config.pool.clone(),
                needed_gib: growth_gib,
            });
        }
        let running = match self.lookup_domain(name)? {
            Some(domain) => domain.is_active()?,
            None => false,
        };
        if running {
            return Ok(());
        }
        if self.on_test_driver() {
            let image = Self::lookup_volume(pool, &spec.image_volume)?
                .ok_or_else(|| AgentError::ImageMissing(spec.image_volume.clone()))?;
            disk.delete(0)?;
            let xml = xml::overlay_volume(disk_name, spec.disk_gib, &image.path()?);
            let made = StorageVol::create_xml(pool, &xml, 0)?;
            self.record_volume(disk_name, &made)?;
        } else {
            disk.resize(wanted, 0)?;
        }
        tracing::info!(domain = name, volume = %disk_name, disk_gib = spec.disk_gib, "grew the system disk");
        Ok(())
    }

    /// Serials of a domain's data disks: those of its definition and, where
    /// disks are hot-plugged, of its running guest too, so a disk a guest
    /// has not let go of yet still counts as attached.
    pub(super) fn observe_data_disks(&self, domain_xml: &DomainXml) -> Vec<String> {
        let mut disks = domain_xml.inactive.data_disks();
        if let Some(live) = domain_xml.live.as_ref().filter(|_| self.hot_plugs()) {
            disks.extend(live.data_disks());
        }
        let mut serials: Vec<String> = disks.into_iter().map(|d| d.serial).collect();
        serials.sort();
        serials.dedup();
        serials
    }

    /// Whether disks are plugged into running guests: not on the test
    /// driver, which cannot change a running domain's devices (a change of
    /// disks is defined, for its next start).
    pub(super) fn hot_plugs(&self) -> bool {
        !self.on_test_driver()
    }

    /// Whether seeds are written: not on the test driver, which runs no
    /// guest to read one and cannot upload into its volumes.
    pub(super) fn writes_seeds(&self) -> bool {
        !self.on_test_driver()
    }

    /// libvirt's built-in test driver (`test:///default`, `test:///path`):
    /// a simulated hypervisor, never a real one.
    pub(super) fn on_test_driver(&self) -> bool {
        self.config.uri.starts_with("test:")
    }

    /// The volume of the spec's cloud-init seed, made when missing: the ISO
    /// is uploaded into a scratch volume and copied to its final name by
    /// libvirt, so a volume with the final name is always whole.
    pub(super) fn ensure_seed(
        &self,
        pool: &StoragePool,
        name: &str,
        spec: &DomainSpec,
    ) -> Result<Option<String>, AgentError> {
        let Some(seed) = spec.seed.as_ref().filter(|_| self.writes_seeds()) else {
            return Ok(None);
        };
        let volume_name = crate::seed::volume_name(name, seed);
        if Self::lookup_volume(pool, &volume_name)?.is_some() {
            return Ok(Some(volume_name));
        }
        let iso = crate::seed::iso(seed)?;
        let scratch_name = format!("{volume_name}.part");
        if let Some(stale) = Self::lookup_volume(pool, &scratch_name)? {
            stale.delete(0)?;
        }
        let scratch =
            StorageVol::create_xml(pool, &xml::seed_volume(&scratch_name, iso.len() as u64), 0)?;
        let copied = crate::seed::upload(&self.conn, &scratch, &iso).and_then(|()| {
            Ok(StorageVol::create_xml_from(
                pool,
                &xml::seed_volume(&volume_name, iso.len() as u64),
                &scratch,
                0,
            )?)
        });
        scratch.delete(0)?;
        let volume = copied?;
        self.record_volume(&volume_name, &volume)?;
        tracing::info!(domain = name, volume = %volume_name, bytes = iso.len(), "wrote cloud-init seed");
        Ok(Some(volume_name))
    }

    /// Wipes and deletes the domain's seed volumes but `keep`: they hold
    /// the customer's keys and user data.
    pub(super) fn remove_stale_seeds(
        &self,
        pool: &StoragePool,
        name: &str,
        keep: Option<&str>,
    ) -> Result<(), AgentError> {
        for volume in pool.list_all_volumes(0)? {
            let volume_name = volume.name()?;
            if !stratus_core::agent_api::is_seed_volume_of(name, &volume_name)
                || Some(volume_name.as_str()) == keep
            {
                continue;
            }
            wipe(&volume)?;
            volume.delete(0)?;
            self.forget(None, Some(&volume_name))?;
            tracing::info!(domain = name, volume = %volume_name, "wiped and deleted a cloud-init seed");
        }
        Ok(())
    }

    /// A spec's data disks must be storage copies of this agent's pool,
    /// each once, at most [`MAX_DATA_DISKS`]: checked before anything is
    /// changed.
    pub(super) fn check_data_disks(&self, name: &str, spec: &DomainSpec) -> Result<(), AgentError> {
        if spec.data_disks.len() > MAX_DATA_DISKS {
            return Err(AgentError::BadRequest(format!(
                "data_disks: at most {MAX_DATA_DISKS} disks, not {}",
                spec.data_disks.len()
            )));
        }
        for (index, disk) in spec.data_disks.iter().enumerate() {
            if !is_storage_serial(&disk.serial) {
                return Err(AgentError::BadRequest(format!(
                    "data_disks[{index}].serial: {:?} is not a storage subscription id",
                    disk.serial
                )));
            }
            // Never a disk of another account's storage, whatever the
            // caller asks: both names carry the account.
            let copy_of = disk
                .volume
                .rsplit_once("-store-v")
                .map(|(base, _)| base)
                .filter(|base| storage_volume_version(base, &disk.volume).is_some());
            match copy_of {
                Some(base) if check_managed_name(base).is_ok() => {
                    let same_account =
                        account_of(base).is_some_and(|a| Some(a) == account_of(name));
                    if !same_account {
                        return Err(AgentError::BadRequest(format!(
                            "data_disks[{index}].volume: {} belongs to another account than {name}",
                            disk.volume
                        )));
                    }
                }
                _ => {
                    return Err(AgentError::BadRequest(format!(
                        "data_disks[{index}].volume: {:?} is not a storage copy",
                        disk.volume
                    )));
                }
            }
            if spec.data_disks[..index]
                .iter()
                .any(|d| d.serial == disk.serial || d.volume == disk.volume)
            {
                return Err(AgentError::BadRequest(format!(
                    "data_disks[{index}]: {} is listed twice",
                    disk.serial
                )));
            }
        }
        Ok(())
    }

    /// Every disk's volume must be in this agent's pool.
    pub(super) fn check_data_volumes(&self, disks: &[DataDisk]) -> Result<(), AgentError> {
        let pool = self.pool()?;
        for disk in disks {
            if Self::lookup_volume(&pool, &disk.volume)?.is_none() {
                return Err(AgentError::BadRequest(format!(
                    "data_disks: the volume {} of {} is not in pool {}",
                    disk.volume, disk.serial, self.config.pool
                )));
            }
        }
        Ok(())
    }

    /// The spec's data disks with the device names they have, or will
    /// have, in domain `name`.
    pub(super) fn data_disk_targets(
        &self,
        name: &str,
        spec: &DomainSpec,
    ) -> Result<Vec<(DataDisk, String)>, AgentError> {
        if spec.data_disks.is_empty() {
            return Ok(Vec::new());
        }
        let (defined, taken) = match self.lookup_domain(name)? {
            Some(domain) => data_disks_of(&domain)?,
            None => (Vec::new(), Vec::new()),
        };
        xml::data_disk_targets(&spec.data_disks, &defined, &taken)
    }

    /// Attaches the spec's data disks the domain lacks and detaches those
    /// it no longer lists: in the definition, and in the running guest
    /// (hot-plug). A guest may take a while to let a disk go; the next
    /// call looks again. Answers the LUKS disks left out for want of their
    /// key.
    pub(super) fn converge_data_disks(
        &self,
        name: &str,
        domain: &Domain,
        spec: &DomainSpec,
        disk_volume: &str,
    ) -> Result<Vec<String>, AgentError> {
        let mut waiting_for_key = Vec::new();
        let active = domain.is_active()?;
        let config = read_definition(domain)?.data_disks();
        if !self.hot_plugs() {
            let defined: Vec<(&str, Option<&str>)> = config
                .iter()
                .map(|d| (d.serial.as_str(), d.volume.as_deref()))
                .collect();
            // Without hot-plug there is no running guest to unlock a LUKS
            // disk for: only plain disks are defined.
            let wanted: Vec<(&str, Option<&str>)> = spec
                .data_disks
                .iter()
                .filter(|d| !d.encrypted)
                .map(|d| (d.serial.as_str(), Some(d.volume.as_str())))
                .collect();
            if defined.len() != wanted.len() || wanted.iter().any(|w| !defined.contains(w)) {
                self.check_data_volumes(&spec.data_disks)?;
                self.define(name, spec, disk_volume, Some(domain.uuid_string()?))?;
                tracing::info!(
                    domain = name,
                    disks = wanted.len(),
                    "defined the data disks"
                );
            }
            waiting_for_key.extend(
                spec.data_disks
                    .iter()
                    .filter(|d| d.encrypted)
                    .map(|d| d.serial.clone()),
            );
            return Ok(waiting_for_key);
        }
        let live = if active {
            read_running(domain)?.data_disks()
        } else {
            Vec::new()
        };
        let wanted = |d: &xml::DefinedDataDisk| {
            spec.data_disks
                .iter()
                .any(|w| w.serial == d.serial && Some(&w.volume) == d.volume.as_ref())
        };
        for (disks, flag) in [
            (&config, virt::sys::VIR_DOMAIN_AFFECT_CONFIG),
            (&live, virt::sys::VIR_DOMAIN_AFFECT_LIVE),
        ] {
            for leaving in disks.iter().filter(|d| !wanted(d)) {
                let device = xml::Disk {
                    pool: self.config.pool.clone(),
                    volume: leaving.volume.clone().unwrap_or_default(),
                    target: leaving.target.clone(),
                    format: "raw".to_owned(),
                    serial: Some(leaving.serial.clone()),
                    key_secret: None,
                };
                match domain.detach_device_flags(&device.element().render(), flag) {
                    Ok(()) => {
                        tracing::info!(
                            domain = name,
                            storage = %leaving.serial,
                            live = flag == virt::sys::VIR_DOMAIN_AFFECT_LIVE,
                            "detached a data disk"
                        );
                        // QEMU read the key when it opened the disk; the
                        // hypervisor keeps it no longer than the disk is used.
                        if let Some(volume) = &leaving.volume {
                            self.unload_key(volume)?;
                        }
                    }
                    // The guest has not let go yet: reported as still
                    // attached, tried again on the next call.
                    Err(error) if flag == virt::sys::VIR_DOMAIN_AFFECT_LIVE => tracing::warn!(
                        domain = name,
                        storage = %leaving.serial,
                        error = %error,
                        "the running guest did not let a data disk go yet"
                    ),
                    Err(error) => return Err(error.into()),
                }
            }
        }
        let assigned = self.data_disk_targets(name, spec)?;
        for (disk, target) in &assigned {
            let mut device = xml::Disk::data(&self.config.pool, disk, target.clone());
            let present = |disks: &[xml::DefinedDataDisk]| {
                disks
                    .iter()
                    .any(|d| d.serial == disk.serial && d.volume.as_ref() == Some(&disk.volume))
            };
            let mut flags = 0;
            // A LUKS disk is only ever plugged into the running guest, so
            // a guest started again comes up without it until its key is
            // given again.
            if !present(&config) && !disk.encrypted {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            if active && !present(&live) {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if disk.encrypted && !active {
                self.unload_key(&disk.volume)?;
            }
            if flags == 0 {
                continue;
            }
            // Held until it is attached: a wipe of this volume waits, then
            // sees the domain using it.
            let volume_lock = self.volume_lock(&disk.volume);
            let _volume_guard = volume_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.is_being_written(&disk.volume) {
                // A repair or a copy is writing it: plugged in once done
                // (the server's next ensure), never half-written.
                tracing::info!(domain = name, volume = %disk.volume, "a data disk waits for its volume to be written");
                continue;
            }
            self.check_data_volumes(std::slice::from_ref(disk))?;
            if disk.encrypted {
                match self.key_secret_of(&disk.volume)? {
                    Some(uuid) => device.key_secret = Some(uuid),
                    None => {
                        tracing::debug!(
                            domain = name,
                            storage = %disk.serial,
                            "a LUKS data disk waits for its key"
                        );
                        waiting_for_key.push(disk.serial.clone());
                        continue;
                    }
                }
            }
            domain.attach_device_flags(&device.element().render(), flags)?;
            tracing::info!(
                domain = name,
                storage = %disk.serial,
                target = %target,
                live = flags & virt::sys::VIR_DOMAIN_AFFECT_LIVE != 0,
                "attached a data disk"
            );
        }
        Ok(waiting_for_key)
    }
}
