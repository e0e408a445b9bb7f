//! The stratus node agent.
//!
//! It runs on a hypervisor, owns nothing but its libvirt connection and
//! answers idempotent *ensure* calls over an authenticated HTTP API: make
//! this domain look like this spec, tell what you have, destroy this domain
//! and its disk. It never decides policy and holds no control-plane
//! credentials.

mod backup;
pub mod driver;
pub mod error;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod replay;
pub mod seed;
pub mod storage;
pub mod xml;

pub use driver::{AntiSpoofingMode, CapacityOverride, Driver, DriverConfig};
pub use error::AgentError;
pub use http::{AgentState, router};
