//! What a Redis queue is configured with: parsed once, from a URI or pip-services
//! `ConfigParams`, into a [`RedisConfig`].

use std::fmt;
use std::time::Duration;

use courier_core::backend::{
    CredentialParams, OPTION_KEYS, QueueBase, TlsFiles, check_known_options,
};
use courier_core::{ConfigParams, Error, Result};

/// The options of this backend, besides the shared [`OPTION_KEYS`] and [`TlsFiles::KEYS`]
/// (without `options.`).
pub const REDIS_OPTION_KEYS: [&str; 4] = ["db", "group", "tls", "block"];

/// The consumer group when `options.group` is not given.
pub const DEFAULT_GROUP: &str = "courier";

/// The longest a `receive` blocks on the server in one call when `options.block` is not
/// given: a waiting receive looks for abandoned and expired messages at least this often.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);

/// A Redis queue's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's host.
    pub host: String,
    /// The server's port (6379 by default).
    pub port: u16,
    /// The database number: the URI's path (`redis://host/2`) or `options.db`; 0 by default.
    pub db: i64,
    /// TLS (`rediss://`, `options.tls`, or any of the TLS files).
    pub tls: bool,
    /// A private CA and a client certificate (`tls_ca_file`, `tls_cert_file`, `tls_key_file`).
    pub tls_files: TlsFiles,
    /// The stream: the queue's name.
    pub stream: String,
    /// The dead-letter queue's stream.
    pub dead_letter_stream: String,
    /// The consumer group every process of the queue shares (`options.group`).
    pub group: String,
    /// How long one blocking read may wait on the server (`options.block`, ms).
    pub block: Duration,
    /// How long `open` (and any one call to the server) may take.
    pub connect_timeout: Duration,
    credential: CredentialParams,
}

impl RedisConfig {
    /// Reads `config` for the queue `base`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key that is missing,
    /// unknown or invalid.
    pub(crate) fn from_config(config: &ConfigParams, base: &QueueBase) -> Result<Self> {
        let mut known: Vec<&str> = OPTION_KEYS.to_vec();
        known.extend(REDIS_OPTION_KEYS);
        known.extend(TlsFiles::KEYS);
        check_known_options(config, &known)?;
        let tls_files = TlsFiles::from_config(config)?;
        let tls = match config.get("connection.protocol") {
            None | Some("redis") => false,
            Some("rediss") => true,
            Some(other) => {
                return Err(Error::config(
                    "connection.protocol",
                    format!("`{other}` is not redis or rediss"),
                ));
            }
        } || config.get_as_bool("options.tls")?.unwrap_or(false)
            || tls_files.any();
        let host = config
            .get("connection.host")
            // An IPv6 literal from a URI (`redis://[::1]/0`) keeps its brackets there.
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::config(
                    "connection.host",
                    "is required (redis://HOST:PORT/DB?queue=NAME)",
                )
            })?
            .to_owned();
        let port = match config
            .get_as_u64("connection.port")
            .map_err(|_| port_error())?
        {
            None => 6379,
            Some(p) => u16::try_from(p).map_err(|_| port_error())?,
        };
        let path = config.get("connection.path").filter(|p| !p.is_empty());
        let db = match (path, config.get("options.db")) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "options.db",
                    "is given twice: in the URI's path and as an option",
                ));
            }
            (Some(db), None) => parse_db("connection.path", db)?,
            (None, Some(db)) => parse_db("options.db", db)?,
            (None, None) => 0,
        };
        let group = config
            .get("options.group")
            .filter(|g| !g.is_empty())
            .unwrap_or(DEFAULT_GROUP)
            .to_owned();
        let block = config
            .get_as_duration_ms("options.block")?
            .unwrap_or(DEFAULT_BLOCK);
        if block.is_zero() {
            return Err(Error::config(
                "options.block",
                "must be at least 1 ms (0 would block forever)",
            ));
        }
        Ok(RedisConfig {
            host,
            port,
            db,
            tls,
            tls_files,
            stream: base.name().to_owned(),
            dead_letter_stream: base.options().dead_letter_queue_name(base.name()),
            group,
            block,
            connect_timeout: base.options().connect_timeout,
            credential: CredentialParams::from_config(config),
        })
    }

    /// The server as shown in messages: `redis://host:port/db` (no credentials).
    pub fn address(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.db)
    }

    /// The redis-rs client for these settings.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) if a TLS file cannot be read or
    /// redis-rs refuses the settings.
    pub(crate) fn client(&self) -> Result<redis::Client> {
        let refused = |e: redis::RedisError| {
            Error::config(
                "connection",
                format!("redis-rs refuses these settings: {e}"),
            )
        };
        let info = self.connection_info().map_err(refused)?;
        if !self.tls_files.any() {
            return redis::Client::open(info).map_err(refused);
        }
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::config(key, format!("cannot read {}: {e}", path.display())))
        };
        let root_cert = match &self.tls_files.ca_file {
            Some(ca) => Some(read("options.tls_ca_file", ca)?),
            None => None,
        };
        let client_tls = match &self.tls_files.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("options.tls_cert_file", cert)?,
                client_key: read("options.tls_key_file", key)?,
            }),
            None => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(refused)
    }

    /// The redis-rs connection settings.
    fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo as _;
        let addr = if self.tls {
            redis::ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.credential.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = self.credential.password() {
            settings = settings.set_password(password);
        }
        Ok(addr.into_connection_info()?.set_redis_settings(settings))
    }
}

fn parse_db(key: &str, db: &str) -> Result<i64> {
    db.parse::<u16>()
        .map(i64::from)
        .map_err(|_| Error::config(key, "the database must be a number (redis://HOST:PORT/DB)"))
}

fn port_error() -> Error {
    Error::config("connection.port", "expected a port number")
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.address())
            .field("user", &self.credential.username)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::backend::config_from_uri;

    fn parse(uri: &str) -> Result<RedisConfig> {
        let config = config_from_uri(uri)?;
        let base = QueueBase::from_config("redis", &config, None)?;
        RedisConfig::from_config(&config, &base)
    }

    #[test]
    fn a_uri_gives_server_database_and_queue() {
        let c = parse("redis://u:s3cret@h:6380/2?queue=orders&group=g").unwrap();
        assert_eq!(c.address(), "redis://h:6380/2");
        assert_eq!((c.stream.as_str(), c.group.as_str()), ("orders", "g"));
        assert_eq!(c.dead_letter_stream, "orders.dlq");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(parse("redis://[::1]:6380?queue=q").unwrap().host, "::1");
        let c = parse("rediss://h?queue=q").unwrap();
        assert!(c.tls);
        assert_eq!((c.port, c.db, c.block), (6379, 0, DEFAULT_BLOCK));
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (uri, key) in [
            ("redis://h/x?queue=q", "connection.path"),
            ("redis://h/1?queue=q&db=2", "options.db"),
            ("redis://h?queue=q&block=0", "options.block"),
            ("redis://h?queue=q&colour=red", "colour"),
        ] {
            let e = parse(uri).unwrap_err();
            assert_eq!(e.kind(), courier_core::ErrorKind::Config, "{uri}");
            assert!(e.to_string().contains(key), "{uri}: {e}");
        }
    }
}
