//! The agent client over HTTPS with mutual TLS and the agent's bearer
//! token, fenced by leadership when a controller replica uses it.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use stratus_core::agent_api::paths::{self, ReadQuery, WriteQuery};
use stratus_core::agent_api::{
    AgentErrorBody, AgentErrorCode, AgentErrorDetail, DomainObservation, DomainSpec, JobStatus,
    LuksFormat, NodeReport, StoredContent, VolumeJob, VolumeObservation, VolumeSpec, VolumeUnlock,
};
use tokio::sync::watch;

use crate::client::{
    AgentCallError, AgentClient, AgentEndpoint, ContentStream, QUICK_CALL, STREAM_ANSWER,
    STREAM_IDLE, idle_guarded,
};

/// Polls of an agent job: soon at first, then less often.
const JOB_POLL_FIRST: Duration = Duration::from_millis(200);
const JOB_POLL_MAX: Duration = Duration::from_secs(5);
/// Polls of a job in a row that reach no agent before the call gives up
/// (the job goes on; the next attempt asks for the same one).
const JOB_POLL_FAILURES: u32 = 5;

/// The agent client: HTTPS with mutual TLS, plus the agent's bearer token.
#[derive(Clone)]
pub struct HttpAgentClient {
    /// Replaced when the controller's certificate files change.
    http: watch::Receiver<reqwest::Client>,
    /// Ensure may wait for a guest to shut down, so it gets longer.
    slow_timeout: Duration,
    /// Whether this controller replica leads; absent where no leadership
    /// applies (the API, the all-in-one process).
    leading: Option<watch::Receiver<bool>>,
}

impl HttpAgentClient {
    /// A client using the latest of `http` (see [`Self::https_client`]).
    pub fn new(http: watch::Receiver<reqwest::Client>) -> Self {
        Self {
            http,
            slow_timeout: Duration::from_secs(300),
            leading: None,
        }
    }

    /// This client, answering only while `leading` says this controller
    /// replica leads: a reconcile that started before leadership ended
    /// cannot act on a hypervisor after it (see the controller's `leader`).
    pub fn fenced(self, leading: watch::Receiver<bool>) -> Self {
        Self {
            leading: Some(leading),
            ..self
        }
    }

    /// A client that always uses `http`.
    pub fn fixed(http: reqwest::Client) -> Self {
        Self::new(watch::channel(http).1)
    }

    /// The HTTP client for agents over `tls` (the controller's certificate
    /// and the CA its agents' certificates come from): HTTPS only, so a
    /// Hypervisor whose URL says `http://` is never called in clear.
    pub fn https_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, AgentCallError> {
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(3))
            // No total timeout on the client: a content stream takes as
            // long as its size needs. Short calls set their own
            // ([`QUICK_CALL`]); streams fail when idle ([`STREAM_IDLE`]).
            .tcp_keepalive(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| AgentCallError::Unreachable(format!("cannot build HTTP client: {e}")))
    }

    /// A request to `path` of `agent`: every call starts here, so none
    /// leaves a replica that no longer leads.
    fn request(
        &self,
        method: reqwest::Method,
        agent: &AgentEndpoint,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, AgentCallError> {
        if let Some(leading) = &self.leading
            && !*leading.borrow()
        {
            return Err(AgentCallError::Unreachable(
                "this controller replica no longer leads; the new leader acts".into(),
            ));
        }
        let url = format!("{}{path}", agent.url.trim_end_matches('/'));
        Ok(self.http.borrow().request(method, url))
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        agent: &AgentEndpoint,
    ) -> Result<T, AgentCallError> {
        let body = self.send_raw(request, agent).await?;
        serde_json::from_slice::<T>(&body)
            .map_err(|e| AgentCallError::Unreachable(format!("malformed answer: {e}")))
    }

    /// Runs `job` on the agent and waits for its end, asking every few
    /// seconds: each call is short, the work takes what it takes. A job
    /// already under way (a retry, a controller that restarted) is joined,
    /// never started twice; one the agent forgot (it restarted) is started
    /// again.
    async fn job(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        job: &VolumeJob,
    ) -> Result<StoredContent, AgentCallError> {
        let path = paths::volume_job(name, &job.id());
        let start = || {
            self.request(Method::PUT, agent, &path)
                .map(|request| request.timeout(QUICK_CALL).json(job))
        };
        let mut status: JobStatus = self.send(start()?, agent).await?;
        let (mut pause, mut unreachable) = (JOB_POLL_FIRST, 0);
        loop {
            match status {
                JobStatus::Succeeded { result } => return Ok(result),
                JobStatus::Failed { error } => return Err(refused_by_agent(error)),
                JobStatus::Running { .. } => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(JOB_POLL_MAX);
            let asked = self
                .send::<JobStatus>(
                    self.request(Method::GET, agent, &path)?.timeout(QUICK_CALL),
                    agent,
                )
                .await;
            status = match asked {
                Ok(status) => {
                    unreachable = 0;
                    status
                }
                Err(AgentCallError::Rejected {
                    code: AgentErrorCode::UnknownJob,
                    ..
                }) => {
                    tracing::info!(job = %job.id(), volume = %name, "the agent forgot the job: started again");
                    self.send(start()?, agent).await?
                }
                Err(error @ AgentCallError::Unreachable(_)) => {
                    unreachable += 1;
                    if unreachable >= JOB_POLL_FAILURES {
                        return Err(error);
                    }
                    JobStatus::Running { elapsed_ms: 0 }
                }
                Err(error) => return Err(error),
            };
        }
    }

    /// The body of a successful answer, as bytes.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
        agent: &AgentEndpoint,
    ) -> Result<Vec<u8>, AgentCallError> {
        let response = request
            .bearer_auth(&agent.token)
            .send()
            .await
            .map_err(|e| AgentCallError::Unreachable(describe(&e)))?;
        let status = response.status();
        let body = read_bounded(response).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(refusal(status, &body))
    }
}

/// What a failure the agent reported means to the caller.
fn refused_by_agent(error: AgentErrorDetail) -> AgentCallError {
    match error.code {
        AgentErrorCode::Hypervisor | AgentErrorCode::Busy => {
            AgentCallError::Unreachable(error.message)
        }
        code => AgentCallError::Rejected {
            code,
            message: error.message,
        },
    }
}

/// What an agent's non-2xx answer means to the caller.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> AgentCallError {
    match serde_json::from_slice::<AgentErrorBody>(body).ok() {
        Some(body) if body.error.code == AgentErrorCode::Busy => {
            AgentCallError::Unreachable(format!("HTTP {status}: {}", body.error.message))
        }
        Some(body) if status.is_client_error() || body.error.code != AgentErrorCode::Hypervisor => {
            AgentCallError::Rejected {
                code: body.error.code,
                message: body.error.message,
            }
        }
        Some(body) => AgentCallError::Unreachable(format!("HTTP {status}: {}", body.error.message)),
        None => AgentCallError::Unreachable(format!("HTTP {status}")),
    }
}

/// The most the controller reads of one agent answer. A node report of
/// thousands of domains is a few hundred KiB; a compromised or broken agent
/// must not make the controller buffer without end.
pub const MAX_AGENT_RESPONSE: usize = 8 << 20;

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, AgentCallError> {
    let too_large = || {
        AgentCallError::Unreachable(format!(
            "answer larger than {MAX_AGENT_RESPONSE} bytes refused"
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_AGENT_RESPONSE as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| AgentCallError::Unreachable(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_AGENT_RESPONSE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else {
        // The innermost causes say what went wrong: refused, unreachable,
        // or which certificate the TLS handshake rejected.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[async_trait]
impl AgentClient for HttpAgentClient {
    async fn node(&self, agent: &AgentEndpoint) -> Result<NodeReport, AgentCallError> {
        let request = self.request(Method::GET, agent, paths::NODE)?;
        self.send(request.timeout(QUICK_CALL), agent).await
    }

    async fn observe(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self.request(Method::GET, agent, &paths::domain(domain))?;
        self.send(request.timeout(QUICK_CALL), agent).await
    }

    async fn ensure(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
        spec: &DomainSpec,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self.request(Method::PUT, agent, &paths::domain(domain))?;
        self.send(request.timeout(self.slow_timeout).json(spec), agent)
            .await
    }

    async fn reboot(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self.request(Method::POST, agent, &paths::domain_reboot(domain))?;
        self.send(request.timeout(self.slow_timeout), agent).await
    }

    async fn destroy(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self.request(Method::DELETE, agent, &paths::domain(domain))?;
        self.send(request.timeout(self.slow_timeout), agent).await
    }

    async fn console(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<Vec<u8>, AgentCallError> {
        let request = self.request(Method::GET, agent, &paths::domain_console(domain))?;
        self.send_raw(request.timeout(QUICK_CALL), agent).await
    }

    async fn observe_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self.request(Method::GET, agent, &paths::volume(name))?;
        self.send(request.timeout(QUICK_CALL), agent).await
    }

    async fn ensure_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        spec: &VolumeSpec,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self.request(Method::PUT, agent, &paths::volume(name))?;
        self.send(request.timeout(self.slow_timeout).json(spec), agent)
            .await
    }

    async fn destroy_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self.request(Method::DELETE, agent, &paths::volume(name))?;
        self.send(request.timeout(self.slow_timeout), agent).await
    }

    async fn write_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        size_gib: u64,
        content: ContentStream,
    ) -> Result<StoredContent, AgentCallError> {
        let path = paths::version_upload(name, version, WriteQuery { size_gib });
        let request = self.request(Method::PUT, agent, &path)?;
        let (sent, all_sent) = tokio::sync::oneshot::channel();
        let body = idle_guarded(content, STREAM_IDLE, Some(sent));
        let call = self.send(request.body(reqwest::Body::wrap_stream(body)), agent);
        // However long the stream, once its last byte left the agent has
        // STREAM_ANSWER to answer.
        let answer_overdue = async {
            let _ = all_sent.await;
            tokio::time::sleep(STREAM_ANSWER).await;
        };
        tokio::select! {
            answer = call => answer,
            () = answer_overdue => Err(AgentCallError::Unreachable(format!(
                "no answer {} s after the whole content was sent",
                STREAM_ANSWER.as_secs()
            ))),
        }
    }

    async fn read_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<ContentStream, AgentCallError> {
        use futures::StreamExt;
        let path = paths::version_download(name, version, ReadQuery { bytes });
        let request = self
            .request(Method::GET, agent, &path)?
            .bearer_auth(&agent.token)
            .send();
        let response = tokio::time::timeout(STREAM_ANSWER, request)
            .await
            .map_err(|_| {
                AgentCallError::Unreachable(format!(
                    "the download did not begin within {} s",
                    STREAM_ANSWER.as_secs()
                ))
            })?
            .map_err(|e| AgentCallError::Unreachable(describe(&e)))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = read_bounded(response).await?;
            return Err(refusal(status, &body));
        }
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map(|c| c.to_vec()).map_err(|e| describe(&e)))
            .boxed();
        Ok(idle_guarded(chunks, STREAM_IDLE, None))
    }

    async fn delete_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<VolumeObservation, AgentCallError> {
        let path = paths::volume_version(name, version);
        let request = self.request(Method::DELETE, agent, &path)?;
        self.send(request.timeout(self.slow_timeout), agent).await
    }

    async fn checksum_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<StoredContent, AgentCallError> {
        self.job(agent, name, &VolumeJob::Checksum { version, bytes })
            .await
    }

    async fn copy_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        from: u64,
        to: u64,
        pause_guest: bool,
    ) -> Result<StoredContent, AgentCallError> {
        self.job(
            agent,
            name,
            &VolumeJob::Copy {
                from,
                to,
                pause_guest,
            },
        )
        .await
    }

    async fn capture_disk(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        domain: &str,
        to: u64,
    ) -> Result<StoredContent, AgentCallError> {
        self.job(
            agent,
            name,
            &VolumeJob::Capture {
                domain: domain.to_owned(),
                to,
            },
        )
        .await
    }

    async fn format_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        format: &LuksFormat,
    ) -> Result<StoredContent, AgentCallError> {
        let path = paths::version_luks(name, version);
        let request = self.request(Method::POST, agent, &path)?;
        self.send(request.json(format).timeout(self.slow_timeout), agent)
            .await
    }

    async fn lock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<(), AgentCallError> {
        let path = paths::version_unlock(name, version);
        let request = self.request(Method::DELETE, agent, &path)?;
        self.send_raw(request.timeout(QUICK_CALL), agent)
            .await
            .map(drop)
    }

    async fn unlock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        unlock: &VolumeUnlock,
    ) -> Result<(), AgentCallError> {
        let path = paths::version_unlock(name, version);
        let request = self.request(Method::POST, agent, &path)?;
        self.send_raw(request.timeout(self.slow_timeout).json(unlock), agent)
            .await
            .map(drop)
    }
}
