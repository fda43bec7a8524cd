//! Behaviour specific to `MemoryMessageQueue`: the `memory://` registry, bounded capacity,
//! closing while waiting, configuration, and the dead-letter queue's name.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    CallbackMessageReceiver, ConfigParams, ErrorKind, MemoryMessageQueue, MessageEnvelope,
    MessageQueue, MessageQueueExt, QueueOptions, connect,
};

fn env(text: &str) -> MessageEnvelope {
    MessageEnvelope::new(None, "t", text.to_owned())
}

#[tokio::test]
async fn connect_twice_gives_the_same_queue() {
    let a = connect("memory://same-queue-test?lock_timeout=200")
        .await
        .unwrap();
    let b = connect("memory://same-queue-test").await.unwrap();
    a.send(None, env("x")).await.unwrap();
    let got = b
        .receive(None, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.message_as_string().unwrap(), "x");
    b.complete(&got).await.unwrap();
    assert_eq!(a.read_message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn bounded_send_waits_for_room_and_cancelled_send_enqueues_nothing() {
    let mut options = QueueOptions::default();
    options.max_size = Some(2);
    let q = MemoryMessageQueue::with_options("bounded", options);
    q.open(None).await.unwrap();
    q.send(None, env("1")).await.unwrap();
    q.send(None, env("2")).await.unwrap();
    // Full: a send waits, and one that gives up left nothing behind.
    let blocked = tokio::time::timeout(Duration::from_millis(100), q.send(None, env("3"))).await;
    assert!(blocked.is_err(), "send did not wait for room");
    assert_eq!(q.read_message_count().await.unwrap(), 2);
    // A locked message still takes room; completing it makes room.
    let first = q.receive(None, Duration::ZERO).await.unwrap().unwrap();
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.send(None, env("3")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "a locked message should still count against max_size"
    );
    q.complete(&first).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let order: Vec<String> = q
        .peek_batch(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message_as_string().unwrap())
        .collect();
    assert_eq!(order, ["2", "3"]);
}

#[tokio::test]
async fn close_wakes_waiting_receivers_and_senders_with_not_opened() {
    let mut options = QueueOptions::default();
    options.max_size = Some(1);
    let q = MemoryMessageQueue::with_options("closing", options);
    q.open(None).await.unwrap();
    let receiver = tokio::spawn({
        let q = q.clone();
        async move { q.receive(None, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.send(None, env("fills")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), receiver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.is_some());
    let sender = tokio::spawn({
        let q = q.clone();
        async move { q.send(None, env("waits")).await }
    });
    let waiting_receiver = tokio::spawn({
        let q = q.clone();
        async move { q.receive(None, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.close(None).await.unwrap();
    let send_err = tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(send_err.kind(), ErrorKind::NotOpened);
    let recv_err = tokio::time::timeout(Duration::from_secs(5), waiting_receiver)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(recv_err.kind(), ErrorKind::NotOpened);
}

#[tokio::test]
async fn expired_lock_past_max_deliveries_goes_to_the_dead_letter_queue() {
    let config = ConfigParams::from_string(
        "queue=expiring;options.lock_timeout=50;options.max_deliveries=1;options.dead_letter_queue=graveyard",
    )
    .unwrap();
    let q = MemoryMessageQueue::with_config(&config).unwrap();
    q.open(None).await.unwrap();
    q.send(None, env("x")).await.unwrap();
    let m = q.receive(None, Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(q.receive(None, Duration::ZERO).await.unwrap().is_none());
    assert!(m.lock_token().is_none(), "the expired lock is released");
    let dlq = q.dead_letter_queue();
    assert_eq!(dlq.name(), "graveyard");
    let dead = dlq.receive(None, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(dead.message_id, m.message_id);
    assert_eq!(
        dead.delivery_count(),
        1,
        "counted afresh in the dead-letter queue"
    );
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let bad = ConfigParams::from_string("name=q;options.max_size=lots").unwrap();
    let err = MemoryMessageQueue::with_config(&bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("options.max_size"), "{err}");
    let unnamed = MemoryMessageQueue::with_config(&ConfigParams::new()).unwrap_err();
    assert_eq!(unnamed.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn a_listener_started_after_the_send_still_gets_the_message() {
    let q = MemoryMessageQueue::new("late-listener");
    q.open(None).await.unwrap();
    q.send(None, env("early")).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = CallbackMessageReceiver::new(move |m| {
        let tx = tx.clone();
        async move {
            tx.send(m.message_as_string()?).ok();
            Ok(())
        }
    });
    let handle = q.begin_listen(None, Arc::new(receiver));
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("early"));
    q.close(None).await.unwrap();
    handle.join().await.unwrap();
    assert_eq!(q.locked_count(), 0);
}

#[tokio::test]
async fn a_receiver_that_settles_itself_is_not_settled_again() {
    let q = MemoryMessageQueue::new("self-settling");
    q.open(None).await.unwrap();
    let receiver = CallbackMessageReceiver::with_queue(|m, queue| {
        Box::pin(async move { queue.move_to_dead_letter(m).await })
    });
    let handle = q.begin_listen(None, Arc::new(receiver));
    q.send(None, env("to the dead")).await.unwrap();
    let dlq = q.dead_letter_queue();
    let dead = dlq.receive(None, Duration::from_secs(5)).await.unwrap();
    assert!(dead.is_some());
    q.end_listen(None);
    handle.join().await.unwrap();
    assert_eq!(q.read_message_count().await.unwrap(), 0);
    assert_eq!(q.locked_count(), 0);
}

/// A bounded queue never holds more than `max_size` messages, also while messages move between
/// the lock table and the ready list (abandoned over and over): producers woken by the room a
/// completion makes never slip in through that gap. Held messages are counted as sends that
/// returned minus completions already begun: never more than the queue really holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_queue_never_overshoots_while_messages_move() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let config =
        courier_core::ConfigParams::from_string("name=bounded-moving;options.max_size=4").unwrap();
    let queue = courier_core::MemoryMessageQueue::with_config(&config).unwrap();
    queue.open(None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..3 {
        let (queue, sent, completed, worst) = (
            queue.clone(),
            sent.clone(),
            completed.clone(),
            worst.clone(),
        );
        producers.push(tokio::spawn(async move {
            loop {
                let envelope = courier_core::MessageEnvelope::new(None, "t", "x");
                queue.send(None, envelope).await.unwrap();
                let held =
                    sent.fetch_add(1, Ordering::SeqCst) + 1 - completed.load(Ordering::SeqCst);
                worst.fetch_max(held, Ordering::SeqCst);
            }
        }));
    }
    let mut churn = Vec::new();
    for _ in 0..2 {
        let (queue, stop, completed) = (queue.clone(), stop.clone(), completed.clone());
        churn.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = queue
                    .receive(None, std::time::Duration::ZERO)
                    .await
                    .unwrap()
                {
                    n += 1;
                    if n % 4 == 0 {
                        completed.fetch_add(1, Ordering::SeqCst);
                        queue.complete(&m).await.unwrap();
                    } else {
                        queue.abandon(&m).await.unwrap();
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for task in churn {
        task.await.unwrap();
    }
    for p in &producers {
        p.abort();
    }
    let worst = worst.load(Ordering::SeqCst);
    assert!(
        sent.load(Ordering::SeqCst) > 100,
        "too little traffic to tell"
    );
    assert!(
        worst <= 4,
        "the bounded queue held {worst} messages, over its max_size of 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_send_batch_waits_for_room_that_receive_batch_makes() {
    let config = ConfigParams::from_string("name=bounded-batches;options.max_size=2").unwrap();
    let queue = MemoryMessageQueue::with_config(&config).unwrap();
    queue.open(None).await.unwrap();
    let sender = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let batch = (0..5).map(|i| env(&i.to_string())).collect();
            queue.send_batch(None, batch).await
        })
    };
    let mut got = Vec::new();
    while got.len() < 5 {
        let batch = queue
            .receive_batch(None, 5, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "the sender stalled with room in the queue"
        );
        assert!(
            batch.len() <= 2,
            "a queue of max_size 2 held {}",
            batch.len()
        );
        queue.complete_batch(&batch).await.unwrap();
        got.extend(batch.iter().map(|m| m.message_as_string().unwrap()));
    }
    tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the batch was sent")
        .unwrap()
        .unwrap();
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
}

#[test]
fn a_misspelt_option_in_config_params_is_an_error() {
    let config = courier_core::ConfigParams::from_string("name=q;options.lock_timout=5").unwrap();
    let err = courier_core::MemoryMessageQueue::with_config(&config).unwrap_err();
    assert_eq!(err.kind(), courier_core::ErrorKind::Config);
    assert!(err.to_string().contains("options.lock_timout"), "{err}");
}

/// A message given back goes behind every message sent before, peeked or not, and every
/// message arrives once, in queue order.
#[tokio::test]
async fn order_holds_across_peeks_sends_and_abandons() {
    let q = MemoryMessageQueue::new("order-across-parts");
    q.open(None).await.unwrap();
    for text in ["a", "b"] {
        q.send(None, env(text)).await.unwrap();
    }
    let peeked = q.peek(None).await.unwrap().unwrap();
    assert_eq!(peeked.message_as_string().unwrap(), "a");
    let a = q.receive(None, Duration::ZERO).await.unwrap().unwrap();
    q.send(None, env("c")).await.unwrap();
    q.abandon(&a).await.unwrap();
    q.send(None, env("d")).await.unwrap();
    let peeked: Vec<_> = q
        .peek_batch(None, 2)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message_as_string().unwrap())
        .collect();
    assert_eq!(peeked, ["b", "c"]);
    assert_eq!(q.read_message_count().await.unwrap(), 4);
    let mut order = Vec::new();
    while let Some(m) = q.receive(None, Duration::ZERO).await.unwrap() {
        order.push(m.message_as_string().unwrap());
        q.complete(&m).await.unwrap();
    }
    assert_eq!(order, ["b", "c", "a", "d"]);
}
