//! The conformance suite against `CachedMessageQueue` over an in-process push broker that,
//! like MQTT or core NATS, drops what is published while nobody is subscribed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use courier_conformance::{Features, Harness, conformance_tests};
use courier_core::backend::{MessageSink, PushBroker, QueueBase};
use courier_core::{
    CachedMessageQueue, ConfigParams, MessageEnvelope, MessageQueue, MessagingCapabilities, Result,
    async_trait,
};

/// Subscribers of one topic; a message goes to one of them, round robin.
#[derive(Default)]
struct Topic {
    sinks: Vec<(u64, MessageSink)>,
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

fn publish(name: &str, envelope: &MessageEnvelope) {
    let topic = topic(name);
    let mut topic = topic.lock().unwrap();
    if topic.sinks.is_empty() {
        return; // nobody listens: the message is gone, as on a push broker
    }
    let i = topic.next % topic.sinks.len();
    topic.next = topic.next.wrapping_add(1);
    topic.sinks[i].1.push(envelope.clone());
}

struct LoopbackBroker {
    name: String,
    id: u64,
}

#[async_trait]
impl PushBroker for LoopbackBroker {
    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }
    async fn connect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn disconnect(&self, _cid: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _cid: Option<&str>, sink: MessageSink) -> Result<()> {
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
        publish(&self.name, envelope);
        Ok(())
    }
    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        publish(&format!("{}.dlq", self.name), message);
        Ok(())
    }
}

struct LoopbackHarness;

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
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut config =
            ConfigParams::from_tuples([("name", name), ("options.autosubscribe", "true")]);
        for (k, v) in options {
            config.set(format!("options.{k}"), *v);
        }
        let base = QueueBase::from_config("loopback", &config, None)?;
        let broker = LoopbackBroker {
            name: name.to_owned(),
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        Ok(Arc::new(CachedMessageQueue::new(base, broker)))
    }
}

conformance_tests!(Some(LoopbackHarness), stress = 2);
