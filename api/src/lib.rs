//! The stratus REST API (v1): customers order and manage servers, operators
//! manage accounts, tokens and hypervisors. Handlers only validate, translate
//! to resources and record; the controller does the work.

pub mod agents;
pub mod auth;
pub mod body;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod pagination;
pub mod placed;
pub mod rate_limit;
pub mod routes;
pub mod state;
pub mod stream_slots;
pub mod views;

pub use error::ApiError;
pub use routes::{app, openapi};
pub use state::{ApiDeps, ApiState, ContentError, ContentStream, ServerConsoles, StorageContents};
