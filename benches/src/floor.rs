//! The contract's floor: what any `MessageQueue` must do per message, on top of the raw channel.
//!
//! The memory bench compares courier with a raw Tokio channel. This model shows how close any
//! implementation of the contract can get to that channel. It is the raw channel itself, plus
//! only the steps that the contract requires of every queue for each message:
//!
//! * **Calls through `dyn`.** `send`, `receive` and `complete` are called through a trait
//!   object, whose `async` methods return boxed futures (`async_trait`, as `MessageQueue` does).
//! * **A send time.** `send` stamps `sent_time`.
//! * **A lock.** `receive` locks the message until a deadline (a clock read). The queue keeps
//!   a record of the message, to deliver it again if the lock expires or is abandoned (the
//!   receiver may drop its copy). The record is one allocation holding the id, type and
//!   correlation id inline, the send time and a reference to the payload. It is shared with the
//!   receiver's envelope as its lock token, in a table indexed by lock number (no hashing).
//! * **A settle.** `complete` finds the lock from the envelope's token and deletes it.
//!
//! The batched model (`send_batch`, `receive_batch`, `complete_batch`) shares the calls, the
//! clock reads and the table passes among a batch's messages; each message still gets its own
//! record, as each can be settled on its own.
//!
//! Everything else a real queue needs is left out, so that the model is a floor, not an
//! estimate:
//! * FIFO order beyond one consumer, `peek`, `abandon`, `clear` and counts: the model uses the
//!   raw channel, which supports none of them;
//! * the deadline order that expiry needs;
//! * open checks, logs and metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use courier::MessageEnvelope;
use courier::backend::LockToken;
use tokio::sync::mpsc;

/// What the model keeps of a locked message: enough to deliver it again.
#[allow(
    dead_code,
    reason = "kept to deliver the message again; the bench's messages are all completed"
)]
struct Record {
    number: u64,
    /// The id, type and correlation id, one after the other.
    text: [u8; 96],
    lengths: [u8; 3],
    sent_time: Option<DateTime<Utc>>,
    message: Bytes,
}

impl Record {
    fn new(number: u64, envelope: &MessageEnvelope) -> Self {
        let parts = [
            envelope.message_id.as_str(),
            envelope.message_type.as_str(),
            envelope.correlation_id.as_deref().unwrap_or_default(),
        ];
        let (mut text, mut lengths, mut at) = ([0u8; 96], [0u8; 3], 0);
        for (part, length) in parts.iter().zip(&mut lengths) {
            // The bench's parts are short; a real queue spills longer ones to the heap.
            let part = &part.as_bytes()[..part.len().min(32)];
            text[at..at + part.len()].copy_from_slice(part);
            at += part.len();
            *length = part.len() as u8;
        }
        Record {
            number,
            text,
            lengths,
            sent_time: envelope.sent_time,
            message: envelope.message.clone(),
        }
    }
}

/// The calls of the contract that one message, or one batch, goes through.
#[async_trait]
trait Floor: Send + Sync {
    async fn send(&self, envelope: MessageEnvelope);
    async fn receive(&self) -> Option<MessageEnvelope>;
    async fn complete(&self, message: &MessageEnvelope);
    async fn send_batch(&self, envelopes: Vec<MessageEnvelope>);
    async fn receive_batch(&self, max: usize) -> Vec<MessageEnvelope>;
    async fn complete_batch(&self, messages: &[MessageEnvelope]);
}

/// One producer's and one consumer's model queue.
struct FloorQueue {
    tx: mpsc::UnboundedSender<MessageEnvelope>,
    /// Locked only by the one consumer: uncontended.
    rx: Mutex<mpsc::UnboundedReceiver<MessageEnvelope>>,
    next_lock: AtomicU64,
    locks: Mutex<Table>,
}

/// The held locks, indexed by lock number: slot `i` holds lock `first + i`. Locks are numbered
/// in order, so inserts append and deletes mostly empty the front: O(1), no hashing.
#[derive(Default)]
struct Table {
    first: u64,
    slots: VecDeque<Option<(LockToken, Instant)>>,
    held: usize,
}

impl Table {
    fn insert(&mut self, number: u64, lock: (LockToken, Instant)) {
        if self.slots.is_empty() {
            self.first = number;
        }
        // Numbers come in order from one counter; a gap only leaves empty slots.
        while self.first + (self.slots.len() as u64) < number {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(lock));
        self.held += 1;
    }

    fn remove(&mut self, number: u64) -> Option<(LockToken, Instant)> {
        let index = usize::try_from(number.checked_sub(self.first)?).ok()?;
        let removed = self.slots.get_mut(index)?.take()?;
        self.held -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first += 1;
        }
        Some(removed)
    }
}

impl FloorQueue {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        FloorQueue {
            tx,
            rx: Mutex::new(rx),
            next_lock: AtomicU64::new(0),
            locks: Mutex::new(Table::default()),
        }
    }

    /// Locks `envelopes` until one deadline: a record each, one pass over the table.
    fn lock(&self, envelopes: &mut [MessageEnvelope]) {
        let count = envelopes.len() as u64;
        let first = self.next_lock.fetch_add(count, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        let tokens: Vec<_> = (first..)
            .zip(envelopes.iter_mut())
            .map(|(number, envelope)| {
                let token = LockToken::new(Record::new(number, envelope));
                envelope.set_lock_token(Some(token.clone()));
                (number, token)
            })
            .collect();
        if let Ok(mut locks) = self.locks.lock() {
            for (number, token) in tokens {
                locks.insert(number, (token, deadline));
            }
        }
    }

    /// Deletes the lock of each of `messages` that holds one of this queue's, in one pass.
    fn unlock(&self, messages: &[MessageEnvelope]) {
        let Ok(mut locks) = self.locks.lock() else {
            return;
        };
        for message in messages {
            let number = message
                .lock_token()
                .and_then(|token| token.downcast_ref::<Record>())
                .map(|record| record.number);
            if let Some((token, _)) = number.and_then(|number| locks.remove(number)) {
                token.settle();
            }
        }
    }
}

#[async_trait]
impl Floor for FloorQueue {
    async fn send(&self, mut envelope: MessageEnvelope) {
        envelope.sent_time = Some(Utc::now());
        // The bench's consumer outlives every send.
        let _ = self.tx.send(envelope);
    }

    async fn receive(&self) -> Option<MessageEnvelope> {
        let mut envelope = std::future::poll_fn(|cx| match self.rx.lock() {
            Ok(mut rx) => rx.poll_recv(cx),
            Err(_) => std::task::Poll::Ready(None),
        })
        .await?;
        self.lock(std::slice::from_mut(&mut envelope));
        Some(envelope)
    }

    async fn complete(&self, message: &MessageEnvelope) {
        self.unlock(std::slice::from_ref(message));
    }

    async fn send_batch(&self, mut envelopes: Vec<MessageEnvelope>) {
        let now = Some(Utc::now());
        for mut envelope in envelopes.drain(..) {
            envelope.sent_time = now;
            let _ = self.tx.send(envelope);
        }
    }

    async fn receive_batch(&self, max: usize) -> Vec<MessageEnvelope> {
        let mut taken = Vec::with_capacity(max);
        std::future::poll_fn(|cx| match self.rx.lock() {
            Ok(mut rx) => rx.poll_recv_many(cx, &mut taken, max).map(drop),
            Err(_) => std::task::Poll::Ready(()),
        })
        .await;
        self.lock(&mut taken);
        taken
    }

    async fn complete_batch(&self, messages: &[MessageEnvelope]) {
        self.unlock(messages);
    }
}

/// `pairs` model queues behind trait objects.
fn floor_queues(pairs: usize) -> impl Iterator<Item = Arc<dyn Floor>> {
    (0..pairs).map(|_| Arc::new(FloorQueue::new()) as Arc<dyn Floor>)
}

/// `messages` envelopes through each of `pairs` model queues (see the module docs), through a
/// trait object: send, receive, complete. Returns the elapsed time.
pub async fn contract_floor(pairs: usize, messages: u64, payload: &Bytes) -> Duration {
    super::run_pairs(floor_queues(pairs).map(|q| {
        let (producer, consumer, payload) = (q.clone(), q, payload.clone());
        let producer = async move {
            for _ in 0..messages {
                producer.send(super::envelope(&payload)).await;
            }
        };
        let consumer = async move {
            for _ in 0..messages {
                let m = consumer.receive().await.expect("a message");
                consumer.complete(&m).await;
            }
        };
        (producer, consumer)
    }))
    .await
}

/// As [`contract_floor`], in batches of `batch`. Returns the elapsed time.
pub async fn contract_floor_batched(
    pairs: usize,
    messages: u64,
    payload: &Bytes,
    batch: usize,
) -> Duration {
    super::run_pairs(floor_queues(pairs).map(|q| {
        let (producer, consumer, payload) = (q.clone(), q, payload.clone());
        let producer = async move {
            for n in super::batch_sizes(messages, batch) {
                producer
                    .send_batch((0..n).map(|_| super::envelope(&payload)).collect())
                    .await;
            }
        };
        let consumer = async move {
            let mut left = messages as usize;
            while left > 0 {
                let got = consumer.receive_batch(batch.min(left)).await;
                assert!(!got.is_empty(), "a batch arrived");
                consumer.complete_batch(&got).await;
                left -= got.len();
            }
        };
        (producer, consumer)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_count(queue: &FloorQueue) -> usize {
        queue
            .locks
            .lock()
            .map(|locks| locks.held)
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn the_table_deletes_in_any_order() {
        let lock = || (LockToken::new(()), Instant::now());
        let mut table = Table::default();
        for number in 10..14 {
            table.insert(number, lock());
        }
        assert!(table.remove(12).is_some());
        assert!(table.remove(12).is_none(), "deleted once");
        assert!(table.remove(9).is_none() && table.remove(14).is_none());
        assert!(table.remove(10).is_some() && table.remove(11).is_some());
        assert_eq!((table.held, table.first, table.slots.len()), (1, 13, 1));
        assert!(table.remove(13).is_some());
        assert_eq!(table.held, 0);
        table.insert(20, lock());
        assert!(table.remove(20).is_some());
    }

    #[tokio::test]
    async fn the_model_locks_each_message_and_settles_it() {
        let queue = FloorQueue::new();
        let payload = crate::payload(64);
        for _ in 0..3 {
            queue.send(crate::envelope(&payload)).await;
        }
        for _ in 0..3 {
            let m = queue.receive().await.expect("a message");
            assert!(m.sent_time.is_some());
            let record = m.lock_token().and_then(|t| t.downcast_ref::<Record>());
            let record = record.expect("a lock record");
            let id_len = usize::from(record.lengths[0]);
            assert_eq!(&record.text[..id_len], m.message_id.as_bytes());
            assert_eq!(record.message, m.message);
            assert_eq!(record.sent_time, m.sent_time);
            assert_eq!(lock_count(&queue), 1);
            queue.complete(&m).await;
            assert!(m.lock_token().is_none(), "the lock is settled");
        }
        assert_eq!(lock_count(&queue), 0);
    }

    #[tokio::test]
    async fn the_batched_model_locks_and_settles_whole_batches() {
        let queue = FloorQueue::new();
        let payload = crate::payload(64);
        let sent: Vec<_> = (0..5).map(|_| crate::envelope(&payload)).collect();
        let ids: Vec<_> = sent.iter().map(|m| m.message_id.clone()).collect();
        queue.send_batch(sent).await;
        let got = queue.receive_batch(4).await;
        assert_eq!(got.len(), 4);
        assert_eq!(lock_count(&queue), 4);
        let got_ids: Vec<_> = got.iter().map(|m| m.message_id.clone()).collect();
        assert_eq!(got_ids, ids[..4]);
        queue.complete_batch(&got).await;
        assert!(got.iter().all(|m| m.lock_token().is_none()));
        assert_eq!(lock_count(&queue), 0);
        assert_eq!(queue.receive_batch(4).await.len(), 1);
    }
}
