//! [`RabbitMqBroker`]: the push-layer half of a RabbitMQ queue. Publishes with confirms,
//! consumes with manual acknowledgements and a prefetch bound, reconnects the consumer with
//! backoff, and settles each delivery on the channel that delivered it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use courier_core::backend::{Closed, MessageSink, PushBroker, Redelivery};
use courier_core::{Error, ErrorKind, MessageEnvelope, MessagingCapabilities, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Consumer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RabbitMqConfig;
use crate::link::{Link, Links, answer, declare_queue};
use crate::{BACKEND, wire};

/// A delivery of RabbitMQ, as the queue holds it: settled on the channel that delivered it,
/// never on another (delivery tags are per channel). One dropped unsettled (a cancelled
/// settle, a queue dropped without `close`) is given back to the broker (a requeueing nack)
/// from a task, so that it never sits unacknowledged on a live channel.
#[derive(Debug)]
pub struct RabbitMqDelivery {
    acker: Acker,
    /// The message's properties as delivered, for copies (dead letters, put back uncounted).
    properties: BasicProperties,
}

impl RabbitMqDelivery {
    /// The properties of a copy of this delivery: the original's, headers included, without
    /// the delivery counts; with `earlier` deliveries to carry, if any.
    fn copy_properties(&self, earlier: Option<u32>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(original) = self.properties.headers() {
            for (key, value) in original {
                let counting = [wire::EARLIER_DELIVERIES, "x-delivery-count"];
                if !counting.contains(&key.as_str()) {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some(earlier) = earlier {
            headers.insert(
                wire::EARLIER_DELIVERIES.into(),
                AMQPValue::LongLongInt(earlier.into()),
            );
        }
        self.properties.clone().with_headers(headers)
    }
}

impl Drop for RabbitMqDelivery {
    fn drop(&mut self) {
        if !self.acker.usable() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acker = self.acker.clone();
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                let _ = tokio::time::timeout(GIVE_BACK_TIMEOUT, acker.nack(requeue)).await;
            });
        }
    }
}

/// How long a delivery dropped unsettled waits for its nack.
const GIVE_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The broker half of a [`RabbitMqMessageQueue`](crate::RabbitMqMessageQueue).
pub struct RabbitMqBroker {
    shared: Arc<Shared>,
}

struct Shared {
    links: Links,
    /// The consumer task of the current subscription: its stop signal and handle. The task
    /// ends with its channel, kept open until `disconnect` or the next subscription so that
    /// the queue can still settle what it delivered.
    consumer: parking_lot::Mutex<Option<(CancellationToken, JoinHandle<Option<Channel>>)>>,
    /// Channels of ended subscriptions, closed on `disconnect` or the next subscription.
    retired: parking_lot::Mutex<Vec<Channel>>,
}

impl RabbitMqBroker {
    pub(crate) fn new(config: RabbitMqConfig) -> Self {
        RabbitMqBroker {
            shared: Arc::new(Shared {
                links: Links::new(config),
                consumer: parking_lot::Mutex::new(None),
                retired: parking_lot::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &RabbitMqConfig {
        self.shared.links.config()
    }

    /// Stops the consumer task, if any, and keeps its channel for settling.
    async fn stop_consumer(&self) {
        let consumer = self.shared.consumer.lock().take();
        if let Some((stop, task)) = consumer {
            stop.cancel();
            if let Ok(Some(channel)) = task.await {
                self.shared.retired.lock().push(channel);
            }
        }
    }

    /// Closes the channels of ended subscriptions: the broker gives back what they delivered
    /// and the queue did not settle.
    async fn close_retired(&self) {
        let retired = std::mem::take(&mut *self.shared.retired.lock());
        for channel in retired {
            if channel.status().connected() {
                let close = channel.close(200, "courier consumer stopped".into());
                let _ = answer(self.config(), "close a channel", close).await;
            }
        }
    }
}

impl Shared {
    fn config(&self) -> &RabbitMqConfig {
        self.links.config()
    }

    /// Puts back a delivery the queue never handed out, without counting a delivery: a copy
    /// that carries the original's count goes to the queue, then the original is
    /// acknowledged. If the copy cannot be published, the delivery is requeued (counted).
    /// `payload` is the message's body, `earlier` its deliveries before this one.
    async fn release(&self, payload: &[u8], earlier: u32, handle: RabbitMqDelivery) -> Result<()> {
        if !handle.acker.usable() {
            // Its channel died: RabbitMQ delivers it again by itself.
            return Ok(());
        }
        let properties = handle.copy_properties(Some(earlier));
        let queue = self.config().queue.clone();
        if let Err(e) = self.publish("", &queue, payload, properties).await {
            requeue(self.config(), &handle).await;
            return Err(e);
        }
        let ack = handle.acker.ack(BasicAckOptions::default());
        let _ = settle(self.config(), "acknowledge", &handle.acker, ack).await;
        Ok(())
    }

    /// Publishes `body` with `properties` to `exchange` with `routing_key` and waits for the
    /// broker's confirm; a message no queue takes is an error, not a loss.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        match self
            .try_publish(exchange, routing_key, body, properties)
            .await?
        {
            Routed::Yes => Ok(()),
            Routed::No(why) => Err(unroutable(exchange, routing_key, &why, self.config())),
        }
    }

    /// Publishes a copy of the delivered `message` to the dead-letter queue, declaring it
    /// first if it does not exist and `auto_create` is on.
    async fn dead_letter(
        &self,
        message: &MessageEnvelope,
        handle: &RabbitMqDelivery,
    ) -> Result<()> {
        let config = self.config();
        let queue = config.dead_letter_queue.as_str();
        let properties = handle.copy_properties(None);
        let routed = self
            .try_publish("", queue, &message.message, properties.clone())
            .await?;
        if let Routed::No(why) = routed {
            if !config.auto_create {
                return Err(unroutable("", queue, &why, config));
            }
            let link = self.links.get().await?;
            let declare = crate::link::declare_dead_letter_queue(&link.publisher, config);
            answer(config, "declare the dead-letter queue", declare).await?;
            self.publish("", queue, &message.message, properties)
                .await?;
        }
        Ok(())
    }

    /// Publishes and waits for the confirm: whether a queue took the message.
    async fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Routed> {
        let config = self.config();
        let link = self.links.get().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let publish = async {
            link.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        routed(config, answer(config, "publish", publish).await?)
    }

    /// Publishes every envelope to the queue, then awaits their confirms together (one window
    /// of unconfirmed publishes, not a round trip each).
    async fn publish_batch(&self, envelopes: &[MessageEnvelope]) -> Result<()> {
        let config = self.config();
        let (exchange, routing_key) = destination(config);
        let link = self.links.get().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let properties = wire::properties(envelope, config.persistent)
                .map_err(|e| e.with_backend(BACKEND).with_queue(&config.queue))?;
            let publish = link.publisher.basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &envelope.message,
                properties,
            );
            confirms.push(answer(config, "publish", publish).await?);
        }
        for confirm in confirms {
            if let Routed::No(why) = routed(config, answer(config, "publish", confirm).await?)? {
                return Err(unroutable(exchange, routing_key, &why, config));
            }
        }
        Ok(())
    }
}

/// Where `send` publishes: the exchange and routing key of `config`.
fn destination(config: &RabbitMqConfig) -> (&str, &str) {
    if config.exchange.is_empty() {
        ("", config.queue.as_str())
    } else {
        (config.exchange.as_str(), config.routing_key.as_str())
    }
}

/// What a publisher confirm says: whether a queue took the message.
fn routed(config: &RabbitMqConfig, confirmation: Confirmation) -> Result<Routed> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Routed::Yes),
        Confirmation::Ack(Some(returned)) => {
            Ok(Routed::No(returned.reply_text.as_str().to_owned()))
        }
        Confirmation::Nack(_) => Err(Error::new(
            ErrorKind::Backend,
            "RabbitMQ refused the message (negative publisher confirm)",
        )
        .with_backend(BACKEND)
        .with_queue(&config.queue)),
    }
}

impl RabbitMqBroker {
    /// The error of settling a delivery whose channel closed: the lock is lost, and the
    /// broker delivers the message again.
    fn lost(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!(
                "cannot {what}: the channel that delivered the message closed, so its lock is lost; RabbitMQ delivers it again"
            ),
        )
        .with_backend(BACKEND)
        .with_queue(&self.config().queue)
    }
}

impl Drop for RabbitMqBroker {
    /// A queue dropped without `close`: stops the consumer and closes the connection (from a
    /// task, when a runtime is there), so that RabbitMQ gives its messages to others.
    fn drop(&mut self) {
        let consumer = self.shared.consumer.lock().take();
        if let Some((stop, _)) = &consumer {
            stop.cancel();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        runtime.spawn(async move {
            if let Some((_, task)) = consumer {
                let _ = task.await;
            }
            let retired = std::mem::take(&mut *shared.retired.lock());
            drop(retired);
            shared.links.close().await;
        });
    }
}

impl fmt::Debug for RabbitMqBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBroker")
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PushBroker for RabbitMqBroker {
    type Handle = RabbitMqDelivery;

    fn capabilities(&self) -> MessagingCapabilities {
        if self.config().no_queue {
            // Send only.
            return MessagingCapabilities::new(
                false, true, false, false, false, false, false, false, false,
            );
        }
        // AMQP has no peek that leaves a message to other consumers: a get takes it, and
        // giving it back counts a delivery.
        MessagingCapabilities::new(true, true, true, false, false, true, true, true, true)
    }

    fn redelivery(&self) -> Redelivery {
        Redelivery::Broker
    }

    async fn connect(&self, _correlation_id: Option<&str>) -> Result<()> {
        self.shared.links.get_once().await.map(drop)
    }

    async fn disconnect(&self, _correlation_id: Option<&str>) -> Result<()> {
        self.stop_consumer().await;
        self.close_retired().await;
        self.shared.links.close().await;
        Ok(())
    }

    async fn subscribe(
        &self,
        _correlation_id: Option<&str>,
        sink: MessageSink<RabbitMqDelivery>,
    ) -> Result<()> {
        // The consumer runs in a task of its own; this waits until it consumes. An earlier
        // subscription ended (the queue gave back what it held first), so its channel closes.
        self.stop_consumer().await;
        self.close_retired().await;
        if self.config().no_queue {
            // Send only: nothing to consume.
            return Ok(());
        }
        let (started, consuming) = oneshot::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(deliver(self.shared.clone(), sink, stop.clone(), started));
        *self.shared.consumer.lock() = Some((stop, task));
        match consuming.await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Backend,
                "the RabbitMQ consumer task ended before it started",
            )
            .with_backend(BACKEND)
            .with_queue(&self.config().queue)),
        }
    }

    async fn unsubscribe(&self, _correlation_id: Option<&str>) -> Result<()> {
        self.stop_consumer().await;
        Ok(())
    }

    async fn send(&self, _correlation_id: Option<&str>, envelope: &MessageEnvelope) -> Result<()> {
        self.shared
            .publish_batch(std::slice::from_ref(envelope))
            .await
    }

    async fn send_batch(
        &self,
        _correlation_id: Option<&str>,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        self.shared.publish_batch(envelopes).await
    }

    async fn ready_count(&self) -> Result<usize> {
        let link = self.shared.links.get().await?;
        let config = self.config();
        let declare = declare_queue(
            &link.publisher,
            config,
            &config.queue,
            QueueDeclareOptions::default().passive(),
        );
        let queue = answer(config, "count the queue", declare).await?;
        Ok(usize::try_from(queue.message_count()).unwrap_or(usize::MAX))
    }

    async fn purge(&self) -> Result<()> {
        let link = self.shared.links.get().await?;
        let purge = link.publisher.queue_purge(
            self.config().queue.as_str().into(),
            QueuePurgeOptions::default(),
        );
        answer(self.config(), "purge the queue", purge).await?;
        Ok(())
    }

    async fn complete(&self, _message: &MessageEnvelope, handle: RabbitMqDelivery) -> Result<()> {
        let ack = handle.acker.ack(BasicAckOptions::default());
        match settle(self.config(), "acknowledge", &handle.acker, ack).await? {
            true => Ok(()),
            false => Err(self.lost("complete")),
        }
    }

    async fn abandon(&self, _message: &MessageEnvelope, handle: RabbitMqDelivery) -> Result<()> {
        requeue(self.config(), &handle).await;
        Ok(())
    }

    async fn release(&self, message: &MessageEnvelope, handle: RabbitMqDelivery) -> Result<()> {
        self.shared
            .release(&message.message, message.delivery_count(), handle)
            .await
    }

    // Publishes a copy to the dead-letter queue (confirmed), then acknowledges the delivery:
    // works on any queue, whoever declared it. A crash between the two leaves the message in
    // both (at least once, never none); a cancelled call drops the delivery, which is then
    // given back (see `RabbitMqDelivery`).
    async fn move_to_dead_letter(
        &self,
        message: &MessageEnvelope,
        handle: RabbitMqDelivery,
    ) -> Result<()> {
        if !handle.acker.usable() {
            return Err(self.lost("move to the dead-letter queue"));
        }
        if let Err(e) = self.shared.dead_letter(message, &handle).await {
            // Not dead-lettered: back to the queue, to try again.
            let _ = self.abandon(message, handle).await;
            return Err(e);
        }
        self.complete(message, handle).await
    }
}

/// Whether a published message reached a queue.
enum Routed {
    Yes,
    /// No queue took it; the broker's reason.
    No(String),
}

/// The error of a message no queue took.
fn unroutable(exchange: &str, routing_key: &str, why: &str, config: &RabbitMqConfig) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "RabbitMQ routed the message to no queue (exchange `{exchange}`, routing key `{routing_key}`): {why}"
        ),
    )
    .with_backend(BACKEND)
    .with_queue(&config.queue)
}

/// Gives a delivery back to the broker (a requeueing `nack`, which counts a delivery); a
/// closed channel gave it back already.
async fn requeue(config: &RabbitMqConfig, handle: &RabbitMqDelivery) {
    if !handle.acker.usable() {
        return;
    }
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let nack = handle.acker.nack(requeue);
    let _ = settle(config, "give the message back", &handle.acker, nack).await;
}

/// Waits for an acknowledgement `call` of `acker`: `Ok(false)` if its channel dies first (the
/// broker delivers the message again; lapin may never answer a call its dead channel held).
async fn settle(
    config: &RabbitMqConfig,
    what: &str,
    acker: &Acker,
    call: impl std::future::Future<Output = lapin::Result<bool>>,
) -> Result<bool> {
    let died = async {
        while !acker.poisoned() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        answered = answer(config, what, call) => answered,
        () = died => Ok(false),
    }
}

/// Opens a consuming channel on `link`: prefetch, manual acknowledgements.
async fn consume(link: &Link, config: &RabbitMqConfig) -> Result<(Channel, Consumer)> {
    let start = async {
        let channel = link.connection.create_channel().await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    };
    answer(config, "consume", start).await
}

/// The consumer task. Consumes (reporting the first attempt to `started`), then pushes every
/// delivery into `sink` until `stop` or until the sink refuses one; when the channel or the
/// connection dies, forgets what that channel delivered and the queue has not handed out
/// (the broker delivers it again), reconnects with backoff and consumes again. Returns its
/// last channel, still open, for the queue to settle what it holds.
async fn deliver(
    shared: Arc<Shared>,
    sink: MessageSink<RabbitMqDelivery>,
    stop: CancellationToken,
    started: oneshot::Sender<Result<()>>,
) -> Option<Channel> {
    let first = match shared.links.get().await {
        Ok(link) => consume(&link, shared.config()).await,
        Err(e) => Err(e),
    };
    let (mut channel, mut consumer) = match first {
        Ok(consuming) => {
            let _ = started.send(Ok(()));
            consuming
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return None;
        }
    };
    loop {
        if let Some(stopped) = push_all(&shared, &sink, &stop, &channel, &mut consumer).await {
            return stopped.then_some(channel);
        }
        // The channel is gone (or the broker cancelled the consumer): whatever it delivered
        // comes back from the broker.
        if channel.status().connected() {
            let close = channel.close(200, "courier consumer restarts".into());
            let _ = answer(shared.config(), "close a channel", close).await;
        }
        let forgotten = sink.forget(|d| !d.acker.usable());
        if forgotten > 0 {
            tracing::debug!(queue = %shared.config().queue, forgotten, "Dropped deliveries of a closed channel");
        }
        (channel, consumer) = tokio::select! {
            () = stop.cancelled() => return None,
            fresh = reconsume(&shared) => fresh,
        };
    }
}

/// Pushes the deliveries of `consumer` into `sink`. Returns `None` when the consumer ends (its
/// channel died), `Some(true)` when stopped by `stop` or a closed sink, after cancelling the
/// consumer and putting back what it delivered meanwhile.
async fn push_all(
    shared: &Shared,
    sink: &MessageSink<RabbitMqDelivery>,
    stop: &CancellationToken,
    channel: &Channel,
    consumer: &mut Consumer,
) -> Option<bool> {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                tracing::warn!(queue = %shared.config().queue, error = %e, "RabbitMQ consumer failed; reconnecting");
                return None;
            }
            None => return None,
        };
        let (envelope, handle) = received(delivery);
        // Kept for a refused push: the body (shared, not copied) and the count.
        let (payload, earlier) = (envelope.message.clone(), envelope.delivery_count());
        // Not raced with `stop`: a cancelled push would drop the delivery, to be given back
        // counted. A push waiting for credits ends when the queue ends the subscription,
        // which it does before it stops the consumer.
        if let Err(Closed(handle)) = sink.push(envelope, handle).await {
            let _ = shared.release(&payload, earlier, handle).await;
            break;
        }
    }
    // Stop the flow, then put back what arrived before the broker heard it.
    let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
    let cancelled = answer(shared.config(), "cancel the consumer", cancel).await;
    if cancelled.is_ok() {
        // Only the wait for the next delivery is bounded: a release cut short between its copy
        // and its acknowledgement would leave the message twice in the queue.
        let next = std::time::Duration::from_secs(1);
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(next, consumer.next()).await {
            let (envelope, handle) = received(delivery);
            let _ = shared
                .release(&envelope.message, envelope.delivery_count(), handle)
                .await;
        }
    }
    Some(true)
}

/// The envelope and handle of a delivery.
fn received(delivery: lapin::message::Delivery) -> (MessageEnvelope, RabbitMqDelivery) {
    let (mut envelope, earlier) = wire::envelope(
        &delivery.properties,
        delivery.data,
        delivery.redelivered,
        chrono::Utc::now(),
    );
    envelope.set_delivery_count(earlier);
    (
        envelope,
        RabbitMqDelivery {
            acker: delivery.acker,
            properties: delivery.properties,
        },
    )
}

/// Consumes again on a live link, reconnecting with backoff as long as it takes.
async fn reconsume(shared: &Shared) -> (Channel, Consumer) {
    let mut backoff = courier_core::backend::Backoff::reconnect();
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let link = shared.links.get_patiently().await;
        match consume(&link, shared.config()).await {
            Ok(fresh) => {
                tracing::info!(queue = %shared.config().queue, "RabbitMQ consumer reconnected");
                return fresh;
            }
            Err(e) => {
                tracing::warn!(queue = %shared.config().queue, error = %e, "RabbitMQ consumer cannot restart; retrying");
            }
        }
    }
}
