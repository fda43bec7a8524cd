//! Broken networks between a core NATS queue and the server, through the conformance crate's
//! fault proxy. Core NATS is at most once, so what a cut loses is lost; what this proves is
//! that the queue comes back by itself: after cuts, messages published are received again,
//! and `open` against a closed port or a silent server fails with `Connection` within
//! `connect_timeout`.

mod support;

use std::time::{Duration, Instant};

use courier_conformance::fault::ClosedPort;
use courier_conformance::unique_name;
use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

/// Cuts every connection three times: the client reconnects and resubscribes by itself, and
/// messages published once it is back are received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_comes_back_after_cuts() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let options = [("jetstream", "false"), ("reconnect_timeout", "100")];
    let queue = courier_nats::from_uri(&support::queue_url(&url, &name, &options)).unwrap();
    queue.open(None).await.unwrap();
    for round in 0..3 {
        proxy.cut();
        // Published until one arrives: the first ones may go while the client reconnects.
        let deadline = Instant::now() + Duration::from_secs(20);
        let arrived = loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing arrived after the cut"
            );
            let _ = queue
                .send(
                    None,
                    MessageEnvelope::new(None, "t", format!("after cut {round}")),
                )
                .await;
            if let Some(m) = queue
                .receive(None, Duration::from_millis(200))
                .await
                .unwrap()
            {
                break m;
            }
        };
        queue.complete(&arrived).await.unwrap();
        while let Some(m) = queue
            .receive(None, Duration::from_millis(100))
            .await
            .unwrap()
        {
            queue.complete(&m).await.unwrap();
        }
    }
    assert!(proxy.accepted() >= 4, "the cuts forced no reconnect");
    queue.close(None).await.unwrap();
}

/// `open` against a port nothing listens on, and against a server that accepts and never
/// answers, fails with `Connection` within `connect_timeout` (1 s).
#[tokio::test]
async fn open_fails_within_connect_timeout() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let nobody = ClosedPort::new().unwrap();
    let closed_port = nobody.port();
    proxy.stall();
    let closed = format!("nats://127.0.0.1:{closed_port}");
    for (what, base) in [("a closed port", closed), ("a silent server", url)] {
        let queue = courier_nats::from_uri(&support::queue_url(
            &base,
            "never",
            &[("jetstream", "false"), ("connect_timeout", "1000")],
        ))
        .unwrap();
        let started = Instant::now();
        let err = queue.open(None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{what}: {err}");
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "{what}: open failed after {:?}",
            started.elapsed()
        );
        assert!(!queue.is_open());
    }
}
