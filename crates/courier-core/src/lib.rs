//! The core of [courier](https://docs.rs/courier): the pip-services messaging model in Rust.
//!
//! Most users depend on the `courier` facade, which re-exports everything here and adds the
//! backends. This page is the user API: the [`MessageQueue`] trait and its envelope, receivers,
//! capabilities and errors, the in-process [`MemoryMessageQueue`], configuration, factories and
//! [`connect`]. Backend authors also use [`backend`]: the shared queue state, the listen loop,
//! lock tokens, the push layer under [`CachedMessageQueue`], and URI-scheme registration.
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

pub mod backend;
mod cached;
mod capabilities;
mod config;
mod connection;
pub mod envelope;
mod error;
mod factory;
mod memory;
mod options;
mod queue;
mod receiver;

pub use async_trait::async_trait;
pub use cached::CachedMessageQueue;
pub use capabilities::MessagingCapabilities;
pub use config::ConfigParams;
pub use connection::redact_uri;
pub use envelope::MessageEnvelope;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use factory::{
    Component, Constructor, DefaultMessagingFactory, Descriptor, MemoryMessageQueueFactory,
    MessageQueueFactory, connect, create_from_uri,
};
pub use memory::MemoryMessageQueue;
pub use options::QueueOptions;
pub use queue::{ListenHandle, MessageQueue, MessageQueueExt};
pub use receiver::{CallbackMessageReceiver, MessageReceiver};
