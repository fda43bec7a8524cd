//! What a RabbitMQ queue is configured with: parsed once, from a URI or pip-services
//! `ConfigParams`, into a [`RabbitMqConfig`].

use std::fmt;
use std::time::Duration;

use courier_core::backend::{
    ConnectionParams, CredentialParams, OPTION_KEYS, QueueBase, check_known_options, check_userinfo,
};
use courier_core::{ConfigParams, Error, Result};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

use crate::BACKEND;

/// The options of this backend, besides the shared [`OPTION_KEYS`] (without `options.`).
pub const RABBITMQ_OPTION_KEYS: [&str; 14] = [
    "exchange",
    "exchange_type",
    "routing_key",
    "persistent",
    "auto_create",
    "auto_delete",
    "exclusive",
    "no_queue",
    "noqueue",
    "queue_type",
    "prefetch",
    "heartbeat",
    "interval",
    "expires",
];

/// The most messages the broker sends a consumer before it acknowledges some, by default.
pub const DEFAULT_PREFETCH: u16 = 100;

/// The kind of queue courier declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// A quorum queue (the default): durable, replicated, counts deliveries
    /// (`x-delivery-count`), so `max_deliveries` works.
    Quorum,
    /// A classic queue: needed for `exclusive`, `auto_delete` and `persistent=false`. It does
    /// not count deliveries, only whether a message was delivered before: a redelivered
    /// message reports a delivery count of 2, and `max_deliveries` is refused.
    Classic,
}

/// A RabbitMQ queue's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// Where to connect (with the credentials; never shown).
    pub(crate) uri: AMQPUri,
    /// The queue consumed and (without an exchange) published to.
    pub queue: String,
    /// The exchange published to, `""` for the default exchange.
    pub exchange: String,
    /// The exchange's type when courier declares it (pip-services' default: `fanout`).
    pub exchange_type: String,
    /// The routing key published with and the queue bound with (default: the queue's name).
    pub routing_key: String,
    /// Durable queue and exchange, persistent messages (default `true`; pip-services'
    /// default is `false`).
    pub persistent: bool,
    /// Declare the queue, the exchange and the binding on open, and the dead-letter queue when
    /// the first message goes there
    /// (default `true`; pip-services' default is `false`). Without it, `open` checks that
    /// the queue exists.
    pub auto_create: bool,
    /// Declare the queue and exchange auto-delete (classic queues only).
    pub auto_delete: bool,
    /// Declare the queue exclusive to the connection (classic queues only).
    pub exclusive: bool,
    /// Send only: no queue is declared, bound or consumed.
    pub no_queue: bool,
    /// The kind of queue declared.
    pub queue_type: QueueType,
    /// The consumer's prefetch: how many unacknowledged messages the broker sends at once.
    pub prefetch: u16,
    /// The dead-letter queue's name.
    pub dead_letter_queue: String,
    /// How long `open` and each reconnect attempt may take.
    pub connect_timeout: Duration,
    /// RabbitMQ deletes the queue (and its dead-letter queue) once unused this long
    /// (`x-expires`); `None`: never.
    pub expires: Option<Duration>,
}

impl RabbitMqConfig {
    /// Reads `config` (a URI turned into config, or pip-services keys) for the queue `base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
    /// unknown or invalid.
    pub(crate) fn from_config(config: &ConfigParams, base: &QueueBase) -> Result<Self> {
        let mut known: Vec<&str> = OPTION_KEYS.to_vec();
        known.extend(RABBITMQ_OPTION_KEYS);
        check_known_options(config, &known)?;
        let uri = amqp_uri(config)?;
        let flag = |key: &str, default: bool| -> Result<bool> {
            Ok(config
                .get_as_bool(&format!("options.{key}"))?
                .unwrap_or(default))
        };
        let text = |key: &str| -> Option<String> {
            config
                .get(key)
                .or_else(|| config.get(&format!("options.{key}")))
                .map(str::to_owned)
        };
        let exclusive = flag("exclusive", false)?;
        let auto_delete = flag("auto_delete", false)?;
        let persistent = flag("persistent", true)?;
        let no_queue = flag("no_queue", false)? || flag("noqueue", false)?;
        let queue_type = match text("queue_type").as_deref() {
            None if exclusive || auto_delete || !persistent => QueueType::Classic,
            None | Some("quorum") => QueueType::Quorum,
            Some("classic") => QueueType::Classic,
            Some(other) => {
                return Err(Error::config(
                    "options.queue_type",
                    format!("`{other}` is not `quorum` or `classic`"),
                ));
            }
        };
        if queue_type == QueueType::Quorum && (exclusive || auto_delete || !persistent) {
            return Err(Error::config(
                "options.queue_type",
                "a quorum queue is durable, never exclusive nor auto-delete: set queue_type=classic",
            ));
        }
        if queue_type == QueueType::Classic && base.options().max_deliveries.is_some() {
            return Err(Error::config(
                "options.max_deliveries",
                "needs a quorum queue (classic queues do not count deliveries)",
            ));
        }
        let exchange = text("exchange").unwrap_or_default();
        let queue = base.name().to_owned();
        let routing_key = text("routing_key")
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| queue.clone());
        let exchange_type = text("exchange_type").unwrap_or_else(|| "fanout".to_owned());
        if !["fanout", "direct", "topic", "headers"].contains(&exchange_type.as_str()) {
            return Err(Error::config(
                "options.exchange_type",
                format!("`{exchange_type}` is not fanout, direct, topic or headers"),
            ));
        }
        let prefetch = match config.get_as_u64("options.prefetch")? {
            None => DEFAULT_PREFETCH,
            Some(0) => return Err(Error::config("options.prefetch", "must be at least 1")),
            Some(n) => u16::try_from(n).unwrap_or(u16::MAX),
        };
        let credits = base
            .options()
            .max_size
            .unwrap_or(courier_core::backend::push::DEFAULT_CREDITS);
        Ok(RabbitMqConfig {
            uri,
            dead_letter_queue: base.options().dead_letter_queue_name(&queue),
            queue,
            exchange,
            exchange_type,
            routing_key,
            persistent,
            auto_create: flag("auto_create", true)?,
            auto_delete,
            exclusive,
            no_queue,
            queue_type,
            prefetch: prefetch.min(u16::try_from(credits).unwrap_or(u16::MAX)),
            connect_timeout: base.options().connect_timeout,
            expires: config.get_as_duration_ms("options.expires")?,
        })
    }

    /// The broker's address without credentials: `amqp://host:port/vhost`.
    pub fn address(&self) -> String {
        let scheme = match self.uri.scheme {
            AMQPScheme::AMQPS => "amqps",
            AMQPScheme::AMQP => "amqp",
        };
        format!(
            "{scheme}://{}:{}/{}",
            self.uri.authority.host,
            self.uri.authority.port,
            url::form_urlencoded::byte_serialize(self.uri.vhost.as_bytes()).collect::<String>()
        )
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("address", &self.address())
            .field("user", &self.uri.authority.userinfo.username)
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("queue_type", &self.queue_type)
            .field("persistent", &self.persistent)
            .field("auto_create", &self.auto_create)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// The broker's URI from `connection.*` (a parsed `amqp://` URI fills them in) and
/// `credential.*`; RabbitMQ's defaults are port 5672 (5671 for `amqps`), user `guest` and the
/// virtual host `/` (an empty path means `/` too).
fn amqp_uri(config: &ConfigParams) -> Result<AMQPUri> {
    let connection = ConnectionParams::from_config(config)?;
    if let Some(uri) = &connection.uri {
        check_userinfo(uri)?;
    }
    let credential = CredentialParams::from_config(config);
    let scheme = match connection.protocol.as_deref().unwrap_or("amqp") {
        p if p.eq_ignore_ascii_case("amqp") => AMQPScheme::AMQP,
        p if p.eq_ignore_ascii_case("amqps") => AMQPScheme::AMQPS,
        other => {
            return Err(Error::config(
                "connection.protocol",
                format!("`{other}` is not amqp or amqps"),
            ));
        }
    };
    let default_port = scheme.default_port();
    let host = connection.host.clone().ok_or_else(|| {
        Error::config(
            "connection.host",
            "is required (amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME)",
        )
    })?;
    let vhost = config
        .get("connection.path")
        .or_else(|| config.get("connection.vhost"))
        .filter(|v| !v.is_empty())
        .unwrap_or("/")
        .to_owned();
    let mut query = AMQPQueryString::default();
    if let Some(seconds) = config.get_as_u64("options.heartbeat")? {
        query.heartbeat =
            Some(u16::try_from(seconds).map_err(|_| {
                Error::config("options.heartbeat", "expected seconds, at most 65535")
            })?);
    }
    Ok(AMQPUri {
        scheme,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: credential
                    .username
                    .clone()
                    .unwrap_or_else(|| "guest".to_owned()),
                password: credential.password().unwrap_or("guest").to_owned(),
            },
            host,
            port: connection.port.unwrap_or(default_port),
        },
        vhost,
        query,
    })
}

/// The error of a config that names no queue.
pub(crate) fn no_queue_error() -> Error {
    Error::config(
        "queue",
        "a RabbitMQ queue needs a name: `?queue=NAME` in the URI, or `queue`/`name` in the config",
    )
    .with_backend(BACKEND)
}
