//! Lock tokens and [`LockedMessage`]: how a received message is tied to its lock.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::MessageEnvelope;

/// The lock a `receive` put on a message: pip-services' envelope "reference".
///
/// A backend creates one with [`LockToken::new`] around whatever identifies the delivery to it
/// (a sequence number, a row lock id, an AMQP delivery tag...) and reads it back with
/// [`downcast_ref`](LockToken::downcast_ref). Clones share one *settled* flag: once a message was
/// completed, abandoned or dead-lettered through any clone,
/// [`MessageEnvelope::lock_token`] returns `None` on all of them, and `listen` knows that the
/// receiver settled the message itself.
#[derive(Clone)]
pub struct LockToken(Arc<dyn LockCell>);

trait LockCell: Send + Sync {
    fn settled(&self) -> &AtomicBool;
    fn value(&self) -> &dyn Any;
}

struct Cell<T> {
    settled: AtomicBool,
    value: T,
}

impl<T: Any + Send + Sync> LockCell for Cell<T> {
    fn settled(&self) -> &AtomicBool {
        &self.settled
    }
    fn value(&self) -> &dyn Any {
        &self.value
    }
}

impl LockToken {
    /// Wraps the backend's delivery identifier `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        LockToken(Arc::new(Cell {
            settled: AtomicBool::new(false),
            value,
        }))
    }

    /// The backend's delivery identifier, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.value().downcast_ref()
    }

    /// Whether the message was completed, abandoned or dead-lettered.
    pub fn is_settled(&self) -> bool {
        self.0.settled().load(Ordering::Acquire)
    }

    /// Marks the message settled; returns `true` for the call that settled it, `false` if it
    /// already was. Backends call it once they have released the lock.
    pub fn settle(&self) -> bool {
        !self.0.settled().swap(true, Ordering::AcqRel)
    }

    /// Whether two tokens are clones of one lock.
    pub fn same_lock(&self, other: &LockToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockToken")
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

/// A message held under a lock, as the memory queue keeps it (pip-services `LockedMessage`).
#[derive(Clone, Debug)]
pub struct LockedMessage {
    /// The locked message.
    pub message: MessageEnvelope,
    /// When the lock expires and the message returns to the queue.
    pub expiration_time: Instant,
    /// The lock token handed out with the message.
    pub token: LockToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_is_shared_by_clones_and_happens_once() {
        let token = LockToken::new(7u64);
        let clone = token.clone();
        assert_eq!(clone.downcast_ref::<u64>(), Some(&7));
        assert_eq!(clone.downcast_ref::<u32>(), None);
        assert!(clone.same_lock(&token));
        assert!(token.settle());
        assert!(!clone.settle());
        assert!(clone.is_settled());
        assert!(!LockToken::new(7u64).same_lock(&token));
    }
}
