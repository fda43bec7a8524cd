//! One queue's MQTT connection: rumqttc's event loop in a task of its own, what `send` waits
//! for, and the packet ids of the messages the queue holds.
//!
//! * **Sends wait for the broker.** At QoS 1 a `send` returns once the broker's PUBACK came
//!   (at QoS 0, once the packet was written). rumqttc names a publish only by the packet id it
//!   gives when it writes it, so sends are matched in order: each send queues its waiter and
//!   its request together, and each publish rumqttc writes with a new packet id takes the
//!   oldest waiter. A publish written again after a reconnect keeps its packet id and its
//!   waiter. A publish that a reconnect's new session would drop (rumqttc clears them when
//!   the broker lost the session) is carried over and written again.
//! * **Deliveries are acknowledged when completed** (manual acks). A packet id is only
//!   meaningful on the connection it came on: a message completed while the connection is
//!   down, or whose acknowledgement was not written before it broke, is acknowledged when the
//!   broker sends it again (with DUP) in the resumed session, and that copy is dropped; so is
//!   the copy of an envelope whose acknowledgement was written just before the connection
//!   broke (same packet id, same message id); ready messages of a lost connection are dropped from the buffer when
//!   the session resumes, since the broker sends them again. If the broker lost the session,
//!   nothing comes again and the buffer keeps what it has.
//! * **The event loop never waits for the queue.** Deliveries go to the queue's buffer
//!   through a task of each subscription, so a full buffer never stops the keep-alive, the
//!   acknowledgements or the sends. At QoS 1 the broker's in-flight window (Mosquitto: 20)
//!   bounds what it sends before acknowledgements; at QoS 0 messages beyond the buffer's
//!   `max_size` are dropped, with a warning, as a broker drops them for a slow subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier_core::backend::{MessageSink, TryPush};
use courier_core::{Error, ErrorKind, MessageEnvelope, Result};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, PubAck, PubRec, QoS, Request, Subscribe, SubscribeReasonCode, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{MAX_PACKET, MqttConfig, filter_matches};
use crate::{BACKEND, wire};

/// Requests the client may queue for the event loop before a send waits.
const REQUESTS: usize = 4096;
/// Publishes rumqttc keeps in flight (waiting for PUBACK) at once.
const IN_FLIGHT: u16 = 100;
/// Acknowledgements remembered per connection, to drop what the broker sends again when they
/// were lost with it: more than a broker's in-flight window (Mosquitto: 20).
const REMEMBERED_ACKS: usize = 1024;

/// How the broker delivered a message: its packet id on one connection. The handle of the
/// messages an [`MqttMessageQueue`](crate::MqttMessageQueue) holds.
#[derive(Debug)]
pub struct Delivery {
    pkid: u16,
    qos: QoS,
    /// The connection (its number) whose packet id `pkid` is.
    connection: AtomicU64,
    /// Completed while its connection was down: acknowledge it when it comes again.
    completed: AtomicBool,
    /// Dropped from the buffer: the broker sends it again.
    forgotten: AtomicBool,
    /// The sender's message id, for an envelope (raw payloads have none of their own).
    message_id: Option<String>,
}

impl Delivery {
    fn new(pkid: u16, qos: QoS, connection: u64, message_id: Option<String>) -> Arc<Self> {
        Arc::new(Delivery {
            pkid,
            qos,
            connection: AtomicU64::new(connection),
            completed: AtomicBool::new(false),
            forgotten: AtomicBool::new(false),
            message_id,
        })
    }

    fn at_least_once(&self) -> bool {
        self.qos != QoS::AtMostOnce
    }
}

type Item = (MessageEnvelope, Arc<Delivery>);

/// Sends waiting for the broker, in the order their requests were queued.
#[derive(Default)]
struct Publishes {
    /// Waiters whose publish rumqttc has not written yet.
    queued: VecDeque<oneshot::Sender<()>>,
    /// Waiters of written QoS 1 publishes, by packet id, until their PUBACK.
    written: HashMap<u16, oneshot::Sender<()>>,
}

impl Publishes {
    /// rumqttc wrote a publish with `pkid` (0 at QoS 0).
    fn written(&mut self, pkid: u16) {
        if pkid != 0 && self.written.contains_key(&pkid) {
            return; // written again after a reconnect
        }
        let Some(waiter) = self.queued.pop_front() else {
            tracing::warn!(pkid, "An MQTT publish was written that no send waits for");
            return;
        };
        if pkid == 0 {
            let _ = waiter.send(());
        } else {
            self.written.insert(pkid, waiter);
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(waiter) = self.written.remove(&pkid) {
            let _ = waiter.send(());
        }
    }
}

/// The packet ids of the QoS 1 messages delivered and not yet acknowledged.
#[derive(Default)]
struct Deliveries {
    /// The current connection's number (1 for the first).
    connection: u64,
    /// Whether it is up.
    up: bool,
    outstanding: HashMap<u16, Arc<Delivery>>,
    /// The last envelopes whose acknowledgement was written on this connection (packet id,
    /// message id), at most [`REMEMBERED_ACKS`].
    acknowledged: VecDeque<(u16, String)>,
    /// The same for the connection before, while its session resumes: an acknowledgement
    /// written just before the connection broke may never have reached the broker, which
    /// then sends the message again, with DUP, under the same packet id.
    acknowledged_before: VecDeque<(u16, String)>,
}

/// Where deliveries go: the current subscription, or a backlog until there is one.
#[derive(Default)]
struct Inbox {
    subscription: Option<(mpsc::UnboundedSender<Item>, MessageSink<Arc<Delivery>>)>,
    backlog: Vec<Item>,
}

/// What the event loop task and the queue share.
struct Shared {
    queue: String,
    config: MqttConfig,
    publishes: parking_lot::Mutex<Publishes>,
    deliveries: parking_lot::Mutex<Deliveries>,
    inbox: parking_lot::Mutex<Inbox>,
    /// Deliveries handed to a subscription's task and not pushed yet.
    in_transit: AtomicUsize,
    /// Who waits for the next SUBACK.
    suback: parking_lot::Mutex<Option<oneshot::Sender<Vec<SubscribeReasonCode>>>>,
    /// Whether the queue is subscribed (a new session subscribes again).
    subscribed: AtomicBool,
    /// Why the event loop ended, once it has.
    ended: parking_lot::Mutex<Option<String>>,
    /// QoS 0 messages dropped because the buffer was full.
    dropped: AtomicU64,
}

/// How many publishes of a batch await their acknowledgements together.
const PUBLISH_WINDOW: usize = 1_000;

/// An open MQTT connection.
pub(crate) struct Connection {
    client: AsyncClient,
    shared: Arc<Shared>,
    /// The event loop task; it hands the event loop back once the queue's DISCONNECT went out.
    task: JoinHandle<Option<EventLoop>>,
    /// Whether the session ends with the connection (a generated client id).
    end_session: bool,
}

impl Connection {
    /// Connects as `client_id` and starts the event loop; fails within `connect_timeout`.
    ///
    /// `end_session`: discard the broker's session on [`close`](Self::close).
    pub(crate) async fn open(
        queue: &str,
        config: &MqttConfig,
        client_id: &str,
        end_session: bool,
    ) -> Result<Connection> {
        let options = mqtt_options(config, client_id)?;
        let (client, mut eventloop) = AsyncClient::new(options, REQUESTS);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        let shared = Arc::new(Shared {
            queue: queue.to_owned(),
            config: config.clone(),
            publishes: parking_lot::Mutex::default(),
            deliveries: parking_lot::Mutex::default(),
            inbox: parking_lot::Mutex::default(),
            in_transit: AtomicUsize::new(0),
            suback: parking_lot::Mutex::default(),
            subscribed: AtomicBool::new(false),
            ended: parking_lot::Mutex::default(),
            dropped: AtomicU64::new(0),
        });
        let connected = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.session_present),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(config.connect_timeout, connected).await {
            Ok(Ok(session_present)) => {
                // The first connection: the queue is not subscribed yet.
                let _ = shared.connected(session_present);
            }
            Ok(Err(e)) => return Err(connect_error(config, queue, e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "cannot reach MQTT at {} within {:?} (options.connect_timeout)",
                        config.address(),
                        config.connect_timeout
                    ),
                )
                .with_backend(BACKEND)
                .with_queue(queue));
            }
        }
        let task = tokio::spawn(run(eventloop, shared.clone()));
        Ok(Connection {
            client,
            shared,
            task,
            end_session,
        })
    }

    /// Subscribes to the queue's topic and pushes what comes into `sink`; waits for the
    /// broker's SUBACK up to `connect_timeout`.
    pub(crate) async fn subscribe(&self, sink: MessageSink<Arc<Delivery>>) -> Result<()> {
        self.shared.attach(sink);
        let (answer, answered) = oneshot::channel();
        *self.shared.suback.lock() = Some(answer);
        self.shared.subscribed.store(true, Ordering::SeqCst);
        let config = &self.shared.config;
        let deadline = Instant::now() + config.connect_timeout;
        match tokio::time::timeout_at(
            deadline,
            self.client.subscribe(config.subscription(), config.qos),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.shared.gone("subscribe")),
            Err(_) => return Err(self.shared.timed_out("subscribe")),
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(codes)) if codes.contains(&SubscribeReasonCode::Failure) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the broker at {} refused the subscription to `{}` (not authorised?)",
                    config.address(),
                    config.subscription()
                ),
            )
            .with_backend(BACKEND)
            .with_queue(&self.shared.queue)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(self.shared.gone("subscribe")),
            Err(_) => Err(self.shared.timed_out("subscribe")),
        }
    }

    /// Stops pushing deliveries. The broker's subscription stays until the session ends.
    pub(crate) fn detach(&self) {
        self.shared.subscribed.store(false, Ordering::SeqCst);
        let mut inbox = self.shared.inbox.lock();
        inbox.subscription = None;
        inbox.backlog.clear();
    }

    /// Publishes `payloads` on `topic` in order, then waits for the broker's acknowledgements
    /// (see the module docs) together: pipelined, not a round trip each. At most
    /// `connect_timeout` in all.
    pub(crate) async fn publish_all(&self, topic: &str, payloads: Vec<Bytes>) -> Result<()> {
        let mut payloads = payloads.into_iter().peekable();
        while payloads.peek().is_some() {
            // A window at a time, each within its own `connect_timeout`.
            let deadline = Instant::now() + self.shared.config.connect_timeout;
            let mut answers = Vec::new();
            for payload in payloads.by_ref().take(PUBLISH_WINDOW) {
                answers.push(self.enqueue(topic, payload, deadline).await?);
            }
            for answered in answers {
                match tokio::time::timeout_at(deadline, answered).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(self.shared.gone("publish")),
                    Err(_) => return Err(self.shared.timed_out("publish")),
                }
            }
        }
        Ok(())
    }

    /// Hands one publish to rumqttc, waiting (until `deadline`) for room in its request
    /// channel; returns where its acknowledgement will arrive.
    async fn enqueue(
        &self,
        topic: &str,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<()>> {
        let config = &self.shared.config;
        let mut payload: Vec<u8> = payload.into();
        loop {
            if self.shared.ended.lock().is_some() {
                return Err(self.shared.gone("publish"));
            }
            {
                let mut publishes = self.shared.publishes.lock();
                match self
                    .client
                    .try_publish(topic, config.qos, config.retain, payload)
                {
                    Ok(()) => {
                        let (answer, answered) = oneshot::channel();
                        publishes.queued.push_back(answer);
                        return Ok(answered);
                    }
                    Err(rumqttc::ClientError::TryRequest(Request::Publish(back))) => {
                        payload = back.payload.into();
                    }
                    Err(_) => return Err(self.shared.gone("publish")),
                }
            }
            // The request channel is full (or closing): wait a little for room.
            if Instant::now() >= deadline {
                return Err(self.shared.timed_out("publish"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Acknowledges `delivery` (see the module docs for a connection that was lost).
    pub(crate) fn complete(&self, delivery: &Delivery) {
        if !delivery.at_least_once() {
            return;
        }
        // Decided and queued under the lock the event loop takes when the connection breaks:
        // an acknowledgement is queued only while its connection is up (and rumqttc drops
        // those the break catches in its queue).
        let deliveries = self.shared.deliveries.lock();
        let tracked = deliveries
            .outstanding
            .get(&delivery.pkid)
            .is_some_and(|held| std::ptr::eq(&**held, delivery));
        if !tracked {
            return; // its session is gone: nothing to acknowledge
        }
        // Tracked until the acknowledgement is written: if the connection breaks first, the
        // copy the broker sends again is acknowledged and dropped.
        delivery.completed.store(true, Ordering::SeqCst);
        let current =
            deliveries.up && delivery.connection.load(Ordering::SeqCst) == deliveries.connection;
        if current {
            let mut ack = rumqttc::Publish::new("", delivery.qos, Vec::new());
            ack.pkid = delivery.pkid;
            if self.client.try_ack(&ack).is_err() {
                // rumqttc's request queue is full: acknowledged when the broker sends the
                // message again after the next reconnect.
                tracing::warn!(queue = %self.shared.queue, pkid = delivery.pkid, "Could not queue an MQTT acknowledgement");
            }
        }
    }

    /// Takes back a message the queue held and gave back (it closed, or its subscription
    /// failed): the next subscription gets it again, unless it is settled or belongs to an
    /// earlier connection of the queue.
    pub(crate) fn give_back(&self, message: &MessageEnvelope, delivery: Arc<Delivery>) {
        if delivery.at_least_once() {
            let deliveries = self.shared.deliveries.lock();
            let tracked = deliveries
                .outstanding
                .get(&delivery.pkid)
                .is_some_and(|held| Arc::ptr_eq(held, &delivery));
            if !tracked || delivery.completed.load(Ordering::SeqCst) {
                return;
            }
        }
        self.shared.requeue((message.clone(), delivery));
    }

    /// Disconnects: a DISCONNECT the broker sees, then, with `end_session`, a clean session
    /// that discards what the broker kept for this client id. Bounded by `connect_timeout`.
    pub(crate) async fn close(mut self) {
        self.detach();
        let timeout = self.shared.config.connect_timeout;
        let disconnect = async {
            if self.client.disconnect().await.is_ok() {
                (&mut self.task).await.ok().flatten()
            } else {
                None
            }
        };
        let eventloop = match tokio::time::timeout(timeout, disconnect).await {
            Ok(Some(eventloop)) => Some(eventloop),
            _ => {
                self.task.abort();
                None
            }
        };
        self.shared.end("the queue closed");
        if let (true, Some(mut eventloop)) = (self.end_session, eventloop) {
            eventloop.network = None;
            eventloop.pending.clear();
            eventloop.mqtt_options.set_clean_session(true);
            let connected = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, connected).await;
        }
    }

    /// How many QoS 0 messages were dropped because the buffer was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Ends the subscription's task too (it holds a sender of its own channel).
        self.detach();
        self.task.abort();
    }
}

impl Shared {
    fn error(&self, kind: ErrorKind, message: String) -> Error {
        Error::new(kind, message)
            .with_backend(BACKEND)
            .with_queue(&self.queue)
    }

    /// The error of `what` when the event loop has ended.
    fn gone(&self, what: &str) -> Error {
        let why = self
            .ended
            .lock()
            .clone()
            .unwrap_or_else(|| "the connection ended".to_owned());
        self.error(
            ErrorKind::Connection,
            format!("cannot {what} on MQTT at {}: {why}", self.config.address()),
        )
    }

    fn timed_out(&self, what: &str) -> Error {
        self.error(
            ErrorKind::Timeout,
            format!(
                "cannot {what} on MQTT at {}: no answer within {:?} (options.connect_timeout); a publish may still be delivered",
                self.config.address(),
                self.config.connect_timeout
            ),
        )
    }

    /// Hands deliveries to `sink` from now on, with the backlog first.
    fn attach(self: &Arc<Self>, sink: MessageSink<Arc<Delivery>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inbox = self.inbox.lock();
        for item in inbox.backlog.drain(..) {
            self.in_transit.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(item);
        }
        inbox.subscription = Some((tx, sink.clone()));
        tokio::spawn(push(rx, sink, self.clone()));
    }

    /// A connection (the first, or a reconnection) is up.
    /// Returns whether the queue must subscribe again (a new session of a subscribed queue).
    #[must_use]
    fn connected(&self, session_present: bool) -> bool {
        let mut deliveries = self.deliveries.lock();
        deliveries.connection += 1;
        deliveries.up = true;
        deliveries.acknowledged_before = std::mem::take(&mut deliveries.acknowledged);
        if session_present {
            // The broker sends again what it delivered and was not acknowledged: drop the
            // copies that wait in the buffer, ready (those being received stay, and their
            // copy is dropped when it comes).
            let current = deliveries.connection;
            let sink = self
                .inbox
                .lock()
                .subscription
                .as_ref()
                .map(|(_, sink)| sink.clone());
            if let Some(sink) = sink {
                sink.forget(|delivery: &Arc<Delivery>| {
                    let again = delivery.at_least_once()
                        && delivery.connection.load(Ordering::SeqCst) < current
                        && !delivery.completed.load(Ordering::SeqCst);
                    if again {
                        delivery.forgotten.store(true, Ordering::SeqCst);
                    }
                    again
                });
            }
            deliveries
                .outstanding
                .retain(|_, delivery| !delivery.forgotten.load(Ordering::SeqCst));
        } else {
            // A new session: the broker forgot what it delivered, and the subscription.
            deliveries.outstanding.clear();
            deliveries.acknowledged_before.clear();
        }
        !session_present && self.subscribed.load(Ordering::SeqCst)
    }

    /// Keeps a delivery the subscription refused, or the queue gave back, for the next
    /// subscription: MQTT only sends an unacknowledged message again after a reconnect, and
    /// until then it takes one of the broker's in-flight slots.
    fn requeue(&self, item: Item) {
        self.inbox.lock().backlog.push(item);
    }

    /// rumqttc wrote the acknowledgement of `pkid`.
    fn acknowledged(&self, pkid: u16) {
        let mut deliveries = self.deliveries.lock();
        let done = deliveries
            .outstanding
            .get(&pkid)
            .is_some_and(|held| held.completed.load(Ordering::SeqCst));
        if done {
            if let Some(held) = deliveries.outstanding.remove(&pkid) {
                if let Some(id) = &held.message_id {
                    if deliveries.acknowledged.len() == REMEMBERED_ACKS {
                        deliveries.acknowledged.pop_front();
                    }
                    deliveries.acknowledged.push_back((pkid, id.clone()));
                }
            }
        }
    }

    fn disconnected(&self) {
        self.deliveries.lock().up = false;
    }

    /// The event loop ended, for `why`: sends and subscriptions waiting fail.
    fn end(&self, why: &str) {
        self.ended.lock().get_or_insert_with(|| why.to_owned());
        self.deliveries.lock().up = false;
        let mut publishes = self.publishes.lock();
        publishes.queued.clear();
        publishes.written.clear();
        self.suback.lock().take();
    }

    /// A message came. Returns the packet id and QoS to acknowledge at once, if any.
    fn received(&self, publish: rumqttc::Publish) -> Option<(u16, QoS)> {
        let qos1 = publish.qos != QoS::AtMostOnce;
        if !filter_matches(&self.config.topic, &publish.topic) {
            // An earlier subscription of a persistent session that this queue does not have.
            tracing::warn!(queue = %self.queue, topic = %publish.topic, "Dropped an MQTT message outside the queue's topic");
            return qos1.then_some((publish.pkid, publish.qos));
        }
        let (envelope, is_envelope) = wire::read(
            &publish.topic,
            publish.payload,
            self.config.serialize_envelope,
        );
        let delivery = if qos1 {
            let mut deliveries = self.deliveries.lock();
            let current = deliveries.connection;
            if let Some(held) = deliveries.outstanding.get(&publish.pkid).cloned() {
                if publish.dup && held.connection.load(Ordering::SeqCst) < current {
                    // Sent again in the resumed session: the queue holds it already.
                    held.connection.store(current, Ordering::SeqCst);
                    return held
                        .completed
                        .load(Ordering::SeqCst)
                        .then_some((publish.pkid, publish.qos));
                }
            }
            let before = deliveries
                .acknowledged_before
                .iter()
                .rposition(|(pkid, _)| *pkid == publish.pkid)
                .and_then(|at| deliveries.acknowledged_before.remove(at));
            if publish.dup && is_envelope && before.is_some_and(|(_, id)| id == envelope.message_id)
            {
                // Completed, and its acknowledgement lost with the connection.
                return Some((publish.pkid, publish.qos));
            }
            let delivery = Delivery::new(
                publish.pkid,
                publish.qos,
                current,
                is_envelope.then(|| envelope.message_id.clone()),
            );
            deliveries
                .outstanding
                .insert(publish.pkid, delivery.clone());
            delivery
        } else {
            Delivery::new(0, QoS::AtMostOnce, 0, None)
        };
        self.deliver((envelope, delivery));
        None
    }

    /// Puts a delivery in the buffer now if it fits and nothing waits ahead of it, else
    /// hands it to the subscription's task (or keeps it until there is a subscription).
    fn deliver(&self, (envelope, delivery): Item) {
        let mut inbox = self.inbox.lock();
        let Some((tx, sink)) = &inbox.subscription else {
            inbox.backlog.push((envelope, delivery));
            return;
        };
        let waiting = self.in_transit.load(Ordering::SeqCst);
        let (envelope, delivery) = if waiting == 0 {
            match sink.try_push(envelope, delivery) {
                Ok(()) => return,
                Err(TryPush::Full(envelope, delivery)) => (envelope, delivery),
                Err(TryPush::Closed(envelope, delivery)) => {
                    // The subscription ended: kept for the next one.
                    inbox.backlog.push((envelope, delivery));
                    return;
                }
            }
        } else {
            (envelope, delivery)
        };
        if !delivery.at_least_once() && waiting >= sink.credits() {
            drop(inbox);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(queue = %self.queue, dropped, "The queue's buffer is full: QoS 0 messages are dropped (options.max_size)");
            }
            return;
        }
        self.in_transit.fetch_add(1, Ordering::SeqCst);
        if tx.send((envelope, delivery)).is_err() {
            self.in_transit.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A subscription's task: pushes deliveries into its sink, in order, waiting for room.
async fn push(
    mut rx: mpsc::UnboundedReceiver<Item>,
    sink: MessageSink<Arc<Delivery>>,
    shared: Arc<Shared>,
) {
    while let Some((envelope, delivery)) = rx.recv().await {
        let pushed = sink.push(envelope.clone(), delivery).await;
        shared.in_transit.fetch_sub(1, Ordering::SeqCst);
        if let Err(refused) = pushed {
            // The subscription ended: this and the rest wait for the next one (the broker
            // would only send them again after a reconnect).
            shared.requeue((envelope, refused.0));
            break;
        }
    }
    rx.close();
    while let Some(item) = rx.recv().await {
        shared.in_transit.fetch_sub(1, Ordering::SeqCst);
        shared.requeue(item);
    }
}

/// What the event loop does after an event.
enum Flow {
    Continue,
    /// The queue's DISCONNECT went out.
    Closed,
}

/// The event loop task: polls rumqttc, reconnects, and hands back the event loop when the
/// queue's DISCONNECT went out (`None` when it gave the connection up).
async fn run(mut eventloop: EventLoop, shared: Arc<Shared>) -> Option<EventLoop> {
    let config = shared.config.clone();
    // Requests of a lost connection, kept from rumqttc until the next CONNACK: it drops them
    // when the broker lost the session, and they must go out anyway.
    let mut carried: VecDeque<Request> = VecDeque::new();
    // Publishes never written that came back from a lost connection, in send order: fed to
    // rumqttc one at a time, only when it would read its own request channel (see `gate`).
    let mut held: VecDeque<Request> = VecDeque::new();
    let mut failures = 0usize;
    loop {
        gate(&mut eventloop, &mut held);
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                for request in std::mem::take(&mut carried) {
                    if is_new_publish(&request) {
                        held.push_back(request);
                    } else {
                        eventloop.pending.push_back(request);
                    }
                }
                tracing::info!(queue = %shared.queue, session_present = ack.session_present, "Reconnected to MQTT at {}", config.address());
                if shared.connected(ack.session_present) {
                    // A new session: subscribe again, ahead of the requests waiting.
                    let subscribe = Subscribe::new(config.subscription(), config.qos);
                    eventloop.pending.push_front(Request::Subscribe(subscribe));
                }
            }
            Ok(event) => {
                if let Flow::Closed = handle(event, &shared, &mut eventloop) {
                    shared.end("the queue closed");
                    return Some(eventloop);
                }
            }
            Err(e) => {
                // What rumqttc read before the error belongs to the lost connection.
                while let Some(event) = eventloop.state.events.pop_front() {
                    let _ = handle(event, &shared, &mut eventloop);
                }
                shared.disconnected();
                // Acknowledgements queued since rumqttc cleaned up are dropped with the
                // others: the broker sends those messages again (with DUP) when the session
                // resumes, and they are acknowledged then.
                eventloop.clean();
                let mut lost = std::mem::take(&mut eventloop.pending);
                if lost.front().is_some_and(is_new_publish) {
                    // The one publish `gate` let through comes before the held ones.
                    carried.extend(lost.pop_front());
                }
                carried.extend(held.drain(..));
                carried.extend(lost.into_iter().filter(|r| !is_ack(r)));
                failures += 1;
                let give_up =
                    !config.retry_connect || config.max_reconnect.is_some_and(|max| failures > max);
                if give_up {
                    tracing::error!(queue = %shared.queue, error = %e, "Lost the connection to MQTT at {}; not reconnecting (options.retry_connect, options.max_reconnect)", config.address());
                    shared.end(&format!("the connection was lost ({e}) and retry_connect is off or max_reconnect reached"));
                    return None;
                }
                if failures == 1 {
                    tracing::warn!(queue = %shared.queue, error = %e, "Lost the connection to MQTT at {}; reconnecting every {:?}", config.address(), config.reconnect_timeout);
                } else {
                    tracing::debug!(queue = %shared.queue, error = %e, failures, "Reconnecting to MQTT failed");
                }
                tokio::time::sleep(config.reconnect_timeout).await;
            }
        }
    }
}

/// Handles an event of the current connection (anything but a CONNACK).
fn handle(event: Event, shared: &Shared, eventloop: &mut EventLoop) -> Flow {
    match event {
        Event::Incoming(Packet::Publish(publish)) => {
            if let Some((pkid, qos)) = shared.received(publish) {
                eventloop.pending.push_back(ack_request(pkid, qos));
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => shared.publishes.lock().acknowledged(ack.pkid),
        Event::Incoming(Packet::SubAck(ack)) => {
            let waiter = shared.suback.lock().take();
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(ack.return_codes);
                }
                None if ack.return_codes.contains(&SubscribeReasonCode::Failure) => {
                    tracing::error!(queue = %shared.queue, topic = %shared.config.subscription(), "The broker refused to subscribe the queue again after a reconnect");
                }
                None => {}
            }
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => shared.publishes.lock().written(pkid),
        Event::Outgoing(Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid)) => {
            shared.acknowledged(pkid);
        }
        Event::Outgoing(Outgoing::Disconnect) => return Flow::Closed,
        _ => {}
    }
    Flow::Continue
}

/// Feeds the held publishes to rumqttc as it would read its own request channel: one at a
/// time, at the front of `pending`, and only while fewer than its in-flight limit wait for a
/// PUBACK and no packet id collision is parked. rumqttc writes whatever is in `pending`
/// without those checks, and a second collision would overwrite the first publish.
fn gate(eventloop: &mut EventLoop, held: &mut VecDeque<Request>) {
    if held.is_empty() || eventloop.pending.front().is_some_and(is_new_publish) {
        return;
    }
    let open = eventloop.state.inflight() < IN_FLIGHT && eventloop.state.collision.is_none();
    if open {
        if let Some(request) = held.pop_front() {
            eventloop.pending.push_front(request);
        }
    }
}

/// A publish rumqttc has not given a packet id yet (never written).
fn is_new_publish(request: &Request) -> bool {
    matches!(request, Request::Publish(publish) if publish.pkid == 0)
}

fn is_ack(request: &Request) -> bool {
    matches!(request, Request::PubAck(_) | Request::PubRec(_))
}

/// The request that acknowledges a delivery of `qos` with `pkid`.
fn ack_request(pkid: u16, qos: QoS) -> Request {
    match qos {
        QoS::ExactlyOnce => Request::PubRec(PubRec::new(pkid)),
        _ => Request::PubAck(PubAck::new(pkid)),
    }
}

/// rumqttc's options for `config` as `client_id`.
fn mqtt_options(config: &MqttConfig, client_id: &str) -> Result<MqttOptions> {
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_keep_alive(config.keepalive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_manual_acks(true)
        .set_inflight(IN_FLIGHT)
        // At QoS 1 the broker keeps the session across a lost connection: what was published
        // meanwhile and what was not acknowledged comes when the queue reconnects.
        .set_clean_session(config.qos == QoS::AtMostOnce);
    let credential = config.credential();
    if let Some(user) = &credential.username {
        options.set_credentials(user.clone(), credential.password().unwrap_or_default());
    }
    if config.tls {
        let tls = crate::tls::client_config(&config.tls_files)?;
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    Ok(options)
}

/// The error of a failed first connect.
fn connect_error(config: &MqttConfig, queue: &str, e: ConnectionError) -> Error {
    let (kind, hint) = match &e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                (ErrorKind::Config, ": authentication failed")
            }
            ConnectReturnCode::BadClientId => {
                (ErrorKind::Config, ": the broker refuses the client id")
            }
            ConnectReturnCode::RefusedProtocolVersion => {
                (ErrorKind::Config, ": the broker does not speak MQTT 3.1.1")
            }
            _ => (ErrorKind::Connection, ": the broker is unavailable"),
        },
        _ if courier_core::backend::refused_handshake(&e) => (
            ErrorKind::Config,
            ": the TLS handshake failed (an untrusted server certificate? see options.tls_ca_file)",
        ),
        ConnectionError::Tls(_) => (ErrorKind::Config, ": TLS is misconfigured"),
        _ => (ErrorKind::Connection, ""),
    };
    Error::new(
        kind,
        format!("cannot connect to MQTT at {}{hint}", config.address()),
    )
    .with_source(e)
    .with_backend(BACKEND)
    .with_queue(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(body: &str) -> Request {
        Request::Publish(rumqttc::Publish::new(
            "t",
            QoS::AtLeastOnce,
            body.as_bytes(),
        ))
    }

    fn bodies(requests: &VecDeque<Request>) -> Vec<String> {
        requests
            .iter()
            .map(|r| match r {
                Request::Publish(p) => String::from_utf8_lossy(&p.payload).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn gate_feeds_held_publishes_one_at_a_time_and_only_when_rumqttc_would_read() {
        let (_client, mut eventloop) =
            AsyncClient::new(MqttOptions::new("gate", "127.0.0.1", 1883), 10);
        let mut held: VecDeque<Request> = [publish("a"), publish("b")].into();
        eventloop
            .pending
            .push_back(ack_request(7, QoS::AtLeastOnce));
        gate(&mut eventloop, &mut held);
        assert_eq!(
            bodies(&eventloop.pending)[0],
            "a",
            "the next one goes first"
        );
        assert_eq!(bodies(&held), ["b"]);
        // It waits at the front until written: nothing more is let through meanwhile.
        gate(&mut eventloop, &mut held);
        assert_eq!(eventloop.pending.len(), 2);
        assert_eq!(held.len(), 1);
        // Written; then a collision is parked: rumqttc would not read its queue, nor does this.
        eventloop.pending.pop_front();
        eventloop.state.collision = Some(rumqttc::Publish::new("t", QoS::AtLeastOnce, "x"));
        gate(&mut eventloop, &mut held);
        assert_eq!(held.len(), 1);
        eventloop.state.collision = None;
        gate(&mut eventloop, &mut held);
        assert!(held.is_empty());
        assert_eq!(bodies(&eventloop.pending)[0], "b");
    }

    #[test]
    fn acknowledgements_follow_the_delivery_qos() {
        assert!(matches!(
            ack_request(3, QoS::AtLeastOnce),
            Request::PubAck(PubAck { pkid: 3 })
        ));
        assert!(matches!(
            ack_request(3, QoS::ExactlyOnce),
            Request::PubRec(PubRec { pkid: 3 })
        ));
        assert!(is_ack(&ack_request(1, QoS::ExactlyOnce)));
        assert!(is_new_publish(&publish("x")));
    }
}
