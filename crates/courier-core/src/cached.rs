//! [`CachedMessageQueue`]: the pull side of [`MessageQueue`] for brokers that deliver by push
//! (MQTT, core NATS, RabbitMQ consumers), on the push layer of [`backend::push`](crate::backend).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::push::{DEFAULT_CREDITS, Redelivery, take_handle};
use crate::backend::{MessageSink, PushBroker, QueueBase, Settled, deadline_after};
use crate::{
    Error, ErrorKind, MemoryMessageQueue, MessageEnvelope, MessageQueue, MessageReceiver,
    MessagingCapabilities, Result,
};

/// A [`MessageQueue`] made of a [`PushBroker`] and a buffer of what it pushed.
///
/// This is pip-services' `CachedMessageQueue`, with its bugs fixed (`spec/pip-messaging.md`
/// §5 and §9.3 #9): buffered messages are delivered to the receiver `listen` was given (pip
/// used a field that was still unset and lost them), `open` reports errors instead of
/// swallowing them, `receive` wakes on arrival instead of polling, an empty buffer is not an
/// error, and received messages are locked and redelivered when abandoned or expired.
///
/// On top of pip-services, each pushed message keeps the broker's delivery handle, which is
/// settled exactly once (acknowledged on `complete` and `clear`, dead-lettered at the broker,
/// or given back on `close`); the buffer holds at most `options.max_size` messages
/// ([`DEFAULT_CREDITS`] by default), so a slow consumer slows the broker down instead of
/// growing memory. See [`backend::push`](crate::backend) for the whole contract.
///
/// `listen` runs the shared listen loop over the buffer, with the same completion,
/// concurrency and backoff rules as every queue.
///
/// Abandoned messages, and those whose lock expires, are delivered again from the buffer, or,
/// for a broker whose [`redelivery`](PushBroker::redelivery) is [`Redelivery::Broker`], given
/// back to the broker (at once on `abandon`; by a timer when a lock expires), which delivers
/// them again with their count. `read_message_count` is what the broker holds ready plus what
/// the buffer holds ready; `clear` purges the broker and acknowledges the buffer.
///
/// What the buffer holds lives in this process only: a message pushed and not yet settled is
/// redelivered by the broker if the process dies, if the broker redelivers unacknowledged
/// messages (AMQP, MQTT QoS 1), and lost otherwise (MQTT QoS 0, core NATS).
pub struct CachedMessageQueue<B> {
    base: QueueBase,
    buffer: MemoryMessageQueue,
    broker: Arc<B>,
    /// The current subscription (being made or made), if any. A plain mutex, never held
    /// across an await: a broker may push while `subscribe` runs, and receives must go on
    /// meanwhile (they free the credits those pushes wait for).
    subscription: parking_lot::Mutex<Option<Subscription>>,
    /// A `close` is under way, or was cancelled before it finished: the next `close` or
    /// `open` finishes it (the queue already says it is closed).
    closing: std::sync::atomic::AtomicBool,
}

/// One subscription: made by a task of its own, so that a receive cancelled while it waits
/// for the broker does not undo it (the next receive waits for the same one).
struct Subscription {
    /// Its credits; closed when it ends, so that later pushes are refused.
    credits: Arc<Semaphore>,
    /// `None` while the broker subscribes, then its answer.
    started: watch::Receiver<Option<std::result::Result<(), Arc<Error>>>>,
    /// Ends the task's sweeping (brokers that redeliver).
    stop: CancellationToken,
    /// Subscribes, then (brokers that redeliver) gives back messages whose lock expired.
    task: tokio::task::JoinHandle<()>,
}

impl<B: PushBroker> CachedMessageQueue<B> {
    /// A closed queue over `broker`; `base` gives the name and options.
    pub fn new(base: QueueBase, broker: B) -> Self {
        // The buffer redelivers without limit and holds no credits of its own: this queue
        // applies `max_deliveries` (so spent messages reach the broker's dead letters) and
        // `max_size` (as credits).
        let mut options = base.options().clone();
        options.max_deliveries = None;
        options.max_size = None;
        let buffer = MemoryMessageQueue::buffer(
            base.name(),
            options,
            broker.redelivery() == Redelivery::Broker,
        );
        CachedMessageQueue {
            base,
            buffer,
            broker: Arc::new(broker),
            subscription: parking_lot::Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// Where spent messages go when the broker has no dead letters of its own: an in-process
    /// queue, `<name>.dlq` (its content dies with the process).
    pub fn local_dead_letters(&self) -> MemoryMessageQueue {
        self.buffer.dead_letter_queue()
    }

    /// How many messages the buffer holds (ready and locked).
    pub fn held(&self) -> usize {
        self.buffer.ready_len_now() + self.buffer.locked_count()
    }

    /// Dead-letters a message taken from the buffer: to the broker's dead letters if it has
    /// them, else to [`local_dead_letters`](Self::local_dead_letters) with its delivery
    /// completed at the broker.
    async fn bury(&self, mut message: MessageEnvelope) -> Result<()> {
        let handle = take_handle::<B::Handle>(&message);
        if self.capabilities().can_dead_letter() {
            if let Some(handle) = handle {
                self.broker
                    .move_to_dead_letter(&message, handle)
                    .await
                    .map_err(|e| e.with_queue(self.name()))?;
            }
        } else {
            if let Some(handle) = handle {
                self.broker.complete(&message, handle).await?;
            }
            message.set_delivery(None);
            self.local_dead_letters().push_incoming(message.clone());
        }
        self.base.dead_lettered(&message);
        Ok(())
    }

    /// Subscribes if the queue is not subscribed yet, or waits for the subscribe under way.
    async fn ready(&self, correlation_id: Option<&str>) -> Result<()> {
        self.base.check_open()?;
        let mut started = {
            let mut subscription = self.subscription.lock();
            // Checked again under the lock: a `close` may have ended the subscription meanwhile.
            self.base.check_open()?;
            match &*subscription {
                Some(current) => current.started.clone(),
                None => {
                    let made = self.subscribe(correlation_id);
                    let started = made.started.clone();
                    *subscription = Some(made);
                    started
                }
            }
        };
        let answer = started
            .wait_for(Option::is_some)
            .await
            .map(|answer| answer.clone().unwrap_or(Ok(())));
        let failed = match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => Error::new(e.kind(), e.message().to_owned()).with_source(e),
            Err(_) => Error::new(ErrorKind::Backend, "the broker's subscribe never answered"),
        };
        // Forget the failed subscription (unless a newer one replaced it), and give back
        // whatever it pushed before failing; the next call subscribes again.
        let ended = {
            let mut subscription = self.subscription.lock();
            if subscription
                .as_ref()
                .is_some_and(|current| current.started.same_channel(&started))
            {
                subscription.take()
            } else {
                None
            }
        };
        if let Some(ended) = ended {
            ended.credits.close();
            self.give_back_held().await;
        }
        Err(failed.with_queue(self.name()))
    }

    /// Starts a subscription: a task subscribes with a fresh sink, then, for a broker that
    /// redelivers, sweeps expired locks until the subscription ends.
    fn subscribe(&self, correlation_id: Option<&str>) -> Subscription {
        let credits = self
            .base
            .options()
            .max_size
            .unwrap_or(DEFAULT_CREDITS)
            .min(Semaphore::MAX_PERMITS);
        let credits = Arc::new(Semaphore::new(credits));
        let sink = MessageSink::new(self.buffer.clone(), credits.clone());
        let (answer, started) = watch::channel(None);
        let stop = CancellationToken::new();
        let broker = self.broker.clone();
        let buffer = self.buffer.clone();
        let correlation_id = correlation_id.map(str::to_owned);
        let sweeping = stop.clone();
        let task = tokio::spawn(async move {
            let subscribed = broker.subscribe(correlation_id.as_deref(), sink).await;
            let ok = subscribed.is_ok();
            let _ = answer.send(Some(subscribed.map_err(Arc::new)));
            if ok && broker.redelivery() == Redelivery::Broker {
                sweep(buffer, broker, sweeping).await;
            }
        });
        Subscription {
            credits,
            started,
            stop,
            task,
        }
    }

    /// Gives the delivery of a message taken from the buffer back to the broker.
    async fn give_back(&self, message: &MessageEnvelope) {
        give_back(&*self.broker, self.name(), message).await;
    }

    /// Ends the subscription: later pushes are refused, held messages go back to the broker.
    async fn end_subscription(&self, correlation_id: Option<&str>) -> Result<()> {
        let Some(ended) = self.subscription.lock().take() else {
            return Ok(());
        };
        ended.credits.close();
        ended.stop.cancel();
        // A subscribe under way finishes first (bounded by the broker's connect timeout).
        let _ = ended.task.await;
        let unsubscribed = self.broker.unsubscribe(correlation_id).await;
        self.give_back_held().await;
        unsubscribed
    }

    /// Gives every message the buffer holds back to the broker (on close, and on open for
    /// any a receive racing the close still locked), one at a time: a cancelled call leaves
    /// the rest in the buffer, handles and all. Those never handed out are released (no
    /// delivery counted), those received are abandoned.
    async fn give_back_held(&self) {
        while let Some(message) = self.buffer.take_ready() {
            if let Some(handle) = take_handle::<B::Handle>(&message) {
                if let Err(e) = self.broker.release(&message, handle).await {
                    tracing::warn!(queue = self.name(), error = %e, "Failed to give a held message back to the broker");
                }
            }
        }
        while let Some(message) = self.buffer.take_any() {
            self.give_back(&message).await;
        }
        // Brokers that redeliver: locks that expired since the sweeper last looked.
        for message in self.buffer.take_expired() {
            self.give_back(&message).await;
        }
    }
}

/// Gives the delivery of `message` (taken from a buffer) back to `broker`; failures are
/// logged (the broker redelivers what a dead connection held anyway).
async fn give_back<B: PushBroker>(broker: &B, queue: &str, message: &MessageEnvelope) {
    if let Some(handle) = take_handle::<B::Handle>(message) {
        if let Err(e) = broker.abandon(message, handle).await {
            tracing::warn!(queue, error = %e, "Failed to give a held message back to the broker");
        }
    }
}

/// The sweeper of a queue whose broker redelivers: gives back the messages whose lock expired,
/// at the earliest lock deadline (and at least every second, for locks renewed shorter), until
/// `stop`. Spent messages go back too: the broker counts the delivery, and the queue
/// dead-letters them when they arrive again.
async fn sweep<B: PushBroker>(buffer: MemoryMessageQueue, broker: Arc<B>, stop: CancellationToken) {
    let queue = crate::MessageQueue::name(&buffer).to_owned();
    loop {
        for message in buffer.take_expired() {
            give_back(&*broker, &queue, &message).await;
        }
        let now = tokio::time::Instant::now();
        let tick = now + Duration::from_secs(1);
        let wake = buffer.next_lock_deadline().map_or(tick, |at| at.min(tick));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

impl<B> Drop for CachedMessageQueue<B> {
    fn drop(&mut self) {
        // Dropped without `close`: pushes into its sink must not wait forever.
        if let Some(ended) = self.subscription.get_mut().take() {
            ended.credits.close();
            ended.stop.cancel();
        }
    }
}

impl<B> fmt::Debug for CachedMessageQueue<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedMessageQueue")
            .field("base", &self.base)
            .field("buffer", &self.buffer)
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
        if self.closing.load(Ordering::Acquire) {
            // An earlier close was cancelled halfway: finish it first.
            let _ = self.close(correlation_id).await;
        }
        self.broker.connect(correlation_id).await?;
        self.buffer.open(correlation_id).await?;
        // Nothing of an earlier subscription is delivered again from here.
        self.give_back_held().await;
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
        if !self.is_open() && !self.closing.load(Ordering::Acquire) {
            return Ok(());
        }
        self.closing.store(true, Ordering::Release);
        self.base.stop_listeners().await;
        self.base.set_open(false);
        let unsubscribed = self.end_subscription(correlation_id).await;
        let disconnected = self.broker.disconnect(correlation_id).await;
        self.buffer.close(correlation_id).await?;
        self.closing.store(false, Ordering::Release);
        self.base.changed(correlation_id, "Closed");
        unsubscribed.and(disconnected)
    }

    async fn read_message_count(&self) -> Result<usize> {
        self.base.check_open()?;
        self.base.check_capability(
            self.capabilities().can_message_count(),
            "read_message_count",
        )?;
        self.ready(None).await?;
        let at_broker = self.broker.ready_count().await?;
        Ok(at_broker + self.buffer.read_message_count().await?)
    }

    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_send(), "send")?;
        let envelope = self.base.prepare_send(envelope)?;
        self.broker.send(correlation_id, &envelope).await?;
        self.base.sent(correlation_id, &envelope);
        Ok(())
    }

    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_send(), "send_batch")?;
        let envelopes = self.base.prepare_batch(envelopes)?;
        if envelopes.is_empty() {
            return Ok(());
        }
        self.broker.send_batch(correlation_id, &envelopes).await?;
        self.base.sent_batch(correlation_id, &envelopes);
        Ok(())
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_peek(), "peek")?;
        self.ready(correlation_id).await?;
        self.buffer.peek(correlation_id).await
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_peek_batch(), "peek_batch")?;
        self.ready(correlation_id).await?;
        self.buffer.peek_batch(correlation_id, message_count).await
    }

    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>> {
        let mut taken = self.receive_batch(correlation_id, 1, wait_timeout).await?;
        Ok(taken.pop())
    }

    async fn receive_batch(
        &self,
        correlation_id: Option<&str>,
        max: usize,
        wait_timeout: Duration,
    ) -> Result<Vec<MessageEnvelope>> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_receive(), "receive")?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_after(tokio::time::Instant::now(), wait_timeout);
        // A subscribe slower than the wait goes on for the next receive; this one is empty.
        match tokio::time::timeout_at(deadline, self.ready(correlation_id)).await {
            Ok(ready) => ready?,
            Err(_) => return Ok(Vec::new()),
        }
        loop {
            // Locks that expired since the sweeper last looked (it sleeps up to a second when
            // it saw no lock): given back now, so that the broker redelivers them at once, by a
            // task of their own, which a cancelled receive does not cut short.
            let expired = self.buffer.take_expired();
            if !expired.is_empty() {
                let (broker, queue) = (self.broker.clone(), self.name().to_owned());
                tokio::spawn(async move {
                    for message in expired {
                        give_back(&*broker, &queue, &message).await;
                    }
                });
            }
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut taken = match self.buffer.receive_batch(correlation_id, max, wait).await {
                Err(e) if e.kind() == ErrorKind::NotOpened => {
                    return Err(
                        crate::Error::not_opened(self.name()).with_backend(self.base.backend())
                    );
                }
                other => other?,
            };
            let mut spent = Vec::new();
            taken.retain(|m| {
                // Its lock expired after its last allowed delivery.
                let keep = !self.base.is_spent(m.delivery_count().saturating_sub(1));
                if !keep {
                    spent.push(m.clone());
                }
                keep
            });
            for m in spent {
                if let Some(spent) = self.buffer.take_locked(&m) {
                    match self.bury(spent).await {
                        Err(e) if taken.is_empty() => return Err(e),
                        Err(e) => {
                            // The batch taken so far is handed out; the error comes again.
                            tracing::warn!(queue = self.name(), error = %e, "Failed to dead-letter a message");
                        }
                        Ok(()) => {}
                    }
                }
            }
            if !taken.is_empty() || wait.is_zero() {
                return Ok(taken);
            }
        }
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_renew_lock(), "renew_lock")?;
        self.buffer.renew_lock(message, lock_timeout).await
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        // Take, then acknowledge: once taken, no lock expiry can hand it to anyone else. The
        // delivery is the one the caller's envelope shares with the buffer's record.
        if self.buffer.delete_locked(message) {
            if let Some(handle) = take_handle::<B::Handle>(message) {
                self.broker.complete(message, handle).await?;
            }
            self.base.settled(Settled::Completed, message);
        }
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_abandon(), "abandon")?;
        if self.base.is_spent(message.delivery_count()) {
            if let Some(taken) = self.buffer.take_locked(message) {
                self.bury(taken).await?;
            }
            return Ok(());
        }
        if self.broker.redelivery() == Redelivery::Broker {
            if let Some(taken) = self.buffer.take_locked(message) {
                self.give_back(&taken).await;
                self.base.settled(Settled::Abandoned, message);
            }
            return Ok(());
        }
        // Redelivered from the buffer, handle and credit kept.
        self.buffer.abandon(message).await
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_dead_letter(), "move_to_dead_letter")?;
        if let Some(taken) = self.buffer.take_locked(message) {
            self.bury(taken).await?;
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

    fn base(&self) -> Option<&QueueBase> {
        Some(&self.base)
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        self.base.check_open()?;
        self.base
            .check_capability(self.capabilities().can_clear(), "clear")?;
        // Cleared messages are deleted: their deliveries are acknowledged, every one of them
        // even when one acknowledgement fails (the first error is returned); one at a time, so
        // that a cancelled clear leaves the rest in the queue.
        let mut result = self.broker.purge().await;
        while let Some(message) = self.buffer.take_ready() {
            if let Some(handle) = take_handle::<B::Handle>(&message) {
                let acked = self.broker.complete(&message, handle).await;
                result = result.and(acked);
            }
        }
        self.base.changed(correlation_id, "Cleared");
        result
    }
}
