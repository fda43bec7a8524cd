//! Heap bytes a `MemoryMessageQueue` holds per queued 64-byte message, beyond the payload, and
//! heap allocations per message through `send`, `receive` and `complete` (against a raw tokio
//! channel carrying the same envelopes), measured with a counting allocator.
//!
//! ```sh
//! cargo bench -p courier-benches --bench overhead
//! ```

#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier::{MemoryMessageQueue, MessageEnvelope, MessageQueue};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MESSAGES: usize = 100_000;
const PAYLOAD: usize = 64;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let q = MemoryMessageQueue::new("overhead");
        q.open(None).await.expect("open");
        // Counted from an empty queue: the ready list's growth (and its slack) is included.
        let before = LIVE.load(Ordering::Relaxed);
        for i in 0..MESSAGES {
            let payload = Bytes::from(vec![(i % 251) as u8; PAYLOAD]);
            q.send(None, MessageEnvelope::new(Some("corr-1"), "bench", payload)).await.expect("send");
        }
        let held = LIVE.load(Ordering::Relaxed) - before;
        let per_message = held as f64 / MESSAGES as f64;
        println!(
            "memory queue: {per_message:.0} heap bytes per queued {PAYLOAD}-byte message: {:.0} bytes of overhead (envelope struct of {} bytes in a block of the ready list, id, type and correlation id strings)",
            per_message - PAYLOAD as f64,
            std::mem::size_of::<MessageEnvelope>(),
        );
        assert_eq!(q.read_message_count().await.expect("count"), MESSAGES);

        // Allocations per message on the whole path, one message at a time; the envelopes
        // are made beforehand on both sides, so only the transport's allocations count.
        const ROUND: usize = 10_000;
        let make = || -> Vec<MessageEnvelope> {
            (0..ROUND)
                .map(|_| MessageEnvelope::new(Some("corr-1"), "bench", Bytes::from_static(&[7; PAYLOAD])))
                .collect()
        };
        let q = MemoryMessageQueue::new("allocations");
        q.open(None).await.expect("open");
        let envelopes = make();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for envelope in envelopes {
            q.send(None, envelope).await.expect("send");
            let m = q.receive(None, Duration::ZERO).await.expect("receive").expect("a message");
            q.complete(&m).await.expect("complete");
        }
        let courier = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / ROUND as f64;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageEnvelope>();
        let envelopes = make();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for envelope in envelopes {
            tx.send(envelope).expect("send");
            std::hint::black_box(rx.recv().await.expect("a message"));
        }
        let raw = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / ROUND as f64;
        println!(
            "allocations per message, send + receive + complete one at a time: memory queue {courier:.1}, raw tokio mpsc {raw:.1}"
        );

        // The same in batches of 32: send_batch, receive_batch, complete_batch.
        let q = MemoryMessageQueue::new("batch-allocations");
        q.open(None).await.expect("open");
        let mut envelopes = make();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        while !envelopes.is_empty() {
            let batch: Vec<_> = envelopes.drain(..32.min(envelopes.len())).collect();
            q.send_batch(None, batch).await.expect("send_batch");
            let got = q.receive_batch(None, 32, Duration::ZERO).await.expect("receive_batch");
            q.complete_batch(&got).await.expect("complete_batch");
        }
        let batched = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / ROUND as f64;
        println!("allocations per message in batches of 32: memory queue {batched:.2}");

        // CPU time per message on one thread (no cross-thread wake-ups), envelopes made
        // beforehand: what the queue itself costs.
        const TIMED: usize = 200_000;
        let q = MemoryMessageQueue::new("timed");
        q.open(None).await.expect("open");
        let envelopes: Vec<_> = (0..TIMED).map(|_| MessageEnvelope::new(Some("corr-1"), "bench", Bytes::from_static(&[7; PAYLOAD]))).collect();
        let started = std::time::Instant::now();
        for envelope in envelopes {
            q.send(None, envelope).await.expect("send");
            let m = q.receive(None, Duration::ZERO).await.expect("receive").expect("a message");
            q.complete(&m).await.expect("complete");
        }
        let courier = started.elapsed().as_nanos() as f64 / TIMED as f64;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageEnvelope>();
        let envelopes: Vec<_> = (0..TIMED).map(|_| MessageEnvelope::new(Some("corr-1"), "bench", Bytes::from_static(&[7; PAYLOAD]))).collect();
        let started = std::time::Instant::now();
        for envelope in envelopes {
            tx.send(envelope).expect("send");
            std::hint::black_box(rx.recv().await.expect("a message"));
        }
        let raw = started.elapsed().as_nanos() as f64 / TIMED as f64;
        let started = std::time::Instant::now();
        let made: Vec<_> = (0..TIMED).map(|_| MessageEnvelope::new(Some("corr-1"), "bench", Bytes::from_static(&[7; PAYLOAD]))).collect();
        let making = started.elapsed().as_nanos() as f64 / TIMED as f64;
        drop(made);
        println!(
            "CPU time per message on one thread: memory queue {courier:.0} ns (send + receive + complete), raw tokio mpsc {raw:.0} ns; making an envelope costs {making:.0} ns"
        );
    });
}
