//! The heart of stratus: resource types, configuration and pure decisions.
//!
//! Nothing in this crate performs I/O or awaits: every decision the control
//! plane makes is a function of its inputs (desired state, what was observed,
//! the time), so it can be tested exhaustively without a hypervisor.

pub mod agent_api;
pub mod backups;
pub mod clock;
pub mod cloud_init;
pub mod conditions;
pub mod config;
pub mod dnsbl;
pub mod ids;
pub mod ip;
pub mod leadership;
pub mod lifecycle;
pub mod notices;
pub mod policy;
pub mod quota;
pub mod rdns;
pub mod resources;
pub mod scheduling;
pub mod standing;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;

pub use clock::{Clock, ManualClock, SystemClock, test_time};
pub use config::Config;
