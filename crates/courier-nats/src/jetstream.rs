//! [`JetStreamMessageQueue`]: a durable, acknowledged queue on NATS JetStream.
//!
//! * One work-queue stream per queue (named from the queue, see [`stream_name`]) on the
//!   queue's subject, and one durable pull consumer, `courier`, shared by every process of the
//!   queue. The first `open` creates both; later ones use them as they are.
//! * Or, with `options.stream`, one stream for several queues: each queue is a subject of
//!   that stream, with a durable consumer of its own (`courier-` and the escaped name, see
//!   [`consumer_name`]) filtered on its subject; peek, count and `clear` see that subject only.
//!   A missing stream is created as a work queue on the queue's subject; an existing one is
//!   used as it is if one of its subjects covers the queue's (`orders.>` covers `orders.eu`),
//!   else the queue's subject is added to it. Adding is a read-then-update of the stream's
//!   subject list: queues first opened at the same moment on one stream can undo each other's
//!   additions (their sends then fail, nothing is lost), so give a stream many queues share a
//!   wildcard subject when you create it.
//! * `receive` fetches one message; its lock is the consumer's `AckWait`: the `lock_timeout`
//!   of the queue that created the consumer (a later queue with another one uses it as it
//!   is; renewals follow the consumer's). `complete` acknowledges,
//!   `abandon` naks (redelivered at once), `renew_lock(m, t)` keeps the message in progress
//!   (`+WPI`, repeated every half `AckWait`) until `t` from now. A message whose lock expires
//!   is redelivered by the server, with its delivery count.
//! * `max_deliveries` and `move_to_dead_letter` publish a copy to the dead-letter queue
//!   (`<name>.dlq` or `options.dead_letter_queue`, its own stream, created when needed), then
//!   terminate the original (`+TERM`).
//! * A `receive` dropped while its fetch is under way leaves the fetch to a task, which puts a
//!   message that comes late back as a copy carrying its count (without the server's
//!   `Nats-*` headers) and terminates the original; if the copy cannot be stored, the
//!   original comes back when its `AckWait` runs out, counted. Every call to the server gives
//!   up after `connect_timeout`.
//! * `peek` and `peek_batch` read messages not yet delivered, without consuming them;
//!   `read_message_count` is the consumer's count of messages not yet delivered
//!   (`num_pending`), so locked messages and those waiting for redelivery are not counted.
//!   `clear` purges the queue's subject from the stream (locked messages included).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use courier_core::backend::{LockToken, QueueBase, Settled, deadline_after};
use courier_core::{
    Error, ErrorKind, MessageEnvelope, MessageQueue, MessageReceiver, MessagingCapabilities, Result,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::{BACKEND, core_nats, wire};

/// The durable consumer every process of a queue shares.
pub const CONSUMER: &str = "courier";

/// How many publishes of a batch await their acknowledgements together, well under the
/// client's limit of pending acknowledgements (5 000 by default); each window has its own
/// `connect_timeout`.
const PUBLISH_WINDOW: usize = 1_000;

/// The longest a single fetch waits; longer receives fetch again.
const LONGEST_FETCH: Duration = Duration::from_secs(30);

/// How long putting back a message may take before it is left to come back by `AckWait`.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than its wait a fetch may take before `receive` gives up on it.
const FETCH_SLACK: Duration = Duration::from_millis(250);

/// How long `close` waits for fetches under way (of receives it cut short) to finish.
const FETCH_GRACE: Duration = Duration::from_secs(2);

/// The JetStream stream of queue `name`: `COURIER_` and the name, with every character other
/// than ASCII letters, digits and `-` written as `_` and its hexadecimal code (stream names
/// cannot hold `.`, `*`, `>` or spaces).
pub fn stream_name(name: &str) -> String {
    escaped("COURIER_", name)
}

/// The durable consumer of queue `name`: [`CONSUMER`] on a stream of its own, else (on a stream
/// shared with other queues, `shared`) `courier-` and the name escaped as in [`stream_name`].
pub fn consumer_name(name: &str, shared: bool) -> String {
    if shared {
        escaped("courier-", name)
    } else {
        CONSUMER.to_owned()
    }
}

/// `prefix`, then `name` with every character other than ASCII letters, digits and `-` written
/// as `_` and its hexadecimal code.
fn escaped(prefix: &str, name: &str) -> String {
    let mut escaped = String::from(prefix);
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            escaped.push(c);
        } else {
            escaped.push_str(&format!("_{:X}", u32::from(c)));
        }
    }
    escaped
}

/// Whether the NATS subject pattern `pattern` (`*` one token, `>` the rest) covers `subject`.
fn covers(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// A durable NATS JetStream queue.
pub struct JetStreamMessageQueue {
    base: QueueBase,
    config: NatsConfig,
    state: parking_lot::Mutex<Option<Connected>>,
    /// Fetches under way, each in a task of its own: one whose `receive` was dropped puts its
    /// message back uncounted; `close` waits for them (briefly).
    fetches: tokio_util::task::TaskTracker,
}

#[derive(Clone)]
struct Connected {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    consumer: consumer::PullConsumer,
    /// The consumer's `AckWait`: how long a lock lasts without renewal.
    ack_wait: Duration,
}

/// What a received message's lock token holds.
struct JsLock {
    message: jetstream::Message,
    /// Stops the in-progress acks of a renewed lock.
    keepalive: parking_lot::Mutex<Option<CancellationToken>>,
}

impl JsLock {
    fn stop_keepalive(&self) {
        if let Some(stop) = self.keepalive.lock().take() {
            stop.cancel();
        }
    }
}

impl Drop for JsLock {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

impl JetStreamMessageQueue {
    pub(crate) fn new(base: QueueBase, config: NatsConfig) -> Self {
        JetStreamMessageQueue {
            base,
            config,
            state: parking_lot::Mutex::new(None),
            fetches: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    fn connected(&self) -> Result<Connected> {
        self.base.check_open()?;
        self.state
            .lock()
            .clone()
            .ok_or_else(|| Error::not_opened(self.name()).with_backend(BACKEND))
    }

    fn error(&self, what: &str, e: impl Into<courier_core::BoxError>) -> Error {
        let e: courier_core::BoxError = e.into();
        let kind = if e.to_string().contains("timed out") {
            ErrorKind::Timeout
        } else {
            ErrorKind::Backend
        };
        Error::new(
            kind,
            format!(
                "cannot {what} on NATS JetStream at {}",
                self.config.address()
            ),
        )
        .with_source(e)
        .with_backend(BACKEND)
        .with_queue(self.name())
    }

    /// The stream that holds subject `name` (this queue's or its dead-letter queue's): its
    /// own, or the shared `options.stream`, created if missing, given the subject if none of
    /// its subjects covers it.
    async fn stream(&self, js: &jetstream::Context, name: &str) -> Result<stream::Stream> {
        let stream = self
            .config
            .stream
            .clone()
            .unwrap_or_else(|| stream_name(name));
        let create = js.get_or_create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![name.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        });
        let found = self.within("create the stream", create).await?;
        let held = |found: &stream::Stream| {
            let subjects = &found.cached_info().config.subjects;
            subjects.iter().any(|pattern| covers(pattern, name))
        };
        if held(&found) {
            return Ok(found);
        }
        let mut config = found.cached_info().config.clone();
        config.subjects.push(name.to_owned());
        self.within("add the subject to the stream", js.update_stream(config))
            .await?;
        let found = self
            .within("read the stream", js.get_stream(stream.as_str()))
            .await?;
        if held(&found) {
            Ok(found)
        } else {
            Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "the JetStream stream {stream} at {} does not take subject {name}: another queue changed its subjects at the same time; open again",
                    self.config.address()
                ),
            )
            .with_backend(BACKEND)
            .with_queue(self.name()))
        }
    }

    /// Waits for the server's answer to `call` (doing `what`) for up to `connect_timeout`: a
    /// client that lost its connection may queue a request for as long as it reconnects.
    async fn within<T, E: Into<courier_core::BoxError>>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.connect_timeout, call).await {
            Ok(answered) => answered.map_err(|e| self.error(what, e)),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    /// The error of a call (doing `what`) the server did not answer within `connect_timeout`.
    fn timed_out(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot {what}: NATS at {} did not answer within {:?} (options.connect_timeout)",
                self.config.address(),
                self.config.connect_timeout
            ),
        )
        .with_backend(BACKEND)
        .with_queue(self.name())
    }

    fn lock_of(message: &MessageEnvelope) -> Option<&JsLock> {
        message.lock_token()?.downcast_ref::<JsLock>()
    }

    /// The lock of a received message and its token, unless it is unknown or settled already
    /// (settling it again is a no-op).
    fn held(message: &MessageEnvelope) -> Option<(&JsLock, &LockToken)> {
        let token = message.lock_token().filter(|t| !t.is_settled())?;
        Some((token.downcast_ref::<JsLock>()?, token))
    }

    /// Publishes `envelope` on `subject` and waits for JetStream's acknowledgement, for up
    /// to `connect_timeout`.
    async fn publish(
        &self,
        js: &jetstream::Context,
        subject: &str,
        envelope: &MessageEnvelope,
    ) -> Result<()> {
        self.publish_all(js, subject, std::slice::from_ref(envelope))
            .await
    }

    /// Publishes `envelopes` on `subject` in order, then waits for JetStream's
    /// acknowledgements together (pipelined, not a round trip each), for up to
    /// `connect_timeout` in all.
    async fn publish_all(
        &self,
        js: &jetstream::Context,
        subject: &str,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        for window in envelopes.chunks(PUBLISH_WINDOW) {
            self.publish_window(js, subject, window).await?;
        }
        Ok(())
    }

    /// One window of [`publish_all`](Self::publish_all), within `connect_timeout`.
    async fn publish_window(
        &self,
        js: &jetstream::Context,
        subject: &str,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        let publish = async {
            let mut acks = Vec::with_capacity(envelopes.len());
            for envelope in envelopes {
                let ack = js
                    .publish_with_headers(
                        subject.to_owned(),
                        wire::headers(envelope),
                        envelope.message.clone(),
                    )
                    .await
                    .map_err(|e| self.error("publish", e))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| self.error("publish", e))?;
            }
            Ok(())
        };
        match tokio::time::timeout(self.config.connect_timeout, publish).await {
            Ok(published) => published,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "NATS JetStream at {} did not acknowledge the message within {:?} (options.connect_timeout); it may or may not be stored",
                    self.config.address(),
                    self.config.connect_timeout
                ),
            )
            .with_backend(BACKEND)
            .with_queue(self.name())),
        }
    }

    /// Moves a delivered message to the dead-letter queue: a copy there, then `+TERM`.
    async fn bury(
        &self,
        connected: &Connected,
        envelope: &MessageEnvelope,
        lock: &JsLock,
    ) -> Result<()> {
        let dead = &self.config.dead_letter_queue;
        self.stream(&connected.js, dead).await?;
        let mut copy = envelope.clone();
        copy.set_lock_token(None);
        self.publish(&connected.js, dead, &copy).await?;
        lock.stop_keepalive();
        self.within(
            "terminate a message",
            lock.message.double_ack_with(AckKind::Term),
        )
        .await?;
        self.base.dead_lettered(envelope);
        Ok(())
    }

    /// Fetches up to `max` messages, waiting up to `wait` for the first, in a task of its own:
    /// if this future is dropped before the messages arrive, the task puts them back uncounted.
    async fn fetch(
        &self,
        connected: &Connected,
        wait: Duration,
        max: usize,
    ) -> Result<Vec<jetstream::Message>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (consumer, js, subject) = (
            connected.consumer.clone(),
            connected.js.clone(),
            self.name().to_owned(),
        );
        self.fetches.spawn(async move {
            // A client that lost its connection may never answer a request without expiry.
            let limit = wait + FETCH_SLACK + Duration::from_secs(1);
            let fetched = match tokio::time::timeout(limit, fetch_some(&consumer, wait, max)).await
            {
                Ok(fetched) => fetched,
                Err(_) => Ok(Vec::new()),
            };
            if let Err(Ok(messages)) = answer.send(fetched) {
                // Nobody waits for them any more.
                for message in messages {
                    release(&js, &subject, message).await;
                }
            }
        });
        // A message sent just as this future is dropped is put back by the guard.
        let mut pending = PendingFetch {
            answered: Some(answered),
            js: connected.js.clone(),
            subject: self.name().to_owned(),
            tracker: self.fetches.clone(),
        };
        // A client that lost its connection may take much longer than `wait` to answer: this
        // receive is empty then, and the fetch's message, if one comes, is put back.
        let answered = match pending.answered.as_mut() {
            Some(answered) => tokio::time::timeout(wait + FETCH_SLACK, answered).await,
            None => return Ok(Vec::new()),
        };
        let Ok(answer) = answered else {
            return Ok(Vec::new());
        };
        pending.answered = None;
        match answer {
            Ok(fetched) => fetched.map_err(|e| self.error("fetch", e)),
            Err(_) => Err(
                Error::new(ErrorKind::Backend, "a fetch task ended without an answer")
                    .with_backend(BACKEND)
                    .with_queue(self.name()),
            ),
        }
    }
}

type Fetched = std::result::Result<Vec<jetstream::Message>, courier_core::BoxError>;

/// The waiting end of a fetch: dropped with a message in it (the `receive` was dropped just
/// as the message came), it puts the message back from a task.
struct PendingFetch {
    answered: Option<tokio::sync::oneshot::Receiver<Fetched>>,
    js: jetstream::Context,
    subject: String,
    /// The queue's fetches, which `close` waits for: the putting back is one of them.
    tracker: tokio_util::task::TaskTracker,
}

impl Drop for PendingFetch {
    fn drop(&mut self) {
        let Some(mut answered) = self.answered.take() else {
            return;
        };
        // Closed first: a message is then either in the channel, or refused to its sender
        // (which puts it back), never dropped with the channel.
        answered.close();
        if let Ok(Ok(messages)) = answered.try_recv() {
            let (js, subject) = (self.js.clone(), std::mem::take(&mut self.subject));
            if !messages.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
                self.tracker.spawn(async move {
                    for message in messages {
                        release(&js, &subject, message).await;
                    }
                });
            }
        }
    }
}

/// Fetches up to `max` messages from `consumer`: what is there at once, or, when nothing is,
/// the first to arrive within `wait` and then what else is there at once (a pull request that
/// waited for the whole batch would hold a ready message back).
async fn fetch_some(consumer: &consumer::PullConsumer, wait: Duration, max: usize) -> Fetched {
    let mut fetched = Vec::new();
    if max == 0 {
        return Ok(fetched);
    }
    take_ready(consumer, max, &mut fetched).await?;
    if !fetched.is_empty() || wait < Duration::from_millis(10) {
        return Ok(fetched);
    }
    let mut first = consumer
        .batch()
        .max_messages(1)
        .expires(wait.min(LONGEST_FETCH))
        .messages()
        .await?;
    match first.next().await {
        None => return Ok(fetched),
        Some(Ok(message)) => fetched.push(message),
        Some(Err(e)) => return Err(e),
    }
    if max > 1 {
        // Errors now would only shorten the batch: what came is returned.
        let _ = take_ready(consumer, max - 1, &mut fetched).await;
    }
    Ok(fetched)
}

/// Appends up to `max` messages that are ready now (a no-wait pull request) to `fetched`. An
/// error after some arrived keeps them.
async fn take_ready(
    consumer: &consumer::PullConsumer,
    max: usize,
    fetched: &mut Vec<jetstream::Message>,
) -> std::result::Result<(), courier_core::BoxError> {
    let mut ready = consumer.fetch().max_messages(max).messages().await?;
    while let Some(message) = ready.next().await {
        match message {
            Ok(message) => fetched.push(message),
            Err(_) if !fetched.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How many deliveries of `message` count: the server's, plus those of the original a copy
/// stands for ([`wire::EARLIER_DELIVERIES`]).
fn deliveries(message: &jetstream::Message) -> u32 {
    let delivered = message
        .info()
        .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(1);
    wire::earlier_deliveries(message.headers.as_ref()).saturating_add(delivered)
}

/// Puts back a message fetched for a `receive` that was dropped: a copy carrying its count
/// (minus this delivery, which nobody saw) goes to the stream, then the original is
/// terminated. If the copy cannot be published, the original is left to come back when its
/// `AckWait` runs out (counted).
async fn release(js: &jetstream::Context, subject: &str, message: jetstream::Message) {
    let earlier = deliveries(&message).saturating_sub(1);
    // The copy keeps the peer's headers, but not the server's own (`Nats-Msg-Id` would make
    // it a duplicate that is not stored, `Nats-Expected-*` a refused publish).
    let mut headers = async_nats::HeaderMap::new();
    if let Some(original) = &message.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.to_ascii_lowercase().starts_with("nats-") || name == wire::EARLIER_DELIVERIES {
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
    }
    headers.insert(wire::EARLIER_DELIVERIES, earlier.to_string().as_str());
    let stored = async {
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, message.payload.clone())
            .await
            .ok()?;
        ack.await.ok().filter(|ack| !ack.duplicate)
    };
    if tokio::time::timeout(RELEASE_TIMEOUT, stored)
        .await
        .ok()
        .flatten()
        .is_some()
    {
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, message.double_ack_with(AckKind::Term)).await;
    }
}

impl fmt::Debug for JetStreamMessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamMessageQueue")
            .field("base", &self.base)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageQueue for JetStreamMessageQueue {
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
        let client = core_nats::connect(&self.config).await?;
        let js = jetstream::new(client.clone());
        let stream = self.stream(&js, self.name()).await?;
        let ack_wait = self
            .base
            .options()
            .lock_timeout
            .min(Duration::from_secs(24 * 3600));
        let consumer = consumer_name(self.name(), self.config.stream.is_some());
        let create = stream.get_or_create_consumer(
            &consumer,
            consumer::pull::Config {
                durable_name: Some(consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                filter_subject: self.name().to_owned(),
                ..Default::default()
            },
        );
        let consumer: consumer::PullConsumer = self.within("create the consumer", create).await?;
        // The consumer may be older than this queue, made with another lock timeout: its
        // `AckWait` is what renewals must keep up with.
        let ack_wait = consumer.cached_info().config.ack_wait;
        *self.state.lock() = Some(Connected {
            client,
            js,
            stream,
            consumer,
            ack_wait,
        });
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
        // Fetches of dropped receives put their messages back before the connection goes.
        self.fetches.close();
        let _ = tokio::time::timeout(FETCH_GRACE, self.fetches.wait()).await;
        self.fetches.reopen();
        let connected = self.state.lock().take();
        if let Some(connected) = connected {
            let _ =
                tokio::time::timeout(self.config.connect_timeout, connected.client.drain()).await;
        }
        self.base.changed(correlation_id, "Closed");
        Ok(())
    }

    async fn read_message_count(&self) -> Result<usize> {
        let connected = self.connected()?;
        let info = self
            .within("read the consumer", connected.consumer.get_info())
            .await?;
        Ok(usize::try_from(info.num_pending).unwrap_or(usize::MAX))
    }

    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()> {
        let connected = self.connected()?;
        let envelope = self.base.prepare_send(envelope)?;
        self.publish(&connected.js, self.name(), &envelope).await?;
        self.base.sent(correlation_id, &envelope);
        Ok(())
    }

    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        let connected = self.connected()?;
        let envelopes = self.base.prepare_batch(envelopes)?;
        if envelopes.is_empty() {
            return Ok(());
        }
        self.publish_all(&connected.js, self.name(), &envelopes)
            .await?;
        self.base.sent_batch(correlation_id, &envelopes);
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
        let connected = self.connected()?;
        let info = self
            .within("read the consumer", connected.consumer.get_info())
            .await?;
        let mut peeked = Vec::new();
        let mut sequence = info.delivered.stream_sequence + 1;
        while peeked.len() < message_count {
            // The first message of this queue's subject from `sequence` on.
            let get = connected
                .stream
                .raw_message_builder()
                .sequence(sequence)
                .next_by_subject(self.name().to_owned())
                .send();
            match tokio::time::timeout(self.config.connect_timeout, get).await {
                Ok(Ok(raw)) => {
                    sequence = raw.sequence + 1;
                    let mut envelope =
                        wire::envelope(Some(&raw.headers), raw.payload, chrono::Utc::now());
                    envelope.set_delivery_count(0);
                    peeked.push(envelope);
                }
                Ok(Err(e)) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Ok(Err(e)) => return Err(self.error("peek", e)),
                Err(_) => return Err(self.timed_out("peek")),
            }
        }
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
        let connected = self.connected()?;
        let mut taken = Vec::new();
        if max == 0 {
            return Ok(taken);
        }
        let deadline = deadline_after(tokio::time::Instant::now(), wait_timeout);
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut failed = None;
            for message in self.fetch(&connected, wait, max).await? {
                let delivered = deliveries(&message);
                let mut envelope = wire::envelope(
                    message.headers.as_ref(),
                    message.payload.clone(),
                    chrono::Utc::now(),
                );
                envelope.set_delivery_count(delivered);
                let lock = JsLock {
                    message,
                    keepalive: parking_lot::Mutex::new(None),
                };
                if self.base.is_spent(delivered.saturating_sub(1)) {
                    // Delivered again after its last allowed delivery (its lock expired). A
                    // failure leaves it to come back; the batch taken so far is returned.
                    if let Err(e) = self.bury(&connected, &envelope, &lock).await {
                        failed.get_or_insert(e);
                    }
                    continue;
                }
                envelope.set_lock_token(Some(LockToken::new(lock)));
                self.base.received(correlation_id, &envelope);
                taken.push(envelope);
            }
            // A message that could not be dead-lettered comes back later; the error is returned
            // only when nothing else was taken.
            match failed {
                Some(e) if taken.is_empty() => return Err(e),
                _ if !taken.is_empty() || tokio::time::Instant::now() >= deadline => {
                    return Ok(taken);
                }
                _ => {}
            }
        }
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        self.base.check_open()?;
        let Some(lock) = Self::lock_of(message) else {
            return Ok(());
        };
        if message.lock_token().is_some_and(LockToken::is_settled) {
            return Ok(());
        }
        let ack_wait = self.connected()?.ack_wait;
        lock.stop_keepalive();
        self.within("renew a lock", lock.message.ack_with(AckKind::Progress))
            .await?;
        if lock_timeout > ack_wait {
            // In progress until `lock_timeout` from now: one more `+WPI` every half `AckWait`,
            // the last one when less than an `AckWait` is left (the lock may outlast the
            // deadline by up to an `AckWait`, never fall short of it).
            let stop = CancellationToken::new();
            let until = deadline_after(tokio::time::Instant::now(), lock_timeout);
            let (message, stopped) = (lock.message.clone(), stop.clone());
            let every = (ack_wait / 2).max(Duration::from_millis(10));
            if let Some(older) = lock.keepalive.lock().replace(stop) {
                older.cancel();
            }
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stopped.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero()
                        || message.ack_with(AckKind::Progress).await.is_err()
                        || left <= ack_wait
                    {
                        return;
                    }
                }
            });
        }
        self.base.settled(Settled::RenewedLock, message);
        Ok(())
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        lock.stop_keepalive();
        self.within("acknowledge", lock.message.double_ack())
            .await?;
        token.settle();
        self.base.settled(Settled::Completed, message);
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        lock.stop_keepalive();
        if self.base.is_spent(message.delivery_count()) {
            let connected = self.connected()?;
            self.bury(&connected, message, lock).await?;
        } else {
            self.within(
                "give a message back",
                lock.message.double_ack_with(AckKind::Nak(None)),
            )
            .await?;
        }
        token.settle();
        self.base.settled(Settled::Abandoned, message);
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        self.base.check_open()?;
        let Some((lock, token)) = Self::held(message) else {
            return Ok(());
        };
        let connected = self.connected()?;
        self.bury(&connected, message, lock).await?;
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
        let connected = self.connected()?;
        let purge = connected.stream.purge().filter(self.name()).into_future();
        self.within("purge the stream", purge).await?;
        self.base.changed(correlation_id, "Cleared");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_cover_what_nats_routes_to_them() {
        assert!(covers("orders", "orders"));
        assert!(covers("orders.*", "orders.eu"));
        assert!(covers("orders.>", "orders.eu.dlq"));
        assert!(covers("*.eu", "orders.eu"));
        assert!(!covers("orders", "orders.eu"));
        assert!(!covers("orders.*", "orders.eu.dlq"));
        assert!(!covers("orders.>", "orders"));
        assert!(!covers("orders.eu", "orders"));
        assert!(!covers("payments.>", "orders.eu"));
    }

    #[test]
    fn names_are_escaped_for_streams_and_consumers() {
        assert_eq!(stream_name("a.b c"), "COURIER_a_2Eb_20c");
        assert_eq!(consumer_name("a.b", true), "courier-a_2Eb");
        assert_eq!(consumer_name("a.b", false), CONSUMER);
    }
}
