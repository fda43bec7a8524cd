//! [`CachedMessageQueue`]: the buffer-and-subscribe layer that gives push brokers
//! (MQTT, core NATS, ...) the pull side of [`MessageQueue`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{ListenControl, QueueBase};
use crate::{
    Error, MemoryMessageQueue, MessageEnvelope, MessageQueue, MessageReceiver,
    MessagingCapabilities, Result,
};

/// The broker half of a [`CachedMessageQueue`]: connects, subscribes, sends and acknowledges.
///
/// The cache does everything else (peek, count, receive with locks and redelivery, listen).
#[async_trait]
pub trait PushBroker: Send + Sync + 'static {
    /// What the combined queue can do. Receive, peek, peek batch, count, clear and renew lock
    /// are served by the cache; say `true` for them unless the broker forbids them. `send`,
    /// `abandon` (local redelivery, plus [`abandon`](PushBroker::abandon)) and dead letter
    /// are the broker's to declare.
    fn capabilities(&self) -> MessagingCapabilities;

    /// Connects to the broker.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connection`](crate::ErrorKind::Connection) or
    /// [`ErrorKind::Config`](crate::ErrorKind::Config); the queue then stays closed.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn connect(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Disconnects from the broker.
    ///
    /// # Errors
    ///
    /// A backend error; the queue is closed anyway.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn disconnect(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Starts pushing the queue's messages into `sink`. Called once per subscription: on
    /// `open` with `options.autosubscribe`, else on the first peek, receive, count or listen.
    ///
    /// # Errors
    ///
    /// A backend error; the next operation tries again.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn subscribe(&self, correlation_id: Option<&str>, sink: MessageSink) -> Result<()>;

    /// Stops pushing messages.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn unsubscribe(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Publishes `envelope` (its `sent_time` is already stamped).
    ///
    /// # Errors
    ///
    /// A backend error; the message was not sent.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn send(&self, correlation_id: Option<&str>, envelope: &MessageEnvelope) -> Result<()>;

    /// Acknowledges a message the cache delivered and its holder completed. Default: nothing to do.
    ///
    /// # Errors
    ///
    /// A backend error; the message stays locked in the cache.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn complete(&self, _message: &MessageEnvelope) -> Result<()> {
        Ok(())
    }

    /// Told that a message was abandoned; the cache redelivers it locally. Default: nothing.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn abandon(&self, _message: &MessageEnvelope) -> Result<()> {
        Ok(())
    }

    /// Moves a message to the broker's dead-letter destination. Default: `Unsupported`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) or a backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue calls it and may drop the future; implementations must leave the broker
    /// consistent when dropped (at worst, a message not acknowledged is delivered again).
    async fn move_to_dead_letter(&self, _message: &MessageEnvelope) -> Result<()> {
        Err(Error::unsupported("", "move_to_dead_letter"))
    }
}

/// Where a [`PushBroker`] puts the messages it receives. Cheap to clone; pushing never blocks.
#[derive(Clone)]
pub struct MessageSink {
    cache: MemoryMessageQueue,
}

impl MessageSink {
    /// Hands a message from the broker to the queue's cache.
    pub fn push(&self, envelope: MessageEnvelope) {
        self.cache.push_incoming(envelope);
    }
}

impl fmt::Debug for MessageSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSink")
            .field("queue", &self.cache.name())
            .finish()
    }
}

/// A [`MessageQueue`] made of a [`PushBroker`] and an in-memory cache of what it pushed.
///
/// This is pip-services' `CachedMessageQueue`, with its bugs fixed (`spec/pip-messaging.md`
/// §5 and §9.3 #9): cached messages are delivered to the receiver `listen` was given (pip
/// used a field that was still unset and lost them), `open` reports errors instead of
/// swallowing them, `receive` wakes on arrival instead of polling, an empty cache is not an
/// error, and received messages are locked, redelivered when abandoned or expired, and
/// acknowledged to the broker on `complete`.
///
/// `listen` runs the shared listen loop over the cache, so the cache is drained first, in
/// order, and live messages follow, with the same completion and concurrency rules as every
/// queue.
///
/// What the cache holds is in this process only: messages pushed but not yet completed are
/// lost with it, unless the broker redelivers unacknowledged messages.
pub struct CachedMessageQueue<B> {
    base: QueueBase,
    cache: MemoryMessageQueue,
    broker: B,
    subscribed: tokio::sync::Mutex<bool>,
}

impl<B: PushBroker> CachedMessageQueue<B> {
    /// A closed queue over `broker`; `base` gives the name and options.
    pub fn new(base: QueueBase, broker: B) -> Self {
        // The cache redelivers without limit: this queue applies `max_deliveries` itself, so
        // that spent messages reach the broker's dead letters, not a cache nobody can read.
        let mut options = base.options().clone();
        options.max_deliveries = None;
        let cache = MemoryMessageQueue::with_options(base.name(), options);
        CachedMessageQueue {
            base,
            cache,
            broker,
            subscribed: tokio::sync::Mutex::new(false),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// The shared queue state.
    pub fn base(&self) -> &QueueBase {
        &self.base
    }

    /// Where spent messages go when the broker has no dead letters of its own: an in-process
    /// queue, `<name>.dlq` (its content dies with the process).
    pub fn local_dead_letters(&self) -> MemoryMessageQueue {
        self.cache.dead_letter_queue()
    }

    /// Dead-letters a message the cache holds: to the broker's dead letters if it has them,
    /// else to [`local_dead_letters`](Self::local_dead_letters).
    async fn bury(&self, message: &MessageEnvelope) -> Result<()> {
        if self.capabilities().can_dead_letter() {
            self.broker
                .move_to_dead_letter(message)
                .await
                .map_err(|e| e.with_queue(self.name()))?;
            self.cache.complete(message).await?;
        } else {
            self.cache.move_to_dead_letter(message).await?;
        }
        self.base.dead_lettered(message);
        Ok(())
    }

    fn spent(&self, message: &MessageEnvelope) -> bool {
        self.base
            .options()
            .max_deliveries
            .is_some_and(|max| message.delivery_count() >= max)
    }

    async fn ready(&self, correlation_id: Option<&str>) -> Result<()> {
        self.base.check_open()?;
        let mut subscribed = self.subscribed.lock().await;
        if !*subscribed {
            let sink = MessageSink {
                cache: self.cache.clone(),
            };
            self.broker.subscribe(correlation_id, sink).await?;
            *subscribed = true;
        }
        Ok(())
    }
}

impl<B> fmt::Debug for CachedMessageQueue<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedMessageQueue")
            .field("base", &self.base)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: PushBroker> MessageQueue for CachedMessageQueue<B> {
    fn name(&self) -> &str {
        self.base.name()
    }

    fn capabilities(&self) -> MessagingCapabilities {
        self.broker.capabilities()
    }

    fn is_open(&self) -> bool {
        self.base.is_open()
    }

    async fn open(&self, correlation_id: Option<&str>) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        self.broker.connect(correlation_id).await?;
        self.cache.open(correlation_id).await?;
        self.base.set_open(true);
        if self.base.options().autosubscribe {
            if let Err(e) = self.ready(correlation_id).await {
                let _ = self.close(correlation_id).await;
                return Err(e);
            }
        }
        self.base.changed(correlation_id, "Opened");
        Ok(())
    }

    async fn close(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        self.base.stop_listeners().await;
        self.base.set_open(false);
        let mut subscribed = self.subscribed.lock().await;
        let unsubscribed = if *subscribed {
            *subscribed = false;
            self.broker.unsubscribe(correlation_id).await
        } else {
            Ok(())
        };
        let disconnected = self.broker.disconnect(correlation_id).await;
        self.cache.clear(correlation_id).await?;
        self.cache.close(correlation_id).await?;
        self.base.changed(correlation_id, "Closed");
        unsubscribed.and(disconnected)
    }

    async fn read_message_count(&self) -> Result<usize> {
        self.base.check_capability(
            self.capabilities().can_message_count(),
            "read_message_count",
        )?;
        self.ready(None).await?;
        self.cache.read_message_count().await
    }

    async fn send(
        &self,
        correlation_id: Option<&str>,
        mut envelope: MessageEnvelope,
    ) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_send(), "send")?;
        envelope.sent_time = Some(chrono::Utc::now());
        self.broker.send(correlation_id, &envelope).await?;
        self.base.sent(correlation_id, &envelope);
        Ok(())
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        self.base
            .check_capability(self.capabilities().can_peek(), "peek")?;
        self.ready(correlation_id).await?;
        self.cache.peek(correlation_id).await
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        self.base
            .check_capability(self.capabilities().can_peek_batch(), "peek_batch")?;
        self.ready(correlation_id).await?;
        self.cache.peek_batch(correlation_id, message_count).await
    }

    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>> {
        self.base
            .check_capability(self.capabilities().can_receive(), "receive")?;
        self.ready(correlation_id).await?;
        let deadline = crate::backend::deadline_after(tokio::time::Instant::now(), wait_timeout);
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = match self.cache.receive(correlation_id, wait).await {
                Err(e) if e.kind() == crate::ErrorKind::NotOpened => {
                    return Err(Error::not_opened(self.name()).with_backend(self.base.backend()));
                }
                other => other?,
            };
            match message {
                // Its lock expired after its last allowed delivery.
                Some(m)
                    if self
                        .base
                        .options()
                        .max_deliveries
                        .is_some_and(|max| m.delivery_count() > max) =>
                {
                    self.bury(&m).await?;
                }
                other => return Ok(other),
            }
        }
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_renew_lock(), "renew_lock")?;
        self.cache.renew_lock(message, lock_timeout).await
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        if self.cache.holds_lock(message) {
            self.broker.complete(message).await?;
            self.cache.complete(message).await?;
        }
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_abandon(), "abandon")?;
        if self.cache.holds_lock(message) {
            if self.spent(message) {
                return self.bury(message).await;
            }
            self.broker.abandon(message).await?;
            self.cache.abandon(message).await?;
        }
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_dead_letter(), "move_to_dead_letter")?;
        if self.cache.holds_lock(message) {
            self.bury(message).await?;
        }
        Ok(())
    }

    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        // The loop's first `receive` subscribes.
        self.base.listen(self, correlation_id, receiver).await
    }

    fn end_listen(&self, _correlation_id: Option<&str>) {
        self.base.end_listen();
    }

    fn listen_control(&self) -> Option<&ListenControl> {
        Some(self.base.listen_control())
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_clear(), "clear")?;
        self.cache.clear(correlation_id).await
    }
}
