//! The push layer: how a broker that delivers by push (RabbitMQ consumers, MQTT, core NATS)
//! hands messages to a [`CachedMessageQueue`](crate::CachedMessageQueue), which gives them the
//! pull side of [`MessageQueue`](crate::MessageQueue).
//!
//! * **Delivery handles.** The broker pushes each message with its own handle (an AMQP
//!   delivery tag, an MQTT packet id, `()` for a broker without acknowledgements). The handle
//!   travels with the message through receive, lock expiry and redelivery, and is given back
//!   to the broker exactly once: to [`PushBroker::complete`] when the message is completed or
//!   cleared, to [`PushBroker::move_to_dead_letter`] when it is dead-lettered, to
//!   [`PushBroker::abandon`] when the queue closes with the message received and unsettled
//!   (or, for a broker that redelivers, on abandon and lock expiry), and to
//!   [`PushBroker::release`] when the queue closes with the message never handed out.
//! * **Credits.** The queue holds at most `options.max_size` pushed messages
//!   ([`DEFAULT_CREDITS`] when unset), counting those received and not yet settled:
//!   [`MessageSink::push`] waits for a credit, so a slow consumer means backpressure on the
//!   broker (which stops reading, or stops acknowledging), never unbounded memory.
//! * **Take, then acknowledge.** Settling first takes the message out of the lock table, then
//!   awaits the broker: a lock that expires during the broker call cannot hand the message to a
//!   second consumer who would settle the same delivery again.
//! * **Redelivery.** An abandoned message, or one whose lock expires, is delivered again from
//!   the queue's buffer (with its handle), or given back to a broker that redelivers by itself
//!   ([`Redelivery::Broker`]); `options.max_deliveries` sends it to the broker's dead letters.
//! * **Subscriptions end.** `close` ends the subscription: a push after it is refused with
//!   [`Closed`], giving the handle back, and held messages go back to the broker (released or
//!   abandoned), so nothing stale comes back on reopen.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::envelope::DeliveryHandle;
use crate::{Error, MemoryMessageQueue, MessageEnvelope, MessagingCapabilities, Result};

/// How many pushed messages a cached queue holds when `options.max_size` is not set.
pub const DEFAULT_CREDITS: usize = 1000;

/// The broker half of a [`CachedMessageQueue`](crate::CachedMessageQueue): connects,
/// subscribes, sends, and settles the deliveries it pushed.
///
/// The queue does everything else (peek, count, receive with locks and redelivery, listen).
/// Every method may be called concurrently; each is given what it needs.
#[async_trait]
pub trait PushBroker: Send + Sync + 'static {
    /// What identifies a delivery to the broker, to settle it later (`()` if nothing does).
    type Handle: Send + Sync + 'static;

    /// What the combined queue can do. Receive, peek, peek batch, count, clear and renew lock
    /// are served by the queue's buffer; say `true` for them unless the broker forbids them.
    /// `send`, `abandon` and dead letter are the broker's to declare.
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
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn connect(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Disconnects from the broker.
    ///
    /// # Errors
    ///
    /// A backend error; the queue is closed anyway.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn disconnect(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Starts pushing the queue's messages into `sink`. Called once per subscription: on
    /// `open` with `options.autosubscribe`, else on the first peek, receive, count or listen,
    /// from a task of the queue's own (a receive cancelled meanwhile does not cancel it).
    /// After a `subscribe` that failed the queue calls it again with a new sink: it replaces
    /// the earlier one, whose pushes are refused with [`Closed`].
    ///
    /// Push from a delivery task of your own (the broker's consumer loop), not from inside
    /// `subscribe`: `push` may wait for credits that only the queue's receivers free, and the
    /// queue's first receive is what is waiting for `subscribe` to return.
    ///
    /// # Errors
    ///
    /// A backend error; the next operation tries again.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn subscribe(
        &self,
        correlation_id: Option<&str>,
        sink: MessageSink<Self::Handle>,
    ) -> Result<()>;

    /// Stops pushing messages.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn unsubscribe(&self, correlation_id: Option<&str>) -> Result<()>;

    /// Who delivers again a message that is abandoned or whose lock expires:
    /// [`Redelivery::Queue`] (the default) keeps it in the queue's buffer and hands it out
    /// again; [`Redelivery::Broker`] gives it back with [`abandon`](Self::abandon) for the
    /// broker to deliver again, to this or another consumer, with its delivery count.
    fn redelivery(&self) -> Redelivery {
        Redelivery::Queue
    }

    /// How many messages the broker holds ready for this queue that it has not pushed yet:
    /// `read_message_count` adds the queue's buffer. Default: 0 (a broker that keeps
    /// nothing for absent consumers).
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn ready_count(&self) -> Result<usize> {
        Ok(0)
    }

    /// Deletes the messages the broker holds ready for this queue (`clear`; the queue
    /// acknowledges what its buffer holds). Default: nothing to do.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; the messages may or may not have been deleted.
    async fn purge(&self) -> Result<()> {
        Ok(())
    }

    /// Publishes `envelope` (its `sent_time` is already stamped).
    ///
    /// # Errors
    ///
    /// A backend error; the message was not sent (or, if the answer was lost, may have been).
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; the message may or may not have been sent.
    async fn send(&self, correlation_id: Option<&str>, envelope: &MessageEnvelope) -> Result<()>;

    /// Publishes `envelopes` in order (their `sent_time`s are already stamped); never empty.
    /// The default sends one after another; brokers that can pipeline publish them all, then
    /// await every confirmation.
    ///
    /// # Errors
    ///
    /// A backend error; a part of the batch may have been sent.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; a part of the batch may have been sent.
    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        for envelope in envelopes {
            self.send(correlation_id, envelope).await?;
        }
        Ok(())
    }

    /// The delivery `handle` of `message` is done with: completed (or cleared). Acknowledge it.
    /// Called at most once per handle. Default: nothing to do.
    ///
    /// # Errors
    ///
    /// A backend error; the broker will deliver the message again (at least once).
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; the broker then delivers the message again.
    async fn complete(&self, _message: &MessageEnvelope, _handle: Self::Handle) -> Result<()> {
        Ok(())
    }

    /// Gives the delivery of `message` back so that the broker delivers it again (an AMQP
    /// reject with requeue): when the queue closes while it holds the message, and, when
    /// [`redelivery`](Self::redelivery) is [`Redelivery::Broker`], when it is abandoned or its
    /// lock expires. Called at most once per handle. Default: nothing to do (a broker without
    /// acknowledgements forgets it).
    ///
    /// # Errors
    ///
    /// A backend error; logged.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn abandon(&self, _message: &MessageEnvelope, _handle: Self::Handle) -> Result<()> {
        Ok(())
    }

    /// Gives back the delivery of a message the queue never handed out (it held it, ready,
    /// when it closed): the broker delivers it again *without counting a delivery*, where it
    /// counts them (a RabbitMQ quorum queue counts every requeue, so courier republishes a
    /// copy that carries the count and acknowledges the original). Called at most once per
    /// handle. Default: [`abandon`](Self::abandon).
    ///
    /// # Errors
    ///
    /// A backend error; logged.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; leave the broker consistent when dropped.
    async fn release(&self, message: &MessageEnvelope, handle: Self::Handle) -> Result<()> {
        self.abandon(message, handle).await
    }

    /// Moves `message` to the broker's dead-letter destination and settles its delivery.
    /// Called at most once per handle, only when `capabilities().can_dead_letter()`; brokers
    /// without dead letters get their messages kept in the queue's local dead-letter queue
    /// and the delivery completed instead. Default: `Unsupported`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) or a backend error.
    ///
    /// # Cancel safety
    ///
    /// The queue may drop the future; the broker then delivers the message again.
    async fn move_to_dead_letter(
        &self,
        _message: &MessageEnvelope,
        _handle: Self::Handle,
    ) -> Result<()> {
        Err(Error::unsupported("", "move_to_dead_letter"))
    }
}

/// Who delivers again a pushed message that is abandoned or whose lock expires: see
/// [`PushBroker::redelivery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redelivery {
    /// The queue's buffer hands it out again (brokers that forget a message once pushed, or
    /// cannot count deliveries: MQTT, core NATS).
    Queue,
    /// The broker does, counting the delivery (RabbitMQ): other consumers can get it, and it
    /// survives this process.
    Broker,
}

/// A push refused because the subscription ended (the queue closed or resubscribed): the
/// delivery's handle, to give back to the broker.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<H>(pub H);

impl<H> fmt::Display for Closed<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the subscription ended: give the delivery back to the broker")
    }
}

impl<H: fmt::Debug> std::error::Error for Closed<H> {}

/// A [`MessageSink::try_push`] that did not hand the message over: the envelope and handle,
/// given back.
#[derive(Debug)]
pub enum TryPush<H> {
    /// The queue holds as many messages as it has credits: push later (or with
    /// [`MessageSink::push`], which waits).
    Full(MessageEnvelope, H),
    /// The subscription ended: give the delivery back to the broker.
    Closed(MessageEnvelope, H),
}

/// Where a [`PushBroker`] puts the messages of one subscription. Cheap to clone.
pub struct MessageSink<H> {
    buffer: MemoryMessageQueue,
    credits: Arc<Semaphore>,
    _handle: std::marker::PhantomData<fn(H)>,
}

impl<H> Clone for MessageSink<H> {
    fn clone(&self) -> Self {
        MessageSink {
            buffer: self.buffer.clone(),
            credits: self.credits.clone(),
            _handle: std::marker::PhantomData,
        }
    }
}

impl<H: Send + Sync + 'static> MessageSink<H> {
    pub(crate) fn new(buffer: MemoryMessageQueue, credits: Arc<Semaphore>) -> Self {
        MessageSink {
            buffer,
            credits,
            _handle: std::marker::PhantomData,
        }
    }

    /// Hands a message the broker delivered, with its delivery `handle`, to the queue. Waits
    /// while the queue holds as many messages as it has credits (backpressure: a broker's
    /// delivery loop that awaits this stops reading).
    ///
    /// `envelope.delivery_count()` says how many times the broker delivered the message before
    /// (0 for a first delivery; a broker that redelivers, such as a RabbitMQ quorum queue,
    /// knows): the queue counts this delivery on top, and dead-letters a message that arrives
    /// after its last allowed delivery.
    ///
    /// # Errors
    ///
    /// [`Closed`] with the handle if the subscription ended: give the delivery back.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled push did not hand the message over.
    pub async fn push(
        &self,
        envelope: MessageEnvelope,
        handle: H,
    ) -> std::result::Result<(), Closed<H>> {
        let Ok(credit) = self.credits.clone().acquire_owned().await else {
            return Err(Closed(handle));
        };
        self.hand_over(envelope, handle, credit);
        Ok(())
    }

    /// [`push`](Self::push) without waiting: hands the message over if the queue has a credit
    /// free now, else gives both back. For a delivery loop that must not stop (it also serves
    /// sends and keep-alives): it can keep what does not fit for a task that waits.
    ///
    /// # Errors
    ///
    /// [`TryPush::Full`] with the envelope and handle when no credit is free;
    /// [`TryPush::Closed`] with them if the subscription ended.
    // The envelope comes back by value: boxing it would allocate on every refusal.
    #[allow(clippy::result_large_err)]
    pub fn try_push(
        &self,
        envelope: MessageEnvelope,
        handle: H,
    ) -> std::result::Result<(), TryPush<H>> {
        match self.credits.clone().try_acquire_owned() {
            Ok(credit) => {
                self.hand_over(envelope, handle, credit);
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(TryPush::Full(envelope, handle)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(TryPush::Closed(envelope, handle)),
        }
    }

    fn hand_over(&self, mut envelope: MessageEnvelope, handle: H, credit: OwnedSemaphorePermit) {
        envelope.set_lock_token(None);
        envelope.set_delivery(Some(DeliveryHandle(Arc::new(Held {
            handle: Mutex::new(Some(handle)),
            credit: Mutex::new(Some(credit)),
        }))));
        self.buffer.push_incoming(envelope);
    }

    /// Drops the messages the queue holds, ready and not yet received, whose handle `forget`
    /// picks, and returns how many: call it when the broker channel that delivered them died
    /// (the broker delivers them again), so that no one receives a message whose delivery
    /// can no longer be settled. Received (locked) messages stay: settling them reports the
    /// error of the broker call.
    pub fn forget(&self, forget: impl Fn(&H) -> bool) -> usize {
        self.buffer.forget_ready(|message| {
            held::<H>(message).is_some_and(|held| held.handle.lock().as_ref().is_some_and(&forget))
        })
    }

    /// Whether the subscription ended (pushes are refused).
    pub fn is_closed(&self) -> bool {
        self.credits.is_closed()
    }

    /// How many more messages the queue takes before `push` waits.
    pub fn credits(&self) -> usize {
        self.credits.available_permits()
    }
}

impl<H> fmt::Debug for MessageSink<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSink")
            .field("queue", &crate::MessageQueue::name(&self.buffer))
            .field("credits", &self.credits.available_permits())
            .field("closed", &self.credits.is_closed())
            .finish()
    }
}

/// A broker delivery as the queue holds it: its handle and its credit, each taken once.
struct Held<H> {
    handle: Mutex<Option<H>>,
    credit: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Takes the broker handle of a pushed `message` and returns its credit: `None` if the
/// message was not pushed with a `H` or its handle was taken already (it is settled).
pub(crate) fn take_handle<H: Send + Sync + 'static>(message: &MessageEnvelope) -> Option<H> {
    let held = held::<H>(message)?;
    drop(held.credit.lock().take());
    held.handle.lock().take()
}

/// The broker delivery a pushed `message` holds, if it was pushed with a `H`.
fn held<H: Send + Sync + 'static>(message: &MessageEnvelope) -> Option<&Held<H>> {
    let held = message.delivery()?;
    let held: &(dyn Any + Send + Sync) = &*held.0;
    held.downcast_ref::<Held<H>>()
}
