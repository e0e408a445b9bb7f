//! The agent contract as a Rust trait: what a caller may ask of a node
//! agent, where an agent is, and what a failed call means.

use std::time::Duration;

use async_trait::async_trait;
use stratus_core::agent_api::{
    AgentErrorCode, DomainObservation, DomainSpec, LuksFormat, NodeReport, StoredContent,
    VolumeObservation, VolumeSpec, VolumeUnlock,
};
use stratus_core::ids::HypervisorName;

/// A content streaming to or from an agent, chunk by chunk.
pub type ContentStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>;

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
    /// Copies the system disk of `domain` (of the copy's account, on this
    /// hypervisor) into the new version `to` of the copy, as of one moment,
    /// and answers its length and SHA-256: a snapshot of a server.
    async fn capture_disk(
        &self,
        agent: &AgentEndpoint,
        name: &str,
        domain: &str,
        to: u64,
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

/// A short call (an observation, a report, an unlock) answers within this.
pub const QUICK_CALL: Duration = Duration::from_secs(15);
/// A content stream, to or from an agent, that moves no byte for this long
/// is cut. Never a total timeout: 100 GiB take what they take.
pub const STREAM_IDLE: Duration = Duration::from_secs(120);
/// How long an agent gets to answer an upload once its last byte was sent
/// (it syncs the version and says its SHA-256), or to begin a download.
pub const STREAM_ANSWER: Duration = Duration::from_secs(120);
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
