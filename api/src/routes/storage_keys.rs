//! Customers' keys to `luks` subscriptions (R25). A key lives only in
//! this process's memory while it is on its way to the hypervisor: the
//! order's key until the primary copy is formatted with it, an attach's
//! key until the agent loaded it. Nothing here stores, logs or audits a
//! key, nor a digest of one.

use std::time::Duration;

use serde_json::json;
use stratus_core::agent_api::VolumeKey;
use stratus_core::ids::{self, AccountId, StorageId};
use stratus_core::resources::{StorageContent, StorageEncryption, StorageSubscription};
use stratus_store::ledger::{Actor, AuditAction, AuditSubject};

use crate::error::ApiError;
use crate::state::{ApiState, ContentError};

/// How long an order's key waits in memory for the primary copy to be
/// placed and created before it is dropped (the first attach then gives
/// it again).
const FORMAT_WAIT: Duration = Duration::from_secs(30 * 60);
/// How often a waiting format looks at its subscription again: soon
/// after the order, then less often (many orders may wait for room).
const FORMAT_POLL_FIRST: Duration = Duration::from_millis(250);
const FORMAT_POLL_AT_MOST: Duration = Duration::from_secs(5);
/// The pause after a hypervisor did not answer a format.
const FORMAT_RETRY: Duration = Duration::from_secs(5);

/// Checks a key given to a subscription of `encryption`, naming the field.
pub fn check_key(encryption: StorageEncryption, key: Option<&VolumeKey>) -> Result<(), ApiError> {
    match (encryption, key) {
        (StorageEncryption::Client, None) => Ok(()),
        (StorageEncryption::Client, Some(_)) => Err(ApiError::bad_request(
            "key",
            "only a luks subscription takes a key; with client encryption stratus never sees one",
        )),
        (StorageEncryption::Luks, None) => Err(ApiError::bad_request(
            "key",
            "a luks subscription needs its key: stratus never keeps it, so it is given to every order and attach",
        )),
        (StorageEncryption::Luks, Some(key)) => key
            .check()
            .map_err(|message| ApiError::invalid("key", message)),
    }
}

/// What a refusal of a key by the agent means to the customer.
pub fn key_error(error: ContentError) -> ApiError {
    match error {
        ContentError::WrongKey => ApiError::invalid(
            "key",
            "the key does not open this subscription's volume; nothing was changed",
        ),
        ContentError::Unavailable(message) => ApiError::unavailable(format!(
            "the primary copy's hypervisor did not answer: {message}"
        )),
        ContentError::Conflict(message) => ApiError::conflict(message),
        ContentError::TooLarge => ApiError::internal("a format cannot be too large"),
    }
}

/// Whether the primary copy of `subscription` is being formatted by this
/// process.
pub fn formatting(state: &ApiState, subscription: &StorageSubscription) -> bool {
    state
        .formatting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&subscription.metadata.name.clone().unwrap_or_default())
}

/// Formats the primary copy of a `luks` subscription with `key` once both
/// copies exist, in the background; the formatted version is recorded as
/// the content like an upload, and the controller copies it to the
/// secondary. Answers false when a format of it already runs here.
pub fn start_formatting(
    state: &ApiState,
    account_id: &AccountId,
    id: &StorageId,
    key: VolumeKey,
    actor: Actor,
) -> bool {
    {
        let mut running = state.formatting.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(id.to_string()) {
            return false;
        }
    }
    let state = state.clone();
    let (account_id, id) = (account_id.clone(), id.clone());
    let span = tracing::info_span!("format_luks", storage = %id, account = %account_id);
    let task = async move {
        let outcome = format_when_placed(&state, &account_id, &id, &key, actor).await;
        if let Err(why) = outcome {
            tracing::warn!(storage = %id, %why, "a luks subscription was not formatted; its key was dropped and is asked for again at its first attach");
        }
        state
            .formatting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id.as_str());
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    true
}

async fn format_when_placed(
    state: &ApiState,
    account_id: &AccountId,
    id: &StorageId,
    key: &VolumeKey,
    actor: Actor,
) -> Result<(), String> {
    let contents = state
        .contents
        .clone()
        .ok_or("this process cannot reach the agents")?;
    let deadline = tokio::time::Instant::now() + FORMAT_WAIT;
    let mut poll = FORMAT_POLL_FIRST;
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err("its copies were not created in time".to_owned());
        }
        let subscription = state
            .storage
            .get(Some(account_id.as_str()), id.as_str())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the subscription is gone")?;
        if subscription.metadata.deletion_timestamp.is_some() {
            return Err("the subscription is being deleted".to_owned());
        }
        if subscription.spec.content.is_some() {
            return Ok(());
        }
        let status = subscription.status.clone().unwrap_or_default();
        let primary = status
            .replicas
            .first()
            .filter(|_| status.replicas.iter().all(|r| r.created));
        let Some(primary) = primary else {
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(FORMAT_POLL_AT_MOST);
            continue;
        };
        let version = u64::try_from(state.now_millis()).unwrap_or(0).max(1);
        let name = ids::domain_name(account_id.as_str(), id.as_str());
        let stored = match contents
            .format(
                primary.hypervisor.as_str(),
                &name,
                version,
                subscription.spec.size_gib,
                key,
            )
            .await
        {
            Ok(stored) => stored,
            Err(ContentError::Unavailable(why)) | Err(ContentError::Conflict(why)) => {
                tracing::warn!(storage = %id, %why, "formatting the primary copy failed; trying again");
                tokio::time::sleep(FORMAT_RETRY).await;
                continue;
            }
            Err(other) => return Err(format!("{other:?}")),
        };
        let formatted = StorageContent {
            version,
            bytes: stored.bytes,
            sha256: stored.sha256,
            written_at: state.clock.now().to_string(),
        };
        let recorded = formatted.clone();
        let updated = state
            .storage
            .update(Some(account_id.as_str()), id.as_str(), move |s| {
                if s.spec.content.is_some() {
                    return false;
                }
                s.spec.content = Some(recorded.clone());
                true
            })
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the subscription is gone")?;
        if updated.spec.content.as_ref() != Some(&formatted) {
            // Formatted twice (by another process): the controller deletes
            // the version no content names.
            return Ok(());
        }
        state
            .audit(
                actor,
                AuditAction::StorageFormatted,
                AuditSubject::storage(&updated),
                json!({ "version": formatted.version, "bytes": formatted.bytes, "sha256": formatted.sha256 }),
            )
            .await;
        tracing::info!(storage = %id, version, "formatted the primary copy as LUKS");
        return Ok(());
    }
}
