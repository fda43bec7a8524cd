//! What courier declares on the live broker, and how it reads what others declared: a
//! pip-services exchange with a bound queue, a send-only queue, classic queues, a queue that
//! does not exist (`auto_create=false`), and one declared elsewhere with other settings.

mod support;

use std::time::Duration;

use courier_conformance::unique_name;
use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};
use courier_rabbitmq::from_uri;

async fn opened(
    url: &str,
    name: &str,
    options: &[(&str, &str)],
) -> courier_rabbitmq::RabbitMqMessageQueue {
    let mut options = options.to_vec();
    options.push(("expires", "60000"));
    let queue = from_uri(&support::queue_url(url, name, &options)).unwrap();
    queue.open(None).await.unwrap();
    queue
}

/// pip-services' exchange set-up: a queue bound to a direct exchange with a routing key gets
/// what a send-only queue publishes there.
#[tokio::test]
async fn an_exchange_routes_to_its_bound_queue() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let (name, exchange) = (unique_name("topo"), unique_name("topo-x"));
    let exchange_options = [
        ("exchange", exchange.as_str()),
        ("exchange_type", "direct"),
        ("routing_key", "jobs"),
        ("auto_delete", "true"),
    ];
    let consumer = opened(&url, &name, &exchange_options).await;
    let producer = from_uri(&format!(
        "{}&no_queue=true",
        support::queue_url(&url, "ignored", &exchange_options)
    ))
    .unwrap();
    producer.open(None).await.unwrap();
    producer
        .send(None, MessageEnvelope::new(Some("c"), "job", "routed"))
        .await
        .unwrap();
    let got = consumer
        .receive(None, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("routed through the exchange");
    assert_eq!(got.message_as_string().unwrap(), "routed");
    consumer.complete(&got).await.unwrap();
    // A send-only queue consumes nothing, whatever it is asked.
    let e = producer.receive(None, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    producer.close(None).await.unwrap();
    consumer.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}

/// A classic queue says only whether a message was delivered before: an abandoned message
/// comes back counted as its second delivery, and again as the second.
#[tokio::test]
async fn classic_queues_count_redelivered_as_second() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("topo");
    let queue = opened(&url, &name, &[("queue_type", "classic")]).await;
    queue
        .send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = queue
            .receive(None, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the message");
        counts.push(m.delivery_count());
        queue.abandon(&m).await.unwrap();
    }
    assert_eq!(counts, [1, 2, 2]);
    queue.clear(None).await.unwrap();
    queue.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}

/// `auto_create=false` on a queue nobody declared: `open` fails with `Config`, naming why.
/// A queue declared elsewhere with other settings (classic, where courier would declare a
/// quorum queue): `Config`, saying what to match.
#[tokio::test]
async fn queues_declared_elsewhere_are_checked_not_changed() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let missing = from_uri(&support::queue_url(
        &url,
        &unique_name("topo-missing"),
        &[("auto_create", "false")],
    ))
    .unwrap();
    let e = missing.open(None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("auto_create"), "{e}");
    assert!(!missing.is_open());

    let name = unique_name("topo");
    let classic = opened(&url, &name, &[("queue_type", "classic")]).await;
    let quorum = from_uri(&support::queue_url(&url, &name, &[("expires", "60000")])).unwrap();
    let e = quorum.open(None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("queue_type"), "{e}");
    // Without auto_create it uses the queue as it is.
    let user = from_uri(&support::queue_url(
        &url,
        &name,
        &[("auto_create", "false")],
    ))
    .unwrap();
    user.open(None).await.unwrap();
    user.send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap();
    let m = classic
        .receive(None, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("sent through the other handle");
    classic.complete(&m).await.unwrap();
    user.close(None).await.unwrap();
    classic.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}
