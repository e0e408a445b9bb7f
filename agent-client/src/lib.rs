//! How stratus talks to node agents: the [`AgentClient`] trait the
//! controller and the API act through, its HTTPS implementation (fenced by
//! leadership in a controller replica), the directory that resolves a
//! hypervisor's agent, and, for tests, a simulated agent with injected
//! faults. The wire format itself is `stratus_core::agent_api`.

mod client;
mod directory;
mod http;
#[cfg(feature = "testing")]
pub mod simulated;

pub use client::{
    AgentCallError, AgentClient, AgentEndpoint, ContentStream, QUICK_CALL, STREAM_ANSWER,
    STREAM_IDLE, idle_guarded,
};
pub use directory::AgentDirectory;
pub use http::{HttpAgentClient, MAX_AGENT_RESPONSE};
