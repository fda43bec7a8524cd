//! The memory queue's state machine: ready messages, locks and their deadlines.
//!
//! Pure and synchronous: the queue around it holds it under a mutex and does the waiting.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::{LockToken, LockedMessage, MessageEnvelope};

/// What a memory queue's lock token holds: the queue's id and the lock's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MemoryLock {
    pub(super) queue_id: u64,
    pub(super) token: u64,
}

/// Where a released message went.
#[derive(Debug)]
pub(super) enum Released {
    /// Back to the tail of the ready list.
    Requeued,
    /// It reached `max_deliveries`: for the dead-letter queue.
    Dead(MessageEnvelope),
    /// The lock was unknown (released, expired or another queue's).
    Unknown,
}

#[derive(Debug, Default)]
pub(super) struct State {
    ready: VecDeque<MessageEnvelope>,
    locked: HashMap<u64, LockedMessage>,
    /// Lock deadlines, earliest first. Entries of locks released or renewed since stay until
    /// they come to the top or the heap is compacted.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_token: u64,
}

impl State {
    /// Ready plus locked messages: what `max_size` bounds.
    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.locked.len()
    }

    pub(super) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(super) fn locked_len(&self) -> usize {
        self.locked.len()
    }

    pub(super) fn is_locked(&self, token: u64) -> bool {
        self.locked.contains_key(&token)
    }

    pub(super) fn push(&mut self, envelope: MessageEnvelope) {
        self.ready.push_back(envelope);
    }

    pub(super) fn peek(&self, count: usize) -> impl Iterator<Item = &MessageEnvelope> {
        self.ready.iter().take(count)
    }

    /// Takes the head and locks it until `now + lock_timeout`.
    pub(super) fn take(
        &mut self,
        queue_id: u64,
        now: Instant,
        lock_timeout: Duration,
    ) -> Option<MessageEnvelope> {
        let mut envelope = self.ready.pop_front()?;
        let token = self.next_token;
        self.next_token += 1;
        let lock = LockToken::new(MemoryLock { queue_id, token });
        let expires = now + lock_timeout;
        envelope.set_delivery_count(envelope.delivery_count().saturating_add(1));
        envelope.set_lock_token(Some(lock.clone()));
        self.locked.insert(
            token,
            LockedMessage {
                message: envelope.clone(),
                expiration_time: expires.into_std(),
                token: lock,
            },
        );
        self.deadlines.push(Reverse((expires, token)));
        Some(envelope)
    }

    /// The earliest lock deadline (possibly of a lock already gone: waking early is harmless).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Releases every lock whose deadline passed. Messages that reached `max_deliveries` are
    /// pushed to `dead`; returns how many went back to the ready list.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        max_deliveries: Option<u32>,
        dead: &mut Vec<MessageEnvelope>,
    ) -> usize {
        let mut requeued = 0;
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
                match self.release(token, max_deliveries) {
                    Released::Requeued => requeued += 1,
                    Released::Dead(envelope) => dead.push(envelope),
                    Released::Unknown => {}
                }
            }
        }
        self.compact();
        requeued
    }

    /// Moves the lock's deadline to `now + lock_timeout`; `false` if the lock is unknown.
    pub(super) fn renew(&mut self, token: u64, now: Instant, lock_timeout: Duration) -> bool {
        let Some(locked) = self.locked.get_mut(&token) else {
            return false;
        };
        let expires = now + lock_timeout;
        locked.expiration_time = expires.into_std();
        self.deadlines.push(Reverse((expires, token)));
        true
    }

    /// Deletes the locked message; `None` if the lock is unknown.
    pub(super) fn remove(&mut self, token: u64) -> Option<MessageEnvelope> {
        let locked = self.locked.remove(&token)?;
        locked.token.settle();
        self.compact();
        Some(without_delivery(locked.message))
    }

    /// Puts the locked message back at the tail, or hands it back as dead if it reached
    /// `max_deliveries`.
    pub(super) fn release(&mut self, token: u64, max_deliveries: Option<u32>) -> Released {
        let Some(locked) = self.locked.remove(&token) else {
            return Released::Unknown;
        };
        locked.token.settle();
        let envelope = locked.message;
        if max_deliveries.is_some_and(|max| envelope.delivery_count() >= max) {
            return Released::Dead(without_delivery(envelope));
        }
        let mut envelope = envelope;
        envelope.set_lock_token(None);
        self.ready.push_back(envelope);
        Released::Requeued
    }

    /// Removes every ready message; returns how many.
    pub(super) fn clear(&mut self) -> usize {
        let n = self.ready.len();
        self.ready.clear();
        n
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

    fn token_of(e: &MessageEnvelope) -> u64 {
        e.lock_token().unwrap().downcast_ref::<MemoryLock>().unwrap().token
    }

    #[test]
    fn take_locks_and_expire_requeues_at_tail() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.push(env("a"));
        s.push(env("b"));
        let a = s.take(1, t0, Duration::from_millis(100)).unwrap();
        assert_eq!(a.delivery_count(), 1);
        assert_eq!((s.ready_len(), s.locked_len()), (1, 1));
        let mut dead = Vec::new();
        assert_eq!(s.expire(t0 + Duration::from_millis(99), None, &mut dead), 0);
        assert_eq!(s.expire(t0 + Duration::from_millis(100), None, &mut dead), 1);
        assert!(a.lock_token().is_none(), "expiry settles the old token");
        let order: Vec<_> = s.peek(10).map(|e| e.message_as_string().unwrap()).collect();
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn renew_moves_the_deadline_and_stale_entries_are_ignored() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.push(env("a"));
        let a = s.take(1, t0, Duration::from_millis(100)).unwrap();
        assert!(s.renew(token_of(&a), t0 + Duration::from_millis(50), Duration::from_millis(500)));
        let mut dead = Vec::new();
        assert_eq!(s.expire(t0 + Duration::from_millis(200), None, &mut dead), 0);
        assert_eq!(s.locked_len(), 1);
        assert_eq!(s.expire(t0 + Duration::from_millis(550), None, &mut dead), 1);
        let again = s.take(1, t0, Duration::from_secs(1)).unwrap();
        let unknown = token_of(&again) + 1;
        assert!(!s.renew(unknown, t0, Duration::from_secs(1)));
    }

    #[test]
    fn max_deliveries_sends_to_dead() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.push(env("a"));
        let first = s.take(1, t0, Duration::from_secs(1)).unwrap();
        assert!(matches!(s.release(token_of(&first), Some(2)), Released::Requeued));
        let second = s.take(1, t0, Duration::from_secs(1)).unwrap();
        assert_eq!(second.delivery_count(), 2);
        let token = token_of(&second);
        match s.release(token, Some(2)) {
            Released::Dead(e) => {
                assert_eq!(e.message_id, first.message_id);
                assert_eq!(e.delivery_count(), 0);
            }
            other => panic!("expected dead, got {other:?}"),
        }
        assert!(matches!(s.release(token, Some(2)), Released::Unknown));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn deadlines_do_not_grow_without_bound() {
        let mut s = State::default();
        let t0 = Instant::now();
        for _ in 0..10_000 {
            s.push(env("x"));
            let e = s.take(1, t0, Duration::from_secs(30)).unwrap();
            s.remove(token_of(&e)).unwrap();
        }
        assert!(s.deadlines.len() <= 65, "{}", s.deadlines.len());
    }
}
