//! The tutorial's code over any queue a URI names: the same calls run on every backend.
//!
//! ```sh
//! cargo run --example connect_uri                                  # memory://my_queue
//! cargo run --example connect_uri -- "memory://orders?lock_timeout=5000"
//! ```

use std::sync::Arc;
use std::time::Duration;

use courier::{CallbackMessageReceiver, MessageEnvelope, MessageQueueExt, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://my_queue".to_owned());
    let queue = courier::connect(&uri).await?;
    println!(
        "Connected to {} ({})",
        queue.name(),
        courier::redact_uri(&uri)
    );

    let receiver = CallbackMessageReceiver::new(|envelope| async move {
        println!("Received message: {}", envelope.message_as_string()?);
        Ok(())
    });
    let listener = queue.begin_listen(Some("123"), Arc::new(receiver));

    queue
        .send(Some("123"), MessageEnvelope::new(None, "mymessage", "ABC"))
        .await?;
    queue
        .send_as_object(Some("123"), "mymessage", &["DEF", "GHI"])
        .await?;

    tokio::time::sleep(Duration::from_millis(100)).await;
    queue.close(Some("123")).await?;
    listener.join().await
}
