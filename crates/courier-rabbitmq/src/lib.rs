//! courier queues on RabbitMQ (AMQP 0-9-1), wire-compatible with the pip-services RabbitMQ
//! queues of Node, Go and .NET.
//!
//! ```no_run
//! # async fn demo() -> courier_core::Result<()> {
//! use std::time::Duration;
//! use courier_core::{MessageEnvelope, MessageQueue};
//!
//! courier_rabbitmq::register();
//! let queue = courier_core::connect("amqp://guest:guest@127.0.0.1:5672/%2f?queue=orders").await?;
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
//! `amqp://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME&options` (`amqps://` for TLS, with the
//! system's root certificates). The port defaults to 5672 (5671), the user and password to
//! `guest`, the virtual host to `/` (written `%2f`; an empty path means `/` too). With
//! [`ConfigParams`]: `queue` or `name`, `connection.uri` or `connection.protocol|host|port`,
//! `credential.username|password`, `exchange` and `options.*`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `exchange` | none | publish to this exchange (and bind the queue to it) instead of the queue |
//! | `exchange_type` | `fanout` | `fanout`, `direct`, `topic` or `headers`, when courier declares the exchange |
//! | `routing_key` | the queue's name | the key published with and bound with |
//! | `persistent` | `true` (pip-services: `false`) | durable queue and exchange, persistent messages |
//! | `auto_create` | `true` (pip-services: `false`) | declare the queue, the exchange and the binding on open, and the dead-letter queue when the first message goes there; without, `open` checks that the queue exists |
//! | `queue_type` | `quorum` | `quorum` or `classic` (see below) |
//! | `exclusive`, `auto_delete` | `false` | classic queues only |
//! | `no_queue` (`noqueue`) | `false` | send only: no queue is declared, bound or consumed |
//! | `prefetch` | 100 | unacknowledged messages the broker sends at once (at most `max_size`) |
//! | `heartbeat` | the broker's | AMQP heartbeat, in seconds |
//! | `expires` | never | RabbitMQ deletes the queue (and its dead-letter queue) once unused this many ms (`x-expires`) |
//! | `interval` | | pip-services' polling interval: accepted, unused (courier consumes, it does not poll) |
//!
//! plus the shared queue options (`lock_timeout`, `max_deliveries`, `dead_letter_queue`,
//! `listen_concurrency`, `max_size`, `connect_timeout`, ...). Unknown options are an error.
//!
//! # Wire format
//!
//! pip-services' (`spec/pip-brokers.md` §3.3): the body is the payload's bytes; `message_id`,
//! `correlation_id` and `type` are AMQP properties, `content_type` is `text/plain`. courier
//! also writes `sent_time` as the AMQP `timestamp` (whole seconds) and reads it back; a
//! message without one gets its receive time, and one without a `message_id` gets a new id.
//! See [`wire`].
//!
//! # Semantics
//!
//! * **Delivery: at least once.** `send` returns `Ok` once the broker confirmed the message
//!   (publisher confirms; a message no queue takes is an error). Consumers use manual
//!   acknowledgements: `complete` acknowledges. A message is delivered again (a duplicate)
//!   when its consumer's connection breaks before the acknowledgement reached the broker,
//!   when its lock expires, and when a process dies holding it.
//! * **Locks are client-side.** A received message is locked for `lock_timeout` in the
//!   receiving queue; `renew_lock` extends it. An expired lock, and `abandon`, give the
//!   message back to RabbitMQ (a requeueing `nack`), which delivers it again, to this or
//!   another consumer.
//! * **Delivery counts** come from RabbitMQ: quorum queues (the default) count every delivery
//!   (`x-delivery-count`), so `max_deliveries` works. Classic queues only say whether a message
//!   was delivered before: a redelivered message counts 2, and `max_deliveries` is refused.
//! * **Dead letters.** `move_to_dead_letter` and `max_deliveries` publish a copy to the queue
//!   `<name>.dlq` (or `options.dead_letter_queue`), confirmed, then acknowledge the original.
//!   `auto_create` declares that queue; read it with the same API.
//! * **Peek is unsupported.** AMQP cannot show a message without taking it from other
//!   consumers, and giving it back counts a delivery. `peek` and `peek_batch` return
//!   `Unsupported`.
//! * **Count** is what RabbitMQ holds ready plus what this queue has prefetched and not yet
//!   handed out. `clear` purges the queue at RabbitMQ and acknowledges what this queue
//!   prefetched.
//! * **Consuming.** The first `receive`, `read_message_count` or `listen` starts a consumer
//!   (`options.autosubscribe` starts it on `open`), which runs until `close` and holds up to
//!   `prefetch` messages of the queue.
//! * **Reconnects.** A broken connection is made again with backoff (100 ms doubling to 10 s,
//!   with jitter), the topology declared again and the consumer restarted. `open` tries once;
//!   `send` keeps trying for `connect_timeout` (waiting behind a reconnect already under way
//!   first). Every call to the broker gives up after `connect_timeout` (lapin can leave a call
//!   unanswered when its connection dies). Messages received on a channel that died cannot be
//!   settled any more: `complete` reports the lost lock with a `Connection` error, and RabbitMQ
//!   delivers them again; none is ever acknowledged on another channel.
//! * **Broker limits.** RabbitMQ closes a channel whose oldest unacknowledged delivery is older
//!   than its `consumer_timeout` (30 minutes by default), whatever courier's lock says:
//!   everything that channel delivered comes again. RabbitMQ 4 gives quorum queues a default
//!   delivery limit of 20, past which it drops a message (this crate is tested on 3.10, which
//!   has none): on RabbitMQ 4 keep `max_deliveries` at 20 or less, or raise the limit with a
//!   `delivery-limit` policy.

mod broker;
mod config;
mod link;
pub mod wire;

pub use broker::{RabbitMqBroker, RabbitMqDelivery};
pub use config::{DEFAULT_PREFETCH, QueueType, RABBITMQ_OPTION_KEYS, RabbitMqConfig};

use std::sync::Arc;

use courier_core::backend::{QueueBase, named_config, resolve_name, with_uri_parts};
use courier_core::{
    CachedMessageQueue, Component, ConfigParams, DefaultMessagingFactory, Descriptor, MessageQueue,
    Result,
};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "rabbitmq";

/// A courier queue on RabbitMQ: the push layer's [`CachedMessageQueue`] over a
/// [`RabbitMqBroker`].
pub type RabbitMqMessageQueue = CachedMessageQueue<RabbitMqBroker>;

/// A closed RabbitMQ queue configured by `uri`
/// (`amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME&options`).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming what is invalid; the message
/// never shows the password.
pub fn from_uri(uri: &str) -> Result<RabbitMqMessageQueue> {
    from_config(&courier_core::backend::config_from_uri(uri).map_err(|e| e.with_backend(BACKEND))?)
}

/// A closed RabbitMQ queue configured by pip-services `config` (see the crate docs).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
/// unknown or invalid.
pub fn from_config(config: &ConfigParams) -> Result<RabbitMqMessageQueue> {
    let config = &with_uri_parts(config).map_err(|e| e.with_backend(BACKEND))?;
    let send_only = config.get_as_bool("options.no_queue")?.unwrap_or(false)
        || config.get_as_bool("options.noqueue")?.unwrap_or(false);
    let exchange = config
        .get("exchange")
        .or_else(|| config.get("options.exchange"))
        .filter(|e| !e.is_empty());
    // A send-only queue may be known by its exchange.
    let default_name = if send_only { exchange } else { None };
    if resolve_name(config, default_name).is_none() {
        return Err(config::no_queue_error());
    }
    let base = QueueBase::from_config(BACKEND, config, default_name)
        .map_err(|e| e.with_backend(BACKEND))?;
    let settings =
        RabbitMqConfig::from_config(config, &base).map_err(|e| e.with_backend(BACKEND))?;
    Ok(CachedMessageQueue::new(base, RabbitMqBroker::new(settings)))
}

/// The URI schemes this crate serves.
pub const SCHEMES: [&str; 2] = ["amqp", "amqps"];

/// Registers `amqp://` and `amqps://` with [`courier_core::connect`]. Idempotent.
pub fn register() {
    for scheme in SCHEMES {
        courier_core::backend::register_scheme(scheme, Arc::new(create));
    }
}

/// Registers the descriptor `pip-services:message-queue:rabbitmq:*:1.0` with `factory`.
pub fn register_descriptors(factory: &mut DefaultMessagingFactory) {
    factory.register(
        Descriptor::new("pip-services", "message-queue", BACKEND, "*", "1.0"),
        Box::new(|locator, config| {
            let config = named_config(locator, config)?;
            Ok(Component::Queue(Arc::new(from_config(&config)?)))
        }),
    );
}

fn create(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    Ok(Arc::new(from_config(config)?))
}
