//! [`SqlStore`]: a connection pool with the courier schema, shared by any number of queues.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::backend::Backoff;
use courier_core::{Error, ErrorKind, MessageEnvelope, Result, redact_uri};
use parking_lot::Mutex;
use sqlx::Row as _;
use tokio::sync::Notify;

use crate::dialect::{
    BATCH_ROWS, BatchStatements, Dialect, SCHEMA_VERSION, Statements, mysql_candidates,
};

/// How often a MySQL claim reads candidates again when others are claiming all of them.
const MYSQL_CLAIM_ROUNDS: usize = 4;

#[derive(Clone, Debug)]
enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

/// Runs `$body` with `$pool` bound to the typed pool of whichever database `$store` uses: the
/// one way each statement is issued, compiled once per dialect.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            Pool::Postgres($pool) => $body,
            #[cfg(feature = "mysql")]
            Pool::MySql($pool) => $body,
        }
    };
}

/// A row read back from `courier_messages`.
#[derive(Debug)]
pub(crate) struct StoredRow {
    pub(crate) id: i64,
    pub(crate) lock_token: Option<i64>,
    pub(crate) deliveries: i32,
    /// The envelope, or why the row does not decode.
    pub(crate) envelope: std::result::Result<MessageEnvelope, String>,
}

macro_rules! decode_row {
    ($row:expr) => {{
        let row = $row;
        let id: i64 = row.try_get("id").map_err(sql_error)?;
        let lock_token: Option<i64> = row.try_get("lock_token").map_err(sql_error)?;
        let deliveries: i32 = row.try_get("deliveries").map_err(sql_error)?;
        let envelope = (|| -> std::result::Result<MessageEnvelope, sqlx::Error> {
            let message_id: String = row.try_get("message_id")?;
            let correlation_id: Option<String> = row.try_get("correlation_id")?;
            let message_type: String = row.try_get("message_type")?;
            let sent_time: Option<i64> = row.try_get("sent_time")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let mut envelope =
                MessageEnvelope::new(correlation_id.as_deref(), &message_type, payload);
            envelope.message_id = message_id;
            envelope.sent_time = sent_time.and_then(DateTime::<Utc>::from_timestamp_micros);
            Ok(envelope)
        })()
        .map_err(|e| e.to_string());
        StoredRow {
            id,
            lock_token,
            deliveries,
            envelope,
        }
    }};
}

/// A pool of connections to one database, with the courier schema in place, shared by the
/// [`SqlMessageQueue`](crate::SqlMessageQueue)s built on it.
///
/// Queues opened from a URI make their own store; build one yourself to run many queues over
/// one pool:
///
/// ```no_run
/// # async fn demo() -> courier_core::Result<()> {
/// use courier_core::{ConfigParams, MessageQueue};
/// use courier_sql::{SqlMessageQueue, SqlStore};
///
/// let store = SqlStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// let orders = SqlMessageQueue::with_store(store.clone(), &ConfigParams::from_string("name=orders")?)?;
/// let invoices = SqlMessageQueue::with_store(store, &ConfigParams::from_string("name=invoices")?)?;
/// orders.open(None).await?;
/// invoices.open(None).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqlStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    pool: Pool,
    sql: Statements,
    redacted: String,
    /// Wakes receivers of a queue in this process when a message is sent or released.
    notifiers: Mutex<HashMap<String, Arc<Notify>>>,
    /// PostgreSQL: the `LISTEN` task and the one connection it uses, outside `pool`.
    listener: Mutex<Option<Listener>>,
    /// MySQL/MariaDB: the server's `max_allowed_packet`, which bounds a message.
    max_packet: std::sync::atomic::AtomicUsize,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
struct Listener {
    task: tokio::task::JoinHandle<()>,
    #[cfg(feature = "postgres")]
    connection: sqlx::PgPool,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.lock().take() {
            listener.task.abort();
        }
    }
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &self.dialect())
            .field("url", &self.inner.redacted)
            .finish_non_exhaustive()
    }
}

/// The connection settings of a store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The most connections the pool opens (default 10; 4 for SQLite files, 1 for
    /// `sqlite::memory:`). PostgreSQL stores use one more, outside the pool, for `LISTEN`.
    pub max_connections: Option<u32>,
    /// How long `connect` may take to reach the database, and how long a statement waits for
    /// a free connection (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The stores of queues opened from a URL in this process, by URL, settings and runtime:
/// queues on one database share one pool (and on PostgreSQL one `LISTEN` connection).
///
/// A pool's connections belong to the Tokio runtime that opened them, so stores are not shared
/// across runtimes (each test of `#[tokio::test]` has its own), and a store whose runtime has
/// shut down is replaced, not reused.
type Registry = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shared>>>>;

#[derive(Default)]
struct Shared {
    store: Option<SqlStore>,
    users: usize,
    /// Alive while the runtime that made the store runs (held by a task of that runtime).
    runtime: std::sync::Weak<()>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    /// Bumped when a dead store is replaced: releases of the old one are ignored.
    generation: u64,
}

/// A queue's hold on a shared store: what it gives back on `close`.
#[derive(Debug)]
pub(crate) struct SharedKey {
    key: String,
    generation: u64,
}

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn registry_key(url: &str, options: &StoreOptions) -> String {
    let runtime = tokio::runtime::Handle::try_current()
        .map(|h| h.id().to_string())
        .unwrap_or_default();
    format!(
        "{url}\n{:?}\n{:?}\n{runtime}",
        options.max_connections, options.connect_timeout
    )
}

impl SqlStore {
    /// Connects to the database `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`,
    /// `mysql://...`) and creates or checks the schema.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a URL of another scheme or a schema newer than this crate,
    /// [`ErrorKind::Connection`] if the database cannot be reached, saying why (refused, timed
    /// out, authentication failed, too many connections).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled connect leaves no pool behind (the schema, if it was being
    /// created, is created in one transaction).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// [`connect`](Self::connect) with connection settings.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    ///
    /// # Cancel safety
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Self> {
        let redacted = redact_uri(url);
        let Some(dialect) = Dialect::from_url(url).filter(|d| enabled(*d)) else {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(Error::config(
                "uri",
                format!(
                    "no SQL dialect for scheme `{scheme}` (enabled: {})",
                    enabled_schemes()
                ),
            ));
        };
        let backend = dialect.name();
        let config_error = |e: sqlx::Error| {
            Error::config("uri", format!("not a valid {backend} URL: {e}")).with_backend(backend)
        };
        let timeout = options.connect_timeout;
        let pool = match dialect {
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => {
                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let mut connect = SqliteConnectOptions::from_str(url)
                    .map_err(config_error)?
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(10));
                if !in_memory {
                    connect = connect
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal);
                }
                let pool_options = if in_memory {
                    // One connection that lives as long as the pool: the database is in it.
                    pool_options(1, options)
                        .max_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    pool_options(4, options)
                };
                Pool::Sqlite(open_pool(pool_options, connect, timeout, backend, &redacted).await?)
            }
            #[cfg(feature = "postgres")]
            Dialect::Postgres => {
                let connect =
                    sqlx::postgres::PgConnectOptions::from_str(url).map_err(config_error)?;
                let pool_options = pool_options(10, options);
                Pool::Postgres(open_pool(pool_options, connect, timeout, backend, &redacted).await?)
            }
            #[cfg(feature = "mysql")]
            Dialect::MySql => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let connect =
                    sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(config_error)?;
                // READ COMMITTED: a claim's locking read then locks only the row it takes, not
                // the gaps next to other consumers' rows (which SKIP LOCKED would skip).
                let pool_options = pool_options(10, options).after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .execute(conn)
                            .await
                            .map(drop)
                    })
                });
                Pool::MySql(open_pool(pool_options, connect, timeout, backend, &redacted).await?)
            }
            #[allow(unreachable_patterns)] // with every feature
            _ => unreachable!("`enabled` filtered the dialects out"),
        };
        let store = SqlStore {
            inner: Arc::new(StoreInner {
                pool,
                sql: Statements::new(dialect),
                redacted,
                notifiers: Mutex::new(HashMap::new()),
                listener: Mutex::new(None),
                max_packet: std::sync::atomic::AtomicUsize::new(usize::MAX),
            }),
        };
        store.migrate().await?;
        store.read_limits().await?;
        store.start_listener(options).await?;
        Ok(store)
    }

    /// The store of `url` shared by the queues of this process that opened it: connects on the
    /// first call, and counts the users until [`release_shared`](Self::release_shared).
    /// Returns the store and the key to [release](Self::release_shared) it with.
    pub(crate) async fn acquire_shared(
        url: &str,
        options: &StoreOptions,
    ) -> Result<(Self, SharedKey)> {
        let key = registry_key(url, options);
        let slot = registry().lock().entry(key.clone()).or_default().clone();
        let mut shared = slot.lock().await;
        if shared.store.is_some() && shared.runtime.upgrade().is_none() {
            // Its runtime is gone, and its connections with it: start afresh.
            shared.store = None;
            shared.users = 0;
            shared.generation += 1;
        }
        let store = match &shared.store {
            Some(store) => store.clone(),
            None => {
                let store = Self::connect_with(url, options).await?;
                let alive = Arc::new(());
                shared.runtime = Arc::downgrade(&alive);
                shared.keepalive = Some(tokio::spawn(async move {
                    let _alive = alive;
                    std::future::pending::<()>().await;
                }));
                shared.store = Some(store.clone());
                store
            }
        };
        shared.users += 1;
        let generation = shared.generation;
        Ok((store, SharedKey { key, generation }))
    }

    /// One user of a [shared](Self::acquire_shared) store is done with it; the last one
    /// closes it.
    pub(crate) async fn release_shared(held: SharedKey) {
        let Some(slot) = registry().lock().get(&held.key).cloned() else {
            return;
        };
        let mut shared = slot.lock().await;
        if shared.generation != held.generation {
            return; // a store replaced since (its runtime had ended): nothing to give back
        }
        shared.users = shared.users.saturating_sub(1);
        if shared.users == 0 {
            // The slot stays in the registry (a few bytes per runtime and URL): removing it
            // could race an `acquire_shared` already waiting on it.
            if let Some(keepalive) = shared.keepalive.take() {
                keepalive.abort();
            }
            if let Some(store) = shared.store.take() {
                store.close().await;
            }
        }
    }

    /// The database's dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.sql.dialect
    }

    /// The backend name errors carry: `sqlite`, `postgres` or `mysql`.
    pub fn backend(&self) -> &'static str {
        self.dialect().name()
    }

    /// Closes the pool and, on PostgreSQL, the `LISTEN` connection (queues built on this store
    /// then fail with `Connection` errors).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the pool is closed at once; dropping the future only stops waiting for
    /// connections in use to come back.
    pub async fn close(&self) {
        let listener = self.inner.listener.lock().take();
        if let Some(listener) = listener {
            listener.task.abort();
            #[cfg(feature = "postgres")]
            listener.connection.close().await;
        }
        on_pool!(self.inner, pool => pool.close().await);
    }

    /// A statement failed: the courier error, tagged with this store's backend.
    fn fail(&self, e: sqlx::Error) -> Error {
        sql_error(e).with_backend(self.backend())
    }
    /// Creates the schema if it is missing; refuses a newer one.
    async fn migrate(&self) -> Result<()> {
        let sql = &self.inner.sql;
        let version: Option<i32> = on_pool!(self.inner, pool => {
            let mut tx = pool.begin().await.map_err(|e| self.fail(e))?;
            if sql.dialect == Dialect::Postgres {
                // Concurrent CREATE TABLE IF NOT EXISTS can fail on Postgres: serialize them.
                sqlx::query("SELECT pg_advisory_xact_lock(7420100)").execute(&mut *tx).await.map_err(|e| self.fail(e))?;
            }
            for ddl in &sql.schema {
                sqlx::query(ddl).execute(&mut *tx).await.map_err(|e| self.fail(e))?;
            }
            let version: Option<i32> = sqlx::query(&sql.schema_version)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| self.fail(e))?;
            if version.is_none() {
                sqlx::query(&sql.insert_version).bind(SCHEMA_VERSION).execute(&mut *tx).await.map_err(|e| self.fail(e))?;
            }
            tx.commit().await.map_err(|e| self.fail(e))?;
            version
        });
        match version {
            Some(v) if v > SCHEMA_VERSION => Err(Error::config(
                "courier_schema",
                format!(
                    "the database {:?} has courier schema version {v}, newer than this courier's {SCHEMA_VERSION}: upgrade courier",
                    self.inner.redacted
                ),
            )
            .with_backend(self.backend())),
            _ => Ok(()),
        }
    }

    /// PostgreSQL: forwards `NOTIFY courier, '<queue>'` from other processes to local
    /// receivers, on a connection of its own (never one of the pool's). When the connection
    /// breaks it reconnects with [`Backoff`]; receivers poll (every `poll_interval`) meanwhile,
    /// and the first notification after an outage wakes all of them.
    #[cfg_attr(
        not(feature = "postgres"),
        allow(clippy::unused_async, unused_variables)
    )]
    async fn start_listener(&self, options: &StoreOptions) -> Result<()> {
        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns)] // with only the postgres feature
        if let Pool::Postgres(pool) = &self.inner.pool {
            let connection = sqlx::pool::PoolOptions::<sqlx::Postgres>::new()
                .max_connections(1)
                .min_connections(0)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.connect_timeout)
                .connect_lazy_with(pool.connect_options().as_ref().clone());
            let mut listener = sqlx::postgres::PgListener::connect_with(&connection)
                .await
                .map_err(|e| self.fail(e))?;
            listener.listen("courier").await.map_err(|e| self.fail(e))?;
            let weak = Arc::downgrade(&self.inner);
            let redacted = self.inner.redacted.clone();
            let task = tokio::spawn(async move {
                let mut backoff = Backoff::reconnect();
                let mut lost = false;
                loop {
                    let notification = listener.recv().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match notification {
                        Ok(n) => {
                            let woken: Vec<Arc<Notify>> = if lost {
                                // Back after an outage: whatever was sent meanwhile is ready.
                                lost = false;
                                backoff.reset();
                                tracing::info!(database = %redacted, "courier LISTEN connection restored");
                                inner.notifiers.lock().values().cloned().collect()
                            } else {
                                inner
                                    .notifiers
                                    .lock()
                                    .get(n.payload())
                                    .cloned()
                                    .into_iter()
                                    .collect()
                            };
                            for notify in woken {
                                notify.notify_waiters();
                            }
                        }
                        Err(e) => {
                            drop(inner);
                            lost = true;
                            let pause = backoff.next_delay();
                            tracing::warn!(database = %redacted, error = %e, retry_in = ?pause, "courier LISTEN connection lost; receivers poll until it is back");
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            });
            *self.inner.listener.lock() = Some(Listener { task, connection });
        }
        Ok(())
    }
    /// MySQL/MariaDB: reads `max_allowed_packet`, so that a message too large for it fails
    /// with an error that names the limit (the server would only drop the connection).
    async fn read_limits(&self) -> Result<()> {
        #[cfg(feature = "mysql")]
        #[allow(irrefutable_let_patterns)] // with only the mysql feature
        if let Pool::MySql(pool) = &self.inner.pool {
            let max: i64 = sqlx::query("SELECT @@max_allowed_packet")
                .fetch_one(pool)
                .await
                .and_then(|row| {
                    row.try_get::<i64, _>(0).or_else(|_| {
                        row.try_get::<u64, _>(0)
                            .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                    })
                })
                .map_err(|e| self.fail(e))?;
            self.inner.max_packet.store(
                usize::try_from(max).unwrap_or(usize::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(())
    }

    /// The notifier of `queue` in this process.
    pub(crate) fn notifier(&self, queue: &str) -> Arc<Notify> {
        self.inner
            .notifiers
            .lock()
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }

    fn wake(&self, queue: &str) {
        let notify = self.inner.notifiers.lock().get(queue).cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// What an INSERT of `envelope` carries, generously: the payload, the ids, type and
    /// correlation id, and its share of the statement. An error if that alone does not fit the
    /// server's `max_allowed_packet` (MySQL).
    fn insert_size(&self, queue: &str, envelope: &MessageEnvelope) -> Result<usize> {
        let max_packet = self.max_packet();
        let size = envelope.message.len()
            + envelope.message_type.len()
            + envelope.correlation_id.as_ref().map_or(0, String::len)
            + queue.len()
            + 1024;
        if size > max_packet {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "the message ({} bytes of payload, about {size} with its metadata and statement) does not fit the server's max_allowed_packet of {max_packet} bytes",
                    envelope.message.len()
                ),
            )
            .with_queue(queue)
            .with_backend(self.backend()));
        }
        Ok(size)
    }

    fn max_packet(&self) -> usize {
        self.inner
            .max_packet
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Inserts `envelopes` in order, all or none: one multi-row `INSERT` per [`BATCH_ROWS`]
    /// rows (or per `max_allowed_packet` on MySQL), in one transaction when it takes several.
    pub(crate) async fn insert_batch(
        &self,
        queue: &str,
        envelopes: &[MessageEnvelope],
    ) -> Result<()> {
        // Chunks of rows that fit one statement.
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, envelope) in envelopes.iter().enumerate() {
            let size = self.insert_size(queue, envelope)?;
            if i > start && (i - start == BATCH_ROWS || bytes + size > self.max_packet()) {
                chunks.push(&envelopes[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        if start < envelopes.len() {
            chunks.push(&envelopes[start..]);
        }
        let dialect = self.dialect();
        let fail = |e| self.fail(e).with_queue(queue);
        on_pool!(self.inner, pool => {
            let mut tx = if chunks.len() > 1 { Some(pool.begin().await.map_err(fail)?) } else { None };
            for chunk in chunks {
                let sql = BatchStatements::new(dialect, chunk.len()).insert;
                let mut query = sqlx::query(&sql);
                for envelope in chunk {
                    query = query
                        .bind(queue)
                        .bind(envelope.message_id.as_str())
                        .bind(envelope.correlation_id.as_deref())
                        .bind(envelope.message_type.as_str())
                        .bind(envelope.sent_time.map(|t| t.timestamp_micros()))
                        .bind(&envelope.message[..]);
                }
                match tx.as_mut() {
                    Some(tx) => query.execute(&mut **tx).await.map_err(fail)?,
                    None => query.execute(pool).await.map_err(fail)?,
                };
            }
            if let Some(tx) = tx {
                tx.commit().await.map_err(fail)?;
            }
        });
        self.wake(queue);
        Ok(())
    }

    /// Locks up to `limit` (at most [`BATCH_ROWS`]) ready messages of `queue`, oldest first,
    /// until `locked_until` with `token`.
    pub(crate) async fn claim_batch(
        &self,
        queue: &str,
        now: i64,
        locked_until: i64,
        token: i64,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        let limit = limit.clamp(1, BATCH_ROWS);
        let dialect = self.dialect();
        let fail = |e| self.fail(e).with_queue(queue);
        let limit_bind = i64::try_from(limit).unwrap_or(1);
        let mut rows = on_pool!(self.inner, pool => {
            match dialect {
                Dialect::MySql => {
                    // Three steps (see `mysql_candidates`): the candidates' ids by a plain read,
                    // a locking read of some of them, the update of those.
                    let candidates = mysql_candidates(limit);
                    let lock = BatchStatements::new(dialect, candidates).claim;
                    let mut tx = pool.begin().await.map_err(fail)?;
                    let mut found = Vec::new();
                    for _ in 0..MYSQL_CLAIM_ROUNDS {
                        let ids: Vec<i64> = sqlx::query_scalar(&self.inner.sql.claim)
                            .bind(queue)
                            .bind(now)
                            .bind(i64::try_from(candidates).unwrap_or(i64::MAX))
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(fail)?;
                        if ids.is_empty() {
                            break;
                        }
                        let mut query = sqlx::query(&lock);
                        for id in ids.iter().copied().chain(std::iter::repeat(0)).take(candidates) {
                            query = query.bind(id);
                        }
                        found = query.bind(queue).bind(now).bind(limit_bind).fetch_all(&mut *tx).await.map_err(fail)?;
                        if !found.is_empty() {
                            break;
                        }
                        // Every candidate is being claimed by someone else: read again, past
                        // them once their claims are committed.
                    }
                    let mut rows = Vec::with_capacity(found.len());
                    for row in &found {
                        let mut stored = decode_row!(row);
                        stored.deliveries += 1;
                        stored.lock_token = Some(token);
                        rows.push(stored);
                    }
                    if !rows.is_empty() {
                        let update = BatchStatements::new(dialect, rows.len()).claim_update;
                        let mut query = sqlx::query(&update).bind(locked_until).bind(token);
                        for row in &rows {
                            query = query.bind(row.id);
                        }
                        query.execute(&mut *tx).await.map_err(fail)?;
                    }
                    tx.commit().await.map_err(fail)?;
                    rows
                }
                Dialect::Postgres | Dialect::Sqlite => {
                    let query = sqlx::query(&self.inner.sql.claim_batch);
                    let query = if dialect == Dialect::Postgres {
                        query.bind(queue).bind(now).bind(limit_bind).bind(locked_until).bind(token)
                    } else {
                        query.bind(locked_until).bind(token).bind(queue).bind(now).bind(limit_bind)
                    };
                    let found = query.fetch_all(pool).await.map_err(fail)?;
                    let mut rows = Vec::with_capacity(found.len());
                    for row in &found {
                        rows.push(decode_row!(row));
                    }
                    rows
                }
            }
        });
        // `RETURNING` gives no order.
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    /// Deletes the messages of `queue` locked with the given `(id, lock_token)`s; returns how
    /// many it deleted.
    pub(crate) async fn delete_batch(&self, queue: &str, locks: &[(i64, i64)]) -> Result<u64> {
        let dialect = self.dialect();
        let fail = |e| self.fail(e).with_queue(queue);
        let mut deleted = 0;
        for chunk in locks.chunks(BATCH_ROWS) {
            let sql = BatchStatements::new(dialect, chunk.len()).delete;
            deleted += on_pool!(self.inner, pool => {
                let mut query = sqlx::query(&sql);
                for (id, _) in chunk {
                    query = query.bind(*id);
                }
                query = query.bind(queue);
                for (id, token) in chunk {
                    query = query.bind(*id).bind(*token);
                }
                query.execute(pool).await.map_err(fail)?.rows_affected()
            });
        }
        Ok(deleted)
    }

    pub(crate) async fn insert(&self, queue: &str, envelope: &MessageEnvelope) -> Result<()> {
        self.insert_size(queue, envelope)?;
        let sql = &self.inner.sql;
        let sent = envelope.sent_time.map(|t| t.timestamp_micros());
        on_pool!(self.inner, pool => {
            sqlx::query(&sql.insert)
                .bind(queue)
                .bind(envelope.message_id.as_str())
                .bind(envelope.correlation_id.as_deref())
                .bind(envelope.message_type.as_str())
                .bind(sent)
                .bind(&envelope.message[..])
                .execute(pool)
                .await
                .map_err(|e| self.fail(e).with_queue(queue))?;
        });
        self.wake(queue);
        Ok(())
    }

    /// Locks the first ready message of `queue` until `locked_until` with `token`.
    pub(crate) async fn claim(
        &self,
        queue: &str,
        now: i64,
        locked_until: i64,
        token: i64,
    ) -> Result<Option<StoredRow>> {
        let sql = &self.inner.sql;
        let row = on_pool!(self.inner, pool => {
            if sql.dialect == Dialect::MySql {
                // The batch claim's three steps, for one row.
                self.claim_batch(queue, now, locked_until, token, 1).await?.pop()
            } else {
                let row = sqlx::query(&sql.claim)
                    .bind(locked_until)
                    .bind(token)
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| self.fail(e).with_queue(queue))?;
                match row {
                    Some(row) => Some(decode_row!(&row)),
                    None => None,
                }
            }
        });
        Ok(row)
    }

    /// Deletes a locked message; `false` if the lock is not held.
    pub(crate) async fn delete(&self, queue: &str, id: i64, token: i64) -> Result<bool> {
        self.update_locked(&self.inner.sql.delete, queue, id, token)
            .await
    }

    /// Makes a locked message ready again; `false` if the lock is not held.
    pub(crate) async fn release(&self, queue: &str, id: i64, token: i64) -> Result<bool> {
        let released = self
            .update_locked(&self.inner.sql.release, queue, id, token)
            .await?;
        if released {
            self.wake(queue);
        }
        Ok(released)
    }

    /// Gives back a claim no caller was handed (a cancelled receive), uncounting its
    /// delivery; `false` if the lock is not held.
    pub(crate) async fn unclaim(&self, queue: &str, id: i64, token: i64) -> Result<bool> {
        let released = self
            .update_locked(&self.inner.sql.unclaim, queue, id, token)
            .await?;
        if released {
            self.wake(queue);
        }
        Ok(released)
    }

    async fn update_locked(&self, sql: &str, queue: &str, id: i64, token: i64) -> Result<bool> {
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(sql).bind(id).bind(token).bind(queue).execute(pool).await.map_err(|e| self.fail(e).with_queue(queue))?.rows_affected()
        });
        Ok(affected > 0)
    }

    /// Extends a live lock to `locked_until`; `false` if the lock is not held or expired.
    pub(crate) async fn renew(
        &self,
        queue: &str,
        id: i64,
        token: i64,
        now: i64,
        locked_until: i64,
    ) -> Result<bool> {
        let sql = &self.inner.sql;
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(&sql.renew)
                .bind(locked_until)
                .bind(id)
                .bind(token)
                .bind(queue)
                .bind(now)
                .execute(pool)
                .await
                .map_err(|e| self.fail(e).with_queue(queue))?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Moves a message of `queue` locked with `token` to `to_queue`, ready; `false` if the lock
    /// is not held.
    pub(crate) async fn move_locked(
        &self,
        queue: &str,
        to_queue: &str,
        id: i64,
        token: i64,
    ) -> Result<bool> {
        let sql = &self.inner.sql;
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(&sql.move_locked)
                .bind(to_queue)
                .bind(id)
                .bind(token)
                .bind(queue)
                .execute(pool)
                .await
                .map_err(|e| self.fail(e).with_queue(queue))?
                .rows_affected()
        });
        if affected > 0 {
            self.wake(to_queue);
        }
        Ok(affected > 0)
    }

    pub(crate) async fn count(&self, queue: &str, now: i64) -> Result<usize> {
        let sql = &self.inner.sql;
        let count: i64 = on_pool!(self.inner, pool => {
            sqlx::query(&sql.count).bind(queue).bind(now).fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| self.fail(e).with_queue(queue))?
        });
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub(crate) async fn peek(&self, queue: &str, now: i64, limit: usize) -> Result<Vec<StoredRow>> {
        let sql = &self.inner.sql;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_pool!(self.inner, pool => {
            let rows = sqlx::query(&sql.peek).bind(queue).bind(now).bind(limit).fetch_all(pool).await.map_err(|e| self.fail(e).with_queue(queue))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decode_row!(row));
            }
            out
        });
        Ok(rows)
    }

    pub(crate) async fn clear(&self, queue: &str, now: i64) -> Result<u64> {
        let sql = &self.inner.sql;
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(&sql.clear).bind(queue).bind(now).execute(pool).await.map_err(|e| self.fail(e).with_queue(queue))?.rows_affected()
        });
        Ok(affected)
    }

    /// Runs one statement as it is: for tests and tools.
    #[doc(hidden)]
    pub async fn execute_raw(&self, statement: &str) -> Result<u64> {
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(statement).execute(pool).await.map_err(|e| self.fail(e))?.rows_affected()
        });
        Ok(affected)
    }
}

fn pool_options<DB: sqlx::Database>(
    default_max: u32,
    options: &StoreOptions,
) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(options.max_connections.unwrap_or(default_max))
        .acquire_timeout(options.connect_timeout)
}

/// Opens a pool after one direct connection: a pool that cannot connect only says that it
/// timed out, while the direct connection says why (refused, authentication...), at once.
async fn open_pool<DB: sqlx::Database>(
    pool_options: sqlx::pool::PoolOptions<DB>,
    connect: <DB::Connection as sqlx::Connection>::Options,
    timeout: Duration,
    backend: &'static str,
    redacted: &str,
) -> Result<sqlx::Pool<DB>> {
    use sqlx::{ConnectOptions as _, Connection as _};
    match tokio::time::timeout(timeout, connect.connect()).await {
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot connect to {redacted}: no answer within {timeout:?} (connect_timeout)"
                ),
            )
            .with_backend(backend));
        }
        Ok(Err(e)) => return Err(connection_error(e, backend, redacted)),
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
    }
    pool_options
        .connect_with(connect)
        .await
        .map_err(|e| connection_error(e, backend, redacted))
}

fn enabled(dialect: Dialect) -> bool {
    match dialect {
        Dialect::Sqlite => cfg!(feature = "sqlite"),
        Dialect::Postgres => cfg!(feature = "postgres"),
        Dialect::MySql => cfg!(feature = "mysql"),
    }
}

fn enabled_schemes() -> String {
    [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql]
        .into_iter()
        .filter(|d| enabled(*d))
        .map(Dialect::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A failed connect, saying why: refused, timed out, authentication failed, too many
/// connections, no such database.
fn connection_error(e: sqlx::Error, backend: &'static str, redacted: &str) -> Error {
    let (kind, cause) = match &e {
        sqlx::Error::Configuration(_) => (ErrorKind::Config, format!("invalid settings: {e}")),
        sqlx::Error::Io(io) => (
            ErrorKind::Connection,
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running, on this port?)".to_owned()
                }
                std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ => io.to_string(),
            },
        ),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let message = db.message();
            let cause = match code.as_ref() {
                "28P01" | "28000" => "authentication failed",
                "53300" | "08004" => "too many connections",
                "3D000" | "42000" if message.contains("database") => "no such database",
                _ if message.contains("Access denied") => "authentication failed",
                _ if message.contains("Too many connections") => "too many connections",
                _ => "",
            };
            let cause = if cause.is_empty() {
                message.to_owned()
            } else {
                format!("{cause}: {message}")
            };
            (ErrorKind::Connection, cause)
        }
        sqlx::Error::PoolTimedOut => (ErrorKind::Connection, "timed out".to_owned()),
        _ => (ErrorKind::Connection, e.to_string()),
    };
    Error::new(kind, format!("cannot connect to {redacted}: {cause}"))
        .with_backend(backend)
        .with_source(e)
}

/// Maps a sqlx error to a courier error of the right kind.
pub(crate) fn sql_error(e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorKind::Connection,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::InvalidMessage,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, e.to_string()).with_source(e)
}
