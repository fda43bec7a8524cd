//! The memory queue's lock table: locked messages and their deadlines.
//!
//! Pure and synchronous: the queue holds it under its own mutex (apart from the ready list's,
//! so that senders and settlers do not contend) and does the waiting.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::MessageEnvelope;
use crate::backend::{LockToken, LockedMessage};

/// What a memory queue's lock token holds: the queue's id and the lock's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MemoryLock {
    pub(super) queue_id: u64,
    pub(super) token: u64,
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

/// Locks `envelope` (just taken from the ready list) as lock `token` until `expires`: returns
/// the envelope for the receiver and the entry for the lock table.
pub(super) fn lock(
    mut envelope: MessageEnvelope,
    queue_id: u64,
    token: u64,
    expires: Instant,
) -> (MessageEnvelope, LockedMessage) {
    let lock = LockToken::new(MemoryLock { queue_id, token });
    envelope.set_delivery_count(envelope.delivery_count().saturating_add(1));
    envelope.set_lock_token(Some(lock.clone()));
    let locked = LockedMessage {
        message: envelope.clone(),
        expiration_time: expires.into_std(),
        token: lock,
    };
    (envelope, locked)
}

#[derive(Debug, Default)]
pub(super) struct Locks {
    locked: HashMap<u64, LockedMessage, BuildHasherDefault<TokenHasher>>,
    /// Lock deadlines, earliest first. Entries of locks released or renewed since stay until
    /// they come to the top or the heap is compacted.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher")
    }
}

impl Locks {
    pub(super) fn len(&self) -> usize {
        self.locked.len()
    }

    #[cfg(test)]
    pub(super) fn is_locked(&self, token: u64) -> bool {
        self.locked.contains_key(&token)
    }

    pub(super) fn insert(&mut self, token: u64, locked: LockedMessage) {
        let expires = Instant::from_std(locked.expiration_time);
        self.locked.insert(token, locked);
        self.deadlines.push(Reverse((expires, token)));
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
            let current = self
                .locked
                .get(&token)
                .is_some_and(|l| Instant::from_std(l.expiration_time) == at);
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
        let Some(locked) = self.locked.get_mut(&token) else {
            return false;
        };
        let expires = crate::backend::deadline_after(now, lock_timeout);
        locked.expiration_time = expires.into_std();
        self.deadlines.push(Reverse((expires, token)));
        // The entry it replaces is stale now: renewing in a loop must not grow the heap.
        self.compact();
        true
    }

    /// Deletes the lock and hands back its message as stored again (dead-letter queue);
    /// `None` if the lock is unknown.
    pub(super) fn remove(&mut self, token: u64) -> Option<MessageEnvelope> {
        let locked = self.locked.remove(&token)?;
        locked.token.settle();
        self.compact();
        Some(without_delivery(locked.message))
    }

    /// Deletes some lock and hands back its message as stored again.
    pub(super) fn take_any(&mut self) -> Option<MessageEnvelope> {
        let token = *self.locked.keys().next()?;
        self.remove(token)
    }

    /// Releases the lock: its message is to be requeued, or is dead if it reached
    /// `max_deliveries`.
    pub(super) fn release(&mut self, token: u64, spent: impl Fn(u32) -> bool) -> Released {
        let Some(locked) = self.locked.remove(&token) else {
            return Released::Unknown;
        };
        locked.token.settle();
        let mut envelope = locked.message;
        if spent(envelope.delivery_count()) {
            return Released::Dead(without_delivery(envelope));
        }
        envelope.set_lock_token(None);
        Released::Requeue(envelope)
    }

    /// Drops stale deadline entries once they outnumber the live locks.
    fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.locked.len() + 64 {
            self.deadlines = self
                .locked
                .iter()
                .map(|(token, l)| Reverse((Instant::from_std(l.expiration_time), *token)))
                .collect();
        }
    }
}

/// The message as it is stored again (dead-letter queue): no lock, no deliveries.
fn without_delivery(mut envelope: MessageEnvelope) -> MessageEnvelope {
    envelope.set_lock_token(None);
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
        let (e, locked) = lock(e, 1, token, expires);
        locks.insert(token, locked);
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
            locks.remove(token).unwrap();
        }
        assert!(locks.deadlines.len() <= 65, "{}", locks.deadlines.len());
    }
}
