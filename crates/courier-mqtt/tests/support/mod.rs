//! What the MQTT tests share: the broker's URL, and the harness of MQTT queues.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{Features, Harness};
use courier_core::{MessageQueue, Result, async_trait};

/// The broker the tests use: `COURIER_TEST_MQTT_URL`, by default the local Mosquitto.
pub fn server_url() -> String {
    std::env::var("COURIER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

/// The URL of the queue on `topic` at the broker `base` with `options`.
pub fn queue_url(base: &str, topic: &str, options: &[(&str, &str)]) -> String {
    let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}/{topic}?{}", base.trim_end_matches('/'), query.join("&"))
}

/// `host:port` of the broker at `url`.
pub fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or("127.0.0.1:1883")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned()
}

/// The broker's URL if it answers, else `None` after [`courier_conformance::skip_or_fail`].
pub async fn reachable() -> Option<String> {
    let url = server_url();
    let host_port = host_port(&url);
    let connect = tokio::net::TcpStream::connect(host_port.clone());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => courier_conformance::skip_or_fail("mqtt", &format!("{host_port}: {e}")),
        Err(_) => courier_conformance::skip_or_fail("mqtt", "connect timed out"),
    }
}

/// The conformance harness over MQTT queues at QoS 1, each queue in the shared-subscription
/// group of its name (so that two handles of one queue share its messages, as the suite
/// expects of a queue).
pub struct MqttHarness {
    pub url: String,
    /// Options every queue gets on top of the check's.
    pub options: Vec<(&'static str, &'static str)>,
}

impl MqttHarness {
    pub async fn from_env() -> Option<Self> {
        Some(MqttHarness {
            url: reachable().await?,
            options: Vec::new(),
        })
    }
}

#[async_trait]
impl Harness for MqttHarness {
    fn backend(&self) -> &str {
        "mqtt"
    }

    fn features(&self) -> Features {
        let mut features = Features::all();
        // MQTT keeps nothing for a topic no one subscribes to, and a queue with a generated
        // client id ends its session on close.
        features.stores_unreceived = false;
        features.survives_reopen = false;
        // Spent messages go to an in-process dead-letter queue, not to `<name>.dlq`.
        features.max_deliveries = false;
        features
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        let mut all = options.to_vec();
        all.extend(self.options.iter().copied());
        all.push(("group", name));
        courier_mqtt::from_uri(&queue_url(&self.url, name, &all))
    }
}

/// A fault proxy in front of the broker, and the broker's URL through it.
pub async fn proxied() -> Option<(courier_conformance::fault::FaultProxy, String)> {
    let url = reachable().await?;
    let upstream = tokio::net::lookup_host(host_port(&url))
        .await
        .expect("the broker's address")
        .next()
        .expect("an address");
    let proxy = courier_conformance::fault::FaultProxy::start(upstream)
        .await
        .expect("a proxy");
    let url = format!("mqtt://{}", proxy.addr());
    Some((proxy, url))
}

/// Opens the queue on `topic` at `url` with `options`.
pub async fn open(url: &str, topic: &str, options: &[(&str, &str)]) -> Arc<dyn MessageQueue> {
    let queue = courier_mqtt::from_uri(&queue_url(url, topic, options)).expect("a valid URI");
    queue.open(None).await.expect("open");
    queue
}

/// Receives until `wait` passes with nothing new; returns what came.
pub async fn drain(queue: &dyn MessageQueue, wait: Duration) -> Vec<courier_core::MessageEnvelope> {
    let mut got = Vec::new();
    while let Some(m) = queue.receive(None, wait).await.expect("receive") {
        queue.complete(&m).await.expect("complete");
        got.push(m);
    }
    got
}
