//! courier queues on Redis Streams: durable, at least once, on the Redis a service already
//! runs (5.0 or later for streams; 6.2 or later for the commands courier uses; tested on 7.0).
//!
//! A queue is a stream read through a consumer group: see [`RedisMessageQueue`] for the
//! layout, locks, dead letters and counts, and [`wire`] for the entry fields other languages
//! read and write.
//!
//! ```no_run
//! # async fn demo() -> courier_core::Result<()> {
//! use std::time::Duration;
//! use courier_core::{MessageEnvelope, MessageQueue};
//!
//! courier_redis::register();
//! let queue = courier_core::connect("redis://127.0.0.1:6379/0?queue=orders").await?;
//! queue.send(None, MessageEnvelope::new(None, "order.created", "{}")).await?;
//! if let Some(order) = queue.receive(None, Duration::from_secs(1)).await? {
//!     queue.complete(&order).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Configuration
//!
//! `redis://[USER:PASSWORD@]HOST[:PORT][/DB]?queue=NAME&options` (`rediss://` for TLS, with
//! the system's root certificates unless `tls_ca_file` says otherwise; port 6379 and database
//! 0 by default). With
//! [`ConfigParams`]: `queue` or `name`, `connection.*` (or `connection.uri`),
//! `credential.username|password`, and `options.*`:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `group` | `courier` | the consumer group every process of the queue shares |
//! | `db` | 0 | the database, when the URI's path does not give it |
//! | `block` | 1000 | ms a waiting `receive` blocks on the server before it looks again for abandoned and expired messages |
//! | `tls` | `false` | TLS, as `rediss://` |
//! | `tls_ca_file` | the system's roots | PEM root certificates to trust (implies TLS) |
//! | `tls_cert_file`, `tls_key_file` | none | PEM client certificate and key, for servers that verify clients (implies TLS) |
//!
//! plus the shared queue options (`lock_timeout`, `max_deliveries`, `dead_letter_queue`,
//! `listen_concurrency`, `connect_timeout`, ...; `max_size` is not used: a stream holds what
//! the server's memory holds). Unknown options are an error.
//!
//! # Redis settings
//!
//! Set `maxmemory-policy noeviction` (or a `volatile-*` policy): under any other policy a
//! server short of memory may evict a queue's stream with all its messages; `open` logs a
//! warning when it sees one. Messages survive a restart only as far as the server's
//! persistence (RDB, AOF) keeps them.

mod config;
mod queue;
mod scripts;
pub mod wire;

pub use config::{DEFAULT_BLOCK, DEFAULT_GROUP, REDIS_OPTION_KEYS, RedisConfig};
pub use queue::RedisMessageQueue;

use std::sync::Arc;

use courier_core::backend::{QueueBase, config_from_uri, named_config, with_uri_parts};
use courier_core::{
    Component, ConfigParams, DefaultMessagingFactory, Descriptor, Error, MessageQueue, Result,
};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "redis";

/// The URI schemes this crate serves.
pub const SCHEMES: [&str; 2] = ["redis", "rediss"];

/// A closed Redis queue configured by `uri` (`redis://HOST:PORT/DB?queue=NAME&options`).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming what is invalid; the message
/// never shows the password.
pub fn from_uri(uri: &str) -> Result<Arc<dyn MessageQueue>> {
    from_config(&config_from_uri(uri).map_err(|e| e.with_backend(BACKEND))?)
}

/// A closed Redis queue configured by pip-services `config` (see the crate docs).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
/// unknown or invalid.
pub fn from_config(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    let config = with_uri_parts(config).map_err(|e| e.with_backend(BACKEND))?;
    let base =
        QueueBase::from_config(BACKEND, &config, None).map_err(|e| e.with_backend(BACKEND))?;
    if base.name().is_empty() {
        return Err(Error::config(
            "queue",
            "a Redis queue needs a name: redis://HOST:PORT/DB?queue=NAME, or `queue`/`name` in the config",
        )
        .with_backend(BACKEND));
    }
    let settings = RedisConfig::from_config(&config, &base).map_err(|e| e.with_backend(BACKEND))?;
    Ok(Arc::new(RedisMessageQueue::new(base, settings)))
}

/// Registers `redis://` and `rediss://` with [`courier_core::connect`]. Idempotent.
pub fn register() {
    for scheme in SCHEMES {
        courier_core::backend::register_scheme(scheme, Arc::new(from_config));
    }
}

/// Registers the descriptor `pip-services:message-queue:redis:*:1.0` with `factory`.
pub fn register_descriptors(factory: &mut DefaultMessagingFactory) {
    factory.register(
        Descriptor::new("pip-services", "message-queue", BACKEND, "*", "1.0"),
        Box::new(|locator, config| {
            let config = named_config(locator, config)?;
            Ok(Component::Queue(from_config(&config)?))
        }),
    );
}
