//! `courier bench`: producers send, consumers receive and complete, on one queue; throughput
//! and send-to-receive latency, in the style of `nats bench`.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier::{ErrorKind, MessageEnvelope};

use crate::cli::BenchArgs;
use crate::commands::open;
use crate::{Exit, Failure};

/// How long a consumer waits for a message before the bench gives up.
const STALL: Duration = Duration::from_secs(30);

/// What a run measured.
#[derive(Debug)]
struct Outcome {
    seconds: f64,
    latencies: Vec<Duration>,
}

pub(crate) async fn run(uri: &str, args: &BenchArgs) -> Result<Exit, Failure> {
    let queue = open(uri).await?;
    match queue.clear(None).await {
        Err(e) if e.kind() != ErrorKind::Unsupported => return Err(e.into()),
        _ => {}
    }
    let progress = indicatif::ProgressBar::new(args.messages as u64);
    let outcome = measure(&queue, args, &progress).await;
    progress.finish_and_clear();
    let closed = queue.close(None).await;
    let outcome = outcome?;
    closed?;
    report(uri, args, &outcome)?;
    Ok(Exit::Success)
}

async fn measure(
    queue: &Arc<dyn courier::MessageQueue>,
    args: &BenchArgs,
    progress: &indicatif::ProgressBar,
) -> Result<Outcome, Failure> {
    let received = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (queue, received, progress, total) = (
            queue.clone(),
            received.clone(),
            progress.clone(),
            args.messages,
        );
        consumers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = Instant::now();
            while received.load(Ordering::SeqCst) < total {
                let Some(m) = queue.receive(None, Duration::from_millis(100)).await? else {
                    if last.elapsed() > STALL {
                        return Err(courier::Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "{} of {total} messages arrived, then none for {STALL:?}: the queue lost some (a broker that drops what its subscribers do not take fast enough?)",
                                received.load(Ordering::SeqCst)
                            ),
                        ));
                    }
                    continue;
                };
                last = Instant::now();
                latencies.push(since_stamp(&m.message));
                queue.complete(&m).await?;
                received.fetch_add(1, Ordering::SeqCst);
                progress.inc(1);
            }
            Ok::<_, courier::Error>(latencies)
        }));
    }
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let share =
            args.messages / args.producers + usize::from(p < args.messages % args.producers);
        let (queue, size) = (queue.clone(), args.size);
        producers.push(tokio::spawn(async move {
            for _ in 0..share {
                queue
                    .send(None, MessageEnvelope::new(None, "bench", stamped(size)))
                    .await?;
            }
            Ok::<_, courier::Error>(())
        }));
    }
    for producer in producers {
        producer
            .await
            .map_err(|e| Failure::Runtime(e.to_string()))??;
    }
    let mut latencies = Vec::new();
    for consumer in consumers {
        latencies.extend(
            consumer
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))??,
        );
    }
    Ok(Outcome {
        seconds: start.elapsed().as_secs_f64(),
        latencies,
    })
}

/// A payload of `size` bytes that starts with the send time (ns since the epoch).
fn stamped(size: usize) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut payload = vec![b'x'; size];
    payload[..16].copy_from_slice(&now.to_be_bytes());
    payload
}

/// The time since the stamp at the start of `payload`.
fn since_stamp(payload: &[u8]) -> Duration {
    let Some(stamp) = payload.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok()) else {
        return Duration::ZERO;
    };
    let sent = u128::from_be_bytes(stamp);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Duration::from_nanos(u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX))
}

fn report(uri: &str, args: &BenchArgs, outcome: &Outcome) -> Result<(), Failure> {
    let mut latencies = outcome.latencies.clone();
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let (p50, p99, max) = (
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    let rate = args.messages as f64 / outcome.seconds;
    let mib = rate * args.size as f64 / (1024.0 * 1024.0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let shown = courier::redact_uri(uri);
    if args.json {
        let json = serde_json::json!({
            "queue": shown,
            "messages": args.messages,
            "size": args.size,
            "producers": args.producers,
            "consumers": args.consumers,
            "seconds": outcome.seconds,
            "msgs_per_sec": rate,
            "mib_per_sec": mib,
            "latency_ms": {"p50": ms(p50), "p99": ms(p99), "max": ms(max)},
        });
        // A reader that went away is not an error.
        let _ = writeln!(std::io::stdout(), "{json}");
    } else {
        let _ = write!(
            std::io::stdout(),
            "{shown}: {} messages of {} B, {} producer(s), {} consumer(s), {:.2} s\n  throughput  {rate:.0} msgs/s, {mib:.2} MiB/s\n  latency     p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (send to receive)\n",
            args.messages,
            args.size,
            args.producers,
            args.consumers,
            outcome.seconds,
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    if let Some(path) = &args.csv {
        let fresh = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))?;
        let mut rows = String::new();
        if fresh {
            rows.push_str("queue,messages,size,producers,consumers,seconds,msgs_per_sec,mib_per_sec,p50_ms,p99_ms,max_ms\n");
        }
        rows.push_str(&format!(
            "\"{shown}\",{},{},{},{},{:.6},{rate:.1},{mib:.3},{:.3},{:.3},{:.3}\n",
            args.messages,
            args.size,
            args.producers,
            args.consumers,
            outcome.seconds,
            ms(p50),
            ms(p99),
            ms(max)
        ));
        file.write_all(rows.as_bytes())
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}
