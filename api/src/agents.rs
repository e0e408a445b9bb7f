//! What the API asks of agents (guests' consoles, storage content), through
//! the agent client every other caller uses.

use std::sync::Arc;

use async_trait::async_trait;
use stratus_agent_client::{AgentCallError, AgentClient, AgentDirectory, AgentEndpoint};
use stratus_core::agent_api::{LuksFormat, VolumeKey, VolumeUnlock};
use stratus_core::ids::HypervisorName;
use stratus_store::secrets::Secrets;
use stratus_store::{ObjectStore, Resources};

/// The agents of the hypervisors: each one's URL and token come from its
/// Hypervisor object and the credential store, as for every other call.
pub struct AgentsForApi {
    directory: AgentDirectory,
    agents: Arc<dyn AgentClient>,
}

impl AgentsForApi {
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        credentials: Arc<dyn Secrets>,
        agents: Arc<dyn AgentClient>,
    ) -> Self {
        Self {
            directory: AgentDirectory::new(Resources::new(objects), credentials),
            agents,
        }
    }
}

#[async_trait]
impl crate::ServerConsoles for AgentsForApi {
    async fn tail(&self, hypervisor: &str, domain: &str) -> Result<Vec<u8>, String> {
        let agent = self.endpoint(hypervisor).await?;
        self.agents
            .console(&agent, domain)
            .await
            .map_err(|error| error.to_string())
    }
}

impl AgentsForApi {
    async fn endpoint(&self, hypervisor: &str) -> Result<AgentEndpoint, String> {
        let name = HypervisorName::parse(hypervisor)
            .ok_or_else(|| format!("{hypervisor:?} is not a hypervisor name"))?;
        self.directory.by_name(&name).await
    }
}

/// What an agent's refusal of a content means to the API.
fn content_error(error: AgentCallError) -> crate::ContentError {
    use crate::ContentError;
    use stratus_core::agent_api::AgentErrorCode;
    match error {
        AgentCallError::Rejected {
            code: AgentErrorCode::ContentTooLarge,
            ..
        } => ContentError::TooLarge,
        AgentCallError::Rejected {
            code: AgentErrorCode::VersionConflict | AgentErrorCode::VersionExists,
            message,
        } => ContentError::Conflict(message),
        AgentCallError::Rejected {
            code: AgentErrorCode::WrongKey,
            ..
        } => ContentError::WrongKey,
        other => ContentError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl crate::StorageContents for AgentsForApi {
    async fn write(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        size_gib: u64,
        content: crate::ContentStream,
    ) -> Result<stratus_core::agent_api::StoredContent, crate::ContentError> {
        let agent = self
            .endpoint(hypervisor)
            .await
            .map_err(crate::ContentError::Unavailable)?;
        self.agents
            .write_version(&agent, name, version, size_gib, content)
            .await
            .map_err(content_error)
    }

    async fn read(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        bytes: u64,
    ) -> Result<crate::ContentStream, crate::ContentError> {
        let agent = self
            .endpoint(hypervisor)
            .await
            .map_err(crate::ContentError::Unavailable)?;
        self.agents
            .read_version(&agent, name, version, bytes)
            .await
            .map_err(content_error)
    }

    async fn format(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        size_gib: u64,
        key: &VolumeKey,
    ) -> Result<stratus_core::agent_api::StoredContent, crate::ContentError> {
        let agent = self
            .endpoint(hypervisor)
            .await
            .map_err(crate::ContentError::Unavailable)?;
        let format = LuksFormat {
            size_gib,
            key: key.clone(),
        };
        self.agents
            .format_version(&agent, name, version, &format)
            .await
            .map_err(content_error)
    }

    async fn lock(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
    ) -> Result<(), crate::ContentError> {
        let agent = self
            .endpoint(hypervisor)
            .await
            .map_err(crate::ContentError::Unavailable)?;
        self.agents
            .lock_version(&agent, name, version)
            .await
            .map_err(content_error)
    }

    async fn unlock(
        &self,
        hypervisor: &str,
        name: &str,
        version: u64,
        key: &VolumeKey,
    ) -> Result<(), crate::ContentError> {
        let agent = self
            .endpoint(hypervisor)
            .await
            .map_err(crate::ContentError::Unavailable)?;
        let unlock = VolumeUnlock { key: key.clone() };
        self.agents
            .unlock_version(&agent, name, version, &unlock)
            .await
            .map_err(content_error)
    }
}
