//! [`MemoryMessageQueue`]: the in-process queue, and the reference implementation of the
//! [`MessageQueue`] semantics.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{QueueBase, Settled, deadline_after};
use crate::{
    ConfigParams, MessageEnvelope, MessageQueue, MessageReceiver, MessagingCapabilities,
    QueueOptions, Result,
};

mod locks;
mod ready;

use locks::{Locks, MemoryLock, Released};
use ready::ReadyList;

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
/// `receive` and `receive_batch` take part in Tokio's cooperative scheduling as a Tokio
/// channel's `recv` does: each spends a unit of the task's budget, so that a loop over a long
/// backlog yields to the runtime's other tasks now and then instead of holding a
/// current-thread runtime until the backlog is gone. An unbounded `send`, like
/// `UnboundedSender::send`, never waits; a bounded one waits for room.
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
    /// Messages ready for delivery, in order. Locked apart from `locks` so that senders and
    /// settlers do not contend; never locked while `locks` is held.
    ready: Mutex<ReadyList>,
    locks: Mutex<Locks>,
    next_token: AtomicU64,
    /// Bounded queues: messages between `ready` and `locks` (taken and not yet locked, or
    /// released and not yet ready again). Changed under the mutex of the side they leave or
    /// join, and read under both, so a bounded send always counts every message once.
    in_transit: AtomicUsize,
    /// When the queue was made: the origin of `earliest_deadline`.
    epoch: Instant,
    /// The earliest lock deadline, in nanoseconds after `epoch` (`u64::MAX`: none), read
    /// without the lock so that receives skip the lock table when nothing can have expired.
    /// It may be earlier than the real one (a released lock), never later.
    earliest_deadline: AtomicU64,
    /// Signalled when a message becomes ready (and on close), only when someone waits.
    arrived: Notify,
    /// How many receives wait on `arrived`: a send signals only when some do. A receive counts
    /// itself before it looks at the ready list, and a send looks at the count after it pushed
    /// under the ready list's mutex, so no wake-up is lost.
    waiting: AtomicUsize,
    /// Signalled when a bounded queue gets room (and on close).
    room: Notify,
    dead_letters: OnceLock<MemoryMessageQueue>,
    /// Whether the queue is in the process-wide registry of [`connect`](crate::connect); its
    /// dead-letter queue then is too.
    shared: bool,
    /// A push buffer whose broker redelivers: expired locks put their messages here, for the
    /// push layer to give back to the broker, instead of back in `ready`.
    expired: Option<Mutex<Vec<MessageEnvelope>>>,
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
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the key that is missing, invalid
    /// or unknown (a misspelt `options.lock_timout` is an error, not ignored).
    pub fn with_config(config: &ConfigParams) -> Result<Self> {
        crate::backend::check_known_options(config, &crate::backend::OPTION_KEYS)?;
        Ok(Self::from_base(
            QueueBase::from_config(BACKEND, config, None)?,
            false,
        ))
    }

    /// The buffer of a push queue: no dead-letter rule of its own (the push layer applies
    /// `max_deliveries`), and, when `broker_redelivers`, expired locks are kept for
    /// [`take_expired`](Self::take_expired) instead of being made ready again.
    pub(crate) fn buffer(name: &str, options: QueueOptions, broker_redelivers: bool) -> Self {
        Self::made(
            QueueBase::new(BACKEND, name, options),
            false,
            broker_redelivers,
        )
    }

    fn from_base(base: QueueBase, shared: bool) -> Self {
        Self::made(base, shared, false)
    }

    /// A queue; `keep_expired` keeps expired locks' messages for the push layer.
    fn made(base: QueueBase, shared: bool, keep_expired: bool) -> Self {
        MemoryMessageQueue {
            inner: Arc::new(Inner {
                id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
                base,
                ready: Mutex::new(ReadyList::default()),
                locks: Mutex::new(Locks::default()),
                next_token: AtomicU64::new(0),
                in_transit: AtomicUsize::new(0),
                epoch: Instant::now(),
                earliest_deadline: AtomicU64::new(u64::MAX),
                arrived: Notify::new(),
                waiting: AtomicUsize::new(0),
                room: Notify::new(),
                dead_letters: OnceLock::new(),
                shared,
                expired: keep_expired.then(|| Mutex::new(Vec::new())),
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
                let mut name = self.options().dead_letter_queue_name(self.name());
                if name == self.name() {
                    // A queue cannot be its own dead-letter queue (QueueBase::from_config
                    // refuses it; this covers with_options).
                    name = format!("{}.dlq", self.name());
                }
                let dlq = if self.inner.shared {
                    let config = ConfigParams::from_tuples([("name", name.as_str())]);
                    Self::shared(&name, &config).unwrap_or_else(|_| Self::new(&name))
                } else {
                    Self::new(&name)
                };
                dlq.inner.base.set_open(true);
                dlq
            })
            .clone()
    }

    /// How many messages are ready, without releasing expired locks first.
    pub(crate) fn ready_len_now(&self) -> usize {
        self.inner.ready.lock().len()
    }

    /// How many messages are locked (received and not yet settled).
    pub fn locked_count(&self) -> usize {
        self.inner.locks.lock().len()
    }

    /// This queue's lock number in `message`, if the lock is this queue's and still held.
    fn lock_of(&self, message: &MessageEnvelope) -> Option<u64> {
        let lock = message.lock_token()?.downcast_ref::<MemoryLock>()?;
        (lock.queue_id == self.inner.id).then_some(lock.token)
    }

    /// Releases the locks whose deadline passed: their messages go back to the ready list, or
    /// to the dead-letter queue once they reached `max_deliveries`.
    fn release_expired(&self, now: Instant) {
        if self.nanos(Some(now)) < self.inner.earliest_deadline.load(Ordering::Acquire) {
            return;
        }
        let (mut requeue, mut dead) = (Vec::new(), Vec::new());
        self.with_locks(|locks| {
            if locks.next_deadline().is_some_and(|at| at <= now) {
                locks.expire(
                    now,
                    |n| self.inner.base.is_spent(n),
                    &mut requeue,
                    &mut dead,
                );
                self.leaving_locks(requeue.len() + dead.len());
            }
        });
        if let Some(expired) = &self.inner.expired {
            expired.lock().extend(requeue.drain(..));
        }
        self.requeue(requeue);
        self.bury(dead);
    }

    /// Takes the messages whose lock expired, as stored (with their broker delivery): only a
    /// [`buffer`](Self::buffer) whose broker redelivers keeps them; empty otherwise.
    pub(crate) fn take_expired(&self) -> Vec<MessageEnvelope> {
        let Some(expired) = &self.inner.expired else {
            return Vec::new();
        };
        self.release_expired(Instant::now());
        std::mem::take(&mut *expired.lock())
    }

    /// When the earliest lock expires, if any lock is held.
    pub(crate) fn next_lock_deadline(&self) -> Option<Instant> {
        self.inner.locks.lock().next_deadline()
    }

    /// Drops the ready messages `forget` picks (the push layer: deliveries of a broker channel
    /// that died, which the broker delivers again); returns how many.
    pub(crate) fn forget_ready(&self, forget: impl Fn(&MessageEnvelope) -> bool) -> usize {
        let forgotten = {
            let mut ready = self.inner.ready.lock();
            let before = ready.len();
            ready.retain(|m| !forget(m));
            before - ready.len()
        };
        self.freed(forgotten);
        forgotten
    }

    /// Bounded queues: `count` messages leave the lock table (call under its mutex); they
    /// count as in transit until [`requeue`](Self::requeue) or [`bury`](Self::bury) lands them.
    fn leaving_locks(&self, count: usize) {
        if count > 0 && self.options().max_size.is_some() {
            self.inner.in_transit.fetch_add(count, Ordering::AcqRel);
        }
    }

    /// Bounded queues: `count` messages that left the lock table have landed.
    fn landed(&self, count: usize) {
        if count > 0 && self.options().max_size.is_some() {
            self.inner.in_transit.fetch_sub(count, Ordering::AcqRel);
        }
    }

    /// Runs `f` on the lock table, then publishes its earliest deadline.
    fn with_locks<T>(&self, f: impl FnOnce(&mut Locks) -> T) -> T {
        let mut locks = self.inner.locks.lock();
        let before = locks.next_deadline();
        let out = f(&mut locks);
        let after = locks.next_deadline();
        if after != before {
            self.inner
                .earliest_deadline
                .store(self.nanos(after), Ordering::Release);
        }
        out
    }

    /// `at` in nanoseconds after the queue's epoch; `u64::MAX` for none.
    fn nanos(&self, at: Option<Instant>) -> u64 {
        at.map_or(u64::MAX, |at| {
            u64::try_from(at.saturating_duration_since(self.inner.epoch).as_nanos())
                .unwrap_or(u64::MAX)
        })
    }

    /// Puts messages released from the lock table back at the tail of the ready list.
    fn requeue(&self, envelopes: Vec<MessageEnvelope>) {
        let count = envelopes.len();
        if count == 0 {
            return;
        }
        {
            let mut ready = self.inner.ready.lock();
            ready.extend(envelopes);
            self.landed(count);
        }
        self.signal_arrived(count);
    }

    /// Moves messages released from the lock table to the dead-letter queue.
    fn bury(&self, dead: Vec<MessageEnvelope>) {
        let count = dead.len();
        for envelope in dead {
            self.inner.base.dead_lettered(&envelope);
            self.dead_letter_queue().push_incoming(envelope);
        }
        self.landed(count);
        self.freed(count);
    }

    /// Stores a message without waiting for room (dead letters and broker pushes: nothing is
    /// ever discarded). Its delivery count says how often it was delivered before (0 for dead
    /// letters; what the broker says for pushes).
    pub(crate) fn push_incoming(&self, mut envelope: MessageEnvelope) {
        envelope.set_lock_token(None);
        self.inner.ready.lock().push_back(envelope);
        self.signal_arrived(1);
    }

    /// Deletes the lock of `message` and hands back the message as stored (with its broker
    /// delivery, for the push layer): the "take" of take-then-settle. `None` if this queue
    /// holds no such lock, so that only one caller ever gets it.
    pub(crate) fn take_locked(&self, message: &MessageEnvelope) -> Option<MessageEnvelope> {
        let token = self.lock_of(message)?;
        // No sweep first: completing a lock that expired a moment ago but was not yet
        // released is as good as completing it in time (the message was not redelivered).
        let removed = self.with_locks(|locks| locks.remove(token));
        if removed.is_some() {
            self.freed(1);
        }
        removed
    }

    /// Deletes the lock of `message`; `false` if this queue holds no such lock. As
    /// [`take_locked`](Self::take_locked) without handing the message back (`complete`).
    pub(crate) fn delete_locked(&self, message: &MessageEnvelope) -> bool {
        let Some(token) = self.lock_of(message) else {
            return false;
        };
        let deleted = self.with_locks(|locks| locks.delete(token));
        if deleted {
            self.freed(1);
        }
        deleted
    }

    /// Takes one message out of the queue, ready or locked (the push layer's `close`).
    pub(crate) fn take_any(&self) -> Option<MessageEnvelope> {
        if let Some(ready) = self.take_ready() {
            return Some(ready);
        }
        let locked = self.with_locks(Locks::take_any);
        if locked.is_some() {
            self.freed(1);
        }
        locked
    }

    /// Takes the next ready message out of the queue, without locking it.
    pub(crate) fn take_ready(&self) -> Option<MessageEnvelope> {
        let ready = self.inner.ready.lock().pop_front();
        if ready.is_some() {
            self.freed(1);
        }
        ready
    }

    /// Takes every ready message out of the queue.
    pub(crate) fn drain_ready(&self) -> Vec<MessageEnvelope> {
        let ready = self.inner.ready.lock().take_all();
        self.freed(ready.len());
        ready
    }

    /// Room was made in a bounded queue.
    fn freed(&self, count: usize) {
        if count > 0 && self.options().max_size.is_some() {
            self.inner.room.notify_waiters();
        }
    }

    /// Takes up to `max` ready messages into `taken` (empty) and locks them, after releasing
    /// expired locks: one pass over each mutex for the whole batch. `Ok(Ok(()))` if it took
    /// some; without a message, `Ok(Err(_))` with the earliest lock deadline.
    fn try_take(
        &self,
        now: Instant,
        max: usize,
        taken: &mut impl Taken,
    ) -> Result<std::result::Result<(), Option<Instant>>> {
        self.inner.base.check_open()?;
        self.release_expired(now);
        let bounded = self.options().max_size.is_some();
        {
            let mut ready = self.inner.ready.lock();
            let count = taken.take_from(&mut ready, max);
            if bounded && count > 0 {
                // Counted until they are in the lock table, so that a bounded send never sees
                // room that is not there.
                self.inner.in_transit.fetch_add(count, Ordering::AcqRel);
            }
        }
        let count = taken.count();
        if count == 0 {
            return Ok(Err(self.inner.locks.lock().next_deadline()));
        }
        // The lock records are made outside both mutexes.
        let first = self
            .inner
            .next_token
            .fetch_add(count as u64, Ordering::Relaxed);
        let expires = deadline_after(now, self.options().lock_timeout);
        let id = self.inner.id;
        // In the lock table's critical section, as the field's rule says: a bounded send that
        // reads both sides then sees every message once.
        let landed = || {
            if bounded {
                self.inner.in_transit.fetch_sub(count, Ordering::AcqRel);
            }
        };
        if let [envelope] = taken.as_mut_slice() {
            // One message (every `receive`): no list of records.
            let held = locks::lock(envelope, id, first, expires);
            self.with_locks(|locks| {
                locks.insert(first, held);
                landed();
            });
        } else {
            let held: Vec<_> = (first..)
                .zip(taken.as_mut_slice())
                .map(|(token, envelope)| (token, locks::lock(envelope, id, token, expires)))
                .collect();
            self.with_locks(|locks| {
                for (token, held) in held {
                    locks.insert(token, held);
                }
                landed();
            });
        }
        Ok(Ok(()))
    }

    /// Waits until `deadline` for messages and takes up to `max`, waking on `send`, `abandon`,
    /// `close` and at the earliest lock deadline (an expired lock makes its message ready).
    async fn wait_and_take(
        &self,
        deadline: Instant,
        max: usize,
        taken: &mut impl Taken,
    ) -> Result<()> {
        let _waiting = Waiting::new(&self.inner.waiting);
        loop {
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking: a message that arrives after the look wakes us.
            arrived.as_mut().enable();
            let now = Instant::now();
            let next_deadline = match self.try_take(now, max, taken)? {
                Ok(()) => return Ok(()),
                Err(_) if now >= deadline => return Ok(()),
                Err(next_deadline) => next_deadline,
            };
            let wake = next_deadline.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                () = &mut arrived => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// What `receive` and `receive_batch` share: takes up to `max` messages into `taken`, waiting
    /// up to `wait_timeout` for the first.
    async fn take(&self, taken: &mut impl Taken, max: usize, wait_timeout: Duration) -> Result<()> {
        if max == 0 {
            return self.inner.base.check_open();
        }
        // Like Tokio's own channels, a take spends a unit of the task's budget, so that a loop
        // over a long backlog yields to the other tasks now and then.
        let (start, ready) = {
            let coop = std::future::poll_fn(tokio::task::coop::poll_proceed).await;
            let start = Instant::now();
            let ready = self.try_take(start, max, taken)?;
            if ready.is_ok() {
                coop.made_progress();
            }
            (start, ready)
        };
        if ready.is_err() && !wait_timeout.is_zero() {
            // The waiting path is boxed so that the common, ready case stays a small future.
            Box::pin(self.wait_and_take(deadline_after(start, wait_timeout), max, taken)).await?;
        }
        Ok(())
    }

    /// Sends to a bounded queue: waits until it holds fewer than `max_size` messages.
    async fn send_bounded(
        &self,
        correlation_id: Option<&str>,
        envelope: MessageEnvelope,
    ) -> Result<()> {
        let max_size = self.options().max_size.unwrap_or(usize::MAX);
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut ready = self.inner.ready.lock();
                self.inner.base.check_open()?;
                let held = {
                    let locks = self.inner.locks.lock();
                    locks.len() + self.inner.in_transit.load(Ordering::Acquire)
                };
                if ready.len() + held < max_size {
                    self.inner.base.sent(correlation_id, &envelope);
                    ready.push_back(envelope);
                    drop(ready);
                    self.signal_arrived(1);
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Wakes up to `count` waiting receives for messages just made ready (none if none
    /// waits: a send then costs no signal).
    fn signal_arrived(&self, count: usize) {
        let waiting = self.inner.waiting.load(Ordering::SeqCst);
        for _ in 0..count.min(waiting) {
            self.inner.arrived.notify_one();
        }
    }

    fn ready_len(&self) -> usize {
        self.release_expired(Instant::now());
        self.inner.ready.lock().len()
    }
}

impl fmt::Debug for MemoryMessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMessageQueue")
            .field("name", &self.name())
            .field("open", &self.is_open())
            .field("ready", &self.inner.ready.lock().len())
            .field("locked", &self.locked_count())
            .finish()
    }
}

#[async_trait]
impl MessageQueue for MemoryMessageQueue {
    fn name(&self) -> &str {
        self.inner.base.name()
    }

    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }

    fn is_open(&self) -> bool {
        self.inner.base.is_open()
    }

    async fn open(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.inner.base.set_open(true) {
            self.inner.base.changed(correlation_id, "Opened");
        }
        Ok(())
    }

    async fn close(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        self.inner.base.stop_listeners().await;
        self.inner.base.set_open(false);
        self.inner.arrived.notify_waiters();
        self.inner.room.notify_waiters();
        self.inner.base.changed(correlation_id, "Closed");
        Ok(())
    }

    async fn read_message_count(&self) -> Result<usize> {
        self.inner.base.check_open()?;
        Ok(self.ready_len())
    }

    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()> {
        let envelope = self.inner.base.prepare_send(envelope)?;
        if self.options().max_size.is_some() {
            // The waiting path is boxed so that the common, unbounded case stays a small future.
            return Box::pin(self.send_bounded(correlation_id, envelope)).await;
        }
        self.inner.base.sent(correlation_id, &envelope);
        self.inner.ready.lock().push_back(envelope);
        self.signal_arrived(1);
        Ok(())
    }

    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        let envelopes = self.inner.base.prepare_batch(envelopes)?;
        if self.options().max_size.is_some() {
            for envelope in envelopes {
                Box::pin(self.send_bounded(correlation_id, envelope)).await?;
            }
            return Ok(());
        }
        self.inner.base.sent_batch(correlation_id, &envelopes);
        let count = envelopes.len();
        self.inner.ready.lock().extend(envelopes);
        self.signal_arrived(count);
        Ok(())
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        self.inner.base.check_open()?;
        self.release_expired(Instant::now());
        let message = self.inner.ready.lock().front().cloned();
        if message.is_some() {
            self.inner.base.peeked(correlation_id, 1);
        }
        Ok(message)
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        self.inner.base.check_open()?;
        self.release_expired(Instant::now());
        let messages: Vec<_> = self
            .inner
            .ready
            .lock()
            .iter()
            .take(message_count)
            .cloned()
            .collect();
        self.inner.base.peeked(correlation_id, messages.len());
        Ok(messages)
    }

    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>> {
        let mut taken = None;
        self.take(&mut taken, 1, wait_timeout).await?;
        if let Some(message) = &taken {
            self.inner.base.received(correlation_id, message);
        }
        Ok(taken)
    }

    async fn receive_batch(
        &self,
        correlation_id: Option<&str>,
        max: usize,
        wait_timeout: Duration,
    ) -> Result<Vec<MessageEnvelope>> {
        let mut taken = Vec::new();
        self.take(&mut taken, max, wait_timeout).await?;
        for message in &taken {
            self.inner.base.received(correlation_id, message);
        }
        Ok(taken)
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        self.inner.base.check_open()?;
        if let Some(token) = self.lock_of(message) {
            let now = Instant::now();
            self.release_expired(now);
            if self.with_locks(|locks| locks.renew(token, now, lock_timeout)) {
                self.inner.base.settled(Settled::RenewedLock, message);
            }
        }
        Ok(())
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        self.inner.base.check_open()?;
        if self.delete_locked(message) {
            self.inner.base.settled(Settled::Completed, message);
        }
        Ok(())
    }

    async fn complete_batch(&self, messages: &[MessageEnvelope]) -> Result<()> {
        self.inner.base.check_open()?;
        let tokens: Vec<_> = messages.iter().map(|m| self.lock_of(m)).collect();
        let deleted: Vec<bool> = self.with_locks(|locks| {
            tokens
                .iter()
                .map(|token| token.is_some_and(|token| locks.delete(token)))
                .collect()
        });
        self.freed(deleted.iter().filter(|d| **d).count());
        for (message, _) in messages.iter().zip(deleted).filter(|(_, d)| *d) {
            self.inner.base.settled(Settled::Completed, message);
        }
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        self.inner.base.check_open()?;
        let Some(token) = self.lock_of(message) else {
            return Ok(());
        };
        self.release_expired(Instant::now());
        let released = self.with_locks(|locks| {
            let released = locks.release(token, |n| self.inner.base.is_spent(n));
            if !matches!(released, Released::Unknown) {
                self.leaving_locks(1);
            }
            released
        });
        match released {
            Released::Requeue(envelope) => {
                self.inner.base.settled(Settled::Abandoned, message);
                self.requeue(vec![envelope]);
            }
            Released::Dead(envelope) => self.bury(vec![envelope]),
            Released::Unknown => {}
        }
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        self.inner.base.check_open()?;
        if let Some(token) = self.lock_of(message) {
            self.release_expired(Instant::now());
            let removed = self.with_locks(|locks| {
                let removed = locks.remove(token);
                self.leaving_locks(usize::from(removed.is_some()));
                removed
            });
            if let Some(envelope) = removed {
                self.bury(vec![envelope]);
            }
        }
        Ok(())
    }

    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        self.inner.base.listen(self, correlation_id, receiver).await
    }

    fn end_listen(&self, _correlation_id: Option<&str>) {
        self.inner.base.end_listen();
    }

    fn base(&self) -> Option<&QueueBase> {
        Some(&self.inner.base)
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        self.inner.base.check_open()?;
        self.release_expired(Instant::now());
        self.drain_ready();
        self.inner.base.changed(correlation_id, "Cleared");
        Ok(())
    }
}

/// A receive waiting on `arrived`, counted in `waiting` for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where taken messages go: an `Option` for `receive` (no allocation), a `Vec` for
/// `receive_batch`.
trait Taken: Send {
    /// How many messages it holds.
    fn count(&self) -> usize;
    /// Moves up to `max` messages from the front of `ready` in; returns how many.
    fn take_from(&mut self, ready: &mut ReadyList, max: usize) -> usize;
    /// The messages, in order.
    fn as_mut_slice(&mut self) -> &mut [MessageEnvelope];
}

impl Taken for Option<MessageEnvelope> {
    fn count(&self) -> usize {
        usize::from(self.is_some())
    }
    fn take_from(&mut self, ready: &mut ReadyList, max: usize) -> usize {
        if self.is_some() || max == 0 {
            return 0;
        }
        *self = ready.pop_front();
        self.count()
    }
    fn as_mut_slice(&mut self) -> &mut [MessageEnvelope] {
        Option::as_mut_slice(self)
    }
}

impl Taken for Vec<MessageEnvelope> {
    fn count(&self) -> usize {
        self.len()
    }
    fn take_from(&mut self, ready: &mut ReadyList, max: usize) -> usize {
        ready.take_front(max, self)
    }
    fn as_mut_slice(&mut self) -> &mut [MessageEnvelope] {
        self
    }
}
