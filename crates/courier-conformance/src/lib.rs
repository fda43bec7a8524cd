//! The behavioural suite every courier backend runs.
//!
//! A backend implements [`Harness`] (how to make a fresh queue, what [`Features`] it has) and
//! expands [`conformance_tests!`] once in its `tests/` directory. That gives two tests per
//! check, named after it: `current_thread::<check>` on a current-thread runtime (the default of
//! `#[tokio::test]` and of many small services, where a loop that never yields hangs
//! everything) and `multi_thread::<check>` on a two-worker runtime; plus a `stress` test per
//! flavour that runs the whole suite several times at once. Every test runs under a watchdog:
//! a check that hangs fails after [`WATCHDOG`] instead of stalling CI. Checks whose capability
//! or feature the backend lacks verify that the operation fails with `Unsupported` instead, or
//! return at once.
//!
//! ```text
//! // crates/courier-xyz/tests/conformance.rs
//! courier_conformance::conformance_tests!(XyzHarness::from_env().await, stress = 4);
//! ```
//!
//! The suite holds the nine tests of the pip-services `MessageQueueFixture`, the cases of
//! Watermill's universal Pub/Sub suite that apply to a queue, and what both lack: lock expiry,
//! lock renewal, `max_deliveries`, the dead-letter round trip, draining on close and on
//! `end_listen`, concurrent producers and consumers with exactly-once completion accounting,
//! cancel safety of `receive` inside `tokio::select!`, and receive loops that yield to the
//! runtime's other tasks.
//!
//! # Environment
//!
//! * `COURIER_STRESS=N` sets how many times the `stress` test runs the suite (over the value
//!   given to the macro).
//! * `COURIER_TEST_REQUIRE=all` (or a comma-separated list of backends) makes a harness that
//!   cannot reach its service fail instead of printing `SKIPPED` (see [`skip_or_fail`]).

use std::sync::Arc;

use async_trait::async_trait;
use courier_core::{MessageQueue, Result};
use futures::future::BoxFuture;

pub mod checks;
pub mod fault;
pub mod outages;
mod receiver;
mod support;
pub mod tls;

pub use receiver::TestMessageReceiver;
pub use support::{TestQueue, unique_name};

/// What a backend offers beyond the [`MessagingCapabilities`](courier_core::MessagingCapabilities).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// A single consumer receives messages in the order they were sent.
    pub fifo: bool,
    /// Messages sent while no one was receiving are kept (false for a push broker without
    /// storage that only buffers after subscribing).
    pub stores_unreceived: bool,
    /// Closing a queue and opening it again by name keeps its messages.
    pub survives_reopen: bool,
    /// `options.lock_timeout` is honoured: an unsettled message comes back after it.
    pub lock_expiry: bool,
    /// `options.max_deliveries` sends messages to the dead-letter queue.
    pub max_deliveries: bool,
}

impl Features {
    /// Every feature.
    pub fn all() -> Self {
        Features {
            fifo: true,
            stores_unreceived: true,
            survives_reopen: true,
            lock_expiry: true,
            max_deliveries: true,
        }
    }
}

/// How the suite gets queues from a backend.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend's name, for messages (`memory`, `sqlite`, ...).
    fn backend(&self) -> &str;

    /// What the backend offers.
    fn features(&self) -> Features;

    /// A closed queue called `name`, with `options` (keys without the `options.` prefix, such
    /// as `lock_timeout` in milliseconds). Creating the same name again must give the same
    /// stored queue, and `<name>.dlq` must be the dead-letter queue of `<name>`.
    ///
    /// # Errors
    ///
    /// Whatever creating the queue fails with; the check then fails.
    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>>;
}

/// A check of the suite, as a function pointer.
pub type Check<H> = for<'a> fn(&'a H) -> BoxFuture<'a, ()>;

/// Calls `$m!($($args)*; check, check, ...)` with every check's name: the one list of checks.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_checks {
    ($m:path { $($args:tt)* }) => {
        $m! { $($args)*;
            send_receive_message, receive_send_message, receive_complete_message,
            receive_abandon_message, send_peek_message, peek_no_message, move_to_dead_message,
            on_message, send_as_object,
            publish_subscribe_many, resend_on_error, continue_after_errors,
            publish_subscribe_in_order, queue_isolation, concurrent_close,
            continue_after_reopen, concurrent_producers_consumers,
            receive_zero_wait_returns_ready, receive_waits_then_returns_none,
            locked_message_is_invisible, lock_expiry_redelivers, renew_lock_extends,
            max_deliveries_dead_letters, dead_letter_round_trip, complete_and_abandon_are_idempotent,
            huge_durations_are_accepted,
            closed_queue_fails_not_opened, unsupported_operations_fail, binary_payload_round_trip,
            peek_batch_in_order, clear_removes_ready_messages,
            listen_completes_on_ok, listen_abandons_on_error_and_panic, listen_concurrency_is_bounded,
            end_listen_drains_without_loss, end_listen_before_the_loop_starts, close_drains_in_flight_handler,
            clear_does_not_restart_listener, receive_is_cancel_safe,
            failing_receiver_backs_off, failing_receiver_does_not_starve_the_runtime,
            receive_loops_yield_to_other_tasks,
            close_during_receive_uses_no_delivery, cancelled_receive_uses_no_delivery,
            batch_round_trip_in_order, receive_batch_partial_and_empty, batch_locks_hide_messages,
            complete_batch_mixes_expired_and_live_locks, large_batches_arrive_whole,
            cancelled_receive_batch_uses_no_delivery
        }
    };
}

macro_rules! __check_table {
    ($($h:ident)?; $($name:ident),* $(,)?) => {
        /// Every check of the suite, with its name.
        pub fn all_checks<H: Harness>() -> Vec<(&'static str, Check<H>)> {
            vec![$((stringify!($name), (|h| Box::pin(checks::$name(h))) as Check<H>)),*]
        }
    };
}

__with_checks!(__check_table {});

/// Runs every check `times` times, all at once (`COURIER_STRESS` overrides `times`), and
/// panics naming the checks that failed.
///
/// # Panics
///
/// If a check fails.
pub async fn run_stress<H: Harness>(harness: Arc<H>, times: usize) {
    let times = std::env::var("COURIER_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(times);
    let mut tasks = Vec::new();
    for round in 0..times {
        for (name, check) in all_checks::<H>() {
            let h = harness.clone();
            tasks.push((round, name, tokio::spawn(async move { check(&h).await })));
        }
    }
    let mut failed = Vec::new();
    for (round, name, task) in tasks {
        if task.await.is_err() {
            failed.push(format!("{name} (round {round})"));
        }
    }
    assert!(
        failed.is_empty(),
        "stress: failed checks: {}",
        failed.join(", ")
    );
}

/// For a harness whose service is unavailable: prints `SKIPPED <backend>: <reason>` and
/// returns `None`, unless `COURIER_TEST_REQUIRE` is `all` or lists `backend`, in which case
/// it panics so that CI cannot pass by skipping.
///
/// # Panics
///
/// When the backend is required.
pub fn skip_or_fail<T>(backend: &str, reason: &str) -> Option<T> {
    let required = std::env::var("COURIER_TEST_REQUIRE").unwrap_or_default();
    let required = required
        .split(',')
        .map(str::trim)
        .any(|r| r == "all" || r.eq_ignore_ascii_case(backend));
    assert!(
        !required,
        "{backend} is required by COURIER_TEST_REQUIRE but unavailable: {reason}"
    );
    println!("SKIPPED {backend}: {reason}");
    None
}

/// Runs `cleanup` to its end on a thread of its own, with a current-thread runtime, and waits
/// for it: for a harness's `Drop`, which may run inside a runtime (where `block_on` panics).
/// Does nothing if that runtime cannot be built; a panic in `cleanup` is swallowed (cleaning
/// up is best effort).
pub fn clean_up(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    })
    .join();
}

/// Whether `python3` can import `module` (an interop peer's client library); if it cannot,
/// [`skip_or_fail`] for `backend` and `false`.
///
/// # Panics
///
/// When `backend` is required (`COURIER_TEST_REQUIRE`) and the module is missing.
pub fn python_module_or_skip(module: &str, backend: &str) -> bool {
    let present = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let _: Option<()> = skip_or_fail(
            backend,
            &format!("the Python module `{module}` is not installed (bash .ci/run installs it)"),
        );
    }
    present
}

/// The runtime a check runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// `tokio::runtime::Builder::new_current_thread`: everything on the test's thread.
    CurrentThread,
    /// `tokio::runtime::Builder::new_multi_thread` with two workers.
    MultiThread,
}

/// How long one test of the suite may run before the watchdog fails it as hung.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs the future `make` builds on a fresh runtime of `flavor`, in a thread of its own, and
/// fails (panics) if it panics or does not finish within [`WATCHDOG`]: what each test of
/// [`conformance_tests!`] does.
///
/// # Panics
///
/// If the future panics (the panic is passed on), hangs, or the runtime cannot be built.
pub fn run_check<F, Fut>(flavor: Flavor, name: &str, make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut builder = match flavor {
                Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
                Flavor::MultiThread => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(2);
                    b
                }
            };
            let runtime = builder.enable_all().build().expect("a tokio runtime");
            runtime.block_on(make());
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            let _ = done.send(());
        })
        .expect("a test thread");
    match finished.recv_timeout(WATCHDOG) {
        Ok(()) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{name}: the test thread ended without finishing"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name} did not finish within {WATCHDOG:?} on a {flavor:?} runtime: it hangs")
        }
    }
}

/// Expands to two tests per check of the suite for the harness `$harness` (an expression of
/// type `Option<H>`, evaluated inside the test's runtime: `None` skips), in modules
/// `current_thread` and `multi_thread`, plus a `stress` test in each that runs the whole suite
/// `stress` times at once. Each runs under [`run_check`]'s watchdog.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!($harness, stress = 1);
    };
    ($harness:expr, stress = $times:expr) => {
        mod current_thread {
            #[allow(unused_imports)]
            use super::*;
            $crate::__with_checks!($crate::__conformance_test_fns {
                $harness,
                CurrentThread
            });
            $crate::__conformance_stress!($harness, CurrentThread, $times);
        }
        mod multi_thread {
            #[allow(unused_imports)]
            use super::*;
            $crate::__with_checks!($crate::__conformance_test_fns {
                $harness,
                MultiThread
            });
            $crate::__conformance_stress!($harness, MultiThread, $times);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_stress {
    ($harness:expr, $flavor:ident, $times:expr) => {
        #[test]
        fn stress() {
            $crate::run_check($crate::Flavor::$flavor, "stress", || async {
                if let Some(h) = $harness {
                    $crate::run_stress(::std::sync::Arc::new(h), $times).await;
                }
            });
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($harness:expr, $flavor:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run_check($crate::Flavor::$flavor, stringify!($name), || async {
                    if let Some(h) = $harness {
                        $crate::checks::$name(&h).await;
                    }
                });
            }
        )*
    };
}
