use stratus_core::agent_api::AgentErrorCode;

/// Everything the agent can fail with; each maps to one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("libvirt: {0}")]
    Libvirt(#[from] virt::error::Error),
    #[error("the disk {volume} of domain {domain} is missing and creating it was not allowed")]
    DiskMissing { domain: String, volume: String },
    #[error("image volume {0} is not in the storage pool")]
    ImageMissing(String),
    #[error("storage pool {pool} has no room for {needed_gib} GiB")]
    NoSpace { pool: String, needed_gib: u64 },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("saving the domain definitions to {path}: {source}")]
    Persist {
        path: String,
        source: std::io::Error,
    },
    #[error("agent worker failed: {0}")]
    Worker(String),
}

impl AgentError {
    pub fn code(&self) -> AgentErrorCode {
        match self {
            Self::Libvirt(_) | Self::Persist { .. } | Self::Worker(_) => AgentErrorCode::Hypervisor,
            Self::DiskMissing { .. } => AgentErrorCode::DiskMissing,
            Self::ImageMissing(_) => AgentErrorCode::ImageMissing,
            Self::NoSpace { .. } => AgentErrorCode::NoSpace,
            Self::BadRequest(_) => AgentErrorCode::BadRequest,
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Libvirt(_) => "libvirt",
            Self::DiskMissing { .. } => "disk_missing",
            Self::ImageMissing(_) => "image_missing",
            Self::NoSpace { .. } => "no_space",
            Self::BadRequest(_) => "bad_request",
            Self::Persist { .. } => "persist",
            Self::Worker(_) => "worker",
        }
    }
}
