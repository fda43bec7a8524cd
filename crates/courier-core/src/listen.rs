//! The `listen` loop every backend shares, and [`ListenControl`] that stops it.
//!
//! A backend's [`MessageQueue::listen`] calls [`QueueBase::listen`](crate::QueueBase::listen),
//! which runs [`run_listener`] over the backend's own `receive`, `complete` and `abandon`.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::OptionFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use crate::{ErrorKind, MessageEnvelope, MessageQueue, MessageReceiver, QueueOptions, Result};

/// Stops and tracks the `listen` loops of one queue.
///
/// `end_listen` bumps an epoch: every loop started before it stops, a loop started after it
/// runs (so, unlike pip-services, `clear` can never resurrect a stopped loop: it does not touch
/// this).
#[derive(Debug, Default)]
pub struct ListenControl {
    epoch: AtomicU64,
    stop: Notify,
    active: AtomicUsize,
    idle: Notify,
}

impl ListenControl {
    /// A control with no loop running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every loop running now.
    pub fn end_listen(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.stop.notify_waiters();
    }

    /// How many loops are running.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no loop runs, at most `timeout`. Returns whether they all ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (it only waits).
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.active() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// What a loop started later must remember: this control and its epoch now. `begin_listen`
    /// takes one before it spawns, so that an `end_listen` before the task first runs stops it.
    pub fn ticket(&self) -> ListenTicket {
        ListenTicket {
            control: std::ptr::from_ref(self) as usize,
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    fn enter(&self) -> ListenGuard<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        let me = std::ptr::from_ref(self) as usize;
        let ticketed = TICKET
            .try_with(|t| (t.control == me).then_some(t.epoch))
            .ok()
            .flatten();
        ListenGuard {
            control: self,
            epoch: ticketed.unwrap_or_else(|| self.epoch.load(Ordering::Acquire)),
        }
    }
}

/// A listen loop's start, taken before its task runs (see [`ListenControl::ticket`]).
#[derive(Clone, Copy, Debug)]
pub struct ListenTicket {
    control: usize,
    epoch: u64,
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

struct ListenGuard<'a> {
    control: &'a ListenControl,
    epoch: u64,
}

impl ListenGuard<'_> {
    fn is_stopped(&self) -> bool {
        self.control.epoch.load(Ordering::Acquire) != self.epoch
    }

    async fn stopped(&self) {
        loop {
            let stop = self.control.stop.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            stop.await;
        }
    }
}

impl Drop for ListenGuard<'_> {
    fn drop(&mut self) {
        if self.control.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.control.idle.notify_waiters();
        }
    }
}

/// Runs a `listen` loop over `queue` until `control` stops it or the queue closes.
///
/// See [`MessageQueue::listen`] for the semantics. Backends normally call
/// [`QueueBase::listen`](crate::QueueBase::listen) instead.
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
    let guard = control.enter();
    if guard.is_stopped() {
        // Stopped between `begin_listen` and the first run of its task.
        return Ok(());
    }
    if !queue.is_open() {
        return Err(crate::Error::not_opened(queue.name()));
    }
    tracing::trace!(
        queue = queue.name(),
        correlation_id,
        "Started listening messages at [{}]",
        queue.name()
    );
    let concurrency = options.listen_concurrency.max(1);
    let mut in_flight = FuturesUnordered::new();
    // Messages taken and not yet handled to the end, by sequence number.
    let mut taken: BTreeMap<u64, MessageEnvelope> = BTreeMap::new();
    let mut seq = 0u64;
    // The receive in progress survives handlers finishing: it is only dropped on stop (receive
    // is cancel safe), so no backend sees a stream of cancelled receives.
    let interval = options.listen_interval.max(Duration::from_millis(1));
    let mut receiving = None;
    while !guard.is_stopped() {
        if receiving.is_none() && in_flight.len() < concurrency {
            receiving = Some(queue.receive(correlation_id, interval));
        }
        tokio::select! {
            biased;
            () = guard.stopped() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                taken.remove(&done);
            }
            Some(received) = OptionFuture::from(receiving.as_mut()), if receiving.is_some() => {
                receiving = None;
                match received {
                    Ok(Some(envelope)) => {
                        seq += 1;
                        taken.insert(seq, envelope.clone());
                        in_flight.push(handle(queue, receiver.as_ref(), envelope, seq));
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == ErrorKind::NotOpened => break,
                    Err(e) => {
                        tracing::error!(queue = queue.name(), correlation_id, error = %e, "Failed to receive the message");
                        let pause = interval.clamp(Duration::from_millis(10), Duration::from_secs(1));
                        tokio::select! {
                            () = guard.stopped() => break,
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

async fn handle(
    queue: &dyn MessageQueue,
    receiver: &dyn MessageReceiver,
    envelope: MessageEnvelope,
    seq: u64,
) -> u64 {
    let outcome = AssertUnwindSafe(receiver.receive_message(&envelope, queue))
        .catch_unwind()
        .await;
    let cid = envelope.correlation_id.as_deref();
    match outcome {
        Ok(Ok(())) => release(queue, &envelope, Settle::Complete).await,
        Ok(Err(e)) => {
            tracing::error!(queue = queue.name(), correlation_id = cid, error = %e, "Failed to process the message");
            release(queue, &envelope, Settle::Abandon).await;
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(queue = queue.name(), correlation_id = cid, panic = %what, "Failed to process the message: the receiver panicked");
            release(queue, &envelope, Settle::Abandon).await;
        }
    }
    seq
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
