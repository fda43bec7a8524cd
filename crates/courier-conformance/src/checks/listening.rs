//! `listen`: completion on `Ok`, abandon on `Err` and panic, bounded concurrency, draining on
//! `end_listen` and `close`, and no resurrection by `clear`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{
    Error, ErrorKind, MessageEnvelope, MessageQueue, MessageQueueExt, MessageReceiver, Result,
};
use parking_lot::Mutex;

use super::{assert_exactly_once, send_numbered};
use crate::support::WAIT;
use crate::{Harness, TestMessageReceiver, TestQueue};

/// A receiver that sleeps, records ids and tracks how many run at once.
#[derive(Default)]
struct SlowReceiver {
    delay: Duration,
    running: AtomicUsize,
    max_running: AtomicUsize,
    started: AtomicUsize,
    done: Mutex<Vec<String>>,
}

impl SlowReceiver {
    fn new(delay: Duration) -> Self {
        SlowReceiver {
            delay,
            ..Default::default()
        }
    }

    fn done(&self) -> Vec<String> {
        self.done.lock().clone()
    }

    async fn wait_started(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.started.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "handlers did not start"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl MessageReceiver for SlowReceiver {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        _queue: &dyn MessageQueue,
    ) -> Result<()> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.lock().push(envelope.message_id.clone());
        Ok(())
    }
}

/// `listen` completes what its receiver handled without error: nothing comes back, even
/// after the lock timeout.
pub async fn listen_completes_on_ok<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("lock_timeout", "300")]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let handle = q.queue.begin_listen(None, receiver.clone());
    let ids = send_numbered(&q, 3).await;
    assert_eq!(receiver.wait_for(3, WAIT).await, 3);
    q.end_listen(None);
    handle.join().await.expect("listen");
    let got: Vec<String> = receiver
        .messages()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_exactly_once(&got, &ids);
    tokio::time::sleep(Duration::from_millis(400)).await;
    super::assert_no_message(
        &q,
        Duration::from_millis(300),
        "a handled message came back",
    )
    .await;
}

/// A receiver that fails on the first delivery, panics on the second and succeeds on the
/// third: `listen` abandons twice (the message comes back) and then completes.
pub async fn listen_abandons_on_error_and_panic<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("lock_timeout", "300")]).await;
    if !q.capabilities().can_abandon() && !h.features().lock_expiry {
        return;
    }
    struct Flaky(Mutex<Vec<u32>>);
    #[async_trait]
    impl MessageReceiver for Flaky {
        async fn receive_message(
            &self,
            envelope: &MessageEnvelope,
            _q: &dyn MessageQueue,
        ) -> Result<()> {
            let attempt = {
                let mut seen = self.0.lock();
                seen.push(envelope.delivery_count());
                seen.len()
            };
            match attempt {
                1 => Err(Error::new(ErrorKind::Backend, "first attempt fails")),
                2 => panic!("second attempt panics"),
                _ => Ok(()),
            }
        }
    }
    let receiver = Arc::new(Flaky(Mutex::new(Vec::new())));
    let handle = q.queue.begin_listen(None, receiver.clone());
    send_numbered(&q, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.0.lock().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered only {:?}",
            receiver.0.lock()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    q.end_listen(None);
    handle
        .join()
        .await
        .expect("listen survives a panicking receiver");
    assert_eq!(*receiver.0.lock(), vec![1, 2, 3], "delivery counts");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        q.receive(None, Duration::from_millis(300))
            .await
            .expect("receive")
            .is_none()
    );
}

/// No more than `listen_concurrency` messages are handled at once, and more than one is.
pub async fn listen_concurrency_is_bounded<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("listen_concurrency", "3")]).await;
    let receiver = Arc::new(SlowReceiver::new(Duration::from_millis(100)));
    let ids = send_numbered(&q, 9).await;
    let handle = q.queue.begin_listen(None, receiver.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.done().len() < 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled only {}",
            receiver.done().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    q.end_listen(None);
    handle.join().await.expect("listen");
    let max = receiver.max_running.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&max),
        "{max} handlers ran at once with listen_concurrency=3"
    );
    assert_exactly_once(&receiver.done(), &ids);
}

/// `end_listen` stops taking messages, lets running handlers finish, and loses nothing: what
/// was handled plus what is left is every message, once.
pub async fn end_listen_drains_without_loss<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("listen_concurrency", "2")]).await;
    let ids = send_numbered(&q, 20).await;
    let receiver = Arc::new(SlowReceiver::new(Duration::from_millis(50)));
    let handle = q.queue.begin_listen(None, receiver.clone());
    receiver.wait_started(5).await;
    q.end_listen(None);
    handle.join().await.expect("listen");
    let handled = receiver.done();
    assert_eq!(
        handled.len(),
        receiver.started.load(Ordering::SeqCst),
        "a started handler did not finish"
    );
    assert!(handled.len() < 20, "end_listen did not stop the loop");
    let mut all = handled.clone();
    all.extend(super::drain(&q, Duration::from_millis(500)).await);
    assert_exactly_once(&all, &ids);
}

/// `close` waits for a running handler, whose message is then completed, not lost or stuck.
pub async fn close_drains_in_flight_handler<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("lock_timeout", "1000")]).await;
    let receiver = Arc::new(SlowReceiver::new(Duration::from_millis(300)));
    let handle = q.queue.begin_listen(None, receiver.clone());
    send_numbered(&q, 1).await;
    receiver.wait_started(1).await;
    q.close(None).await.expect("close");
    assert_eq!(
        receiver.done().len(),
        1,
        "close returned before the handler finished"
    );
    handle.join().await.expect("listen");
    q.open(None).await.expect("reopen");
    // Past the lock timeout: a message left locked instead of completed would be back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        q.receive(None, Duration::from_millis(300))
            .await
            .expect("receive")
            .is_none(),
        "the drained message was not completed"
    );
}

/// `clear` does not restart a listener stopped by `end_listen` (pip-services bug #4).
pub async fn clear_does_not_restart_listener<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let handle = q.queue.begin_listen(None, receiver.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.end_listen(None);
    handle.join().await.expect("listen");
    if q.capabilities().can_clear() {
        q.clear(None).await.expect("clear");
    }
    let ids = send_numbered(&q, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.message_count(),
        0,
        "a stopped listener received a message"
    );
    assert_eq!(q.must_receive().await.message_id, ids[0]);
}

/// `end_listen` right after `begin_listen`, before the loop's task may have run, stops it:
/// `join` returns and the message sent meanwhile stays queued.
pub async fn end_listen_before_the_loop_starts<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let handle = q.queue.begin_listen(None, receiver.clone());
    q.end_listen(None);
    let ids = send_numbered(&q, 1).await;
    tokio::time::timeout(WAIT, handle.join())
        .await
        .expect("a loop stopped before it started still ran")
        .expect("listen");
    assert_eq!(receiver.message_count(), 0);
    assert_eq!(q.must_receive().await.message_id, ids[0]);
}

/// A receiver that always fails.
#[derive(Default)]
struct FailingReceiver {
    calls: AtomicUsize,
}

#[async_trait]
impl MessageReceiver for FailingReceiver {
    async fn receive_message(
        &self,
        _envelope: &MessageEnvelope,
        _queue: &dyn MessageQueue,
    ) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::new(ErrorKind::Backend, "this receiver always fails"))
    }
}

/// A receiver that always fails gets its message back after a growing delay, not at once
/// (100 ms, 200 ms, 400 ms, ... by default), and `end_listen` cuts the wait short: the message
/// is given back at once and stays in the queue.
pub async fn failing_receiver_backs_off<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("lock_timeout", "5000")]).await;
    if !q.capabilities().can_abandon() {
        return;
    }
    let receiver = Arc::new(FailingReceiver::default());
    let handle = q.queue.begin_listen(None, receiver.clone());
    let ids = send_numbered(&q, 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let calls = receiver.calls.load(Ordering::SeqCst);
    // 0, 100, 300, 700 ms: four deliveries in the first second (five with slow clocks).
    assert!(
        (2..=6).contains(&calls),
        "a failing receiver was called {calls} times in one second"
    );
    let stopped = tokio::time::Instant::now();
    q.end_listen(None);
    handle.join().await.expect("listen");
    assert!(
        stopped.elapsed() < Duration::from_millis(700),
        "end_listen waited out the redelivery delay ({:?})",
        stopped.elapsed()
    );
    let m = q.must_receive().await;
    assert_eq!(m.message_id, ids[0]);
    assert!(
        m.delivery_count() as usize > calls,
        "delivery count {} after {calls} failed deliveries",
        m.delivery_count()
    );
}

/// With no redelivery delay, a receiver that always fails makes the loop run as fast as the
/// queue allows, and it still never starves the runtime: on a current-thread runtime this
/// check's own timer fires and `end_listen` stops the loop.
pub async fn failing_receiver_does_not_starve_the_runtime<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[("redelivery_delay", "0")]).await;
    let receiver = Arc::new(FailingReceiver::default());
    let handle = q.queue.begin_listen(None, receiver.clone());
    send_numbered(&q, 1).await;
    let ticker = tokio::spawn(async {
        let mut ticks = 0u32;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ticks += 1;
        }
        ticks
    });
    let ticks = tokio::time::timeout(WAIT, ticker)
        .await
        .expect("another task never ran while the loop spun")
        .expect("ticker");
    assert_eq!(ticks, 10);
    q.end_listen(None);
    tokio::time::timeout(WAIT, handle.join())
        .await
        .expect("end_listen did not stop a spinning loop")
        .expect("listen");
    assert!(receiver.calls.load(Ordering::SeqCst) >= 1);
}

/// `close` right after `begin_listen` and a send, while the loop's receive may be in flight:
/// the message was either handled, or it is still in the queue with no delivery used up (with
/// `max_deliveries=1` it would otherwise go to the dead-letter queue unseen).
pub async fn close_during_receive_uses_no_delivery<H: Harness>(h: &H) {
    let name = crate::unique_name("conf");
    let options = [("max_deliveries", "1"), ("lock_timeout", "2000")];
    let mut handled = 0;
    for round in 0..5 {
        let q = TestQueue::open_named(h, &name, &options).await;
        let receiver = Arc::new(TestMessageReceiver::new());
        let handle = q.queue.begin_listen(None, receiver.clone());
        send_numbered(&q, 1).await;
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        q.close(None).await.expect("close");
        handle.join().await.expect("listen");
        handled += receiver.message_count();
    }
    let q = TestQueue::open_named(h, &name, &options).await;
    let mut left = 0;
    if h.features().survives_reopen {
        while let Some(m) = q
            .receive(None, Duration::from_millis(300))
            .await
            .expect("receive")
        {
            assert_eq!(m.delivery_count(), 1, "a delivery was used up by close");
            q.complete(&m).await.expect("complete");
            left += 1;
        }
        assert_eq!(handled + left, 5, "messages were lost");
    }
    super::assert_no_dead_letters(
        h,
        &q,
        "close sent a message nobody was given to the dead-letter queue",
    )
    .await;
}
