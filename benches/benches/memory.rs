//! `MemoryMessageQueue` throughput and wake-up latency, next to a raw Tokio channel carrying
//! the same envelopes and omniqueue's in-memory queue, in one run.
//!
//! ```sh
//! cargo bench -p courier-benches --bench memory -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Criterion measures each workload; then a ratio report runs the three side by side
//! (interleaved rounds, median of each) and prints courier ÷ raw and courier ÷ omniqueue.
//! `cargo bench -p courier-benches --bench memory -- ratio` runs only the report (the filter
//! matches no criterion benchmark).

use std::time::Duration;

use courier_benches::{
    contract_floor, contract_floor_batched, courier_memory, courier_memory_batched, courier_wakeup,
    median, omniqueue_memory, payload, raw_channel, raw_wakeup,
};
use criterion::{BenchmarkId, Criterion, Throughput};

const CASES: [(usize, usize); 4] = [(64, 1), (64, 4), (4096, 1), (4096, 4)];

/// The batch size of the batched workload.
const BATCH: usize = 32;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("send_receive_complete");
    for (size, pairs) in CASES {
        let body = payload(size);
        group.throughput(Throughput::Elements(pairs as u64));
        let id = format!("{size}B/{pairs}pairs");
        group.bench_function(BenchmarkId::new("raw_mpsc", &id), |b| {
            b.to_async(&rt)
                .iter_custom(|n| raw_channel(pairs, n, &body));
        });
        group.bench_function(BenchmarkId::new("courier", &id), |b| {
            b.to_async(&rt)
                .iter_custom(|n| courier_memory(pairs, n, &body));
        });
        group.bench_function(BenchmarkId::new("courier_batch32", &id), |b| {
            b.to_async(&rt)
                .iter_custom(|n| courier_memory_batched(pairs, n, &body, BATCH));
        });
        group.bench_function(BenchmarkId::new("omniqueue", &id), |b| {
            b.to_async(&rt)
                .iter_custom(|n| omniqueue_memory(pairs, n, &body));
        });
    }
    group.finish();
}

/// Interleaved rounds of the workloads; prints messages per second and the ratios. The contract
/// floors (`courier_benches::floor`) show how close any queue keeping the `MessageQueue`
/// contract can come to the raw channel.
fn ratio_report() {
    let rt = runtime();
    const MESSAGES: u64 = 50_000;
    const ROUNDS: usize = 7;
    println!("\nratio report: {MESSAGES} messages per pair, median of {ROUNDS} interleaved rounds");
    println!(
        "| payload | pairs | raw mpsc msg/s | courier msg/s | courier batches of {BATCH} msg/s | omniqueue msg/s | courier/raw | courier/omniqueue | batches/raw | floor/raw | batched floor/raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (size, pairs) in CASES {
        let body = payload(size);
        let (mut raw, mut ours, mut batched, mut omni, mut floor, mut floor_batched) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        rt.block_on(async {
            for _ in 0..ROUNDS {
                raw.push(raw_channel(pairs, MESSAGES, &body).await);
                ours.push(courier_memory(pairs, MESSAGES, &body).await);
                batched.push(courier_memory_batched(pairs, MESSAGES, &body, BATCH).await);
                omni.push(omniqueue_memory(pairs, MESSAGES, &body).await);
                floor.push(contract_floor(pairs, MESSAGES, &body).await);
                floor_batched.push(contract_floor_batched(pairs, MESSAGES, &body, BATCH).await);
            }
        });
        let rate = |d: Duration| (MESSAGES * pairs as u64) as f64 / d.as_secs_f64();
        let (raw, ours, batched, omni) = (
            rate(median(raw)),
            rate(median(ours)),
            rate(median(batched)),
            rate(median(omni)),
        );
        let (floor, floor_batched) = (rate(median(floor)), rate(median(floor_batched)));
        println!(
            "| {size} B | {pairs} | {raw:.0} | {ours:.0} | {batched:.0} | {omni:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ours / raw,
            ours / omni,
            batched / raw,
            floor / raw,
            floor_batched / raw
        );
    }
    let (ours, raw) = rt.block_on(async { (courier_wakeup(2000).await, raw_wakeup(2000).await) });
    println!(
        "\nwake-up latency (median of 2000, send start to waiting receive's return): courier {:.1} µs, raw mpsc {:.1} µs",
        ours.as_secs_f64() * 1e6,
        raw.as_secs_f64() * 1e6
    );
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        ratio_report();
    }
}
