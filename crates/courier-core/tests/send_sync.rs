//! Every public type can cross threads, and every queue's futures are `Send`.

use std::sync::Arc;
use std::time::Duration;

use courier_core::backend::*;
use courier_core::*;

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<MessageEnvelope>();
    send_sync::<MessagingCapabilities>();
    send_sync::<MemoryMessageQueue>();
    send_sync::<CallbackMessageReceiver>();
    send_sync::<ConfigParams>();
    send_sync::<ConnectionParams>();
    send_sync::<CredentialParams>();
    send_sync::<QueueOptions>();
    send_sync::<QueueBase>();
    send_sync::<ListenControl>();
    send_sync::<ListenHandle>();
    send_sync::<LockToken>();
    send_sync::<LockedMessage>();
    send_sync::<Error>();
    send_sync::<Descriptor>();
    send_sync::<DefaultMessagingFactory>();
    send_sync::<MemoryMessageQueueFactory>();
    send_sync::<MessageSink<u64>>();
    send_sync::<Closed<u64>>();
    send_sync::<Arc<dyn MessageQueue>>();
}

#[test]
fn queue_futures_are_send() {
    let queue: Arc<dyn MessageQueue> = Arc::new(MemoryMessageQueue::new("futures"));
    let envelope = MessageEnvelope::new(None, "t", "x");
    send(&queue.open(None));
    send(&queue.send(None, envelope.clone()));
    send(&queue.receive(None, Duration::ZERO));
    send(&queue.complete(&envelope));
    send(&queue.send_as_object(None, "t", &1));
    send(&courier_core::connect("memory://futures"));
}
