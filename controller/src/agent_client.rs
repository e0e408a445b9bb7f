//! How the controller talks to node agents. A trait, so unit tests can use
//! the simulated agent; production uses [`HttpAgentClient`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use async_trait::async_trait;
use stratus_core::agent_api::{
    AgentErrorBody, AgentErrorCode, AgentErrorDetail, DomainObservation, DomainSpec, JobStatus,
    LuksFormat, NodeReport, StoredContent, VolumeJob, VolumeObservation, VolumeSpec, VolumeUnlock,
    volume_job_path,
};

/// A content streaming to or from an agent, chunk by chunk.
pub type ContentStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>;
use stratus_core::ids::HypervisorName;
use stratus_core::resources::Hypervisor;
use stratus_store::Resources;
use stratus_store::secrets::Secrets;

/// Where an agent listens and the token it expects.
#[derive(Clone)]
pub struct AgentEndpoint {
    pub hypervisor: HypervisorName,
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEndpoint")
            .field("hypervisor", &self.hypervisor)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentCallError {
    /// No answer, a timeout or a server-side failure: worth retrying.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The agent understood and refused.
    #[error("agent refused ({code:?}): {message}")]
    Rejected {
        code: AgentErrorCode,
        message: String,
    },
}

impl AgentCallError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "agent_unreachable",
            Self::Rejected { .. } => "agent_rejected",
        }
    }
}

#[async_trait]
pub trait AgentClient: Send + Sync + 'static {
    async fn node(&self, agent: &AgentEndpoint) -> Result<NodeReport, AgentCallError>;
    async fn observe(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError>;
    async fn ensure(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
        spec: &DomainSpec,
    ) -> Result<DomainObservation, AgentCallError>;
    async fn reboot(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError>;
    async fn destroy(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError>;
    /// The tail of the domain's serial console.
    async fn console(&self, agent: &AgentEndpoint, domain: &str)
    -> Result<Vec<u8>, AgentCallError>;
    /// The storage copy of the subscription managed as `name`.
    async fn observe_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError>;
    async fn ensure_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        spec: &VolumeSpec,
    ) -> Result<VolumeObservation, AgentCallError>;
    /// Wipes and deletes the storage copy.
    async fn destroy_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError>;
    /// Writes `content` into a new `version` of the copy (of `size_gib`).
    async fn write_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        size_gib: u64,
        content: ContentStream,
    ) -> Result<StoredContent, AgentCallError>;
    /// The first `bytes` of `version` of the copy.
    async fn read_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<ContentStream, AgentCallError>;
    /// Reads the first `bytes` of `version` back and answers their SHA-256.
    async fn checksum_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<StoredContent, AgentCallError>;
    /// Wipes and deletes `version` of the copy.
    async fn delete_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<VolumeObservation, AgentCallError>;
    /// Copies version `from` of the copy into the new version `to` on the
    /// same hypervisor and answers the new one's length and SHA-256;
    /// refused (409) while a domain has `from` as a disk, unless
    /// `pause_guest`: a running guest is paused for the copy.
    async fn copy_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        from: u64,
        to: u64,
        pause_guest: bool,
    ) -> Result<StoredContent, AgentCallError>;
    /// Creates `version` of the copy as a LUKS volume formatted with the
    /// customer's key (which the agent unloads again) and answers its
    /// length and SHA-256.
    async fn format_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        format: &LuksFormat,
    ) -> Result<StoredContent, AgentCallError>;
    /// Unloads the key of `version` of the copy on its hypervisor (an
    /// attach that lost a race does not leave it loaded).
    async fn lock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<(), AgentCallError>;
    /// Loads the customer's key to `version` of the copy on its hypervisor,
    /// once it opens it (refused with `wrong_key` otherwise).
    async fn unlock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        unlock: &VolumeUnlock,
    ) -> Result<(), AgentCallError>;
}

/// How long an agent token read from the credential store is reused. Every
/// reconcile resolves its agent, and each read is a database read and a
/// decryption (an API-server GET of a Secret in Kubernetes mode); a token
/// rotated meanwhile is picked up by the next probe of its hypervisor, on
/// the agent's first refusal, or after this long.
const TOKEN_REUSE: Duration = Duration::from_secs(30);

struct CachedToken {
    credential: String,
    token: String,
    read_at: Instant,
}

/// Finds the agent of a hypervisor: its URL from the Hypervisor object and
/// its token from the credential store. The one place that resolves both.
#[derive(Clone)]
pub struct AgentDirectory {
    pub hypervisors: Resources<Hypervisor>,
    credentials: Arc<dyn Secrets>,
    /// One entry per registered hypervisor at most.
    tokens: Arc<Mutex<HashMap<HypervisorName, CachedToken>>>,
}

impl AgentDirectory {
    pub fn new(hypervisors: Resources<Hypervisor>, credentials: Arc<dyn Secrets>) -> Self {
        Self {
            hypervisors,
            credentials,
            tokens: Arc::default(),
        }
    }

    /// The agent of the hypervisor called `name`; the error says why there is none.
    pub async fn by_name(&self, name: &HypervisorName) -> Result<AgentEndpoint, String> {
        let hypervisor = self
            .hypervisors
            .get(None, name.as_str())
            .await
            .map_err(|e| format!("cannot read hypervisor {name}: {e}"))?
            .ok_or_else(|| format!("hypervisor {name} is not registered"))?;
        self.endpoint(&hypervisor).await
    }

    /// The agent of `hypervisor`; the error says why there is none.
    pub async fn endpoint(&self, hypervisor: &Hypervisor) -> Result<AgentEndpoint, String> {
        let name = HypervisorName::of(hypervisor);
        let credential = &hypervisor.spec.credential;
        let token = match self.reusable_token(&name, credential) {
            Some(token) => token,
            None => {
                let token = self
                    .credentials
                    .get(credential)
                    .await
                    .map_err(|e| format!("cannot read credential {credential}: {e}"))?
                    .ok_or_else(|| {
                        format!("credential {credential} of hypervisor {name} is missing")
                    })?;
                self.lock_tokens().insert(
                    name.clone(),
                    CachedToken {
                        credential: credential.clone(),
                        token: token.clone(),
                        read_at: Instant::now(),
                    },
                );
                token
            }
        };
        Ok(AgentEndpoint {
            hypervisor: name,
            url: hypervisor.spec.url.clone(),
            token,
        })
    }

    /// Reads the hypervisor's token again on its next use: its agent refused
    /// the one held, or a probe wants the current one.
    pub fn forget_token(&self, name: &HypervisorName) {
        self.lock_tokens().remove(name);
    }

    fn reusable_token(&self, name: &HypervisorName, credential: &str) -> Option<String> {
        let tokens = self.lock_tokens();
        let cached = tokens.get(name)?;
        (cached.credential == credential && cached.read_at.elapsed() < TOKEN_REUSE)
            .then(|| cached.token.clone())
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<HypervisorName, CachedToken>> {
        // A panic while holding the lock leaves a consistent map.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A short call (an observation, a report, an unlock) answers within this.
pub const QUICK_CALL: Duration = Duration::from_secs(15);
/// A content stream, to or from an agent, that moves no byte for this long
/// is cut. Never a total timeout: 100 GiB take what they take.
pub const STREAM_IDLE: Duration = Duration::from_secs(120);
/// How long an agent gets to answer an upload once its last byte was sent
/// (it syncs the version and says its SHA-256), or to begin a download.
pub const STREAM_ANSWER: Duration = Duration::from_secs(120);
/// Polls of an agent job: soon at first, then less often.
const JOB_POLL_FIRST: Duration = Duration::from_millis(200);
const JOB_POLL_MAX: Duration = Duration::from_secs(5);
/// Polls of a job in a row that reach no agent before the call gives up
/// (the job goes on; the next attempt asks for the same one).
const JOB_POLL_FAILURES: u32 = 5;

/// `stream` cut with an error when no chunk comes for `idle`; `ended` is
/// told when the stream ends, well or not.
pub fn idle_guarded(
    stream: ContentStream,
    idle: Duration,
    ended: Option<tokio::sync::oneshot::Sender<()>>,
) -> ContentStream {
    use futures::StreamExt;
    struct Guard {
        stream: ContentStream,
        ended: Option<tokio::sync::oneshot::Sender<()>>,
        done: bool,
    }
    impl Guard {
        fn end(&mut self) {
            self.done = true;
            if let Some(ended) = self.ended.take() {
                let _ = ended.send(());
            }
        }
    }
    let guard = Guard {
        stream,
        ended,
        done: false,
    };
    futures::stream::unfold(guard, move |mut guard| async move {
        if guard.done {
            return None;
        }
        match tokio::time::timeout(idle, guard.stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), guard)),
            Ok(Some(Err(error))) => {
                guard.end();
                Some((Err(error), guard))
            }
            Ok(None) => {
                guard.end();
                None
            }
            Err(_) => {
                guard.end();
                Some((
                    Err(format!("no byte moved for {} s", idle.as_secs())),
                    guard,
                ))
            }
        }
    })
    .boxed()
}

/// The agent client: HTTPS with mutual TLS, plus the agent's bearer token.
#[derive(Clone)]
pub struct HttpAgentClient {
    /// Replaced when the controller's certificate files change.
    http: watch::Receiver<reqwest::Client>,
    /// Ensure may wait for a guest to shut down, so it gets longer.
    slow_timeout: Duration,
}

impl HttpAgentClient {
    /// A client using the latest of `http` (see [`Self::https_client`]).
    pub fn new(http: watch::Receiver<reqwest::Client>) -> Self {
        Self {
            http,
            slow_timeout: Duration::from_secs(300),
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

    fn http(&self) -> reqwest::Client {
        self.http.borrow().clone()
    }

    fn url(agent: &AgentEndpoint, path: &str) -> String {
        format!("{}{path}", agent.url.trim_end_matches('/'))
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
        let url = Self::url(agent, &volume_job_path(name, &job.id()));
        let mut status: JobStatus = self
            .send(self.http().put(&url).timeout(QUICK_CALL).json(job), agent)
            .await?;
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
                .send::<JobStatus>(self.http().get(&url).timeout(QUICK_CALL), agent)
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
                    self.send(self.http().put(&url).timeout(QUICK_CALL).json(job), agent)
                        .await?
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
        self.send(
            self.http()
                .get(Self::url(agent, "/v1/node"))
                .timeout(QUICK_CALL),
            agent,
        )
        .await
    }

    async fn observe(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        self.send(
            self.http()
                .get(Self::url(agent, &format!("/v1/domains/{domain}")))
                .timeout(QUICK_CALL),
            agent,
        )
        .await
    }

    async fn ensure(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
        spec: &DomainSpec,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self
            .http()
            .put(Self::url(agent, &format!("/v1/domains/{domain}")))
            .timeout(self.slow_timeout)
            .json(spec);
        self.send(request, agent).await
    }

    async fn reboot(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self
            .http()
            .post(Self::url(agent, &format!("/v1/domains/{domain}/reboot")))
            .timeout(self.slow_timeout);
        self.send(request, agent).await
    }

    async fn destroy(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<DomainObservation, AgentCallError> {
        let request = self
            .http()
            .delete(Self::url(agent, &format!("/v1/domains/{domain}")))
            .timeout(self.slow_timeout);
        self.send(request, agent).await
    }

    async fn console(
        &self,
        agent: &AgentEndpoint,
        domain: &str,
    ) -> Result<Vec<u8>, AgentCallError> {
        let request = self
            .http()
            .get(Self::url(agent, &format!("/v1/domains/{domain}/console")))
            .timeout(QUICK_CALL);
        self.send_raw(request, agent).await
    }

    async fn observe_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self
            .http()
            .get(Self::url(agent, &format!("/v1/volumes/{name}")))
            .timeout(QUICK_CALL);
        self.send(request, agent).await
    }

    async fn ensure_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        spec: &VolumeSpec,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self
            .http()
            .put(Self::url(agent, &format!("/v1/volumes/{name}")))
            .timeout(self.slow_timeout)
            .json(spec);
        self.send(request, agent).await
    }

    async fn destroy_volume(
        &self,
        agent: &AgentEndpoint,
        name: &str,
    ) -> Result<VolumeObservation, AgentCallError> {
        let request = self
            .http()
            .delete(Self::url(agent, &format!("/v1/volumes/{name}")))
            .timeout(self.slow_timeout);
        self.send(request, agent).await
    }

    async fn write_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        size_gib: u64,
        content: ContentStream,
    ) -> Result<StoredContent, AgentCallError> {
        let (sent, all_sent) = tokio::sync::oneshot::channel();
        let body = idle_guarded(content, STREAM_IDLE, Some(sent));
        let request = self
            .http()
            .put(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}?size_gib={size_gib}"),
            ))
            .body(reqwest::Body::wrap_stream(body));
        let call = self.send(request, agent);
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
        let request = self
            .http()
            .get(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}?bytes={bytes}"),
            ))
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
        let request = self
            .http()
            .delete(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}"),
            ))
            .timeout(self.slow_timeout);
        self.send(request, agent).await
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

    async fn format_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        format: &LuksFormat,
    ) -> Result<StoredContent, AgentCallError> {
        let request = self
            .http()
            .post(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}/luks"),
            ))
            .json(format)
            .timeout(self.slow_timeout);
        self.send(request, agent).await
    }

    async fn lock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
    ) -> Result<(), AgentCallError> {
        let request = self
            .http()
            .delete(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}/unlock"),
            ))
            .timeout(QUICK_CALL);
        self.send_raw(request, agent).await.map(drop)
    }

    async fn unlock_version(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        version: u64,
        unlock: &VolumeUnlock,
    ) -> Result<(), AgentCallError> {
        let request = self
            .http()
            .post(Self::url(
                agent,
                &format!("/v1/volumes/{name}/versions/{version}/unlock"),
            ))
            .timeout(self.slow_timeout)
            .json(unlock);
        self.send_raw(request, agent).await.map(drop)
    }
}
