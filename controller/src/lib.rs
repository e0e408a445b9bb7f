//! The stratus controller: reconcilers that make hypervisors match the
//! resources, the agent client they act through, and the hypervisor prober.

pub mod agent_client;
pub mod error;
pub mod events;
pub mod hypervisors;
pub mod leader;
pub mod metrics;
pub mod queue;
pub mod runtime;
pub mod servers;
pub mod simulated;

pub use agent_client::{AgentCallError, AgentClient, AgentEndpoint, HttpAgentClient};
pub use error::ControllerError;
pub use runtime::{Controller, ControllerConfig};
