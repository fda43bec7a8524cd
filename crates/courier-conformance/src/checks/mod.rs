//! The checks, one public async function each. A failing check panics.
//!
//! * [`fixture`]: the nine tests of pip-services' `MessageQueueFixture`.
//! * [`universal`]: the cases of Watermill's universal Pub/Sub suite that apply to a queue.
//! * [`delivery`]: locks, expiry, renewal, dead letters, idempotence, closed and unsupported.
//! * [`listening`]: `listen`: completion, errors, panics, concurrency, draining.
//! * [`concurrency`]: many producers and consumers, and cancel safety.
//! * [`batches`]: `send_batch`, `receive_batch` and `complete_batch`.

pub mod batches;
pub mod concurrency;
pub mod delivery;
pub mod fixture;
pub mod listening;
pub mod universal;

pub use batches::*;
pub use concurrency::*;
pub use delivery::*;
pub use fixture::*;
pub use listening::*;
pub use universal::*;

use std::collections::HashSet;
use std::time::Duration;

use courier_core::{ErrorKind, MessageEnvelope, Result};

use crate::TestQueue;

/// Asserts that `result` is an error of `kind`.
pub(crate) fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong error kind: {e}"),
        Ok(v) => panic!("{what}: expected a {kind:?} error, got Ok({v:?})"),
    }
}

/// Sends `count` messages with payloads `0..count`; returns their ids in order.
pub(crate) async fn send_numbered(q: &TestQueue, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let envelope = MessageEnvelope::new(
            Some(&format!("cid-{i}")),
            &format!("type-{i}"),
            i.to_string(),
        );
        ids.push(envelope.message_id.clone());
        q.send(None, envelope).await.expect("send failed");
    }
    ids
}

/// Receives and completes until nothing arrives for `quiet`; returns the ids in order.
pub(crate) async fn drain(q: &TestQueue, quiet: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(m) = q.receive(None, quiet).await.expect("receive failed") {
        ids.push(m.message_id.clone());
        q.complete(&m).await.expect("complete failed");
    }
    ids
}

/// Asserts that `got` holds every id of `sent` exactly once, and nothing else.
pub(crate) fn assert_exactly_once(got: &[String], sent: &[String]) {
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "duplicates among {} ids",
        got.len()
    );
    let expected: HashSet<&String> = sent.iter().collect();
    let missing = expected.difference(&unique).count();
    let extra = unique.difference(&expected).count();
    assert!(
        missing == 0 && extra == 0,
        "{missing} missing and {extra} unexpected ids"
    );
}

/// Asserts that `q` delivers nothing within `wait`; `why` says what a message would mean.
pub(crate) async fn assert_no_message(q: &TestQueue, wait: Duration, why: &str) {
    let got = q.receive(None, wait).await.expect("receive");
    assert!(got.is_none(), "{}: {why}", q.name);
}

/// Asserts that the dead-letter queue of `q` is empty, where the backend has one.
pub(crate) async fn assert_no_dead_letters<H: crate::Harness>(h: &H, q: &TestQueue, why: &str) {
    if h.features().max_deliveries {
        let dlq = TestQueue::open_named(h, &format!("{}.dlq", q.name), &[]).await;
        assert_no_message(&dlq, Duration::from_millis(100), why).await;
    }
}

/// Waits until the queue's count reaches `n` (for backends whose sends arrive asynchronously).
pub(crate) async fn await_count(q: &TestQueue, n: usize) {
    if !q.capabilities().can_message_count() {
        return;
    }
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while q.read_message_count().await.expect("count failed") < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "count never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
