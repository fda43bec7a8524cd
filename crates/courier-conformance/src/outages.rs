//! Network faults every remote backend must survive, run through a [`FaultProxy`]: the same
//! scenarios for databases and brokers, so that each backend's `tests/faults.rs` only says
//! how to reach its server through the proxy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};
use parking_lot::Mutex;

use crate::fault::FaultProxy;

/// What [`cuts_lose_nothing`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CutReport {
    /// Sends that returned `Ok`.
    pub acknowledged: usize,
    /// Sends that failed (with `Connection` or `Timeout`: the message may have landed).
    pub failed_sends: usize,
    /// Distinct messages received.
    pub received: usize,
    /// Deliveries beyond the first of a message.
    pub duplicates: usize,
    /// `complete` calls that failed (a lost lock: the message comes again).
    pub failed_completes: usize,
    /// Connections the proxy accepted (reconnects included).
    pub connections: u64,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sends acknowledged, {} failed, {} received, {} duplicate deliveries, {} completes failed, {} connections accepted",
            self.acknowledged,
            self.failed_sends,
            self.received,
            self.duplicates,
            self.failed_completes,
            self.connections
        )
    }
}

/// Two producers send 200 messages each and two consumers receive and complete, all through
/// `proxy`, while it cuts every connection five times. Every message whose send returned
/// `Ok` must be received, and the queue must end empty (so each was completed); sends and
/// completes may fail with `Connection` or `Timeout` meanwhile. Pass the same queue several
/// times for a backend whose handles share a connection pool, or one handle each for one
/// whose handles each hold a connection.
///
/// # Panics
///
/// If an acknowledged message is lost, an operation fails with another error kind, the
/// consumers never drain the queue, or the cuts forced no reconnect.
pub async fn cuts_lose_nothing(
    proxy: &FaultProxy,
    producers: [Arc<dyn MessageQueue>; 2],
    consumers: [Arc<dyn MessageQueue>; 2],
) -> CutReport {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let failures = Arc::new(Mutex::new((0usize, 0usize)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = consumers[0].clone();
    let mut consuming = Vec::new();
    for queue in consumers {
        let (received, failures, done) = (received.clone(), failures.clone(), done.clone());
        consuming.push(tokio::spawn(async move {
            let mut quiet_since = Instant::now();
            loop {
                match queue.receive(None, Duration::from_millis(200)).await {
                    Ok(Some(m)) => {
                        quiet_since = Instant::now();
                        *received.lock().entry(m.message_id.clone()).or_default() += 1;
                        if let Err(e) = queue.complete(&m).await {
                            assert_transient(&e, "complete");
                            failures.lock().1 += 1;
                        }
                    }
                    Ok(None)
                        if done.load(std::sync::atomic::Ordering::SeqCst)
                            && quiet_since.elapsed() > Duration::from_secs(3) =>
                    {
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        assert_transient(&e, "receive");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let mut sending = Vec::new();
    for (p, queue) in producers.into_iter().enumerate() {
        let (acked, failures) = (acked.clone(), failures.clone());
        sending.push(tokio::spawn(async move {
            for i in 0..200 {
                let envelope = MessageEnvelope::new(None, "fault", format!("{p}-{i}"));
                let id = envelope.message_id.clone();
                match queue.send(None, envelope).await {
                    Ok(()) => acked.lock().push(id),
                    Err(e) => {
                        assert_transient(&e, "send");
                        failures.lock().0 += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        proxy.cut();
    }
    for task in sending {
        task.await.expect("producer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in consuming {
        tokio::time::timeout(Duration::from_secs(90), task)
            .await
            .expect("the consumers drain the queue")
            .expect("consumer");
    }
    let acked = acked.lock().clone();
    let received = received.lock().clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !received.contains_key(*id))
        .collect();
    let (failed_sends, failed_completes) = *failures.lock();
    let report = CutReport {
        acknowledged: acked.len(),
        failed_sends,
        received: received.len(),
        duplicates: received.values().map(|n| n - 1).sum(),
        failed_completes,
        connections: proxy.accepted(),
    };
    if !lost.is_empty() {
        let left = counter.read_message_count().await;
        panic!(
            "{} acknowledged messages never received ({report}; the queue counts {left:?}): {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    assert!(report.connections > 1, "the cuts forced no reconnect");
    if counter.capabilities().can_message_count() {
        assert_eq!(
            counter.read_message_count().await.expect("count"),
            0,
            "messages left in the queue"
        );
    }
    report
}

/// Sends through `proxy` during an outage, on an open `queue`: each fails with `Connection`
/// or `Timeout` within 5 s, or lands once the network is back; no `Ok` is lost. Drains the
/// queue.
///
/// # Panics
///
/// If a send hangs or fails otherwise, or an acknowledged send is lost.
pub async fn outage_sends_fail_or_land(proxy: &FaultProxy, queue: &dyn MessageQueue) {
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
            assert_transient(e, "send");
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
}

/// `open` on `queue`, which points at a port nothing listens on or a server that never
/// answers, fails with `Connection` within `limit`, leaves the queue closed, and shows no
/// `secret` (the password its URI holds) in the error, its `Debug` or the queue's `Debug`.
///
/// # Panics
///
/// If `open` succeeds, fails otherwise, takes longer, or shows `secret`.
pub async fn open_fails_fast(queue: &dyn MessageQueue, limit: Duration, secret: &str) {
    let started = Instant::now();
    let err = queue.open(None).await.expect_err("open against nothing");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(took < limit, "open failed after {took:?}, over {limit:?}");
    assert!(!queue.is_open());
    if !secret.is_empty() {
        let shown = format!("{err} {err:?} {queue:?}");
        assert!(!shown.contains(secret), "the password shows: {shown}");
    }
}

/// Fails unless `e` is what a broken network may cause.
fn assert_transient(e: &courier_core::Error, what: &str) {
    assert!(
        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{what} failed with an error a broken network does not explain: {e}"
    );
}
