//! [`TestMessageReceiver`]: pip-services' test receiver, which records what it gets.

use std::time::Duration;

use async_trait::async_trait;
use courier_core::{MessageEnvelope, MessageQueue, MessageReceiver, Result};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A [`MessageReceiver`] that records every envelope it is given (pip-services'
/// `TestMessageReceiver`), and can wait for them to arrive.
#[derive(Debug, Default)]
pub struct TestMessageReceiver {
    messages: Mutex<Vec<MessageEnvelope>>,
    arrived: Notify,
}

impl TestMessageReceiver {
    /// An empty receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// The envelopes received so far, in order.
    pub fn messages(&self) -> Vec<MessageEnvelope> {
        self.messages.lock().clone()
    }

    /// How many envelopes were received.
    pub fn message_count(&self) -> usize {
        self.messages.lock().len()
    }

    /// Forgets the envelopes received so far.
    pub fn clear(&self) {
        self.messages.lock().clear();
    }

    /// Waits until at least `count` envelopes arrived or `timeout` passed; returns the count.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> usize {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.message_count() >= count {
                    return;
                }
                arrived.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.message_count()
    }
}

#[async_trait]
impl MessageReceiver for TestMessageReceiver {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        _queue: &dyn MessageQueue,
    ) -> Result<()> {
        self.messages.lock().push(envelope.clone());
        self.arrived.notify_waiters();
        Ok(())
    }
}
