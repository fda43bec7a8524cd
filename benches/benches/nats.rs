//! NATS queues against raw async-nats doing the same work, in one run. Core NATS so far:
//! `count` messages published with the pip-services headers and received by a subscriber
//! (courier: `send`, then `receive` + `complete` from the queue's buffer; raw: publish with
//! the same headers, then read the subscription), with 64 B and 4 KiB payloads.
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
use courier_benches::payload;
use futures::StreamExt;

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
        let (queue, body) = (queue.clone(), body.to_vec());
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
                let envelope = MessageEnvelope::new(Some("cid"), "bench", Vec::new());
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("message_id", envelope.message_id.as_str());
                headers.insert("correlation_id", "cid");
                headers.insert("trace_id", "cid");
                headers.insert("message_type", "bench");
                headers.insert("sent_time", "2026-11-22T20:55:47.193Z");
                client
                    .publish_with_headers(subject.clone(), headers, body.clone())
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
        let count: usize = std::env::var("COURIER_BENCH_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        println!(
            "\ncore NATS publish → receive, msg/s (median of {ROUNDS} rounds of {count} messages, the order alternating; raw = async-nats publishing the same headers and reading the subscription)"
        );
        println!(
            "| payload | courier send → receive+complete | raw publish → subscriber | ratio |"
        );
        println!("|---|---|---|---|");
        for size in [64, 4096] {
            let body = payload(size);
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                if round % 2 == 0 {
                    ours.push(courier_round(&url, count, &body).await);
                    raw.push(raw_round(&client, count, &body).await);
                } else {
                    raw.push(raw_round(&client, count, &body).await);
                    ours.push(courier_round(&url, count, &body).await);
                }
            }
            let (o, r) = (median(ours), median(raw));
            println!("| {size} B | {o:.0} | {r:.0} | {:.2} |", o / r);
        }
    });
}
