//! What the Redis tests share: the server's URL, the conformance harness, and a proxy.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{Features, Harness};
use courier_core::{MessageQueue, Result, async_trait};

/// The server the tests use: `COURIER_TEST_REDIS_URL`, by default the local one, database 0.
pub fn server_url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// `host:port` of the server `url`.
pub fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or("127.0.0.1:6379");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// The URL of queue `name` on the server `base` with `options`.
pub fn queue_url(base: &str, name: &str, options: &[(&str, &str)]) -> String {
    let mut query = vec![format!("queue={name}")];
    query.extend(options.iter().map(|(k, v)| format!("{k}={v}")));
    format!("{base}?{}", query.join("&"))
}

/// The server's URL if it answers, else `None` after [`courier_conformance::skip_or_fail`].
pub async fn reachable() -> Option<String> {
    let url = server_url();
    let connect = tokio::net::TcpStream::connect(host_port(&url));
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => courier_conformance::skip_or_fail("redis", &format!("{url}: {e}")),
        Err(_) => courier_conformance::skip_or_fail("redis", "connect timed out"),
    }
}

/// Deletes the streams `names` and their `.dlq` streams, ignoring errors. Blocks, on a thread
/// of its own (callable from inside a runtime).
pub fn delete_streams(url: &str, names: &[String]) {
    let (url, names) = (url.to_owned(), names.to_vec());
    courier_conformance::clean_up(async move {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            return;
        };
        let connect = client.get_multiplexed_async_connection();
        let Ok(Ok(mut connection)) = tokio::time::timeout(Duration::from_secs(5), connect).await
        else {
            return;
        };
        for name in &names {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(name)
                .arg(format!("{name}.dlq"))
                .query_async(&mut connection)
                .await;
        }
    });
}

/// The conformance harness over Redis queues; their streams are deleted when it is dropped.
pub struct RedisHarness {
    pub url: String,
    created: parking_lot::Mutex<Vec<String>>,
}

impl RedisHarness {
    pub async fn from_env() -> Option<Self> {
        Some(RedisHarness {
            url: reachable().await?,
            created: parking_lot::Mutex::new(Vec::new()),
        })
    }
}

impl Drop for RedisHarness {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.created.lock());
        delete_streams(&self.url, &names);
    }
}

#[async_trait]
impl Harness for RedisHarness {
    fn backend(&self) -> &str {
        "redis"
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        self.created.lock().push(name.to_owned());
        courier_redis::from_uri(&queue_url(&self.url, name, options))
    }
}

/// A fault proxy in front of the server, and the server's URL through it.
pub async fn proxied() -> Option<(courier_conformance::fault::FaultProxy, String)> {
    let url = reachable().await?;
    let upstream = tokio::net::lookup_host(host_port(&url))
        .await
        .expect("the server's address")
        .next()
        .expect("an address");
    let proxy = courier_conformance::fault::FaultProxy::start(upstream)
        .await
        .expect("a proxy");
    let url = format!("redis://{}/0", proxy.addr());
    Some((proxy, url))
}
