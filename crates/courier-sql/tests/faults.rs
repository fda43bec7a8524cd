//! Broken networks, through the conformance crate's TCP fault proxy, on PostgreSQL and
//! MariaDB: connections cut while producers and consumers run lose no message whose `send`
//! returned `Ok`; a send during an outage fails or lands, never a lost `Ok`; `open` against a
//! server that does not answer fails within `connect_timeout`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use courier_conformance::fault::FaultProxy;
use courier_conformance::{outages, skip_or_fail, unique_name};
use courier_core::{ErrorKind, MessageQueue, connect};

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

/// Two producers and two consumers on one queue (its pool) while every connection is cut
/// five times: every message whose send returned `Ok` is received, and the queue ends empty
/// (a `complete` whose answer a cut lost may have deleted the row, or left it to come back
/// when its lock expires). Deliveries beyond the first are counted and reported.
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
    let both = || [queue.clone(), queue.clone()];
    let report = outages::cuts_lose_nothing(&proxy, both(), both()).await;
    println!("{}: {report}", server.backend);
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
    outages::outage_sends_fail_or_land(&proxy, &*queue).await;
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
