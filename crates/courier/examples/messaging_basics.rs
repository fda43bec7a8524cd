//! The pip-services "Messaging basics" tutorial, in Rust.
//!
//! A receiver that prints what it gets, a memory queue, a listener started in the background,
//! one message of type `mymessage`, a short wait, close. It prints `Received message: ABC`
//! every time: `receive` wakes on `send` (no polling), and `close` lets the listener finish
//! the message it is handling (the upstream Node and Go versions can lose it).
//!
//! ```sh
//! cargo run --example messaging_basics
//! ```

use std::sync::Arc;
use std::time::Duration;

use courier::{
    MemoryMessageQueue, MessageEnvelope, MessageQueue, MessageQueueExt, MessageReceiver, Result,
    async_trait,
};

struct MyMessageReceiver;

#[async_trait]
impl MessageReceiver for MyMessageReceiver {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        _queue: &dyn MessageQueue,
    ) -> Result<()> {
        println!("Received message: {}", envelope.message_as_string()?);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let message_queue = MemoryMessageQueue::new("my_queue");
    message_queue.open(Some("123")).await?;

    // Listen in the background, as the tutorial does "in a separate thread".
    let listener = message_queue.begin_listen(Some("123"), Arc::new(MyMessageReceiver));

    message_queue
        .send(Some("123"), MessageEnvelope::new(None, "mymessage", "ABC"))
        .await?;

    // Wait for the message, then close: close also waits for a message being handled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    message_queue.close(Some("123")).await?;
    listener.join().await
}
