//! courier queues on MQTT 3.1.1, wire-compatible with pip-services' MQTT queues.
//!
//! An [`MqttMessageQueue`] is the push layer's [`CachedMessageQueue`] over an [`MqttBroker`]:
//! the queue subscribes to its topic, the broker pushes what is published there, and the
//! queue's buffer serves `receive`, `peek`, `peek_batch`, the count, `clear` and the locks.
//!
//! ```no_run
//! # async fn demo() -> courier_core::Result<()> {
//! use std::time::Duration;
//! use courier_core::{MessageEnvelope, MessageQueue};
//!
//! courier_mqtt::register();
//! let queue = courier_core::connect("mqtt://127.0.0.1:1883/orders?qos=1").await?;
//! queue.send(None, MessageEnvelope::new(None, "order.created", "{}")).await?;
//! if let Some(order) = queue.receive(None, Duration::from_secs(1)).await? {
//!     queue.complete(&order).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! | | QoS 1 (the default) | QoS 0 |
//! |---|---|---|
//! | `send` returns `Ok` | the broker acknowledged the message (PUBACK) | the client wrote it |
//! | delivery | at least once while the queue is open: a message is acknowledged when it is completed (or dead-lettered, or cleared); a lost connection resumes the session, and the broker sends again what was not acknowledged | at most once |
//! | messages published while the connection is down | kept by the broker for the session (up to its own limits: Mosquitto's `max_queued_messages` is 1000) and delivered on reconnect | lost |
//! | messages published while no queue is open | lost, as on every MQTT topic without a subscriber; a fixed `client_id` keeps them (see below) | lost |
//! | what the queue holds when it closes or its process dies | generated client id: lost with the session; fixed `client_id`: delivered again to the next queue with that id | lost |
//!
//! Duplicates happen at QoS 1: a message completed while the connection was down, or just
//! before it broke, may come again. Each delivery counts on the queue (`delivery_count`), and
//! `max_deliveries` moves a message to the queue's local dead-letter queue.
//!
//! # Choices that differ from pip-services
//!
//! * **The JSON envelope is the default** (`serialize_envelope=true`). pip-services' code
//!   defaults to the bare payload while its docs and tests use the envelope; with the bare
//!   payload no id, correlation id or type travels, so no peer would interoperate. Both are
//!   read and written as [`wire`] describes. In envelope mode, a payload that is not an
//!   envelope (a device's reading, say) is delivered raw, with the topic as its type.
//! * **QoS 1 by default** (pip-services: 0), with manual acknowledgements and a persistent
//!   session (clean session off), so that a lost connection loses nothing.
//! * **A client id of its own per queue** (`courier` and 16 hex digits) unless `client_id` is
//!   given. pip-services uses the host name, so two processes on one host take each other's
//!   session. With a generated id, `close` ends the session (the broker forgets the
//!   subscription); a queue dropped without `close`, or a process that dies, leaves its
//!   session on the broker until the broker expires it (Mosquitto:
//!   `persistent_client_expiration`, off by default). With a **fixed `client_id`** at QoS 1 the session outlives the queue: the
//!   broker keeps the subscription, and what is published while the queue is closed, for the
//!   next queue that opens with that id (a durable subscriber). Open it once with `qos=0` to
//!   make the broker forget it.
//! * **Subscribed on `open`** (`autosubscribe` defaults to true; pip-services: false), so an
//!   open queue gets every message published to its topic after `open` returned.
//!   `autosubscribe=false` subscribes on the first `receive`, `peek`, `peek_batch`, count or
//!   `listen` instead: messages published before that are not the queue's.
//! * **MQTT wildcards work**: `topic=sensors/+/temp` or `sensors/#` receives every matching
//!   topic, and a message's topic is its `message_type` in raw mode. pip-services drops every
//!   message whose topic is not the configured one. `send` publishes to the topic, or, when it
//!   is a filter, to the queue's name (pip-services publishes to the name first).
//! * **Locks, `complete`, `abandon` and `renew_lock` work** (pip-services: no-ops), on the
//!   queue's buffer; `complete` acknowledges the broker. **Dead letters are local**:
//!   `move_to_dead_letter` is `Unsupported`, and `max_deliveries` moves spent messages to an
//!   in-process queue, [`CachedMessageQueue::local_dead_letters`]. A `<name>.dlq` topic was
//!   not chosen: MQTT keeps nothing for a topic no one subscribes to, so dead letters
//!   published there would be lost.
//! * The port and credentials are used (pip-services' Python package ignores them).
//!
//! # Configuration
//!
//! `mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC?options` (`mqtts://` for TLS; ports 1883 and
//! 8883). The topic is the queue's name unless `name`/`queue` says otherwise. In a URI,
//! write `#` as `%23` and `/` inside an option as `%2F`. With [`ConfigParams`]: `name`,
//! `topic`, `client_id`, `connection.*` (`protocol`, `host`, `port`, `uri`),
//! `credential.username|password`, and `options.*`:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `topic` | the name | the topic (filter) the queue subscribes and publishes to |
//! | `group` | none | a shared subscription (`$share/GROUP/TOPIC`): each message goes to one queue of the group (a work queue; Mosquitto, EMQX and HiveMQ offer it to MQTT 3.1.1 clients) rather than to every queue |
//! | `qos` | `1` | 0 (at most once) or 1 (at least once) |
//! | `serialize_envelope` | `true` | the JSON envelope, or the bare payload |
//! | `retain` | `false` | publish retained messages |
//! | `client_id` | generated | the MQTT client id (fixed: a durable session at QoS 1) |
//! | `autosubscribe` | `true` | subscribe on `open` rather than on first use |
//! | `retry_connect` | `true` | reconnect a lost connection |
//! | `max_reconnect` | unlimited | failed reconnect attempts in a row before the queue gives up |
//! | `reconnect_timeout` | 1000 | ms between reconnect attempts |
//! | `keepalive_timeout` | 60000 | ms of MQTT keep-alive (0: off; whole seconds) |
//! | `connect_timeout` | 10000 | ms `open`, a subscription or a `send`'s acknowledgement may take |
//! | `tls` | `false` | require TLS |
//! | `tls_ca_file` | the system's roots | PEM root certificates to trust (implies `tls`) |
//! | `tls_cert_file`, `tls_key_file` | none | PEM client certificate and key (implies `tls`) |
//!
//! plus the shared queue options (`max_size` bounds the buffer: at QoS 0 messages beyond it
//! are dropped; at QoS 1 the broker's in-flight window, Mosquitto's `max_inflight_messages`,
//! bounds what it sends before acknowledgements, and on a broker without one what does not
//! fit waits in memory). Unknown options are an error. A `topic` of `$share/GROUP/TOPIC` is
//! read as `topic=TOPIC` and `group=GROUP`.

mod broker;
mod config;
mod connection;
mod tls;
pub mod wire;

pub use broker::MqttBroker;
pub use config::{DEFAULT_PORT, DEFAULT_TLS_PORT, MQTT_OPTION_KEYS, MqttConfig};
pub use connection::Delivery;

use std::sync::Arc;

use courier_core::backend::{QueueBase, config_from_uri, named_config, with_uri_parts};
use courier_core::{
    CachedMessageQueue, Component, ConfigParams, DefaultMessagingFactory, Descriptor, Error,
    MessageQueue, Result,
};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "mqtt";

/// An MQTT queue: the push layer's [`CachedMessageQueue`] over an [`MqttBroker`].
pub type MqttMessageQueue = CachedMessageQueue<MqttBroker>;

/// A closed MQTT queue configured by `uri` (`mqtt://HOST:PORT/TOPIC?options`).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming what is invalid; the message
/// never shows the password.
pub fn from_uri(uri: &str) -> Result<Arc<dyn MessageQueue>> {
    if uri.contains('#') {
        return Err(
            Error::config("uri", "a URI ends at `#`: write the MQTT wildcard # as %23")
                .with_backend(BACKEND),
        );
    }
    from_config(&config_from_uri(uri).map_err(|e| e.with_backend(BACKEND))?)
}

/// A closed MQTT queue configured by pip-services `config` (see the crate docs).
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
/// unknown or invalid.
pub fn from_config(config: &ConfigParams) -> Result<Arc<dyn MessageQueue>> {
    Ok(Arc::new(queue(config)?))
}

/// A closed [`MqttMessageQueue`] configured by `config`, with its broker reachable
/// ([`CachedMessageQueue::broker`]).
///
/// # Errors
///
/// As [`from_config`].
pub fn queue(config: &ConfigParams) -> Result<MqttMessageQueue> {
    let mut config = with_uri_parts(config).map_err(|e| e.with_backend(BACKEND))?;
    if config.get("options.autosubscribe").is_none() {
        config.set("options.autosubscribe", "true");
    }
    let path = config.get("connection.path").map(str::to_owned);
    let default_name = path.or_else(|| config.get("topic").map(str::to_owned));
    let base = QueueBase::from_config(BACKEND, &config, default_name.as_deref())
        .map_err(|e| e.with_backend(BACKEND))?;
    let settings = config::MqttConfig::from_config(&config, &base)
        .map_err(|e| e.with_backend(BACKEND).with_queue(base.name()))?;
    let broker = MqttBroker::new(base.name(), settings);
    Ok(CachedMessageQueue::new(base, broker))
}

/// The URI schemes this crate serves.
pub const SCHEMES: [&str; 2] = ["mqtt", "mqtts"];

/// Registers `mqtt://` and `mqtts://` with [`courier_core::connect`]. Idempotent.
pub fn register() {
    for scheme in SCHEMES {
        courier_core::backend::register_scheme(scheme, Arc::new(from_config));
    }
}

/// Registers the descriptor `pip-services:message-queue:mqtt:*:1.0` with `factory`.
pub fn register_descriptors(factory: &mut DefaultMessagingFactory) {
    factory.register(
        Descriptor::new("pip-services", "message-queue", BACKEND, "*", "1.0"),
        Box::new(|locator, config| {
            let config = named_config(locator, config)?;
            Ok(Component::Queue(from_config(&config)?))
        }),
    );
}
