//! What other MQTT clients put on the wire, and MQTT's own features: payloads that are not
//! envelopes, wildcards, raw mode, client ids and durable sessions.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{TestMessageReceiver, unique_name};
use courier_core::{MessageEnvelope, MessageQueue};
use support::{drain, open};

/// A foreign publisher: a raw-mode queue, which puts the bytes given on the wire as they are.
async fn raw_publisher(url: &str, topic: &str) -> Arc<dyn MessageQueue> {
    open(
        url,
        topic,
        &[("serialize_envelope", "false"), ("autosubscribe", "false")],
    )
    .await
}

/// Non-JSON payloads, JSON that is not an envelope and a huge payload reach an envelope-mode
/// queue's listener raw (the topic as their type, the bytes intact); the listener goes on,
/// and a real envelope after them is read as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_payloads_are_delivered_raw_and_the_listener_goes_on() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let topic = unique_name("foreign");
    let queue = open(&url, &topic, &[]).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let listening = {
        let (queue, receiver) = (queue.clone(), receiver.clone());
        tokio::spawn(async move { queue.listen(None, receiver).await })
    };
    let foreign = raw_publisher(&url, &topic).await;
    let huge = vec![b'x'; 8 * 1024 * 1024];
    let payloads: Vec<Vec<u8>> = vec![
        b"21.5".to_vec(),
        b"{\"temp\": 21.5}".to_vec(),
        b"{\"message\": 42}".to_vec(),
        vec![0xff, 0xfe, 0x00, b'{'],
        huge.clone(),
    ];
    for payload in &payloads {
        foreign
            .send(None, MessageEnvelope::new(None, "ignored", payload.clone()))
            .await
            .unwrap();
    }
    let envelope = MessageEnvelope::new(Some("c1"), "order.created", "{\"id\":1}");
    queue.send(None, envelope.clone()).await.unwrap();
    let count = receiver
        .wait_for(payloads.len() + 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        count,
        payloads.len() + 1,
        "every message reached the listener"
    );
    let got = receiver.messages();
    for (m, payload) in got.iter().zip(&payloads) {
        assert_eq!(
            m.message_type, topic,
            "a foreign payload's type is its topic"
        );
        assert_eq!(&m.message[..], &payload[..]);
        assert_eq!(m.correlation_id, None);
    }
    let last = got.last().unwrap();
    assert_eq!(last.message_id, envelope.message_id);
    assert_eq!(last.correlation_id.as_deref(), Some("c1"));
    assert_eq!(last.message_type, "order.created");
    queue.end_listen(None);
    listening.await.unwrap().unwrap();
    queue.close(None).await.unwrap();
    foreign.close(None).await.unwrap();
}

/// `+` and `#` subscribe to every matching topic; in raw mode the topic is the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_receive_every_matching_topic() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let base = unique_name("wild");
    let plus = open(
        &url,
        &format!("{base}%2F%2B%2Ftemp"),
        &[("serialize_envelope", "false")],
    )
    .await;
    let hash = open(&url, &format!("{base}%2F%23"), &[]).await;
    for (leaf, body) in [("a/temp", "1"), ("b/temp", "2"), ("a/humidity", "3")] {
        let publisher =
            raw_publisher(&url, &format!("{base}%2F{}", leaf.replace('/', "%2F"))).await;
        publisher
            .send(None, MessageEnvelope::new(None, "t", body))
            .await
            .unwrap();
        publisher.close(None).await.unwrap();
    }
    let got = drain(&*plus, Duration::from_secs(1)).await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|m| (m.message_type.clone(), m.message_as_string().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            (format!("{base}/a/temp"), "1".to_owned()),
            (format!("{base}/b/temp"), "2".to_owned())
        ]
    );
    assert_eq!(drain(&*hash, Duration::from_secs(1)).await.len(), 3);
    // A queue on a filter cannot publish to it: its name is the filter too.
    let err = plus
        .send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), courier_core::ErrorKind::Config, "{err}");
    plus.close(None).await.unwrap();
    hash.close(None).await.unwrap();
}

/// Two queues without a client id on one topic both stay connected and both get each message
/// (pip-services' Node and Python queues share the host name as id and kick each other off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_get_client_ids_of_their_own() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let topic = unique_name("ids");
    let first = courier_mqtt::queue(
        &courier_core::backend::config_from_uri(&support::queue_url(&url, &topic, &[])).unwrap(),
    )
    .unwrap();
    let second = courier_mqtt::queue(
        &courier_core::backend::config_from_uri(&support::queue_url(&url, &topic, &[])).unwrap(),
    )
    .unwrap();
    assert_ne!(first.broker().client_id(), second.broker().client_id());
    first.open(None).await.unwrap();
    second.open(None).await.unwrap();
    first
        .send(None, MessageEnvelope::new(None, "t", "both"))
        .await
        .unwrap();
    for queue in [&first, &second] {
        let got = drain(queue, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 1, "each queue gets the message");
    }
    first.close(None).await.unwrap();
    second.close(None).await.unwrap();
}

/// A fixed client id at QoS 1 is a durable subscriber: what is published while its queue is
/// closed arrives when it opens again. Opening it once at QoS 0 ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_client_id_keeps_its_session_while_closed() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let topic = unique_name("durable");
    let id = format!("courier-test-{}", &topic[topic.len() - 8..]);
    let options = [("client_id", id.as_str())];
    let durable = open(&url, &topic, &options).await;
    durable.close(None).await.unwrap();
    let producer = open(&url, &topic, &[("autosubscribe", "false")]).await;
    let sent = MessageEnvelope::new(None, "t", "while closed");
    producer.send(None, sent.clone()).await.unwrap();
    let durable = open(&url, &topic, &options).await;
    let got = drain(&*durable, Duration::from_secs(2)).await;
    assert_eq!(
        got.iter().map(|m| &m.message_id).collect::<Vec<_>>(),
        [&sent.message_id]
    );
    durable.close(None).await.unwrap();
    // QoS 0 is a clean session: the broker forgets the subscription.
    let clean = open(&url, &topic, &[("client_id", id.as_str()), ("qos", "0")]).await;
    clean.close(None).await.unwrap();
    producer
        .send(None, MessageEnvelope::new(None, "t", "after the end"))
        .await
        .unwrap();
    let durable = open(&url, &topic, &options).await;
    assert!(
        drain(&*durable, Duration::from_millis(500))
            .await
            .is_empty()
    );
    durable.close(None).await.unwrap();
    let clean = open(&url, &topic, &[("client_id", id.as_str()), ("qos", "0")]).await;
    clean.close(None).await.unwrap();
    producer.close(None).await.unwrap();
}

/// QoS 0 and raw mode round trips.
#[tokio::test(flavor = "current_thread")]
async fn qos0_and_raw_mode_round_trip() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let topic = unique_name("qos0");
    let queue = open(&url, &topic, &[("qos", "0")]).await;
    let sent = MessageEnvelope::new(Some("c"), "T", "at most once");
    queue.send(None, sent.clone()).await.unwrap();
    let got = drain(&*queue, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, sent.message_id);
    queue.close(None).await.unwrap();

    let raw = open(&url, &topic, &[("serialize_envelope", "false")]).await;
    raw.send(
        None,
        MessageEnvelope::new(Some("c"), "T", vec![0u8, 1, 2, 255]),
    )
    .await
    .unwrap();
    let got = drain(&*raw, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].message[..], &[0u8, 1, 2, 255]);
    assert_eq!(
        got[0].message_type, topic,
        "raw mode: the type is the topic"
    );
    assert_eq!(
        got[0].correlation_id, None,
        "raw mode carries no correlation id"
    );
    raw.close(None).await.unwrap();
}
