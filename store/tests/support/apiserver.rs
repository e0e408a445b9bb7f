//! The Kubernetes REST API for custom resources, served from the embedded
//! store, so the Kubernetes backend (kube-rs client, request building,
//! response and error mapping, watch decoding) runs the same contract suite
//! as the embedded one, without a cluster. It speaks the subset of the API
//! the backend uses: list, watch, get, create, replace, status apply, delete.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use stratus_core::resources::{Account, Hypervisor, IpPool, VirtualServer};
use stratus_store::objects::Deletion;
use stratus_store::{KindInfo, ObjectStore, StoreError, WatchEvent};

#[derive(Clone)]
struct Served {
    store: Arc<dyn ObjectStore>,
    kinds: Arc<Vec<KindInfo>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<bool>,
    resource_version: Option<String>,
}

pub fn router(store: Arc<dyn ObjectStore>) -> Router {
    let kinds = vec![
        KindInfo::of::<VirtualServer>(),
        KindInfo::of::<Hypervisor>(),
        KindInfo::of::<Account>(),
        KindInfo::of::<IpPool>(),
    ];
    let state = Served {
        store,
        kinds: Arc::new(kinds),
    };
    Router::new()
        .route("/apis/{*path}", any(handle))
        .with_state(state)
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
        other => status(500, "InternalError", other.to_string()),
    }
}

fn json_response(code: StatusCode, value: Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// `{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/status]]`
async fn handle(
    State(served): State<Served>,
    Path(path): Path<String>,
    Query(params): Query<Params>,
    method: Method,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = path.split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        [group, version, rest @ ..] => (*group, *version, rest),
        _ => return status(404, "NotFound", format!("no route {path}")),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return status(404, "NotFound", format!("no route {path}")),
    };
    let Some(kind) = served
        .kinds
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
        .cloned()
    else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {plural}"),
        );
    };
    let store = served.store.clone();
    let namespace = namespace.as_deref();
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    match (method, name, subresource) {
        (Method::GET, None, None) if params.watch == Some(true) => {
            let version = params.resource_version.unwrap_or_default();
            let watched = kind.clone();
            let events = store.watch(&kind, &version).map(move |event| {
                let kind = &watched;
                let line = match event {
                    Ok(WatchEvent::Added(o)) => json!({"type": "ADDED", "object": o}),
                    Ok(WatchEvent::Modified(o)) => json!({"type": "MODIFIED", "object": o}),
                    Ok(WatchEvent::Deleted(o)) => json!({"type": "DELETED", "object": o}),
                    Ok(WatchEvent::Bookmark(v)) => json!({"type": "BOOKMARK", "object": {
                        "apiVersion": format!("{}/{}", kind.group, kind.version), "kind": kind.kind,
                        "metadata": {"resourceVersion": v}}}),
                    Err(StoreError::Gone(m)) => json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "metadata": {}, "status": "Failure", "code": 410, "reason": "Expired", "message": m}}),
                    Err(other) => json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "metadata": {}, "status": "Failure", "code": 500, "reason": "InternalError", "message": other.to_string()}}),
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
            });
            Response::new(Body::from_stream(events))
        }
        (Method::GET, None, None) => match store.list(&kind, namespace).await {
            Ok(list) => json_response(
                StatusCode::OK,
                json!({"apiVersion": format!("{}/{}", kind.group, kind.version), "kind": format!("{}List", kind.kind),
                       "metadata": {"resourceVersion": list.resource_version}, "items": list.items}),
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
            match store.create(&kind, object).await {
                Ok(created) => json_response(StatusCode::CREATED, created),
                Err(e) => error(e),
            }
        }
        (Method::GET, Some(name), None) => match store.get(&kind, namespace, &name).await {
            Ok(Some(object)) => json_response(StatusCode::OK, object),
            Ok(None) => status(404, "NotFound", format!("{plural} \"{name}\" not found")),
            Err(e) => error(e),
        },
        (Method::PUT, Some(_), None) => {
            let Some(object) = parsed else {
                return status(400, "BadRequest", "a body is required".into());
            };
            match store.replace(&kind, object).await {
                Ok(replaced) => json_response(StatusCode::OK, replaced),
                Err(e) => error(e),
            }
        }
        (Method::PATCH, Some(name), Some("status")) => {
            let Some(apply) = parsed else {
                return status(400, "BadRequest", "a body is required".into());
            };
            let status_value = apply.get("status").cloned().unwrap_or(Value::Null);
            match store
                .patch_status(&kind, namespace, &name, status_value)
                .await
            {
                Ok(patched) => json_response(StatusCode::OK, patched),
                Err(e) => error(e),
            }
        }
        (Method::DELETE, Some(name), None) => match store.delete(&kind, namespace, &name).await {
            Ok(Deletion::Pending(object)) => json_response(StatusCode::OK, object),
            Ok(Deletion::Deleted) => json_response(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": name, "kind": plural}}),
            ),
            Err(e) => error(e),
        },
        (method, _, _) => status(
            405,
            "MethodNotAllowed",
            format!("{method} is not served here"),
        ),
    }
}
