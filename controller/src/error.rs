use stratus_core::ids::HypervisorName;

use stratus_agent_client::AgentCallError;

/// Why a reconcile did not finish; every variant is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("store: {0}")]
    Store(#[from] stratus_store::StoreError),
    #[error("agent of hypervisor {hypervisor}: {source}")]
    Agent {
        hypervisor: HypervisorName,
        #[source]
        source: AgentCallError,
    },
    #[error("hypervisor {0} is not usable: {1}")]
    Hypervisor(String, String),
    #[error("object {0} is malformed: {1}")]
    Malformed(String, String),
    #[error("configuration: {0}")]
    Config(String),
}

impl ControllerError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Store(e) => e.metric_label(),
            Self::Agent { source, .. } => source.metric_label(),
            Self::Hypervisor(..) => "hypervisor",
            Self::Malformed(..) => "malformed",
            Self::Config(..) => "config",
        }
    }
}
