//! The pip-services counters: each sent, received and dead-lettered message counts once, on
//! the memory queue and on `CachedMessageQueue` (whose buffer must not count it a second time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use courier_core::backend::{MessageSink, PushBroker, QueueBase};
use courier_core::{
    CachedMessageQueue, ConfigParams, MemoryMessageQueue, MessageEnvelope, MessageQueue,
    MessagingCapabilities, Result, async_trait,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

#[derive(Default)]
struct Recorder(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .lock()
            .unwrap()
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        Counter::from_arc(cell)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The process's recorder, installed once, before any queue is made.
fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder");
        recorder
    })
}

fn count(name: &str) -> u64 {
    recorder()
        .0
        .lock()
        .unwrap()
        .get(name)
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

struct Silent(Arc<Mutex<Option<MessageSink<()>>>>);

#[async_trait]
impl PushBroker for Silent {
    type Handle = ();
    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }
    async fn connect(&self, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn disconnect(&self, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _: Option<&str>, sink: MessageSink<()>) -> Result<()> {
        *self.0.lock().unwrap() = Some(sink);
        Ok(())
    }
    async fn unsubscribe(&self, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn send(&self, _: Option<&str>, envelope: &MessageEnvelope) -> Result<()> {
        let sink = self.0.lock().unwrap().clone().expect("subscribed");
        sink.push(envelope.clone(), ()).await.unwrap();
        Ok(())
    }
    async fn move_to_dead_letter(&self, _: &MessageEnvelope, _: ()) -> Result<()> {
        Ok(())
    }
}

async fn send_receive_dead_letter(queue: &dyn MessageQueue) {
    queue.open(None).await.unwrap();
    for i in 0..2 {
        queue
            .send(None, MessageEnvelope::new(None, "t", i.to_string()))
            .await
            .unwrap();
    }
    // One dead-lettered by hand, one spent by max_deliveries=1.
    let a = queue
        .receive(None, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    queue.move_to_dead_letter(&a).await.unwrap();
    let b = queue
        .receive(None, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    queue.abandon(&b).await.unwrap();
}

#[tokio::test]
async fn every_message_counts_once() {
    recorder();
    let config = ConfigParams::from_string("name=metered-memory;options.max_deliveries=1").unwrap();
    send_receive_dead_letter(&MemoryMessageQueue::with_config(&config).unwrap()).await;
    assert_eq!(count("queue.metered-memory.sent_messages"), 2);
    assert_eq!(count("queue.metered-memory.received_messages"), 2);
    assert_eq!(count("queue.metered-memory.dead_messages"), 2);

    let config = ConfigParams::from_string(
        "name=metered-cached;options.max_deliveries=1;options.autosubscribe=true",
    )
    .unwrap();
    let cached = CachedMessageQueue::new(
        QueueBase::from_config("silent", &config, None).unwrap(),
        Silent(Arc::default()),
    );
    send_receive_dead_letter(&cached).await;
    assert_eq!(count("queue.metered-cached.sent_messages"), 2);
    assert_eq!(count("queue.metered-cached.received_messages"), 2);
    assert_eq!(
        count("queue.metered-cached.dead_messages"),
        2,
        "dead letters counted twice"
    );
}
