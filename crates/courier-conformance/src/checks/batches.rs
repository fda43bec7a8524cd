//! The batch calls: `send_batch`, `receive_batch` and `complete_batch` keep the order and the
//! locks of their one-message forms, return partial batches at once, wait on an empty queue,
//! and settle a batch that mixes stale and live locks correctly.

use std::time::Duration;

use courier_core::MessageEnvelope;

use super::{assert_exactly_once, assert_no_message, await_count};
use crate::support::WAIT;
use crate::{Harness, TestQueue};

/// `count` envelopes with payloads `0..count`, and their ids.
fn numbered(count: usize) -> (Vec<MessageEnvelope>, Vec<String>) {
    let envelopes: Vec<_> = (0..count)
        .map(|i| MessageEnvelope::new(Some(&format!("cid-{i}")), "batch", i.to_string()))
        .collect();
    let ids = envelopes.iter().map(|e| e.message_id.clone()).collect();
    (envelopes, ids)
}

/// Receives batches of at most `max` until `count` messages came; fails after the suite's
/// wait. Asserts that no batch is larger than `max` and that each message is locked.
async fn collect(q: &TestQueue, count: usize, max: usize) -> Vec<MessageEnvelope> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < count {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !wait.is_zero(),
            "{}: {} of {count} messages arrived within {WAIT:?}",
            q.name,
            got.len()
        );
        let batch = q
            .receive_batch(None, max.min(count - got.len()), wait)
            .await
            .expect("receive_batch");
        assert!(
            batch.len() <= max,
            "a batch of {} for max {max}",
            batch.len()
        );
        for m in &batch {
            assert!(
                m.lock_token().is_some(),
                "a batch's message carries its lock"
            );
            assert!(
                m.delivery_count() >= 1,
                "a batch's message counts its delivery"
            );
        }
        got.extend(batch);
    }
    got
}

fn ids(messages: &[MessageEnvelope]) -> Vec<String> {
    messages.iter().map(|m| m.message_id.clone()).collect()
}

/// A batch sent with `send_batch` comes back whole through `receive_batch`, in order on a FIFO
/// backend, with its fields; `complete_batch` deletes it and releases every lock.
pub async fn batch_round_trip_in_order<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    q.send_batch(None, Vec::new())
        .await
        .expect("an empty send_batch");
    let (envelopes, sent) = numbered(12);
    q.send_batch(Some("batch-cid"), envelopes)
        .await
        .expect("send_batch");
    await_count(&q, 12).await;
    let got = collect(&q, 12, 12).await;
    if h.features().fifo {
        assert_eq!(ids(&got), sent, "a batch keeps the send order");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.message_as_string().expect("text"), i.to_string());
            assert_eq!(
                m.correlation_id.as_deref(),
                Some(format!("cid-{i}").as_str())
            );
            assert_eq!(m.message_type, "batch");
            assert!(m.sent_time.is_some(), "send_batch stamps sent_time");
        }
    } else {
        assert_exactly_once(&ids(&got), &sent);
    }
    // Every message listed twice: each is completed once, and the call does not wait on
    // itself.
    let mut twice = got.clone();
    twice.extend(got.iter().cloned());
    q.complete_batch(&twice).await.expect("complete_batch");
    for m in &got {
        assert!(
            m.lock_token().is_none(),
            "complete_batch releases every lock"
        );
    }
    q.complete_batch(&got)
        .await
        .expect("completing a completed batch again is a no-op");
    q.complete_batch(&[])
        .await
        .expect("an empty complete_batch");
    if q.capabilities().can_message_count() {
        assert_eq!(q.read_message_count().await.expect("count"), 0);
    }
    assert_no_message(
        &q,
        Duration::from_millis(300),
        "complete_batch deleted the batch",
    )
    .await;
}

/// `receive_batch` returns what is ready without waiting to fill the batch, never more than
/// `max`, nothing for `max == 0`, and on an empty queue waits its timeout, then returns empty.
pub async fn receive_batch_partial_and_empty<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let started = tokio::time::Instant::now();
    let none = q
        .receive_batch(None, 5, Duration::from_millis(300))
        .await
        .expect("receive_batch");
    let waited = started.elapsed();
    assert!(
        none.is_empty(),
        "an empty queue gave {} messages",
        none.len()
    );
    assert!(
        waited >= Duration::from_millis(295),
        "an empty receive_batch returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "returned after {waited:?}");

    let (envelopes, sent) = numbered(3);
    q.send_batch(None, envelopes).await.expect("send_batch");
    await_count(&q, 3).await;
    assert!(
        q.receive_batch(None, 0, WAIT)
            .await
            .expect("receive_batch of 0")
            .is_empty(),
        "max 0 takes nothing"
    );
    let started = tokio::time::Instant::now();
    let first = collect(&q, 1, 2).await;
    let rest = collect(&q, 3 - first.len(), 10).await;
    assert!(
        started.elapsed() < WAIT,
        "a partial batch waited for the batch to fill"
    );
    let mut got = ids(&first);
    got.extend(ids(&rest));
    assert_exactly_once(&got, &sent);
    q.complete_batch(&first).await.expect("complete_batch");
    q.complete_batch(&rest).await.expect("complete_batch");
    assert_no_message(
        &q,
        Duration::from_millis(200),
        "the partial batches were completed",
    )
    .await;
}

/// The messages of a batch are locked like received ones: invisible to other receivers, to
/// `peek` and to the count, and each can be settled on its own.
pub async fn batch_locks_hide_messages<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let (envelopes, sent) = numbered(4);
    q.send_batch(None, envelopes).await.expect("send_batch");
    await_count(&q, 4).await;
    let batch = collect(&q, 2, 2).await;
    if q.capabilities().can_message_count() {
        assert_eq!(
            q.read_message_count().await.expect("count"),
            2,
            "a batch's messages are not counted while locked"
        );
    }
    if q.capabilities().can_peek_batch() {
        let peeked = ids(&q.peek_batch(None, 10).await.expect("peek_batch"));
        for m in &batch {
            assert!(
                !peeked.contains(&m.message_id),
                "peek showed a message locked by a batch"
            );
        }
    }
    let others = collect(&q, 2, 5).await;
    let mut all = ids(&batch);
    all.extend(ids(&others));
    assert_exactly_once(&all, &sent);
    // One settled alone, then the batch with it: the settled one is skipped.
    q.complete(&batch[0]).await.expect("complete");
    q.complete_batch(&batch).await.expect("complete_batch");
    q.complete_batch(&others).await.expect("complete_batch");
    assert_no_message(&q, Duration::from_millis(200), "everything was completed").await;
}

/// A batch holding a stale lock (expired, its message delivered again) and live ones: the
/// stale one is skipped, the live ones are completed, and nothing comes back.
pub async fn complete_batch_mixes_expired_and_live_locks<H: Harness>(h: &H) {
    if !h.features().lock_expiry {
        return;
    }
    let q = TestQueue::open(h, &[("lock_timeout", "300")]).await;
    let (envelopes, sent) = numbered(2);
    q.send_batch(None, envelopes).await.expect("send_batch");
    await_count(&q, 2).await;
    let stale = collect(&q, 1, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = collect(&q, 2, 2).await;
    assert_exactly_once(&ids(&live), &sent);
    let again = live
        .iter()
        .find(|m| m.message_id == stale.message_id)
        .expect("the expired message is delivered again");
    assert_eq!(again.delivery_count(), 2, "a redelivery counts");
    let mut mixed = vec![stale.clone()];
    mixed.extend(live.iter().cloned());
    q.complete_batch(&mixed).await.expect("complete_batch");
    for m in &live {
        assert!(m.lock_token().is_none(), "the live locks were completed");
    }
    assert_no_message(
        &q,
        Duration::from_millis(600),
        "a message of a completed batch came back",
    )
    .await;
}

/// A batch larger than any one statement, pipeline window or read carries (1 010 messages)
/// arrives whole and exactly once, taken and completed in batches of up to 600 (a push broker
/// hands out no more than its prefetch before some are completed). The size stays within what
/// Mosquitto queues for a subscriber by default (1 000 queued and 20 in flight): beyond that
/// the broker itself drops messages for a subscriber that lags.
pub async fn large_batches_arrive_whole<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let (envelopes, sent) = numbered(1_010);
    // Sent while being received: a broker may hold a publisher back until its subscriber has
    // room.
    let sender = q.queue.clone();
    let sending = tokio::spawn(async move { sender.send_batch(None, envelopes).await });
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !wait.is_zero(),
            "{}: {} of {} messages arrived",
            q.name,
            got.len(),
            sent.len()
        );
        let batch = q
            .receive_batch(None, 600, wait)
            .await
            .expect("receive_batch");
        assert!(batch.len() <= 600, "a batch of {} for max 600", batch.len());
        q.complete_batch(&batch).await.expect("complete_batch");
        got.extend(ids(&batch));
    }
    sending
        .await
        .expect("the sending task")
        .expect("send_batch");
    if h.features().fifo {
        assert_eq!(got, sent, "a large batch keeps the send order");
    } else {
        assert_exactly_once(&got, &sent);
    }
    assert_no_message(
        &q,
        Duration::from_millis(300),
        "the large batch was completed",
    )
    .await;
}

/// A `receive_batch` dropped before it returns (inside `tokio::select!` or a timeout) uses no
/// delivery of the messages it may have taken: with `max_deliveries` 1 they are all delivered
/// afterwards, once each, with a delivery count of 1, and none is dead-lettered.
pub async fn cancelled_receive_batch_uses_no_delivery<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("max_deliveries", "1"), ("lock_timeout", "1000")]).await;
    for pause in [Duration::ZERO, Duration::from_millis(1500)] {
        let (envelopes, sent) = numbered(3);
        q.send_batch(None, envelopes).await.expect("send_batch");
        await_count(&q, 3).await;
        let mut got = Vec::new();
        for _ in 0..5 {
            match tokio::time::timeout(
                Duration::ZERO,
                q.receive_batch(None, 3, Duration::from_millis(200)),
            )
            .await
            {
                Ok(received) => {
                    got.extend(received.expect("receive_batch"));
                    if !got.is_empty() {
                        break;
                    }
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        // A call that returned at once handed its messages out: they are settled now, before
        // the pause outlasts their locks.
        q.complete_batch(&got).await.expect("complete_batch");
        // Then whatever cancelled calls may have taken outlives its lock.
        tokio::time::sleep(pause).await;
        let rest = collect(&q, sent.len() - got.len(), 3).await;
        q.complete_batch(&rest).await.expect("complete_batch");
        got.extend(rest);
        assert_exactly_once(&ids(&got), &sent);
        for m in &got {
            assert_eq!(
                m.delivery_count(),
                1,
                "cancelled receive_batch calls used up deliveries"
            );
        }
    }
    super::assert_no_dead_letters(
        h,
        &q,
        "a message nobody was given went to the dead-letter queue",
    )
    .await;
}
