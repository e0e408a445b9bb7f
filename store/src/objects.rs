//! The resource store contract, mirroring the Kubernetes API semantics that
//! matter to stratus, so the embedded backend and the Kubernetes backend are
//! interchangeable.
//!
//! * every write bumps `metadata.resourceVersion`; `replace` with a stale one
//!   fails with [`StoreError::Conflict`];
//! * `metadata.generation` moves only when the spec changes;
//! * deleting an object with finalizers only sets `deletionTimestamp`; it goes
//!   away when the last finalizer is removed;
//! * `watch` streams changes after a revision; a revision older than the kept
//!   history fails with [`StoreError::Gone`] and the watcher relists. A
//!   watcher that reads late may see several changes of one object as one
//!   event carrying its latest state (what a relisting kube watcher sees too);
//!   consumers are level-triggered and must not count events.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Result, StoreError};

/// Identity of a kind, enough for any backend to address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: String,
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespaced: bool,
}

impl KindInfo {
    pub fn of<K>() -> Self
    where
        K: Resource<DynamicType = ()>,
        K::Scope: 'static,
    {
        Self {
            kind: K::kind(&()).into_owned(),
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        }
    }
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Nothing changed up to this revision.
    Bookmark(String),
}

/// A list answer with the revision it is consistent at.
#[derive(Debug, Clone)]
pub struct ObjectList<T> {
    pub items: Vec<T>,
    /// Opaque (as in Kubernetes): pass it back to `watch`, never compare it.
    pub resource_version: String,
}

/// One page of a list, in key order (namespace, then name).
#[derive(Debug, Clone)]
pub struct ObjectPage<T> {
    pub items: Vec<T>,
    /// Opaque: pass it back to `list_page` for the next page; `None` on the
    /// last page. Unlike a full list, the pages are not one snapshot: objects
    /// created or deleted while paging may or may not appear.
    pub continue_token: Option<String>,
}

/// The most objects one page may hold, whatever the caller asks for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// What a delete call did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion<T> {
    /// Finalizers remain: the object now carries a deletion timestamp.
    Pending(T),
    /// The object is gone.
    Deleted,
}

/// The untyped store operations a backend implements. Objects are JSON
/// documents in the Kubernetes shape (`apiVersion`, `kind`, `metadata`,
/// `spec`, `status`).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>>;
    /// All live objects of a kind, in one namespace or in all of them.
    async fn list(&self, kind: &KindInfo, namespace: Option<&str>) -> Result<ObjectList<Value>>;
    /// At most `limit` (capped at [`MAX_PAGE_SIZE`]) live objects of a kind
    /// after `continue_token`, read from the database or the API server page
    /// by page rather than all at once. A token this backend did not hand
    /// out, or one that expired, fails with [`StoreError::InvalidContinue`].
    async fn list_page(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ObjectPage<Value>>;
    /// The live objects called `name`, in whichever namespaces hold one: an
    /// operator's look-up of one object without listing every object.
    async fn find_by_name(&self, kind: &KindInfo, name: &str) -> Result<Vec<Value>>;
    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value>;
    /// Replaces metadata and spec (status is kept); `metadata.resourceVersion` must be current.
    async fn replace(&self, kind: &KindInfo, object: Value) -> Result<Value>;
    /// Replaces the status only, whatever the resourceVersion (status has one writer: the controller).
    async fn patch_status(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value>;
    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Deletion<Value>>;
    /// Makes sure namespace `name` exists (each account's resources live in
    /// their own). The embedded store needs nothing for that.
    async fn ensure_namespace(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Changes of a kind strictly after `resource_version`.
    fn watch(
        &self,
        kind: &KindInfo,
        resource_version: &str,
    ) -> BoxStream<'static, Result<WatchEvent<Value>>>;
}

/// Bound for every kind the store handles.
pub trait StoredKind:
    Resource<DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
where
    Self::Scope: 'static,
{
}

impl<K> StoredKind for K
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
    K::Scope: 'static,
{
}

/// Typed access to one kind, in the manner of kube-rs's `Api<K>`.
pub struct Resources<K> {
    store: Arc<dyn ObjectStore>,
    kind: KindInfo,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Resources<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            kind: self.kind.clone(),
            _kind: PhantomData,
        }
    }
}

fn decode<K: DeserializeOwned>(value: Value) -> Result<K> {
    Ok(serde_json::from_value(value)?)
}

/// How many times a read-modify-write is retried on a conflict.
const CONFLICT_RETRIES: usize = 30;

impl<K> Resources<K>
where
    K: StoredKind,
    K::Scope: 'static,
{
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            kind: KindInfo::of::<K>(),
            _kind: PhantomData,
        }
    }

    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        self.store.ensure_namespace(name).await
    }

    pub fn kind(&self) -> &KindInfo {
        &self.kind
    }

    pub async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>> {
        self.store
            .get(&self.kind, namespace, name)
            .await?
            .map(decode)
            .transpose()
    }

    pub async fn list(&self, namespace: Option<&str>) -> Result<ObjectList<K>> {
        let list = self.store.list(&self.kind, namespace).await?;
        Ok(ObjectList {
            items: list.items.into_iter().map(decode).collect::<Result<_>>()?,
            resource_version: list.resource_version,
        })
    }

    /// One page of objects; see [`ObjectStore::list_page`].
    pub async fn list_page(
        &self,
        namespace: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ObjectPage<K>> {
        let page = self
            .store
            .list_page(&self.kind, namespace, limit, continue_token)
            .await?;
        Ok(ObjectPage {
            items: page.items.into_iter().map(decode).collect::<Result<_>>()?,
            continue_token: page.continue_token,
        })
    }

    /// Objects called `name` in any namespace.
    pub async fn find_by_name(&self, name: &str) -> Result<Vec<K>> {
        let found = self.store.find_by_name(&self.kind, name).await?;
        found.into_iter().map(decode).collect()
    }

    pub async fn create(&self, object: &K) -> Result<K> {
        let mut value = serde_json::to_value(object)?;
        value["apiVersion"] = Value::String(K::api_version(&()).into_owned());
        value["kind"] = Value::String(self.kind.kind.clone());
        decode(self.store.create(&self.kind, value).await?)
    }

    pub async fn replace(&self, object: &K) -> Result<K> {
        decode(
            self.store
                .replace(&self.kind, serde_json::to_value(object)?)
                .await?,
        )
    }

    pub async fn patch_status<S: Serialize>(
        &self,
        namespace: Option<&str>,
        name: &str,
        status: &S,
    ) -> Result<K> {
        let status = serde_json::to_value(status)?;
        decode(
            self.store
                .patch_status(&self.kind, namespace, name, status)
                .await?,
        )
    }

    pub async fn delete(&self, namespace: Option<&str>, name: &str) -> Result<Deletion<K>> {
        Ok(
            match self.store.delete(&self.kind, namespace, name).await? {
                Deletion::Pending(value) => Deletion::Pending(decode(value)?),
                Deletion::Deleted => Deletion::Deleted,
            },
        )
    }

    /// Applies `change` to the current object and replaces it, retrying on
    /// conflicts. `change` returns false when there is nothing to do.
    pub async fn update(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut change: impl FnMut(&mut K) -> bool,
    ) -> Result<Option<K>> {
        for attempt in 0..CONFLICT_RETRIES as u64 {
            let Some(mut object) = self.get(namespace, name).await? else {
                return Ok(None);
            };
            if !change(&mut object) {
                return Ok(Some(object));
            }
            match self.replace(&object).await {
                Ok(updated) => return Ok(Some(updated)),
                Err(StoreError::Conflict { .. }) => {
                    // Jittered backoff so contending writers spread out.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8);
                    tokio::time::sleep(Duration::from_millis(attempt * 4 + jitter)).await;
                }
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict {
            kind: self.kind.kind.clone(),
            name: name.to_owned(),
            expected: "latest (retries exhausted)".to_owned(),
        })
    }

    /// Adds `finalizer` if absent.
    pub async fn add_finalizer(
        &self,
        namespace: Option<&str>,
        name: &str,
        finalizer: &str,
    ) -> Result<Option<K>> {
        self.update(namespace, name, |object| {
            let finalizers = object.meta_mut().finalizers.get_or_insert_with(Vec::new);
            if finalizers.iter().any(|f| f == finalizer) {
                return false;
            }
            finalizers.push(finalizer.to_owned());
            true
        })
        .await
    }

    /// Removes `finalizer`; the object disappears when it was the last one
    /// on an object being deleted.
    pub async fn remove_finalizer(
        &self,
        namespace: Option<&str>,
        name: &str,
        finalizer: &str,
    ) -> Result<()> {
        self.update(namespace, name, |object| {
            let finalizers = object.meta_mut().finalizers.get_or_insert_with(Vec::new);
            let before = finalizers.len();
            finalizers.retain(|f| f != finalizer);
            finalizers.len() != before
        })
        .await?;
        Ok(())
    }

    pub fn watch(
        &self,
        resource_version: &str,
    ) -> impl Stream<Item = Result<WatchEvent<K>>> + Send + 'static {
        self.store.watch(&self.kind, resource_version).map(|event| {
            Ok(match event? {
                WatchEvent::Added(v) => WatchEvent::Added(decode(v)?),
                WatchEvent::Modified(v) => WatchEvent::Modified(decode(v)?),
                WatchEvent::Deleted(v) => WatchEvent::Deleted(decode(v)?),
                WatchEvent::Bookmark(rv) => WatchEvent::Bookmark(rv),
            })
        })
    }

    /// List then watch, relisting when the watch falls behind the kept
    /// history or fails, like kube-rs's `watcher`. The first items are the
    /// listed objects as `Added`; errors are retried after `retry_delay`.
    pub fn watcher(
        &self,
        retry_delay: Duration,
    ) -> impl Stream<Item = WatchEvent<K>> + Send + 'static {
        let api = self.clone();
        list_then_watch(api, retry_delay)
    }
}

/// Drives list+watch as a stream: resumes from the last seen version when a
/// watch ends (API servers close them after a while) or fails, relists when
/// that version is too old.
fn list_then_watch<K>(
    api: Resources<K>,
    retry_delay: Duration,
) -> impl Stream<Item = WatchEvent<K>> + Send + 'static
where
    K: StoredKind,
    K::Scope: 'static,
{
    enum State<K> {
        List,
        Resume(String),
        Watch(String, BoxStream<'static, Result<WatchEvent<K>>>),
    }
    futures::stream::unfold((api, State::<K>::List), move |(api, mut state)| async move {
        loop {
            state = match state {
                State::List => match api.list(None).await {
                    Ok(list) => {
                        let stream = api.watch(&list.resource_version).boxed();
                        let events: Vec<WatchEvent<K>> =
                            list.items.into_iter().map(WatchEvent::Added).collect();
                        return Some((events, (api, State::Watch(list.resource_version, stream))));
                    }
                    Err(error) => {
                        tracing::warn!(kind = %api.kind.kind, %error, "list failed; retrying");
                        tokio::time::sleep(retry_delay).await;
                        State::List
                    }
                },
                State::Resume(version) => {
                    let stream = api.watch(&version).boxed();
                    State::Watch(version, stream)
                }
                State::Watch(version, mut stream) => match stream.next().await {
                    Some(Ok(event)) => {
                        let seen = match &event {
                            WatchEvent::Bookmark(version) => Some(version.clone()),
                            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                                o.meta().resource_version.clone()
                            }
                        };
                        let version = seen.unwrap_or(version);
                        return Some((vec![event], (api, State::Watch(version, stream))));
                    }
                    Some(Err(StoreError::Gone(_))) => {
                        tracing::info!(kind = %api.kind.kind, "watch history expired; relisting");
                        State::List
                    }
                    Some(Err(error)) => {
                        tracing::info!(kind = %api.kind.kind, %error, "watch interrupted; resuming");
                        tokio::time::sleep(retry_delay).await;
                        State::Resume(version)
                    }
                    None => State::Resume(version),
                },
            };
        }
    })
    .flat_map(futures::stream::iter)
}
