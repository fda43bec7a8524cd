//! Helpers the checks share: fresh queues and envelope comparison.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{MessageEnvelope, MessageQueue};

use crate::Harness;

/// The longest any check waits for a message before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A fresh name, unique across processes: `<prefix>-<12 hex digits>`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// An open queue of the harness, with its name.
#[derive(Clone)]
pub struct TestQueue {
    /// The queue, open.
    pub queue: Arc<dyn MessageQueue>,
    /// Its name.
    pub name: String,
}

impl std::fmt::Debug for TestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestQueue")
            .field("name", &self.name)
            .finish()
    }
}

impl std::ops::Deref for TestQueue {
    type Target = dyn MessageQueue;
    fn deref(&self) -> &Self::Target {
        &*self.queue
    }
}

impl TestQueue {
    /// Opens a fresh queue of `harness` with `options`.
    ///
    /// # Panics
    ///
    /// If the queue cannot be created or opened.
    pub async fn open<H: Harness>(harness: &H, options: &[(&str, &str)]) -> Self {
        Self::open_named(harness, &unique_name("conf"), options).await
    }

    /// Opens the queue `name` of `harness` with `options`.
    ///
    /// # Panics
    ///
    /// If the queue cannot be created or opened.
    pub async fn open_named<H: Harness>(harness: &H, name: &str, options: &[(&str, &str)]) -> Self {
        let queue = harness
            .create(name, options)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot create queue {name}: {e}", harness.backend()));
        queue
            .open(None)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot open queue {name}: {e}", harness.backend()));
        TestQueue {
            queue,
            name: name.to_owned(),
        }
    }

    /// Receives with the suite's long wait and fails if nothing comes.
    ///
    /// # Panics
    ///
    /// If receive fails or times out.
    pub async fn must_receive(&self) -> MessageEnvelope {
        self.queue
            .receive(None, WAIT)
            .await
            .expect("receive failed")
            .unwrap_or_else(|| panic!("no message arrived on {} within {WAIT:?}", self.name))
    }
}

/// The pip-services fixture's envelope.
pub(crate) fn fixture_envelope() -> MessageEnvelope {
    MessageEnvelope::new(Some("123"), "Test", "Test message")
}

/// The pip-services fixture's "same message": type, payload and correlation id.
pub(crate) fn assert_same_message(got: &MessageEnvelope, sent: &MessageEnvelope) {
    assert_eq!(got.message_type, sent.message_type, "message_type");
    assert_eq!(got.message, sent.message, "message");
    assert_eq!(got.correlation_id, sent.correlation_id, "correlation_id");
}
