//! JetStream queues that share one stream (`options.stream`): the whole conformance suite with
//! every queue a subject of one stream, and queues kept apart on a stream courier creates.

mod support;

use std::time::Duration;

use courier_core::{MessageEnvelope, MessageQueue};
use support::{SharedStreamHarness, queue_url, reachable};

courier_conformance::conformance_tests!(SharedStreamHarness::from_env().await, stress = 1);

/// Two queues on a stream courier creates (and extends with the second queue's subject): each
/// sees, counts, peeks, receives and clears only its own messages; a dead letter lands in the
/// same stream, readable as the dead-letter queue.
#[tokio::test(flavor = "current_thread")]
async fn queues_on_one_stream_keep_their_messages_apart() {
    let Some(url) = reachable().await else { return };
    let stream = format!(
        "COURIER_TEST_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let open = |name: &str| {
        let uri = queue_url(&url, name, &[("stream", stream.as_str())]);
        async move {
            let queue = courier_nats::from_uri(&uri).expect("a queue");
            queue.open(None).await.expect("open");
            queue
        }
    };
    let (a, b) = (open("shared-a").await, open("shared-b").await);
    for i in 0..3 {
        a.send(None, MessageEnvelope::new(None, "a", format!("a{i}")))
            .await
            .unwrap();
    }
    b.send(None, MessageEnvelope::new(None, "b", "b0"))
        .await
        .unwrap();

    assert_eq!(a.read_message_count().await.unwrap(), 3);
    assert_eq!(b.read_message_count().await.unwrap(), 1);
    let peeked: Vec<_> = a.peek_batch(None, 10).await.unwrap();
    assert_eq!(
        peeked
            .iter()
            .map(|m| m.message_type.as_str())
            .collect::<Vec<_>>(),
        ["a", "a", "a"]
    );
    assert_eq!(
        b.peek(None)
            .await
            .unwrap()
            .expect("b's message")
            .message_type,
        "b"
    );

    let got = a
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.message_type, "a");
    a.move_to_dead_letter(&got).await.unwrap();
    let dead = open("shared-a.dlq").await;
    let buried = dead
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(buried.message, got.message);
    dead.complete(&buried).await.unwrap();

    a.clear(None).await.unwrap();
    assert_eq!(a.read_message_count().await.unwrap(), 0);
    assert_eq!(
        b.read_message_count().await.unwrap(),
        1,
        "clearing a leaves b's messages"
    );
    let got = b
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("b's message");
    assert_eq!(got.message_type, "b");
    b.complete(&got).await.unwrap();

    for queue in [a, b, dead] {
        queue.close(None).await.unwrap();
    }
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream(stream.as_str())
        .await
        .unwrap()
        .cached_info()
        .clone();
    let mut subjects = info.config.subjects.clone();
    subjects.sort();
    assert_eq!(
        subjects,
        ["shared-a", "shared-a.dlq", "shared-b"],
        "one stream took every queue"
    );
    js.delete_stream(stream.as_str()).await.unwrap();
}
