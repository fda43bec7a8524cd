//! `CachedMessageQueue` on the push layer: the conformance suite over an in-process push
//! broker that, like MQTT or core NATS, drops what is published while nobody is subscribed,
//! once with the queue redelivering from its buffer and once with the broker redelivering
//! (as RabbitMQ does: abandoned and expired messages go back to it, counted); and the push layer's own promises against a broker that records how each delivery was
//! settled: handles given back once, credits, take-then-acknowledge, nothing stale on reopen,
//! dead letters counted once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use courier_conformance::{Features, Harness, conformance_tests};
use courier_core::backend::{MessageSink, PushBroker, QueueBase, Redelivery};
use courier_core::{
    CachedMessageQueue, ConfigParams, MessageEnvelope, MessageQueue, MessagingCapabilities, Result,
    async_trait,
};

/// Subscribers of one topic; a message goes to one of them, round robin.
#[derive(Default)]
struct Topic {
    sinks: Vec<(u64, MessageSink<u32>)>,
    next: usize,
}

fn topic(name: &str) -> Arc<Mutex<Topic>> {
    static TOPICS: OnceLock<Mutex<HashMap<String, Arc<Mutex<Topic>>>>> = OnceLock::new();
    let topics = TOPICS.get_or_init(Default::default);
    topics
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .clone()
}

/// Pushes `envelope` to one subscriber of `name`, as delivered `earlier` times before; its
/// handle is its delivery count.
async fn publish(name: &str, envelope: &MessageEnvelope, earlier: u32) {
    let sink = {
        let topic = topic(name);
        let mut topic = topic.lock().unwrap();
        if topic.sinks.is_empty() {
            return; // nobody listens: the message is gone, as on a push broker
        }
        let i = topic.next % topic.sinks.len();
        topic.next = topic.next.wrapping_add(1);
        topic.sinks[i].1.clone()
    };
    // A refused push (the subscriber just closed) is dropped, as the broker would.
    let mut envelope = envelope.clone();
    envelope.set_delivery_count(earlier);
    let _ = sink.push(envelope, earlier + 1).await;
}

struct LoopbackBroker {
    name: String,
    id: u64,
    /// Whether abandoned and expired messages come back to the broker, which publishes them
    /// again with their count.
    redelivers: bool,
}

#[async_trait]
impl PushBroker for LoopbackBroker {
    type Handle = u32;
    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }
    fn redelivery(&self) -> Redelivery {
        if self.redelivers {
            Redelivery::Broker
        } else {
            Redelivery::Queue
        }
    }
    async fn connect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn disconnect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _cid: Option<&str>, sink: MessageSink<u32>) -> Result<()> {
        topic(&self.name)
            .lock()
            .unwrap()
            .sinks
            .push((self.id, sink));
        Ok(())
    }
    async fn unsubscribe(&self, _cid: Option<&str>) -> Result<()> {
        topic(&self.name)
            .lock()
            .unwrap()
            .sinks
            .retain(|(id, _)| *id != self.id);
        Ok(())
    }
    async fn send(&self, _cid: Option<&str>, envelope: &MessageEnvelope) -> Result<()> {
        publish(&self.name, envelope, 0).await;
        Ok(())
    }
    async fn abandon(&self, message: &MessageEnvelope, deliveries: u32) -> Result<()> {
        if self.redelivers {
            publish(&self.name, message, deliveries).await;
        }
        Ok(())
    }
    async fn move_to_dead_letter(&self, message: &MessageEnvelope, _handle: u32) -> Result<()> {
        publish(&format!("{}.dlq", self.name), message, 0).await;
        Ok(())
    }
}

struct LoopbackHarness {
    redelivers: bool,
}

#[async_trait]
impl Harness for LoopbackHarness {
    fn backend(&self) -> &str {
        "loopback"
    }

    fn features(&self) -> Features {
        let mut f = Features::all();
        f.stores_unreceived = false;
        f.survives_reopen = false;
        f
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let mut config =
            ConfigParams::from_tuples([("name", name), ("options.autosubscribe", "true")]);
        for (k, v) in options {
            config.set(format!("options.{k}"), *v);
        }
        let base = QueueBase::from_config("loopback", &config, None)?;
        let broker = LoopbackBroker {
            name: name.to_owned(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
            redelivers: self.redelivers,
        };
        Ok(Arc::new(CachedMessageQueue::new(base, broker)))
    }
}

conformance_tests!(Some(LoopbackHarness { redelivers: false }), stress = 2);

/// The suite again, with the broker redelivering.
mod broker_redelivers {
    use super::*;
    conformance_tests!(Some(LoopbackHarness { redelivers: true }), stress = 2);
}

/// How a [`RecordingBroker`] settled its deliveries, by handle.
#[derive(Default, Debug)]
struct Settlements {
    completed: Vec<u64>,
    abandoned: Vec<u64>,
    dead: Vec<u64>,
}

/// A broker whose deliveries are numbered; it records every settlement, and its `complete`
/// takes `ack_delay` (a slow network).
#[derive(Clone, Default)]
struct RecordingBroker {
    sink: Arc<Mutex<Option<MessageSink<u64>>>>,
    settled: Arc<Mutex<Settlements>>,
    ack_delay: Duration,
    dead_letters: bool,
}

impl RecordingBroker {
    fn sink(&self) -> MessageSink<u64> {
        self.sink.lock().unwrap().clone().expect("subscribed")
    }
}

#[async_trait]
impl PushBroker for RecordingBroker {
    type Handle = u64;
    fn capabilities(&self) -> MessagingCapabilities {
        let all = MessagingCapabilities::all();
        MessagingCapabilities::new(
            all.can_message_count(),
            all.can_send(),
            all.can_receive(),
            all.can_peek(),
            all.can_peek_batch(),
            all.can_renew_lock(),
            all.can_abandon(),
            self.dead_letters,
            all.can_clear(),
        )
    }
    async fn connect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn disconnect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _cid: Option<&str>, sink: MessageSink<u64>) -> Result<()> {
        *self.sink.lock().unwrap() = Some(sink);
        Ok(())
    }
    async fn unsubscribe(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn send(&self, _cid: Option<&str>, _envelope: &MessageEnvelope) -> Result<()> {
        Ok(())
    }
    async fn complete(&self, _message: &MessageEnvelope, handle: u64) -> Result<()> {
        tokio::time::sleep(self.ack_delay).await;
        self.settled.lock().unwrap().completed.push(handle);
        Ok(())
    }
    async fn abandon(&self, _message: &MessageEnvelope, handle: u64) -> Result<()> {
        self.settled.lock().unwrap().abandoned.push(handle);
        Ok(())
    }
    async fn move_to_dead_letter(&self, _message: &MessageEnvelope, handle: u64) -> Result<()> {
        self.settled.lock().unwrap().dead.push(handle);
        Ok(())
    }
}

async fn recording_queue(
    broker: &RecordingBroker,
    options: &str,
) -> CachedMessageQueue<RecordingBroker> {
    let config = ConfigParams::from_string(&format!(
        "name={};options.autosubscribe=true;{options}",
        courier_conformance::unique_name("push")
    ))
    .unwrap();
    let queue = CachedMessageQueue::new(
        QueueBase::from_config("recording", &config, None).unwrap(),
        broker.clone(),
    );
    queue.open(None).await.unwrap();
    queue
}

fn envelope(i: u64) -> MessageEnvelope {
    MessageEnvelope::new(None, "t", i.to_string())
}

#[tokio::test]
async fn each_handle_reaches_the_broker_once_with_its_message() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "").await;
    for i in 0..3 {
        broker.sink().push(envelope(i), 100 + i).await.unwrap();
    }
    for _ in 0..3 {
        let m = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
        let n: u64 = m.message_as_string().unwrap().parse().unwrap();
        queue.complete(&m).await.unwrap();
        queue.complete(&m).await.unwrap(); // a second complete settles nothing
        assert_eq!(
            broker.settled.lock().unwrap().completed.last(),
            Some(&(100 + n))
        );
    }
    assert_eq!(
        broker.settled.lock().unwrap().completed,
        vec![100, 101, 102]
    );
}

#[tokio::test]
async fn credits_bound_what_the_queue_holds() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "options.max_size=3").await;
    let sink = broker.sink();
    for i in 0..3 {
        sink.push(envelope(i), i).await.unwrap();
    }
    assert_eq!(sink.credits(), 0);
    let fourth = tokio::spawn({
        let sink = sink.clone();
        async move { sink.push(envelope(3), 3).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fourth.is_finished(), "a push went past the credits");
    assert_eq!(queue.held(), 3);
    // A receive alone frees nothing (the message is still held); settling does.
    let m = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!fourth.is_finished());
    queue.complete(&m).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), fourth)
        .await
        .expect("the push got the freed credit")
        .unwrap()
        .unwrap();
    assert_eq!(queue.held(), 3);
}

#[tokio::test]
async fn a_lock_expiring_during_the_ack_cannot_settle_twice() {
    let broker = RecordingBroker {
        ack_delay: Duration::from_millis(300),
        ..Default::default()
    };
    let queue = Arc::new(recording_queue(&broker, "options.lock_timeout=100").await);
    broker.sink().push(envelope(0), 7).await.unwrap();
    let first = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    // The first holder's acknowledgement is slow: its lock would expire meanwhile.
    let completing = tokio::spawn({
        let queue = queue.clone();
        async move { queue.complete(&first).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = queue
        .receive(None, Duration::from_millis(300))
        .await
        .unwrap();
    if let Some(second) = &second {
        queue.complete(second).await.unwrap();
    }
    completing.await.unwrap().unwrap();
    assert!(
        second.is_none(),
        "a message being acknowledged was redelivered"
    );
    assert_eq!(broker.settled.lock().unwrap().completed, vec![7]);
}

#[tokio::test]
async fn close_gives_held_messages_back_and_refuses_later_pushes() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "").await;
    let sink = broker.sink();
    sink.push(envelope(0), 1).await.unwrap();
    sink.push(envelope(1), 2).await.unwrap();
    let _locked = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    queue.close(None).await.unwrap();
    let mut abandoned = broker.settled.lock().unwrap().abandoned.clone();
    abandoned.sort_unstable();
    assert_eq!(abandoned, vec![1, 2], "held messages were not given back");
    let refused = sink.push(envelope(2), 3).await.unwrap_err();
    assert_eq!(refused.0, 3, "the refused handle comes back");
    assert!(sink.is_closed());
    queue.open(None).await.unwrap();
    assert_eq!(
        queue.read_message_count().await.unwrap(),
        0,
        "stale messages came back"
    );
    broker.sink().push(envelope(3), 4).await.unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 1);
}

#[tokio::test]
async fn spent_and_dead_lettered_messages_settle_at_the_broker() {
    let broker = RecordingBroker {
        dead_letters: true,
        ..Default::default()
    };
    let queue = recording_queue(&broker, "options.max_deliveries=2").await;
    broker.sink().push(envelope(0), 10).await.unwrap();
    broker.sink().push(envelope(1), 11).await.unwrap();
    let a = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    queue.move_to_dead_letter(&a).await.unwrap();
    for _ in 0..2 {
        let b = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
        queue.abandon(&b).await.unwrap();
    }
    let settled = broker.settled.lock().unwrap();
    assert_eq!(settled.dead, vec![10, 11]);
    assert!(settled.completed.is_empty() && settled.abandoned.is_empty());
}

#[tokio::test]
async fn without_broker_dead_letters_spent_messages_stay_local_and_are_acknowledged() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "options.max_deliveries=1").await;
    broker.sink().push(envelope(0), 5).await.unwrap();
    let m = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    queue.abandon(&m).await.unwrap();
    assert_eq!(broker.settled.lock().unwrap().completed, vec![5]);
    let dead = queue.local_dead_letters();
    assert_eq!(dead.read_message_count().await.unwrap(), 1);
    assert_eq!(queue.read_message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn clear_acknowledges_what_it_removes() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "").await;
    broker.sink().push(envelope(0), 1).await.unwrap();
    broker.sink().push(envelope(1), 2).await.unwrap();
    queue.clear(None).await.unwrap();
    assert_eq!(broker.settled.lock().unwrap().completed, vec![1, 2]);
    assert_eq!(
        broker.sink().credits(),
        courier_core::backend::push::DEFAULT_CREDITS
    );
}

/// A broker that keeps every sink it was given; its `subscribe` takes `delay`, and fails the
/// first time when `fail_first`.
#[derive(Clone, Default)]
struct KeepSinks {
    sinks: Arc<Mutex<Vec<MessageSink<()>>>>,
    delay: Duration,
    fail_first: bool,
    /// How long `disconnect` takes, and how many times it was called.
    disconnect_delay: Duration,
    disconnects: Arc<AtomicU64>,
}

impl KeepSinks {
    fn sink(&self, i: usize) -> MessageSink<()> {
        self.sinks.lock().unwrap()[i].clone()
    }
}

#[async_trait]
impl PushBroker for KeepSinks {
    type Handle = ();
    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }
    async fn connect(&self, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn disconnect(&self, _: Option<&str>) -> Result<()> {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.disconnect_delay).await;
        Ok(())
    }
    async fn subscribe(&self, _: Option<&str>, sink: MessageSink<()>) -> Result<()> {
        let first = {
            let mut sinks = self.sinks.lock().unwrap();
            sinks.push(sink);
            sinks.len() == 1
        };
        tokio::time::sleep(self.delay).await;
        if first && self.fail_first {
            return Err(courier_core::Error::new(
                courier_core::ErrorKind::Connection,
                "broker down",
            ));
        }
        Ok(())
    }
    async fn unsubscribe(&self, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn send(&self, _: Option<&str>, _: &MessageEnvelope) -> Result<()> {
        Ok(())
    }
}

fn queue_over(broker: &KeepSinks, name: &str) -> CachedMessageQueue<KeepSinks> {
    let config = ConfigParams::from_tuples([("name", name)]);
    CachedMessageQueue::new(
        QueueBase::from_config("keep", &config, None).unwrap(),
        broker.clone(),
    )
}

#[tokio::test]
async fn a_cancelled_receive_does_not_undo_the_subscription() {
    let broker = KeepSinks {
        delay: Duration::from_millis(200),
        ..KeepSinks::default()
    };
    let queue = queue_over(&broker, "slow-subscribe");
    queue.open(None).await.unwrap();
    // The first operation is cancelled while the broker subscribes: the subscribe goes on.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), queue.peek(None)).await;
    assert!(cancelled.is_err());
    let first = broker.sink(0);
    assert!(
        !first.is_closed(),
        "a cancelled peek ended the subscription"
    );
    // The next operation waits for the same subscription instead of making another.
    assert!(queue.peek(None).await.unwrap().is_none());
    assert_eq!(broker.sinks.lock().unwrap().len(), 1, "subscribed twice");
    first.push(envelope(1), ()).await.unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 1);
    // Closing ends it: the sink refuses pushes.
    queue.close(None).await.unwrap();
    assert!(first.is_closed());
    assert!(first.push(envelope(2), ()).await.is_err());
}

#[tokio::test]
async fn a_cancelled_close_is_finished_by_the_next_close_or_open() {
    let broker = KeepSinks {
        disconnect_delay: Duration::from_millis(200),
        ..KeepSinks::default()
    };
    let queue = queue_over(&broker, "cancelled-close");
    queue.open(None).await.unwrap();
    assert!(queue.receive(None, Duration::ZERO).await.unwrap().is_none());
    let cancelled = tokio::time::timeout(Duration::from_millis(50), queue.close(None)).await;
    assert!(cancelled.is_err(), "the close was not cancelled");
    assert!(!queue.is_open());
    // The next close does the rest instead of returning at once.
    queue.close(None).await.unwrap();
    assert_eq!(broker.disconnects.load(Ordering::SeqCst), 2);
    assert!(broker.sink(0).is_closed());
    // Closed for good: another close has nothing left to do.
    queue.close(None).await.unwrap();
    assert_eq!(broker.disconnects.load(Ordering::SeqCst), 2);
    // And an open after a cancelled close finishes that close first.
    queue.open(None).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(50), queue.close(None)).await;
    assert!(cancelled.is_err());
    queue.open(None).await.unwrap();
    assert_eq!(broker.disconnects.load(Ordering::SeqCst), 4);
    assert!(queue.is_open());
    queue.close(None).await.unwrap();
}

#[tokio::test]
async fn a_failed_subscribe_is_reported_and_made_again() {
    let broker = KeepSinks {
        fail_first: true,
        ..KeepSinks::default()
    };
    let queue = queue_over(&broker, "fail-once");
    queue.open(None).await.unwrap();
    let wait = Duration::from_millis(100);
    let e = queue.receive(None, wait).await.unwrap_err();
    assert_eq!(e.kind(), courier_core::ErrorKind::Connection);
    assert!(e.to_string().contains("broker down"), "{e}");
    assert!(
        broker.sink(0).is_closed(),
        "the sink of a failed subscribe takes pushes"
    );
    assert!(queue.receive(None, wait).await.unwrap().is_none());
    assert!(!broker.sink(1).is_closed());
}

#[tokio::test]
async fn a_huge_max_size_is_capped_not_a_panic() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "options.max_size=18446744073709551615").await;
    assert!(broker.sink().credits() > 1_000_000);
    queue.close(None).await.unwrap();
}

#[tokio::test]
async fn a_queue_dropped_without_close_refuses_pushes() {
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "options.max_size=1").await;
    let sink = broker.sink();
    sink.push(envelope(0), 1).await.unwrap();
    drop(queue);
    let pushed = tokio::time::timeout(Duration::from_secs(1), sink.push(envelope(1), 2))
        .await
        .expect("a push into a dropped queue waited forever");
    assert_eq!(pushed.unwrap_err().0, 2);
}

/// `try_push` hands a message over while a credit is free, gives it back when the queue is
/// full (and again after a receive frees one, takes it), and after close says `Closed`.
#[tokio::test]
async fn try_push_takes_what_fits_and_gives_back_the_rest() {
    use courier_core::backend::TryPush;
    let broker = RecordingBroker::default();
    let queue = recording_queue(&broker, "options.max_size=1").await;
    let sink = broker.sink();
    sink.try_push(envelope(0), 1).unwrap();
    let full = sink.try_push(envelope(1), 2).unwrap_err();
    let TryPush::Full(back, handle) = full else {
        panic!("expected Full, got {full:?}");
    };
    assert_eq!(handle, 2);
    let first = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    queue.complete(&first).await.unwrap();
    sink.try_push(back, handle).unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 1);
    queue.close(None).await.unwrap();
    assert!(matches!(
        sink.try_push(envelope(2), 3),
        Err(TryPush::Closed(_, 3))
    ));
}
