//! The memory queue's lock table: locked messages and their deadlines.
//!
//! Pure and synchronous: the queue holds it under its own mutex (apart from the ready list's,
//! so that senders and settlers do not contend) and does the waiting.
//!
//! # One record per lock
//!
//! Locking a message makes one allocation: the [`LockToken`] the receiver's envelope carries,
//! which is also the lock's record: it keeps what is needed to deliver the message again if
//! its lock is released (`Kept`): the payload and the broker delivery by reference, and the
//! id, type and correlation id packed inline (in one allocation of their own when they are
//! longer than 96 bytes together). The table holds the token and the deadline. `complete`
//! only deletes the entry; the envelope is rebuilt from the record only when the message comes
//! back (abandon, expiry, dead letter).
//!
//! # Costs
//!
//! Insert and remove are O(1): a hash map keyed by the sequential lock number, and a min-heap
//! of deadlines into which a receive pushes a deadline no earlier than any other (so it stays
//! at the bottom: O(1)). Deadlines of locks removed or renewed since stay in the heap until
//! they reach the top or outnumber the live locks, when the heap is rebuilt: renewing in a loop
//! does not grow it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::MessageEnvelope;
use crate::backend::LockToken;
use crate::envelope::DeliveryHandle;

/// What a memory queue's lock token holds: the queue's id, the lock's number, and the message
/// as it is to come back.
#[derive(Debug)]
pub(super) struct MemoryLock {
    pub(super) queue_id: u64,
    pub(super) token: u64,
    kept: Kept,
}

/// How many bytes of id, type and correlation id a lock record holds inline.
const INLINE: usize = 96;

/// A received message as the lock table keeps it (see the module docs).
#[derive(Debug)]
struct Kept {
    text: Text,
    id_len: usize,
    type_len: usize,
    correlation_len: Option<usize>,
    sent_time: Option<DateTime<Utc>>,
    message: Bytes,
    delivery_count: u32,
    delivery: Option<DeliveryHandle>,
}

/// The id, type and correlation id, one after the other.
#[derive(Debug)]
enum Text {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Text {
    fn new(parts: [&str; 3]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len <= INLINE {
            let mut bytes = [0u8; INLINE];
            let mut at = 0;
            for part in parts {
                bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
                at += part.len();
            }
            // `len <= INLINE` (96) fits a u8.
            Text::Inline {
                len: u8::try_from(len).unwrap_or(u8::MAX),
                bytes,
            }
        } else {
            Text::Heap(parts.concat().into_bytes().into_boxed_slice())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Heap(bytes) => bytes,
        }
    }
}

impl Kept {
    fn new(envelope: &MessageEnvelope) -> Self {
        let correlation = envelope.correlation_id.as_deref();
        Kept {
            text: Text::new([
                &envelope.message_id,
                &envelope.message_type,
                correlation.unwrap_or(""),
            ]),
            id_len: envelope.message_id.len(),
            type_len: envelope.message_type.len(),
            correlation_len: correlation.map(str::len),
            sent_time: envelope.sent_time,
            message: envelope.message.clone(),
            delivery_count: envelope.delivery_count(),
            delivery: envelope.delivery().cloned(),
        }
    }

    /// The message again, unlocked, with its delivery count and broker delivery.
    fn envelope(&self) -> MessageEnvelope {
        let text = self.text.as_bytes();
        // The parts were copied from `String`s at char boundaries: always UTF-8.
        let part = |from: usize, len: usize| {
            String::from_utf8_lossy(text.get(from..from + len).unwrap_or_default()).into_owned()
        };
        let correlation_id = self
            .correlation_len
            .map(|len| part(self.id_len + self.type_len, len));
        let id = part(0, self.id_len);
        let kept_empty_id = id.is_empty();
        let mut envelope = MessageEnvelope::with_id(
            id,
            None,
            &part(self.id_len, self.type_len),
            self.message.clone(),
        );
        if kept_empty_id {
            // `with_id` gives an empty id a new one; the message keeps its own.
            envelope.message_id.clear();
        }
        envelope.correlation_id = correlation_id;
        envelope.sent_time = self.sent_time;
        envelope.set_delivery_count(self.delivery_count);
        envelope.set_delivery(self.delivery.clone());
        envelope
    }
}

/// Where a released message goes.
#[derive(Debug)]
pub(super) enum Released {
    /// Back to the tail of the ready list.
    Requeue(MessageEnvelope),
    /// It reached `max_deliveries`: to the dead-letter queue.
    Dead(MessageEnvelope),
    /// The lock was unknown (released, expired or another queue's).
    Unknown,
}

/// Lock numbers are sequential: a multiplicative hash spreads them well and costs a multiply.
#[derive(Default)]
pub(super) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher")
    }
}

/// A lock, as the table holds it until `expires`: made by [`lock`], kept by
/// [`Locks::insert`]. Small, so that the table moves little; the record is in the token.
#[derive(Debug)]
pub(super) struct Held {
    lock: LockToken,
    expires: Instant,
}

/// Locks `envelope` (just taken from the ready list) as lock `token` of queue `queue_id` until
/// `expires`: counts the delivery, attaches the token and returns the table's record.
pub(super) fn lock(
    envelope: &mut MessageEnvelope,
    queue_id: u64,
    token: u64,
    expires: Instant,
) -> Held {
    envelope.set_delivery_count(envelope.delivery_count().saturating_add(1));
    let lock = LockToken::new(MemoryLock {
        queue_id,
        token,
        kept: Kept::new(envelope),
    });
    envelope.set_lock_token(Some(lock.clone()));
    Held { lock, expires }
}

impl Held {
    /// Settles the token (the receiver's `lock_token()` is `None` from now on) and rebuilds the
    /// message as it was delivered, unlocked (`None` only for a token that is not a memory
    /// lock, which the table never holds).
    fn release(self) -> Option<MessageEnvelope> {
        self.lock.settle();
        let record = self.lock.downcast_ref::<MemoryLock>()?;
        Some(record.kept.envelope())
    }
}

#[derive(Debug, Default)]
pub(super) struct Locks {
    locked: HashMap<u64, Held, BuildHasherDefault<TokenHasher>>,
    /// Lock deadlines, earliest first. Entries of locks released or renewed since stay until
    /// they come to the top or the heap is compacted.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Locks {
    pub(super) fn len(&self) -> usize {
        self.locked.len()
    }

    #[cfg(test)]
    pub(super) fn is_locked(&self, token: u64) -> bool {
        self.locked.contains_key(&token)
    }

    /// Holds the lock numbered `token`.
    pub(super) fn insert(&mut self, token: u64, held: Held) {
        self.deadlines.push(Reverse((held.expires, token)));
        self.locked.insert(token, held);
    }

    /// The earliest lock deadline (possibly of a lock already gone: waking early is harmless).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Releases every lock whose deadline passed, in deadline order: messages go to `requeue`,
    /// or to `dead` once they reached `max_deliveries`.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        spent: impl Fn(u32) -> bool,
        requeue: &mut Vec<MessageEnvelope>,
        dead: &mut Vec<MessageEnvelope>,
    ) {
        while let Some(&Reverse((at, token))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let current = self.locked.get(&token).is_some_and(|l| l.expires == at);
            if current {
                match self.release(token, &spent) {
                    Released::Requeue(envelope) => requeue.push(envelope),
                    Released::Dead(envelope) => dead.push(envelope),
                    Released::Unknown => {}
                }
            }
        }
        self.compact();
    }

    /// Moves the lock's deadline to `now + lock_timeout`; `false` if the lock is unknown.
    pub(super) fn renew(&mut self, token: u64, now: Instant, lock_timeout: Duration) -> bool {
        let Some(held) = self.locked.get_mut(&token) else {
            return false;
        };
        let expires = crate::backend::deadline_after(now, lock_timeout);
        held.expires = expires;
        self.deadlines.push(Reverse((expires, token)));
        // The entry it replaces is stale now: renewing in a loop must not grow the heap.
        self.compact();
        true
    }

    /// Deletes the lock (settling its token); `false` if it is unknown. The message is not
    /// rebuilt: what `complete` does.
    pub(super) fn delete(&mut self, token: u64) -> bool {
        let Some(held) = self.locked.remove(&token) else {
            return false;
        };
        held.lock.settle();
        self.compact();
        true
    }

    /// Deletes the lock and hands back its message as stored again (dead-letter queue, push
    /// layer); `None` if the lock is unknown.
    pub(super) fn remove(&mut self, token: u64) -> Option<MessageEnvelope> {
        let held = self.locked.remove(&token)?;
        self.compact();
        held.release().map(without_delivery)
    }

    /// Deletes some lock and hands back its message as stored again.
    pub(super) fn take_any(&mut self) -> Option<MessageEnvelope> {
        let token = *self.locked.keys().next()?;
        self.remove(token)
    }

    /// Releases the lock: its message is to be requeued, or is dead if it reached
    /// `max_deliveries`.
    pub(super) fn release(&mut self, token: u64, spent: impl Fn(u32) -> bool) -> Released {
        let Some(envelope) = self.locked.remove(&token).and_then(Held::release) else {
            return Released::Unknown;
        };
        if spent(envelope.delivery_count()) {
            return Released::Dead(without_delivery(envelope));
        }
        Released::Requeue(envelope)
    }

    /// Drops stale deadline entries once they outnumber the live locks.
    fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.locked.len() + 64 {
            self.deadlines = self
                .locked
                .iter()
                .map(|(token, held)| Reverse((held.expires, *token)))
                .collect();
        }
    }
}

/// The message as it is stored again (dead-letter queue): no deliveries.
fn without_delivery(mut envelope: MessageEnvelope) -> MessageEnvelope {
    envelope.set_delivery_count(0);
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> MessageEnvelope {
        MessageEnvelope::new(None, "t", text.to_owned())
    }

    fn spent(max: Option<u32>) -> impl Fn(u32) -> bool {
        move |count| max.is_some_and(|max| count >= max)
    }

    fn take(
        locks: &mut Locks,
        e: MessageEnvelope,
        token: u64,
        expires: Instant,
    ) -> MessageEnvelope {
        let mut e = e;
        let held = lock(&mut e, 1, token, expires);
        locks.insert(token, held);
        e
    }

    fn expire(
        locks: &mut Locks,
        now: Instant,
        max: Option<u32>,
    ) -> (Vec<MessageEnvelope>, Vec<MessageEnvelope>) {
        let (mut requeue, mut dead) = (Vec::new(), Vec::new());
        locks.expire(now, spent(max), &mut requeue, &mut dead);
        (requeue, dead)
    }

    #[test]
    fn expiry_releases_in_deadline_order_and_settles_tokens() {
        let mut locks = Locks::default();
        let t0 = Instant::now();
        let a = take(&mut locks, env("a"), 0, t0 + Duration::from_millis(200));
        let b = take(&mut locks, env("b"), 1, t0 + Duration::from_millis(100));
        assert_eq!(a.delivery_count(), 1);
        assert!(
            expire(&mut locks, t0 + Duration::from_millis(99), None)
                .0
                .is_empty()
        );
        let (requeue, _) = expire(&mut locks, t0 + Duration::from_millis(200), None);
        let order: Vec<_> = requeue
            .iter()
            .map(|e| e.message_as_string().unwrap())
            .collect();
        assert_eq!(order, ["b", "a"]);
        assert!(
            a.lock_token().is_none() && b.lock_token().is_none(),
            "expiry settles the tokens"
        );
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn renew_moves_the_deadline_and_stale_entries_are_ignored() {
        let mut locks = Locks::default();
        let t0 = Instant::now();
        take(&mut locks, env("a"), 7, t0 + Duration::from_millis(100));
        assert!(locks.renew(
            7,
            t0 + Duration::from_millis(50),
            Duration::from_millis(500)
        ));
        assert!(
            expire(&mut locks, t0 + Duration::from_millis(200), None)
                .0
                .is_empty()
        );
        assert!(locks.is_locked(7));
        assert_eq!(
            expire(&mut locks, t0 + Duration::from_millis(550), None)
                .0
                .len(),
            1
        );
        assert!(!locks.renew(7, t0, Duration::from_secs(1)));
    }

    #[test]
    fn max_deliveries_makes_a_release_dead() {
        let mut locks = Locks::default();
        let t0 = Instant::now();
        let first = take(&mut locks, env("a"), 0, t0);
        let Released::Requeue(again) = locks.release(0, spent(Some(2))) else {
            panic!("first release requeues");
        };
        assert!(first.lock_token().is_none());
        let second = take(&mut locks, again, 1, t0);
        assert_eq!(second.delivery_count(), 2);
        match locks.release(1, spent(Some(2))) {
            Released::Dead(e) => {
                assert_eq!(e.message_id, first.message_id);
                assert_eq!(e.delivery_count(), 0);
            }
            other => panic!("expected dead, got {other:?}"),
        }
        assert!(matches!(
            locks.release(1, spent(Some(2))),
            Released::Unknown
        ));
    }

    #[test]
    fn renewing_in_a_loop_does_not_grow_the_heap() {
        let mut locks = Locks::default();
        let t0 = Instant::now();
        take(&mut locks, env("a"), 1, t0 + Duration::from_secs(1));
        for i in 0..10_000u64 {
            assert!(locks.renew(1, t0 + Duration::from_millis(i), Duration::from_secs(30)));
        }
        assert!(locks.deadlines.len() <= 67, "{}", locks.deadlines.len());
        assert!(locks.is_locked(1));
    }

    #[test]
    fn deadlines_do_not_grow_without_bound() {
        let mut locks = Locks::default();
        let t0 = Instant::now();
        for token in 0..10_000 {
            take(&mut locks, env("x"), token, t0 + Duration::from_secs(30));
            assert!(locks.delete(token));
        }
        assert!(locks.deadlines.len() <= 65, "{}", locks.deadlines.len());
    }

    #[test]
    fn a_released_message_is_rebuilt_whole_inline_or_not() {
        let t0 = Instant::now();
        for (cid, kind) in [
            (None, "t".to_owned()),
            (Some(""), "order.created".to_owned()),
            (Some("corr-é"), "x".repeat(200)),
        ] {
            let mut locks = Locks::default();
            let mut sent = MessageEnvelope::new(cid, &kind, Bytes::from_static(b"\x00payload"));
            sent.sent_time = Some(chrono::Utc::now());
            let got = take(&mut locks, sent.clone(), 3, t0);
            let Released::Requeue(back) = locks.release(3, spent(None)) else {
                panic!("released");
            };
            assert!(got.lock_token().is_none(), "the release settled the token");
            assert_eq!(back.message_id, sent.message_id);
            assert_eq!(back.correlation_id, sent.correlation_id);
            assert_eq!(back.message_type, sent.message_type);
            assert_eq!(back.sent_time, sent.sent_time);
            assert_eq!(back.message, sent.message);
            assert_eq!(back.delivery_count(), 1);
            assert!(back.lock_token().is_none());
        }
    }
}
