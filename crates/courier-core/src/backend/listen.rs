//! The one `listen` loop every backend runs, and [`ListenControl`], which stops it.
//!
//! A backend's [`MessageQueue::listen`] calls [`QueueBase::listen`](super::QueueBase::listen),
//! which runs [`run_listener`] over the backend's own `receive`, `complete` and `abandon`. The
//! loop is the same whether the backend pulls (SQL) or is pushed to (the push layer feeds
//! `receive` from its buffer), so every backend has the same completion, concurrency, backoff
//! and drain rules.
//!
//! # Stopping
//!
//! Each [`ListenControl`] holds a [`CancellationToken`] for the loops running now and a
//! [`TaskTracker`] that counts them. [`end_listen`](ListenControl::end_listen) cancels the
//! token and puts a fresh one in its place: loops started before stop, a loop started after
//! runs. `clear` never touches it, so it can never resurrect a stopped loop.
//!
//! # Never starving the runtime
//!
//! Every turn of the loop takes part in Tokio's cooperative budget
//! ([`tokio::task::consume_budget`]), so a queue whose messages are always ready and a receiver
//! that never waits still let other tasks run, also on a current-thread runtime. A receiver
//! that fails makes its message wait [`QueueOptions::redelivery_delay`] (doubling with every
//! delivery, up to [`QueueOptions::max_redelivery_delay`]) before it is given back.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::{Either, OptionFuture};
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::retry::Backoff;
use crate::{
    Error, ErrorKind, MessageEnvelope, MessageQueue, MessageReceiver, QueueOptions, Result,
};

static NEXT_CONTROL: AtomicU64 = AtomicU64::new(1);

/// Stops and tracks the `listen` loops of one queue.
#[derive(Debug)]
pub struct ListenControl {
    id: u64,
    /// Cancelled by `end_listen`, then replaced: the stop signal of the loops running now.
    current: Mutex<CancellationToken>,
    /// Counts the running loops, so that `close` can wait for them to drain.
    running: TaskTracker,
}

impl Default for ListenControl {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenControl {
    /// A control with no loop running.
    pub fn new() -> Self {
        let running = TaskTracker::new();
        // Closed from the start, for good: `wait` then returns whenever no loop runs, and
        // concurrent waiters never reopen it under each other.
        running.close();
        ListenControl {
            id: NEXT_CONTROL.fetch_add(1, Ordering::Relaxed),
            current: Mutex::new(CancellationToken::new()),
            running,
        }
    }

    /// Stops every loop running now (they drain and return); a loop started later runs.
    pub fn end_listen(&self) {
        let stopped = std::mem::take(&mut *self.current.lock());
        stopped.cancel();
    }

    /// How many loops are running.
    pub fn active(&self) -> usize {
        self.running.len()
    }

    /// Waits until no loop runs, at most `timeout`. Returns whether they all ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (it only waits).
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.running.wait())
            .await
            .is_ok()
    }

    /// The stop signal of a loop that starts later, taken now: `begin_listen` takes one
    /// before it spawns, so that an `end_listen` before the task first runs stops it.
    pub fn ticket(&self) -> ListenTicket {
        ListenTicket {
            control: self.id,
            stop: self.current.lock().clone(),
        }
    }

    /// A loop starts: its stop signal (the ticket's, inside [`ListenTicket::scope`]) and its
    /// place among the running loops.
    fn enter(&self) -> (CancellationToken, TaskTrackerToken) {
        let running = self.running.token();
        let ticketed = TICKET
            .try_with(|t| (t.control == self.id).then(|| t.stop.clone()))
            .ok()
            .flatten();
        let stop = ticketed.unwrap_or_else(|| self.current.lock().clone());
        (stop, running)
    }
}

/// A listen loop's stop signal, taken before its task runs (see [`ListenControl::ticket`]).
#[derive(Clone, Debug)]
pub struct ListenTicket {
    control: u64,
    stop: CancellationToken,
}

impl ListenTicket {
    /// Runs `future` (a `listen` call) as a loop that started when the ticket was taken.
    ///
    /// # Cancel safety
    ///
    /// As `future`.
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        TICKET.scope(self, future).await
    }
}

tokio::task_local! {
    static TICKET: ListenTicket;
}

/// Runs a `listen` loop over `queue` until `control` stops it or the queue closes.
///
/// See [`MessageQueue::listen`] for the semantics. Backends normally call
/// [`QueueBase::listen`](super::QueueBase::listen) instead.
///
/// # Errors
///
/// [`ErrorKind::NotOpened`] if the queue is not open at the start.
///
/// # Cancel safety
///
/// As [`MessageQueue::listen`].
pub async fn run_listener(
    queue: &dyn MessageQueue,
    correlation_id: Option<&str>,
    receiver: Arc<dyn MessageReceiver>,
    options: &QueueOptions,
    control: &ListenControl,
) -> Result<()> {
    let (stop, _running) = control.enter();
    if stop.is_cancelled() {
        // Stopped between `begin_listen` and the first run of its task.
        return Ok(());
    }
    if !queue.is_open() {
        return Err(Error::not_opened(queue.name()));
    }
    tracing::trace!(
        queue = queue.name(),
        correlation_id,
        "Started listening messages at [{}]",
        queue.name()
    );
    let concurrency = options.listen_concurrency.max(1);
    let mut in_flight = FuturesUnordered::new();
    // Messages taken and not yet handled to the end, by sequence number (given back in that
    // order on a drain timeout): shared with their handlers, so that the receiver is handed the envelope as received, without a copy.
    let mut taken: BTreeMap<u64, Arc<MessageEnvelope>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut receive_errors = Backoff::reconnect();
    // The receive in progress survives handlers finishing: it is only dropped on stop (receive
    // is cancel safe), so no backend sees a stream of cancelled receives.
    let interval = options.listen_interval.max(Duration::from_millis(1));
    let mut receiving = None;
    loop {
        // Take part in the runtime's budget: a loop whose futures are always ready must still
        // let other tasks run (on a current-thread runtime, nothing else would).
        tokio::task::consume_budget().await;
        if stop.is_cancelled() {
            break;
        }
        if receiving.is_none() && in_flight.len() < concurrency {
            // With room for more than one message, one batch fills it.
            let room = concurrency - in_flight.len();
            receiving = Some(if room > 1 {
                Either::Left(
                    queue
                        .receive_batch(correlation_id, room, interval)
                        .map(|r| r.map(Taken::Many)),
                )
            } else {
                Either::Right(
                    queue
                        .receive(correlation_id, interval)
                        .map(|r| r.map(Taken::One)),
                )
            });
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                taken.remove(&done);
            }
            Some(received) = OptionFuture::from(receiving.as_mut()), if receiving.is_some() => {
                receiving = None;
                match received {
                    Ok(messages) => {
                        receive_errors.reset();
                        for envelope in messages.messages() {
                            seq += 1;
                            let envelope = Arc::new(envelope);
                            taken.insert(seq, envelope.clone());
                            in_flight.push(handle(queue, receiver.as_ref(), envelope, seq, options, &stop));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::NotOpened => break,
                    Err(e) => {
                        let pause = receive_errors.next_delay();
                        tracing::error!(queue = queue.name(), correlation_id, error = %e, retry_in = ?pause, "Failed to receive the message");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
    }
    drop(receiving);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while let Some(done) = in_flight.next().await {
            taken.remove(&done);
        }
    })
    .await
    .is_ok();
    drop(in_flight);
    if !drained {
        tracing::warn!(
            queue = queue.name(),
            correlation_id,
            count = taken.len(),
            "Drain timeout: abandoning messages still being handled"
        );
        for envelope in taken.values() {
            release(queue, envelope, Settle::Abandon).await;
        }
    }
    tracing::trace!(
        queue = queue.name(),
        correlation_id,
        "Stopped listening messages at [{}]",
        queue.name()
    );
    Ok(())
}

/// Hands one message to the receiver and settles it: completed on `Ok`; on `Err` or a panic,
/// given back after the redelivery delay (at once when the loop stops).
async fn handle(
    queue: &dyn MessageQueue,
    receiver: &dyn MessageReceiver,
    envelope: Arc<MessageEnvelope>,
    seq: u64,
    options: &QueueOptions,
    stop: &CancellationToken,
) -> u64 {
    let outcome = AssertUnwindSafe(receiver.receive_message(&envelope, queue))
        .catch_unwind()
        .await;
    let cid = envelope.correlation_id.as_deref();
    let failure = match outcome {
        Ok(Ok(())) => {
            release(queue, &envelope, Settle::Complete).await;
            return seq;
        }
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the receiver panicked: {what}")
        }
    };
    let delay = options.redelivery_delay_for(envelope.delivery_count());
    tracing::error!(queue = queue.name(), correlation_id = cid, error = %failure, redelivery_in = ?delay, "Failed to process the message");
    if envelope.lock_token().is_some() && queue.capabilities().can_abandon() && !delay.is_zero() {
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    release(queue, &envelope, Settle::Abandon).await;
    seq
}

/// What one receive of the loop took: `receive`'s message, or `receive_batch`'s.
enum Taken {
    One(Option<MessageEnvelope>),
    Many(Vec<MessageEnvelope>),
}

impl Taken {
    fn messages(self) -> impl Iterator<Item = MessageEnvelope> {
        let (one, many) = match self {
            Taken::One(one) => (one, Vec::new()),
            Taken::Many(many) => (None, many),
        };
        one.into_iter().chain(many)
    }
}

#[derive(Clone, Copy, Debug)]
enum Settle {
    Complete,
    Abandon,
}

/// Completes or abandons `envelope` unless its holder already settled it.
async fn release(queue: &dyn MessageQueue, envelope: &MessageEnvelope, how: Settle) {
    if envelope.lock_token().is_none() {
        return;
    }
    let result = match how {
        Settle::Complete => queue.complete(envelope).await,
        Settle::Abandon if queue.capabilities().can_abandon() => queue.abandon(envelope).await,
        Settle::Abandon => Ok(()),
    };
    if let Err(e) = result {
        tracing::error!(queue = queue.name(), correlation_id = envelope.correlation_id.as_deref(), error = %e, "Failed to {how:?} the message");
    }
}
