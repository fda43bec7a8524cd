//! `open` warns when the server may evict keys (a queue's stream is a key): set
//! `maxmemory-policy allkeys-lru` on the live server for a moment and read the log.

mod support;

use std::sync::Arc;

use courier_core::MessageQueue;
use parking_lot::Mutex;

/// A `tracing` subscriber that keeps the messages of warnings.
#[derive(Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = String::new();
            event.record(&mut Message(&mut message));
            self.0.lock().push(message);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Sets the server's `maxmemory-policy`, and puts the old one back when dropped.
struct Policy {
    connection: redis::Connection,
    old: String,
}

impl Policy {
    fn set(url: &str, policy: &str) -> Policy {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_connection().unwrap();
        let old: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query(&mut connection)
            .unwrap();
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query(&mut connection)
            .unwrap();
        Policy {
            connection,
            old: old[1].clone(),
        }
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(&self.old)
            .query(&mut self.connection);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn open_warns_when_the_server_may_evict_the_queue() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let warnings = Warnings::default();
    let seen = warnings.0.clone();
    let _subscriber = tracing::subscriber::set_default(warnings);
    let name = courier_conformance::unique_name("evict");
    let queue = courier_redis::from_uri(&support::queue_url(&url, &name, &[])).unwrap();
    {
        let _policy = Policy::set(&url, "allkeys-lru");
        queue.open(None).await.unwrap();
    }
    queue.close(None).await.unwrap();
    assert!(
        seen.lock()
            .iter()
            .any(|w| w.contains("maxmemory-policy allkeys-lru")),
        "no warning: {:?}",
        seen.lock()
    );
    // Under `noeviction` there is nothing to warn about.
    seen.lock().clear();
    let _policy = Policy::set(&url, "noeviction");
    queue.open(None).await.unwrap();
    queue.close(None).await.unwrap();
    assert!(seen.lock().is_empty(), "{:?}", seen.lock());
    support::delete_streams(&url, &[name]);
}
