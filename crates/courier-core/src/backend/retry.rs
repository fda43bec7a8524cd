//! [`Backoff`]: how long to wait before trying again, for reconnects and failed receives.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

/// A bounded exponential backoff with jitter: the delays between attempts to reach a backend
/// that went away (a broken connection, a database that restarts).
///
/// Each [`next_delay`](Self::next_delay) doubles the previous one, with random jitter, up to
/// the maximum; [`reset`](Self::reset) starts over after a success. It never runs out: a
/// backend keeps trying until it is closed.
///
/// ```
/// use std::time::Duration;
/// use courier_core::backend::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
/// for _ in 0..20 {
///     assert!(backoff.next_delay() <= Duration::from_secs(10)); // the cap, plus jitter
/// }
/// ```
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`, each with up to one more delay of jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The backoff between reconnect attempts: 100 ms doubling up to 10 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts over: the next delay is the shortest again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(80);
        let mut b = Backoff::new(min, max);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(
            delays.iter().all(|d| *d >= min && *d <= max * 2),
            "{delays:?}"
        );
        assert!(delays[7] >= max, "did not reach the cap: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= min * 2);
    }
}
