//! The Kubernetes backend of the resource store: the same objects as CRDs in
//! an API server, through kube-rs. Status is written with server-side apply
//! under one field manager; conflicts, absences and validation failures map
//! onto the store's errors so code above cannot tell the backends apart.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryFutureExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchParams,
};
use kube::core::WatchEvent as KubeWatchEvent;
use serde_json::{Value, json};

use crate::error::{Result, StoreError};
use crate::objects::{
    Deletion, KindInfo, MAX_PAGE_SIZE, ObjectList, ObjectPage, ObjectStore, WatchEvent,
};

#[derive(Clone)]
pub struct KubeObjectStore {
    client: Client,
    field_manager: String,
}

impl KubeObjectStore {
    /// `field_manager` names the writer in server-side apply (e.g. `stratus-controller`).
    pub fn new(client: Client, field_manager: &str) -> Self {
        Self {
            client,
            field_manager: field_manager.to_owned(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, kind: &KindInfo, namespace: Option<&str>) -> Result<Api<DynamicObject>> {
        let resource = ApiResource {
            group: kind.group.clone(),
            version: kind.version.clone(),
            api_version: format!("{}/{}", kind.group, kind.version),
            kind: kind.kind.clone(),
            plural: kind.plural.clone(),
        };
        match (kind.namespaced, namespace) {
            (true, Some(ns)) => Ok(Api::namespaced_with(self.client.clone(), ns, &resource)),
            (_, None) => Ok(Api::all_with(self.client.clone(), &resource)),
            (false, Some(ns)) => Err(StoreError::Invalid(format!(
                "{} is cluster-scoped: namespace {ns:?} not allowed",
                kind.kind
            ))),
        }
    }

    fn object_api(&self, kind: &KindInfo, object: &Value) -> Result<(Api<DynamicObject>, String)> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::Invalid("metadata.name is required".into()))?
            .to_owned();
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        if kind.namespaced && namespace.is_none() {
            return Err(StoreError::Invalid(format!(
                "{} is namespaced: a namespace is required",
                kind.kind
            )));
        }
        Ok((self.api(kind, namespace)?, name))
    }
}

/// Maps an API server answer onto the store's errors.
fn map_error(error: kube::Error, kind: &KindInfo, name: &str) -> StoreError {
    match error {
        kube::Error::Api(status) => match status.code {
            404 => StoreError::NotFound {
                kind: kind.kind.clone(),
                name: name.to_owned(),
            },
            409 if status.reason == "AlreadyExists" => StoreError::AlreadyExists {
                kind: kind.kind.clone(),
                name: name.to_owned(),
            },
            409 => StoreError::Conflict {
                kind: kind.kind.clone(),
                name: name.to_owned(),
                expected: status.message.clone(),
            },
            410 => StoreError::Gone(status.message.clone()),
            400 | 422 => StoreError::Invalid(status.message.clone()),
            _ => StoreError::Kubernetes(format!(
                "{} {}: {}",
                status.code, status.reason, status.message
            )),
        },
        other => StoreError::Kubernetes(other.to_string()),
    }
}

fn to_value(object: DynamicObject) -> Result<Value> {
    Ok(serde_json::to_value(object)?)
}

fn from_value(object: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(object)?)
}

#[async_trait]
impl ObjectStore for KubeObjectStore {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let api = self.api(kind, namespace)?;
        api.get_opt(name)
            .await
            .map_err(|e| map_error(e, kind, name))?
            .map(to_value)
            .transpose()
    }

    async fn list(&self, kind: &KindInfo, namespace: Option<&str>) -> Result<ObjectList<Value>> {
        let api = self.api(kind, namespace)?;
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| map_error(e, kind, "(list)"))?;
        Ok(ObjectList {
            resource_version: list.metadata.resource_version.unwrap_or_default(),
            items: list
                .items
                .into_iter()
                .map(to_value)
                .collect::<Result<_>>()?,
        })
    }

    async fn list_page(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ObjectPage<Value>> {
        let api = self.api(kind, namespace)?;
        let mut params = ListParams::default().limit(limit.clamp(1, MAX_PAGE_SIZE));
        if let Some(token) = continue_token {
            params = params.continue_token(token);
        }
        let list = api.list(&params).await.map_err(|error| match error {
            // The API server answers 410 for an expired token and 400 for
            // one it cannot decode (or one pointing outside this listing).
            kube::Error::Api(status)
                if continue_token.is_some() && matches!(status.code, 400 | 410) =>
            {
                StoreError::InvalidContinue(status.message)
            }
            other => map_error(other, kind, "(list)"),
        })?;
        Ok(ObjectPage {
            continue_token: list.metadata.continue_.filter(|token| !token.is_empty()),
            items: list
                .items
                .into_iter()
                .map(to_value)
                .collect::<Result<_>>()?,
        })
    }

    async fn find_by_name(&self, kind: &KindInfo, name: &str) -> Result<Vec<Value>> {
        // The name goes into a field selector: only names the API server
        // itself would accept get that far.
        if !stratus_core::validate::is_object_name(name) {
            return Ok(Vec::new());
        }
        let api = self.api(kind, None)?;
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        let list = api
            .list(&params)
            .await
            .map_err(|e| map_error(e, kind, name))?;
        list.items.into_iter().map(to_value).collect()
    }

    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value> {
        let (api, name) = self.object_api(kind, &object)?;
        let created = api
            .create(&PostParams::default(), &from_value(object)?)
            .await
            .map_err(|e| map_error(e, kind, &name))?;
        to_value(created)
    }

    async fn replace(&self, kind: &KindInfo, object: Value) -> Result<Value> {
        let (api, name) = self.object_api(kind, &object)?;
        if object.pointer("/metadata/resourceVersion").is_none() {
            return Err(StoreError::Invalid(
                "metadata.resourceVersion is required to replace".into(),
            ));
        }
        let replaced = api
            .replace(&name, &PostParams::default(), &from_value(object)?)
            .await
            .map_err(|e| map_error(e, kind, &name))?;
        to_value(replaced)
    }

    async fn patch_status(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value> {
        let api = self.api(kind, namespace)?;
        let apply = json!({
            "apiVersion": format!("{}/{}", kind.group, kind.version),
            "kind": kind.kind,
            "metadata": { "name": name },
            "status": status,
        });
        let params = PatchParams::apply(&self.field_manager).force();
        let patched = api
            .patch_status(name, &params, &Patch::Apply(&apply))
            .await
            .map_err(|e| map_error(e, kind, name))?;
        to_value(patched)
    }

    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Deletion<Value>> {
        let api = self.api(kind, namespace)?;
        let answer = api
            .delete(name, &DeleteParams::default())
            .await
            .map_err(|e| map_error(e, kind, name))?;
        // The API server answers with the object both when finalizers hold it
        // and when it went at once; only the former still has finalizers.
        Ok(match answer.left() {
            Some(object)
                if object.metadata.deletion_timestamp.is_some()
                    && object
                        .metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty()) =>
            {
                Deletion::Pending(to_value(object)?)
            }
            _ => Deletion::Deleted,
        })
    }

    async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "stratus".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(StoreError::Kubernetes(format!(
                "creating namespace {name}: {error}"
            ))),
        }
    }

    fn watch(
        &self,
        kind: &KindInfo,
        resource_version: &str,
    ) -> BoxStream<'static, Result<WatchEvent<Value>>> {
        let api = match self.api(kind, None) {
            Ok(api) => api,
            Err(error) => return futures::stream::once(async move { Err(error) }).boxed(),
        };
        let (kind, version) = (kind.clone(), resource_version.to_owned());
        // Bookmarks are on by default: they keep the resume point fresh.
        let params = WatchParams::default();
        let start_kind = kind.clone();
        async move {
            api.watch(&params, &version)
                .await
                .map_err(|e| map_error(e, &start_kind, "(watch)"))
        }
        .map_ok(move |events| {
            events.map(
                move |event| match event.map_err(|e| map_error(e, &kind, "(watch)"))? {
                    KubeWatchEvent::Added(o) => Ok(WatchEvent::Added(to_value(o)?)),
                    KubeWatchEvent::Modified(o) => Ok(WatchEvent::Modified(to_value(o)?)),
                    KubeWatchEvent::Deleted(o) => Ok(WatchEvent::Deleted(to_value(o)?)),
                    KubeWatchEvent::Bookmark(b) => {
                        Ok(WatchEvent::Bookmark(b.metadata.resource_version))
                    }
                    KubeWatchEvent::Error(status) if status.code == 410 => {
                        Err(StoreError::Gone(status.message.clone()))
                    }
                    KubeWatchEvent::Error(status) => Err(StoreError::Kubernetes(format!(
                        "watch: {} {}",
                        status.code, status.message
                    ))),
                },
            )
        })
        .try_flatten_stream()
        .boxed()
    }
}
