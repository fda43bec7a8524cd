//! [`SqlStore`]: a connection pool with the courier schema, shared by any number of queues.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::{Error, ErrorKind, MessageEnvelope, Result, redact_uri};
use parking_lot::Mutex;
use sqlx::Row as _;
use tokio::sync::Notify;

use crate::dialect::{Dialect, SCHEMA_VERSION, Statements};

const BACKEND: &str = "sql";

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
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().take() {
            task.abort();
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
    /// `sqlite::memory:`).
    pub max_connections: Option<u32>,
    /// How long to wait for a connection (default 10 s).
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

impl SqlStore {
    /// Connects to the database `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`,
    /// `mysql://...`) and creates or checks the schema.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a URL of another scheme or a schema newer than this crate,
    /// [`ErrorKind::Connection`] if the database cannot be reached.
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
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let config_error = |e: sqlx::Error| {
            Error::config(
                "uri",
                format!("{redacted:?} is not a valid database URL: {e}"),
            )
            .with_backend(BACKEND)
        };
        let pool = match scheme.as_str() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
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
                Pool::Sqlite(
                    pool_options
                        .connect_with(connect)
                        .await
                        .map_err(|e| connection_error(e, &redacted))?,
                )
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let connect =
                    sqlx::postgres::PgConnectOptions::from_str(url).map_err(config_error)?;
                Pool::Postgres(
                    pool_options(10, options)
                        .connect_with(connect)
                        .await
                        .map_err(|e| connection_error(e, &redacted))?,
                )
            }
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
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
                Pool::MySql(
                    pool_options
                        .connect_with(connect)
                        .await
                        .map_err(|e| connection_error(e, &redacted))?,
                )
            }
            other => {
                return Err(Error::config(
                    "uri",
                    format!(
                        "no SQL dialect for scheme `{other}` in {redacted:?} (enabled: {})",
                        enabled_schemes()
                    ),
                )
                .with_backend(BACKEND));
            }
        };
        let dialect = match &pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            Pool::MySql(_) => Dialect::MySql,
        };
        let store = SqlStore {
            inner: Arc::new(StoreInner {
                pool,
                sql: Statements::new(dialect),
                redacted,
                notifiers: Mutex::new(HashMap::new()),
                listener: Mutex::new(None),
            }),
        };
        store.migrate().await?;
        store.start_listener().await?;
        Ok(store)
    }

    /// The database's dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.sql.dialect
    }

    /// Closes the pool (queues built on this store then fail with `Connection` errors).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the pool is closed at once; dropping the future only stops waiting for
    /// connections in use to come back.
    pub async fn close(&self) {
        on_pool!(self.inner, pool => pool.close().await);
    }

    /// Creates the schema if it is missing; refuses a newer one.
    async fn migrate(&self) -> Result<()> {
        let sql = &self.inner.sql;
        let version: Option<i32> = on_pool!(self.inner, pool => {
            let mut tx = pool.begin().await.map_err(sql_error)?;
            if sql.dialect == Dialect::Postgres {
                // Concurrent CREATE TABLE IF NOT EXISTS can fail on Postgres: serialize them.
                sqlx::query("SELECT pg_advisory_xact_lock(7420100)").execute(&mut *tx).await.map_err(sql_error)?;
            }
            for ddl in &sql.schema {
                sqlx::query(ddl).execute(&mut *tx).await.map_err(sql_error)?;
            }
            let version: Option<i32> = sqlx::query(&sql.schema_version)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(sql_error)?;
            if version.is_none() {
                sqlx::query(&sql.insert_version).bind(SCHEMA_VERSION).execute(&mut *tx).await.map_err(sql_error)?;
            }
            tx.commit().await.map_err(sql_error)?;
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
            .with_backend(BACKEND)),
            _ => Ok(()),
        }
    }

    /// Postgres: forwards `NOTIFY courier, '<queue>'` from other processes to local receivers.
    async fn start_listener(&self) -> Result<()> {
        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns)] // with only the postgres feature
        if let Pool::Postgres(pool) = &self.inner.pool {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool)
                .await
                .map_err(sql_error)?;
            listener.listen("courier").await.map_err(sql_error)?;
            let weak = Arc::downgrade(&self.inner);
            let task = tokio::spawn(async move {
                loop {
                    let notification = listener.recv().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match notification {
                        Ok(n) => {
                            let notify = inner.notifiers.lock().get(n.payload()).cloned();
                            if let Some(notify) = notify {
                                notify.notify_waiters();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "courier LISTEN connection lost; receivers poll until it is back");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            });
            *self.inner.listener.lock() = Some(task);
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

    pub(crate) async fn insert(&self, queue: &str, envelope: &MessageEnvelope) -> Result<()> {
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
                .map_err(|e| sql_error(e).with_queue(queue))?;
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
                let mut tx = pool.begin().await.map_err(|e| sql_error(e).with_queue(queue))?;
                let row = sqlx::query(&sql.claim).bind(queue).bind(now).fetch_optional(&mut *tx).await.map_err(|e| sql_error(e).with_queue(queue))?;
                let row = match row {
                    Some(row) => {
                        let mut stored = decode_row!(&row);
                        sqlx::query(&sql.claim_update)
                            .bind(locked_until)
                            .bind(token)
                            .bind(stored.id)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| sql_error(e).with_queue(queue))?;
                        stored.deliveries += 1;
                        stored.lock_token = Some(token);
                        Some(stored)
                    }
                    None => None,
                };
                tx.commit().await.map_err(|e| sql_error(e).with_queue(queue))?;
                row
            } else {
                let row = sqlx::query(&sql.claim)
                    .bind(locked_until)
                    .bind(token)
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| sql_error(e).with_queue(queue))?;
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

    async fn update_locked(&self, sql: &str, queue: &str, id: i64, token: i64) -> Result<bool> {
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(sql).bind(id).bind(token).bind(queue).execute(pool).await.map_err(|e| sql_error(e).with_queue(queue))?.rows_affected()
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
                .map_err(|e| sql_error(e).with_queue(queue))?
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
                .map_err(|e| sql_error(e).with_queue(queue))?
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
            sqlx::query(&sql.count).bind(queue).bind(now).fetch_one(pool).await.and_then(|r| r.try_get(0)).map_err(|e| sql_error(e).with_queue(queue))?
        });
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub(crate) async fn peek(&self, queue: &str, now: i64, limit: usize) -> Result<Vec<StoredRow>> {
        let sql = &self.inner.sql;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = on_pool!(self.inner, pool => {
            let rows = sqlx::query(&sql.peek).bind(queue).bind(now).bind(limit).fetch_all(pool).await.map_err(|e| sql_error(e).with_queue(queue))?;
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
            sqlx::query(&sql.clear).bind(queue).bind(now).execute(pool).await.map_err(|e| sql_error(e).with_queue(queue))?.rows_affected()
        });
        Ok(affected)
    }

    /// Runs one statement as it is: for tests and tools.
    #[doc(hidden)]
    pub async fn execute_raw(&self, statement: &str) -> Result<u64> {
        let affected = on_pool!(self.inner, pool => {
            sqlx::query(statement).execute(pool).await.map_err(sql_error)?.rows_affected()
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

fn enabled_schemes() -> String {
    let mut schemes = Vec::new();
    if cfg!(feature = "sqlite") {
        schemes.push("sqlite");
    }
    if cfg!(feature = "postgres") {
        schemes.push("postgres");
    }
    if cfg!(feature = "mysql") {
        schemes.push("mysql");
    }
    schemes.join(", ")
}

fn connection_error(e: sqlx::Error, redacted: &str) -> Error {
    let kind = match &e {
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        sqlx::Error::Database(_) => ErrorKind::Backend,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("cannot connect to {redacted:?}: {e}"))
        .with_backend(BACKEND)
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
    Error::new(kind, e.to_string())
        .with_backend(BACKEND)
        .with_source(e)
}
