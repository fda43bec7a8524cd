//! What the NATS tests share: the server's URL, and the harness of core NATS queues.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{Features, Harness};
use courier_core::{MessageQueue, Result, async_trait};

/// The server the tests use: `COURIER_TEST_NATS_URL`, by default the local one.
pub fn server_url() -> String {
    std::env::var("COURIER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The URL of queue `name` on the server `base` with `options`.
pub fn queue_url(base: &str, name: &str, options: &[(&str, &str)]) -> String {
    let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}/{name}?{}", base.trim_end_matches('/'), query.join("&"))
}

/// The server's URL if it answers, else `None` after [`courier_conformance::skip_or_fail`].
pub async fn reachable() -> Option<String> {
    let url = server_url();
    let host_port = url
        .split("://")
        .nth(1)
        .unwrap_or("127.0.0.1:4222")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let connect = tokio::net::TcpStream::connect(host_port.clone());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => courier_conformance::skip_or_fail("nats", &format!("{host_port}: {e}")),
        Err(_) => courier_conformance::skip_or_fail("nats", "connect timed out"),
    }
}

/// The conformance harness over core NATS queues, each in the queue group of its name (so
/// that two handles of one queue share its messages, as the suite expects of a queue).
pub struct CoreNatsHarness {
    pub url: String,
}

impl CoreNatsHarness {
    pub async fn from_env() -> Option<Self> {
        Some(CoreNatsHarness {
            url: reachable().await?,
        })
    }
}

#[async_trait]
impl Harness for CoreNatsHarness {
    fn backend(&self) -> &str {
        "nats-core"
    }

    fn features(&self) -> Features {
        let mut features = Features::all();
        // At most once: nothing is kept for a queue that is not subscribed, and the buffer
        // dies with the queue.
        features.stores_unreceived = false;
        features.survives_reopen = false;
        // Spent messages go to an in-process dead-letter queue, not to `<name>.dlq` on the
        // server.
        features.max_deliveries = false;
        features
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        let mut options = options.to_vec();
        options.push(("jetstream", "false"));
        options.push(("queue_group", name));
        courier_nats::from_uri(&queue_url(&self.url, name, &options))
    }
}

/// The conformance harness over JetStream queues; their streams (and their dead-letter
/// queues' streams) are deleted when it is dropped.
pub struct JetStreamHarness {
    pub url: String,
    created: parking_lot::Mutex<Vec<String>>,
}

impl JetStreamHarness {
    pub async fn from_env() -> Option<Self> {
        Some(JetStreamHarness {
            url: reachable().await?,
            created: parking_lot::Mutex::new(Vec::new()),
        })
    }
}

impl Drop for JetStreamHarness {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.created.lock());
        delete_streams(&self.url, &names);
    }
}

/// Deletes the streams of the queues `names` and of their `.dlq` queues, ignoring errors.
/// Blocks, on a thread of its own (callable from inside a runtime).
pub fn delete_streams(url: &str, names: &[String]) {
    let (url, names) = (url.to_owned(), names.to_vec());
    courier_conformance::clean_up(async move {
        let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url.as_str())).await
        else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        for name in &names {
            for queue in [name.clone(), format!("{name}.dlq")] {
                let _ = js.delete_stream(courier_nats::stream_name(&queue)).await;
            }
        }
    });
}

#[async_trait]
impl Harness for JetStreamHarness {
    fn backend(&self) -> &str {
        "nats-jetstream"
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        self.created.lock().push(name.to_owned());
        courier_nats::from_uri(&queue_url(&self.url, name, options))
    }
}

/// The stream every queue of [`SharedStreamHarness`] lives in, on subjects `courier-shared.>`.
pub const SHARED_STREAM: &str = "COURIER_TEST_SHARED";

/// The conformance harness over JetStream queues that share one stream ([`SHARED_STREAM`],
/// created by the first harness and kept): queue `NAME` of a check is the subject
/// `courier-shared.NAME` of that stream, beside the queues of every other check. What its
/// queues left there is purged when it is dropped.
pub struct SharedStreamHarness {
    pub url: String,
    created: parking_lot::Mutex<Vec<String>>,
}

impl SharedStreamHarness {
    pub async fn from_env() -> Option<Self> {
        let url = reachable().await?;
        let client = async_nats::connect(url.as_str()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: SHARED_STREAM.to_owned(),
            subjects: vec!["courier-shared.>".to_owned()],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("the shared stream");
        Some(SharedStreamHarness {
            url,
            created: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The subject of the check's queue `name`.
    pub fn subject(name: &str) -> String {
        format!("courier-shared.{name}")
    }
}

impl Drop for SharedStreamHarness {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.created.lock());
        let url = self.url.clone();
        courier_conformance::clean_up(async move {
            let Ok(client) = async_nats::connect(url.as_str()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client);
            let Ok(stream) = js.get_stream(SHARED_STREAM).await else {
                return;
            };
            for name in &names {
                let consumer = courier_nats::consumer_name(name, true);
                let _ = stream.delete_consumer(&consumer).await;
                let _ = stream.purge().filter(name.as_str()).await;
            }
        });
    }
}

#[async_trait]
impl Harness for SharedStreamHarness {
    fn backend(&self) -> &str {
        "nats-jetstream-shared"
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        let subject = Self::subject(name);
        self.created.lock().push(subject.clone());
        self.created.lock().push(format!("{subject}.dlq"));
        let mut options = options.to_vec();
        options.push(("stream", SHARED_STREAM));
        courier_nats::from_uri(&queue_url(&self.url, &subject, &options))
    }
}

/// A fault proxy in front of the server, and the server's URL through it.
pub async fn proxied() -> Option<(courier_conformance::fault::FaultProxy, String)> {
    let url = reachable().await?;
    let host_port = url
        .trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_owned();
    let upstream = tokio::net::lookup_host(host_port)
        .await
        .expect("the server's address")
        .next()
        .expect("an address");
    let proxy = courier_conformance::fault::FaultProxy::start(upstream)
        .await
        .expect("a proxy");
    let url = format!("nats://{}", proxy.addr());
    Some((proxy, url))
}
