//! The resource kinds (API group `stratus.dev`, version `v1alpha1`), one
//! module per kind.
//!
//! One Rust type per kind, used by the API, the controller, both store
//! backends and, through `kube`'s derive, as Kubernetes CRDs. A new kind is a
//! new module here, re-exported below, and a line in `stratus crds`.

mod account;
mod hypervisor;
mod ip_pool;
mod server;
mod storage;

pub use account::*;
pub use hypervisor::*;
pub use ip_pool::*;
pub use server::*;
pub use storage::*;

pub const GROUP: &str = "stratus.dev";
pub const VERSION: &str = "v1alpha1";

/// The zone of a server that names none and of the documentation pool.
pub const DEFAULT_ZONE: &str = "default";

/// RFC 1123 hostname, the same rule as `validate::is_hostname` (the API
/// server checks it for objects written with kubectl).
pub const HOSTNAME_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
