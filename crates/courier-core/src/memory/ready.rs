//! The memory queue's ready list: the messages waiting for a receive, in order.
//!
//! # Two parts
//!
//! Messages join at the tail of the *inbox*; receives take from the *front*. Each part has its
//! own mutex, so that senders and receivers do not take turns on one lock for every message:
//! when the front runs empty, a receive takes the whole inbox over in one swap, and then takes
//! from the front without touching the senders' mutex again until it runs empty once more.
//!
//! The order of the queue is the front, then the inbox. Only holders of the front mutex take
//! from the inbox, so that order holds for everyone; the front's mutex is taken before the
//! inbox's, never the other way round.

use std::collections::VecDeque;

use parking_lot::{Mutex, MutexGuard};

use crate::MessageEnvelope;

/// The ready messages of a memory queue (see the module docs).
#[derive(Default)]
pub(super) struct ReadyList {
    inbox: Mutex<VecDeque<MessageEnvelope>>,
    front: Mutex<VecDeque<MessageEnvelope>>,
}

impl ReadyList {
    /// Appends `envelope` at the tail.
    pub(super) fn push(&self, envelope: MessageEnvelope) {
        self.inbox.lock().push_back(envelope);
    }

    /// Appends `envelopes` at the tail, in order, taking the senders' mutex once.
    pub(super) fn extend(&self, envelopes: impl IntoIterator<Item = MessageEnvelope>) {
        self.inbox.lock().extend(envelopes);
    }

    /// Holds the front: the way to look at or take the messages in order.
    pub(super) fn lock(&self) -> Front<'_> {
        Front {
            front: self.front.lock(),
            inbox: &self.inbox,
        }
    }
}

/// The ready list with its front held (see [`ReadyList::lock`]).
pub(super) struct Front<'a> {
    front: MutexGuard<'a, VecDeque<MessageEnvelope>>,
    inbox: &'a Mutex<VecDeque<MessageEnvelope>>,
}

impl Front<'_> {
    /// Makes the inbox the front if the front is empty (the inbox then holds the whole
    /// queue); `false` if both are empty.
    fn refill(&mut self) -> bool {
        if self.front.is_empty() {
            std::mem::swap(&mut *self.front, &mut *self.inbox.lock());
        }
        !self.front.is_empty()
    }

    /// Takes the first message.
    pub(super) fn pop(&mut self) -> Option<MessageEnvelope> {
        self.refill();
        self.front.pop_front()
    }

    /// Moves up to `max` messages from the front of the queue to the end of `taken`, in
    /// order; returns how many.
    pub(super) fn pop_into(&mut self, taken: &mut Vec<MessageEnvelope>, max: usize) -> usize {
        let before = taken.len();
        while taken.len() - before < max && self.refill() {
            let count = (max - (taken.len() - before)).min(self.front.len());
            taken.reserve(count);
            taken.extend(self.front.drain(..count));
        }
        taken.len() - before
    }

    /// How many messages are ready.
    pub(super) fn len(&self) -> usize {
        self.front.len() + self.inbox.lock().len()
    }

    /// Appends `envelope` at the tail (as [`ReadyList::push`], for a caller holding the front).
    pub(super) fn push(&mut self, envelope: MessageEnvelope) {
        self.inbox.lock().push_back(envelope);
    }

    /// The first `count` messages (fewer if fewer are ready), left in place.
    pub(super) fn first(&mut self, count: usize) -> impl Iterator<Item = &MessageEnvelope> {
        if self.front.len() < count {
            self.front.append(&mut self.inbox.lock());
        }
        self.front.iter().take(count)
    }

    /// Takes every message, in order.
    pub(super) fn drain(&mut self) -> Vec<MessageEnvelope> {
        self.front.append(&mut self.inbox.lock());
        self.front.drain(..).collect()
    }

    /// Drops the messages `drop` picks, keeping the others in order; returns how many it
    /// dropped.
    pub(super) fn remove_if(&mut self, drop: impl Fn(&MessageEnvelope) -> bool) -> usize {
        self.front.append(&mut self.inbox.lock());
        let before = self.front.len();
        self.front.retain(|m| !drop(m));
        before - self.front.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(t: &str) -> MessageEnvelope {
        MessageEnvelope::new(None, t, "x")
    }

    fn types<'a>(messages: impl IntoIterator<Item = &'a MessageEnvelope>) -> Vec<String> {
        messages
            .into_iter()
            .map(|m| m.message_type.clone())
            .collect()
    }

    #[test]
    fn order_is_the_front_then_the_inbox() {
        let ready = ReadyList::default();
        for t in ["a", "b", "c"] {
            ready.push(typed(t));
        }
        let mut front = ready.lock();
        // A peek moves the first two to the front; a later push goes behind all of them.
        assert_eq!(types(front.first(2)), ["a", "b"]);
        front.push(typed("d"));
        assert_eq!(front.len(), 4);
        assert_eq!(front.pop().map(|m| m.message_type), Some("a".into()));
        assert_eq!(types(front.first(10)), ["b", "c", "d"]);
        let mut taken = Vec::new();
        assert_eq!(front.pop_into(&mut taken, 2), 2);
        assert_eq!(types(&taken), ["b", "c"]);
        front.push(typed("e"));
        assert_eq!(front.pop_into(&mut taken, 10), 2);
        assert_eq!(types(&taken), ["b", "c", "d", "e"]);
        assert_eq!(front.pop_into(&mut taken, 10), 0);
        for t in ["f", "g"] {
            front.push(typed(t));
        }
        assert_eq!(types(&front.drain()), ["f", "g"]);
        assert_eq!(front.len(), 0);
        assert!(front.pop().is_none());
    }

    #[test]
    fn remove_if_keeps_the_rest_in_order() {
        let ready = ReadyList::default();
        for t in ["a", "x", "b", "x", "c"] {
            ready.push(typed(t));
        }
        let mut front = ready.lock();
        assert_eq!(types(front.first(1)), ["a"]);
        assert_eq!(front.remove_if(|m| m.message_type == "x"), 2);
        assert_eq!(types(&front.drain()), ["a", "b", "c"]);
    }
}
