//! Connection and credential parameters, URIs, and keeping passwords out of sight.

use std::fmt;

use url::Url;

use crate::config::is_secret;
use crate::{ConfigParams, Error, Result};

/// Where a queue connects: pip-services' `connection.*` keys.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionParams {
    /// `connection.uri`: the whole address. Shown redacted by `Debug`.
    pub uri: Option<String>,
    /// `connection.protocol` (the URI scheme).
    pub protocol: Option<String>,
    /// `connection.host`.
    pub host: Option<String>,
    /// `connection.port`.
    pub port: Option<u16>,
}

impl ConnectionParams {
    /// Reads the `connection.*` keys of `config`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if `connection.port` is not a port number.
    pub fn from_config(config: &ConfigParams) -> Result<Self> {
        let c = config.get_section("connection");
        let port = match c
            .get_as_u64("port")
            .map_err(|_| Error::config("connection.port", "expected a port number"))?
        {
            None => None,
            Some(p) => Some(
                u16::try_from(p)
                    .map_err(|_| Error::config("connection.port", "expected a port number"))?,
            ),
        };
        Ok(ConnectionParams {
            uri: c.get("uri").map(str::to_owned),
            protocol: c.get("protocol").map(str::to_owned),
            host: c.get("host").map(str::to_owned),
            port,
        })
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self == &ConnectionParams::default()
    }
}

impl fmt::Debug for ConnectionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionParams")
            .field("uri", &self.uri.as_deref().map(redact_uri))
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

/// Who a queue connects as: pip-services' `credential.*` keys. The password is never shown.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialParams {
    /// `credential.username`.
    pub username: Option<String>,
    password: Option<String>,
}

impl CredentialParams {
    /// Creates credentials.
    pub fn new(username: Option<String>, password: Option<String>) -> Self {
        CredentialParams { username, password }
    }

    /// Reads the `credential.*` keys of `config`.
    pub fn from_config(config: &ConfigParams) -> Self {
        let c = config.get_section("credential");
        CredentialParams {
            username: c.get("username").map(str::to_owned),
            password: c.get("password").map(str::to_owned),
        }
    }

    /// The password, for handing to a client library. Never log it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.password.is_none()
    }
}

impl fmt::Debug for CredentialParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialParams")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `uri` with its password, and any query parameter that holds a secret, replaced by `***`.
///
/// Works on the text, whatever it holds, so that no password can slip through: a password
/// may contain `/`, `?`, `#`, `:` or `@` unescaped, and a URI that does not parse must be
/// hidden as well as one that does. The password is taken to run from the first `:` after
/// the scheme's `//` to the *last* `@`; when the text after it has an `@` too (an e-mail in a
/// query parameter), more than the password is hidden, never less.
///
/// ```
/// use courier_core::redact_uri;
///
/// assert_eq!(redact_uri("amqp://guest:secret@localhost:5672/%2f"), "amqp://guest:***@localhost:5672/%2f");
/// assert_eq!(redact_uri("postgres://u:p?ss@h/db"), "postgres://u:***@h/db");
/// assert_eq!(redact_uri("postgres://u@h/db?password=pw"), "postgres://u@h/db?password=***");
/// ```
pub fn redact_uri(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let hidden_userinfo = match uri[start..].rfind('@').map(|at| start + at) {
        Some(at) => match uri[start..at].find(':').map(|c| start + c) {
            Some(colon) => format!("{}***{}", &uri[..=colon], &uri[at..]),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    };
    hide_secret_parameters(&hidden_userinfo)
}

/// Every `?key=value` or `&key=value` whose key names a secret, wherever it stands, with its
/// value (up to the next `&`, `#` included: it may be part of the secret) replaced by `***`.
fn hide_secret_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['?', '&']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let end = rest.find(['&', '?']).unwrap_or(rest.len());
        if let Some((key, _)) = rest[..end].split_once('=') {
            if is_secret(key) {
                // The value runs to the next `&`: a `?` or `#` in it may be part of the secret.
                let value_end = rest.find('&').unwrap_or(rest.len());
                out.push_str(key);
                out.push_str("=***");
                rest = &rest[value_end..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The TLS files a queue may be given (`options.tls_ca_file`, `options.tls_cert_file`,
/// `options.tls_key_file`), each a PEM file, checked to exist when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// Root certificates to trust instead of the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsFiles {
    /// The keys [`from_config`](Self::from_config) reads, without `options.`.
    pub const KEYS: [&str; 3] = ["tls_ca_file", "tls_cert_file", "tls_key_file"];

    /// Reads the TLS files of `config`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the key whose file does not
    /// exist, or `tls_key_file` / `tls_cert_file` when only the other one is given.
    pub fn from_config(config: &ConfigParams) -> Result<Self> {
        let file = |key: &str| -> Result<Option<std::path::PathBuf>> {
            let key = format!("options.{key}");
            let Some(path) = config.get(&key).filter(|p| !p.is_empty()) else {
                return Ok(None);
            };
            let path = std::path::PathBuf::from(path);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(Error::config(
                    &key,
                    format!("no file at {}", path.display()),
                ))
            }
        };
        let client = match (file("tls_cert_file")?, file("tls_key_file")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "options.tls_key_file",
                    "is required with tls_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "options.tls_cert_file",
                    "is required with tls_key_file",
                ));
            }
        };
        Ok(TlsFiles {
            ca_file: file("tls_ca_file")?,
            client,
        })
    }

    /// Whether any file is given (which asks for TLS).
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client.is_some()
    }
}

/// Whether `e` (or an error it wraps) is a TLS handshake the client refused, such as an
/// untrusted server certificate: rustls reports it as invalid data on the socket, and says
/// "invalid peer certificate" (a client that wraps the I/O error in a type of its own hides
/// the first). Retrying will not help; the configuration must change (`tls_ca_file`), so
/// backends report it as [`ErrorKind::Config`](crate::ErrorKind::Config).
pub fn refused_handshake(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        let invalid_data = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
        if invalid_data || e.to_string().contains("invalid peer certificate") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Turns a queue URI into [`ConfigParams`]:
///
/// * `connection.uri` (the whole URI), `connection.protocol` (the scheme), `connection.host`,
///   `connection.port`, and `connection.path` (the path without its leading `/`);
/// * `credential.username` / `credential.password` from the user-info part;
/// * query parameters `queue` and `name` as they are, every other one under `options.`.
///
/// ```
/// use courier_core::backend::config_from_uri;
///
/// let c = config_from_uri("memory://orders?lock_timeout=200").unwrap();
/// assert_eq!(c.get("connection.protocol"), Some("memory"));
/// assert_eq!(c.get("connection.host"), Some("orders"));
/// assert_eq!(c.get("options.lock_timeout"), Some("200"));
/// ```
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config) if `uri` does not parse or repeats a
/// parameter. The message does not repeat the URI.
pub fn config_from_uri(uri: &str) -> Result<ConfigParams> {
    check_userinfo(uri)?;
    // The URI itself is not repeated: what does not parse cannot be trusted to redact well.
    let url = Url::parse(uri).map_err(|e| Error::config("uri", format!("not a valid URI: {e}")))?;
    let mut c = ConfigParams::new();
    c.set("connection.uri", uri);
    c.set("connection.protocol", url.scheme());
    if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
        c.set("connection.host", percent_decode(host));
    }
    if let Some(port) = url.port() {
        c.set("connection.port", port.to_string());
    }
    let path = url.path().trim_start_matches('/');
    if !path.is_empty() {
        c.set("connection.path", percent_decode(path));
    }
    if !url.username().is_empty() {
        c.set("credential.username", percent_decode(url.username()));
    }
    if let Some(password) = url.password() {
        c.set("credential.password", percent_decode(password));
    }
    for (k, v) in url.query_pairs() {
        let key = match k.as_ref() {
            "queue" | "name" => k.clone().into_owned(),
            _ => format!("options.{k}"),
        };
        if c.contains_key(&key) {
            return Err(Error::config(&key, "is given more than once"));
        }
        c.set(key, v.into_owned());
    }
    Ok(c)
}

/// `config` with what its `connection.uri` holds (host, port, path, credentials, queue and
/// options, as [`config_from_uri`] reads them) added where `config` does not say otherwise:
/// pip-services configs give `connection.uri` beside other keys, which win.
///
/// # Errors
///
/// As [`config_from_uri`].
pub fn with_uri_parts(config: &ConfigParams) -> Result<ConfigParams> {
    let mut config = config.clone();
    let Some(uri) = config.get("connection.uri").map(str::to_owned) else {
        return Ok(config);
    };
    for (key, value) in config_from_uri(&uri)?.iter() {
        if !config.contains_key(key) {
            config.set(key, value);
        }
    }
    Ok(config)
}

/// Refuses a URI whose user-info part holds an unescaped `/`, `?` or `#`: URI parsers end the
/// user-info there, so the rest of the password would be read as a path, query or fragment
/// (and could then be shown). Such characters must be percent-encoded (`%2F`, `%3F`, `%23`).
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config), without repeating the URI.
pub fn check_userinfo(uri: &str) -> Result<()> {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let refuse = || {
        Err(Error::config(
            "uri",
            "the password holds `/`, `?` or `#`: percent-encode them (%2F, %3F, %23)",
        ))
    };
    // An `@` before the query ends the user-info: `/` or `#` in a user-info with a password
    // would be cut there by a parser.
    let query = uri[start..].find('?').map_or(uri.len(), |i| start + i);
    if let Some(at) = uri[start..query].rfind('@').map(|i| start + i) {
        let userinfo = &uri[start..at];
        if userinfo.contains(':') && userinfo.contains(['/', '#']) {
            return refuse();
        }
        return Ok(());
    }
    // No `@` before the first `?`: a `user:pa?ss@host`, whose authority a parser reads as
    // `user:pa` (a "port" that is not a number, or none), with the real `@` further on.
    let authority_end = uri[start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| start + i);
    let authority = &uri[start..authority_end];
    let host_and_port = authority.rsplit(']').next().unwrap_or(authority);
    let cut_password = uri[authority_end..].contains('@')
        && host_and_port
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()));
    if cut_password {
        return refuse();
    }
    Ok(())
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// Checks that every `options.*` key of `config` is one of `known` (without the prefix):
/// for URIs, where a misspelt parameter must not be ignored silently.
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the first unknown key.
pub fn check_known_options(config: &ConfigParams, known: &[&str]) -> Result<()> {
    for (key, _) in config.get_section("options").iter() {
        if !known.contains(&key) {
            return Err(Error::config(
                &format!("options.{key}"),
                format!("unknown option; known options are {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn uri_becomes_config() {
        let c =
            config_from_uri("amqp://guest:p%40ss@localhost:5672/vhost?queue=orders&prefetch=10")
                .unwrap();
        assert_eq!(c.get("connection.host"), Some("localhost"));
        assert_eq!(c.get("connection.port"), Some("5672"));
        assert_eq!(c.get("connection.path"), Some("vhost"));
        assert_eq!(c.get("credential.username"), Some("guest"));
        assert_eq!(c.get("credential.password"), Some("p@ss"));
        assert_eq!(c.get("queue"), Some("orders"));
        assert_eq!(c.get("options.prefetch"), Some("10"));
        let shown = format!("{c} {c:?}");
        assert!(
            !shown.contains("p%40ss") && !shown.contains("p@ss"),
            "{shown}"
        );
    }

    #[test]
    fn bad_uri_is_config_error_without_password() {
        let err = config_from_uri("not a uri :pw@").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let dup = config_from_uri("memory://q?a=1&a=2").unwrap_err();
        assert!(dup.to_string().contains("options.a"));
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_uri("redis://:topsecret@h:6379"),
            "redis://:***@h:6379"
        );
        assert_eq!(
            redact_uri("postgres://u@h/db?password=x&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_uri("no-uri://a:b@c d"), "no-uri://a:***@c d");
        assert_eq!(redact_uri("redis://u:12/34@h"), "redis://u:***@h");
        assert_eq!(redact_uri("postgres//u:pw@h"), "postgres//u:***@h");
        assert_eq!(
            redact_uri("postgres://u@h:99999/db?token=x#f"),
            "postgres://u@h:99999/db?token=***"
        );
        assert_eq!(
            redact_uri("postgres://h/db?a=1#f&password=#x&b=2"),
            "postgres://h/db?a=1#f&password=***&b=2"
        );
        assert_eq!(
            redact_uri("memory://q/a@b?queue=q"),
            "memory://q/a@b?queue=q"
        );
        assert_eq!(
            redact_uri("postgres://u:p?ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_uri("postgres://u:p#s@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_uri("redis://:a@b@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(
            redact_uri("postgres://db/app?user=admin@srv&password=s3cret"),
            "postgres://db/app?user=admin@srv&password=***"
        );
        assert_eq!(
            redact_uri("postgres://db/app?password=p@ss"),
            "postgres://db/app?password=***"
        );
        assert_eq!(
            redact_uri("postgres://h/db?password=abc?xyz&a=1"),
            "postgres://h/db?password=***&a=1"
        );
        assert_eq!(
            redact_uri("postgres://h/db?x=1?password=a?b=c"),
            "postgres://h/db?x=1?password=***"
        );
        assert_eq!(
            redact_uri("postgres://db:5432/app?user=a@b&password=x"),
            "postgres://db:***@b&password=***"
        );
        assert_eq!(
            redact_uri("sqlite::memory:?queue=q"),
            "sqlite::memory:?queue=q"
        );
        let creds = CredentialParams::new(Some("u".into()), Some("pw".into()));
        assert!(!format!("{creds:?}").contains("pw\""));
        assert_eq!(creds.password(), Some("pw"));
    }

    #[test]
    fn unescaped_delimiters_in_a_password_are_refused() {
        for uri in ["postgres://u:#x@h/db", "redis://:a/b@h", "amqp://u:?q@h"] {
            let err = config_from_uri(uri).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("percent-encode"), "{err}");
        }
        assert!(config_from_uri("postgres://u:p%23x@h/db").is_ok());
        assert!(config_from_uri("memory://q/a@b?x=1").is_ok());
        assert!(config_from_uri("postgres://u:pw@h:5432/db?application_name=me@x").is_ok());
        assert!(config_from_uri("postgres://h:5432/db?application_name=me@x").is_ok());
        assert!(config_from_uri("postgres://[::1]/db?application_name=me@x").is_ok());
        assert!(config_from_uri("postgres://[::1]:5432/db?application_name=me@x").is_ok());
        assert!(check_userinfo("postgres://admin:2024/x@db/app").is_err());
    }

    proptest::proptest! {
        /// Whatever the text (any Unicode, any delimiters), redaction and the user-info check
        /// neither panic nor let a password through.
        #[test]
        fn redaction_takes_any_text(text in ".*", password in "[^@]{6,12}") {
            let _ = redact_uri(&text);
            let _ = check_userinfo(&text);
            let _ = config_from_uri(&text);
            let uri = format!("x://u:{password}@h{text}");
            proptest::prop_assume!(!text.contains('@'));
            proptest::prop_assert!(!redact_uri(&uri).contains(&password));
            let secret = format!("x://h/db?a={text}&password={password}&b=1");
            proptest::prop_assume!(!text.contains('&') && !password.contains('&'));
            proptest::prop_assert!(!redact_uri(&secret).contains(&password));
        }
    }

    #[test]
    fn unknown_options_are_named() {
        let c = config_from_uri("memory://q?lock_timout=5").unwrap();
        let err = check_known_options(&c, &crate::options::OPTION_KEYS).unwrap_err();
        assert!(err.to_string().contains("options.lock_timout"), "{err}");
    }
}
