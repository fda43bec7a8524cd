//! The SQL harness: one store per test, one fresh queue name per check.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{Features, Harness, skip_or_fail};
use courier_core::{ConfigParams, MessageQueue, Result, async_trait};
use courier_sql::{SqlMessageQueue, SqlStore, StoreOptions};

pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

pub struct SqlHarness {
    pub backend: &'static str,
    pub url: String,
    pub store: SqlStore,
    /// A SQLite file to remove when the harness goes.
    file: Option<String>,
}

impl SqlHarness {
    /// A harness on a new SQLite file.
    pub async fn sqlite() -> Option<Self> {
        let path =
            std::env::temp_dir().join(format!("courier-test-{}.db", uuid::Uuid::new_v4().simple()));
        let path = path.to_string_lossy().into_owned();
        let url = format!("sqlite://{path}");
        let store = SqlStore::connect(&url)
            .await
            .expect("a SQLite file can always be created");
        Some(SqlHarness {
            backend: "sqlite",
            url,
            store,
            file: Some(path),
        })
    }

    /// A harness on the PostgreSQL of `COURIER_TEST_POSTGRES_URL` (or the local default).
    pub async fn postgres() -> Option<Self> {
        Self::server("postgres", "COURIER_TEST_POSTGRES_URL", POSTGRES_DEFAULT).await
    }

    /// A harness on the MySQL/MariaDB of `COURIER_TEST_MYSQL_URL` (or the local default).
    pub async fn mysql() -> Option<Self> {
        Self::server("mysql", "COURIER_TEST_MYSQL_URL", MYSQL_DEFAULT).await
    }

    async fn server(backend: &'static str, var: &str, default: &str) -> Option<Self> {
        let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        let mut options = StoreOptions::default();
        options.max_connections = Some(8);
        options.connect_timeout = Duration::from_secs(5);
        match SqlStore::connect_with(&url, &options).await {
            Ok(store) => Some(SqlHarness {
                backend,
                url,
                store,
                file: None,
            }),
            Err(e) => skip_or_fail(backend, &format!("{} ({var})", e)),
        }
    }

    /// The URI of queue `name` on this harness's database.
    pub fn queue_uri(&self, name: &str, options: &str) -> String {
        let sep = if options.is_empty() { "" } else { "&" };
        format!("{}?queue={name}{sep}{options}", self.url)
    }
}

impl Drop for SqlHarness {
    fn drop(&mut self) {
        if let Some(path) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }
}

#[async_trait]
impl Harness for SqlHarness {
    fn backend(&self) -> &str {
        self.backend
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        let mut config = ConfigParams::from_tuples([("name", name)]);
        for (k, v) in options {
            config.set(format!("options.{k}"), *v);
        }
        // Short polls: the suite's lock-expiry checks should not wait a second per round.
        if !config.contains_key("options.poll_interval") {
            config.set("options.poll_interval", "50");
        }
        Ok(Arc::new(SqlMessageQueue::with_store(
            self.store.clone(),
            &config,
        )?))
    }
}
