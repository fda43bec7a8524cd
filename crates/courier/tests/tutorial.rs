//! The tutorial's flow (listen in the background, send, short wait, close) delivers the
//! message every time; and when close comes right after the send, the message is either
//! delivered or still queued, never lost.

use std::sync::Arc;
use std::time::Duration;

use courier::{
    CallbackMessageReceiver, MemoryMessageQueue, MessageEnvelope, MessageQueue, MessageQueueExt,
};
use tokio::sync::mpsc;

/// Runs the tutorial; returns the printed lines and how many messages are left in the queue.
async fn tutorial_once(wait: Duration) -> (Vec<String>, usize) {
    let queue = MemoryMessageQueue::new("my_queue");
    queue.open(Some("123")).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = CallbackMessageReceiver::new(move |envelope| {
        let tx = tx.clone();
        async move {
            // A slow receiver: close must wait for it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(format!(
                "Received message: {}",
                envelope.message_as_string()?
            ))
            .ok();
            Ok(())
        }
    });
    let listener = queue.begin_listen(Some("123"), Arc::new(receiver));
    tokio::time::sleep(Duration::from_millis(1)).await;
    queue
        .send(Some("123"), MessageEnvelope::new(None, "mymessage", "ABC"))
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    queue.close(Some("123")).await.unwrap();
    listener.join().await.unwrap();
    let mut lines = Vec::new();
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    queue.open(None).await.unwrap();
    let left = queue.read_message_count().await.unwrap() + queue.locked_count();
    (lines, left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_prints_the_message_every_time() {
    for i in 0..20 {
        let wait = if i % 2 == 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(5)
        };
        let (lines, left) = tutorial_once(wait).await;
        assert_eq!(
            lines,
            ["Received message: ABC"],
            "run {i} with a {wait:?} wait"
        );
        assert_eq!(left, 0, "run {i}: the message was handled and completed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_right_after_the_send_loses_nothing() {
    for i in 0..30 {
        let (lines, left) = tutorial_once(Duration::ZERO).await;
        assert_eq!(
            lines.len() + left,
            1,
            "run {i}: printed {lines:?}, {left} left in the queue"
        );
    }
}
