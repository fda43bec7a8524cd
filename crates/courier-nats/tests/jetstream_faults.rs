//! JetStream queues on a broken network, through the fault proxy: connections cut while two
//! producers and two consumers run lose no message whose `send` returned `Ok`; a consumer that
//! dies holding a message gives it back after `AckWait`; sends during an outage fail or land;
//! `open` against a closed port fails within `connect_timeout`. And foreign messages on the
//! queue's subject (no headers, garbage in them) are delivered with generated values.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_conformance::fault::ClosedPort;
use courier_conformance::{outages, unique_name};
use courier_core::{MessageEnvelope, MessageQueue};
use futures::FutureExt as _;

async fn open(url: &str, name: &str, options: &[(&str, &str)]) -> Arc<dyn MessageQueue> {
    let queue = courier_nats::from_uri(&support::queue_url(url, name, options)).unwrap();
    queue.open(None).await.expect("open through the proxy");
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_under_two_producers_and_two_consumers_lose_nothing() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let options = [
        ("connect_timeout", "3000"),
        ("lock_timeout", "2000"),
        ("reconnect_timeout", "100"),
    ];
    let consumers = [
        open(&url, &name, &options).await,
        open(&url, &name, &options).await,
    ];
    let producers = [
        open(&url, &name, &options).await,
        open(&url, &name, &options).await,
    ];
    let queues: Vec<_> = consumers.iter().chain(&producers).cloned().collect();
    let report = outages::cuts_lose_nothing(&proxy, producers, consumers).await;
    println!("nats jetstream cuts: {report}");
    for queue in queues {
        queue.close(None).await.expect("close");
    }
    support::delete_streams(&support::server_url(), &[name]);
}

/// A consumer dropped (its process dead) while it holds a message: another gets the message
/// once `AckWait` (the lock timeout) runs out, as its second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_by_a_dead_consumer_comes_back_after_ack_wait() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("fault");
    let options = [("lock_timeout", "1000")];
    let dying = open(&url, &name, &options).await;
    let envelope = MessageEnvelope::new(None, "t", "held");
    let id = envelope.message_id.clone();
    dying.send(None, envelope).await.unwrap();
    let held = dying
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.message_id, id);
    drop(held);
    drop(dying);
    let other = open(&url, &name, &options).await;
    let started = Instant::now();
    let again = other
        .receive(None, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message came back");
    assert_eq!(again.message_id, id);
    assert_eq!(again.delivery_count(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    other.complete(&again).await.unwrap();
    other.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
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
    support::delete_streams(&support::server_url(), &[name]);
}

#[tokio::test]
async fn open_against_a_closed_port_fails_within_connect_timeout() {
    if support::reachable().await.is_none() {
        return;
    }
    let nobody = ClosedPort::new().unwrap();
    let queue = courier_nats::from_uri(&format!(
        "nats://courier:s3cret@127.0.0.1:{}/never?connect_timeout=1000",
        nobody.port()
    ))
    .unwrap();
    outages::open_fails_fast(&*queue, Duration::from_secs(2), "s3cret").await;
}

/// A foreign client publishes to the queue's subject: no headers, garbage ids and times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_delivered_with_generated_values() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("foreign");
    let queue = open(&url, &name, &[]).await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(name.clone(), vec![0xffu8, 0x00].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut garbage = async_nats::HeaderMap::new();
    garbage.insert("message_id", "");
    garbage.insert("sent_time", "tomorrow-ish");
    garbage.insert("courier_deliveries", "lots");
    js.publish_with_headers(name.clone(), garbage, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for _ in 0..2 {
        let m = queue
            .receive(None, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the foreign message");
        assert_eq!(m.message_id.len(), 32);
        assert!(m.sent_time.is_some());
        assert_eq!(m.delivery_count(), 1);
        queue.complete(&m).await.unwrap();
    }
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}

/// A `receive` dropped while its fetch is under way uses up no delivery, also for a message
/// a foreign producer published with `Nats-Msg-Id` (deduplication): the copy put back is
/// stored, and arrives as a first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receive_puts_back_a_deduplicated_message() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("dropped");
    let queue = open(&url, &name, &[("max_deliveries", "1")]).await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dropped = 0;
    for attempt in 0..40 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dedup-{attempt}").as_str());
        headers.insert("message_id", format!("m-{attempt}").as_str());
        js.publish_with_headers(name.clone(), headers, "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        // Polled once, then dropped: its fetch is under way in a task by then.
        let early = queue.receive(None, Duration::from_secs(5)).now_or_never();
        let m = match early {
            Some(received) => received.unwrap().expect("the message"),
            None => {
                dropped += 1;
                queue
                    .receive(None, Duration::from_secs(5))
                    .await
                    .unwrap()
                    .expect("the message was put back")
            }
        };
        assert_eq!(m.message_id, format!("m-{attempt}"));
        assert_eq!(
            m.delivery_count(),
            1,
            "the dropped receive used up a delivery"
        );
        queue.complete(&m).await.unwrap();
    }
    assert!(dropped > 0, "no receive was dropped while fetching");
    let dead = open(&url, &format!("{name}.dlq"), &[]).await;
    assert!(
        dead.receive(None, Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
    dead.close(None).await.unwrap();
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}

/// A queue opened with a longer `lock_timeout` than the consumer's `AckWait` (set by the queue
/// that created it): its renewals keep up with the consumer's real `AckWait`, so a renewed
/// message is not delivered to anyone else before the renewal runs out.
#[tokio::test(flavor = "current_thread")]
async fn renewals_follow_the_ack_wait_of_an_older_consumer() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("ackwait");
    let creator = open(&url, &name, &[("lock_timeout", "1000")]).await;
    let holder = open(&url, &name, &[("lock_timeout", "30000")]).await;
    holder
        .send(None, MessageEnvelope::new(None, "t", "renewed"))
        .await
        .unwrap();
    let held = holder
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the message");
    holder
        .renew_lock(&held, Duration::from_secs(4))
        .await
        .unwrap();
    let early = creator
        .receive(None, Duration::from_millis(3000))
        .await
        .unwrap();
    assert!(
        early.is_none(),
        "delivered again while renewed: renewals ran on the queue's 30 s, not the consumer's 1 s AckWait"
    );
    let late = creator
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("back once the renewal ran out");
    assert_eq!(late.delivery_count(), 2);
    creator.complete(&late).await.unwrap();
    for queue in [creator, holder] {
        queue.close(None).await.unwrap();
    }
    support::delete_streams(&support::server_url(), &[name]);
}
