//! The tutorial's flow (listen in the background, send, short wait, close) delivers the
//! message every time, even when close comes right after the send.

use std::sync::Arc;
use std::time::Duration;

use courier::{
    CallbackMessageReceiver, MemoryMessageQueue, MessageEnvelope, MessageQueue, MessageQueueExt,
};
use tokio::sync::mpsc;

async fn tutorial_once(wait: Duration) -> Vec<String> {
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
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_prints_the_message_every_time() {
    for (i, wait) in [
        Duration::from_millis(100),
        Duration::from_millis(5),
        Duration::ZERO,
    ]
    .into_iter()
    .cycle()
    .take(30)
    .enumerate()
    {
        let lines = tutorial_once(wait).await;
        assert_eq!(
            lines,
            ["Received message: ABC"],
            "run {i} with a {wait:?} wait"
        );
    }
}
