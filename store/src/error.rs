/// Everything that can go wrong in the store crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{kind} {name} was modified concurrently (resourceVersion {expected} is stale)")]
    Conflict {
        kind: String,
        name: String,
        expected: String,
    },
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("watch from resourceVersion {0} is older than the kept history; relist")]
    Gone(String),
    #[error("list continue token is invalid or expired ({0}); list again from the first page")]
    InvalidContinue(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored document is malformed: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error("credential {0}: cannot be decrypted with this master key")]
    Decrypt(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
}

impl StoreError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Conflict { .. } => "conflict",
            Self::Invalid(_) => "invalid",
            Self::Gone(_) => "gone",
            Self::InvalidContinue(_) => "invalid_continue",
            Self::Database(_) => "database",
            Self::Migration(_) => "migration",
            Self::Serialization(_) => "serialization",
            Self::Decrypt(_) => "decrypt",
            Self::MasterKey(_) => "master_key",
            Self::Kubernetes(_) => "kubernetes",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
