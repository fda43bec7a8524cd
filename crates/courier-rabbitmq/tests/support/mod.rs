//! What the RabbitMQ tests share: the broker's URL, and a harness over it.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{Features, Harness};
use courier_core::{MessageQueue, Result, async_trait};

/// The broker the tests use: `COURIER_TEST_RABBITMQ_URL`, by default the local one.
pub fn broker_url() -> String {
    std::env::var("COURIER_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `host:port` of an `amqp://` URL.
pub fn host_port(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("COURIER_TEST_RABBITMQ_URL is a URL");
    format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(5672)
    )
}

/// The URL of queue `name` on `base` (a broker URL) with `options`.
pub fn queue_url(base: &str, name: &str, options: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(base).expect("a URL");
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("queue", name);
        for (k, v) in options {
            query.append_pair(k, v);
        }
    }
    url.to_string()
}

/// The broker's URL if it answers, else `None` after [`courier_conformance::skip_or_fail`].
pub async fn reachable() -> Option<String> {
    let url = broker_url();
    let connect = tokio::net::TcpStream::connect(host_port(&url));
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => {
            courier_conformance::skip_or_fail("rabbitmq", &format!("{}: {e}", host_port(&url)))
        }
        Err(_) => courier_conformance::skip_or_fail("rabbitmq", "connect timed out"),
    }
}

/// The conformance harness: queues on the broker at `url`, deleted (with their dead-letter
/// queues) when the harness is dropped: quorum queues hold file descriptors, and the broker
/// has a limited number.
pub struct RabbitMqHarness {
    pub url: String,
    created: parking_lot::Mutex<Vec<String>>,
}

impl RabbitMqHarness {
    pub async fn from_env() -> Option<Self> {
        courier_rabbitmq::register();
        Some(RabbitMqHarness {
            url: reachable().await?,
            created: parking_lot::Mutex::new(Vec::new()),
        })
    }
}

impl Drop for RabbitMqHarness {
    fn drop(&mut self) {
        let mut names = std::mem::take(&mut *self.created.lock());
        names.sort();
        names.dedup();
        delete_queues(&self.url, &names);
    }
}

/// Deletes the queues `names` and their `.dlq` queues, ignoring errors. Blocks, on a thread
/// of its own (callable from inside a runtime).
pub fn delete_queues(url: &str, names: &[String]) {
    let (url, names) = (url.to_owned(), names.to_vec());
    courier_conformance::clean_up(async move {
        let (url, names) = (url.as_str(), names.as_slice());
        let Ok(Ok(connection)) = tokio::time::timeout(
            Duration::from_secs(10),
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
        )
        .await
        else {
            return;
        };
        for name in names {
            for queue in [name.clone(), format!("{name}.dlq")] {
                // A failed delete closes the channel: one channel per delete.
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), Default::default())
                        .await;
                    let _ = channel.close(200, "".into()).await;
                }
            }
        }
        let _ = connection.close(200, "".into()).await;
    });
}

#[async_trait]
impl Harness for RabbitMqHarness {
    fn backend(&self) -> &str {
        "rabbitmq"
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        self.created.lock().push(name.to_owned());
        let mut options = options.to_vec();
        // In case the harness is not dropped (a test that panics): the broker deletes the
        // queue once unused for a minute.
        options.push(("expires", "60000"));
        Ok(Arc::new(courier_rabbitmq::from_uri(&queue_url(
            &self.url, name, &options,
        ))?))
    }
}
