#![doc = include_str!("../../../README.md")]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use courier_core::*;

/// Durable queues in SQL databases (SQLite, PostgreSQL, MySQL/MariaDB).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql")))
)]
pub use courier_sql as sql;

/// Queues on RabbitMQ (AMQP 0-9-1), wire-compatible with pip-services.
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub use courier_rabbitmq as rabbitmq;

/// Queues on NATS: JetStream (durable) and core NATS (wire-compatible with pip-services).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use courier_nats as nats;

/// Durable queues on Redis Streams, with consumer groups.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use courier_redis as redis;

/// Queues on MQTT 3.1.1, wire-compatible with pip-services.
#[cfg(feature = "mqtt")]
#[cfg_attr(docsrs, doc(cfg(feature = "mqtt")))]
pub use courier_mqtt as mqtt;

/// Registers the URI schemes of every enabled backend with the core's registry. Every path of
/// this crate that creates queues ([`connect`], [`create_from_uri`],
/// [`DefaultMessagingFactory::new`], [`messaging_factory`]) calls it first, so there is no need
/// to call it yourself; it is public for code that mixes in `courier_core` directly.
/// Idempotent.
pub fn register_backends() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        courier_sql::register();
        #[cfg(feature = "rabbitmq")]
        courier_rabbitmq::register();
        #[cfg(feature = "nats")]
        courier_nats::register();
        #[cfg(feature = "redis")]
        courier_redis::register();
        #[cfg(feature = "mqtt")]
        courier_mqtt::register();
    });
}

/// Creates and opens the queue `uri` names, on any enabled backend: `memory://NAME`, and with
/// their features `sqlite://PATH?queue=NAME`, `postgres://…?queue=NAME`,
/// `mysql://…?queue=NAME`, `amqp://…?queue=NAME`, `nats://…/NAME`, `redis://…?queue=NAME`, `mqtt://…/TOPIC`.
/// See [`courier_core::connect`].
///
/// # Errors
///
/// [`ErrorKind::Config`] for an invalid URI, an unknown option or a scheme whose feature is not
/// enabled; what the backend's `open` returns.
///
/// # Cancel safety
///
/// Cancel safe: a cancelled connect leaves nothing open behind.
pub async fn connect(uri: &str) -> Result<std::sync::Arc<dyn MessageQueue>> {
    register_backends();
    courier_core::connect(uri).await
}

/// Creates, without opening, the queue `uri` names, on any enabled backend (see [`connect`]).
///
/// # Errors
///
/// [`ErrorKind::Config`] for an invalid URI, an unknown option or a scheme whose feature is not
/// enabled.
pub fn create_from_uri(uri: &str) -> Result<std::sync::Arc<dyn MessageQueue>> {
    register_backends();
    courier_core::create_from_uri(uri)
}

/// The pip-services messaging factory with the descriptors of every enabled backend:
/// `pip-services:message-queue:memory:*:1.0`, `pip-services:queue-factory:memory:*:1.0`, and with
/// their features `pip-services:message-queue:<sqlite|postgres|mysql|rabbitmq|nats|redis|mqtt>:*:1.0`. It derefs to
/// [`courier_core::DefaultMessagingFactory`], whose methods it has.
///
/// ```
/// use courier::{DefaultMessagingFactory, Descriptor, MessageQueue};
///
/// let factory = DefaultMessagingFactory::new();
/// let locator: Descriptor = "pip-services:message-queue:memory:jobs:1.0".parse().unwrap();
/// assert_eq!(factory.create_queue(&locator).unwrap().name(), "jobs");
/// ```
#[derive(Debug)]
pub struct DefaultMessagingFactory(courier_core::DefaultMessagingFactory);

impl DefaultMessagingFactory {
    /// A factory with the descriptors of every enabled backend.
    pub fn new() -> Self {
        register_backends();
        #[allow(unused_mut)]
        let mut factory = courier_core::DefaultMessagingFactory::new();
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        courier_sql::register_descriptors(&mut factory);
        #[cfg(feature = "rabbitmq")]
        courier_rabbitmq::register_descriptors(&mut factory);
        #[cfg(feature = "nats")]
        courier_nats::register_descriptors(&mut factory);
        #[cfg(feature = "redis")]
        courier_redis::register_descriptors(&mut factory);
        #[cfg(feature = "mqtt")]
        courier_mqtt::register_descriptors(&mut factory);
        DefaultMessagingFactory(factory)
    }

    /// The core factory inside.
    pub fn into_inner(self) -> courier_core::DefaultMessagingFactory {
        self.0
    }
}

impl Default for DefaultMessagingFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for DefaultMessagingFactory {
    type Target = courier_core::DefaultMessagingFactory;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for DefaultMessagingFactory {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The same as [`DefaultMessagingFactory::new`].
pub fn messaging_factory() -> DefaultMessagingFactory {
    DefaultMessagingFactory::new()
}
