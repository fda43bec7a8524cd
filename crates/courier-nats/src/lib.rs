//! courier queues on NATS.
//!
//! Two modes, chosen by the `jetstream` option:
//!
//! * **JetStream** (`nats://HOST:PORT/NAME`, the default): a durable queue, at least once,
//!   with server-side locks (the consumer's `AckWait`, set from `lock_timeout` by the first
//!   queue that creates it), delivery counts, dead letters in `<name>.dlq` (or
//!   `options.dead_letter_queue`), and peek without consuming. See [`JetStreamMessageQueue`].
//! * **Core NATS** (`nats://HOST:PORT/SUBJECT?jetstream=false`): what pip-services' NATS queues
//!   do, wire-compatible with them (see [`wire`]). Delivery is **at most once**: a message
//!   published while no queue is subscribed is lost, and one the queue holds dies with the
//!   process. The queue subscribes on `open` (`autosubscribe` is on by default here), so an
//!   open queue gets every message published after `open` returned. With `queue_group`, each
//!   message goes to one queue of the group (a work queue); without, every open queue gets a
//!   copy (publish/subscribe). Received messages are buffered in the queue
//!   ([`CachedMessageQueue`]): `complete`, `abandon`, `renew_lock`, `peek`, the count and
//!   `clear` act on this process's buffer only, never on the server; `max_deliveries` moves a
//!   message to an in-process dead-letter queue; `move_to_dead_letter` is `Unsupported`.
//!
//! ```no_run
//! # async fn demo() -> courier_core::Result<()> {
//! use std::time::Duration;
//! use courier_core::{MessageEnvelope, MessageQueue};
//!
//! courier_nats::register();
//! let queue = courier_core::connect("nats://127.0.0.1:4222/orders?jetstream=false&queue_group=workers").await?;
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
//! `nats://HOST:PORT/NAME?options` (`tls://` or `tls=true` for TLS; port 4222 by default;
//! `nats://USER:PASSWORD@…`, or a token as `token=` or `credential.token`, for authentication;
//! a user without a password is refused rather than guessed to be a token). The name is the subject
//! `send` publishes to. With [`ConfigParams`]: `queue` or `name`, `connection.*` or several
//! `connections.N.host|port`, `credential.username|password|token`, and `options.*`:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `jetstream` | `true` | JetStream (durable, at least once) or core NATS (at most once) |
//! | `stream` | one per queue | JetStream: a stream several queues share, each on its subject (see [`JetStreamMessageQueue`]) |
//! | `subject` (`topic`) | the name | core NATS: the subject the queue subscribes to |
//! | `queue_group` (`group`) | none | core NATS: the queue group it subscribes in |
//! | `token` | none | token authentication (hidden like a password) |
//! | `client_id` | `courier <name>` | the connection's name |
//! | `tls` | `false` | require TLS |
//! | `tls_ca_file` | the system's roots | PEM root certificates to trust (implies `tls`) |
//! | `tls_cert_file`, `tls_key_file` | none | PEM client certificate and key, for servers that verify clients (implies `tls`) |
//! | `retry_connect` | `true` | reconnect a lost connection (false: one attempt per server) |
//! | `max_reconnect` | unlimited | how many reconnect attempts |
//! | `reconnect_timeout` | 100 ms doubling to 10 s | the wait between reconnect attempts (ms) |
//! | `flush_timeout` | | pip-services' option: accepted, unused |
//!
//! plus the shared queue options. Unknown options are an error.

mod config;
mod core_nats;
mod jetstream;
pub mod wire;

pub use config::{NATS_OPTION_KEYS, NatsConfig};
pub use core_nats::CoreNatsBroker;
pub use jetstream::{CONSUMER, JetStreamMessageQueue, consumer_name, stream_name};

use std::sync::Arc;

use courier_core::backend::{QueueBase, config_from_uri, named_config, with_uri_parts};
use courier_core::{
    CachedMessageQueue, Component, ConfigParams, DefaultMessagingFactory, Descriptor, Error,
    MessageQueue, Result,
};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "nats";

/// A core NATS queue: the push layer's [`CachedMessageQueue`] over a [`CoreNatsBroker`].
pub type CoreNatsMessageQueue = CachedMessageQueue<CoreNatsBroker>;

/// A closed NATS queue configured by `uri` (`nats://HOST:PORT/NAME?options`).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming what is invalid; the message
/// never shows the password.
pub fn from_uri(uri: &str) -> Result<Arc<dyn MessageQueue>> {
    from_config(&config_from_uri(uri).map_err(|e| e.with_backend(BACKEND))?)
}

/// A closed NATS queue configured by pip-services `config` (see the crate docs).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
/// unknown or invalid.
pub fn from_config(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    let config = with_uri_parts(config).map_err(|e| e.with_backend(BACKEND))?;
    let base = base(&config)?;
    let settings = NatsConfig::from_config(&config, &base).map_err(|e| e.with_backend(BACKEND))?;
    if settings.jetstream {
        return Ok(Arc::new(JetStreamMessageQueue::new(base, settings)));
    }
    Ok(Arc::new(CachedMessageQueue::new(
        base,
        CoreNatsBroker::new(settings),
    )))
}

/// The queue's base: its name from `queue`/`name`, else the URI's path; core queues subscribe
/// on open unless told otherwise.
fn base(config: &ConfigParams) -> Result<QueueBase> {
    let mut config = config.clone();
    let core = config.get_as_bool("options.jetstream")? == Some(false);
    if core && config.get("options.autosubscribe").is_none() {
        config.set("options.autosubscribe", "true");
    }
    let path = config.get("connection.path").map(str::to_owned);
    let base = QueueBase::from_config(BACKEND, &config, path.as_deref())
        .map_err(|e| e.with_backend(BACKEND))?;
    if base.name().is_empty() {
        return Err(Error::config(
            "queue",
            "a NATS queue needs a name: nats://HOST:PORT/NAME, or `queue`/`name` in the config",
        )
        .with_backend(BACKEND));
    }
    Ok(base)
}

/// The URI schemes this crate serves.
pub const SCHEMES: [&str; 2] = ["nats", "tls"];

/// Registers `nats://` (and `tls://`) with [`courier_core::connect`]. Idempotent.
pub fn register() {
    for scheme in SCHEMES {
        courier_core::backend::register_scheme(scheme, Arc::new(from_config));
    }
}

/// Registers the descriptor `pip-services:message-queue:nats:*:1.0` with `factory`.
pub fn register_descriptors(factory: &mut DefaultMessagingFactory) {
    factory.register(
        Descriptor::new("pip-services", "message-queue", BACKEND, "*", "1.0"),
        Box::new(|locator, config| {
            let config = named_config(locator, config)?;
            Ok(Component::Queue(from_config(&config)?))
        }),
    );
}
