//! [`MessagingCapabilities`]: what a queue can do.

/// The nine pip-services capability flags of a queue.
///
/// An operation whose flag is false fails with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported);
/// it is never a silent no-op.
///
/// ```
/// use courier_core::MessagingCapabilities;
///
/// let caps = MessagingCapabilities::new(true, true, true, true, true, false, true, true, true);
/// assert!(caps.can_peek());
/// assert!(!caps.can_renew_lock());
/// assert!(MessagingCapabilities::all().can_renew_lock());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessagingCapabilities {
    message_count: bool,
    send: bool,
    receive: bool,
    peek: bool,
    peek_batch: bool,
    renew_lock: bool,
    abandon: bool,
    dead_letter: bool,
    clear: bool,
}

impl MessagingCapabilities {
    /// Creates the flags, in the pip-services constructor order.
    #[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
    pub const fn new(
        can_message_count: bool,
        can_send: bool,
        can_receive: bool,
        can_peek: bool,
        can_peek_batch: bool,
        can_renew_lock: bool,
        can_abandon: bool,
        can_dead_letter: bool,
        can_clear: bool,
    ) -> Self {
        MessagingCapabilities {
            message_count: can_message_count,
            send: can_send,
            receive: can_receive,
            peek: can_peek,
            peek_batch: can_peek_batch,
            renew_lock: can_renew_lock,
            abandon: can_abandon,
            dead_letter: can_dead_letter,
            clear: can_clear,
        }
    }

    /// Every flag true.
    pub const fn all() -> Self {
        Self::new(true, true, true, true, true, true, true, true, true)
    }

    /// Every flag false (the pip-services default of the abstract queue).
    pub const fn none() -> Self {
        Self::new(
            false, false, false, false, false, false, false, false, false,
        )
    }

    /// `read_message_count` works.
    pub const fn can_message_count(&self) -> bool {
        self.message_count
    }
    /// `send` works.
    pub const fn can_send(&self) -> bool {
        self.send
    }
    /// `receive` and `listen` work.
    pub const fn can_receive(&self) -> bool {
        self.receive
    }
    /// `peek` works.
    pub const fn can_peek(&self) -> bool {
        self.peek
    }
    /// `peek_batch` works.
    pub const fn can_peek_batch(&self) -> bool {
        self.peek_batch
    }
    /// `renew_lock` works.
    pub const fn can_renew_lock(&self) -> bool {
        self.renew_lock
    }
    /// `abandon` returns a message for redelivery.
    pub const fn can_abandon(&self) -> bool {
        self.abandon
    }
    /// `move_to_dead_letter` keeps the message in a readable dead-letter queue.
    pub const fn can_dead_letter(&self) -> bool {
        self.dead_letter
    }
    /// `clear` works.
    pub const fn can_clear(&self) -> bool {
        self.clear
    }
}
