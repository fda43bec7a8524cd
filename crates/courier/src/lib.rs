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

/// Registers the URI schemes and descriptors of every enabled backend. [`connect`] and
/// [`messaging_factory`] call it; call it yourself before
/// [`create_from_uri`]. Idempotent.
pub fn register_backends() {
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    courier_sql::register();
}

/// Creates and opens the queue `uri` names, on any enabled backend: `memory://NAME`, and with
/// their features `sqlite://PATH?queue=NAME`, `postgres://…?queue=NAME`,
/// `mysql://…?queue=NAME`. See [`courier_core::connect`].
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

/// A [`DefaultMessagingFactory`] with the descriptors of every enabled backend:
/// `pip-services:message-queue:memory:*:1.0`, and with their features
/// `pip-services:message-queue:<sqlite|postgres|mysql>:*:1.0`.
pub fn messaging_factory() -> DefaultMessagingFactory {
    #[allow(unused_mut)]
    let mut factory = DefaultMessagingFactory::new();
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    courier_sql::register_descriptors(&mut factory);
    factory
}
