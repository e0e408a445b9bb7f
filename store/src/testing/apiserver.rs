//! A Kubernetes API server for tests, served from the embedded store: no
//! cluster can run on these machines, yet the Kubernetes backend, the
//! Lease election, Secrets and Events must be exercised through the real
//! kube-rs client. It speaks the generic REST shape of any resource (core
//! group under `/api/v1`, others under `/apis/{group}/{version}`): list,
//! watch, get, create, replace, server-side apply (main resource and
//! status), delete; errors as `Status` objects. The semantics (resource
//! versions, generation, finalizers, deletion) are the embedded store's,
//! which the shared contract suite holds to Kubernetes behaviour.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::StoreError;
use crate::objects::{Deletion, KindInfo, MAX_PAGE_SIZE, ObjectStore, WatchEvent};

#[derive(Clone)]
struct Served {
    store: Arc<dyn ObjectStore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<bool>,
    resource_version: Option<String>,
    field_selector: Option<String>,
    limit: Option<u32>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// The API server's routes over `store` (use a store of its own: it keys
/// objects by group and plural).
pub fn router(store: Arc<dyn ObjectStore>) -> Router {
    Router::new()
        .route("/api/{*path}", any(core_group))
        .route("/apis/{*path}", any(named_group))
        .with_state(Served { store })
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "code": code, "reason": reason, "message": message});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn error(error: StoreError) -> Response {
    match error {
        StoreError::NotFound { .. } => status(404, "NotFound", error.to_string()),
        StoreError::AlreadyExists { .. } => status(409, "AlreadyExists", error.to_string()),
        StoreError::Conflict { .. } => status(409, "Conflict", error.to_string()),
        StoreError::Invalid(_) => status(422, "Invalid", error.to_string()),
        StoreError::Gone(_) => status(410, "Expired", error.to_string()),
        StoreError::InvalidContinue(_) => status(400, "BadRequest", error.to_string()),
        other => status(500, "InternalError", other.to_string()),
    }
}

fn ok(code: StatusCode, value: Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// What a request addresses.
struct Target {
    kind: KindInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        // The namespaces resource itself.
        ["namespaces"] | ["namespaces", _] if group.is_empty() => (None, rest),
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        kind: KindInfo {
            // Objects are keyed by group and plural (the body carries the kind).
            kind: format!("{group}/{plural}"),
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            // The URL says the scope: a namespace in the path makes it namespaced.
            namespaced: namespace.is_some(),
        },
        namespace,
        name,
        subresource,
    })
}

async fn core_group(
    state: State<Served>,
    Path(path): Path<String>,
    params: Query<Params>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [version, rest @ ..] => match parse("", version, rest) {
            Some(target) => serve(state, target, params, method, headers, body).await,
            None => status(404, "NotFound", format!("no route /api/{path}")),
        },
        _ => status(404, "NotFound", format!("no route /api/{path}")),
    }
}

async fn named_group(
    state: State<Served>,
    Path(path): Path<String>,
    params: Query<Params>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [group, version, rest @ ..] => match parse(group, version, rest) {
            Some(target) => serve(state, target, params, method, headers, body).await,
            None => status(404, "NotFound", format!("no route /apis/{path}")),
        },
        _ => status(404, "NotFound", format!("no route /apis/{path}")),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Secrets: what is written as `stringData` is stored base64-encoded in `data`.
fn normalize(mut object: Value) -> Value {
    if object.get("kind") == Some(&json!("Secret"))
        && let Some(Value::Object(strings)) =
            object.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        let data = object["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (key, value) in strings {
            data.insert(
                key,
                json!(base64(value.as_str().unwrap_or_default().as_bytes())),
            );
        }
        object["data"] = Value::Object(data);
    }
    object
}

async fn serve(
    State(served): State<Served>,
    target: Target,
    Query(params): Query<Params>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let store = served.store.clone();
    let namespace = target.namespace.as_deref();
    let kind = target.kind;
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let apply = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    match (method, target.name, target.subresource.as_deref()) {
        (Method::GET, None, None) if params.watch == Some(true) => {
            let version = params.resource_version.unwrap_or_default();
            let watched = kind.clone();
            let events = store.watch(&kind, &version).map(move |event| {
                let line = match event {
                    Ok(WatchEvent::Added(o)) => json!({"type": "ADDED", "object": o}),
                    Ok(WatchEvent::Modified(o)) => json!({"type": "MODIFIED", "object": o}),
                    Ok(WatchEvent::Deleted(o)) => json!({"type": "DELETED", "object": o}),
                    Ok(WatchEvent::Bookmark(v)) => json!({"type": "BOOKMARK", "object": {
                        "apiVersion": format!("{}/{}", watched.group, watched.version), "kind": watched.plural,
                        "metadata": {"resourceVersion": v}}}),
                    Err(e) => {
                        let (code, reason) = if matches!(e, StoreError::Gone(_)) { (410, "Expired") } else { (500, "InternalError") };
                        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "code": code, "reason": reason, "message": e.to_string()}})
                    }
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
            });
            Response::new(Body::from_stream(events))
        }
        // The one field selector stratus sends: an object by name, anywhere.
        (Method::GET, None, None) if params.field_selector.is_some() => {
            let selector = params.field_selector.unwrap_or_default();
            let Some(name) = selector.strip_prefix("metadata.name=") else {
                return status(
                    400,
                    "BadRequest",
                    format!("unsupported field selector {selector}"),
                );
            };
            match store.find_by_name(&kind, name).await {
                Ok(items) => ok(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                ),
                Err(e) => error(e),
            }
        }
        // A paged list; tokens are the embedded store's, which refuses
        // those it did not hand out as the API server does (400).
        (Method::GET, None, None) if params.limit.is_some() => {
            let limit = params.limit.unwrap_or(MAX_PAGE_SIZE);
            match store
                .list_page(&kind, namespace, limit, params.continue_token.as_deref())
                .await
            {
                Ok(page) => ok(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List",
                           "metadata": {"continue": page.continue_token.unwrap_or_default()},
                           "items": page.items}),
                ),
                Err(e) => error(e),
            }
        }
        // Without a namespace in the path, a list spans all namespaces.
        (Method::GET, None, None) => match store.list(&kind, namespace).await {
            Ok(list) => ok(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": list.resource_version},
                       "items": list.items}),
            ),
            Err(e) => error(e),
        },
        (Method::POST, None, None) => {
            let Some(mut object) = parsed else {
                return status(400, "BadRequest", "a body is required".into());
            };
            if let Some(ns) = namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            if object.pointer("/metadata/name").is_none()
                && let Some(prefix) = object
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
            {
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                object["metadata"]["name"] = json!(format!("{prefix}{}", &suffix[..5]));
            }
            match store.create(&kind, normalize(object)).await {
                Ok(created) => ok(StatusCode::CREATED, created),
                Err(e) => error(e),
            }
        }
        (Method::GET, Some(name), None) => match store.get(&kind, namespace, &name).await {
            Ok(Some(object)) => ok(StatusCode::OK, object),
            Ok(None) => status(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", kind.plural),
            ),
            Err(e) => error(e),
        },
        (Method::PUT, Some(_), None) => {
            let Some(object) = parsed else {
                return status(400, "BadRequest", "a body is required".into());
            };
            match store.replace(&kind, normalize(object)).await {
                Ok(replaced) => ok(StatusCode::OK, replaced),
                Err(e) => error(e),
            }
        }
        (Method::PATCH, Some(name), Some("status")) if apply => {
            let status_value = parsed
                .and_then(|p| p.get("status").cloned())
                .unwrap_or(Value::Null);
            match store
                .patch_status(&kind, namespace, &name, status_value)
                .await
            {
                Ok(patched) => ok(StatusCode::OK, patched),
                Err(e) => error(e),
            }
        }
        (Method::PATCH, Some(name), None) if apply => {
            let Some(applied) = parsed else {
                return status(400, "BadRequest", "a body is required".into());
            };
            apply_object(&*store, &kind, namespace, &name, normalize(applied)).await
        }
        (Method::DELETE, Some(name), None) => match store.delete(&kind, namespace, &name).await {
            Ok(Deletion::Pending(object)) => ok(StatusCode::OK, object),
            Ok(Deletion::Deleted) => ok(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": name, "kind": kind.plural}}),
            ),
            Err(e) => error(e),
        },
        (method, _, sub) => status(
            405,
            "MethodNotAllowed",
            format!("{method} {sub:?} is not served here"),
        ),
    }
}

/// Server-side apply of a whole object: create it, or set the fields the
/// applier gave (metadata labels and annotations merged).
async fn apply_object(
    store: &dyn ObjectStore,
    kind: &KindInfo,
    namespace: Option<&str>,
    name: &str,
    applied: Value,
) -> Response {
    match store.get(kind, namespace, name).await {
        Err(e) => error(e),
        Ok(None) => {
            let mut object = applied;
            object["metadata"]["name"] = json!(name);
            if let Some(ns) = namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            match store.create(kind, object).await {
                Ok(created) => ok(StatusCode::CREATED, created),
                Err(e) => error(e),
            }
        }
        Ok(Some(mut current)) => {
            for (key, value) in applied.as_object().cloned().unwrap_or_default() {
                if key == "metadata" {
                    for field in ["labels", "annotations"] {
                        if let Some(Value::Object(entries)) = value.get(field) {
                            for (k, v) in entries {
                                current["metadata"][field][k] = v.clone();
                            }
                        }
                    }
                } else {
                    current[key] = value;
                }
            }
            match store.replace(kind, current).await {
                Ok(replaced) => ok(StatusCode::OK, replaced),
                Err(e) => error(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_encodes_like_the_api_server() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"agent-token"), "YWdlbnQtdG9rZW4=");
    }
}
