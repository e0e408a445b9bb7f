//! Where each hypervisor's agent is and the token it expects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stratus_core::ids::HypervisorName;
use stratus_core::resources::Hypervisor;
use stratus_store::Resources;
use stratus_store::secrets::Secrets;
use tokio::time::Instant;

use crate::client::AgentEndpoint;

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
