//! The nine tests of pip-services' `MessageQueueFixture` (`spec/pip-messaging.md` §7), with the
//! 10 s receive waits and shorter sleeps (our receive and listen are event-driven).

use std::sync::Arc;
use std::time::Duration;

use courier_core::{ErrorKind, MessageQueue, MessageQueueExt};

use super::{assert_kind, await_count};
use crate::support::{WAIT, assert_same_message, fixture_envelope};
use crate::{Harness, TestMessageReceiver, TestQueue};

/// "Send Receive Message": a sent message is received.
pub async fn send_receive_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    let got = q.must_receive().await;
    assert_same_message(&got, &sent);
    assert_eq!(got.message_id, sent.message_id, "message_id is kept");
    assert!(got.sent_time.is_some(), "send stamps sent_time");
}

/// "Receive Send Message": a waiting receive gets a message sent 500 ms later.
pub async fn receive_send_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = fixture_envelope();
    let sender = q.queue.clone();
    let to_send = sent.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send(None, to_send).await
    });
    let started = tokio::time::Instant::now();
    let got = q.must_receive().await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "receive returned before the send"
    );
    assert_same_message(&got, &sent);
    task.await.expect("sender task").expect("send");
}

/// "Receive And Complete Message": count > 0, receive, complete; the lock reference is gone.
pub async fn receive_complete_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    await_count(&q, 1).await;
    let got = q.must_receive().await;
    assert_same_message(&got, &sent);
    assert!(
        got.lock_token().is_some(),
        "a received message carries its lock"
    );
    q.complete(&got).await.expect("complete");
    assert!(
        got.lock_token().is_none(),
        "complete releases the lock reference"
    );
}

/// "Receive And Abandon Message": an abandoned message is received again.
pub async fn receive_abandon_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    let got = q.must_receive().await;
    if !q.capabilities().can_abandon() {
        assert_kind(q.abandon(&got).await, ErrorKind::Unsupported, "abandon");
        return;
    }
    q.abandon(&got).await.expect("abandon");
    let again = q.must_receive().await;
    assert_same_message(&again, &sent);
    assert_eq!(again.message_id, got.message_id);
}

/// "Send Peek Message": peek shows a sent message.
pub async fn send_peek_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_peek() {
        assert_kind(q.peek(None).await, ErrorKind::Unsupported, "peek");
        return;
    }
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    await_count(&q, 1).await;
    let peeked = q
        .peek(None)
        .await
        .expect("peek")
        .expect("peek found nothing");
    assert_same_message(&peeked, &sent);
    assert!(peeked.lock_token().is_none(), "peek does not lock");
}

/// "Peek No Message": peek on an empty queue is `None`.
pub async fn peek_no_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    if !q.capabilities().can_peek() {
        assert_kind(q.peek(None).await, ErrorKind::Unsupported, "peek");
        return;
    }
    assert!(q.peek(None).await.expect("peek").is_none());
}

/// "Move To Dead Message": dead-lettering a received message succeeds (or is `Unsupported`).
pub async fn move_to_dead_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    let got = q.must_receive().await;
    assert_same_message(&got, &sent);
    if q.capabilities().can_dead_letter() {
        q.move_to_dead_letter(&got)
            .await
            .expect("move_to_dead_letter");
        assert!(
            got.lock_token().is_none(),
            "dead-lettering releases the lock"
        );
    } else {
        assert_kind(
            q.move_to_dead_letter(&got).await,
            ErrorKind::Unsupported,
            "move_to_dead_letter",
        );
    }
}

/// "On Message": a listener started in the background gets a sent message.
pub async fn on_message<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let handle = q.queue.begin_listen(None, receiver.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = fixture_envelope();
    q.send(None, sent.clone()).await.expect("send");
    assert_eq!(
        receiver.wait_for(1, WAIT).await,
        1,
        "the listener got nothing"
    );
    assert_same_message(&receiver.messages()[0], &sent);
    q.end_listen(None);
    handle.join().await.expect("listen");
}

/// "Send Message As Object": `send_as_object` sends JSON, and a string as itself.
pub async fn send_as_object<H: Harness>(h: &H) {
    let q = TestQueue::open(h, &[]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let handle = q.queue.begin_listen(None, receiver.clone());
    q.send_as_object(Some("123"), "messagetype", &["string1", "string2"])
        .await
        .expect("send_as_object");
    assert_eq!(receiver.wait_for(1, WAIT).await, 1);
    let got = &receiver.messages()[0];
    assert_eq!(got.message_type, "messagetype");
    assert_eq!(got.correlation_id.as_deref(), Some("123"));
    let values: Vec<String> = got.message_as().expect("JSON array");
    assert!(values.contains(&"string1".to_owned()) && values.contains(&"string2".to_owned()));
    receiver.clear();
    q.send_as_object(Some("123"), "messagetype", "string2")
        .await
        .expect("send_as_object");
    assert_eq!(receiver.wait_for(1, WAIT).await, 1);
    assert_eq!(
        receiver.messages()[0].message_as_string().expect("UTF-8"),
        "string2"
    );
    q.end_listen(None);
    handle.join().await.expect("listen");
}
