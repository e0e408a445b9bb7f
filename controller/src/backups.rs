//! Daily backups of servers' disks (R18): the server reconciler takes each
//! day's backup in the provider's window and prunes the oldest beyond what
//! the server keeps. A backup is a snapshot whose object name is its slot's
//! (`core::backups`), so however many controllers or restarts, each day's
//! is created once; its copying is the storage reconciler's.

use jiff::{SignedDuration, Timestamp};

use kube::ResourceExt;
use kube::core::ObjectMeta;
use serde_json::json;
use stratus_core::backups::{Kept, KeptState, Slot, prune};
use stratus_core::conditions::EventReason;
use stratus_core::quota::{Quota, Usage, charged_object};
use stratus_core::resources::{
    Account, SnapshotOf, StorageSubscription, StorageSubscriptionSpec, VirtualServer,
};
use stratus_core::storage::{SnapshotState, snapshot_state};
use stratus_store::ledger::{AuditAction, AuditSubject};
use stratus_store::objects::Deletion;
use stratus_store::{Resources, StoreError};

use crate::context::Context;
use crate::error::ControllerError;
use crate::events::EventType;

/// Inside its window, a server whose backup waits (its disk changing) or
/// is being copied is looked at again this soon.
const RECHECK_IN_WINDOW: SignedDuration = SignedDuration::from_secs(120);

/// What the server reconciler needs to take backups.
pub struct BackupTaker<'a> {
    pub ctx: &'a Context,
    pub servers: &'a Resources<VirtualServer>,
    pub storage: &'a Resources<StorageSubscription>,
    pub accounts: Option<&'a Resources<Account>>,
    pub defaults: Quota,
    pub window: stratus_core::backups::DailyWindow,
}

impl BackupTaker<'_> {
    /// Takes `server`'s backup when one is due and prunes the oldest;
    /// answers when to look again (none: it takes no backups).
    pub async fn run(&self, server: &VirtualServer) -> Result<Option<Timestamp>, ControllerError> {
        let Some(schedule) = server.spec.backups else {
            return Ok(None);
        };
        // A server held by its account's standing, being deleted, or not
        // running yet takes none; it is looked at again when that changes.
        let status = server.status.clone().unwrap_or_default();
        if server.metadata.deletion_timestamp.is_some()
            || server.spec.hold().is_some()
            || !status.provisioned
            || status.hypervisor.is_none()
        {
            return Ok(None);
        }
        let namespace = server.namespace().unwrap_or_default();
        let name = server.name_any();
        let now = self.ctx.clock.now();
        let (due, next) = self.window.due(&format!("{namespace}/{name}"), now);
        // Outside its window nothing is read: a server is looked at once a
        // day for its backups, and pruned then.
        let Some(slot) = due else {
            return Ok(Some(next));
        };
        let mut backups: Vec<StorageSubscription> = self
            .storage
            .list(Some(&namespace))
            .await?
            .items
            .into_iter()
            .filter(|s| {
                s.spec
                    .snapshot_of
                    .as_ref()
                    .is_some_and(|of| of.backup && of.server == name)
            })
            .collect();
        // Its disk is not copied while it changes; the slot is taken late,
        // within the window, once the change is over.
        let changing = server.rebuilding() || server.resizing() || server.in_rescue();
        if !changing
            && status.last_backup_version < Some(slot.version())
            && !backups
                .iter()
                .any(|b| b.spec.snapshot_of.as_ref().map(|of| of.version) == Some(slot.version()))
        {
            if let Some(taken) = self.take(server, &namespace, &slot).await? {
                backups.push(taken);
            }
            self.record_taken(server, slot.version()).await?;
        }
        let kept: Vec<Kept> = backups
            .iter()
            .filter(|b| b.metadata.deletion_timestamp.is_none())
            .map(|b| Kept {
                name: b.name_any(),
                version: b.spec.snapshot_of.as_ref().map_or(0, |of| of.version),
                state: match snapshot_state(&b.spec, b.status.as_ref()).0 {
                    SnapshotState::Ready => KeptState::Ready,
                    SnapshotState::Failed => KeptState::Failed,
                    SnapshotState::Pending | SnapshotState::Copying => KeptState::Copying,
                },
            })
            .collect();
        let copying_today = kept
            .iter()
            .any(|k| k.version == slot.version() && k.state == KeptState::Copying);
        for old in prune(kept, schedule.keep) {
            match self.storage.delete(Some(&namespace), &old).await {
                Ok(Deletion::Deleted) => {
                    // No finalizer yet: nothing was made of it, and nothing
                    // else gives its charge back.
                    self.ctx
                        .ledger
                        .quotas()
                        .release(&charged_object(&namespace, &old))
                        .await?;
                }
                Ok(Deletion::Pending(_)) | Err(StoreError::NotFound { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            tracing::info!(server = %name, backup = %old, keep = schedule.keep, "an old backup is deleted");
            self.ctx
                .audit(
                    AuditAction::ServerSnapshotDelete,
                    AuditSubject::server(server),
                    json!({ "snapshot": old, "pruned": true, "keep": schedule.keep }),
                )
                .await;
        }
        // Looked at again within the window while today's backup waits for
        // the disk to stop changing or is being copied (the oldest goes
        // once it is ready); else at tomorrow's slot.
        let soon = now.checked_add(RECHECK_IN_WINDOW).unwrap_or(next);
        Ok(Some(if (changing || copying_today) && soon < slot.until {
            soon
        } else {
            next
        }))
    }

    /// Records on the server that `version`'s slot was dealt with (taken,
    /// or skipped for want of quota): only the server reconciler writes
    /// its status, one reconcile of it at a time.
    async fn record_taken(
        &self,
        server: &VirtualServer,
        version: u64,
    ) -> Result<(), ControllerError> {
        let namespace = server.namespace();
        let Some(fresh) = self
            .servers
            .get(namespace.as_deref(), &server.name_any())
            .await?
        else {
            return Ok(());
        };
        let mut status = fresh.status.unwrap_or_default();
        if status.last_backup_version >= Some(version) {
            return Ok(());
        }
        status.last_backup_version = Some(version);
        self.servers
            .patch_status(namespace.as_deref(), &server.name_any(), &status)
            .await?;
        Ok(())
    }

    /// Charges and creates the backup of `slot`; none when the account's
    /// `snapshotGib` quota has no room (said as an event and in the audit).
    async fn take(
        &self,
        server: &VirtualServer,
        namespace: &str,
        slot: &Slot,
    ) -> Result<Option<StorageSubscription>, ControllerError> {
        let name = server.name_any();
        let status = server.status.clone().unwrap_or_default();
        let object = slot.object_name(&format!("{namespace}/{name}"));
        let disk_gib = status
            .applied
            .as_ref()
            .map_or(server.spec.resources.disk_gib, |a| a.resources.disk_gib);
        let quota = match self.accounts {
            Some(accounts) => accounts
                .get(None, namespace)
                .await?
                .and_then(|a| a.spec.quota)
                .unwrap_or_default()
                .or(self.defaults),
            None => self.defaults,
        };
        let charged_as = charged_object(namespace, &object);
        let charge = self
            .ctx
            .ledger
            .quotas()
            .charge(
                namespace,
                &charged_as,
                Usage::of_snapshot(disk_gib),
                quota,
                self.ctx.clock.now().as_millisecond(),
            )
            .await?;
        if let Err(exceeded) = charge {
            let reason = format!(
                "the backup of {} was not taken: {exceeded}",
                slot.display_name()
            );
            tracing::warn!(server = %name, %reason, "backup skipped");
            self.ctx
                .publish(
                    server,
                    EventType::Warning,
                    EventReason::SnapshotFailed,
                    &reason,
                )
                .await;
            self.ctx
                .audit(
                    AuditAction::ServerSnapshotFailed,
                    AuditSubject::server(server),
                    json!({ "server": name, "backup": slot.display_name(), "reason": reason }),
                )
                .await;
            return Ok(None);
        }
        let backup = StorageSubscription {
            metadata: ObjectMeta {
                name: Some(object.clone()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            spec: StorageSubscriptionSpec::snapshot(
                slot.display_name(),
                disk_gib,
                SnapshotOf {
                    server: name.clone(),
                    image: server.image().to_owned(),
                    instance_generation: status
                        .instance_generation
                        .unwrap_or(status.disk_generation),
                    version: slot.version(),
                    backup: true,
                },
            ),
            status: None,
        };
        let created = match self.storage.create(&backup).await {
            Ok(created) => created,
            // Another controller (or this one before a restart) made it:
            // the charge above is the same charge, made once.
            Err(StoreError::AlreadyExists { .. }) => return Ok(None),
            Err(other) => {
                if let Err(error) = self.ctx.ledger.quotas().release(&charged_as).await {
                    tracing::warn!(%error, resource = %charged_as, "could not give back the charge of a backup not made");
                }
                return Err(other.into());
            }
        };
        tracing::info!(server = %name, backup = %object, "daily backup taken");
        self.ctx
            .audit(
                AuditAction::ServerSnapshot,
                AuditSubject::server(server),
                json!({ "snapshot": object, "name": slot.display_name(), "size_gib": disk_gib,
                        "image": server.image(), "backup": true }),
            )
            .await;
        Ok(Some(created))
    }
}
