//! Many producers and consumers at once, `receive` cancelled inside `tokio::select!`, and
//! receive loops that yield to the runtime's other tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{MessageEnvelope, MessageQueue};
use parking_lot::Mutex;

use super::{assert_exactly_once, drain, send_numbered};
use crate::support::WAIT;
use crate::{Harness, TestQueue};

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
const PER_PRODUCER: usize = 100;

/// Four producers and four consumers on one queue: every message is completed exactly once,
/// and the queue ends empty.
pub async fn concurrent_producers_consumers<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let total = PRODUCERS * PER_PRODUCER;
    let sent = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let completed = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let queue = q.queue.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_PRODUCER {
                let envelope = MessageEnvelope::new(None, "load", format!("{p}-{i}"));
                sent.lock().push(envelope.message_id.clone());
                queue.send(None, envelope).await.expect("send");
            }
        }));
    }
    for _ in 0..CONSUMERS {
        let queue = q.queue.clone();
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT * 3;
            while completed.lock().len() < total && tokio::time::Instant::now() < deadline {
                if let Some(m) = queue
                    .receive(None, Duration::from_millis(100))
                    .await
                    .expect("receive")
                {
                    queue.complete(&m).await.expect("complete");
                    completed.lock().push(m.message_id.clone());
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_exactly_once(&completed.lock(), &sent.lock());
    if q.capabilities().can_message_count() {
        assert_eq!(q.read_message_count().await.expect("count"), 0);
    }
}

/// A `receive` dropped by `tokio::select!` before it returned takes no message: a consumer
/// that keeps cancelling its receives still gets every message exactly once.
pub async fn receive_is_cancel_safe<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let count = 200;
    let producer = {
        let queue = q.queue.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let envelope = MessageEnvelope::new(None, "cancel", i.to_string());
                ids.push(envelope.message_id.clone());
                queue.send(None, envelope).await.expect("send");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            ids
        })
    };
    let mut got = Vec::new();
    let mut cancelled = 0usize;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while got.len() < count && tokio::time::Instant::now() < deadline {
        // Alternate a receive that is almost always cancelled with one that may finish.
        let patience = if got.len() % 2 == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(300)
        };
        tokio::select! {
            received = q.receive(None, Duration::from_millis(50)) => {
                if let Some(m) = received.expect("receive") {
                    q.complete(&m).await.expect("complete");
                    got.push(m.message_id.clone());
                }
            }
            () = tokio::time::sleep(patience) => cancelled += 1,
        }
    }
    let sent = producer.await.expect("producer");
    got.extend(drain(&q, Duration::from_millis(300)).await);
    assert!(cancelled > 0, "no receive was cancelled");
    assert_exactly_once(&got, &sent);
}

/// Receives cancelled after their first poll (`select!`, `timeout`) use up no delivery: with
/// `max_deliveries=1` the message is still delivered, as its first delivery, and the
/// dead-letter queue stays empty, both when the next receive comes at once and when it comes
/// after the cancelled claim was given back.
pub async fn cancelled_receive_uses_no_delivery<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("max_deliveries", "1"), ("lock_timeout", "1000")]).await;
    for pause in [Duration::ZERO, Duration::from_millis(1500)] {
        let ids = super::send_numbered(&q, 1).await;
        super::await_count(&q, 1).await;
        let mut direct = None;
        for _ in 0..5 {
            match tokio::time::timeout(Duration::ZERO, q.receive(None, Duration::from_millis(200)))
                .await
            {
                Ok(received) => {
                    direct = received.expect("receive");
                    if direct.is_some() {
                        break;
                    }
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        tokio::time::sleep(pause).await;
        let m = match direct {
            Some(m) => m,
            None => q.must_receive().await,
        };
        assert_eq!(m.message_id, ids[0]);
        assert_eq!(
            m.delivery_count(),
            1,
            "cancelled receives used up deliveries"
        );
        q.complete(&m).await.expect("complete");
    }
    super::assert_no_dead_letters(
        h,
        &q,
        "a message nobody was given went to the dead-letter queue",
    )
    .await;
}

/// How many messages the loop of [`receive_loops_yield_to_other_tasks`] takes: over twice
/// Tokio's budget of 128 operations a task may do before it is made to yield.
const LONG_LOOP: usize = 300;

/// A loop of receives and completes over a backlog yields to the runtime now and then, as a
/// loop over a Tokio channel does, even where every call could finish at once (an in-memory
/// queue). On a current-thread runtime a loop that never yielded would hold up every other
/// task, timers included, until the backlog was gone. Counted by polls, so that the check
/// means the same on every runtime and under any load.
pub async fn receive_loops_yield_to_other_tasks<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = send_numbered(&q, LONG_LOOP).await;
    let (got, yields) = count_yields(async {
        let mut ids = Vec::with_capacity(LONG_LOOP);
        while ids.len() < LONG_LOOP {
            let Some(m) = q.receive(None, WAIT).await.expect("receive") else {
                break;
            };
            q.complete(&m).await.expect("complete");
            ids.push(m.message_id.clone());
        }
        ids
    })
    .await;
    assert!(
        yields >= 2,
        "{LONG_LOOP} receives yielded {yields} times: other tasks could not run meanwhile"
    );
    assert_exactly_once(&got, &sent);
}

/// Runs `future` to its end; returns its output and how many times it returned `Pending`.
async fn count_yields<F: Future>(future: F) -> (F::Output, usize) {
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    let output = std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() {
            pending += 1;
        }
        poll
    })
    .await;
    (output, pending)
}
