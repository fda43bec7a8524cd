//! Broken networks between MQTT queues and the broker, through the conformance crate's fault
//! proxy: at QoS 1 the persistent session and the manual acknowledgements lose nothing that
//! was sent with `Ok`.

mod support;

use std::time::{Duration, Instant};

use courier_conformance::fault::ClosedPort;
use courier_conformance::{outages, unique_name};
use courier_core::{MessageEnvelope, MessageQueue};
use support::open;

/// Two producers and two consumers (a shared-subscription group) at QoS 1 while every
/// connection is cut five times: every message sent with `Ok` arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_under_two_producers_and_two_consumers_lose_nothing() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let consuming = [
        ("group", name.as_str()),
        ("connect_timeout", "2000"),
        ("reconnect_timeout", "100"),
    ];
    let consumers = [
        open(&url, &name, &consuming).await,
        open(&url, &name, &consuming).await,
    ];
    // Producers never receive: they do not subscribe.
    let producing = [
        ("autosubscribe", "false"),
        ("connect_timeout", "2000"),
        ("reconnect_timeout", "100"),
    ];
    let producers = [
        open(&url, &name, &producing).await,
        open(&url, &name, &producing).await,
    ];
    let queues: Vec<_> = consumers.iter().chain(&producers).cloned().collect();
    let report = outages::cuts_lose_nothing(&proxy, producers, consumers).await;
    println!("mqtt cuts (QoS 1): {report}");
    for queue in queues {
        queue.close(None).await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_an_outage_fail_or_land() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let queue = open(
        &url,
        &name,
        &[("connect_timeout", "1000"), ("reconnect_timeout", "100")],
    )
    .await;
    outages::outage_sends_fail_or_land(&proxy, &*queue).await;
    queue.close(None).await.unwrap();
}

/// What is published while the consumer's connection is down waits in its session and
/// arrives when it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_consumer_is_away_arrive_when_it_is_back() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let direct = support::server_url();
    let name = unique_name("away");
    let consumer = open(&url, &name, &[("reconnect_timeout", "100")]).await;
    let producer = open(&direct, &name, &[("autosubscribe", "false")]).await;
    proxy.outage().await;
    // The broker notices the consumer is gone (its socket closed) before the sends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let envelope = MessageEnvelope::new(None, "away", format!("{i}"));
        sent.push(envelope.message_id.clone());
        producer.send(None, envelope).await.unwrap();
    }
    proxy.restore().await.unwrap();
    let got = support::drain(&*consumer, Duration::from_secs(5)).await;
    let ids: Vec<String> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, sent, "the messages sent meanwhile, in order");
    consumer.close(None).await.unwrap();
    producer.close(None).await.unwrap();
}

/// A message received before the connection broke and completed while it was down is
/// acknowledged when the broker sends it again in the resumed session: it is not delivered a
/// second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_completed_while_disconnected_is_not_delivered_again() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("settle");
    let consumer = open(&url, &name, &[("reconnect_timeout", "100")]).await;
    consumer
        .send(None, MessageEnvelope::new(None, "t", "once"))
        .await
        .unwrap();
    let m = consumer
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the message");
    proxy.outage().await;
    consumer.complete(&m).await.unwrap();
    proxy.restore().await.unwrap();
    // Wait for the reconnect, then for the broker to send the message again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.accepted() < 2 {
        assert!(Instant::now() < deadline, "the queue did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = consumer
        .receive(None, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(again.is_none(), "delivered again: {again:?}");
    // Acknowledged for good: a fresh queue with the same session would get nothing either,
    // and the connection still works.
    consumer
        .send(None, MessageEnvelope::new(None, "t", "next"))
        .await
        .unwrap();
    let next = consumer
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the next message");
    assert_eq!(next.message_as_string().unwrap(), "next");
    consumer.complete(&next).await.unwrap();
    consumer.close(None).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn open_against_a_closed_port_fails_within_connect_timeout() {
    if support::reachable().await.is_none() {
        return;
    }
    let nobody = ClosedPort::new().unwrap();
    let queue = courier_mqtt::from_uri(&format!(
        "mqtt://courier:s3cret@127.0.0.1:{}/never?connect_timeout=1000",
        nobody.port()
    ))
    .unwrap();
    outages::open_fails_fast(&*queue, Duration::from_secs(2), "s3cret").await;
}

/// A server that accepts and never answers: `open` fails with `Connection` within
/// `connect_timeout`.
#[tokio::test(flavor = "current_thread")]
async fn open_against_a_silent_server_fails_within_connect_timeout() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    proxy.stall();
    let queue = courier_mqtt::from_uri(&support::queue_url(
        &url,
        "never",
        &[("connect_timeout", "1000")],
    ))
    .unwrap();
    outages::open_fails_fast(&*queue, Duration::from_secs(2), "").await;
}

/// Many more concurrent sends than rumqttc keeps in flight (100), with the producer's
/// connection stalled and then cut under them: after the reconnect, the 100 written again
/// and the 500 never written go out without overwriting each other, and every send that
/// returned `Ok` arrives (none was acknowledged with another message's PUBACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_across_cuts_are_acknowledged_truthfully() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("burst");
    let consumer = open(&support::server_url(), &name, &[]).await;
    let producer = open(
        &url,
        &name,
        &[
            ("autosubscribe", "false"),
            ("reconnect_timeout", "50"),
            ("connect_timeout", "5000"),
        ],
    )
    .await;
    // Nothing moves: rumqttc fills its 100 in-flight slots and the rest waits in its queue.
    proxy.stall();
    let mut sends = Vec::new();
    for i in 0..600 {
        let producer = producer.clone();
        sends.push(tokio::spawn(async move {
            let envelope = MessageEnvelope::new(None, "burst", format!("{i}"));
            let id = envelope.message_id.clone();
            producer.send(None, envelope).await.map(|()| id)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    proxy.resume();
    let mut acknowledged = Vec::new();
    for send in sends {
        if let Ok(id) = send.await.unwrap() {
            acknowledged.push(id);
        }
    }
    assert!(!acknowledged.is_empty(), "no send succeeded");
    let got: std::collections::HashSet<String> = support::drain(&*consumer, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !got.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sends never arrived",
        lost.len(),
        acknowledged.len()
    );
    println!(
        "mqtt burst: {} of 600 sends acknowledged, {} distinct received, {} connections",
        acknowledged.len(),
        got.len(),
        proxy.accepted()
    );
    producer.close(None).await.unwrap();
    consumer.close(None).await.unwrap();
}
