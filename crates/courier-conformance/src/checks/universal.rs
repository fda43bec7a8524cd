//! Cases of Watermill's universal Pub/Sub suite (`spec/anchors.md` B1.3) that apply to a
//! queue: publish/subscribe with metadata, resend on error, continue after errors, order,
//! isolation, concurrent close, and no loss across close and reopen.

use std::time::Duration;

use super::{assert_exactly_once, drain, send_numbered};
use crate::support::WAIT;
use crate::{Harness, TestQueue, unique_name};

const QUIET: Duration = Duration::from_millis(500);

/// `TestPublishSubscribe`: 100 messages arrive with payload, type, correlation id and id intact.
pub async fn publish_subscribe_many<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let ids = send_numbered(&q, 100).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let m = q.must_receive().await;
        let i: usize = m
            .message_as_string()
            .expect("UTF-8")
            .parse()
            .expect("a number");
        assert_eq!(m.message_type, format!("type-{i}"));
        assert_eq!(m.correlation_id, Some(format!("cid-{i}")));
        assert_eq!(m.message_id, ids[i], "message_id of message {i}");
        got.push(m.message_id.clone());
        q.complete(&m).await.expect("complete");
    }
    assert_exactly_once(&got, &ids);
    assert!(
        q.receive(None, Duration::from_millis(200))
            .await
            .expect("receive")
            .is_none()
    );
}

/// `TestResendOnError`: the first two messages are abandoned, and all 100 still arrive once
/// completed.
pub async fn resend_on_error<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_abandon() {
        return;
    }
    let ids = send_numbered(&q, 100).await;
    for _ in 0..2 {
        let m = q.must_receive().await;
        q.abandon(&m).await.expect("abandon");
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let m = q.must_receive().await;
        got.push(m.message_id.clone());
        q.complete(&m).await.expect("complete");
    }
    assert_exactly_once(&got, &ids);
}

/// `TestContinueAfterErrors`: three consumers abandon everything they get, five times each;
/// a fresh consumer then gets every message once.
pub async fn continue_after_errors<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_abandon() || !h.features().stores_unreceived {
        return;
    }
    let ids = send_numbered(&q, 20).await;
    for _ in 0..3 {
        let consumer = TestQueue::open_named(h, &q.name, &[]).await;
        for _ in 0..5 {
            let m = consumer.must_receive().await;
            consumer.abandon(&m).await.expect("abandon");
        }
    }
    let fresh = TestQueue::open_named(h, &q.name, &[]).await;
    let got = drain(&fresh, QUIET).await;
    assert_exactly_once(&got, &ids);
}

/// `TestPublishSubscribeInOrder` (FIFO backends): one consumer gets 50 messages in order.
pub async fn publish_subscribe_in_order<H: Harness>(h: &H) {
    if !h.features().fifo {
        return;
    }
    let q = TestQueue::open(h, &[]).await;
    let ids = send_numbered(&q, 50).await;
    let got = drain(&q, QUIET).await;
    assert_eq!(got, ids, "messages out of order");
}

/// `TestTopic`: two queues do not see each other's messages.
pub async fn queue_isolation<H: Harness>(h: &H) {
    let a = TestQueue::open(h, &[]).await;
    let b = TestQueue::open(h, &[]).await;
    let ida = send_numbered(&a, 1).await;
    let idb = send_numbered(&b, 1).await;
    assert_eq!(a.must_receive().await.message_id, ida[0]);
    assert_eq!(b.must_receive().await.message_id, idb[0]);
    assert!(
        a.receive(None, Duration::from_millis(200))
            .await
            .expect("receive")
            .is_none()
    );
}

/// `TestConcurrentClose`: ten handles opened, used and closed at once; then 50 messages sent
/// are all received.
pub async fn concurrent_close<H: Harness>(h: &H) {
    let name = unique_name("conf-close");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let q = TestQueue::open_named(h, &name, &[]).await;
        tasks.push(tokio::spawn(async move {
            let _ = q.receive(None, Duration::ZERO).await;
            q.close(None).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("close");
    }
    let q = TestQueue::open_named(h, &name, &[]).await;
    let ids = send_numbered(&q, 50).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        let m = q.must_receive().await;
        got.push(m.message_id.clone());
        q.complete(&m).await.expect("complete");
    }
    assert_exactly_once(&got, &ids);
}

/// `TestContinueAfterSubscribeClose` (backends that keep messages across close): read in
/// batches of ten, closing and reopening between batches; nothing is lost or repeated.
pub async fn continue_after_reopen<H: Harness>(h: &H) {
    if !h.features().survives_reopen {
        return;
    }
    let first = TestQueue::open(h, &[]).await;
    let ids = send_numbered(&first, 50).await;
    first.close(None).await.expect("close");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while got.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 50 arrived",
            got.len()
        );
        let q = TestQueue::open_named(h, &first.name, &[]).await;
        for _ in 0..10 {
            match q.receive(None, QUIET).await.expect("receive") {
                Some(m) => {
                    got.push(m.message_id.clone());
                    q.complete(&m).await.expect("complete");
                }
                None => break,
            }
        }
        q.close(None).await.expect("close");
    }
    assert_exactly_once(&got, &ids);
}
