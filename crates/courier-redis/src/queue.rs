//! [`RedisMessageQueue`]: a durable queue on a Redis stream with a consumer group.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{LockToken, QueueBase, Settled, deadline_after};
use courier_core::{
    Error, ErrorKind, MessageEnvelope, MessageQueue, MessageReceiver, MessagingCapabilities, Result,
};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RedisConfig;
use crate::{BACKEND, scripts, wire};

/// The idle time given to an entry handed back: past any lock, so that the next `receive` of
/// any consumer claims it (ten years, in ms).
const GIVEN_BACK_IDLE: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Consumers that hold nothing and were idle this long are removed from the group on `open`.
const STALE_CONSUMER: Duration = Duration::from_secs(3600);

/// The most messages one `peek_batch` returns (the server builds the answer in one step).
const MOST_PEEKED: usize = 10_000;

/// How often a receive looks for messages whose lock ran out before new ones, at least.
const CLAIM_FIRST_EVERY: Duration = Duration::from_millis(100);

/// The least time a lock must have left for `complete` to skip asking the server whether the
/// consumer still holds the entry (the request must reach the server in that time).
const SETTLE_MARGIN: Duration = Duration::from_millis(50);

/// The most entries one command of a batch call carries (`XREADGROUP COUNT`, a `MULTI` of
/// `XADD`s).
const BATCH_ENTRIES: usize = 500;

/// How long `close` waits for fetches under way (of receives it cut short) to finish.
const FETCH_GRACE: Duration = Duration::from_secs(2);

/// A durable queue on a Redis stream with a consumer group.
///
/// * **Layout.** The queue `NAME` is the stream at key `NAME`; its messages are the stream's
///   entries ([`wire`](crate::wire) gives their fields). Every process of the queue reads it
///   through one consumer group (`courier`, or `options.group`), created on `open` from the
///   stream's first entry, and each open queue is a consumer of its own in that group
///   (`courier-` and a random id).
/// * **Receive.** A new entry (`XREADGROUP … >`) if there is one, else the oldest entry whose
///   lock ran out, claimed (abandoned messages go behind the waiting ones, as in the memory
///   queue); at least every 100 ms a receive claims first, so that a busy stream cannot starve
///   them. With nothing there, `receive` blocks on the server (`XREADGROUP … BLOCK`, on a
///   connection of its own) and is woken at once by a send, looking again for abandoned and
///   expired messages every `options.block` (1 s).
/// * **Locks** are the entries' idle times in the group's pending list: an entry idle for
///   `lock_timeout` may be claimed by any consumer (`XCLAIM`), counting a delivery. Every
///   process of a queue should use the same `lock_timeout`. `renew_lock(m, t)` resets the idle
///   time so that the lock runs `t` from now (repeated every half `lock_timeout` when `t` is
///   longer). `complete` is `XACK` plus `XDEL`. `abandon` makes the entry claimable at once,
///   its count kept. The delivery count is the pending entry's delivery counter. A held
///   message is settled only by the consumer that holds it: a lock that ran out and was
///   claimed by another is theirs (settling it here is a no-op). Scripts check that on the
///   server; `complete` skips the check (a plain `XACK` and `XDEL` in `MULTI`) while the lock
///   has at least a fifth of `lock_timeout` (and 50 ms) left, as no one else can hold it then.
/// * **Dead letters.** `max_deliveries` and `move_to_dead_letter` copy the entry, all its
///   fields, to the `<name>.dlq` stream (or `options.dead_letter_queue`) and delete it, in one
///   script; open that stream as a queue to read them. An entry without a `message` field (not
///   a courier message) goes there too when received, with an empty `message` added.
/// * **Reading without taking.** `peek` and `peek_batch` return what `receive` would hand out
///   next, in that order: entries never delivered, then entries whose lock ran out.
///   `read_message_count` counts the same: entries never delivered plus pending entries idle
///   for `lock_timeout` (abandoned, or held by a consumer that died); held messages are not
///   counted. `clear` deletes those and leaves held ones. `peek_batch` returns at most 10 000
///   messages.
/// * **One group per stream.** Completed messages are deleted from the stream (`XDEL`), so a
///   stream read by two groups (two `options.group` values) would lose each other's messages:
///   give each application its own queue.
/// * **Cancellation.** A `receive` dropped while a call to the server is under way leaves the
///   call to a task, which gives a message that comes late back uncounted. `close` gives back what this
///   consumer still holds (claimable at once, counted) and leaves the group if it holds nothing.
/// * **Redis restarts.** A group that disappeared (a restart without persistence, a deleted
///   key) is created again on the next call. Messages are as durable as the server's
///   persistence makes them; a server that may evict keys (`maxmemory-policy` other than
///   `noeviction` or `volatile-*`) can drop whole queues, and `open` logs a warning then.
pub struct RedisMessageQueue {
    base: QueueBase,
    config: RedisConfig,
    state: parking_lot::Mutex<Option<Arc<Session>>>,
    /// Fetches under way, each in a task: one whose `receive` was dropped gives its message
    /// back; `close` waits for them (briefly).
    fetches: TaskTracker,
}

/// An open queue's connections and consumer: what every call to the server needs, shared
/// with the tasks that outlive a `receive`.
struct Session {
    config: RedisConfig,
    queue: String,
    /// `lock_timeout` in ms: entries idle this long may be claimed.
    lock_ms: String,
    client: redis::Client,
    commands: ConnectionManager,
    /// This queue's consumer in the group.
    consumer: Arc<str>,
    /// Idle connections for blocking reads (a blocked connection serves nothing else).
    readers: parking_lot::Mutex<Vec<MultiplexedConnection>>,
    /// When a receive last looked for messages whose lock ran out before new ones.
    claimed_first: parking_lot::Mutex<tokio::time::Instant>,
    /// Cancelled by `close`: stops lock renewals.
    closing: CancellationToken,
}

/// An entry as a script or a read returns it.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Deliveries so far, this one included.
    deliveries: u32,
}

/// What a received message's lock token holds.
struct RedisLock {
    id: String,
    /// The consumer that holds the entry.
    consumer: Arc<str>,
    /// The delivery the lock is for.
    deliveries: u32,
    /// Until when no other consumer can have claimed the entry: `lock_timeout` (or a renewal)
    /// from before the request that locked it was sent, so never later than the server's.
    surely_held_until: parking_lot::Mutex<tokio::time::Instant>,
    /// Stops the renewals of a lock renewed past `lock_timeout`.
    keepalive: parking_lot::Mutex<Option<CancellationToken>>,
    /// Held by a renewal under way, and taken by whoever settles the lock after stopping the
    /// renewals: a renewal never lands after the settling.
    settling: Arc<tokio::sync::Mutex<()>>,
}

impl RedisLock {
    /// A lock on `id`'s `deliveries`th delivery to `consumer`, held until at least `until`.
    fn new(id: String, consumer: Arc<str>, deliveries: u32, until: tokio::time::Instant) -> Self {
        RedisLock {
            id,
            consumer,
            deliveries,
            surely_held_until: parking_lot::Mutex::new(until),
            keepalive: parking_lot::Mutex::new(None),
            settling: Arc::default(),
        }
    }

    /// Stops the renewals and waits for one under way: the lock is this caller's to settle.
    async fn stop_renewing(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.stop_keepalive();
        self.settling.clone().lock_owned().await
    }

    /// As [`stop_renewing`](Self::stop_renewing) if the lock is free now; `None` if a renewal
    /// or another settler holds it.
    fn try_stop_renewing(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.stop_keepalive();
        self.settling.clone().try_lock_owned().ok()
    }

    /// Whether the entry is still held, with `margin` to spare for the request that settles it
    /// to reach the server.
    fn surely_held(&self, margin: Duration) -> bool {
        tokio::time::Instant::now() + margin < *self.surely_held_until.lock()
    }

    fn stop_keepalive(&self) {
        if let Some(stop) = self.keepalive.lock().take() {
            stop.cancel();
        }
    }

    /// The arguments of a script about this entry, after the group: consumer, id, deliveries.
    fn args(&self) -> Vec<String> {
        vec![
            self.consumer.to_string(),
            self.id.clone(),
            self.deliveries.to_string(),
        ]
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

impl Session {
    fn error(&self, what: &str, e: redis::RedisError) -> Error {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            ErrorKind::Connection
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
            ErrorKind::Config
        } else {
            ErrorKind::Backend
        };
        Error::new(
            kind,
            format!("cannot {what} on Redis at {}", self.config.address()),
        )
        .with_source(e)
        .with_backend(BACKEND)
        .with_queue(&self.queue)
    }

    fn timed_out(&self, what: &str) -> Error {
        timed_out(&self.config, &self.queue, what)
    }

    /// Waits for `call` (doing `what`) for up to `connect_timeout`.
    async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.connect_timeout, call).await {
            Ok(answered) => answered.map_err(|e| self.error(what, e)),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    /// Runs `script` on `keys` with the group and `args`; a group that disappeared (a Redis
    /// restart, a deleted key) is created again and the script run once more.
    async fn eval(
        &self,
        what: &str,
        script: &redis::Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<Value> {
        let run = || {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            invocation.arg(&self.config.group);
            for arg in args {
                invocation.arg(arg);
            }
            let mut commands = self.commands.clone();
            async move { invocation.invoke_async::<Value>(&mut commands).await }
        };
        match self.within(what, run()).await {
            Err(e) if is_missing_group(&e) => {
                self.create_group().await?;
                self.within(what, run()).await
            }
            answered => answered,
        }
    }

    /// Creates the group unless it exists, and removes consumers long gone.
    async fn create_group(&self) -> Result<()> {
        let mut invocation = scripts::OPEN.key(&self.config.stream);
        invocation
            .arg(&self.config.group)
            .arg(STALE_CONSUMER.as_millis().to_string());
        let mut commands = self.commands.clone();
        let removed: i64 = self
            .within(
                "create the consumer group",
                invocation.invoke_async(&mut commands),
            )
            .await?;
        if removed > 0 {
            tracing::debug!(queue = %self.queue, removed, "removed consumers idle for an hour that held nothing");
        }
        Ok(())
    }

    /// Logs a warning if the server may evict keys: a queue's stream is a key.
    async fn check_eviction(&self) {
        let mut commands = self.commands.clone();
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("maxmemory-policy");
        let policy = get.query_async::<Vec<String>>(&mut commands);
        match tokio::time::timeout(self.config.connect_timeout, policy).await {
            Ok(Ok(reply)) => {
                let policy = reply.get(1).map_or("", String::as_str);
                if policy != "noeviction" && !policy.starts_with("volatile-") {
                    tracing::warn!(
                        queue = %self.queue,
                        "Redis at {} has maxmemory-policy {policy}: when it runs out of memory it may evict this queue's stream, and its messages are lost; set maxmemory-policy noeviction",
                        self.config.address()
                    );
                }
            }
            // Managed servers often refuse CONFIG.
            _ => tracing::debug!(queue = %self.queue, "cannot read Redis' maxmemory-policy"),
        }
    }

    /// Takes a new message, else claims one whose lock ran out, without blocking; at least
    /// every [`CLAIM_FIRST_EVERY`], claims first, so that a busy stream does not starve
    /// abandoned and expired messages.
    async fn take(&self) -> Result<Option<Entry>> {
        let claim_first = {
            let mut last = self.claimed_first.lock();
            let due = last.elapsed() >= CLAIM_FIRST_EVERY;
            if due {
                *last = tokio::time::Instant::now();
            }
            due
        };
        if claim_first && let Some(claimed) = self.claim().await? {
            return Ok(Some(claimed));
        }
        if let Some(fresh) = self.read_fresh().await? {
            return Ok(Some(fresh));
        }
        if claim_first {
            return Ok(None);
        }
        self.claim().await
    }

    /// Claims the oldest message whose lock ran out.
    async fn claim(&self) -> Result<Option<Entry>> {
        let claimed = self
            .eval(
                "receive",
                &scripts::CLAIM,
                &[&self.config.stream],
                &[self.consumer.to_string(), self.lock_ms.clone()],
            )
            .await?;
        Ok(entry(&claimed))
    }

    /// Takes a new message (`XREADGROUP … >`), without blocking.
    async fn read_fresh(&self) -> Result<Option<Entry>> {
        Ok(self.read_fresh_many(1).await?.into_iter().next())
    }

    /// Takes up to `count` new messages (`XREADGROUP … COUNT count … >`), without blocking.
    async fn read_fresh_many(&self, count: usize) -> Result<Vec<Entry>> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.config.group)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">");
        let run = || {
            let mut commands = self.commands.clone();
            let read = read.clone();
            async move { read.query_async::<Value>(&mut commands).await }
        };
        let value = match self.within("receive", run()).await {
            Err(e) if is_missing_group(&e) => {
                self.create_group().await?;
                self.within("receive", run()).await?
            }
            answered => answered?,
        };
        Ok(read_entries(&value))
    }

    /// Blocks on the server for up to `block` for a new entry, on a connection of its own.
    async fn read_new(&self, block: Duration) -> Result<Option<Entry>> {
        let pooled = self.readers.lock().pop();
        let mut reader = match pooled {
            Some(reader) => reader,
            None => {
                let settings = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout))
                    .set_response_timeout(Some(self.config.block + self.config.connect_timeout));
                self.within(
                    "connect",
                    self.client
                        .get_multiplexed_async_connection_with_config(&settings),
                )
                .await?
            }
        };
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.config.group)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">");
        let answered = tokio::time::timeout(
            block + self.config.connect_timeout,
            read.query_async::<Value>(&mut reader),
        )
        .await;
        match answered {
            Ok(Ok(value)) => {
                // Only a connection that answered is used again.
                self.readers.lock().push(reader);
                Ok(read_entry(&value))
            }
            // The group or the stream is gone (a deleted key unblocks readers).
            Ok(Err(e))
                if ["NOGROUP", "UNBLOCKED"]
                    .iter()
                    .any(|c| e.to_string().contains(c)) =>
            {
                self.create_group().await?;
                Ok(None)
            }
            Ok(Err(e)) => Err(self.error("receive", e)),
            Err(_) => Err(self.timed_out("receive")),
        }
    }

    /// Sets the idle time and delivery count of a held entry; `false` if it is not held.
    async fn reset(
        &self,
        what: &str,
        lock: &RedisLock,
        idle: u64,
        deliveries: u32,
    ) -> Result<bool> {
        let mut args = lock.args();
        args.push(idle.to_string());
        args.push(deliveries.to_string());
        let reset = self
            .eval(what, &scripts::RESET, &[&self.config.stream], &args)
            .await?;
        Ok(matches!(reset, Value::Int(1)))
    }

    /// Hands back a delivery nobody saw: claimable at once, its count as before it. If this
    /// fails, the entry comes back when its lock runs out, counted.
    async fn give_back(&self, entry: Entry) {
        let lock = RedisLock::new(
            entry.id,
            self.consumer.clone(),
            entry.deliveries,
            tokio::time::Instant::now(),
        );
        let earlier = lock.deliveries.saturating_sub(1);
        let _ = self
            .reset("give back a message", &lock, GIVEN_BACK_IDLE, earlier)
            .await;
    }

    /// Moves a held entry to the dead-letter stream; `false` if it was not held any more.
    async fn bury(&self, lock: &RedisLock) -> Result<bool> {
        lock.stop_keepalive();
        let moved = self
            .eval(
                "move a message to the dead-letter queue",
                &scripts::BURY,
                &[&self.config.stream, &self.config.dead_letter_stream],
                &lock.args(),
            )
            .await?;
        Ok(matches!(moved, Value::Int(1)))
    }
}

/// The idle time that makes a lock of `lock_timeout` end `left` from now (0 when `left` is
/// longer: the lock then ends `lock_timeout` from now), in ms.
fn idle_for(lock_timeout: Duration, left: Duration) -> u64 {
    u64::try_from(lock_timeout.saturating_sub(left).as_millis()).unwrap_or(u64::MAX)
}

/// The error of a call (doing `what`) that got no answer within `connect_timeout`.
fn timed_out(config: &RedisConfig, queue: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "cannot {what}: Redis at {} did not answer within {:?} (options.connect_timeout)",
            config.address(),
            config.connect_timeout
        ),
    )
    .with_backend(BACKEND)
    .with_queue(queue)
}

/// Whether `e` says the stream or its consumer group is gone.
fn is_missing_group(e: &Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.to_string().contains("NOGROUP") {
            return true;
        }
        source = cause.source();
    }
    false
}

impl RedisMessageQueue {
    pub(crate) fn new(base: QueueBase, config: RedisConfig) -> Self {
        RedisMessageQueue {
            base,
            config,
            state: parking_lot::Mutex::new(None),
            fetches: TaskTracker::new(),
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn session(&self) -> Result<Arc<Session>> {
        self.base.check_open()?;
        self.state
            .lock()
            .clone()
            .ok_or_else(|| Error::not_opened(self.name()).with_backend(BACKEND))
    }

    /// Takes the next message, blocking on the server for up to `block` if there is none, then
    /// up to `max - 1` more that are new (one `XREADGROUP COUNT`). If this future is dropped
    /// before the answer, the call is finished by a task of its own, which gives the messages
    /// back uncounted.
    async fn fetch(
        &self,
        session: &Arc<Session>,
        block: Option<Duration>,
        max: usize,
    ) -> Result<Vec<Entry>> {
        let fetching = session.clone();
        let mut fetch = Fetch {
            call: Some(Box::pin(async move {
                let first = match (fetching.take().await, block) {
                    (Ok(None), Some(block)) => fetching.read_new(block).await,
                    (taken, _) => taken,
                }?;
                let mut entries: Vec<Entry> = first.into_iter().collect();
                if entries.len() == 1 && max > 1 {
                    // Errors now would only shorten the batch: what came is returned.
                    if let Ok(more) = fetching.read_fresh_many((max - 1).min(BATCH_ENTRIES)).await {
                        entries.extend(more);
                    }
                }
                Ok(entries)
            })),
            session: session.clone(),
            tracker: self.fetches.clone(),
        };
        let limit = block.unwrap_or_default() + 3 * self.config.connect_timeout;
        match tokio::time::timeout(limit, &mut fetch).await {
            Ok(fetched) => fetched,
            Err(_) => Err(session.timed_out("receive")),
        }
    }

    /// The envelope of a taken entry, locked; or `None` after moving it to the dead-letter
    /// queue (not a courier message, or delivered after its last allowed delivery).
    async fn deliver(
        &self,
        session: &Session,
        taken: Entry,
        asked: tokio::time::Instant,
        correlation_id: Option<&str>,
    ) -> Result<Option<MessageEnvelope>> {
        let lock = RedisLock::new(
            taken.id,
            session.consumer.clone(),
            taken.deliveries,
            deadline_after(asked, self.base.options().lock_timeout),
        );
        let Some(mut envelope) = wire::envelope(&lock.id, taken.fields) else {
            tracing::warn!(queue = %self.name(), entry = %lock.id, "an entry without a `message` field is not a courier message: moved to the dead-letter queue");
            session.bury(&lock).await?;
            return Ok(None);
        };
        envelope.set_delivery_count(lock.deliveries);
        if self.base.is_spent(lock.deliveries.saturating_sub(1)) {
            // Delivered again after its last allowed delivery (its lock ran out).
            if session.bury(&lock).await? {
                self.base.dead_lettered(&envelope);
            }
            return Ok(None);
        }
        envelope.set_lock_token(Some(LockToken::new(lock)));
        self.base.received(correlation_id, &envelope);
        Ok(Some(envelope))
    }

    fn held(message: &MessageEnvelope) -> Option<(&RedisLock, &LockToken)> {
        let token = message.lock_token().filter(|t| !t.is_settled())?;
        Some((token.downcast_ref::<RedisLock>()?, token))
    }

    /// Acknowledges and deletes the entries `ids` in one `MULTI` (`XACK`, `XDEL`), without
    /// asking who holds them: for locks surely still this consumer's. A group that is gone (a
    /// restart without persistence) took the entries with it, and is no error.
    async fn ack_and_delete(&self, session: &Session, ids: &[&str]) -> Result<()> {
        let mut done = redis::pipe();
        done.atomic()
            .cmd("XACK")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.config.stream)
            .arg(ids)
            .ignore();
        let mut commands = session.commands.clone();
        match session
            .within("complete", done.query_async::<()>(&mut commands))
            .await
        {
            Err(e) if is_missing_group(&e) => Ok(()),
            done => done,
        }
    }

    fn envelopes(value: &Value) -> Vec<MessageEnvelope> {
        let Value::Array(items) = value else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(entry)
            .filter_map(|e| {
                let mut envelope = wire::envelope(&e.id, e.fields)?;
                envelope.set_delivery_count(e.deliveries);
                Some(envelope)
            })
            .collect()
    }
}

type Call = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Entry>>> + Send>>;

/// A call that takes messages for a `receive`: dropped unfinished (the `receive` was
/// dropped), it is finished by a task, which gives the messages back uncounted.
struct Fetch {
    call: Option<Call>,
    session: Arc<Session>,
    /// The queue's fetches, which `close` waits for: the finishing task is one of them.
    tracker: TaskTracker,
}

impl Future for Fetch {
    type Output = Result<Vec<Entry>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Ready(Ok(Vec::new()));
        };
        let fetched = std::task::ready!(call.as_mut().poll(cx));
        self.call = None;
        std::task::Poll::Ready(fetched)
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let session = self.session.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tracker.spawn(async move {
                if let Ok(entries) = call.await {
                    // Nobody waits for them any more.
                    for entry in entries {
                        session.give_back(entry).await;
                    }
                }
            });
        }
    }
}

/// The bytes of a reply value (a bulk or simple string, or an integer as text).
fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]` or `[id, [field, value, ...], deliveries]` (deliveries 1 when
/// absent), as `XREADGROUP` and the scripts return entries.
fn entry(value: &Value) -> Option<Entry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let id = String::from_utf8(bytes(parts.first()?)?).ok()?;
    let Some(Value::Array(flat)) = parts.get(1) else {
        return None;
    };
    let fields = flat
        .chunks(2)
        .filter_map(|pair| Some((bytes(pair.first()?)?, bytes(pair.get(1)?)?)))
        .collect();
    let deliveries = match parts.get(2) {
        Some(Value::Int(n)) => u32::try_from(*n).unwrap_or(if *n < 0 { 0 } else { u32::MAX }),
        _ => 1,
    };
    Some(Entry {
        id,
        fields,
        deliveries,
    })
}

/// The entries of an `XREADGROUP` reply (`[[stream, [entry, ...]]]`), in order.
fn read_entries(value: &Value) -> Vec<Entry> {
    let Value::Array(streams) = value else {
        return Vec::new();
    };
    let Some(Value::Array(stream)) = streams.first() else {
        return Vec::new();
    };
    let Some(Value::Array(entries)) = stream.get(1) else {
        return Vec::new();
    };
    entries.iter().filter_map(entry).collect()
}

/// The first entry of an `XREADGROUP` reply, if any.
fn read_entry(value: &Value) -> Option<Entry> {
    read_entries(value).into_iter().next()
}

impl fmt::Debug for RedisMessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisMessageQueue")
            .field("base", &self.base)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageQueue for RedisMessageQueue {
    fn name(&self) -> &str {
        self.base.name()
    }

    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }

    fn is_open(&self) -> bool {
        self.base.is_open()
    }

    async fn open(&self, correlation_id: Option<&str>) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let failed = |kind: ErrorKind, hint: &str, e: redis::RedisError| {
            Error::new(
                kind,
                format!("cannot connect to Redis at {}{hint}", self.config.address()),
            )
            .with_source(e)
            .with_backend(BACKEND)
            .with_queue(self.name())
        };
        let client = self
            .config
            .client()
            .map_err(|e| e.with_backend(BACKEND).with_queue(self.name()))?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.connect_timeout))
            .set_number_of_retries(2);
        let commands = match tokio::time::timeout(
            self.config.connect_timeout,
            client.get_connection_manager_with_config(settings),
        )
        .await
        {
            Ok(Ok(commands)) => commands,
            Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                return Err(failed(ErrorKind::Config, ": authentication failed", e));
            }
            Ok(Err(e)) if courier_core::backend::refused_handshake(&e) => {
                let hint = ": the TLS handshake failed (an untrusted server certificate? see options.tls_ca_file)";
                return Err(failed(ErrorKind::Config, hint, e));
            }
            Ok(Err(e)) => return Err(failed(ErrorKind::Connection, "", e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "cannot reach Redis at {} within {:?} (options.connect_timeout)",
                        self.config.address(),
                        self.config.connect_timeout
                    ),
                )
                .with_backend(BACKEND)
                .with_queue(self.name()));
            }
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            config: self.config.clone(),
            queue: self.name().to_owned(),
            lock_ms: self.base.options().lock_timeout.as_millis().to_string(),
            client,
            commands,
            consumer: Arc::from(format!("courier-{}", &id[..12])),
            readers: parking_lot::Mutex::new(Vec::new()),
            claimed_first: parking_lot::Mutex::new(tokio::time::Instant::now()),
            closing: CancellationToken::new(),
        };
        session.create_group().await?;
        session.check_eviction().await;
        *self.state.lock() = Some(Arc::new(session));
        self.base.set_open(true);
        self.base.changed(correlation_id, "Opened");
        Ok(())
    }

    async fn close(&self, correlation_id: Option<&str>) -> Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        self.base.stop_listeners().await;
        self.base.set_open(false);
        if let Some(session) = self.state.lock().as_ref() {
            session.closing.cancel();
        }
        // Fetches of dropped receives give their messages back before the consumer leaves.
        self.fetches.close();
        let _ = tokio::time::timeout(FETCH_GRACE, self.fetches.wait()).await;
        self.fetches.reopen();
        let session = self.state.lock().take();
        if let Some(session) = session {
            let left = session
                .eval(
                    "leave the consumer group",
                    &scripts::LEAVE,
                    &[&self.config.stream],
                    &[session.consumer.to_string(), GIVEN_BACK_IDLE.to_string()],
                )
                .await;
            if let Ok(Value::Int(given_back)) = left
                && given_back > 0
            {
                tracing::debug!(queue = %self.name(), given_back, "gave back the messages held at close");
            }
        }
        self.base.changed(correlation_id, "Closed");
        Ok(())
    }

    async fn read_message_count(&self) -> Result<usize> {
        let session = self.session()?;
        let counts = session
            .eval(
                "count messages",
                &scripts::COUNT,
                &[&self.config.stream],
                std::slice::from_ref(&session.lock_ms),
            )
            .await?;
        let number = |i: usize| match &counts {
            Value::Array(v) => match v.get(i) {
                Some(Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        let ready = (number(0) - number(1)).max(0) + number(2);
        Ok(usize::try_from(ready).unwrap_or(0))
    }

    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()> {
        let session = self.session()?;
        let envelope = self.base.prepare_send(envelope)?;
        let mut add = redis::cmd("XADD");
        add.arg(&self.config.stream).arg("*");
        for (name, value) in wire::fields(&envelope) {
            add.arg(name).arg(&value[..]);
        }
        let mut commands = session.commands.clone();
        session
            .within("send", add.query_async::<Value>(&mut commands))
            .await?;
        self.base.sent(correlation_id, &envelope);
        Ok(())
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        Ok(self.peek_batch(correlation_id, 1).await?.into_iter().next())
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        let session = self.session()?;
        if message_count == 0 {
            return Ok(Vec::new());
        }
        let message_count = message_count.min(MOST_PEEKED);
        let peeked = session
            .eval(
                "peek",
                &scripts::PEEK,
                &[&self.config.stream],
                &[session.lock_ms.clone(), message_count.to_string()],
            )
            .await?;
        let peeked = Self::envelopes(&peeked);
        self.base.peeked(correlation_id, peeked.len());
        Ok(peeked)
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
        let session = self.session()?;
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        let deadline = deadline_after(tokio::time::Instant::now(), wait_timeout);
        loop {
            // Closed while this receive waited: it ends, and hands back what came.
            self.base.check_open()?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = (!left.is_zero()).then(|| left.min(self.config.block));
            let asked = tokio::time::Instant::now();
            let fetched = self.fetch(&session, block, max).await?;
            if !self.is_open() {
                for taken in fetched {
                    session.give_back(taken).await;
                }
                return Err(Error::not_opened(self.name()).with_backend(BACKEND));
            }
            let mut failed = None;
            for taken in fetched {
                match self.deliver(&session, taken, asked, correlation_id).await {
                    Ok(Some(envelope)) => batch.push(envelope),
                    Ok(None) => {}
                    // Not dead-lettered: it comes back when its lock runs out. The error is
                    // returned only when nothing else was taken.
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            match failed {
                Some(e) if batch.is_empty() => return Err(e),
                _ if !batch.is_empty() || tokio::time::Instant::now() >= deadline => {
                    return Ok(batch);
                }
                _ => {}
            }
        }
    }

    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        let session = self.session()?;
        let envelopes = self.base.prepare_batch(envelopes)?;
        if envelopes.is_empty() {
            return Ok(());
        }
        // One round trip per 500 messages, each a `MULTI` … `EXEC` within `connect_timeout`.
        for chunk in envelopes.chunks(BATCH_ENTRIES) {
            let mut adds = redis::pipe();
            adds.atomic();
            for envelope in chunk {
                let add = adds.cmd("XADD").arg(&self.config.stream).arg("*");
                for (name, value) in wire::fields(envelope) {
                    add.arg(name).arg(&value[..]);
                }
                add.ignore();
            }
            let mut commands = session.commands.clone();
            session
                .within("send", adds.query_async::<()>(&mut commands))
                .await?;
        }
        self.base.sent_batch(correlation_id, &envelopes);
        Ok(())
    }

    async fn complete_batch(&self, messages: &[MessageEnvelope]) -> Result<()> {
        let session = self.session()?;
        let margin = (self.base.options().lock_timeout / 5).max(SETTLE_MARGIN);
        // Locks surely still ours, and free to settle now, are settled with one `XACK` and one
        // `XDEL` of every id; the others as `complete` settles one (waiting for a renewal under
        // way, asking the server who holds it), after this call let go of every lock it held:
        // a lock listed twice, or batches settling the same locks at once, never wait on each
        // other.
        let mut sure = Vec::new();
        let mut unsure = Vec::new();
        for message in messages {
            let Some((lock, token)) = Self::held(message) else {
                continue;
            };
            match lock.try_stop_renewing() {
                Some(settling) if lock.consumer == session.consumer && lock.surely_held(margin) => {
                    sure.push((settling, lock, token, message));
                }
                _ => unsure.push(message),
            }
        }
        if !sure.is_empty() {
            let ids: Vec<&str> = sure
                .iter()
                .map(|(_, lock, _, _)| lock.id.as_str())
                .collect();
            self.ack_and_delete(&session, &ids).await?;
            for (_, _, token, message) in &sure {
                token.settle();
                self.base.settled(Settled::Completed, message);
            }
        }
        drop(sure);
        for message in unsure {
            self.complete(message).await?;
        }
        Ok(())
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        let session = self.session()?;
        let Some((lock, _)) = Self::held(message) else {
            return Ok(());
        };
        let renewing = lock.stop_renewing().await;
        let ours = self.base.options().lock_timeout;
        let asked = tokio::time::Instant::now();
        let deadline = deadline_after(asked, lock_timeout);
        if !session
            .reset(
                "renew a lock",
                lock,
                idle_for(ours, lock_timeout),
                lock.deliveries,
            )
            .await?
        {
            return Ok(());
        }
        // Kept renewing past `ours` only while the renewals succeed: surely held for `ours`.
        *lock.surely_held_until.lock() = deadline_after(asked, lock_timeout.min(ours));
        drop(renewing);
        if lock_timeout > ours {
            // Held until `deadline`: the idle time set again every half `lock_timeout`, the last
            // time so that the lock ends at the deadline.
            let stop = CancellationToken::new();
            let every = (ours / 2).max(Duration::from_millis(10));
            if let Some(older) = lock.keepalive.lock().replace(stop.clone()) {
                older.cancel();
            }
            let renewed = RedisLock::new(
                lock.id.clone(),
                lock.consumer.clone(),
                lock.deliveries,
                asked,
            );
            let settling = lock.settling.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = session.closing.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let _renewing = settling.lock().await;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if stop.is_cancelled() || session.closing.is_cancelled() || left.is_zero() {
                        return;
                    }
                    let renewed = session
                        .reset(
                            "renew a lock",
                            &renewed,
                            idle_for(ours, left),
                            renewed.deliveries,
                        )
                        .await;
                    if !matches!(renewed, Ok(true)) || left <= ours {
                        return;
                    }
                }
            });
        }
        self.base.settled(Settled::RenewedLock, message);
        Ok(())
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        let session = self.session()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        let _settling = lock.stop_renewing().await;
        let lock_timeout = self.base.options().lock_timeout;
        // A lock from before the queue was closed and opened again was given back at close.
        let ours = lock.consumer == session.consumer;
        if ours && lock.surely_held((lock_timeout / 5).max(SETTLE_MARGIN)) {
            // Nobody else can hold it yet: no need to ask the server who does.
            self.ack_and_delete(&session, &[lock.id.as_str()]).await?;
        } else {
            session
                .eval(
                    "complete",
                    &scripts::COMPLETE,
                    &[&self.config.stream],
                    &lock.args(),
                )
                .await?;
        }
        token.settle();
        self.base.settled(Settled::Completed, message);
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        let session = self.session()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        let _settling = lock.stop_renewing().await;
        if self.base.is_spent(lock.deliveries) {
            if session.bury(lock).await? {
                self.base.dead_lettered(message);
            }
        } else {
            session
                .reset("abandon", lock, GIVEN_BACK_IDLE, lock.deliveries)
                .await?;
            self.base.settled(Settled::Abandoned, message);
        }
        token.settle();
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        let session = self.session()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        let _settling = lock.stop_renewing().await;
        if session.bury(lock).await? {
            self.base.dead_lettered(message);
        }
        token.settle();
        Ok(())
    }

    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        self.base.listen(self, correlation_id, receiver).await
    }

    fn end_listen(&self, _correlation_id: Option<&str>) {
        self.base.end_listen();
    }

    fn base(&self) -> Option<&QueueBase> {
        Some(&self.base)
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        let session = self.session()?;
        loop {
            let deleted = session
                .eval(
                    "clear",
                    &scripts::CLEAR,
                    &[&self.config.stream],
                    std::slice::from_ref(&session.lock_ms),
                )
                .await?;
            if !matches!(deleted, Value::Int(n) if n > 0) {
                break;
            }
        }
        self.base.changed(correlation_id, "Cleared");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_are_read_without_trusting_their_shape() {
        let reply = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("message"), bulk("x"), bulk("odd")]),
            Value::Int(3),
        ]);
        let e = entry(&reply).expect("an entry");
        assert_eq!((e.id.as_str(), e.deliveries, e.fields.len()), ("1-0", 3, 1));
        assert!(entry(&Value::Nil).is_none());
        assert!(entry(&Value::Array(vec![Value::Int(1)])).is_none());
        let read = Value::Array(vec![Value::Array(vec![
            bulk("q"),
            Value::Array(vec![Value::Array(vec![bulk("2-0"), Value::Array(vec![])])]),
        ])]);
        assert_eq!(read_entry(&read).expect("an entry").id, "2-0");
        assert!(read_entry(&Value::Array(vec![])).is_none());
    }
}
