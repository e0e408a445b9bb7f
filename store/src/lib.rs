//! Where stratus keeps things.
//!
//! * [`objects`]: the resource store trait (Kubernetes-style objects with
//!   resourceVersion, generation, finalizers, deletion timestamp and watch)
//!   and the typed [`objects::Resources`] handle code above it uses.
//! * [`sql`]: the embedded backend of that trait, on SQLite or PostgreSQL.
//! * [`ledger`]: facts that do not belong in etcd: API tokens (hashed),
//!   idempotency keys, the append-only audit log.
//! * [`vault`]: secrets at rest, encrypted with the control plane's key.

pub mod db;
pub mod error;
pub mod kubernetes;
pub mod ledger;
pub mod objects;
pub mod private_files;
pub mod secrets;
pub mod sql;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod vault;

pub use db::{Backend, Database};
pub use error::StoreError;
pub use kubernetes::KubeObjectStore;
pub use objects::{KindInfo, ObjectPage, ObjectStore, Resources, WatchEvent};
pub use sql::SqlObjectStore;
