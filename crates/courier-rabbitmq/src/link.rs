//! The connection to RabbitMQ: connecting within a deadline, declaring the topology, and
//! reconnecting with backoff when the connection breaks (lapin does not reconnect).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use courier_core::backend::Backoff;
use courier_core::{Error, ErrorKind, Result};
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind, Queue};
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::{QueueType, RabbitMqConfig};

/// One connection and its publishing channel (in confirm mode).
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) publisher: Channel,
}

impl Link {
    /// Whether the connection and the publishing channel are still up.
    pub(crate) fn is_alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// The current link of a queue, made again when it breaks.
pub(crate) struct Links {
    config: RabbitMqConfig,
    current: parking_lot::Mutex<Option<Arc<Link>>>,
    /// Held while (re)connecting: one attempt at a time, the others wait for its link.
    connecting: tokio::sync::Mutex<()>,
    /// Counts connections made, for names and logs.
    made: AtomicU64,
}

impl Links {
    pub(crate) fn new(config: RabbitMqConfig) -> Self {
        Links {
            config,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            made: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> &RabbitMqConfig {
        &self.config
    }

    /// The live link, connecting (with backoff) if there is none, for up to
    /// `options.connect_timeout`; `once` makes a single attempt (`open`: a broker that is
    /// not there is reported at once, not retried).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connection`] if the broker cannot be reached in time (the last failure is
    /// the source); [`ErrorKind::Config`] if the broker refuses the topology or the
    /// credentials.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled attempt leaves no link behind.
    pub(crate) async fn get(&self) -> Result<Arc<Link>> {
        self.connect_within(false).await
    }

    /// [`get`](Self::get) with a single attempt.
    pub(crate) async fn get_once(&self) -> Result<Arc<Link>> {
        self.connect_within(true).await
    }

    async fn connect_within(&self, once: bool) -> Result<Arc<Link>> {
        if let Some(link) = self.alive() {
            return Ok(link);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(link) = self.alive() {
            return Ok(link);
        }
        let deadline = Instant::now() + self.config.connect_timeout;
        let mut backoff = Backoff::reconnect();
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.connect()).await;
            let error = match attempt {
                Ok(Ok(link)) => {
                    let link = Arc::new(link);
                    *self.current.lock() = Some(link.clone());
                    return Ok(link);
                }
                // The broker answered and said no: trying again will not help.
                Ok(Err(e)) if e.kind() == ErrorKind::Config => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => Error::new(
                    ErrorKind::Connection,
                    format!("no answer from {}", self.config.address()),
                ),
            };
            let pause = backoff.next_delay();
            if once || Instant::now() + pause >= deadline {
                let within = if once {
                    String::new()
                } else {
                    format!(
                        " within {:?} (options.connect_timeout)",
                        self.config.connect_timeout
                    )
                };
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!("cannot reach RabbitMQ at {}{within}", self.config.address()),
                )
                .with_source(error)
                .with_backend(BACKEND)
                .with_queue(&self.config.queue));
            }
            tracing::debug!(queue = %self.config.queue, error = %error, "RabbitMQ connect failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Like [`get`](Self::get), but keeps trying until it succeeds (the consumer's
    /// reconnect loop, which `stop` ends).
    pub(crate) async fn get_patiently(&self) -> Arc<Link> {
        let mut backoff = Backoff::reconnect();
        loop {
            match self.get().await {
                Ok(link) => return link,
                Err(e) => {
                    tracing::warn!(queue = %self.config.queue, error = %e, "RabbitMQ is unreachable; reconnecting");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    fn alive(&self) -> Option<Arc<Link>> {
        self.current.lock().clone().filter(|l| l.is_alive())
    }

    /// Closes the link, if any.
    pub(crate) async fn close(&self) {
        let link = self.current.lock().take();
        if let Some(link) = link {
            if link.connection.status().connected() {
                let close = link.connection.close(200, "courier queue closed".into());
                let _ = answer(&self.config, "close the connection", close).await;
            }
        }
    }

    /// Connects once, declares the topology, and opens the publishing channel.
    async fn connect(&self) -> Result<Link> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("courier {} #{n}", self.config.queue).into());
        let connection = Connection::connect_uri(self.config.uri.clone(), properties)
            .await
            .map_err(|e| self.error(e, "connect"))?;
        let ready = async {
            let publisher = connection.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(publisher)
        };
        let publisher = match ready.await {
            Ok(publisher) => publisher,
            Err(e) => {
                let _ = connection.close(200, "".into()).await;
                return Err(self.error(e, "open a channel"));
            }
        };
        if let Err(e) = declare(&publisher, &self.config).await {
            let _ = connection.close(200, "".into()).await;
            return Err(self.error(e, "declare the topology"));
        }
        Ok(Link {
            connection,
            publisher,
        })
    }

    /// A courier error for a lapin error met while doing `what`.
    pub(crate) fn error(&self, e: lapin::Error, what: &str) -> Error {
        amqp_error(e, what, &self.config)
    }
}

/// Waits for the broker's answer to `call` (doing `what`) for up to `connect_timeout`: a
/// connection cut in the middle of a call must not leave it waiting forever.
///
/// # Errors
///
/// The call's error, or [`ErrorKind::Timeout`].
pub(crate) async fn answer<T>(
    config: &RabbitMqConfig,
    what: &str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(config.connect_timeout, call).await {
        Ok(answered) => answered.map_err(|e| amqp_error(e, what, config)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot {what}: RabbitMQ at {} did not answer within {:?} (options.connect_timeout)",
                config.address(),
                config.connect_timeout
            ),
        )
        .with_backend(BACKEND)
        .with_queue(&config.queue)),
    }
}

/// A courier error for a lapin error met while doing `what`: the broker's refusals of the
/// topology or credentials are `Config`, broken connections `Connection`.
pub(crate) fn amqp_error(e: lapin::Error, what: &str, config: &RabbitMqConfig) -> Error {
    let address = config.address();
    let (kind, message) = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => (
                ErrorKind::Config,
                format!(
                    "cannot {what}: RabbitMQ has it with other settings ({}); \
                     match its queue_type, persistent, exclusive and auto_delete, or set auto_create=false",
                    amqp.get_message()
                ),
            ),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => (
                ErrorKind::Config,
                format!(
                    "cannot {what}: {} (auto_create=false needs it to exist)",
                    amqp.get_message()
                ),
            ),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => (
                ErrorKind::Config,
                format!("cannot {what}: access refused ({})", amqp.get_message()),
            ),
            AMQPErrorKind::Hard(_) if what == "connect" => (
                ErrorKind::Config,
                format!(
                    "RabbitMQ at {address} refused the connection: {} (check the user, password and virtual host)",
                    amqp.get_message()
                ),
            ),
            _ => (
                ErrorKind::Backend,
                format!("cannot {what}: {}", amqp.get_message()),
            ),
        },
        lapin::ErrorKind::AuthProviderError(_) => (
            ErrorKind::Config,
            format!("RabbitMQ at {address} refused the credentials"),
        ),
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::RuntimeShutdownError(_) => (
            ErrorKind::Connection,
            format!("cannot {what}: the connection to RabbitMQ at {address} is down"),
        ),
        _ => (ErrorKind::Backend, format!("cannot {what}")),
    };
    Error::new(kind, message)
        .with_source(e)
        .with_backend(BACKEND)
        .with_queue(&config.queue)
}

/// Declares what `config` needs: with `auto_create`, the queue, the exchange and the binding
/// (idempotent; the dead-letter queue is declared when the first message goes there);
/// without, checks that the queue exists.
async fn declare(channel: &Channel, config: &RabbitMqConfig) -> lapin::Result<()> {
    if config.auto_create && !config.exchange.is_empty() {
        let kind = match config.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions {
            durable: config.persistent,
            auto_delete: config.auto_delete,
            ..Default::default()
        };
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            )
            .await?;
    }
    if config.no_queue {
        return Ok(());
    }
    if !config.auto_create {
        declare_queue(
            channel,
            config,
            &config.queue,
            QueueDeclareOptions::default().passive(),
        )
        .await?;
        return Ok(());
    }
    let options = QueueDeclareOptions {
        durable: config.persistent,
        exclusive: config.exclusive,
        auto_delete: config.auto_delete,
        ..Default::default()
    };
    declare_queue(channel, config, &config.queue, options).await?;
    if !config.exchange.is_empty() {
        channel
            .queue_bind(
                config.queue.as_str().into(),
                config.exchange.as_str().into(),
                config.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the dead-letter queue of `config`: a plain queue of the same type, as courier
/// declares it when it opens that queue by its name.
pub(crate) async fn declare_dead_letter_queue(
    channel: &Channel,
    config: &RabbitMqConfig,
) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable: config.persistent,
        ..Default::default()
    };
    declare_queue(channel, config, &config.dead_letter_queue, options).await?;
    Ok(())
}

/// Declares queue `name` with `options` and, unless passive, the arguments courier declares
/// queues with; returns what the broker says of it (its ready count).
pub(crate) async fn declare_queue(
    channel: &Channel,
    config: &RabbitMqConfig,
    name: &str,
    options: QueueDeclareOptions,
) -> lapin::Result<Queue> {
    let arguments = if options.passive {
        FieldTable::default()
    } else {
        queue_arguments(config)
    };
    channel.queue_declare(name.into(), options, arguments).await
}

/// The arguments courier declares a queue with.
fn queue_arguments(config: &RabbitMqConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if let Some(expires) = config.expires {
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    arguments
}
