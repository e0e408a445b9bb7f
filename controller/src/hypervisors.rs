//! The hypervisor prober: asks every agent for its capacity and records in
//! the Hypervisor's status whether it answered.

use std::sync::Arc;

use kube::ResourceExt;
use stratus_core::Clock;
use stratus_core::conditions;
use stratus_core::resources::{Hypervisor, HypervisorCapacity, HypervisorStatus};
use stratus_store::Resources;
use stratus_store::secrets::Secrets;

use crate::agent_client::{AgentClient, AgentEndpoint};
use crate::error::ControllerError;

const GIB: u64 = 1 << 30;

pub struct HypervisorProber {
    pub hypervisors: Resources<Hypervisor>,
    pub agents: Arc<dyn AgentClient>,
    pub credentials: Arc<dyn Secrets>,
    pub clock: Arc<dyn Clock>,
}

impl HypervisorProber {
    /// Probes every hypervisor; returns how many became reachable (new
    /// room for servers waiting to be placed).
    pub async fn probe_all(&self) -> Result<usize, ControllerError> {
        let hypervisors = self.hypervisors.list(None).await?.items;
        let probes = hypervisors.iter().map(|hv| self.probe(hv));
        let mut became_reachable = 0;
        for result in futures::future::join_all(probes).await {
            became_reachable += usize::from(result?);
        }
        Ok(became_reachable)
    }

    #[tracing::instrument(skip_all, fields(hypervisor = %hypervisor.name_any()))]
    /// Probes one hypervisor; returns whether it became reachable.
    pub async fn probe(&self, hypervisor: &Hypervisor) -> Result<bool, ControllerError> {
        let name = hypervisor.name_any();
        let mut status: HypervisorStatus = hypervisor.status.clone().unwrap_or_default();
        let was_reachable = status.reachable;
        let now = self.clock.now().to_string();
        let answer = match self.credentials.get(&hypervisor.spec.credential).await {
            Ok(Some(token)) => {
                let endpoint = AgentEndpoint {
                    hypervisor: name.clone(),
                    url: hypervisor.spec.url.clone(),
                    token,
                };
                self.agents.node(&endpoint).await.map_err(|e| e.to_string())
            }
            Ok(None) => Err(format!(
                "credential {} is missing",
                hypervisor.spec.credential
            )),
            Err(e) => Err(format!(
                "cannot read credential {}: {e}",
                hypervisor.spec.credential
            )),
        };
        match answer {
            Ok(report) => {
                if report.zone != hypervisor.spec.zone {
                    tracing::warn!(agent_zone = %report.zone, registered_zone = %hypervisor.spec.zone, "agent reports another zone than registered");
                }
                status.reachable = true;
                status.last_contact = Some(now.clone());
                status.message = None;
                status.capacity = Some(HypervisorCapacity {
                    vcpus: report.vcpus,
                    memory_mib: report.memory_mib,
                    disk_gib: report.pool.capacity_bytes / GIB,
                    images: report.images,
                });
                conditions::set(
                    &mut status.conditions,
                    conditions::READY,
                    true,
                    "AgentAnswered",
                    "",
                    &now,
                );
            }
            Err(why) => {
                if status.reachable {
                    tracing::warn!(reason = %why, "hypervisor became unreachable");
                }
                status.reachable = false;
                conditions::set(
                    &mut status.conditions,
                    conditions::READY,
                    false,
                    "AgentUnavailable",
                    why.clone(),
                    &now,
                );
                status.message = Some(why);
            }
        }
        if hypervisor.status.as_ref() != Some(&status) {
            self.hypervisors.patch_status(None, &name, &status).await?;
        }
        Ok(status.reachable && !was_reachable)
    }
}
