//! Redis Streams queues against raw redis-rs doing the same commands, in one run, with 64 B
//! and 4 KiB payloads:
//!
//! * `send` against `XADD` with the same fields;
//! * `receive` + `complete` against `XREADGROUP … COUNT 1` then `XACK` and `XDEL` (pipelined),
//!   on the same kind of stream and consumer group.
//!
//! ```sh
//! cargo bench -p courier-benches --bench redis
//! ```
//!
//! The server comes from `COURIER_TEST_REDIS_URL` (default: the local one, database 0); if it
//! is unreachable the bench says so and stops.

use std::time::{Duration, Instant};

use courier::{MessageEnvelope, MessageQueue};
use courier_benches::{
    alternating, courier_send_then_take, messages_per_round, payload, print_send_take_row,
};

const ROUNDS: usize = 5;

/// courier: `count` sends, then `count` receive + complete; msg/s each.
async fn courier_round(url: &str, count: usize, body: &bytes::Bytes) -> (f64, f64) {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = courier::redis::from_uri(&format!("{url}?queue={name}")).unwrap();
    queue.open(None).await.unwrap();
    let rates = courier_send_then_take(&*queue, count, body).await;
    queue.close(None).await.unwrap();
    delete(url, &name).await;
    rates
}

/// Raw redis-rs: the same fields with `XADD`; `XREADGROUP` one, then `XACK` + `XDEL`.
async fn raw_round(url: &str, count: usize, body: &bytes::Bytes) -> (f64, f64) {
    let name = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&name)
        .arg("courier")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let start = Instant::now();
    for _ in 0..count {
        let envelope = MessageEnvelope::new(Some("cid"), "bench", body.clone());
        let sent = courier::envelope::format_sent_time(chrono_now());
        let _: String = redis::cmd("XADD")
            .arg(&name)
            .arg("*")
            .arg("message_id")
            .arg(envelope.message_id.as_str())
            .arg("correlation_id")
            .arg("cid")
            .arg("message_type")
            .arg("bench")
            .arg("sent_time")
            .arg(sent)
            .arg("message")
            .arg(&envelope.message[..])
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let send = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..count {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("courier")
            .arg("raw")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&name)
            .arg(">")
            .query_async(&mut c)
            .await
            .unwrap();
        let id = read.keys[0].ids[0].id.clone();
        std::hint::black_box(&read);
        let _: (i64, i64) = redis::pipe()
            .cmd("XACK")
            .arg(&name)
            .arg("courier")
            .arg(&id)
            .cmd("XDEL")
            .arg(&name)
            .arg(&id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let take = count as f64 / start.elapsed().as_secs_f64();
    delete(url, &name).await;
    (send, take)
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

async fn delete(url: &str, name: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(name)
        .query_async(&mut c)
        .await
        .unwrap();
}

fn main() {
    courier_benches::run_ratio_bench(|| async {
        let url = std::env::var("COURIER_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
        let reachable = match redis::Client::open(url.as_str()) {
            Ok(client) => matches!(
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get_multiplexed_async_connection()
                )
                .await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        };
        if !reachable {
            println!("Redis at {url} is unreachable: nothing to measure");
            return;
        }
        let count = messages_per_round(20_000);
        println!(
            "\nRedis Streams, msg/s (median of {ROUNDS} rounds of {count} messages, one worker, the order alternating; raw = redis-rs sending the same commands)"
        );
        println!(
            "| payload | courier send | raw XADD | ratio | courier receive+complete | raw XREADGROUP+XACK+XDEL | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        for size in [64, 4096] {
            let body = payload(size);
            let (ours, raw) = alternating(
                ROUNDS,
                async || courier_round(&url, count, &body).await,
                async || raw_round(&url, count, &body).await,
            )
            .await;
            print_send_take_row(size, &ours, &raw);
        }
    });
}
