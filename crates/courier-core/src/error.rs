//! The one error type of courier, [`Error`], and its [`ErrorKind`].

use std::fmt;

/// A boxed error usable as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible courier operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in categories a caller can act on.
///
/// The enum is `#[non_exhaustive]`: match it with a wildcard arm, new kinds may be added in minor
/// releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation needs an open queue and the queue is not open ("The queue is not opened").
    NotOpened,
    /// The queue cannot do this: the matching [`MessagingCapabilities`](crate::MessagingCapabilities)
    /// flag is false.
    Unsupported,
    /// The broker or database could not be reached, or the connection broke.
    Connection,
    /// An operation did not finish in time.
    Timeout,
    /// An envelope or payload could not be decoded or encoded (bad JSON, bad UTF-8, bad base64).
    InvalidMessage,
    /// A URI, [`ConfigParams`](crate::ConfigParams) key or descriptor is invalid.
    Config,
    /// Anything else the backend reported; the backend's own error is the [`source`](std::error::Error::source).
    Backend,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotOpened => "queue not opened",
            ErrorKind::Unsupported => "unsupported operation",
            ErrorKind::Connection => "connection error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidMessage => "invalid message",
            ErrorKind::Config => "configuration error",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every courier operation: a [`kind`](Error::kind), a message, the queue it concerns
/// and, where there is one, the underlying error as its [`source`](std::error::Error::source).
///
/// Messages never contain passwords: URIs are redacted with [`redact_uri`](crate::redact_uri)
/// before they are put into an error.
///
/// ```
/// use courier_core::{Error, ErrorKind};
///
/// let err = Error::not_opened("orders");
/// assert_eq!(err.kind(), ErrorKind::NotOpened);
/// assert_eq!(err.to_string(), "queue not opened: The queue is not opened (queue orders)");
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    queue: Option<String>,
    backend: Option<&'static str>,
    source: Option<BoxError>,
}

impl Error {
    /// Creates an error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                queue: None,
                backend: None,
                source: None,
            }),
        }
    }

    /// The `NotOpened` error of pip-services, "The queue is not opened", for queue `queue`.
    pub fn not_opened(queue: &str) -> Self {
        Error::new(ErrorKind::NotOpened, "The queue is not opened").with_queue(queue)
    }

    /// An `Unsupported` error saying that queue `queue` cannot do `operation`.
    pub fn unsupported(queue: &str, operation: &str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("{operation} is not supported by this queue"),
        )
        .with_queue(queue)
    }

    /// A `Config` error about `key`: `problem` says what is wrong with it.
    pub fn config(key: &str, problem: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Config, format!("`{key}`: {problem}"))
    }

    /// An `InvalidMessage` error with `message`.
    pub fn invalid_message(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidMessage, message)
    }

    /// Sets the name of the queue the error concerns.
    #[must_use]
    pub fn with_queue(mut self, queue: &str) -> Self {
        self.inner.queue = Some(queue.to_owned());
        self
    }

    /// Sets the backend ("memory", "sqlite", "rabbitmq", ...) that reported the error.
    #[must_use]
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.inner.backend = Some(backend);
        self
    }

    /// Sets the underlying error. It must not carry a password in its `Display`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The queue the error concerns, if known.
    pub fn queue(&self) -> Option<&str> {
        self.inner.queue.as_deref()
    }

    /// The backend that reported the error, if known.
    pub fn backend(&self) -> Option<&'static str> {
        self.inner.backend
    }

    /// The message, without kind, queue or source.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        match (&self.inner.queue, self.inner.backend) {
            (Some(q), Some(b)) => write!(f, " (queue {q}, {b})"),
            (Some(q), None) => write!(f, " (queue {q})"),
            (None, Some(b)) => write!(f, " ({b})"),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(q) = &self.inner.queue {
            d.field("queue", q);
        }
        if let Some(b) = self.inner.backend {
            d.field("backend", &b);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", &format_args!("{s}"));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::invalid_message(format!("JSON: {err}")).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_queue_and_backend() {
        let err = Error::new(ErrorKind::Backend, "boom")
            .with_queue("q")
            .with_backend("memory");
        assert_eq!(err.to_string(), "backend error: boom (queue q, memory)");
        assert_eq!(err.queue(), Some("q"));
        assert_eq!(err.backend(), Some("memory"));
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::other("inner");
        let err = Error::new(ErrorKind::Connection, "outer").with_source(io);
        let src = std::error::Error::source(&err).map(|s| s.to_string());
        assert_eq!(src.as_deref(), Some("inner"));
    }
}
