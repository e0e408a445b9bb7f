use stratus_core::agent_api::AgentErrorCode;

/// Everything the agent can fail with; each maps to one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("libvirt: {0}")]
    Libvirt(#[from] virt::error::Error),
    #[error("the disk {volume} of domain {domain} is missing and creating it was not allowed")]
    DiskMissing { domain: String, volume: String },
    #[error("domain {domain} belongs to agent {agent} on this host; this agent never touches it")]
    OtherAgents { domain: String, agent: String },
    #[error("the content is longer than the volume's {limit} bytes; nothing of it was kept")]
    ContentTooLarge { limit: u64 },
    #[error("storage version: {0}")]
    VersionConflict(String),
    #[error("storage version {0} already exists")]
    VersionExists(String),
    #[error("the content stream was cut: {0}")]
    UploadAborted(String),
    #[error("the storage volume {0} is missing and creating it was not allowed")]
    VolumeMissing(String),
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
    #[error("cloud-init seed: {0}")]
    Seed(String),
    #[error(
        "this hypervisor cannot run domains of type {wanted:?} (its capabilities offer {offered})"
    )]
    DomainType { wanted: String, offered: String },
    #[error("this hypervisor must filter guest traffic and cannot, so it starts no guest: {0}")]
    AntiSpoofingUnavailable(String),
    #[error("the key does not open the LUKS volume {0}")]
    WrongKey(String),
    #[error("this hypervisor cannot keep volume keys (libvirt secrets): {0}")]
    KeysUnsupported(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error(
        "the volume {volume} is a disk of domain {domain}: it is never wiped, deleted or overwritten under it"
    )]
    VolumeInUse { volume: String, domain: String },
    #[error("no job {0} is known here (never started, or its result was fetched long ago)")]
    UnknownJob(String),
    #[error(
        "copying {volume} needed its guest paused longer than the {limit_ms} ms allowed: the guest was resumed and the copy dropped"
    )]
    PauseLimit { volume: String, limit_ms: u64 },
    #[error("the backup job copying {volume} failed: {message}")]
    BackupFailed { volume: String, message: String },
    #[error("this hypervisor cannot stream volume bytes (store, read or copy a content): {0}")]
    ContentUnsupported(String),
    #[error("libvirt gave {what} XML the agent cannot read: {message}")]
    UnreadableXml { what: &'static str, message: String },
}

impl AgentError {
    pub fn code(&self) -> AgentErrorCode {
        match self {
            Self::Libvirt(error) => libvirt_code(error),
            Self::Persist { .. } | Self::Worker(_) | Self::Seed(_) | Self::DomainType { .. } => {
                AgentErrorCode::Hypervisor
            }
            Self::DiskMissing { .. } => AgentErrorCode::DiskMissing,
            Self::VolumeMissing(_) => AgentErrorCode::VolumeMissing,
            Self::ContentTooLarge { .. } => AgentErrorCode::ContentTooLarge,
            Self::VersionConflict(_) => AgentErrorCode::VersionConflict,
            Self::VersionExists(_) => AgentErrorCode::VersionExists,
            Self::UploadAborted(_) => AgentErrorCode::BadRequest,
            Self::ImageMissing(_) => AgentErrorCode::ImageMissing,
            Self::NoSpace { .. } => AgentErrorCode::NoSpace,
            Self::BadRequest(_) | Self::OtherAgents { .. } => AgentErrorCode::BadRequest,
            Self::AntiSpoofingUnavailable(_) => AgentErrorCode::AntiSpoofingUnavailable,
            Self::WrongKey(_) => AgentErrorCode::WrongKey,
            Self::KeysUnsupported(_) => AgentErrorCode::KeysUnsupported,
            Self::Busy(_) => AgentErrorCode::Busy,
            Self::VolumeInUse { .. } => AgentErrorCode::VolumeInUse,
            Self::UnknownJob(_) => AgentErrorCode::UnknownJob,
            Self::PauseLimit { .. } => AgentErrorCode::PauseLimit,
            Self::ContentUnsupported(_) => AgentErrorCode::ContentUnsupported,
            Self::BackupFailed { .. } | Self::UnreadableXml { .. } => AgentErrorCode::Hypervisor,
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Libvirt(_) => "libvirt",
            Self::DiskMissing { .. } => "disk_missing",
            Self::VolumeMissing(_) => "volume_missing",
            Self::ContentTooLarge { .. } => "content_too_large",
            Self::VersionConflict(_) => "version_conflict",
            Self::VersionExists(_) => "version_exists",
            Self::UploadAborted(_) => "upload_aborted",
            Self::ImageMissing(_) => "image_missing",
            Self::NoSpace { .. } => "no_space",
            Self::BadRequest(_) => "bad_request",
            Self::OtherAgents { .. } => "other_agents",
            Self::Persist { .. } => "persist",
            Self::Worker(_) => "worker",
            Self::Seed(_) => "seed",
            Self::DomainType { .. } => "domain_type",
            Self::AntiSpoofingUnavailable(_) => "anti_spoofing_unavailable",
            Self::WrongKey(_) => "wrong_key",
            Self::KeysUnsupported(_) => "keys_unsupported",
            Self::Busy(_) => "busy",
            Self::VolumeInUse { .. } => "volume_in_use",
            Self::UnknownJob(_) => "unknown_job",
            Self::PauseLimit { .. } => "pause_limit",
            Self::BackupFailed { .. } => "backup_failed",
            Self::UnreadableXml { .. } => "unreadable_xml",
            Self::ContentUnsupported(_) => "content_unsupported",
        }
    }
}

/// What a libvirt failure means to the caller, by libvirt's error number:
/// a request libvirt refuses as invalid is the caller's to fix (retrying
/// the same request cannot help); anything else is the hypervisor's trouble
/// and worth retrying.
fn libvirt_code(error: &virt::error::Error) -> AgentErrorCode {
    use virt::error::ErrorNumber as N;
    match error.code() {
        virt::error::ErrorNumberEnum::Known(
            N::InvalidArg | N::XmlError | N::XmlDetail | N::ConfigUnsupported,
        ) => AgentErrorCode::BadRequest,
        _ => AgentErrorCode::Hypervisor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real libvirt errors (test driver), classified by their number.
    #[test]
    fn libvirt_errors_are_classified_by_number() {
        virt::error::clear_error_callback();
        let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
        let malformed = conn.define_domain_xml("<domain").unwrap_err();
        assert_eq!(
            AgentError::Libvirt(malformed).code(),
            AgentErrorCode::BadRequest
        );
        let missing = conn.lookup_domain_by_name("stratus-absent").unwrap_err();
        assert_eq!(
            AgentError::Libvirt(missing).code(),
            AgentErrorCode::Hypervisor
        );
    }
}
