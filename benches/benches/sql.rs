//! SQL queues against the same statements issued directly with sqlx, per dialect, in one run:
//! send throughput, receive+complete throughput (1 and 4 workers), and wake-up latency.
//!
//! ```sh
//! cargo bench -p courier-benches --bench sql
//! ```
//!
//! PostgreSQL and MySQL come from `COURIER_TEST_POSTGRES_URL` / `COURIER_TEST_MYSQL_URL`
//! (local defaults); an unreachable one is reported and skipped. SQLite uses a temporary file.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::sql::{
    BatchStatements, Dialect, HotStatements, SqlMessageQueue, SqlStore, StoreOptions,
    hot_statements, mysql_candidates,
};
use courier::{ConfigParams, MessageEnvelope, MessageQueue};
use courier_benches::median;
use sqlx::Row as _;

const WORKERS: [usize; 2] = [1, 4];
const ROUNDS: usize = 4;
const CONNECTIONS: u32 = 8;

#[derive(Clone)]
enum RawPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// The same statement through whichever typed pool: one body, three dialects.
macro_rules! on_raw {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            RawPool::Sqlite($p) => $body,
            RawPool::Postgres($p) => $body,
            RawPool::MySql($p) => $body,
        }
    };
}

struct Target {
    name: &'static str,
    url: String,
    dialect: Dialect,
    store: SqlStore,
    raw: RawPool,
    sql: HotStatements,
}

async fn target(name: &'static str, url: String) -> Option<Target> {
    let mut options = StoreOptions::default();
    options.max_connections = Some(CONNECTIONS);
    let store = match SqlStore::connect_with(&url, &options).await {
        Ok(store) => store,
        Err(e) => {
            println!("{name}: skipped ({e})");
            return None;
        }
    };
    let pool = sqlx::pool::PoolOptions::new().max_connections(CONNECTIONS);
    let raw = match store.dialect() {
        Dialect::Sqlite => {
            let o = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .ok()?
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            RawPool::Sqlite(
                sqlx::pool::PoolOptions::new()
                    .max_connections(4)
                    .connect_with(o)
                    .await
                    .ok()?,
            )
        }
        Dialect::Postgres => RawPool::Postgres(pool.connect(&url).await.ok()?),
        Dialect::MySql => RawPool::MySql(
            sqlx::pool::PoolOptions::new()
                .max_connections(CONNECTIONS)
                .after_connect(|c, _| {
                    Box::pin(async move {
                        sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .execute(c)
                            .await
                            .map(drop)
                    })
                })
                .connect(&url)
                .await
                .ok()?,
        ),
    };
    let dialect = store.dialect();
    Some(Target {
        name,
        url,
        dialect,
        store,
        raw,
        sql: hot_statements(dialect),
    })
}

fn queue(t: &Target, name: &str) -> Arc<SqlMessageQueue> {
    let config = ConfigParams::from_tuples([("name", name), ("options.poll_interval", "1000")]);
    Arc::new(SqlMessageQueue::with_store(t.store.clone(), &config).expect("queue"))
}

fn envelope(i: usize) -> MessageEnvelope {
    MessageEnvelope::new(Some("bench"), "bench", format!("message {i:>54}"))
}

async fn raw_insert(t: &Target, queue: &str, e: &MessageEnvelope) {
    let sent = chrono_now_micros();
    on_raw!(&t.raw, p => {
        sqlx::query(&t.sql.insert)
            .bind(queue)
            .bind(e.message_id.as_str())
            .bind(e.correlation_id.as_deref())
            .bind(e.message_type.as_str())
            .bind(Some(sent))
            .bind(&e.message[..])
            .execute(p)
            .await
            .expect("insert");
    });
}

/// One claim and delete with the queue's statements; `false` when the queue is empty.
async fn raw_take(t: &Target, queue: &str) -> bool {
    let now = chrono_now_micros();
    let token: i64 = (now << 8) ^ 0x5bd1_e995;
    let until = now + 30_000_000;
    let id: Option<i64> = on_raw!(&t.raw, p => {
        if t.dialect == Dialect::MySql {
            raw_mysql_claim(t, queue, now, until, token, 1).await.pop()
        } else {
            sqlx::query(&t.sql.claim).bind(until).bind(token).bind(queue).bind(now)
                .fetch_optional(p).await.expect("claim").map(|r| r.get::<i64, _>("id"))
        }
    });
    let Some(id) = id else { return false };
    on_raw!(&t.raw, p => {
        sqlx::query(&t.sql.delete).bind(id).bind(token).bind(queue).execute(p).await.expect("delete");
    });
    true
}

/// A MySQL claim of up to `limit` rows, in the queue's three steps (candidates, locking read,
/// update; see `courier_sql::mysql_candidates`), without its retry; returns the ids, in order.
async fn raw_mysql_claim(
    t: &Target,
    queue: &str,
    now: i64,
    until: i64,
    token: i64,
    limit: usize,
) -> Vec<i64> {
    let RawPool::MySql(p) = &t.raw else {
        unreachable!("a MySQL target")
    };
    let candidates = mysql_candidates(limit);
    let lock = BatchStatements::new(Dialect::MySql, candidates).claim;
    let mut tx = p.begin().await.expect("begin");
    let found: Vec<i64> = sqlx::query_scalar(&t.sql.claim)
        .bind(queue)
        .bind(now)
        .bind(candidates as i64)
        .fetch_all(&mut *tx)
        .await
        .expect("candidates");
    let mut ids = Vec::new();
    if !found.is_empty() {
        let mut q = sqlx::query(&lock);
        for id in found
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(candidates)
        {
            q = q.bind(id);
        }
        let rows = q
            .bind(queue)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .expect("claim");
        ids = rows.iter().map(|r| r.get::<i64, _>("id")).collect();
    }
    if !ids.is_empty() {
        let update = BatchStatements::new(Dialect::MySql, ids.len()).claim_update;
        let mut q = sqlx::query(&update).bind(until).bind(token);
        for id in &ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await.expect("claim update");
    }
    tx.commit().await.expect("commit");
    ids
}

/// One multi-row insert of `envelopes` with the queue's batch statement.
async fn raw_insert_batch(t: &Target, queue: &str, envelopes: &[MessageEnvelope]) {
    let sent = chrono_now_micros();
    let sql = BatchStatements::new(t.dialect, envelopes.len()).insert;
    on_raw!(&t.raw, p => {
        let mut query = sqlx::query(&sql);
        for e in envelopes {
            query = query
                .bind(queue)
                .bind(e.message_id.as_str())
                .bind(e.correlation_id.as_deref())
                .bind(e.message_type.as_str())
                .bind(Some(sent))
                .bind(&e.message[..]);
        }
        query.execute(p).await.expect("insert batch");
    });
}

/// One claim of up to `limit` rows and one delete of them, with the queue's batch statements;
/// returns how many it took.
async fn raw_take_batch(t: &Target, queue: &str, limit: usize) -> usize {
    let now = chrono_now_micros();
    let token: i64 = (now << 8) ^ 0x5bd1_e995;
    let until = now + 30_000_000;
    let claim = BatchStatements::new(t.dialect, 1).claim;
    let ids: Vec<i64> = on_raw!(&t.raw, p => {
        match t.dialect {
            Dialect::MySql => raw_mysql_claim(t, queue, now, until, token, limit).await,
            Dialect::Postgres => sqlx::query(&claim).bind(queue).bind(now).bind(limit as i64).bind(until).bind(token)
                .fetch_all(p).await.expect("claim").iter().map(|r| r.get::<i64, _>("id")).collect(),
            Dialect::Sqlite => sqlx::query(&claim).bind(until).bind(token).bind(queue).bind(now).bind(limit as i64)
                .fetch_all(p).await.expect("claim").iter().map(|r| r.get::<i64, _>("id")).collect(),
        }
    });
    if ids.is_empty() {
        return 0;
    }
    let delete = BatchStatements::new(t.dialect, ids.len()).delete;
    on_raw!(&t.raw, p => {
        let mut q = sqlx::query(&delete);
        for id in &ids {
            q = q.bind(*id);
        }
        q = q.bind(queue);
        for id in &ids {
            q = q.bind(*id).bind(token);
        }
        q.execute(p).await.expect("delete");
    });
    ids.len()
}

/// The batch size of the batch comparison.
const BATCH: usize = 100;

/// One worker: `count` messages sent and taken one per statement, then in batches of
/// [`BATCH`] through courier, then the same batch statements through raw sqlx; msg/s of each
/// half of each, median of [`ROUNDS`].
async fn batches(t: &Target, count: usize) {
    let (mut single, mut batched, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let q = queue(t, &name);
        q.open(None).await.expect("open");
        let start = Instant::now();
        for i in 0..count / 10 {
            q.send(None, envelope(i)).await.expect("send");
        }
        let send = (count / 10) as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..count / 10 {
            let m = q
                .receive(None, Duration::ZERO)
                .await
                .expect("receive")
                .expect("a message");
            q.complete(&m).await.expect("complete");
        }
        let take = (count / 10) as f64 / start.elapsed().as_secs_f64();
        single.push((send, take));

        let start = Instant::now();
        for chunk in 0..count / BATCH {
            let envelopes = (0..BATCH).map(|i| envelope(chunk * BATCH + i)).collect();
            q.send_batch(None, envelopes).await.expect("send_batch");
        }
        let send = count as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut taken = 0;
        while taken < count {
            let got = q
                .receive_batch(None, BATCH, Duration::ZERO)
                .await
                .expect("receive_batch");
            assert!(!got.is_empty(), "the queue ran dry");
            q.complete_batch(&got).await.expect("complete_batch");
            taken += got.len();
        }
        let take = count as f64 / start.elapsed().as_secs_f64();
        batched.push((send, take));

        let raw_queue = format!("{name}-raw");
        let start = Instant::now();
        for chunk in 0..count / BATCH {
            let envelopes: Vec<_> = (0..BATCH).map(|i| envelope(chunk * BATCH + i)).collect();
            raw_insert_batch(t, &raw_queue, &envelopes).await;
        }
        let send = count as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut taken = 0;
        while taken < count {
            let n = raw_take_batch(t, &raw_queue, BATCH).await;
            assert!(n > 0, "the raw queue ran dry");
            taken += n;
        }
        let take = count as f64 / start.elapsed().as_secs_f64();
        raw.push((send, take));
    }
    let m = |v: &[(f64, f64)], half: fn(&(f64, f64)) -> f64| {
        courier_benches::median_rate(v.iter().map(half).collect())
    };
    let (ss, bs, rs) = (m(&single, |r| r.0), m(&batched, |r| r.0), m(&raw, |r| r.0));
    let (st, bt, rt) = (m(&single, |r| r.1), m(&batched, |r| r.1), m(&raw, |r| r.1));
    println!(
        "| {} | send | {ss:.0} | {bs:.0} | {:.1} | {rs:.0} | {:.2} |",
        t.name,
        bs / ss,
        bs / rs
    );
    println!(
        "| {} | receive+complete | {st:.0} | {bt:.0} | {:.1} | {rt:.0} | {:.2} |",
        t.name,
        bt / st,
        bt / rt
    );
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Runs `workers` tasks of `per_worker` calls of `op`; returns messages per second.
async fn rate<F, Fut>(workers: usize, per_worker: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in 0..per_worker {
                    op(w * per_worker + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
    (workers * per_worker) as f64 / start.elapsed().as_secs_f64()
}

async fn bench(t: Arc<Target>, per_worker: usize) {
    for workers in WORKERS {
        let (mut ours_send, mut raw_send, mut ours_take, mut raw_take_rates) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
            let q = queue(&t, &name);
            q.open(None).await.expect("open");
            let qs = q.clone();
            ours_send.push(
                rate(workers, per_worker, move |i| {
                    let q = qs.clone();
                    async move { q.send(None, envelope(i)).await.expect("send") }
                })
                .await,
            );
            let (tr, n) = (t.clone(), format!("{name}-raw"));
            raw_send.push(
                rate(workers, per_worker, move |i| {
                    let (t, n) = (tr.clone(), n.clone());
                    async move { raw_insert(&t, &n, &envelope(i)).await }
                })
                .await,
            );
            // Take in alternating order: on MariaDB whichever runs second pays for the first's
            // purge work, so a fixed order would favour one side.
            let ours = || {
                let q = q.clone();
                rate(workers, per_worker, move |_| {
                    let q = q.clone();
                    async move {
                        let m = q
                            .receive(None, Duration::ZERO)
                            .await
                            .expect("receive")
                            .expect("a message");
                        q.complete(&m).await.expect("complete");
                    }
                })
            };
            let raw = || {
                let (t, n) = (t.clone(), format!("{name}-raw"));
                rate(workers, per_worker, move |_| {
                    let (t, n) = (t.clone(), n.clone());
                    async move { assert!(raw_take(&t, &n).await, "raw queue ran dry") }
                })
            };
            if round % 2 == 0 {
                ours_take.push(ours().await);
                raw_take_rates.push(raw().await);
            } else {
                raw_take_rates.push(raw().await);
                ours_take.push(ours().await);
            }
        }
        let m = |v: Vec<f64>| {
            let mut v = v;
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            if v.len() % 2 == 0 {
                (v[mid - 1] + v[mid]) / 2.0
            } else {
                v[mid]
            }
        };
        let (os, rs, ot, rt) = (m(ours_send), m(raw_send), m(ours_take), m(raw_take_rates));
        println!(
            "| {} | {workers} | {os:.0} | {rs:.0} | {:.2} | {ot:.0} | {rt:.0} | {:.2} |",
            t.name,
            os / rs,
            ot / rt
        );
    }
}

async fn latency(t: &Target, samples: usize) -> (Duration, Duration) {
    let name = format!("bench-wake-{}", uuid::Uuid::new_v4().simple());
    let q = queue(t, &name);
    q.open(None).await.expect("open");
    let mut ours = Vec::new();
    for i in 0..samples {
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move {
                let m = q
                    .receive(None, Duration::from_secs(10))
                    .await
                    .expect("receive")
                    .expect("a message");
                let at = Instant::now();
                q.complete(&m).await.expect("complete");
                at
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = Instant::now();
        q.send(None, envelope(i)).await.expect("send");
        ours.push(waiting.await.expect("receiver") - sent);
    }
    let mut raw = Vec::new();
    let raw_queue = format!("{name}-raw");
    for i in 0..samples {
        let start = Instant::now();
        raw_insert(t, &raw_queue, &envelope(i)).await;
        let claimed = raw_take(t, &raw_queue).await;
        raw.push(start.elapsed());
        assert!(claimed);
    }
    (median(ours), median(raw))
}

fn main() {
    courier_benches::run_ratio_bench(|| async {
        let file = std::env::temp_dir().join(format!(
            "courier-bench-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let sqlite_url = format!("sqlite://{}", file.display());
        let postgres = std::env::var("COURIER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mysql = std::env::var("COURIER_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let mut targets = Vec::new();
        for (name, url) in [
            ("SQLite", sqlite_url),
            ("PostgreSQL", postgres),
            ("MariaDB", mysql),
        ] {
            if let Some(t) = target(name, url).await {
                targets.push(Arc::new(t));
            }
        }
        println!(
            "\nthroughput, msg/s (median of {ROUNDS} rounds, the order of courier and raw alternating; raw = the same statements through a sqlx pool of the same size)"
        );
        println!(
            "| database | workers | courier send | raw send | ratio | courier receive+complete | raw claim+delete | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for t in &targets {
            let per_worker = if t.dialect == Dialect::Sqlite {
                2000
            } else {
                500
            };
            bench(t.clone(), per_worker).await;
        }
        println!(
            "\nbatches of {BATCH}, one worker, msg/s (median of {ROUNDS} rounds): one message per statement and transaction, then batches through courier, then the same batch statements through raw sqlx"
        );
        println!(
            "| database | work | courier one at a time | courier batches | batches ÷ one at a time | raw sqlx batches | courier ÷ raw |"
        );
        println!("|---|---|---|---|---|---|---|");
        for t in &targets {
            let count = if t.dialect == Dialect::Sqlite {
                20_000
            } else {
                5_000
            };
            batches(t, count).await;
        }
        println!(
            "\nwake-up latency (median of 30): a waiting receive after a send, vs a raw insert then claim"
        );
        println!("| database | courier | raw insert+claim | ratio (raw / courier) |");
        println!("|---|---|---|---|");
        for t in &targets {
            let (ours, raw) = latency(t, 30).await;
            println!(
                "| {} | {:.0} µs | {:.0} µs | {:.2} |",
                t.name,
                ours.as_secs_f64() * 1e6,
                raw.as_secs_f64() * 1e6,
                raw.as_secs_f64() / ours.as_secs_f64()
            );
            let _ = t
                .store
                .execute_raw("DELETE FROM courier_messages WHERE queue LIKE 'bench-%'")
                .await;
            let _ = &t.url;
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    });
}
