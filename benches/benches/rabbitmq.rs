//! RabbitMQ queues against raw lapin doing the same protocol work, in one run: send
//! (publisher confirms, mandatory, persistent, the same properties) and receive+complete (a
//! consumer with the same prefetch, manual acknowledgements, each awaited), on quorum queues,
//! with 64 B and 4 KiB payloads, 1 and 4 workers.
//!
//! ```sh
//! cargo bench -p courier-benches --bench rabbitmq
//! ```
//!
//! The broker comes from `COURIER_TEST_RABBITMQ_URL` (default: the local one); if it is
//! unreachable the bench says so and stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::{MessageEnvelope, MessageQueue};
use courier_benches::payload;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

const ROUNDS: usize = 5;
const PREFETCH: u16 = 100;
const WORKERS: [usize; 2] = [1, 4];

fn broker_url() -> String {
    std::env::var("COURIER_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn queue_name(side: &str) -> String {
    format!("bench-{side}-{}", uuid::Uuid::new_v4().simple())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Raw lapin: one connection, a confirm channel for publishing, a consumer channel.
struct Raw {
    connection: Connection,
}

impl Raw {
    async fn declare(&self, name: &str) {
        let channel = self.connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.into(), options, arguments)
            .await
            .unwrap();
    }

    async fn delete(&self, name: &str) {
        let channel = self.connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    /// `count` confirmed publishes from `workers` tasks sharing one confirm channel; msg/s.
    async fn send(&self, name: &str, workers: usize, count: usize, body: &[u8]) -> f64 {
        let channel = self.connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (channel, name, body) = (channel.clone(), name.to_owned(), body.to_vec());
                tokio::spawn(async move {
                    for _ in 0..count / workers {
                        // What courier puts on a message: the same properties.
                        let envelope = MessageEnvelope::new(Some("cid"), "bench", Vec::new());
                        let properties = BasicProperties::default()
                            .with_content_type("text/plain".into())
                            .with_message_id(envelope.message_id.as_str().into())
                            .with_correlation_id("cid".into())
                            .with_type("bench".into())
                            .with_timestamp(1_700_000_000)
                            .with_delivery_mode(2);
                        let options = BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        };
                        let confirm = channel
                            .basic_publish(
                                "".into(),
                                name.as_str().into(),
                                options,
                                &body,
                                properties,
                            )
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                        assert_eq!(confirm, Confirmation::Ack(None));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        count as f64 / start.elapsed().as_secs_f64()
    }

    /// Starts a consumer with the same prefetch and consumes `count` messages, acknowledging
    /// each (awaited), the acknowledgements spread over `workers` tasks; msg/s.
    async fn receive(&self, name: &str, workers: usize, count: usize) -> f64 {
        // Timed from before the consumer starts, as courier's first receive starts its own.
        let start = Instant::now();
        let channel = self.connection.create_channel().await.unwrap();
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                name.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<lapin::message::Delivery>(PREFETCH.into());
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    loop {
                        let Some(delivery) = rx.lock().await.recv().await else {
                            return;
                        };
                        delivery.ack(BasicAckOptions::default()).await.unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..count {
            let delivery = consumer.next().await.unwrap().unwrap();
            tx.send(delivery).await.unwrap();
        }
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        let rate = count as f64 / start.elapsed().as_secs_f64();
        let _ = channel.close(200, "".into()).await;
        rate
    }
}

/// courier: `count` sends from `workers` tasks sharing one queue; msg/s.
async fn courier_send(
    queue: &Arc<dyn MessageQueue>,
    workers: usize,
    count: usize,
    body: &[u8],
) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, body) = (queue.clone(), body.to_vec());
            tokio::spawn(async move {
                for _ in 0..count / workers {
                    let envelope = MessageEnvelope::new(Some("cid"), "bench", body.clone());
                    queue.send(None, envelope).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// courier: `count` receive+complete from `workers` tasks sharing one queue; msg/s.
async fn courier_receive(queue: &Arc<dyn MessageQueue>, workers: usize, count: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for _ in 0..count / workers {
                    let m = queue
                        .receive(None, Duration::from_secs(10))
                        .await
                        .unwrap()
                        .expect("a message");
                    queue.complete(&m).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn run(url: &str, raw: &Raw, size: usize, workers: usize, count: usize) {
    let body = payload(size);
    let (mut ours_send, mut raw_send, mut ours_take, mut raw_take) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (ours_name, raw_name) = (queue_name("courier"), queue_name("raw"));
        raw.declare(&raw_name).await;
        let queue: Arc<dyn MessageQueue> = Arc::new(
            courier::rabbitmq::from_uri(&format!("{url}?queue={ours_name}&prefetch={PREFETCH}"))
                .unwrap(),
        );
        queue.open(None).await.unwrap();
        // Alternate which side goes first, so that neither always meets a warmer broker.
        if round % 2 == 0 {
            ours_send.push(courier_send(&queue, workers, count, &body).await);
            raw_send.push(raw.send(&raw_name, workers, count, &body).await);
            ours_take.push(courier_receive(&queue, workers, count).await);
            raw_take.push(raw.receive(&raw_name, workers, count).await);
        } else {
            raw_send.push(raw.send(&raw_name, workers, count, &body).await);
            ours_send.push(courier_send(&queue, workers, count, &body).await);
            raw_take.push(raw.receive(&raw_name, workers, count).await);
            ours_take.push(courier_receive(&queue, workers, count).await);
        }
        queue.close(None).await.unwrap();
        raw.delete(&ours_name).await;
        raw.delete(&raw_name).await;
    }
    let (os, rs, ot, rt) = (
        median(ours_send),
        median(raw_send),
        median(ours_take),
        median(raw_take),
    );
    println!(
        "| {size} B | {workers} | {os:.0} | {rs:.0} | {:.2} | {ot:.0} | {rt:.0} | {:.2} |",
        os / rs,
        ot / rt
    );
}

fn main() {
    courier_benches::run_ratio_bench(|| async {
        let url = broker_url();
        let connection = match tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            other => {
                println!(
                    "RabbitMQ at {} is unreachable ({:?}): nothing to measure",
                    courier::redact_uri(&url),
                    other.err()
                );
                return;
            }
        };
        let raw = Raw { connection };
        let count: usize = std::env::var("COURIER_BENCH_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000);
        println!(
            "\nRabbitMQ throughput, msg/s (median of {ROUNDS} rounds of {count} messages, quorum queues, prefetch {PREFETCH}; raw = lapin doing the same: confirmed mandatory persistent publishes with the same properties, a consumer acknowledging each message)"
        );
        println!(
            "| payload | workers | courier send | raw send | ratio | courier receive+complete | raw consume+ack | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for size in [64, 4096] {
            for workers in WORKERS {
                run(&url, &raw, size, workers, count).await;
            }
        }
    });
}
