//! Where the controller finds agent tokens: the encrypted vault in embedded
//! mode (a Kubernetes Secret in cluster mode).

use std::collections::HashMap;

use async_trait::async_trait;
use stratus_store::vault::Vault;

#[async_trait]
pub trait Credentials: Send + Sync + 'static {
    /// The secret called `name`, or `Ok(None)` when there is none.
    async fn secret(&self, name: &str) -> Result<Option<String>, String>;
}

#[async_trait]
impl Credentials for Vault {
    async fn secret(&self, name: &str) -> Result<Option<String>, String> {
        self.get(name).await.map_err(|e| e.to_string())
    }
}

/// Fixed secrets, for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials(pub HashMap<String, String>);

#[async_trait]
impl Credentials for StaticCredentials {
    async fn secret(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.0.get(name).cloned())
    }
}
