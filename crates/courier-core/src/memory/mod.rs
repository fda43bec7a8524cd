//! [`MemoryMessageQueue`]: the in-process queue, and the reference implementation of the
//! [`MessageQueue`] semantics.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    ConfigParams, MessageEnvelope, MessageQueue, MessageReceiver, MessagingCapabilities,
    QueueBase, QueueOptions, Result,
};

mod state;

use state::{MemoryLock, Released, State};

const BACKEND: &str = "memory";

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// An in-process message queue with the full [`MessageQueue`] semantics.
///
/// Messages live in memory and die with the process. Everything else is as on the durable
/// backends: locks with a timeout separate from the receive wait, redelivery of expired
/// locks, `renew_lock`, delivery counts, `max_deliveries`, a real dead-letter queue (a
/// `MemoryMessageQueue` too, see [`dead_letter_queue`](Self::dead_letter_queue)), optional
/// bounded capacity with back-pressure, and event-driven `receive` (no polling).
///
/// Cloning gives another handle to the same queue.
///
/// # Fixes over pip-services
///
/// The pip-services memory queue has bugs that this one does not reproduce (numbers of
/// `spec/pip-messaging.md` §9.3):
///
/// * #1: an expired lock returns the message to the queue; abandoning after expiry loses nothing.
/// * #2: the lock timeout is `options.lock_timeout`, not the receive wait; `renew_lock` honours
///   its argument.
/// * #3: `listen` completes a message on `Ok`, abandons it on `Err` or panic.
/// * #4: stopping a listener never loses a taken message; `clear` never restarts a listener.
/// * #7, #8: `receive` wakes on `send` (no 100 ms polling, no spin), returns a ready message
///   with a zero wait, and never raises on unknown lock tokens.
/// * #10: dead letters are kept in a readable dead-letter queue, and `can_dead_letter` is true.
/// * #11: operations on a closed queue fail with `NotOpened`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use courier_core::{ConfigParams, MemoryMessageQueue, MessageEnvelope, MessageQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// let config = ConfigParams::from_string("name=jobs;options.max_deliveries=1")?;
/// let queue = MemoryMessageQueue::with_config(&config)?;
/// queue.open(None).await?;
/// queue.send(None, MessageEnvelope::new(None, "job", "x")).await?;
/// let job = queue.receive(None, Duration::ZERO).await?.expect("ready");
/// queue.abandon(&job).await?; // first delivery was the last one allowed
/// let dead = queue.dead_letter_queue();
/// assert_eq!(dead.name(), "jobs.dlq");
/// assert_eq!(dead.read_message_count().await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryMessageQueue {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    base: QueueBase,
    state: Mutex<State>,
    /// Signalled when a message becomes ready (and on close).
    ready: Notify,
    /// Signalled when a bounded queue gets room (and on close).
    room: Notify,
    dead_letters: OnceLock<MemoryMessageQueue>,
    /// Whether the queue is in the process-wide registry of [`connect`](crate::connect); its
    /// dead-letter queue then is too.
    shared: bool,
}

impl MemoryMessageQueue {
    /// A closed queue called `name` with default options.
    pub fn new(name: &str) -> Self {
        Self::with_options(name, QueueOptions::default())
    }

    /// A closed queue called `name` with `options`.
    pub fn with_options(name: &str, options: QueueOptions) -> Self {
        Self::from_base(QueueBase::new(BACKEND, name, options), false)
    }

    /// A closed queue configured by pip-services `config` (`name` or `queue`, `options.*`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the key that is missing or invalid.
    pub fn with_config(config: &ConfigParams) -> Result<Self> {
        Ok(Self::from_base(QueueBase::from_config(BACKEND, config, None)?, false))
    }

    fn from_base(base: QueueBase, shared: bool) -> Self {
        MemoryMessageQueue {
            inner: Arc::new(Inner {
                id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
                base,
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                room: Notify::new(),
                dead_letters: OnceLock::new(),
                shared,
            }),
        }
    }

    /// The queue `name` of the process-wide registry that `connect("memory://NAME")` uses,
    /// created with `config` if it does not exist yet (later configs are ignored).
    pub(crate) fn shared(name: &str, config: &ConfigParams) -> Result<Self> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryMessageQueue>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Default::default);
        if let Some(queue) = registry.lock().get(name) {
            return Ok(queue.clone());
        }
        let base = QueueBase::from_config(BACKEND, config, Some(name))?;
        let mut map = registry.lock();
        let queue = map
            .entry(name.to_owned())
            .or_insert_with(|| Self::from_base(base, true));
        Ok(queue.clone())
    }

    /// The queue's options.
    pub fn options(&self) -> &QueueOptions {
        self.inner.base.options()
    }

    /// The dead-letter queue: where `move_to_dead_letter` and `max_deliveries` put messages.
    /// It is open, called `options.dead_letter_queue` (default `<name>.dlq`), and for queues
    /// from [`connect`](crate::connect) it is also `connect("memory://<name>.dlq")`.
    pub fn dead_letter_queue(&self) -> MemoryMessageQueue {
        self.inner
            .dead_letters
            .get_or_init(|| {
                let name = self.options().dead_letter_queue_name(self.name());
                let dlq = if self.inner.shared {
                    let config = ConfigParams::from_tuples([("name", name.as_str())]);
                    Self::shared(&name, &config)
                        .unwrap_or_else(|_| Self::new(&name))
                } else {
                    Self::new(&name)
                };
                dlq.inner.base.set_open(true);
                dlq
            })
            .clone()
    }

    /// How many messages are locked (received and not yet settled).
    pub fn locked_count(&self) -> usize {
        self.inner.state.lock().locked_len()
    }

    fn base(&self) -> &QueueBase {
        &self.inner.base
    }

    /// This queue's lock number in `message`, if the lock is this queue's and still held.
    fn lock_of(&self, message: &MessageEnvelope) -> Option<u64> {
        let lock = message.lock_token()?.downcast_ref::<MemoryLock>()?;
        (lock.queue_id == self.inner.id).then_some(lock.token)
    }

    /// Releases expired locks; call with the state locked, then `after_expiry` unlocked.
    fn expire(&self, state: &mut State, now: Instant) -> Expired {
        let mut dead = Vec::new();
        let requeued = state.expire(now, self.options().max_deliveries, &mut dead);
        Expired { requeued, dead }
    }

    fn after_expiry(&self, expired: Expired) {
        for _ in 0..expired.requeued {
            self.inner.ready.notify_one();
        }
        if !expired.dead.is_empty() {
            let freed = expired.dead.len();
            for envelope in expired.dead {
                self.store_dead(envelope);
            }
            self.freed(freed);
        }
    }

    fn store_dead(&self, envelope: MessageEnvelope) {
        tracing::debug!(queue = self.name(), correlation_id = envelope.correlation_id.as_deref(), "Moved to dead message {} at {}", envelope, self.name());
        self.base().count_dead();
        self.dead_letter_queue().push_incoming(envelope);
    }

    /// Stores a message without waiting for room (dead letters and broker pushes: nothing is
    /// ever discarded).
    pub(crate) fn push_incoming(&self, mut envelope: MessageEnvelope) {
        envelope.set_lock_token(None);
        envelope.set_delivery_count(0);
        self.inner.state.lock().push(envelope);
        self.inner.ready.notify_one();
    }

    /// Whether `message` holds a live lock of this queue.
    pub(crate) fn holds_lock(&self, message: &MessageEnvelope) -> bool {
        self.lock_of(message)
            .is_some_and(|token| self.inner.state.lock().is_locked(token))
    }

    /// Room was made in a bounded queue.
    fn freed(&self, count: usize) {
        if count > 0 && self.options().max_size.is_some() {
            self.inner.room.notify_waiters();
        }
    }

    /// Runs `f` on the state after releasing expired locks.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let now = Instant::now();
        let (out, expired) = {
            let mut state = self.inner.state.lock();
            let expired = self.expire(&mut state, now);
            (f(&mut state), expired)
        };
        self.after_expiry(expired);
        out
    }
}

struct Expired {
    requeued: usize,
    dead: Vec<MessageEnvelope>,
}

impl fmt::Debug for MemoryMessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("MemoryMessageQueue")
            .field("name", &self.name())
            .field("open", &self.is_open())
            .field("ready", &state.ready_len())
            .field("locked", &state.locked_len())
            .finish()
    }
}

#[async_trait]
impl MessageQueue for MemoryMessageQueue {
    fn name(&self) -> &str {
        self.base().name()
    }

    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }

    fn is_open(&self) -> bool {
        self.base().is_open()
    }

    async fn open(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.base().set_open(true) {
            tracing::trace!(queue = self.name(), correlation_id, "Opened queue [{}]", self.name());
        }
        Ok(())
    }

    async fn close(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        self.base().stop_listeners().await;
        self.base().set_open(false);
        self.inner.ready.notify_waiters();
        self.inner.room.notify_waiters();
        tracing::trace!(queue = self.name(), correlation_id, "Closed queue [{}]", self.name());
        Ok(())
    }

    async fn read_message_count(&self) -> Result<usize> {
        self.base().check_open()?;
        Ok(self.with_state(|s| s.ready_len()))
    }

    async fn send(&self, correlation_id: Option<&str>, mut envelope: MessageEnvelope) -> Result<()> {
        envelope.sent_time = Some(chrono::Utc::now());
        envelope.set_lock_token(None);
        envelope.set_delivery_count(0);
        let max_size = self.options().max_size;
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            if max_size.is_some() {
                room.as_mut().enable();
            }
            {
                let mut state = self.inner.state.lock();
                self.base().check_open()?;
                if max_size.is_none_or(|max| state.len() < max) {
                    tracing::debug!(queue = self.name(), correlation_id, "Sent message {} via {}", envelope, self.name());
                    state.push(envelope);
                    drop(state);
                    self.inner.ready.notify_one();
                    self.base().count_sent();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        self.base().check_open()?;
        let message = self.with_state(|s| s.peek(1).next().cloned());
        if let Some(m) = &message {
            tracing::trace!(queue = self.name(), correlation_id, "Peeked message {} on {}", m, self.name());
        }
        Ok(message)
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        self.base().check_open()?;
        let messages: Vec<_> = self.with_state(|s| s.peek(message_count).cloned().collect());
        tracing::trace!(queue = self.name(), correlation_id, "Peeked {} messages on {}", messages.len(), self.name());
        Ok(messages)
    }

    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>> {
        let lock_timeout = self.options().lock_timeout;
        let deadline = Instant::now() + wait_timeout;
        let mut registered = false;
        loop {
            let ready = self.inner.ready.notified();
            tokio::pin!(ready);
            if registered {
                ready.as_mut().enable();
            }
            let now = Instant::now();
            let (taken, next_deadline, expired) = {
                let mut state = self.inner.state.lock();
                self.base().check_open()?;
                let expired = self.expire(&mut state, now);
                (state.take(self.inner.id, now, lock_timeout), state.next_deadline(), expired)
            };
            self.after_expiry(expired);
            if let Some(message) = taken {
                self.base().count_received();
                tracing::debug!(queue = self.name(), correlation_id, "Received message {} via {}", message, self.name());
                return Ok(Some(message));
            }
            if now >= deadline {
                return Ok(None);
            }
            if !registered {
                // Register for wake-ups, then look again: a send in between is not missed.
                registered = true;
                continue;
            }
            let wake = next_deadline.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                () = &mut ready => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        self.base().check_open()?;
        if let Some(token) = self.lock_of(message) {
            let now = Instant::now();
            if self.with_state(|s| s.renew(token, now, lock_timeout)) {
                tracing::trace!(queue = self.name(), correlation_id = message.correlation_id.as_deref(), "Renewed lock for message {} at {}", message, self.name());
            }
        }
        Ok(())
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        self.base().check_open()?;
        if let Some(token) = self.lock_of(message) {
            if self.with_state(|s| s.remove(token)).is_some() {
                tracing::trace!(queue = self.name(), correlation_id = message.correlation_id.as_deref(), "Completed message {} at {}", message, self.name());
                self.freed(1);
            }
        }
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        self.base().check_open()?;
        let Some(token) = self.lock_of(message) else {
            return Ok(());
        };
        let max = self.options().max_deliveries;
        match self.with_state(|s| s.release(token, max)) {
            Released::Requeued => {
                tracing::trace!(queue = self.name(), correlation_id = message.correlation_id.as_deref(), "Abandoned message {} at {}", message, self.name());
                self.inner.ready.notify_one();
            }
            Released::Dead(envelope) => {
                self.store_dead(envelope);
                self.freed(1);
            }
            Released::Unknown => {}
        }
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        self.base().check_open()?;
        if let Some(token) = self.lock_of(message) {
            if let Some(envelope) = self.with_state(|s| s.remove(token)) {
                self.store_dead(envelope);
                self.freed(1);
            }
        }
        Ok(())
    }

    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        self.base().listen(self, correlation_id, receiver).await
    }

    fn end_listen(&self, _correlation_id: Option<&str>) {
        self.base().listen_control().end_listen();
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        self.base().check_open()?;
        let removed = self.with_state(State::clear);
        self.freed(removed);
        tracing::trace!(queue = self.name(), correlation_id, "Cleared queue [{}]", self.name());
        Ok(())
    }
}
