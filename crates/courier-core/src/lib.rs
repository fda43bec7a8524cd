//! The core of [courier](https://docs.rs/courier): the pip-services messaging model in Rust.
//!
//! Most users depend on the `courier` facade, which re-exports everything here and adds the
//! backends. Backend authors depend on this crate: they implement [`MessageQueue`], embed a
//! [`QueueBase`], use [`CachedMessageQueue`] for push brokers, register a URI scheme with
//! [`register_scheme`], and run the `courier-conformance` suite.
//!
//! ```
//! use std::time::Duration;
//! use courier_core::{MemoryMessageQueue, MessageEnvelope, MessageQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier_core::Result<()> {
//! let queue = MemoryMessageQueue::new("greetings");
//! queue.open(None).await?;
//! queue.send(Some("123"), MessageEnvelope::new(Some("123"), "greeting", "ABC")).await?;
//! let message = queue.receive(None, Duration::from_millis(100)).await?.unwrap();
//! assert_eq!(message.message_as_string()?, "ABC");
//! queue.complete(&message).await?;
//! # Ok(())
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

mod base;
mod cached;
mod capabilities;
mod config;
mod connection;
pub mod envelope;
mod error;
mod factory;
pub mod listen;
mod lock;
mod memory;
mod options;
mod queue;
mod receiver;

pub use async_trait::async_trait;
pub use base::{QueueBase, Settled, deadline_after};
pub use cached::{CachedMessageQueue, MessageSink, PushBroker};
pub use capabilities::MessagingCapabilities;
pub use config::ConfigParams;
pub use connection::{
    ConnectionParams, CredentialParams, check_known_options, config_from_uri, redact_uri,
};
pub use envelope::MessageEnvelope;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use factory::{
    Component, Constructor, DefaultMessagingFactory, Descriptor, MemoryMessageQueueFactory,
    MessageQueueFactory, QueueProvider, connect, create_from_uri, named_config, register_scheme,
    registered_schemes,
};
pub use listen::{ListenControl, ListenTicket};
pub use lock::{LockToken, LockedMessage};
pub use memory::MemoryMessageQueue;
pub use options::{OPTION_KEYS, QueueOptions, resolve_name};
pub use queue::{ListenHandle, MessageQueue, MessageQueueExt};
pub use receiver::{CallbackMessageReceiver, MessageReceiver};
