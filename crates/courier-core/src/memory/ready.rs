//! [`ReadyList`]: the memory queue's messages waiting for delivery, in order.

use std::collections::VecDeque;

use crate::MessageEnvelope;

/// How many messages a block holds (64 envelopes: about 10 KB).
const BLOCK: usize = 64;

/// A FIFO of envelopes kept in blocks of [`BLOCK`].
///
/// One growable buffer would copy every queued message each time it doubled, fault in fresh
/// pages for each growth, and keep its largest size after a burst. Blocks are allocated as the
/// list grows and freed as it drains (one emptied block is kept for reuse), so that memory
/// follows the backlog and no message is copied after it was queued.
///
/// Only the last block may be empty.
#[derive(Debug, Default)]
pub(super) struct ReadyList {
    blocks: VecDeque<VecDeque<MessageEnvelope>>,
    len: usize,
    /// An emptied block kept for the next one needed.
    spare: Option<VecDeque<MessageEnvelope>>,
}

impl ReadyList {
    /// How many messages it holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Appends `envelope`.
    pub(super) fn push_back(&mut self, envelope: MessageEnvelope) {
        match self.blocks.back_mut() {
            Some(last) if last.len() < BLOCK => last.push_back(envelope),
            _ => {
                let mut block = self
                    .spare
                    .take()
                    .unwrap_or_else(|| VecDeque::with_capacity(BLOCK));
                block.push_back(envelope);
                self.blocks.push_back(block);
            }
        }
        self.len += 1;
    }

    /// Appends `envelopes`, in order.
    pub(super) fn extend(&mut self, envelopes: impl IntoIterator<Item = MessageEnvelope>) {
        for envelope in envelopes {
            self.push_back(envelope);
        }
    }

    /// The first message.
    pub(super) fn front(&self) -> Option<&MessageEnvelope> {
        self.blocks.front()?.front()
    }

    /// The messages, first to last.
    pub(super) fn iter(&self) -> impl Iterator<Item = &MessageEnvelope> {
        self.blocks.iter().flatten()
    }

    /// Takes the first message out.
    pub(super) fn pop_front(&mut self) -> Option<MessageEnvelope> {
        let envelope = self.blocks.front_mut()?.pop_front()?;
        self.len -= 1;
        self.drop_empty_front();
        Some(envelope)
    }

    /// Moves up to `max` messages from the front to the end of `into`; returns how many.
    pub(super) fn take_front(&mut self, max: usize, into: &mut Vec<MessageEnvelope>) -> usize {
        let count = max.min(self.len);
        into.reserve_exact(count);
        let mut left = count;
        while left > 0 {
            let Some(front) = self.blocks.front_mut() else {
                break;
            };
            let n = left.min(front.len());
            if n == 0 {
                break;
            }
            into.extend(front.drain(..n));
            left -= n;
            self.len -= n;
            self.drop_empty_front();
        }
        count - left
    }

    /// Keeps only the messages for which `keep` is true, in order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&MessageEnvelope) -> bool) {
        for block in &mut self.blocks {
            block.retain(&mut keep);
        }
        self.blocks.retain(|block| !block.is_empty());
        self.len = self.blocks.iter().map(VecDeque::len).sum();
    }

    /// Takes every message out, in order.
    pub(super) fn take_all(&mut self) -> Vec<MessageEnvelope> {
        let mut all = Vec::new();
        self.take_front(self.len, &mut all);
        all
    }

    /// Frees the front block once it is empty, unless it is the last (the next push fills it);
    /// the first block freed is kept as the spare.
    fn drop_empty_front(&mut self) {
        if self.blocks.len() > 1 && self.blocks.front().is_some_and(VecDeque::is_empty) {
            let block = self.blocks.pop_front();
            if self.spare.is_none() {
                self.spare = block;
            }
        }
    }

    /// How many blocks it holds, the spare included.
    #[cfg(test)]
    fn blocks(&self) -> usize {
        self.blocks.len() + usize::from(self.spare.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> MessageEnvelope {
        MessageEnvelope::new(None, "t", n.to_string())
    }

    fn number(m: &MessageEnvelope) -> usize {
        let text = m.message_as_string().expect("UTF-8");
        text.parse().expect("a number")
    }

    fn numbers<'a>(envelopes: impl IntoIterator<Item = &'a MessageEnvelope>) -> Vec<usize> {
        envelopes.into_iter().map(number).collect()
    }

    #[test]
    fn keeps_order_across_blocks() {
        let mut list = ReadyList::default();
        list.extend((0..200).map(numbered));
        assert_eq!(list.len(), 200);
        assert_eq!(numbers(list.iter()), (0..200).collect::<Vec<_>>());
        assert_eq!(numbers(list.front()), [0]);
        let mut taken = Vec::new();
        assert_eq!(list.take_front(70, &mut taken), 70);
        assert_eq!(numbers(&taken), (0..70).collect::<Vec<_>>());
        assert_eq!(numbers(list.pop_front().as_ref()), [70]);
        list.push_back(numbered(200));
        assert_eq!(list.len(), 130);
        assert_eq!(numbers(&list.take_all()), (71..=200).collect::<Vec<_>>());
        assert_eq!(list.len(), 0);
        assert!(list.pop_front().is_none() && list.front().is_none());
    }

    #[test]
    fn take_front_stops_at_what_is_there() {
        let mut list = ReadyList::default();
        list.extend((0..3).map(numbered));
        let mut taken = vec![numbered(99)];
        assert_eq!(list.take_front(10, &mut taken), 3);
        assert_eq!(numbers(&taken), [99, 0, 1, 2]);
        assert_eq!(list.take_front(10, &mut taken), 0);
    }

    #[test]
    fn memory_follows_the_backlog() {
        let mut list = ReadyList::default();
        list.extend((0..BLOCK * 10).map(numbered));
        assert_eq!(list.blocks(), 10);
        while list.len() > 1 {
            list.pop_front();
        }
        // The last block and one spare stay; the other eight were freed.
        assert_eq!(list.blocks(), 2);
        // A list hovering around a block boundary reuses the spare.
        for n in 0..BLOCK * 3 {
            list.push_back(numbered(n));
            list.pop_front();
        }
        assert_eq!(list.blocks(), 2);
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn retain_keeps_order_and_count() {
        let mut list = ReadyList::default();
        list.extend((0..150).map(numbered));
        list.retain(|m| number(m) % 3 == 0);
        assert_eq!(list.len(), 50);
        assert_eq!(
            numbers(list.iter()),
            (0..150).step_by(3).collect::<Vec<_>>()
        );
        list.retain(|_| false);
        assert_eq!(list.len(), 0);
        assert!(list.front().is_none());
        list.push_back(numbered(7));
        assert_eq!(numbers(list.iter()), [7]);
    }
}
