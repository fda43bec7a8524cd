//! What an MQTT queue is configured with: parsed once, from a URI or pip-services
//! `ConfigParams`, into an [`MqttConfig`].

use std::fmt;
use std::time::Duration;

use courier_core::backend::{
    CredentialParams, OPTION_KEYS, QueueBase, TlsFiles, check_known_options,
};
use courier_core::{ConfigParams, Error, Result};
use rumqttc::QoS;

/// The options of this backend, besides the shared [`OPTION_KEYS`] and [`TlsFiles::KEYS`]
/// (without `options.`). `topic` and `client_id` are read at the top level too, where
/// pip-services puts them.
pub const MQTT_OPTION_KEYS: [&str; 11] = [
    "topic",
    "group",
    "client_id",
    "serialize_envelope",
    "qos",
    "retain",
    "tls",
    "retry_connect",
    "reconnect_timeout",
    "keepalive_timeout",
    "max_reconnect",
];

/// The port of `mqtt://` when none is given.
pub const DEFAULT_PORT: u16 = 1883;
/// The port of `mqtts://` when none is given.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// The largest packet MQTT 3.1.1 can carry (its remaining length is at most 256 MiB).
pub(crate) const MAX_PACKET: usize = 268_435_455;

/// An MQTT queue's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct MqttConfig {
    /// The broker's host.
    pub host: String,
    /// The broker's port (1883, or 8883 with TLS).
    pub port: u16,
    /// TLS (`mqtts://`, `ssl://`, or `tls=true`).
    pub tls: bool,
    /// A private CA and a client certificate (`tls_ca_file`, `tls_cert_file`, `tls_key_file`).
    pub tls_files: TlsFiles,
    /// The topic filter the queue subscribes to (`topic`; default the queue's name). It may
    /// hold the wildcards `+` and `#`.
    pub topic: String,
    /// The shared-subscription group (`group`): queues of one group subscribe to
    /// `$share/GROUP/TOPIC`, and each message goes to one of them.
    pub group: Option<String>,
    /// Where `send` publishes: [`topic`](Self::topic) when it has no wildcard, else the queue's
    /// name when that is a topic without wildcards; `None` when neither is (send fails).
    pub publish_topic: Option<String>,
    /// The quality of service of subscribing and publishing (`qos`: 0 or 1; default 1).
    pub qos: QoS,
    /// Whether published messages are retained by the broker (`retain`, default false).
    pub retain: bool,
    /// The client id given (`client_id`), or `None` for one generated per queue instance.
    pub client_id: Option<String>,
    /// The JSON envelope on the wire (`serialize_envelope`, default true), or the bare payload.
    pub serialize_envelope: bool,
    /// Whether a lost connection is reconnected (`retry_connect`, default true).
    pub retry_connect: bool,
    /// How many reconnect attempts in a row, at most (`max_reconnect`; default unlimited).
    pub max_reconnect: Option<usize>,
    /// The wait between reconnect attempts (`reconnect_timeout`, ms; default 1 s).
    pub reconnect_timeout: Duration,
    /// The MQTT keep-alive (`keepalive_timeout`, ms; default 60 s; 0 turns it off).
    pub keepalive: Duration,
    /// How long `open`, a subscription, and a `send` waiting for its acknowledgement may take.
    pub connect_timeout: Duration,
    credential: CredentialParams,
}

impl MqttConfig {
    /// Reads `config` for the queue `base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
    /// unknown or invalid.
    pub(crate) fn from_config(config: &ConfigParams, base: &QueueBase) -> Result<Self> {
        let mut known: Vec<&str> = OPTION_KEYS.to_vec();
        known.extend(MQTT_OPTION_KEYS);
        known.extend(TlsFiles::KEYS);
        check_known_options(config, &known)?;
        let text = |key: &str| -> Option<String> {
            config
                .get(key)
                .or_else(|| config.get(&format!("options.{key}")))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let tls_scheme = match config.get("connection.protocol") {
            None | Some("mqtt" | "tcp") => false,
            Some("mqtts" | "ssl") => true,
            Some(other) => {
                return Err(Error::config(
                    "connection.protocol",
                    format!("`{other}` is not mqtt or mqtts"),
                ));
            }
        };
        let tls_files = TlsFiles::from_config(config)?;
        let tls =
            tls_scheme || config.get_as_bool("options.tls")?.unwrap_or(false) || tls_files.any();
        let host = config
            .get("connection.host")
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::config("connection.host", "is required (mqtt://HOST:PORT/TOPIC)")
            })?
            .to_owned();
        let port_error = || Error::config("connection.port", "expected a port number");
        let port = match config
            .get_as_u64("connection.port")
            .map_err(|_| port_error())?
        {
            None if tls => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(port_error)?,
        };
        let mut topic = text("topic").unwrap_or_else(|| base.name().to_owned());
        let mut group = text("group");
        if let Some(shared) = topic.strip_prefix("$share/") {
            // `$share/GROUP/TOPIC`, as EMQX and HiveMQ users write it: the group option.
            let Some((name, rest)) = shared.split_once('/') else {
                return Err(Error::config(
                    "topic",
                    "a shared subscription is $share/GROUP/TOPIC",
                ));
            };
            if group.as_deref().is_some_and(|g| g != name) {
                return Err(Error::config(
                    "options.group",
                    format!("conflicts with the group `{name}` of the topic"),
                ));
            }
            group = Some(name.to_owned());
            topic = rest.to_owned();
        } else if topic.starts_with("$queue/") {
            return Err(Error::config(
                "topic",
                "EMQX's $queue/TOPIC is not supported: give the topic and group=NAME (a shared subscription)",
            ));
        }
        if !valid_filter(&topic) {
            return Err(Error::config(
                "topic",
                format!(
                    "`{topic}` is not an MQTT topic filter (`+` and `#` must fill a whole level, `#` only the last; in a URI write `#` as %23)"
                ),
            ));
        }
        if let Some(group) = &group {
            if group.contains(['/', '+', '#', '\0']) {
                return Err(Error::config(
                    "options.group",
                    "a shared-subscription group must not hold /, + or #",
                ));
            }
        }
        let publish_topic = [topic.as_str(), base.name()]
            .into_iter()
            .find(|t| valid_topic(t))
            .map(str::to_owned);
        let qos = match config.get_as_u64("options.qos")? {
            None | Some(1) => QoS::AtLeastOnce,
            Some(0) => QoS::AtMostOnce,
            Some(_) => {
                return Err(Error::config(
                    "options.qos",
                    "must be 0 (at most once) or 1 (at least once); QoS 2 is not supported",
                ));
            }
        };
        let keepalive = config
            .get_as_duration_ms("options.keepalive_timeout")?
            .unwrap_or(Duration::from_secs(60));
        if !keepalive.is_zero()
            && (keepalive < Duration::from_secs(1)
                || keepalive > Duration::from_secs(u64::from(u16::MAX)))
        {
            return Err(Error::config(
                "options.keepalive_timeout",
                "must be 0 (off) or between 1000 ms and 65535000 ms: MQTT counts it in seconds",
            ));
        }
        // Whole seconds: rumqttc pings on the duration given and the broker expects the
        // seconds declared, so they must agree.
        let keepalive = Duration::from_secs(keepalive.as_secs());
        let reconnect_timeout = config
            .get_as_duration_ms("options.reconnect_timeout")?
            .unwrap_or(Duration::from_secs(1));
        let client_id = text("client_id");
        if let Some(id) = &client_id {
            if id.len() > usize::from(u16::MAX) || id.starts_with(' ') {
                return Err(Error::config(
                    "client_id",
                    "must not start with a space and must be under 64 KiB",
                ));
            }
        }
        Ok(MqttConfig {
            host,
            port,
            tls,
            tls_files,
            topic,
            group,
            publish_topic,
            qos,
            retain: config.get_as_bool("options.retain")?.unwrap_or(false),
            client_id,
            serialize_envelope: config
                .get_as_bool("options.serialize_envelope")?
                .unwrap_or(true),
            retry_connect: config.get_as_bool("options.retry_connect")?.unwrap_or(true),
            max_reconnect: config.get_as_usize("options.max_reconnect")?,
            reconnect_timeout,
            keepalive,
            connect_timeout: base.options().connect_timeout,
            credential: CredentialParams::from_config(config),
        })
    }

    /// The broker as shown in messages: `mqtt://host:port` (no credentials).
    pub fn address(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// What the queue subscribes to: its topic, or `$share/GROUP/TOPIC` in a group.
    pub fn subscription(&self) -> String {
        match &self.group {
            Some(group) => format!("$share/{group}/{}", self.topic),
            None => self.topic.clone(),
        }
    }

    /// The user name and password, if any.
    pub(crate) fn credential(&self) -> &CredentialParams {
        &self.credential
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("address", &self.address())
            .field("user", &self.credential.username)
            .field("topic", &self.topic)
            .field("qos", &(self.qos as u8))
            .field("client_id", &self.client_id)
            .field("serialize_envelope", &self.serialize_envelope)
            .finish_non_exhaustive()
    }
}

/// A topic one can publish to: not empty, no wildcard, no NUL.
pub(crate) fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter one can subscribe to: `+` fills a whole level, `#` a whole last level.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == last,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `topic` (a topic messages are published to) matches `filter`.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    // Topics starting with `$` are the broker's, and wildcards at the first level never match
    // them (MQTT 3.1.1, 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::backend::config_from_uri;

    fn parse(uri: &str) -> Result<MqttConfig> {
        let config = config_from_uri(uri)?;
        let base = QueueBase::from_config("mqtt", &config, config.get("connection.path"))?;
        MqttConfig::from_config(&config, &base)
    }

    #[test]
    fn defaults() {
        let c = parse("mqtt://localhost/orders").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("localhost", 1883, false));
        assert_eq!(c.topic, "orders");
        assert_eq!(c.publish_topic.as_deref(), Some("orders"));
        assert_eq!(c.qos, QoS::AtLeastOnce);
        assert!(c.serialize_envelope && c.retry_connect && !c.retain);
        assert_eq!(c.client_id, None);
        assert_eq!(c.keepalive, Duration::from_secs(60));
        let tls = parse("mqtts://localhost/orders").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
    }

    #[test]
    fn options() {
        let c = parse(
            "mqtt://u:secret@[::1]:1884/sensors?topic=sensors%2F%2B%2Ftemp&qos=0&retain=true&client_id=me&serialize_envelope=false&keepalive_timeout=0",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1884));
        assert_eq!(c.topic, "sensors/+/temp");
        // A wildcard topic publishes to the name.
        assert_eq!(c.publish_topic.as_deref(), Some("sensors"));
        assert_eq!(c.qos, QoS::AtMostOnce);
        assert!(c.retain && !c.serialize_envelope);
        assert_eq!(c.client_id.as_deref(), Some("me"));
        assert!(c.keepalive.is_zero());
        assert_eq!(c.subscription(), "sensors/+/temp");
        let shared = parse("mqtt://h/jobs?topic=%24share%2Fworkers%2Fjobs").unwrap();
        assert_eq!(
            (shared.topic.as_str(), shared.group.as_deref()),
            ("jobs", Some("workers"))
        );
        assert_eq!(shared.subscription(), "$share/workers/jobs");
        let whole = parse("mqtt://h/t?keepalive_timeout=1999").unwrap();
        assert_eq!(whole.keepalive, Duration::from_secs(1));
        let grouped = parse("mqtt://h/jobs?group=workers").unwrap();
        assert_eq!(grouped.subscription(), "$share/workers/jobs");
        assert_eq!(grouped.publish_topic.as_deref(), Some("jobs"));
        assert_eq!(c.address(), "mqtt://[::1]:1884");
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        // A wildcard topic and name: nowhere to publish.
        let c = parse("mqtt://h/a%2F%23").unwrap();
        assert_eq!(c.topic, "a/#");
        assert_eq!(c.publish_topic, None);
    }

    #[test]
    fn bad_input_is_a_config_error_naming_the_key() {
        for (uri, key) in [
            ("mqtt://h/t?qos=2", "options.qos"),
            ("mqtt://h/t?qos=x", "options.qos"),
            (
                "mqtt://h/t?keepalive_timeout=500",
                "options.keepalive_timeout",
            ),
            ("mqtt://h/t?topic=a%2Fb%23", "topic"),
            ("mqtt://h/t?topic=a%2B", "topic"),
            ("mqtt://h/t?nope=1", "options.nope"),
            ("amqp://h/t", "connection.protocol"),
            ("mqtt://h:0/t", "connection.port"),
            ("mqtt://h/t?group=a%2Fb", "options.group"),
        ] {
            let err = parse(uri).unwrap_err();
            assert_eq!(err.kind(), courier_core::ErrorKind::Config, "{uri}: {err}");
            assert!(err.to_string().contains(key), "{uri}: {err}");
        }
    }

    #[test]
    fn filters() {
        for (filter, ok) in [
            ("a/b", true),
            ("a/+/c", true),
            ("a/#", true),
            ("#", true),
            ("+", true),
            ("a/#/c", false),
            ("a/b#", false),
            ("a+/b", false),
            ("", false),
        ] {
            assert_eq!(valid_filter(filter), ok, "{filter}");
        }
        for (filter, topic, matches) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a/b/c", true),
            ("a/#", "a", true),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("a/+/c", "a//c", true),
        ] {
            assert_eq!(filter_matches(filter, topic), matches, "{filter} {topic}");
        }
    }
}
