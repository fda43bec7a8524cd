//! Delivery semantics pip-services and Watermill do not test: waits, locks, expiry, renewal,
//! delivery counts, dead letters, idempotent settling, closed queues, unsupported operations.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

use super::{assert_exactly_once, assert_kind, await_count, send_numbered};
use crate::support::{WAIT, fixture_envelope};
use crate::{Harness, TestMessageReceiver, TestQueue};

const SHORT: Duration = Duration::from_millis(300);

/// `receive` with a zero wait returns a message that is ready.
pub async fn receive_zero_wait_returns_ready<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let ids = send_numbered(&q, 1).await;
    await_count(&q, 1).await;
    let got = q.receive(None, Duration::ZERO).await.expect("receive");
    assert_eq!(got.map(|m| m.message_id), Some(ids[0].clone()));
}

/// `receive` on an empty queue waits for its timeout, then returns `None`.
pub async fn receive_waits_then_returns_none<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let started = tokio::time::Instant::now();
    assert!(q.receive(None, SHORT).await.expect("receive").is_none());
    let waited = started.elapsed();
    assert!(
        waited >= SHORT - Duration::from_millis(5),
        "returned after {waited:?}"
    );
    assert!(
        waited < SHORT + Duration::from_secs(3),
        "returned after {waited:?}"
    );
}

/// A received (locked) message is invisible to other receivers, to peek and to the count.
pub async fn locked_message_is_invisible<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let ids = send_numbered(&q, 2).await;
    let first = q.must_receive().await;
    let second = q.must_receive().await;
    assert_ne!(
        first.message_id, second.message_id,
        "a locked message was delivered twice"
    );
    assert_exactly_once(&[first.message_id.clone(), second.message_id.clone()], &ids);
    if q.capabilities().can_message_count() {
        assert_eq!(q.read_message_count().await.expect("count"), 0);
    }
    if q.capabilities().can_peek() {
        assert!(q.peek(None).await.expect("peek").is_none());
    }
    assert!(
        q.receive(None, Duration::from_millis(100))
            .await
            .expect("receive")
            .is_none()
    );
}

/// A message whose lock expires is delivered again, with its delivery count raised; the old
/// holder's `complete` is then a no-op.
pub async fn lock_expiry_redelivers<H: Harness>(h: &H) {
    if !h.features().lock_expiry {
        return;
    }
    let q = TestQueue::open(h, &[("lock_timeout", "300")]).await;
    let ids = send_numbered(&q, 1).await;
    let first = q.must_receive().await;
    assert_eq!(first.delivery_count(), 1);
    let again = q.must_receive().await;
    assert_eq!(again.message_id, ids[0]);
    assert_eq!(again.delivery_count(), 2, "delivery count after one expiry");
    q.complete(&first).await.expect("stale complete is a no-op");
    q.complete(&again).await.expect("complete");
    if q.capabilities().can_message_count() {
        assert_eq!(q.read_message_count().await.expect("count"), 0);
    }
    assert!(
        q.receive(None, Duration::from_millis(600))
            .await
            .expect("receive")
            .is_none()
    );
}

/// `renew_lock(m, t)` moves the lock's end to now + `t`, both later and sooner.
pub async fn renew_lock_extends<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("lock_timeout", "1000")]).await;
    let ids = send_numbered(&q, 1).await;
    let m = q.must_receive().await;
    if !q.capabilities().can_renew_lock() {
        assert_kind(
            q.renew_lock(&m, WAIT).await,
            ErrorKind::Unsupported,
            "renew_lock",
        );
        return;
    }
    q.renew_lock(&m, Duration::from_secs(30))
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        q.receive(None, Duration::ZERO)
            .await
            .expect("receive")
            .is_none(),
        "the renewed lock expired with the original timeout"
    );
    if h.features().lock_expiry {
        q.renew_lock(&m, Duration::from_millis(100))
            .await
            .expect("renew");
        let again = q.must_receive().await;
        assert_eq!(again.message_id, ids[0]);
        q.complete(&again).await.expect("complete");
    }
}

/// After `max_deliveries` deliveries an abandoned message goes to the dead-letter queue,
/// where it can be received.
pub async fn max_deliveries_dead_letters<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("max_deliveries", "2")]).await;
    let caps = q.capabilities();
    if !(h.features().max_deliveries && caps.can_abandon() && caps.can_dead_letter()) {
        return;
    }
    let dlq = TestQueue::open_named(h, &format!("{}.dlq", q.name), &[]).await;
    let ids = send_numbered(&q, 1).await;
    for delivery in 1..=2 {
        let m = q.must_receive().await;
        assert_eq!(m.delivery_count(), delivery);
        q.abandon(&m).await.expect("abandon");
    }
    assert!(
        q.receive(None, SHORT).await.expect("receive").is_none(),
        "redelivered past max_deliveries"
    );
    let dead = dlq.must_receive().await;
    assert_eq!(dead.message_id, ids[0]);
    assert_eq!(dead.message_type, "type-0");
    dlq.complete(&dead)
        .await
        .expect("complete in the dead-letter queue");
}

/// `move_to_dead_letter` keeps the message, readable in `<name>.dlq` with id, type,
/// correlation id and payload.
pub async fn dead_letter_round_trip<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_dead_letter() {
        return;
    }
    // Opened first, so that push brokers are subscribed when the dead letter arrives.
    let dlq = TestQueue::open_named(h, &format!("{}.dlq", q.name), &[]).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    let m = q.must_receive().await;
    q.move_to_dead_letter(&m)
        .await
        .expect("move_to_dead_letter");
    assert!(q.receive(None, SHORT).await.expect("receive").is_none());
    let dead = dlq.must_receive().await;
    assert_eq!(dead.message_id, sent.message_id);
    assert_eq!(dead.message_type, sent.message_type);
    assert_eq!(dead.correlation_id, sent.correlation_id);
    assert_eq!(dead.message, sent.message);
}

/// Settling twice, settling after settling otherwise, and settling an envelope that was never
/// received are no-ops, not errors.
pub async fn complete_and_abandon_are_idempotent<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    send_numbered(&q, 1).await;
    let m = q.must_receive().await;
    q.complete(&m).await.expect("complete");
    q.complete(&m).await.expect("second complete");
    if q.capabilities().can_abandon() {
        q.abandon(&m).await.expect("abandon after complete");
        q.abandon(&fixture_envelope())
            .await
            .expect("abandon of an unreceived envelope");
    }
    if q.capabilities().can_dead_letter() {
        q.move_to_dead_letter(&m)
            .await
            .expect("dead letter after complete");
    }
    q.complete(&fixture_envelope())
        .await
        .expect("complete of an unreceived envelope");
    assert!(
        q.receive(None, SHORT).await.expect("receive").is_none(),
        "a completed message came back"
    );
}

/// Every operation but name, capabilities, is_open, open and close fails with `NotOpened` on
/// a queue never opened and on a closed one.
pub async fn closed_queue_fails_not_opened<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    q.close(None).await.expect("close");
    q.close(None).await.expect("closing twice");
    assert!(!q.is_open());
    let never_opened = h
        .create(&crate::unique_name("conf-closed"), &[])
        .await
        .expect("create");
    for queue in [&q.queue, &never_opened] {
        assert!(!queue.name().is_empty());
        let e = fixture_envelope();
        assert_kind(
            queue.send(None, e.clone()).await,
            ErrorKind::NotOpened,
            "send",
        );
        assert_kind(
            queue.receive(None, Duration::ZERO).await,
            ErrorKind::NotOpened,
            "receive",
        );
        assert_kind(queue.peek(None).await, ErrorKind::NotOpened, "peek");
        assert_kind(
            queue.peek_batch(None, 3).await,
            ErrorKind::NotOpened,
            "peek_batch",
        );
        assert_kind(
            queue.read_message_count().await,
            ErrorKind::NotOpened,
            "read_message_count",
        );
        assert_kind(queue.clear(None).await, ErrorKind::NotOpened, "clear");
        assert_kind(queue.complete(&e).await, ErrorKind::NotOpened, "complete");
        assert_kind(
            queue.send_batch(None, vec![e.clone()]).await,
            ErrorKind::NotOpened,
            "send_batch",
        );
        assert_kind(
            queue.receive_batch(None, 3, Duration::ZERO).await,
            ErrorKind::NotOpened,
            "receive_batch",
        );
        assert_kind(
            queue.complete_batch(std::slice::from_ref(&e)).await,
            ErrorKind::NotOpened,
            "complete_batch",
        );
        let receiver = Arc::new(TestMessageReceiver::new());
        assert_kind(
            queue.listen(None, receiver).await,
            ErrorKind::NotOpened,
            "listen",
        );
    }
    let err = q
        .send(None, fixture_envelope())
        .await
        .expect_err("send on closed");
    assert!(err.to_string().contains("The queue is not opened"), "{err}");
}

/// An operation whose capability is false fails with `Unsupported`; one whose capability is
/// true never does.
pub async fn unsupported_operations_fail<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let caps = q.capabilities();
    fn check<T: std::fmt::Debug>(supported: bool, result: &courier_core::Result<T>, op: &str) {
        let unsupported = matches!(result, Err(e) if e.kind() == ErrorKind::Unsupported);
        assert_eq!(
            unsupported, !supported,
            "{op}: capability {supported} but got {result:?}"
        );
    }
    check(
        caps.can_send(),
        &q.send(None, fixture_envelope()).await,
        "send",
    );
    await_count(&q, usize::from(caps.can_send())).await;
    check(
        caps.can_message_count(),
        &q.read_message_count().await,
        "read_message_count",
    );
    check(caps.can_peek(), &q.peek(None).await, "peek");
    check(
        caps.can_peek_batch(),
        &q.peek_batch(None, 1).await,
        "peek_batch",
    );
    let received = q.receive(None, WAIT).await;
    check(caps.can_receive(), &received, "receive");
    if let Ok(Some(m)) = received {
        check(
            caps.can_renew_lock(),
            &q.renew_lock(&m, WAIT).await,
            "renew_lock",
        );
        check(caps.can_abandon(), &q.abandon(&m).await, "abandon");
        if let Some(m) = q.receive(None, WAIT).await.ok().flatten() {
            check(
                caps.can_dead_letter(),
                &q.move_to_dead_letter(&m).await,
                "move_to_dead_letter",
            );
            q.complete(&m).await.expect("complete");
        }
    }
    check(caps.can_clear(), &q.clear(None).await, "clear");
}

/// Every byte value survives the trip.
pub async fn binary_payload_round_trip<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    q.send(None, MessageEnvelope::new(None, "binary", bytes.clone()))
        .await
        .expect("send");
    let m = q.must_receive().await;
    assert_eq!(&m.message[..], &bytes[..]);
    q.complete(&m).await.expect("complete");
}

/// `peek_batch` returns ready messages in order, at most as many as asked, and not the locked.
pub async fn peek_batch_in_order<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_peek_batch() {
        return;
    }
    let ids = send_numbered(&q, 3).await;
    await_count(&q, 3).await;
    let two: Vec<String> = q
        .peek_batch(None, 2)
        .await
        .expect("peek_batch")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(two.len(), 2);
    if h.features().fifo {
        assert_eq!(two, ids[..2]);
    }
    assert_eq!(q.peek_batch(None, 10).await.expect("peek_batch").len(), 3);
    let taken = q.must_receive().await;
    let rest = q.peek_batch(None, 10).await.expect("peek_batch");
    assert_eq!(rest.len(), 2);
    assert!(
        rest.iter().all(|m| m.message_id != taken.message_id),
        "peek_batch shows a locked message"
    );
    assert!(q.peek_batch(None, 0).await.expect("peek_batch").is_empty());
}

/// `clear` removes ready messages.
pub async fn clear_removes_ready_messages<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_clear() {
        return;
    }
    send_numbered(&q, 3).await;
    await_count(&q, 3).await;
    q.clear(None).await.expect("clear");
    if q.capabilities().can_message_count() {
        assert_eq!(q.read_message_count().await.expect("count"), 0);
    }
    assert!(q.receive(None, SHORT).await.expect("receive").is_none());
}

/// `Duration::MAX` ("wait forever") is taken as a wait and as a lock time, never a panic.
pub async fn huge_durations_are_accepted<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sender = q.queue.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sender.send(None, fixture_envelope()).await
    });
    let m = tokio::time::timeout(WAIT, q.receive(None, Duration::MAX))
        .await
        .expect("a message arrived")
        .expect("receive")
        .expect("a message");
    send.await.expect("sender").expect("send");
    if q.capabilities().can_renew_lock() {
        q.renew_lock(&m, Duration::MAX).await.expect("renew_lock");
    }
    q.complete(&m).await.expect("complete");
}
