//! [`MessageReceiver`] (what `listen` hands messages to) and [`CallbackMessageReceiver`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::{MessageEnvelope, MessageQueue, Result};

/// Handles the messages a [`MessageQueue::listen`] loop delivers.
///
/// The receiver may settle the message itself (`queue.complete`, `abandon`,
/// `move_to_dead_letter`). If it does not, `listen` completes the message when the receiver
/// returns `Ok` and abandons it (so it is redelivered, up to `max_deliveries`) when the receiver
/// returns `Err` or panics.
#[async_trait]
pub trait MessageReceiver: Send + Sync {
    /// Handles one message received from `queue`.
    ///
    /// # Errors
    ///
    /// An error means the message was not processed; `listen` logs it ("Failed to process the
    /// message") and abandons the message.
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        queue: &dyn MessageQueue,
    ) -> Result<()>;
}

#[async_trait]
impl<R: MessageReceiver + ?Sized> MessageReceiver for Arc<R> {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        queue: &dyn MessageQueue,
    ) -> Result<()> {
        (**self).receive_message(envelope, queue).await
    }
}

type Callback = dyn for<'a> Fn(&'a MessageEnvelope, &'a dyn MessageQueue) -> BoxFuture<'a, Result<()>>
    + Send
    + Sync;

/// A [`MessageReceiver`] made from a closure.
///
/// ```
/// use courier_core::CallbackMessageReceiver;
///
/// let receiver = CallbackMessageReceiver::new(|envelope| async move {
///     println!("Received message: {}", envelope.message_as_string()?);
///     Ok(())
/// });
/// # let _ = receiver;
/// ```
///
/// Unlike pip-services' Node version, the callback's future is awaited, so its error reaches the
/// queue (which logs it and abandons the message).
pub struct CallbackMessageReceiver {
    callback: Box<Callback>,
}

impl CallbackMessageReceiver {
    /// A receiver that calls `callback` with a clone of each envelope.
    pub fn new<F, Fut>(callback: F) -> Self
    where
        F: Fn(MessageEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        CallbackMessageReceiver {
            callback: Box::new(move |envelope, _queue| Box::pin(callback(envelope.clone()))),
        }
    }

    /// A receiver whose callback also gets the queue, for settling the message itself:
    /// `|envelope, queue| Box::pin(async move { queue.complete(envelope).await })`.
    pub fn with_queue<F>(callback: F) -> Self
    where
        F: for<'a> Fn(&'a MessageEnvelope, &'a dyn MessageQueue) -> BoxFuture<'a, Result<()>>
            + Send
            + Sync
            + 'static,
    {
        CallbackMessageReceiver {
            callback: Box::new(callback),
        }
    }
}

impl fmt::Debug for CallbackMessageReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackMessageReceiver")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageReceiver for CallbackMessageReceiver {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        queue: &dyn MessageQueue,
    ) -> Result<()> {
        (self.callback)(envelope, queue).await
    }
}
