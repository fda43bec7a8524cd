//! Workloads shared by the benchmarks: the same work done through courier, a raw Tokio
//! channel and omniqueue's in-memory queue, so that each run can report ratios.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::{MemoryMessageQueue, MessageEnvelope, MessageQueue};
use omniqueue::backends::InMemoryBackend;
use tokio::sync::mpsc;

mod floor;

pub use floor::{contract_floor, contract_floor_batched};

/// A payload of `size` bytes.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

fn envelope(payload: &Bytes) -> MessageEnvelope {
    MessageEnvelope::new(None, "bench", payload.clone())
}

/// `messages` envelopes through each of `pairs` raw unbounded channels, one producer and one
/// consumer task per channel. Returns the elapsed time.
pub async fn raw_channel(pairs: usize, messages: u64, payload: &Bytes) -> Duration {
    run_pairs((0..pairs).map(|_| {
        let (tx, mut rx) = mpsc::unbounded_channel::<MessageEnvelope>();
        let payload = payload.clone();
        let producer = async move {
            for _ in 0..messages {
                tx.send(envelope(&payload)).expect("send");
            }
        };
        let consumer = async move {
            for _ in 0..messages {
                std::hint::black_box(rx.recv().await.expect("recv"));
            }
        };
        (producer, consumer)
    }))
    .await
}

/// Runs a producer and a consumer task for each of `pairs`, all at once; returns the time until
/// the last ended.
async fn run_pairs<P, C>(pairs: impl IntoIterator<Item = (P, C)>) -> Duration
where
    P: std::future::Future<Output = ()> + Send + 'static,
    C: std::future::Future<Output = ()> + Send + 'static,
{
    let pairs: Vec<_> = pairs.into_iter().collect();
    let start = Instant::now();
    let tasks: Vec<_> = pairs
        .into_iter()
        .flat_map(|(producer, consumer)| [tokio::spawn(producer), tokio::spawn(consumer)])
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

/// The sizes of the batches that send `messages` in batches of `batch`.
fn batch_sizes(messages: u64, batch: usize) -> impl Iterator<Item = usize> {
    let messages = messages as usize;
    (0..messages)
        .step_by(batch.max(1))
        .map(move |sent| batch.max(1).min(messages - sent))
}

/// `pairs` new, open memory queues, each behind `Arc<dyn MessageQueue>`.
async fn open_memory_queues(pairs: usize) -> Vec<std::sync::Arc<dyn MessageQueue>> {
    let mut queues = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let queue: std::sync::Arc<dyn MessageQueue> =
            std::sync::Arc::new(MemoryMessageQueue::new(&format!("bench-{i}")));
        queue.open(None).await.expect("open");
        queues.push(queue);
    }
    queues
}

/// `messages` envelopes through each of `pairs` memory queues, through the `MessageQueue`
/// trait: send, receive, complete. Returns the elapsed time.
pub async fn courier_memory(pairs: usize, messages: u64, payload: &Bytes) -> Duration {
    let queues = open_memory_queues(pairs).await;
    run_pairs(queues.into_iter().map(|q| {
        let (producer, consumer, payload) = (q.clone(), q, payload.clone());
        let producer = async move {
            for _ in 0..messages {
                producer.send(None, envelope(&payload)).await.expect("send");
            }
        };
        let consumer = async move {
            for _ in 0..messages {
                let m = consumer
                    .receive(None, Duration::from_secs(10))
                    .await
                    .expect("receive")
                    .expect("a message");
                consumer.complete(&m).await.expect("complete");
            }
        };
        (producer, consumer)
    }))
    .await
}

/// As [`courier_memory`], in batches of `batch`: `send_batch`, `receive_batch`,
/// `complete_batch`. Returns the elapsed time.
pub async fn courier_memory_batched(
    pairs: usize,
    messages: u64,
    payload: &Bytes,
    batch: usize,
) -> Duration {
    let queues = open_memory_queues(pairs).await;
    run_pairs(queues.into_iter().map(|q| {
        let (producer, consumer, payload) = (q.clone(), q, payload.clone());
        let producer = async move {
            for n in batch_sizes(messages, batch) {
                let envelopes = (0..n).map(|_| envelope(&payload)).collect();
                producer
                    .send_batch(None, envelopes)
                    .await
                    .expect("send_batch");
            }
        };
        let consumer = async move {
            let mut left = messages as usize;
            while left > 0 {
                let got = consumer
                    .receive_batch(None, batch.min(left), Duration::from_secs(10))
                    .await
                    .expect("receive_batch");
                assert!(!got.is_empty(), "a batch arrived");
                consumer.complete_batch(&got).await.expect("complete_batch");
                left -= got.len();
            }
        };
        (producer, consumer)
    }))
    .await
}

/// `messages` payloads through each of `pairs` omniqueue in-memory queues: `send_raw`,
/// `receive`, `ack`. Returns the elapsed time.
pub async fn omniqueue_memory(pairs: usize, messages: u64, payload: &Bytes) -> Duration {
    let mut built = Vec::new();
    for _ in 0..pairs {
        built.push(
            InMemoryBackend::builder()
                .build_pair()
                .await
                .expect("omniqueue pair"),
        );
    }
    run_pairs(built.into_iter().map(|(producer, mut consumer)| {
        let payload = payload.clone();
        let producer = async move {
            for _ in 0..messages {
                producer.send_raw(&payload).await.expect("send_raw");
            }
        };
        let consumer = async move {
            for _ in 0..messages {
                let d = consumer.receive().await.expect("receive");
                d.ack().await.map_err(|(e, _)| e).expect("ack");
            }
        };
        (producer, consumer)
    }))
    .await
}

/// Median time from the start of a `send` to the return of a `receive` that was already
/// waiting, over `samples` messages.
pub async fn courier_wakeup(samples: usize) -> Duration {
    let q = MemoryMessageQueue::new("bench-wakeup");
    q.open(None).await.expect("open");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let consumer = {
        let q = q.clone();
        tokio::spawn(async move {
            for _ in 0..samples {
                let m = q
                    .receive(None, Duration::from_secs(10))
                    .await
                    .expect("receive")
                    .expect("a message");
                done_tx.send(Instant::now()).expect("report");
                q.complete(&m).await.expect("complete");
            }
        })
    };
    let payload = payload(64);
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(1)).await; // the consumer is parked in receive
        let e = envelope(&payload);
        let sent = Instant::now();
        q.send(None, e).await.expect("send");
        latencies.push(done_rx.recv().await.expect("reported") - sent);
    }
    consumer.await.expect("consumer");
    median(latencies)
}

/// The same measurement with a raw channel's `recv`.
pub async fn raw_wakeup(samples: usize) -> Duration {
    let (tx, mut rx) = mpsc::unbounded_channel::<MessageEnvelope>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        for _ in 0..samples {
            std::hint::black_box(rx.recv().await.expect("recv"));
            done_tx.send(Instant::now()).expect("report");
        }
    });
    let payload = payload(64);
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let e = envelope(&payload);
        let sent = Instant::now();
        tx.send(e).expect("send");
        latencies.push(done_rx.recv().await.expect("reported") - sent);
    }
    consumer.await.expect("consumer");
    median(latencies)
}

/// The median of `samples`.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// The median of `rates` (0 for none).
pub fn median_rate(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or_default()
}

/// One worker on an open `queue`: `count` sends of `body`, then `count` receive + complete;
/// msg/s of each half.
pub async fn courier_send_then_take(
    queue: &dyn MessageQueue,
    count: usize,
    body: &Bytes,
) -> (f64, f64) {
    let start = Instant::now();
    for _ in 0..count {
        let envelope = MessageEnvelope::new(Some("cid"), "bench", body.clone());
        queue.send(None, envelope).await.expect("send");
    }
    let send = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..count {
        let m = queue
            .receive(None, Duration::from_secs(10))
            .await
            .expect("receive")
            .expect("a message");
        queue.complete(&m).await.expect("complete");
    }
    let take = count as f64 / start.elapsed().as_secs_f64();
    (send, take)
}

/// How many messages a round moves: `COURIER_BENCH_MESSAGES`, else `default`.
pub fn messages_per_round(default: usize) -> usize {
    std::env::var("COURIER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints the table row of `size`-byte payloads from rounds of (send, take) rates, msg/s:
/// courier's and raw's medians and their ratios.
pub fn print_send_take_row(size: usize, ours: &[(f64, f64)], raw: &[(f64, f64)]) {
    let medians = |rounds: &[(f64, f64)]| {
        (
            median_rate(rounds.iter().map(|r| r.0).collect()),
            median_rate(rounds.iter().map(|r| r.1).collect()),
        )
    };
    let ((os, ot), (rs, rt)) = (medians(ours), medians(raw));
    println!(
        "| {size} B | {os:.0} | {rs:.0} | {:.2} | {ot:.0} | {rt:.0} | {:.2} |",
        os / rs,
        ot / rt
    );
}

/// Runs `ours` and `raw` `rounds` times each, alternating which goes first so that neither
/// always meets a warmer server; returns their results, round by round.
pub async fn alternating<T>(
    rounds: usize,
    mut ours: impl AsyncFnMut() -> T,
    mut raw: impl AsyncFnMut() -> T,
) -> (Vec<T>, Vec<T>) {
    let (mut ours_done, mut raw_done) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ours_done.push(ours().await);
            raw_done.push(raw().await);
        } else {
            raw_done.push(raw().await);
            ours_done.push(ours().await);
        }
    }
    (ours_done, raw_done)
}

/// Runs a ratio bench's body on a two-worker runtime, unless cargo only lists or tests the
/// benches (`--list`, `--test`), which run nothing.
pub fn run_ratio_bench<F, Fut>(body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_cover_every_message_once() {
        assert_eq!(batch_sizes(70, 32).collect::<Vec<_>>(), [32, 32, 6]);
        assert_eq!(batch_sizes(64, 32).collect::<Vec<_>>(), [32, 32]);
        assert_eq!(batch_sizes(0, 32).count(), 0);
    }

    #[tokio::test]
    async fn every_workload_moves_its_messages() {
        let payload = payload(16);
        for pairs in [1, 3] {
            courier_memory(pairs, 50, &payload).await;
            courier_memory_batched(pairs, 50, &payload, 8).await;
            contract_floor(pairs, 50, &payload).await;
            contract_floor_batched(pairs, 50, &payload, 8).await;
            raw_channel(pairs, 50, &payload).await;
            omniqueue_memory(pairs, 50, &payload).await;
        }
    }
}
