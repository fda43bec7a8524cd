//! The [`MessageQueue`] trait, its extension [`MessageQueueExt`] and [`ListenHandle`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::backend::QueueBase;
use crate::{Error, ErrorKind, MessageEnvelope, MessageReceiver, MessagingCapabilities, Result};

/// A message queue with the whole pip-services surface.
///
/// Every backend (memory, SQL, brokers) implements this trait with the same semantics; where a
/// backend cannot do something its [`capabilities`](MessageQueue::capabilities) say so and the
/// operation fails with [`ErrorKind::Unsupported`].
///
/// # Delivery
///
/// [`receive`](MessageQueue::receive) takes the next message and *locks* it for the queue's
/// lock timeout (`options.lock_timeout`, 30 s by default): while locked it is invisible to
/// other receivers, to `peek` and to `read_message_count`. The holder then
/// [`complete`](MessageQueue::complete)s it (deleted), [`abandon`](MessageQueue::abandon)s it
/// (redelivered at once), [`move_to_dead_letter`](MessageQueue::move_to_dead_letter)s it, or
/// lets the lock expire (redelivered). Each delivery counts; after `options.max_deliveries` a
/// message that comes back goes to the dead-letter queue. Delivery is at least once.
///
/// # Closed queues
///
/// Every operation but `name`, `capabilities`, `is_open`, `open` and `close` fails with
/// [`ErrorKind::NotOpened`] on a queue that is not open.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use courier_core::{MemoryMessageQueue, MessageEnvelope, MessageQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// let queue = MemoryMessageQueue::new("orders");
/// queue.open(None).await?;
/// queue.send(None, MessageEnvelope::new(Some("123"), "order.created", "{\"id\":1}")).await?;
/// let message = queue.receive(None, Duration::from_secs(1)).await?.expect("a message");
/// assert_eq!(message.message_type, "order.created");
/// queue.complete(&message).await?;
/// assert_eq!(queue.read_message_count().await?, 0);
/// queue.close(None).await?;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// The queue's name.
    fn name(&self) -> &str;

    /// What this queue can do.
    fn capabilities(&self) -> MessagingCapabilities;

    /// Whether the queue is open.
    fn is_open(&self) -> bool;

    /// Opens the queue: connects to its backend. Opening an open queue does nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connection`] if the backend cannot be reached, [`ErrorKind::Config`] if the
    /// configuration is invalid.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled `open` leaves the queue closed.
    async fn open(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Closes the queue: stops every `listen` loop, lets in-flight handlers finish (up to
    /// `options.drain_timeout`, after which their messages are abandoned), then disconnects.
    /// Closing a closed queue does nothing. Messages kept by a durable backend stay there.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connection`] or [`ErrorKind::Backend`] if disconnecting fails; the queue is
    /// closed anyway.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled `close` may leave listeners stopped and the queue open.
    async fn close(&self, correlation_id: Option<&str>) -> Result<()>;

    /// The number of messages ready for delivery (locked messages are not counted).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_message_count` is false,
    /// or a backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (it only reads).
    async fn read_message_count(&self) -> Result<usize>;

    /// Sends a message: stamps its `sent_time`, keeps its `message_id`. When this returns `Ok`
    /// the message is stored (durably, on durable backends). A bounded queue
    /// (`options.max_size`) waits here for room.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`], or a backend error; the message
    /// was then not sent.
    ///
    /// # Cancel safety
    ///
    /// Memory queue: cancel safe, a cancelled send did not enqueue the message. Remote backends:
    /// a cancelled send may or may not have stored the message (at-least-once: send again).
    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()>;

    /// The next ready message, without removing or locking it; `None` if there is none.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_peek` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (it only reads).
    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>>;

    /// Up to `message_count` ready messages in order, without removing or locking them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_peek_batch` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (it only reads).
    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>>;

    /// Takes the next message and locks it; waits up to `wait_timeout` for one to arrive
    /// (returning at once when one is ready, also with a zero wait). `None` when the wait ends
    /// empty-handed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`] (also when the queue is closed during the wait),
    /// [`ErrorKind::Unsupported`], or a backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped (for example in `tokio::select!`) before it
    /// returns, no message was taken. (On remote backends a message taken by a request whose
    /// answer is lost stays locked and is redelivered when the lock expires.)
    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>>;

    /// Extends the lock of a received `message` to now + `lock_timeout`. Does nothing if the
    /// message's lock is unknown, released or already expired.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_renew_lock` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call either extended the lock or did not.
    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()>;

    /// Deletes a received message for good. A no-op (not an error) if its lock is unknown or
    /// already released (completed, abandoned, expired).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`] or a backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call either completed the message or left it locked.
    async fn complete(&self, message: &MessageEnvelope) -> Result<()>;

    /// Releases a received message's lock so that it is redelivered at once (or goes to the
    /// dead-letter queue once it reached `options.max_deliveries`). A no-op if its lock is
    /// unknown or already released.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_abandon` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call either abandoned the message or left it locked.
    async fn abandon(&self, message: &MessageEnvelope) -> Result<()>;

    /// Moves a received message to the queue's dead-letter queue (`options.dead_letter_queue`,
    /// by default `<name>.dlq`), where it can be read like any queue. A no-op if its lock is
    /// unknown or already released.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_dead_letter` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call either moved the message or left it locked.
    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()>;

    /// Sends `envelopes` in order, as [`send`](MessageQueue::send) sends one: each gets its
    /// `sent_time` and keeps its `message_id`. An empty batch does nothing (on an open queue).
    ///
    /// The default sends one message after another. Backends override it to store the batch
    /// in one go: the memory queue under one lock, the SQL queues in one multi-row `INSERT`
    /// (one transaction), the brokers by pipelining the publishes and awaiting their
    /// confirmations together.
    ///
    /// # Errors
    ///
    /// As [`send`](MessageQueue::send). On an error a part of the batch may have been stored
    /// (on SQL queues none was); at-least-once senders send the whole batch again.
    ///
    /// # Cancel safety
    ///
    /// As [`send`](MessageQueue::send): a cancelled batch may have stored a part of it.
    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        if !self.is_open() {
            return Err(Error::not_opened(self.name()));
        }
        for envelope in envelopes {
            self.send(correlation_id, envelope).await?;
        }
        Ok(())
    }

    /// Takes up to `max` messages and locks each, as [`receive`](MessageQueue::receive) does
    /// one; waits up to `wait_timeout` for the first, and returns as soon as at least one is
    /// ready (it does not wait to fill the batch). The messages come in queue order. An empty
    /// `Vec` when the wait ends empty-handed, or at once for `max == 0`.
    ///
    /// The default receives one message with the wait, then more with no wait until `max` or
    /// an empty queue. Backends override it to claim the batch in one go: the memory queue
    /// under one lock, the SQL queues with one claim statement, Redis with one
    /// `XREADGROUP COUNT`, JetStream with one fetch.
    ///
    /// # Errors
    ///
    /// As [`receive`](MessageQueue::receive). An error after some messages were taken
    /// returns those messages instead (the error comes again with the next call).
    ///
    /// # Cancel safety
    ///
    /// As [`receive`](MessageQueue::receive): a dropped future hands out no message and uses
    /// no delivery; what it may have taken is given back (every courier backend, tested by
    /// the conformance suite). With the default loop, messages taken before the drop stay
    /// locked until their locks expire.
    async fn receive_batch(
        &self,
        correlation_id: Option<&str>,
        max: usize,
        wait_timeout: Duration,
    ) -> Result<Vec<MessageEnvelope>> {
        if !self.is_open() {
            return Err(Error::not_opened(self.name()));
        }
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        let mut wait = wait_timeout;
        while batch.len() < max {
            match self.receive(correlation_id, wait).await {
                Ok(Some(message)) => batch.push(message),
                Ok(None) => break,
                Err(_) if !batch.is_empty() => break,
                Err(e) => return Err(e),
            }
            wait = Duration::ZERO;
        }
        Ok(batch)
    }

    /// Completes every message of `messages`, in order, as [`complete`](MessageQueue::complete)
    /// completes one: messages whose lock is unknown or already released are skipped.
    ///
    /// The default completes one message after another. Backends override it to settle the
    /// batch in one go: the memory queue under one lock, the SQL queues with one `DELETE`,
    /// Redis with one `XACK` of every id.
    ///
    /// # Errors
    ///
    /// As [`complete`](MessageQueue::complete). On an error, the messages not yet completed
    /// stay locked and come back when their locks expire (at least once).
    ///
    /// # Cancel safety
    ///
    /// As [`complete`](MessageQueue::complete): a cancelled call completed a part of the
    /// batch, and the rest stays locked.
    async fn complete_batch(&self, messages: &[MessageEnvelope]) -> Result<()> {
        if !self.is_open() {
            return Err(Error::not_opened(self.name()));
        }
        for message in messages {
            self.complete(message).await?;
        }
        Ok(())
    }

    /// Hands every message to `receiver` until [`end_listen`](MessageQueue::end_listen) or
    /// [`close`](MessageQueue::close); returns then, after in-flight handlers finished.
    ///
    /// Up to `options.listen_concurrency` messages are handled at once. A message the receiver
    /// did not settle is completed when it returns `Ok` and abandoned when it returns `Err` or
    /// panics (the panic is caught and logged). On stop, no new message is taken; handlers get
    /// `options.drain_timeout` to finish, after which their messages are abandoned. A message
    /// taken from the queue is never dropped undelivered.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`] if the queue is not open when `listen` starts,
    /// [`ErrorKind::Unsupported`] if `can_receive` is false. Receive errors during the loop are
    /// logged and retried; receiver errors are logged.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops listening at once: messages of handlers that were running stay
    /// locked until their lock expires and are then redelivered. Prefer `end_listen`.
    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()>;

    /// Stops every running `listen` loop of this queue (they drain and return). A later
    /// `listen` starts afresh; `clear` never restarts a stopped loop.
    fn end_listen(&self, correlation_id: Option<&str>);

    /// The shared state of this queue, for backends that embed a
    /// [`QueueBase`](crate::backend::QueueBase) (every courier backend does, returning
    /// `Some(&self.base)`). It lets [`begin_listen`](MessageQueueExt::begin_listen) be stopped
    /// before its task runs, and `Debug` for `dyn MessageQueue` show the backend and the
    /// (redacted) address. Read it; do not change its state (`set_open`) from outside the
    /// backend, which owns it.
    fn base(&self) -> Option<&QueueBase> {
        None
    }

    /// Removes every ready message. Locked messages are not touched (their holders may still
    /// complete them).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`], [`ErrorKind::Unsupported`] if `can_clear` is false, or a
    /// backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe on the memory queue; on remote backends a cancelled clear may have removed
    /// some messages.
    async fn clear(&self, correlation_id: Option<&str>) -> Result<()>;
}

/// What `connect` returns can be printed: name, backend, address (without its password) and
/// whether it is open.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// let queue = courier_core::connect("memory://debugged?lock_timeout=500").await?;
/// assert_eq!(
///     format!("{queue:?}"),
///     r#"MessageQueue { name: "debugged", backend: "memory", uri: "memory://debugged?lock_timeout=500", open: true }"#
/// );
/// # Ok(())
/// # }
/// ```
impl fmt::Debug for dyn MessageQueue + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MessageQueue");
        d.field("name", &self.name());
        if let Some(base) = self.base() {
            d.field("backend", &base.backend());
            if let Some(uri) = &base.connection().uri {
                d.field("uri", &crate::redact_uri(uri));
            }
        }
        d.field("open", &self.is_open()).finish()
    }
}

/// The future every `MessageQueue` method returns (what `#[async_trait]` generates).
type QueueFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// `MessageQueue` for `Arc<Q>` and `Box<Q>`: hands back the inner queue's future as it is,
/// without boxing it a second time (these impls are on the path of every `Arc<dyn
/// MessageQueue>` call).
macro_rules! forward_message_queue {
    ($($ptr:ident),*) => {$(
        #[deny(unconditional_recursion)]
        impl<Q: MessageQueue + ?Sized> MessageQueue for $ptr<Q> {
            fn name(&self) -> &str { (**self).name() }
            fn capabilities(&self) -> MessagingCapabilities { (**self).capabilities() }
            fn is_open(&self) -> bool { (**self).is_open() }
            fn open<'s, 'c, 'f>(&'s self, cid: Option<&'c str>) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).open(cid) }
            fn close<'s, 'c, 'f>(&'s self, cid: Option<&'c str>) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).close(cid) }
            fn read_message_count<'s, 'f>(&'s self) -> QueueFuture<'f, usize>
            where 's: 'f, Self: 'f { (**self).read_message_count() }
            fn send<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, envelope: MessageEnvelope) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).send(cid, envelope) }
            fn peek<'s, 'c, 'f>(&'s self, cid: Option<&'c str>) -> QueueFuture<'f, Option<MessageEnvelope>>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).peek(cid) }
            fn peek_batch<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, n: usize) -> QueueFuture<'f, Vec<MessageEnvelope>>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).peek_batch(cid, n) }
            fn receive<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, wait: Duration) -> QueueFuture<'f, Option<MessageEnvelope>>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).receive(cid, wait) }
            fn renew_lock<'s, 'm, 'f>(&'s self, m: &'m MessageEnvelope, t: Duration) -> QueueFuture<'f, ()>
            where 's: 'f, 'm: 'f, Self: 'f { (**self).renew_lock(m, t) }
            fn complete<'s, 'm, 'f>(&'s self, m: &'m MessageEnvelope) -> QueueFuture<'f, ()>
            where 's: 'f, 'm: 'f, Self: 'f { (**self).complete(m) }
            fn abandon<'s, 'm, 'f>(&'s self, m: &'m MessageEnvelope) -> QueueFuture<'f, ()>
            where 's: 'f, 'm: 'f, Self: 'f { (**self).abandon(m) }
            fn move_to_dead_letter<'s, 'm, 'f>(&'s self, m: &'m MessageEnvelope) -> QueueFuture<'f, ()>
            where 's: 'f, 'm: 'f, Self: 'f { (**self).move_to_dead_letter(m) }
            fn send_batch<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, e: Vec<MessageEnvelope>) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).send_batch(cid, e) }
            fn receive_batch<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, max: usize, wait: Duration) -> QueueFuture<'f, Vec<MessageEnvelope>>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).receive_batch(cid, max, wait) }
            fn complete_batch<'s, 'm, 'f>(&'s self, m: &'m [MessageEnvelope]) -> QueueFuture<'f, ()>
            where 's: 'f, 'm: 'f, Self: 'f { (**self).complete_batch(m) }
            fn listen<'s, 'c, 'f>(&'s self, cid: Option<&'c str>, r: Arc<dyn MessageReceiver>) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).listen(cid, r) }
            fn end_listen(&self, cid: Option<&str>) { (**self).end_listen(cid) }
            fn base(&self) -> Option<&QueueBase> { (**self).base() }
            fn clear<'s, 'c, 'f>(&'s self, cid: Option<&'c str>) -> QueueFuture<'f, ()>
            where 's: 'f, 'c: 'f, Self: 'f { (**self).clear(cid) }
        }
    )*};
}

forward_message_queue!(Arc, Box);

/// Conveniences on top of every [`MessageQueue`]: pip-services' `sendAsObject` and
/// `beginListen`.
#[async_trait]
pub trait MessageQueueExt: MessageQueue {
    /// Sends `value` as a message of type `message_type`: a string as its UTF-8 text, anything
    /// else as JSON (see [`MessageEnvelope::from_object`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidMessage`] if `value` cannot be serialized, else as
    /// [`send`](MessageQueue::send).
    ///
    /// # Cancel safety
    ///
    /// As [`send`](MessageQueue::send).
    async fn send_as_object<T: Serialize + Sync + ?Sized>(
        &self,
        correlation_id: Option<&str>,
        message_type: &str,
        value: &T,
    ) -> Result<()> {
        let envelope = MessageEnvelope::from_object(correlation_id, message_type, value)?;
        self.send(correlation_id, envelope).await
    }

    /// Runs [`listen`](MessageQueue::listen) in a background task and returns at once. Stop it
    /// with [`end_listen`](MessageQueue::end_listen) or `close`, then
    /// [`join`](ListenHandle::join) the handle to wait for the drain.
    ///
    /// An `end_listen` or `close` that comes before the spawned task first runs stops the loop
    /// all the same (it then ends at once, taking nothing).
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    fn begin_listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> ListenHandle
    where
        Self: Clone + Sized + 'static,
    {
        let ticket = self.base().map(|base| base.listen_control().ticket());
        let queue = self.clone();
        let correlation_id = correlation_id.map(str::to_owned);
        let task = async move {
            let listen = queue.listen(correlation_id.as_deref(), receiver);
            match ticket {
                Some(ticket) => ticket.scope(listen).await,
                None => listen.await,
            }
        };
        ListenHandle {
            task: tokio::spawn(task),
        }
    }
}

impl<Q: MessageQueue + ?Sized> MessageQueueExt for Q {}

/// A `listen` loop running in the background, from [`MessageQueueExt::begin_listen`].
///
/// Dropping the handle does not stop the loop: stop it with `end_listen` or `close`.
pub struct ListenHandle {
    task: tokio::task::JoinHandle<Result<()>>,
}

impl ListenHandle {
    /// Waits for the loop to end and returns what `listen` returned.
    ///
    /// # Errors
    ///
    /// What `listen` returned, or [`ErrorKind::Backend`] if the loop task panicked or was
    /// aborted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the loop goes on if this future is dropped.
    pub async fn join(self) -> Result<()> {
        self.task.await.unwrap_or_else(|e| {
            Err(Error::new(ErrorKind::Backend, "the listen task failed").with_source(e))
        })
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the loop task at once, without draining (prefer `end_listen`).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl fmt::Debug for ListenHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
