//! Named secrets (agent tokens): encrypted in the database in embedded mode,
//! Kubernetes Secrets in cluster mode. Never logged, never returned by the API.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::error::{Result, StoreError};
use crate::vault::Vault;

#[async_trait]
pub trait Secrets: Send + Sync + 'static {
    async fn put(&self, name: &str, value: &str) -> Result<()>;
    async fn get(&self, name: &str) -> Result<Option<String>>;
}

#[async_trait]
impl Secrets for Vault {
    async fn put(&self, name: &str, value: &str) -> Result<()> {
        Vault::put(self, name, value, self.now_millis()).await
    }

    async fn get(&self, name: &str) -> Result<Option<String>> {
        Vault::get(self, name).await
    }
}

/// Secrets as Kubernetes Secrets in the control plane's namespace, one per
/// name, the value under key `token`.
pub struct KubeSecrets {
    api: Api<Secret>,
}

const KEY: &str = "token";

impl KubeSecrets {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }

    /// `hypervisor/hv1` → `stratus-hypervisor-hv1` (a valid Secret name).
    pub fn secret_name(name: &str) -> String {
        let cleaned: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("stratus-{cleaned}")
    }
}

fn kube_error(error: kube::Error) -> StoreError {
    StoreError::Kubernetes(error.to_string())
}

#[async_trait]
impl Secrets for KubeSecrets {
    async fn put(&self, name: &str, value: &str) -> Result<()> {
        let secret_name = Self::secret_name(name);
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "labels": { "app.kubernetes.io/managed-by": "stratus" },
                "annotations": { "stratus.dev/credential": name },
            },
            "type": "Opaque",
            "stringData": { KEY: value },
        });
        self.api
            .patch(
                &secret_name,
                &PatchParams::apply("stratus").force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(kube_error)?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<String>> {
        let Some(secret) = self
            .api
            .get_opt(&Self::secret_name(name))
            .await
            .map_err(kube_error)?
        else {
            return Ok(None);
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .map(|bytes| bytes.0.clone());
        value
            .map(|bytes| String::from_utf8(bytes).map_err(|_| StoreError::Decrypt(name.to_owned())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_valid_kubernetes_names() {
        assert_eq!(
            KubeSecrets::secret_name("hypervisor/hv1"),
            "stratus-hypervisor-hv1"
        );
        assert_eq!(
            KubeSecrets::secret_name("hypervisor/Par_1"),
            "stratus-hypervisor-par-1"
        );
    }
}
