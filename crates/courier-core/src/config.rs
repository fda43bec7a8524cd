//! [`ConfigParams`]: pip-services configuration, a flat map of dotted keys.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::{Error, Result};

/// Key fragments whose values are secrets: they are shown as `***` by `Debug` and `Display`.
const SECRET_KEYS: [&str; 6] = ["password", "passwd", "pwd", "access_key", "secret", "token"];

/// pip-services configuration parameters: string keys, dotted into sections
/// (`connection.host`, `options.lock_timeout`), string values read through typed getters.
///
/// The string form is `key1=value1;key2=value2`, as in pip-services:
///
/// ```
/// use std::time::Duration;
/// use courier_core::ConfigParams;
///
/// let config = ConfigParams::from_string("name=orders;options.lock_timeout=200").unwrap();
/// assert_eq!(config.get("name"), Some("orders"));
/// let options = config.get_section("options");
/// assert_eq!(options.get_as_duration_ms("lock_timeout").unwrap(), Some(Duration::from_millis(200)));
/// ```
///
/// Typed getters fail with [`ErrorKind::Config`](crate::ErrorKind::Config) naming the key when
/// a value does not parse. Values of keys that hold secrets (`password`, `passwd`, `pwd`,
/// `access_key`, `secret`, `token`) are redacted by `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigParams {
    values: BTreeMap<String, String>,
}

impl ConfigParams {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the pip-services string form `key1=value1;key2=value2`. Empty segments are
    /// skipped; a segment without `=` is a key with an empty value (as in pip-services).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if a key is empty (`=value`).
    pub fn from_string(text: &str) -> Result<Self> {
        let mut config = ConfigParams::new();
        for segment in text.split(';') {
            let segment = segment.trim();
            if segment.is_empty() {
                continue;
            }
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::config(
                    "<empty>",
                    format!("segment {:?} has no key", redact_segment(segment)),
                ));
            }
            config.set(key, value.trim());
        }
        Ok(config)
    }

    /// Builds a configuration from `(key, value)` pairs.
    pub fn from_tuples<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut config = ConfigParams::new();
        for (k, v) in pairs {
            config.set(k, v);
        }
        config
    }

    /// Sets `key` to `value`, replacing what was there.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, or `default` when it is missing.
    pub fn get_as_string_with_default<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The keys and values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The keys under `section.`, with that prefix removed.
    pub fn get_section(&self, section: &str) -> ConfigParams {
        let prefix = format!("{section}.");
        ConfigParams {
            values: self
                .values
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_owned(), v.clone())))
                .collect(),
        }
    }

    /// Adds every key of `section_params` under `section.`.
    pub fn add_section(&mut self, section: &str, section_params: &ConfigParams) {
        for (k, v) in section_params.iter() {
            self.set(format!("{section}.{k}"), v);
        }
    }

    /// Keys of `other` override keys of `self`.
    #[must_use]
    pub fn override_with(mut self, other: &ConfigParams) -> ConfigParams {
        for (k, v) in other.iter() {
            self.set(k, v);
        }
        self
    }

    /// `key` as an unsigned integer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `key` if the value is not one.
    pub fn get_as_u64(&self, key: &str) -> Result<Option<u64>> {
        self.parse(key, "a non-negative integer", |v| v.parse::<u64>().ok())
    }

    /// `key` as a `usize`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `key` if the value is not one.
    pub fn get_as_usize(&self, key: &str) -> Result<Option<usize>> {
        self.parse(key, "a non-negative integer", |v| v.parse::<usize>().ok())
    }

    /// `key` as a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, any case.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `key` if the value is not one.
    pub fn get_as_bool(&self, key: &str) -> Result<Option<bool>> {
        self.parse(key, "a boolean", |v| {
            match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
                "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
                _ => None,
            }
        })
    }

    /// `key` as a duration given in integer milliseconds, as pip-services writes durations.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `key` if the value is not one.
    pub fn get_as_duration_ms(&self, key: &str) -> Result<Option<Duration>> {
        Ok(self.get_as_u64(key)?.map(Duration::from_millis))
    }

    fn parse<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => match parse(raw.trim()) {
                Some(v) => Ok(Some(v)),
                None if is_secret(key) => Err(Error::config(key, format!("expected {expected}"))),
                None => Err(Error::config(
                    key,
                    format!("expected {expected}, found {raw:?}"),
                )),
            },
        }
    }
}

/// Whether the key names a secret whose value must never be shown.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// What `Debug` and `Display` show for `key`: secrets as `***`, URIs without their password.
fn shown_value<'a>(key: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
    if is_secret(key) {
        "***".into()
    } else if key.ends_with("uri") || key.ends_with("url") {
        crate::redact_uri(value).into()
    } else {
        value.into()
    }
}

fn redact_segment(segment: &str) -> String {
    if is_secret(segment) {
        "***".into()
    } else {
        segment.into()
    }
}

impl fmt::Display for ConfigParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{k}={}", shown_value(k, v))?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConfigParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| (k, shown_value(k, v))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parses_string_form_and_sections() {
        let c = ConfigParams::from_string(
            " name = q ; connection.host=localhost;connection.port=5672;;flag",
        )
        .unwrap();
        assert_eq!(c.get("name"), Some("q"));
        assert_eq!(c.get("flag"), Some(""));
        let conn = c.get_section("connection");
        assert_eq!(conn.len(), 2);
        assert_eq!(conn.get_as_u64("port").unwrap(), Some(5672));
        let mut again = ConfigParams::new();
        again.add_section("connection", &conn);
        assert_eq!(again.get("connection.host"), Some("localhost"));
    }

    #[test]
    fn typed_getters_name_the_key() {
        let c = ConfigParams::from_tuples([("options.lock_timeout", "soon"), ("b", "Yes")]);
        let err = c.get_as_duration_ms("options.lock_timeout").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("options.lock_timeout"), "{err}");
        assert_eq!(c.get_as_bool("b").unwrap(), Some(true));
        assert_eq!(c.get_as_u64("missing").unwrap(), None);
        assert_eq!(
            ConfigParams::from_string("=x").unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = ConfigParams::from_tuples([
            ("credential.username", "bob"),
            ("credential.password", "hunter2"),
        ]);
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("bob"));
        let bad = ConfigParams::from_tuples([("credential.password", "hunter2")]);
        let err = bad.get_as_u64("credential.password").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
