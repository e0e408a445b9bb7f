//! The agent's HTTP API. Every call but `/healthz` and `/metrics` needs the
//! agent's bearer token.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ring::digest::{SHA256, digest};
use stratus_core::agent_api::paths::{self, ReadQuery, WriteQuery};
use stratus_core::agent_api::{
    AgentErrorBody, AgentErrorCode, AgentErrorDetail, DomainSpec, JobStatus, LuksFormat, VolumeJob,
    VolumeSpec, VolumeUnlock,
};

use crate::driver::Driver;
use crate::error::AgentError;
use crate::jobs::{Jobs, Started};
use crate::metrics::AgentMetrics;

#[derive(Clone)]
pub struct AgentState {
    driver: Arc<Driver>,
    token_digest: Arc<[u8]>,
    metrics: Arc<AgentMetrics>,
    jobs: Jobs,
}

impl AgentState {
    pub fn new(driver: Arc<Driver>, token: &str) -> Self {
        Self {
            driver,
            token_digest: digest(&SHA256, token.as_bytes()).as_ref().into(),
            metrics: Arc::new(AgentMetrics::default()),
            jobs: Jobs::default(),
        }
    }

    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }
}

pub fn router(state: AgentState) -> Router {
    let authenticated = Router::new()
        .route(paths::NODE, get(node))
        .route(paths::DOMAIN, get(observe).put(ensure).delete(destroy))
        .route(paths::DOMAIN_REBOOT, post(reboot))
        .route(paths::DOMAIN_CONSOLE, get(console))
        .route(
            paths::VOLUME,
            get(observe_volume)
                .put(ensure_volume)
                .delete(destroy_volume),
        )
        .route(
            paths::VOLUME_VERSION,
            get(read_version).put(write_version).delete(delete_version),
        )
        .route(paths::VOLUME_JOB, get(job).put(start_job))
        .route(paths::VERSION_LUKS, post(format_version))
        .route(
            paths::VERSION_UNLOCK,
            post(unlock_version).delete(lock_version),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .with_state(state)
}

fn error_response(status: StatusCode, code: AgentErrorCode, message: String) -> Response {
    let body = AgentErrorBody {
        error: AgentErrorDetail { code, message },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match self.code() {
            AgentErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            AgentErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            AgentErrorCode::DiskMissing
            | AgentErrorCode::VolumeMissing
            | AgentErrorCode::VersionConflict
            | AgentErrorCode::VersionExists
            | AgentErrorCode::VolumeInUse
            | AgentErrorCode::PauseLimit => StatusCode::CONFLICT,
            AgentErrorCode::ContentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AgentErrorCode::ImageMissing => StatusCode::UNPROCESSABLE_ENTITY,
            AgentErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            AgentErrorCode::Hypervisor | AgentErrorCode::Unknown => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AgentErrorCode::AntiSpoofingUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AgentErrorCode::WrongKey => StatusCode::FORBIDDEN,
            AgentErrorCode::KeysUnsupported | AgentErrorCode::ContentUnsupported => {
                StatusCode::NOT_IMPLEMENTED
            }
            AgentErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AgentErrorCode::UnknownJob => StatusCode::NOT_FOUND,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "agent call failed");
        }
        error_response(status, self.code(), self.to_string())
    }
}

/// Compares digests so the comparison time says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(
    State(state): State<AgentState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| digest(&SHA256, token.trim().as_bytes()));
    match presented {
        Some(d) if constant_time_eq(d.as_ref(), &state.token_digest) => next.run(request).await,
        _ => error_response(
            StatusCode::UNAUTHORIZED,
            AgentErrorCode::Unauthorized,
            "a valid agent bearer token is required".into(),
        ),
    }
}

/// Runs a blocking libvirt call off the async threads and counts it.
async fn run<T: Send + 'static>(
    state: &AgentState,
    operation: &'static str,
    call: impl FnOnce(&Driver) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let driver = state.driver.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || call(&driver))
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))
        .and_then(|r| r);
    let outcome = result.as_ref().err().map_or("ok", AgentError::metric_label);
    state.metrics.record(operation, outcome, started.elapsed());
    result
}

#[tracing::instrument(skip(state))]
async fn node(State(state): State<AgentState>) -> Result<Response, AgentError> {
    Ok(Json(run(&state, "node", |d| d.node_report()).await?).into_response())
}

#[tracing::instrument(skip(state))]
async fn observe(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    Ok(Json(run(&state, "observe", move |d| d.observe(&name)).await?).into_response())
}

#[tracing::instrument(skip(state, body))]
async fn ensure(
    State(state): State<AgentState>,
    Path(name): Path<String>,
    body: Result<Json<DomainSpec>, JsonRejection>,
) -> Result<Response, AgentError> {
    let Json(spec) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    Ok(Json(run(&state, "ensure", move |d| d.ensure(&name, &spec)).await?).into_response())
}

#[tracing::instrument(skip(state))]
async fn destroy(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    Ok(Json(run(&state, "destroy", move |d| d.destroy(&name)).await?).into_response())
}

#[tracing::instrument(skip(state))]
async fn reboot(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    Ok(Json(run(&state, "reboot", move |d| d.reboot(&name)).await?).into_response())
}

/// The tail of the domain's serial console, as bytes.
#[tracing::instrument(skip(state))]
async fn console(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    let bytes = run(&state, "console", move |d| d.console(&name)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[tracing::instrument(skip(state))]
async fn observe_volume(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    Ok(
        Json(run(&state, "observe_volume", move |d| d.observe_volume(&name)).await?)
            .into_response(),
    )
}

#[tracing::instrument(skip(state, body))]
async fn ensure_volume(
    State(state): State<AgentState>,
    Path(name): Path<String>,
    body: Result<Json<VolumeSpec>, JsonRejection>,
) -> Result<Response, AgentError> {
    let Json(spec) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    Ok(Json(
        run(&state, "ensure_volume", move |d| {
            d.ensure_volume(&name, &spec)
        })
        .await?,
    )
    .into_response())
}

#[tracing::instrument(skip(state))]
async fn destroy_volume(
    State(state): State<AgentState>,
    Path(name): Path<String>,
) -> Result<Response, AgentError> {
    state.jobs.forget(&name, None);
    Ok(
        Json(run(&state, "destroy_volume", move |d| d.destroy_volume(&name)).await?)
            .into_response(),
    )
}

/// Chunks of a request body in flight between the async reader and the
/// blocking libvirt writer.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Stores the request body as `version` of the copy: 413 beyond the
/// copy's size, and nothing kept of a refused or cut content.
#[tracing::instrument(skip(state, query, body))]
async fn write_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, AgentError> {
    let Query(WriteQuery { size_gib }) =
        query.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    let limit = size_gib.saturating_mul(1 << 30);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(AgentError::ContentTooLarge { limit });
    }
    state.jobs.forget(&name, Some(version));
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(CHUNKS_IN_FLIGHT);
    let reader = tokio::spawn(async move {
        use futures::StreamExt;
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map(|c| c.to_vec()).map_err(|e| e.to_string());
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    let stored = run(&state, "write_version", move |d| {
        let mut chunks = std::iter::from_fn(|| receiver.blocking_recv());
        d.write_version(&name, version, size_gib, &mut chunks)
    })
    .await;
    reader.abort();
    Ok(Json(stored?).into_response())
}

/// Streams the first `bytes` of `version` of the copy.
#[tracing::instrument(skip(state, query))]
async fn read_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, AgentError> {
    let Query(ReadQuery { bytes }) = query.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    // The first chunk (or the failure) decides the answer's status.
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<Vec<u8>, AgentError>>(CHUNKS_IN_FLIGHT);
    let driver = state.driver.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = |chunk: &[u8]| sender.blocking_send(Ok(chunk.to_vec())).is_ok();
        if let Err(error) = driver.read_version(&name, version, bytes, &mut sink) {
            let _ = sender.blocking_send(Err(error));
        }
    });
    let first = match receiver.recv().await {
        Some(Err(error)) => return Err(error),
        first => first,
    };
    let rest = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let chunks = futures::stream::iter(first).chain(rest);
    use futures::StreamExt;
    let body = axum::body::Body::from_stream(chunks.map(|item| {
        item.map(axum::body::Bytes::from)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Starts job `id` of the copy `name` unless it is known, and answers where
/// it stands: 202 while under way, 200 with its result or failure.
#[tracing::instrument(skip(state, body))]
async fn start_job(
    State(state): State<AgentState>,
    Path((name, id)): Path<(String, String)>,
    body: Result<Json<VolumeJob>, JsonRejection>,
) -> Result<Response, AgentError> {
    let Json(job) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    if job.id() != id {
        return Err(AgentError::BadRequest(format!(
            "the job at {id} is {}, not this one",
            job.id()
        )));
    }
    match state.jobs.start(&name, &job)? {
        Started::Known(status) => Ok(job_response(status)),
        Started::New => {
            tracing::info!(volume = %name, job = %id, "storage job started");
            let (worker, volume, job_id) = (state.clone(), name.clone(), id.clone());
            tokio::spawn(async move {
                let outcome = match job {
                    VolumeJob::Checksum { version, bytes } => {
                        let volume = volume.clone();
                        run(&worker, "checksum_version", move |d| {
                            d.read_version(&volume, version, bytes, &mut |_| true)
                        })
                        .await
                    }
                    VolumeJob::Copy {
                        from,
                        to,
                        pause_guest,
                    } => {
                        let volume = volume.clone();
                        run(&worker, "copy_version", move |d| {
                            d.copy_version(&volume, from, to, pause_guest)
                        })
                        .await
                    }
                    VolumeJob::Capture { domain, to } => {
                        let volume = volume.clone();
                        run(&worker, "capture_disk", move |d| {
                            d.capture_disk(&volume, &domain, to)
                        })
                        .await
                    }
                };
                if let Err(error) = &outcome {
                    tracing::warn!(%volume, job = %job_id, %error, "storage job failed");
                }
                worker.jobs.finish(&volume, &job_id, outcome);
            });
            let status = state
                .jobs
                .status(&name, &id)
                .unwrap_or(JobStatus::Running { elapsed_ms: 0 });
            Ok(job_response(status))
        }
    }
}

/// Where job `id` of the copy `name` stands (404 `unknown_job` when this
/// agent does not know it: never started, restarted since, or fetched
/// long ago).
#[tracing::instrument(skip(state))]
async fn job(
    State(state): State<AgentState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, AgentError> {
    match state.jobs.status(&name, &id) {
        Some(status) => Ok(job_response(status)),
        None => Err(AgentError::UnknownJob(id)),
    }
}

fn job_response(status: JobStatus) -> Response {
    let code = match status {
        JobStatus::Running { .. } => StatusCode::ACCEPTED,
        JobStatus::Succeeded { .. } | JobStatus::Failed { .. } => StatusCode::OK,
    };
    (code, Json(status)).into_response()
}

/// A body carrying a key is refused without repeating any of it.
fn key_body<T>(body: Result<Json<T>, JsonRejection>, expected: &str) -> Result<T, AgentError> {
    body.map(|Json(body)| body)
        .map_err(|_| AgentError::BadRequest(format!("the body must be {expected}")))
}

/// Creates `version` of the copy as a LUKS volume formatted with the
/// customer's key, and answers its length and SHA-256.
#[tracing::instrument(skip(state, body))]
async fn format_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
    body: Result<Json<LuksFormat>, JsonRejection>,
) -> Result<Response, AgentError> {
    let format = key_body(body, r#"{"size_gib": N, "key": "…"}"#)?;
    state.jobs.forget(&name, Some(version));
    let stored = run(&state, "format_version", move |d| {
        d.format_version(&name, version, format.size_gib, &format.key)
    })
    .await?;
    Ok(Json(stored).into_response())
}

/// Loads the customer's key to `version` of the copy once it opens it.
#[tracing::instrument(skip(state, body))]
async fn unlock_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
    body: Result<Json<VolumeUnlock>, JsonRejection>,
) -> Result<Response, AgentError> {
    let unlock = key_body(body, r#"{"key": "…"}"#)?;
    run(&state, "unlock_version", move |d| {
        d.unlock_version(&name, version, &unlock.key)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Unloads the key of `version` of the copy (nothing when none is loaded).
#[tracing::instrument(skip(state))]
async fn lock_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Response, AgentError> {
    run(&state, "lock_version", move |d| {
        d.lock_version(&name, version)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[tracing::instrument(skip(state))]
async fn delete_version(
    State(state): State<AgentState>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Response, AgentError> {
    state.jobs.forget(&name, Some(version));
    Ok(Json(
        run(&state, "delete_version", move |d| {
            d.delete_version(&name, version)
        })
        .await?,
    )
    .into_response())
}

async fn metrics(State(state): State<AgentState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
