//! Order while multi-row sends commit, on PostgreSQL and MariaDB: a consumer that claims while
//! a large `send_batch` commits (one transaction of several `INSERT`s) never takes the batch's
//! last rows before its first ones. On MariaDB a locking read alone could (it skips the rows
//! still locked when it passes them, and takes the rows unlocked by the time it gets there).

mod support;

use std::time::Duration;

use courier_core::{ConfigParams, MessageEnvelope, MessageQueue};
use courier_sql::SqlMessageQueue;
use support::SqlHarness;

/// Ten rounds of a 2 000-message batch sent while one consumer takes with `receive` and
/// `receive_batch` in turn: every round arrives whole, in order.
async fn batches_keep_their_order_while_they_commit(harness: Option<SqlHarness>) {
    let Some(h) = harness else { return };
    let name = courier_conformance::unique_name("order");
    let config =
        ConfigParams::from_tuples([("name", name.as_str()), ("options.poll_interval", "10")]);
    let queue =
        std::sync::Arc::new(SqlMessageQueue::with_store(h.store.clone(), &config).expect("queue"));
    queue.open(None).await.expect("open");
    for round in 0..10 {
        let envelopes: Vec<_> = (0..2_000)
            .map(|i| MessageEnvelope::new(None, "n", format!("{round}-{i}")))
            .collect();
        let sent: Vec<String> = envelopes.iter().map(|e| e.message_id.clone()).collect();
        let sender = queue.clone();
        let sending = tokio::spawn(async move { sender.send_batch(None, envelopes).await });
        let mut got = Vec::with_capacity(sent.len());
        while got.len() < sent.len() {
            let taken = if got.len() % 2 == 0 {
                queue
                    .receive(None, Duration::from_secs(10))
                    .await
                    .expect("receive")
                    .into_iter()
                    .collect()
            } else {
                queue
                    .receive_batch(None, 100, Duration::from_secs(10))
                    .await
                    .expect("receive_batch")
            };
            assert!(
                !taken.is_empty(),
                "{}: round {round}: {} of {} arrived",
                h.backend,
                got.len(),
                sent.len()
            );
            queue.complete_batch(&taken).await.expect("complete_batch");
            got.extend(taken.into_iter().map(|m| m.message_id));
        }
        sending.await.expect("the sender").expect("send_batch");
        let first_wrong = got.iter().zip(&sent).position(|(g, s)| g != s);
        assert_eq!(
            first_wrong, None,
            "{}: round {round}: taken out of send order",
            h.backend
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_batches_keep_their_order_while_they_commit() {
    batches_keep_their_order_while_they_commit(SqlHarness::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_keep_their_order_while_they_commit() {
    batches_keep_their_order_while_they_commit(SqlHarness::postgres().await).await;
}
