//! What a NATS queue is configured with: parsed once, from a URI or pip-services
//! `ConfigParams`, into a [`NatsConfig`].

use std::fmt;
use std::time::Duration;

use courier_core::backend::{
    CredentialParams, OPTION_KEYS, QueueBase, TlsFiles, check_known_options,
};
use courier_core::{ConfigParams, Error, Result};

/// The options of this backend, besides the shared [`OPTION_KEYS`] and [`TlsFiles::KEYS`]
/// (without `options.`).
pub const NATS_OPTION_KEYS: [&str; 13] = [
    "jetstream",
    "stream",
    "subject",
    "topic",
    "queue_group",
    "group",
    "client_id",
    "token",
    "tls",
    "retry_connect",
    "max_reconnect",
    "reconnect_timeout",
    "flush_timeout",
];

/// A NATS queue's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The servers, `host:port` each (`connection.uri`, or `connections.N.host|port`).
    pub servers: Vec<String>,
    /// TLS required (`tls://` or `tls=true`).
    pub tls: bool,
    /// A private CA and a client certificate (`tls_ca_file`, `tls_cert_file`, `tls_key_file`).
    pub tls_files: TlsFiles,
    /// JetStream (durable, at least once) rather than core NATS (at most once).
    pub jetstream: bool,
    /// JetStream: the stream this queue shares with others (`stream`), which holds its
    /// subject among several; `None` for a stream of its own ([`stream_name`](crate::stream_name)).
    pub stream: Option<String>,
    /// The subject `send` publishes to: the queue's name.
    pub subject: String,
    /// The subject a core queue subscribes to (`subject` or `topic`; default the name).
    pub subscribe_subject: String,
    /// The queue group a core queue subscribes in (`queue_group` or `group`).
    pub queue_group: Option<String>,
    /// The connection's name (`client_id`).
    pub client_id: Option<String>,
    /// Whether a lost connection is reconnected (`retry_connect`, default true; false makes a
    /// single attempt).
    pub retry_connect: bool,
    /// How many times, at most (`max_reconnect`; default unlimited).
    pub max_reconnect: Option<usize>,
    /// The wait between reconnect attempts (`reconnect_timeout`, ms; default: backoff from
    /// 100 ms to 10 s).
    pub reconnect_timeout: Option<Duration>,
    /// How long `open` may take.
    pub connect_timeout: Duration,
    /// The dead-letter queue's name.
    pub dead_letter_queue: String,
    credential: CredentialParams,
    token: Option<String>,
}

impl NatsConfig {
    /// Reads `config` for the queue `base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
    /// unknown or invalid.
    pub(crate) fn from_config(config: &ConfigParams, base: &QueueBase) -> Result<Self> {
        let mut known: Vec<&str> = OPTION_KEYS.to_vec();
        known.extend(NATS_OPTION_KEYS);
        known.extend(TlsFiles::KEYS);
        check_known_options(config, &known)?;
        let text = |keys: &[&str]| -> Option<String> {
            keys.iter().find_map(|key| {
                config
                    .get(key)
                    .or_else(|| config.get(&format!("options.{key}")))
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
        };
        let mut tls_scheme = false;
        for (key, protocol) in config.iter() {
            if key == "connection.protocol"
                || (key.starts_with("connections.") && key.ends_with(".protocol"))
            {
                match protocol {
                    "nats" => {}
                    "tls" => tls_scheme = true,
                    other => {
                        return Err(Error::config(key, format!("`{other}` is not nats or tls")));
                    }
                }
            }
        }
        let subject = base.name().to_owned();
        let token = config
            .get("credential.token")
            .or_else(|| config.get("options.token"))
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let credential = CredentialParams::from_config(config);
        if credential.username.is_some() && credential.password().is_none() && token.is_none() {
            // `nats://TOKEN@host`: NATS tools read it as a token; courier does not guess, and
            // does not keep it where it would be shown as a user name.
            return Err(Error::config(
                "credential.password",
                "a user without a password: give user:password, or a token as `token=` or credential.token",
            ));
        }
        let tls_files = TlsFiles::from_config(config)?;
        let tls =
            tls_scheme || config.get_as_bool("options.tls")?.unwrap_or(false) || tls_files.any();
        Ok(NatsConfig {
            servers: servers(config)?,
            tls,
            tls_files,
            jetstream: config.get_as_bool("options.jetstream")?.unwrap_or(true),
            stream: text(&["stream"]).map(checked_stream_name).transpose()?,
            subscribe_subject: text(&["subject", "topic"]).unwrap_or_else(|| subject.clone()),
            subject,
            queue_group: text(&["queue_group", "group"]),
            client_id: text(&["client_id"]),
            retry_connect: config.get_as_bool("options.retry_connect")?.unwrap_or(true),
            max_reconnect: config.get_as_usize("options.max_reconnect")?,
            reconnect_timeout: config.get_as_duration_ms("options.reconnect_timeout")?,
            connect_timeout: base.options().connect_timeout,
            dead_letter_queue: base.options().dead_letter_queue_name(base.name()),
            credential,
            token,
        })
    }

    /// The servers as shown in messages: `nats://host:port` (no credentials).
    pub fn address(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        self.servers
            .iter()
            .map(|s| format!("{scheme}://{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client options for these settings.
    pub(crate) fn connect_options(&self) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            .require_tls(self.tls)
            .name(
                self.client_id
                    .clone()
                    .unwrap_or_else(|| format!("courier {}", self.subject)),
            );
        if let Some(ca) = &self.tls_files.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_files.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        } else if let (Some(user), Some(password)) =
            (&self.credential.username, self.credential.password())
        {
            options = options.user_and_password(user.clone(), password.to_owned());
        }
        // async-nats takes 0 (or `None`) for "no limit", and counts attempts over all servers:
        // without `retry_connect`, one attempt per server.
        options = options.max_reconnects(if self.retry_connect {
            self.max_reconnect.filter(|n| *n > 0)
        } else {
            Some(self.servers.len().max(1))
        });
        // async-nats counts the first connect as attempt 1 and waits before it too: no wait
        // there, then `reconnect_timeout`, or 100 ms doubling to 10 s.
        let fixed = self.reconnect_timeout;
        options = options.reconnect_delay_callback(move |attempts| {
            if attempts <= 1 {
                return Duration::ZERO;
            }
            fixed.unwrap_or_else(|| {
                let doubled = 100u64.saturating_mul(1 << (attempts - 2).min(7));
                Duration::from_millis(doubled.min(10_000))
            })
        });
        options
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("address", &self.address())
            .field("user", &self.credential.username)
            .field("jetstream", &self.jetstream)
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("subscribe_subject", &self.subscribe_subject)
            .field("queue_group", &self.queue_group)
            .finish_non_exhaustive()
    }
}

/// `host:port` of each server: `connection.host|port` (a parsed URI fills them in), or
/// `connections.N.host|port`; the port defaults to 4222.
fn servers(config: &ConfigParams) -> Result<Vec<String>> {
    let mut servers = Vec::new();
    let one = |section: &ConfigParams, key: &str| -> Result<Option<String>> {
        let Some(host) = section.get("host").filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let port = match section.get_as_u64("port").map_err(|_| port_error(key))? {
            None => 4222,
            Some(p) => u16::try_from(p).map_err(|_| port_error(key))?,
        };
        Ok(Some(format!("{host}:{port}")))
    };
    if let Some(server) = one(&config.get_section("connection"), "connection.port")? {
        servers.push(server);
    }
    for i in 0.. {
        let section = config.get_section(&format!("connections.{i}"));
        match one(&section, &format!("connections.{i}.port"))? {
            Some(server) => servers.push(server),
            None => break,
        }
    }
    if servers.is_empty() {
        return Err(Error::config(
            "connection.host",
            "is required (nats://HOST:PORT/NAME)",
        ));
    }
    Ok(servers)
}

/// A stream name as JetStream takes it: no `.`, `*`, `>`, path separators or white space.
fn checked_stream_name(name: String) -> Result<String> {
    match name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        Some(c) => Err(Error::config(
            "options.stream",
            format!("a JetStream stream name cannot hold {c:?}"),
        )),
        None => Ok(name),
    }
}

fn port_error(key: &str) -> Error {
    Error::config(key, "expected a port number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> NatsConfig {
        let config = ConfigParams::from_tuples(pairs.iter().copied());
        let base = QueueBase::from_config("nats", &config, None).unwrap();
        NatsConfig::from_config(&config, &base).unwrap()
    }

    #[test]
    fn a_tls_server_in_a_pip_connection_list_makes_the_connection_tls() {
        let c = config(&[
            ("queue", "q"),
            ("connections.0.protocol", "nats"),
            ("connections.0.host", "a"),
            ("connections.1.protocol", "tls"),
            ("connections.1.host", "b"),
            ("connections.1.port", "4443"),
        ]);
        assert_eq!(c.address(), "tls://a:4222,tls://b:4443");
        assert!(c.tls);
    }

    #[test]
    fn a_shared_stream_name_is_checked() {
        let c = config(&[
            ("queue", "q"),
            ("connection.host", "h"),
            ("options.stream", "ORDERS"),
        ]);
        assert_eq!(c.stream.as_deref(), Some("ORDERS"));
        assert_eq!(
            config(&[("queue", "q"), ("connection.host", "h")]).stream,
            None
        );
        for bad in ["A.B", "A*", "A>", "A B", "A/B"] {
            let pairs = [
                ("queue", "q"),
                ("connection.host", "h"),
                ("options.stream", bad),
            ];
            let config = ConfigParams::from_tuples(pairs.iter().copied());
            let base = QueueBase::from_config("nats", &config, None).unwrap();
            let e = NatsConfig::from_config(&config, &base).unwrap_err();
            assert_eq!(e.kind(), courier_core::ErrorKind::Config, "{bad}");
            assert!(e.to_string().contains("options.stream"), "{e}");
        }
    }

    #[test]
    fn tokens_are_kept_apart_and_never_shown() {
        let c = config(&[
            ("queue", "q"),
            ("connection.host", "h"),
            ("credential.username", "u"),
            ("credential.password", "p"),
            ("credential.token", ""),
        ]);
        assert_eq!(c.token, None, "an empty token is no token");
        let c = config(&[
            ("queue", "q"),
            ("connection.host", "h"),
            ("options.token", "t0k3n"),
        ]);
        assert_eq!(c.token.as_deref(), Some("t0k3n"));
        assert!(!format!("{c:?}").contains("t0k3n"));
    }
}
