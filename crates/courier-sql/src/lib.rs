//! Durable courier queues in SQL databases: SQLite as the embedded default, PostgreSQL and
//! MySQL/MariaDB for shared deployments.
//!
//! ```no_run
//! # async fn demo() -> courier_core::Result<()> {
//! use std::time::Duration;
//! use courier_core::{MessageEnvelope, MessageQueue};
//!
//! courier_sql::register();
//! let queue = courier_core::connect("sqlite:///var/lib/app/queue.db?queue=orders").await?;
//! queue.send(None, MessageEnvelope::new(None, "order.created", "{}")).await?;
//! if let Some(order) = queue.receive(None, Duration::from_secs(1)).await? {
//!     queue.complete(&order).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! | URI | database |
//! |---|---|
//! | `sqlite://PATH?queue=NAME`, `sqlite::memory:?queue=NAME` | a SQLite file (WAL mode; several processes may share it) or an in-process database |
//! | `postgres://USER:PASSWORD@HOST:PORT/DB?queue=NAME` | PostgreSQL |
//! | `mysql://USER:PASSWORD@HOST:PORT/DB?queue=NAME` (or `mariadb://`) | MySQL 8, MariaDB 10.6+ |
//!
//! The query string also takes the shared options (`lock_timeout`, `max_deliveries`,
//! `dead_letter_queue`, `listen_concurrency`, ...), `poll_interval` (ms) and
//! `max_connections`; any other parameter goes to the database driver (`sslmode=require`).
//! With [`ConfigParams`]: `connection.uri` and `options.*`.
//!
//! # Schema
//!
//! `open` creates it if it is missing (idempotent; concurrent first opens are safe) and refuses
//! a database whose `courier_schema.version` is newer than [`SCHEMA_VERSION`]. One table holds
//! every queue of the database:
//!
//! ```sql
//! CREATE TABLE courier_messages (
//!   id             BIGINT PRIMARY KEY,   -- autoincrement: the order of the queue
//!   queue          TEXT NOT NULL,        -- the queue's name; dead letters live in '<name>.dlq'
//!   message_id     TEXT NOT NULL,
//!   correlation_id TEXT,
//!   message_type   TEXT NOT NULL,
//!   sent_time      BIGINT,               -- microseconds since the Unix epoch, UTC
//!   payload        BLOB NOT NULL,        -- BYTEA on PostgreSQL, LONGBLOB on MySQL
//!   locked_until   BIGINT NOT NULL DEFAULT 0, -- the lock: visible again once past (µs)
//!   lock_token     BIGINT,               -- random, per delivery: settles only the holder's claim
//!   deliveries     INTEGER NOT NULL DEFAULT 0
//! );
//! CREATE INDEX courier_messages_queue ON courier_messages (queue, id);
//! CREATE TABLE courier_schema (version INTEGER NOT NULL);
//! ```
//!
//! Lock deadlines use the clock of the process that receives: keep the clocks of hosts that
//! share a database in sync.
//!
//! # Semantics
//!
//! All nine capabilities. As [`MessageQueue`] describes, with
//! these backend facts: an abandoned message keeps its place (the head of the queue, where the
//! memory queue puts it at the tail); a row that does not decode is moved to the dead-letter
//! queue instead of blocking the queue; a message whose `send` returned `Ok` is committed and
//! survives a crash of any process; one claimed by a process that dies is redelivered when its
//! lock expires.

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("courier-sql needs at least one of its features: sqlite, postgres, mysql");

mod dialect;
mod queue;
mod store;

pub use dialect::{
    BatchStatements, Dialect, HotStatements, SCHEMA_VERSION, hot_statements, mysql_candidates,
};
pub use queue::SqlMessageQueue;
pub use store::{SqlStore, StoreOptions};

use std::sync::Arc;

use courier_core::backend::named_config;
use courier_core::{
    Component, ConfigParams, DefaultMessagingFactory, Descriptor, MessageQueue, Result,
};

/// The URI schemes this crate serves, with the features enabled.
pub fn schemes() -> Vec<&'static str> {
    let mut schemes = Vec::new();
    if cfg!(feature = "sqlite") {
        schemes.push("sqlite");
    }
    if cfg!(feature = "postgres") {
        schemes.extend(["postgres", "postgresql"]);
    }
    if cfg!(feature = "mysql") {
        schemes.extend(["mysql", "mariadb"]);
    }
    schemes
}

/// Registers the SQL URI schemes with [`courier_core::connect`]. Idempotent.
pub fn register() {
    for scheme in schemes() {
        courier_core::backend::register_scheme(scheme, Arc::new(create));
    }
}

/// Registers the descriptors `pip-services:message-queue:<sqlite|postgres|mysql>:*:1.0`
/// (configured with `connection.uri`) with `factory`.
pub fn register_descriptors(factory: &mut DefaultMessagingFactory) {
    for kind in ["sqlite", "postgres", "mysql"] {
        if schemes().contains(&kind) {
            factory.register(
                Descriptor::new("pip-services", "message-queue", kind, "*", "1.0"),
                Box::new(|locator, config| {
                    let config = named_config(locator, config)?;
                    Ok(Component::Queue(Arc::new(SqlMessageQueue::with_config(
                        &config,
                    )?)))
                }),
            );
        }
    }
}

fn create(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    Ok(Arc::new(SqlMessageQueue::from_uri_config(config)?))
}
