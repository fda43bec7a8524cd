//! What a backend author needs and a user does not: the building blocks every courier backend
//! is made of.
//!
//! A backend embeds a [`QueueBase`] (name, options, open state, counters, log lines and the
//! listen loop), implements [`MessageQueue`](crate::MessageQueue) on top of it, registers its
//! URI scheme with [`register_scheme`], and runs the `courier-conformance` suite. The pieces:
//!
//! * [`QueueBase`]: the state every queue shares, and the one place that stamps and counts a
//!   send, a receive and a dead letter.
//! * [`run_listener`] and [`ListenControl`]: the one `listen` loop, with its stop signal.
//! * [`LockToken`] and [`LockedMessage`]: how a received message is tied to its lock.
//! * [`Backoff`]: bounded exponential backoff with jitter, for reconnects.
//! * [`push`]: the push layer under [`CachedMessageQueue`](crate::CachedMessageQueue):
//!   [`PushBroker`], [`MessageSink`], delivery handles, credits, take-then-acknowledge.
//! * [`config_from_uri`], [`check_known_options`], [`ConnectionParams`], [`CredentialParams`]:
//!   reading a URI or pip-services config once, rejecting unknown keys, hiding passwords.
//! * [`register_scheme`], [`QueueProvider`], [`named_config`]: making `connect(uri)` and the
//!   descriptors create your queue.
//!
//! See CONTRIBUTING.md, "Writing a backend", for a walk through the memory and SQL queues.

mod base;
mod listen;
mod lock;
pub mod push;
mod retry;

pub use base::{QueueBase, Settled, deadline_after};
pub use listen::{ListenControl, ListenTicket, run_listener};
pub use lock::{LockToken, LockedMessage};
pub use retry::Backoff;

pub use crate::connection::{
    ConnectionParams, CredentialParams, TlsFiles, check_known_options, check_userinfo,
    config_from_uri, refused_handshake, with_uri_parts,
};
pub use crate::factory::{QueueProvider, named_config, register_scheme, registered_schemes};
pub use crate::options::{OPTION_KEYS, resolve_name};
pub use push::{Closed, MessageSink, PushBroker, Redelivery, TryPush};
