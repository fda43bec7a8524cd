//! [`QueueBase`]: what every queue shares (pip-services' abstract `MessageQueue` class).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::Counter;

use super::listen::{ListenControl, run_listener};
use crate::connection::{ConnectionParams, CredentialParams};
use crate::options::resolve_name;
use crate::{
    ConfigParams, Error, MessageEnvelope, MessageQueue, MessageReceiver, QueueOptions, Result,
};

/// The state and behaviour every backend shares: name, options, connection and credential
/// parameters (never shown with the password), the open flag, the `metrics` counters
/// `queue.<name>.sent_messages` / `received_messages` / `dead_messages`, and the listen loops.
///
/// A backend embeds one and delegates to it:
///
/// ```
/// use courier_core::QueueOptions;
/// use courier_core::backend::QueueBase;
///
/// let base = QueueBase::new("my-backend", "orders", QueueOptions::default());
/// assert_eq!(base.name(), "orders");
/// assert!(base.check_open().is_err());
/// base.set_open(true);
/// assert!(base.check_open().is_ok());
/// ```
pub struct QueueBase {
    backend: &'static str,
    name: String,
    options: QueueOptions,
    connection: ConnectionParams,
    credential: CredentialParams,
    opened: AtomicBool,
    sent: Counter,
    received: Counter,
    dead: Counter,
    listen: ListenControl,
}

impl QueueBase {
    /// A closed queue base for `backend` ("memory", "sqlite", ...) called `name`.
    ///
    /// The counters are registered with the `metrics` recorder installed now: install yours
    /// before creating queues.
    pub fn new(backend: &'static str, name: &str, options: QueueOptions) -> Self {
        QueueBase {
            backend,
            name: name.to_owned(),
            sent: metrics::counter!(format!("queue.{name}.sent_messages")),
            received: metrics::counter!(format!("queue.{name}.received_messages")),
            dead: metrics::counter!(format!("queue.{name}.dead_messages")),
            options,
            connection: ConnectionParams::default(),
            credential: CredentialParams::default(),
            opened: AtomicBool::new(false),
            listen: ListenControl::new(),
        }
    }

    /// A queue base configured from pip-services `config`: the name (see
    /// [`resolve_name`](super::resolve_name), falling back to `default_name`), `options.*`,
    /// `connection.*` and `credential.*`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if there is no name or a key is invalid.
    pub fn from_config(
        backend: &'static str,
        config: &ConfigParams,
        default_name: Option<&str>,
    ) -> Result<Self> {
        let name = resolve_name(config, default_name)
            .ok_or_else(|| Error::config("name", "the queue needs a name (`name` or `queue`)"))?;
        if name.is_empty() {
            return Err(Error::config("name", "must not be empty"));
        }
        let options = QueueOptions::from_config(config)?;
        if options.dead_letter_queue.as_deref() == Some(name.as_str()) {
            return Err(Error::config(
                "options.dead_letter_queue",
                "must differ from the queue's own name",
            ));
        }
        let mut base = QueueBase::new(backend, &name, options);
        base.connection = ConnectionParams::from_config(config)?;
        base.credential = CredentialParams::from_config(config);
        Ok(base)
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's options.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// The connection parameters.
    pub fn connection(&self) -> &ConnectionParams {
        &self.connection
    }

    /// The credentials.
    pub fn credential(&self) -> &CredentialParams {
        &self.credential
    }

    /// Whether the queue is open.
    pub fn is_open(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    /// Marks the queue open or closed; returns the previous state.
    pub fn set_open(&self, open: bool) -> bool {
        self.opened.swap(open, Ordering::AcqRel)
    }

    /// `Ok` if the queue is open.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`](crate::ErrorKind::NotOpened): "The queue is not opened".
    pub fn check_open(&self) -> Result<()> {
        if self.is_open() {
            Ok(())
        } else {
            Err(Error::not_opened(&self.name).with_backend(self.backend))
        }
    }

    /// `Ok` if `capability` is true.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming `operation`.
    pub fn check_capability(&self, capability: bool, operation: &str) -> Result<()> {
        if capability {
            Ok(())
        } else {
            Err(Error::unsupported(&self.name, operation).with_backend(self.backend))
        }
    }

    /// Readies `envelope` for sending: checks that the queue is open, stamps its `sent_time`
    /// and clears what a previous delivery left on it (lock, delivery count). Every backend's
    /// `send` starts here and calls [`sent`](Self::sent) once the message is stored.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`](crate::ErrorKind::NotOpened).
    pub fn prepare_send(&self, mut envelope: MessageEnvelope) -> Result<MessageEnvelope> {
        self.check_open()?;
        stamp(&mut envelope, chrono::Utc::now());
        Ok(envelope)
    }

    /// [`prepare_send`](Self::prepare_send) for every envelope of a batch, with one clock read
    /// for the batch (its messages share their `sent_time`): the start of every backend's
    /// `send_batch`, which calls [`sent_batch`](Self::sent_batch) once the batch is stored.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOpened`](crate::ErrorKind::NotOpened), also for an empty batch.
    pub fn prepare_batch(
        &self,
        mut envelopes: Vec<MessageEnvelope>,
    ) -> Result<Vec<MessageEnvelope>> {
        self.check_open()?;
        let now = chrono::Utc::now();
        for envelope in &mut envelopes {
            stamp(envelope, now);
        }
        Ok(envelopes)
    }

    /// [`sent`](Self::sent) for every envelope of a stored batch.
    pub fn sent_batch(&self, correlation_id: Option<&str>, envelopes: &[MessageEnvelope]) {
        for envelope in envelopes {
            self.sent(correlation_id, envelope);
        }
    }

    /// Whether a message delivered `delivery_count` times has used up `options.max_deliveries`:
    /// given back (abandoned, or its lock expired), it goes to the dead-letter queue instead of
    /// the queue. The one max-deliveries rule of every backend.
    pub fn is_spent(&self, delivery_count: u32) -> bool {
        self.options
            .max_deliveries
            .is_some_and(|max| delivery_count >= max)
    }

    /// A message was sent: counts `queue.<name>.sent_messages` and logs "Sent message … via …"
    /// at debug.
    pub fn sent(&self, correlation_id: Option<&str>, envelope: &MessageEnvelope) {
        self.sent.increment(1);
        tracing::debug!(queue = %self.name, correlation_id, "Sent message {} via {}", envelope, self.name);
    }

    /// A message was received: counts `queue.<name>.received_messages` and logs "Received
    /// message … via …" at debug.
    pub fn received(&self, correlation_id: Option<&str>, envelope: &MessageEnvelope) {
        self.received.increment(1);
        tracing::debug!(queue = %self.name, correlation_id, "Received message {} via {}", envelope, self.name);
    }

    /// A message went to the dead-letter queue: counts `queue.<name>.dead_messages` and logs
    /// "Moved to dead message … at …" at debug.
    pub fn dead_lettered(&self, envelope: &MessageEnvelope) {
        self.dead.increment(1);
        let correlation_id = envelope.correlation_id.as_deref();
        tracing::debug!(queue = %self.name, correlation_id, "Moved to dead message {} at {}", envelope, self.name);
    }

    /// A message was completed, abandoned or had its lock renewed: logs it at trace.
    pub fn settled(&self, action: Settled, envelope: &MessageEnvelope) {
        let correlation_id = envelope.correlation_id.as_deref();
        tracing::trace!(queue = %self.name, correlation_id, "{} message {} at {}", action.as_str(), envelope, self.name);
    }

    /// Messages were peeked: logs it at trace.
    pub fn peeked(&self, correlation_id: Option<&str>, count: usize) {
        tracing::trace!(queue = %self.name, correlation_id, "Peeked {} messages on {}", count, self.name);
    }

    /// The queue was opened, closed or cleared: logs it at trace.
    pub fn changed(&self, correlation_id: Option<&str>, change: &str) {
        tracing::trace!(queue = %self.name, correlation_id, "{} queue [{}]", change, self.name);
    }

    /// The listen loops' control.
    pub fn listen_control(&self) -> &ListenControl {
        &self.listen
    }

    /// Stops every running listen loop: the body of every [`MessageQueue::end_listen`].
    pub fn end_listen(&self) {
        self.listen.end_listen();
    }

    /// Runs the shared `listen` loop over `queue` (the backend itself) with this base's options.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::listen`].
    ///
    /// # Cancel safety
    ///
    /// As [`MessageQueue::listen`].
    pub async fn listen(
        &self,
        queue: &dyn MessageQueue,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        self.check_capability(queue.capabilities().can_receive(), "listen")?;
        run_listener(queue, correlation_id, receiver, &self.options, &self.listen).await
    }

    /// Stops the listen loops and waits for them to drain (up to the drain timeout and a
    /// second): the first half of every `close`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the loops are stopped at once; dropping the future only stops waiting.
    pub async fn stop_listeners(&self) {
        self.listen.end_listen();
        let grace = self
            .options
            .drain_timeout
            .saturating_add(Duration::from_secs(1));
        if !self.listen.wait_idle(grace).await {
            tracing::warn!(queue = %self.name, "listen loops did not stop within the drain timeout");
        }
    }
}

/// Readies `envelope` to be stored: sent at `now`, with nothing left of a previous delivery
/// (lock, delivery count, broker delivery).
fn stamp(envelope: &mut MessageEnvelope, now: chrono::DateTime<chrono::Utc>) {
    envelope.sent_time = Some(now);
    envelope.set_lock_token(None);
    envelope.set_delivery_count(0);
    envelope.set_delivery(None);
}

/// `now + after`, or a point decades away when that does not fit (`Duration::MAX` as "wait
/// forever"): for deadlines computed from caller-supplied durations, which must never panic.
pub fn deadline_after(now: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(60 * 60 * 24 * 365 * 30)))
        .unwrap_or(now)
}

/// What [`QueueBase::settled`] logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// `complete`.
    Completed,
    /// `abandon`.
    Abandoned,
    /// `renew_lock`.
    RenewedLock,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Completed => "Completed",
            Settled::Abandoned => "Abandoned",
            Settled::RenewedLock => "Renewed lock for",
        }
    }
}

impl fmt::Debug for QueueBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBase")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("open", &self.is_open())
            .field("options", &self.options)
            .field("connection", &self.connection)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn from_config_resolves_name_and_hides_password() {
        let config = ConfigParams::from_string(
            "name=n;queue=q;connection.uri=amqp://u:pw@h;credential.username=u;credential.password=pw;options.lock_timeout=5",
        )
        .unwrap();
        let base = QueueBase::from_config("test", &config, None).unwrap();
        assert_eq!(base.name(), "q");
        assert_eq!(base.credential().password(), Some("pw"));
        let shown = format!("{base:?}");
        assert!(
            !shown.contains("pw\"") && !shown.contains(":pw@"),
            "{shown}"
        );
        let err = QueueBase::from_config("test", &ConfigParams::new(), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let own = ConfigParams::from_string("name=q;options.dead_letter_queue=q").unwrap();
        let err = QueueBase::from_config("test", &own, None).unwrap_err();
        assert!(
            err.to_string().contains("options.dead_letter_queue"),
            "{err}"
        );
    }
}
