//! [`CoreNatsBroker`]: core NATS (no JetStream) under the push layer, as pip-services' NATS
//! queues use it: at most once, buffered in the queue after it subscribed.

use std::fmt;

use async_trait::async_trait;
use courier_core::backend::{MessageSink, PushBroker};
use courier_core::{Error, ErrorKind, MessageEnvelope, MessagingCapabilities, Result};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::{BACKEND, wire};

/// The broker half of a core NATS queue ([`CoreNatsMessageQueue`](crate::CoreNatsMessageQueue)).
pub struct CoreNatsBroker {
    config: NatsConfig,
    client: parking_lot::Mutex<Option<async_nats::Client>>,
    /// The subscription's delivery task and its stop signal.
    subscription: parking_lot::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl CoreNatsBroker {
    pub(crate) fn new(config: NatsConfig) -> Self {
        CoreNatsBroker {
            config,
            client: parking_lot::Mutex::new(None),
            subscription: parking_lot::Mutex::new(None),
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    fn client(&self) -> Result<async_nats::Client> {
        self.client
            .lock()
            .clone()
            .ok_or_else(|| Error::not_opened(&self.config.subject).with_backend(BACKEND))
    }

    fn error(
        &self,
        kind: ErrorKind,
        what: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::new(
            kind,
            format!("cannot {what} on NATS at {}", self.config.address()),
        )
        .with_source(e)
        .with_backend(BACKEND)
        .with_queue(&self.config.subject)
    }

    /// The error of a call (doing `what`) the client did not finish within `connect_timeout`.
    fn timed_out(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot {what} on NATS at {}: no answer within {:?} (options.connect_timeout)",
                self.config.address(),
                self.config.connect_timeout
            ),
        )
        .with_backend(BACKEND)
        .with_queue(&self.config.subject)
    }

    async fn stop_subscription(&self) {
        let subscription = self.subscription.lock().take();
        if let Some((stop, task)) = subscription {
            stop.cancel();
            let _ = task.await;
        }
    }
}

impl fmt::Debug for CoreNatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreNatsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for CoreNatsBroker {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.subscription.get_mut().take() {
            stop.cancel();
        }
    }
}

/// Connects a NATS client for `config`, failing within its `connect_timeout`.
pub(crate) async fn connect(config: &NatsConfig) -> Result<async_nats::Client> {
    let connecting = config.connect_options().connect(config.servers.clone());
    let failed = |message: String| {
        Error::new(ErrorKind::Connection, message)
            .with_backend(BACKEND)
            .with_queue(&config.subject)
    };
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            let (kind, hint) = match e.kind() {
                async_nats::ConnectErrorKind::Authentication
                | async_nats::ConnectErrorKind::AuthorizationViolation => {
                    (ErrorKind::Config, ": authentication failed")
                }
                async_nats::ConnectErrorKind::Tls => (ErrorKind::Config, ": TLS is misconfigured"),
                _ if courier_core::backend::refused_handshake(&e) => (
                    ErrorKind::Config,
                    ": the TLS handshake failed (an untrusted server certificate? see options.tls_ca_file)",
                ),
                _ => (ErrorKind::Connection, ""),
            };
            Err(Error::new(
                kind,
                format!("cannot connect to NATS at {}{hint}", config.address()),
            )
            .with_source(e)
            .with_backend(BACKEND)
            .with_queue(&config.subject))
        }
        Err(_) => Err(failed(format!(
            "cannot reach NATS at {} within {:?} (options.connect_timeout)",
            config.address(),
            config.connect_timeout
        ))),
    }
}

#[async_trait]
impl PushBroker for CoreNatsBroker {
    type Handle = ();

    fn capabilities(&self) -> MessagingCapabilities {
        // The buffer serves receive, peek, count, clear and local locks; core NATS forgets a
        // message once delivered, so there is nothing to dead-letter at the broker (the queue
        // keeps spent messages in its local dead-letter queue).
        MessagingCapabilities::new(true, true, true, true, true, true, true, false, true)
    }

    async fn connect(&self, _correlation_id: Option<&str>) -> Result<()> {
        let client = connect(&self.config).await?;
        *self.client.lock() = Some(client);
        Ok(())
    }

    async fn disconnect(&self, _correlation_id: Option<&str>) -> Result<()> {
        self.stop_subscription().await;
        let client = self.client.lock().take();
        if let Some(client) = client {
            let _ = tokio::time::timeout(self.config.connect_timeout, client.drain()).await;
        }
        Ok(())
    }

    async fn subscribe(&self, _correlation_id: Option<&str>, sink: MessageSink<()>) -> Result<()> {
        self.stop_subscription().await;
        let client = self.client()?;
        let subject = self.config.subscribe_subject.clone();
        let subscribe = async {
            match &self.config.queue_group {
                Some(group) => client.queue_subscribe(subject, group.clone()).await,
                None => client.subscribe(subject).await,
            }
        };
        let Ok(subscribed) = tokio::time::timeout(self.config.connect_timeout, subscribe).await
        else {
            return Err(self.timed_out("subscribe"));
        };
        let mut subscriber =
            subscribed.map_err(|e| self.error(ErrorKind::Connection, "subscribe", e))?;
        // The server must know the subscription before `open` returns: what is published
        // after that reaches this queue.
        match tokio::time::timeout(self.config.connect_timeout, client.flush()).await {
            Ok(flushed) => {
                flushed.map_err(|e| self.error(ErrorKind::Connection, "subscribe", e))?;
            }
            Err(_) => return Err(self.timed_out("subscribe")),
        }
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stopping.cancelled() => break,
                    message = subscriber.next() => message,
                };
                let Some(message) = message else { break };
                let envelope = wire::envelope(
                    message.headers.as_ref(),
                    message.payload,
                    chrono::Utc::now(),
                );
                if sink.push(envelope, ()).await.is_err() {
                    break;
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        *self.subscription.lock() = Some((stop, task));
        Ok(())
    }

    async fn unsubscribe(&self, _correlation_id: Option<&str>) -> Result<()> {
        self.stop_subscription().await;
        Ok(())
    }

    async fn send(&self, _correlation_id: Option<&str>, envelope: &MessageEnvelope) -> Result<()> {
        let client = self.client()?;
        let publish = client.publish_with_headers(
            self.config.subject.clone(),
            wire::headers(envelope),
            envelope.message.clone(),
        );
        match tokio::time::timeout(self.config.connect_timeout, publish).await {
            Ok(published) => published.map_err(|e| self.error(ErrorKind::Connection, "publish", e)),
            Err(_) => Err(self.timed_out("publish")),
        }
    }
}
