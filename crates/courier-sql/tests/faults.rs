//! Broken networks, through the conformance crate's TCP fault proxy, on PostgreSQL and
//! MariaDB: connections cut while producers and consumers run lose no message whose `send`
//! returned `Ok`; a send during an outage fails or lands, never a lost `Ok`; `open` against a
//! server that does not answer fails within `connect_timeout`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_conformance::fault::FaultProxy;
use courier_conformance::{skip_or_fail, unique_name};
use courier_core::{ErrorKind, MessageEnvelope, MessageQueue, connect};
use parking_lot::Mutex;

struct Server {
    backend: &'static str,
    /// The URL without host and port: `postgres://postgres@{addr}/test`.
    template: &'static str,
    upstream: SocketAddr,
}

const POSTGRES: Server = Server {
    backend: "postgres",
    template: "postgres://postgres@{addr}/test",
    upstream: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5432),
};

const MARIADB: Server = Server {
    backend: "mysql",
    template: "mysql://root@{addr}/test",
    upstream: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3306),
};

impl Server {
    /// A proxy in front of the server, or `None` (skipped) if the server is down.
    async fn proxy(&self) -> Option<FaultProxy> {
        if let Err(e) = tokio::net::TcpStream::connect(self.upstream).await {
            return skip_or_fail(self.backend, &format!("{}: {e}", self.upstream));
        }
        Some(FaultProxy::start(self.upstream).await.expect("a proxy"))
    }

    fn uri(&self, proxy: &FaultProxy, options: &str) -> String {
        let base = self.template.replace("{addr}", &proxy.addr().to_string());
        format!("{base}?queue={}&{options}", unique_name("fault"))
    }
}

/// Two producers and two consumers while every connection is cut five times: every message
/// whose send returned `Ok` is received, and the queue ends empty (so each was completed: a
/// `complete` whose answer a cut lost may have deleted the row, or left it to come back when
/// its lock expires). Deliveries beyond the first are counted and reported.
async fn cuts_lose_nothing(server: &Server) {
    let Some(proxy) = server.proxy().await else {
        return;
    };
    courier_sql::register();
    let uri = server.uri(
        &proxy,
        "lock_timeout=1500&poll_interval=50&connect_timeout=2000&max_connections=4",
    );
    let queue = connect(&uri).await.expect("connect through the proxy");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let failed_sends = Arc::new(Mutex::new(0usize));
    let producing = tokio_util::sync::CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..2 {
        let (queue, acked, failed) = (queue.clone(), acked.clone(), failed_sends.clone());
        producers.push(tokio::spawn(async move {
            for i in 0..150 {
                let envelope = MessageEnvelope::new(None, "fault", format!("{p}-{i}"));
                let id = envelope.message_id.clone();
                match queue.send(None, envelope).await {
                    Ok(()) => acked.lock().push(id),
                    Err(_) => *failed.lock() += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let (queue, received, producing) = (queue.clone(), received.clone(), producing.clone());
        consumers.push(tokio::spawn(async move {
            let mut quiet_since = Instant::now();
            loop {
                match queue.receive(None, Duration::from_millis(200)).await {
                    Ok(Some(m)) => {
                        quiet_since = Instant::now();
                        *received.lock().entry(m.message_id.clone()).or_default() += 1;
                        let _ = queue.complete(&m).await;
                    }
                    Ok(None)
                        if producing.is_cancelled()
                            && quiet_since.elapsed() > Duration::from_secs(4) =>
                    {
                        return;
                    }
                    Ok(None) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
    }
    for p in producers {
        p.await.expect("producer");
    }
    producing.cancel();
    for c in consumers {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("consumers drain")
            .expect("consumer");
    }
    let acked = acked.lock().clone();
    let received = received.lock().clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !received.contains_key(*id))
        .collect();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    println!(
        "{}: {} sends acknowledged, {} failed, {} received, {duplicates} duplicate deliveries, {} accepted connections",
        server.backend,
        acked.len(),
        failed_sends.lock(),
        received.len(),
        proxy.accepted()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost: {lost:?}",
        lost.len()
    );
    assert_eq!(
        queue.read_message_count().await.expect("count"),
        0,
        "messages left in the queue"
    );
    assert!(proxy.accepted() > 1, "the cuts forced no reconnect");
    queue.close(None).await.expect("close");
}

/// Sends while the server is unreachable: each either fails or, once the network is back,
/// lands; no `Ok` is lost.
async fn outage_sends_fail_or_land(server: &Server) {
    let Some(proxy) = server.proxy().await else {
        return;
    };
    courier_sql::register();
    let uri = server.uri(&proxy, "poll_interval=50&connect_timeout=1000");
    let queue = connect(&uri).await.expect("connect through the proxy");
    proxy.outage().await;
    let mut results = Vec::new();
    for i in 0..3 {
        let envelope = MessageEnvelope::new(None, "outage", i.to_string());
        let id = envelope.message_id.clone();
        let started = Instant::now();
        let result = queue.send(None, envelope).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a send during an outage hung for {:?}",
            started.elapsed()
        );
        if let Err(e) = &result {
            assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
        }
        results.push((id, result.is_ok()));
    }
    proxy.restore().await.expect("restore");
    let envelope = MessageEnvelope::new(None, "outage", "after");
    results.push((envelope.message_id.clone(), true));
    queue
        .send(None, envelope)
        .await
        .expect("a send after the outage");
    let mut got = Vec::new();
    while let Some(m) = queue
        .receive(None, Duration::from_millis(500))
        .await
        .expect("receive")
    {
        got.push(m.message_id.clone());
        queue.complete(&m).await.expect("complete");
    }
    for (id, ok) in &results {
        if *ok {
            assert!(got.contains(id), "an acknowledged send was lost");
        }
    }
    queue.close(None).await.expect("close");
}

/// `open` against a server that accepts and never answers fails with `Connection` within
/// `connect_timeout` (1 s).
async fn open_times_out(server: &Server) {
    let Some(proxy) = server.proxy().await else {
        return;
    };
    courier_sql::register();
    proxy.stall();
    let started = Instant::now();
    let err = connect(&server.uri(&proxy, "connect_timeout=1000"))
        .await
        .map(drop)
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "open failed after {waited:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cuts_lose_nothing() {
    cuts_lose_nothing(&POSTGRES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cuts_lose_nothing() {
    cuts_lose_nothing(&MARIADB).await;
}

#[tokio::test]
async fn postgres_outage_sends_fail_or_land() {
    outage_sends_fail_or_land(&POSTGRES).await;
}

#[tokio::test]
async fn mariadb_outage_sends_fail_or_land() {
    outage_sends_fail_or_land(&MARIADB).await;
}

#[tokio::test]
async fn postgres_open_times_out() {
    open_times_out(&POSTGRES).await;
}

#[tokio::test]
async fn mariadb_open_times_out() {
    open_times_out(&MARIADB).await;
}
