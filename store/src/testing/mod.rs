//! Scratch databases for tests: a SQLite file in a temporary directory and a
//! fresh schema on the PostgreSQL server named by `STRATUS_TEST_POSTGRES_URL`.
//! Every store test runs on both; a missing PostgreSQL URL fails the test
//! rather than skipping it.

use std::sync::Arc;

use stratus_core::ManualClock;

use crate::db::Database;

pub const POSTGRES_URL_VAR: &str = "STRATUS_TEST_POSTGRES_URL";

pub struct ScratchDatabase {
    pub db: Database,
    pub label: &'static str,
    /// Where it is, for a second handle (a second controller's).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> ScratchDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("stratus.db").display());
    let db = Database::connect(&url)
        .await
        .expect("open scratch SQLite database");
    ScratchDatabase {
        db,
        label: "sqlite",
        url,
        _dir: Some(dir),
    }
}

pub async fn postgres() -> ScratchDatabase {
    let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} is not set: store tests must run on PostgreSQL too (e.g. postgres://postgres@127.0.0.1:5432/test)")
    });
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect_raw(&base)
        .await
        .expect("connect to PostgreSQL test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin.pool())
        .await
        .expect("create scratch schema");
    admin.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
    let db = Database::connect(&url)
        .await
        .expect("open scratch PostgreSQL schema");
    ScratchDatabase {
        db,
        label: "postgres",
        url,
        _dir: None,
    }
}

/// A clock standing at `stratus_core::test_time()`, for stores under test.
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_test_time())
}

/// One scratch database per supported backend.
pub async fn both() -> Vec<ScratchDatabase> {
    vec![sqlite().await, postgres().await]
}

pub mod apiserver;
