//! NATS queues against raw async-nats doing the same work, in one run, with 64 B and 4 KiB
//! payloads:
//!
//! * JetStream: `send` (a publish acknowledged by the stream) against `publish` + awaiting its
//!   ack, with the same headers; `receive` + `complete` against fetching one message from the
//!   same kind of durable pull consumer and double-acking it.
//! * Core NATS: `count` messages published with the pip-services headers and received by a
//!   subscriber (courier: `send`, then `receive` + `complete` from the queue's buffer; raw:
//!   publish with the same headers, then read the subscription).
//!
//! ```sh
//! cargo bench -p courier-benches --bench nats
//! ```
//!
//! The server comes from `COURIER_TEST_NATS_URL` (default: the local one); if it is
//! unreachable the bench says so and stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::{MessageEnvelope, MessageQueue};
use courier_benches::{
    alternating, courier_send_then_take, median_rate as median, messages_per_round, payload,
    print_send_take_row,
};
use futures::StreamExt;

const ROUNDS: usize = 5;

/// courier: a producer task sends `count` messages while this task receives and completes
/// them; msg/s.
async fn courier_round(url: &str, count: usize, body: &[u8]) -> f64 {
    let subject = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue: Arc<dyn MessageQueue> =
        courier::nats::from_uri(&format!("{url}/{subject}?jetstream=false&max_size=100000"))
            .unwrap();
    queue.open(None).await.unwrap();
    let start = Instant::now();
    let producer = {
        let (queue, body) = (queue.clone(), bytes::Bytes::copy_from_slice(body));
        tokio::spawn(async move {
            for _ in 0..count {
                let envelope = MessageEnvelope::new(Some("cid"), "bench", body.clone());
                queue.send(None, envelope).await.unwrap();
            }
        })
    };
    for _ in 0..count {
        let m = queue
            .receive(None, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a message");
        queue.complete(&m).await.unwrap();
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    producer.await.unwrap();
    queue.close(None).await.unwrap();
    rate
}

/// Raw async-nats: the same headers published by a task while this task reads the
/// subscription; msg/s.
async fn raw_round(client: &async_nats::Client, count: usize, body: &[u8]) -> f64 {
    let subject = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let start = Instant::now();
    let producer = {
        let (client, body) = (client.clone(), bytes::Bytes::from(body.to_vec()));
        tokio::spawn(async move {
            for _ in 0..count {
                client
                    .publish_with_headers(subject.clone(), headers(), body.clone())
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..count {
        let message = subscriber.next().await.expect("a message");
        std::hint::black_box(&message);
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    producer.await.unwrap();
    rate
}

/// The headers courier writes, for the raw side.
fn headers() -> async_nats::HeaderMap {
    let envelope = MessageEnvelope::new(Some("cid"), "bench", Vec::new());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("message_id", envelope.message_id.as_str());
    headers.insert("correlation_id", "cid");
    headers.insert("trace_id", "cid");
    headers.insert("message_type", "bench");
    headers.insert("sent_time", "2026-11-22T20:55:47.193Z");
    headers
}

/// JetStream through courier: `count` sends, then `count` receive + complete; msg/s each.
async fn courier_jetstream(url: &str, count: usize, body: &[u8]) -> (f64, f64) {
    let name = format!("bench-js-{}", uuid::Uuid::new_v4().simple());
    let queue = courier::nats::from_uri(&format!("{url}/{name}")).unwrap();
    queue.open(None).await.unwrap();
    let rates = courier_send_then_take(&*queue, count, &bytes::Bytes::copy_from_slice(body)).await;
    queue.close(None).await.unwrap();
    rates
}

/// JetStream through raw async-nats, the same work on the same kind of stream and consumer.
async fn raw_jetstream(client: &async_nats::Client, count: usize, body: &[u8]) -> (f64, f64) {
    use async_nats::jetstream::{self, consumer, stream};
    let name = format!("bench-js-raw-{}", uuid::Uuid::new_v4().simple());
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: courier::nats::stream_name(&name),
            subjects: vec![name.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "courier",
            consumer::pull::Config {
                durable_name: Some("courier".to_owned()),
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let body = bytes::Bytes::from(body.to_vec());
    let start = Instant::now();
    for _ in 0..count {
        js.publish_with_headers(name.clone(), headers(), body.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let send = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..count {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = batch.next().await.expect("a message").unwrap();
        message.double_ack().await.unwrap();
    }
    let take = count as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(courier::nats::stream_name(&name)).await;
    (send, take)
}

fn main() {
    courier_benches::run_ratio_bench(|| async {
        let url = std::env::var("COURIER_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let client =
            match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url.as_str()))
                .await
            {
                Ok(Ok(client)) => client,
                other => {
                    println!(
                        "NATS at {url} is unreachable ({:?}): nothing to measure",
                        other.err()
                    );
                    return;
                }
            };
        let count = messages_per_round(100_000);
        // An acknowledged JetStream message costs a round trip: fewer of them.
        let js_count = (count / 50).max(1);
        println!(
            "\nJetStream, msg/s (median of {ROUNDS} rounds of {js_count} messages, one worker, the order alternating; raw = async-nats on the same kind of stream and consumer)"
        );
        println!(
            "| payload | courier send | raw publish+ack | ratio | courier receive+complete | raw fetch+double ack | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        for size in [64, 4096] {
            let body = payload(size);
            let (ours, raw) = alternating(
                ROUNDS,
                async || courier_jetstream(&url, js_count, &body).await,
                async || raw_jetstream(&client, js_count, &body).await,
            )
            .await;
            print_send_take_row(size, &ours, &raw);
        }
        println!(
            "\ncore NATS publish → receive, msg/s (median of {ROUNDS} rounds of {count} messages, the order alternating; raw = async-nats publishing the same headers and reading the subscription)"
        );
        println!(
            "| payload | courier send → receive+complete | raw publish → subscriber | ratio |"
        );
        println!("|---|---|---|---|");
        for size in [64, 4096] {
            let body = payload(size);
            let (ours, raw) = alternating(
                ROUNDS,
                async || courier_round(&url, count, &body).await,
                async || raw_round(&client, count, &body).await,
            )
            .await;
            let (o, r) = (median(ours), median(raw));
            println!("| {size} B | {o:.0} | {r:.0} | {:.2} |", o / r);
        }
    });
}
