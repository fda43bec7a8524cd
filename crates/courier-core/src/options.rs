//! [`QueueOptions`] and queue-name resolution: the `options.*` keys every queue shares.

use std::time::Duration;

use crate::{ConfigParams, Error, Result};

/// The behaviour settings every courier queue shares, read from `options.*` keys of a
/// [`ConfigParams`] (durations in integer milliseconds) or from URI query parameters
/// (`memory://orders?lock_timeout=200&max_deliveries=3`).
///
/// | key | field | default |
/// |---|---|---|
/// | `options.lock_timeout` | [`lock_timeout`](Self::lock_timeout) | 30 000 ms |
/// | `options.max_deliveries` | [`max_deliveries`](Self::max_deliveries) | unlimited |
/// | `options.dead_letter_queue` | [`dead_letter_queue`](Self::dead_letter_queue) | `<name>.dlq` |
/// | `options.listen_interval` (or `listen_interval`) | [`listen_interval`](Self::listen_interval) | 1 000 ms |
/// | `options.listen_concurrency` | [`listen_concurrency`](Self::listen_concurrency) | 1 |
/// | `options.drain_timeout` | [`drain_timeout`](Self::drain_timeout) | 30 000 ms |
/// | `options.max_size` | [`max_size`](Self::max_size) | unbounded |
/// | `options.autosubscribe` | [`autosubscribe`](Self::autosubscribe) | false |
/// | `options.redelivery_delay` | [`redelivery_delay`](Self::redelivery_delay) | 100 ms |
/// | `options.max_redelivery_delay` | [`max_redelivery_delay`](Self::max_redelivery_delay) | 10 000 ms |
/// | `options.connect_timeout` | [`connect_timeout`](Self::connect_timeout) | 10 000 ms |
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// How long a received message stays locked (invisible) before it is redelivered.
    pub lock_timeout: Duration,
    /// After this many deliveries a message that is abandoned or whose lock expires goes to the
    /// dead-letter queue instead of being redelivered. `None`: no limit.
    pub max_deliveries: Option<u32>,
    /// The dead-letter queue's name; `None` means `<name>.dlq`.
    pub dead_letter_queue: Option<String>,
    /// How long each `receive` of a `listen` loop waits before it checks again.
    pub listen_interval: Duration,
    /// How many messages a `listen` loop hands to its receiver at once.
    pub listen_concurrency: usize,
    /// How long `end_listen` and `close` let in-flight handlers finish before their messages
    /// are abandoned (returned to the queue).
    pub drain_timeout: Duration,
    /// The most messages a bounded queue holds (ready and locked); `send` waits for room.
    pub max_size: Option<usize>,
    /// Push brokers: subscribe on `open` instead of on first use.
    pub autosubscribe: bool,
    /// How long `listen` waits before it gives back a message whose receiver failed (returned
    /// `Err` or panicked), on its first delivery; the wait doubles with every further delivery
    /// up to [`max_redelivery_delay`](Self::max_redelivery_delay). Zero gives it back at once.
    pub redelivery_delay: Duration,
    /// The longest wait before a failed message is given back.
    pub max_redelivery_delay: Duration,
    /// Remote backends: how long `open` may take to reach the server before it fails with
    /// [`ErrorKind::Connection`](crate::ErrorKind::Connection).
    pub connect_timeout: Duration,
}

/// The option keys [`QueueOptions`] reads, without the `options.` prefix.
pub const OPTION_KEYS: [&str; 11] = [
    "lock_timeout",
    "max_deliveries",
    "dead_letter_queue",
    "listen_interval",
    "listen_concurrency",
    "drain_timeout",
    "max_size",
    "autosubscribe",
    "redelivery_delay",
    "max_redelivery_delay",
    "connect_timeout",
];

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            lock_timeout: Duration::from_secs(30),
            max_deliveries: None,
            dead_letter_queue: None,
            listen_interval: Duration::from_millis(1000),
            listen_concurrency: 1,
            drain_timeout: Duration::from_secs(30),
            max_size: None,
            autosubscribe: false,
            redelivery_delay: Duration::from_millis(100),
            max_redelivery_delay: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl QueueOptions {
    /// Reads the options from `config`; missing keys keep their defaults.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the key whose value does not parse
    /// or is zero where zero makes no sense (`lock_timeout`, `listen_interval`, `max_deliveries`,
    /// `listen_concurrency`, `max_size`).
    pub fn from_config(config: &ConfigParams) -> Result<Self> {
        let mut o = QueueOptions::default();
        if let Some(v) = positive(config, "listen_interval", |c, k| c.get_as_duration_ms(k))? {
            o.listen_interval = v;
        }
        if let Some(v) = positive(config, "options.lock_timeout", |c, k| {
            c.get_as_duration_ms(k)
        })? {
            o.lock_timeout = v;
        }
        if let Some(v) = positive(config, "options.max_deliveries", |c, k| c.get_as_u64(k))? {
            o.max_deliveries = Some(u32::try_from(v).unwrap_or(u32::MAX));
        }
        if let Some(v) = config.get("options.dead_letter_queue") {
            if v.is_empty() {
                return Err(Error::config(
                    "options.dead_letter_queue",
                    "must not be empty",
                ));
            }
            o.dead_letter_queue = Some(v.to_owned());
        }
        if let Some(v) = positive(config, "options.listen_interval", |c, k| {
            c.get_as_duration_ms(k)
        })? {
            o.listen_interval = v;
        }
        if let Some(v) = positive(config, "options.listen_concurrency", |c, k| {
            c.get_as_usize(k)
        })? {
            o.listen_concurrency = v;
        }
        if let Some(v) = config.get_as_duration_ms("options.drain_timeout")? {
            o.drain_timeout = v;
        }
        if let Some(v) = positive(config, "options.max_size", |c, k| c.get_as_usize(k))? {
            o.max_size = Some(v);
        }
        if let Some(v) = config.get_as_bool("options.autosubscribe")? {
            o.autosubscribe = v;
        }
        if let Some(v) = config.get_as_duration_ms("options.redelivery_delay")? {
            o.redelivery_delay = v;
        }
        if let Some(v) = config.get_as_duration_ms("options.max_redelivery_delay")? {
            o.max_redelivery_delay = v;
        }
        if let Some(v) = positive(config, "options.connect_timeout", |c, k| {
            c.get_as_duration_ms(k)
        })? {
            o.connect_timeout = v;
        }
        Ok(o)
    }

    /// How long `listen` waits before giving back a message whose receiver failed on its
    /// `delivery_count`-th delivery: [`redelivery_delay`](Self::redelivery_delay) doubled for
    /// each delivery after the first, at most [`max_redelivery_delay`](Self::max_redelivery_delay),
    /// and at most half the lock timeout (so the lock does not expire first).
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_core::QueueOptions;
    ///
    /// let o = QueueOptions::default();
    /// assert_eq!(o.redelivery_delay_for(1), Duration::from_millis(100));
    /// assert_eq!(o.redelivery_delay_for(3), Duration::from_millis(400));
    /// assert_eq!(o.redelivery_delay_for(60), Duration::from_secs(10));
    /// ```
    pub fn redelivery_delay_for(&self, delivery_count: u32) -> Duration {
        let doublings = delivery_count.saturating_sub(1).min(31);
        self.redelivery_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_redelivery_delay)
            .min(self.lock_timeout / 2)
    }

    /// The dead-letter queue's name for a queue called `queue_name`.
    pub fn dead_letter_queue_name(&self, queue_name: &str) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{queue_name}.dlq"))
    }
}

fn positive<T: Default + PartialEq>(
    config: &ConfigParams,
    key: &str,
    get: impl FnOnce(&ConfigParams, &str) -> Result<Option<T>>,
) -> Result<Option<T>> {
    match get(config, key)? {
        Some(v) if v == T::default() => Err(Error::config(key, "must be greater than zero")),
        other => Ok(other),
    }
}

/// Resolves a queue's name the pip-services way: `name`, else `id`, else the name part of
/// `descriptor` (`group:type:kind:NAME:version`), else `default`; then a `queue` key overrides.
pub fn resolve_name(config: &ConfigParams, default: Option<&str>) -> Option<String> {
    let from_descriptor = || {
        config
            .get("descriptor")
            .and_then(|d| d.split(':').nth(3))
            .filter(|n| !n.is_empty() && *n != "*")
    };
    config
        .get("queue")
        .or_else(|| config.get("name"))
        .or_else(|| config.get("id"))
        .or_else(from_descriptor)
        .or(default)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            QueueOptions::from_config(&ConfigParams::new()).unwrap(),
            QueueOptions::default()
        );
        let c = ConfigParams::from_string(
            "listen_interval=50;options.lock_timeout=200;options.max_deliveries=3;options.max_size=10;options.listen_concurrency=4;options.autosubscribe=true;options.dead_letter_queue=dead",
        )
        .unwrap();
        let o = QueueOptions::from_config(&c).unwrap();
        assert_eq!(o.lock_timeout, Duration::from_millis(200));
        assert_eq!(o.listen_interval, Duration::from_millis(50));
        assert_eq!(o.max_deliveries, Some(3));
        assert_eq!(o.max_size, Some(10));
        assert_eq!(o.listen_concurrency, 4);
        assert!(o.autosubscribe);
        assert_eq!(o.dead_letter_queue_name("q"), "dead");
        assert_eq!(QueueOptions::default().dead_letter_queue_name("q"), "q.dlq");
    }

    #[test]
    fn options_form_of_listen_interval_wins() {
        let c = ConfigParams::from_string("listen_interval=50;options.listen_interval=70").unwrap();
        let o = QueueOptions::from_config(&c).unwrap();
        assert_eq!(o.listen_interval, Duration::from_millis(70));
    }

    #[test]
    fn zero_and_garbage_are_config_errors_naming_the_key() {
        for (key, value) in [
            ("options.lock_timeout", "0"),
            ("options.max_deliveries", "0"),
            ("options.listen_concurrency", "0"),
            ("options.max_size", "-1"),
            ("options.drain_timeout", "1s"),
            ("options.listen_interval", "0"),
            ("options.dead_letter_queue", ""),
        ] {
            let err =
                QueueOptions::from_config(&ConfigParams::from_tuples([(key, value)])).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn name_resolution_order() {
        let c = |s| ConfigParams::from_string(s).unwrap();
        assert_eq!(
            resolve_name(&c("name=n1;queue=qq"), None).as_deref(),
            Some("qq")
        );
        assert_eq!(resolve_name(&c("id=i"), Some("d")).as_deref(), Some("i"));
        assert_eq!(
            resolve_name(
                &c("descriptor=pip-services:message-queue:memory:dq:1.0"),
                None
            )
            .as_deref(),
            Some("dq")
        );
        assert_eq!(resolve_name(&c(""), Some("d")).as_deref(), Some("d"));
        assert_eq!(resolve_name(&c(""), None), None);
    }
}
