//! The embedded resource store: objects as JSON documents in SQLite or
//! PostgreSQL, with Kubernetes semantics (see [`crate::objects`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};
use sqlx::{Any, Row, Transaction};
use stratus_core::Clock;
use tokio::sync::watch;

use crate::db::Database;
use crate::error::{Result, StoreError};
use crate::objects::{
    Deletion, KindInfo, MAX_PAGE_SIZE, ObjectList, ObjectPage, ObjectStore, WatchEvent,
};

/// How often a watcher looks for changes written by another process; writes
/// made through this store wake watchers at once.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
const WATCH_BATCH: i64 = 256;

#[derive(Clone)]
pub struct SqlObjectStore {
    db: Database,
    revision: watch::Sender<u64>,
    poll_interval: Duration,
    /// Stamps creation and deletion times, as the API server does.
    clock: Arc<dyn Clock>,
}

impl SqlObjectStore {
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            revision: watch::Sender::new(0),
            poll_interval: DEFAULT_POLL_INTERVAL,
            clock,
        }
    }

    fn now_string(&self) -> String {
        // The Kubernetes wire format: seconds precision, UTC.
        self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Starts a write: takes the next revision, which also makes this
    /// transaction the only writer until it ends (so revisions commit in order).
    async fn begin_write(&self) -> Result<(Transaction<'static, Any>, i64)> {
        let mut tx = self.db.pool().begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE store_revision SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, revision))
    }

    async fn commit(&self, tx: Transaction<'static, Any>, revision: i64) -> Result<()> {
        tx.commit().await?;
        self.revision.send_if_modified(|current| {
            let revision = revision.max(0) as u64;
            if revision > *current {
                *current = revision;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Forgets tombstones at or below `revision`; watchers older than that must relist.
    pub async fn compact(&self, revision: u64) -> Result<u64> {
        let revision = i64::try_from(revision)
            .map_err(|_| StoreError::Invalid("revision too large".into()))?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("UPDATE store_revision SET compacted = $1 WHERE id = 1 AND compacted < $1")
            .bind(revision)
            .execute(&mut *tx)
            .await?;
        let removed =
            sqlx::query("DELETE FROM objects WHERE deleted = 1 AND resource_version <= $1")
                .bind(revision)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(removed)
    }

    pub async fn current_revision(&self) -> Result<u64> {
        let value: i64 = sqlx::query_scalar("SELECT value FROM store_revision WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        Ok(value.max(0) as u64)
    }
}

struct Key<'a> {
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
}

/// The key a page ended at, from the token `list_page` handed out
/// (`namespace/name`; namespaces never hold a `/`). A token
/// for another namespace than the one listed is refused rather than obeyed.
fn parse_continue<'a>(token: &'a str, namespace: Option<&str>) -> Result<(&'a str, &'a str)> {
    let invalid = || StoreError::InvalidContinue("not a token this store handed out".into());
    let (token_namespace, name) = token.split_once('/').ok_or_else(invalid)?;
    if name.is_empty() || name.len() > 253 || token_namespace.len() > 253 {
        return Err(invalid());
    }
    if namespace.is_some_and(|ns| ns != token_namespace) {
        return Err(StoreError::InvalidContinue(
            "the token belongs to a listing of another namespace".into(),
        ));
    }
    Ok((token_namespace, name))
}

fn key<'a>(kind: &'a KindInfo, namespace: Option<&'a str>, name: &'a str) -> Result<Key<'a>> {
    let namespace = match (kind.namespaced, namespace) {
        (true, Some(ns)) if !ns.is_empty() => ns,
        (true, _) => {
            return Err(StoreError::Invalid(format!(
                "{} is namespaced: a namespace is required",
                kind.kind
            )));
        }
        (false, None) => "",
        (false, Some(ns)) => {
            return Err(StoreError::Invalid(format!(
                "{} is cluster-scoped: namespace {ns:?} not allowed",
                kind.kind
            )));
        }
    };
    if name.is_empty() || name.len() > 253 {
        return Err(StoreError::Invalid(
            "metadata.name must be 1-253 characters".into(),
        ));
    }
    Ok(Key {
        kind: &kind.kind,
        namespace,
        name,
    })
}

fn metadata(object: &Value) -> Result<&Map<String, Value>> {
    object
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| StoreError::Invalid("metadata is required".into()))
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid("metadata is required".into()))
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn has_finalizers(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn not_found(key: &Key<'_>) -> StoreError {
    StoreError::NotFound {
        kind: key.kind.to_owned(),
        name: qualified(key),
    }
}

fn qualified(key: &Key<'_>) -> String {
    if key.namespace.is_empty() {
        key.name.to_owned()
    } else {
        format!("{}/{}", key.namespace, key.name)
    }
}

struct StoredRow {
    body: Value,
    deleted: bool,
}

async fn fetch_row(tx: &mut Transaction<'static, Any>, key: &Key<'_>) -> Result<Option<StoredRow>> {
    let row = sqlx::query(
        "SELECT body, deleted FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3",
    )
    .bind(key.kind)
    .bind(key.namespace)
    .bind(key.name)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| {
        let body: String = row.try_get("body")?;
        let deleted: i32 = row.try_get("deleted")?;
        Ok(StoredRow {
            body: serde_json::from_str(&body)?,
            deleted: deleted != 0,
        })
    })
    .transpose()
}

/// The live object at `key`, or NotFound (tombstones are not live).
async fn fetch_live(tx: &mut Transaction<'static, Any>, key: &Key<'_>) -> Result<Value> {
    match fetch_row(tx, key).await? {
        Some(StoredRow {
            body,
            deleted: false,
        }) => Ok(body),
        _ => Err(not_found(key)),
    }
}

fn set_resource_version(object: &mut Value, revision: i64) -> Result<()> {
    metadata_mut(object)?.insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
    Ok(())
}

async fn write_row(
    tx: &mut Transaction<'static, Any>,
    key: &Key<'_>,
    body: &Value,
    revision: i64,
    deleted: bool,
) -> Result<()> {
    sqlx::query("UPDATE objects SET body = $1, resource_version = $2, deleted = $3 WHERE kind = $4 AND namespace = $5 AND name = $6")
        .bind(serde_json::to_string(body)?)
        .bind(revision)
        .bind(i32::from(deleted))
        .bind(key.kind)
        .bind(key.namespace)
        .bind(key.name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl ObjectStore for SqlObjectStore {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let key = key(kind, namespace, name)?;
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3 AND deleted = 0")
                .bind(key.kind)
                .bind(key.namespace)
                .bind(key.name)
                .fetch_optional(self.db.pool())
                .await?;
        body.map(|b| serde_json::from_str(&b).map_err(StoreError::from))
            .transpose()
    }

    async fn list(&self, kind: &KindInfo, namespace: Option<&str>) -> Result<ObjectList<Value>> {
        // Revision first: anything committed after it shows up again in a
        // watch from it, which level-triggered consumers tolerate.
        let resource_version = self.current_revision().await?;
        let rows: Vec<String> = match namespace {
            Some(ns) => sqlx::query_scalar("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND deleted = 0 ORDER BY name")
                .bind(&kind.kind)
                .bind(ns)
                .fetch_all(self.db.pool())
                .await?,
            None => sqlx::query_scalar("SELECT body FROM objects WHERE kind = $1 AND deleted = 0 ORDER BY namespace, name")
                .bind(&kind.kind)
                .fetch_all(self.db.pool())
                .await?,
        };
        Ok(ObjectList {
            items: rows
                .iter()
                .map(|b| serde_json::from_str(b))
                .collect::<Result<_, _>>()?,
            resource_version: resource_version.to_string(),
        })
    }

    async fn list_page(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ObjectPage<Value>> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let (after_namespace, after_name) = match continue_token {
            Some(token) => parse_continue(token, namespace)?,
            None => (namespace.unwrap_or(""), ""),
        };
        // One row more than the page tells whether another page follows.
        // Keyset reads along the primary key (kind, namespace, name): page
        // 1 000 costs what page 1 does.
        let fetch = i64::from(limit) + 1;
        let rows: Vec<String> = match namespace {
            Some(ns) => sqlx::query_scalar("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND name > $3 AND deleted = 0 ORDER BY name LIMIT $4")
                .bind(&kind.kind)
                .bind(ns)
                .bind(after_name)
                .bind(fetch)
                .fetch_all(self.db.pool())
                .await?,
            None => sqlx::query_scalar("SELECT body FROM objects WHERE kind = $1 AND (namespace > $2 OR (namespace = $2 AND name > $3)) AND deleted = 0 ORDER BY namespace, name LIMIT $4")
                .bind(&kind.kind)
                .bind(after_namespace)
                .bind(after_name)
                .bind(fetch)
                .fetch_all(self.db.pool())
                .await?,
        };
        let more = rows.len() > limit as usize;
        let items: Vec<Value> = rows
            .iter()
            .take(limit as usize)
            .map(|body| serde_json::from_str(body))
            .collect::<Result<_, _>>()?;
        // The stored document carries its own key.
        let continue_token = match items.last() {
            Some(last) if more => {
                let meta = |field: &str| {
                    last.pointer(&format!("/metadata/{field}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                Some(format!("{}/{}", meta("namespace"), meta("name")))
            }
            _ => None,
        };
        Ok(ObjectPage {
            items,
            continue_token,
        })
    }

    async fn find_by_name(&self, kind: &KindInfo, name: &str) -> Result<Vec<Value>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM objects WHERE kind = $1 AND name = $2 AND deleted = 0 ORDER BY namespace",
        )
        .bind(&kind.kind)
        .bind(name)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    async fn create(&self, kind: &KindInfo, mut object: Value) -> Result<Value> {
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let namespace = meta_str(&object, "namespace").map(str::to_owned);
        let key = key(kind, namespace.as_deref(), &name)?;
        let (mut tx, revision) = self.begin_write().await?;
        let existing = fetch_row(&mut tx, &key).await?;
        if existing.as_ref().is_some_and(|row| !row.deleted) {
            return Err(StoreError::AlreadyExists {
                kind: kind.kind.clone(),
                name: qualified(&key),
            });
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let meta = metadata_mut(&mut object)?;
        meta.insert("uid".into(), Value::String(uid.clone()));
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
        meta.insert("generation".into(), Value::from(1));
        meta.insert("creationTimestamp".into(), Value::String(self.now_string()));
        meta.remove("deletionTimestamp");
        let body = serde_json::to_string(&object)?;
        sqlx::query(
            "INSERT INTO objects (kind, namespace, name, uid, resource_version, created_revision, deleted, body) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7) \
             ON CONFLICT (kind, namespace, name) DO UPDATE SET uid = $4, resource_version = $5, created_revision = $6, deleted = 0, body = $7",
        )
        .bind(key.kind)
        .bind(key.namespace)
        .bind(key.name)
        .bind(&uid)
        .bind(revision)
        .bind(revision)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        self.commit(tx, revision).await?;
        Ok(object)
    }

    async fn replace(&self, kind: &KindInfo, object: Value) -> Result<Value> {
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let namespace = meta_str(&object, "namespace").map(str::to_owned);
        let key = key(kind, namespace.as_deref(), &name)?;
        let expected = meta_str(&object, "resourceVersion")
            .ok_or_else(|| {
                StoreError::Invalid("metadata.resourceVersion is required to replace".into())
            })?
            .to_owned();
        let (mut tx, revision) = self.begin_write().await?;
        let current = fetch_live(&mut tx, &key).await?;
        if meta_str(&current, "resourceVersion") != Some(expected.as_str()) {
            return Err(StoreError::Conflict {
                kind: kind.kind.clone(),
                name: qualified(&key),
                expected,
            });
        }
        let mut updated = current.clone();
        updated["spec"] = object.get("spec").cloned().unwrap_or(Value::Null);
        let spec_changed = updated.get("spec") != current.get("spec");
        let incoming = metadata(&object)?;
        let meta = metadata_mut(&mut updated)?;
        for field in ["labels", "annotations", "finalizers"] {
            match incoming.get(field) {
                Some(value) if !value.is_null() => meta.insert(field.into(), value.clone()),
                _ => meta.remove(field),
            };
        }
        if spec_changed {
            let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
            meta.insert("generation".into(), Value::from(generation + 1));
        }
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
        let vanishing = meta.contains_key("deletionTimestamp") && !has_finalizers(&updated);
        write_row(&mut tx, &key, &updated, revision, vanishing).await?;
        self.commit(tx, revision).await?;
        Ok(updated)
    }

    async fn patch_status(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value> {
        let key = key(kind, namespace, name)?;
        let (mut tx, revision) = self.begin_write().await?;
        let mut object = fetch_live(&mut tx, &key).await?;
        if object.get("status") == Some(&status) {
            // Nothing changed: keep the revision, wake nobody.
            return Ok(object);
        }
        object["status"] = status;
        set_resource_version(&mut object, revision)?;
        write_row(&mut tx, &key, &object, revision, false).await?;
        self.commit(tx, revision).await?;
        Ok(object)
    }

    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Deletion<Value>> {
        let key = key(kind, namespace, name)?;
        let (mut tx, revision) = self.begin_write().await?;
        let mut object = fetch_live(&mut tx, &key).await?;
        if has_finalizers(&object) {
            if meta_str(&object, "deletionTimestamp").is_some() {
                return Ok(Deletion::Pending(object));
            }
            let meta = metadata_mut(&mut object)?;
            meta.insert("deletionTimestamp".into(), Value::String(self.now_string()));
            meta.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
            write_row(&mut tx, &key, &object, revision, false).await?;
            self.commit(tx, revision).await?;
            return Ok(Deletion::Pending(object));
        }
        set_resource_version(&mut object, revision)?;
        write_row(&mut tx, &key, &object, revision, true).await?;
        self.commit(tx, revision).await?;
        Ok(Deletion::Deleted)
    }

    fn watch(
        &self,
        kind: &KindInfo,
        resource_version: &str,
    ) -> BoxStream<'static, Result<WatchEvent<Value>>> {
        let Ok(since) = resource_version.parse::<u64>() else {
            let error = StoreError::Invalid(format!(
                "resourceVersion {resource_version:?} is not one this store issued"
            ));
            return stream::once(async move { Err(error) }).boxed();
        };
        struct State {
            store: SqlObjectStore,
            kind: String,
            since: u64,
            pending: VecDeque<WatchEvent<Value>>,
            wake: watch::Receiver<u64>,
            failed: bool,
        }
        let state = State {
            store: self.clone(),
            kind: kind.kind.clone(),
            since,
            pending: VecDeque::new(),
            wake: self.revision.subscribe(),
            failed: false,
        };
        stream::unfold(state, |mut state| async move {
            if state.failed {
                return None;
            }
            loop {
                if let Some(event) = state.pending.pop_front() {
                    return Some((Ok(event), state));
                }
                match poll_changes(&state.store, &state.kind, state.since).await {
                    Ok(events) if events.is_empty() => {
                        state.wake.mark_unchanged();
                        let _ =
                            tokio::time::timeout(state.store.poll_interval, state.wake.changed())
                                .await;
                    }
                    Ok(events) => {
                        for (revision, event) in events {
                            state.since = revision;
                            state.pending.push_back(event);
                        }
                    }
                    Err(error) => {
                        state.failed = true;
                        return Some((Err(error), state));
                    }
                }
            }
        })
        .boxed()
    }
}

async fn poll_changes(
    store: &SqlObjectStore,
    kind: &str,
    since: u64,
) -> Result<Vec<(u64, WatchEvent<Value>)>> {
    let compacted: i64 = sqlx::query_scalar("SELECT compacted FROM store_revision WHERE id = 1")
        .fetch_one(store.db.pool())
        .await?;
    if (since as i64) < compacted {
        return Err(StoreError::Gone(since.to_string()));
    }
    let rows = sqlx::query(
        "SELECT body, deleted, created_revision, resource_version FROM objects \
         WHERE kind = $1 AND resource_version > $2 ORDER BY resource_version LIMIT $3",
    )
    .bind(kind)
    .bind(since as i64)
    .bind(WATCH_BATCH)
    .fetch_all(store.db.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            let body: String = row.try_get("body")?;
            let deleted: i32 = row.try_get("deleted")?;
            let created: i64 = row.try_get("created_revision")?;
            let revision: i64 = row.try_get("resource_version")?;
            let object: Value = serde_json::from_str(&body)?;
            let event = if deleted != 0 {
                WatchEvent::Deleted(object)
            } else if created > since as i64 {
                WatchEvent::Added(object)
            } else {
                WatchEvent::Modified(object)
            };
            Ok((revision.max(0) as u64, event))
        })
        .collect()
}
