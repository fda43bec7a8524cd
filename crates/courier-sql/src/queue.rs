//! [`SqlMessageQueue`]: the `MessageQueue` over a [`SqlStore`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{
    LockToken, OPTION_KEYS, QueueBase, check_known_options, deadline_after,
};
use courier_core::{
    ConfigParams, Error, MessageEnvelope, MessageQueue, MessageReceiver, MessagingCapabilities,
    Result,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::Dialect;
use crate::store::{SharedKey, SqlStore, StoreOptions, StoredRow};

/// The options an SQL queue reads besides the shared ones (without the `options.` prefix).
pub(crate) const SQL_OPTION_KEYS: [&str; 2] = ["poll_interval", "max_connections"];

/// What a SQL queue's lock token holds: the row, the claim's random token and which queue
/// claimed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SqlLock {
    id: i64,
    token: i64,
    /// [`queue_key`] of the queue's name.
    queue: u64,
    /// The lock's deadline as claimed, in microseconds since the Unix epoch.
    until: i64,
}

/// Where a queue gets its store: one given to it, or the process-wide store of its URL (made
/// on the first `open` of any queue on that database, closed with the last `close`).
enum Source {
    Given(SqlStore),
    Url { url: String, options: StoreOptions },
}

/// A durable [`MessageQueue`] in a SQL database: SQLite, PostgreSQL or MySQL/MariaDB.
///
/// Messages are rows of `courier_messages` (see the [crate docs](crate) for the schema); a
/// receive claims the oldest ready row of the queue by setting its lock deadline and a random
/// lock token (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL, one `UPDATE … RETURNING` on
/// SQLite), so competing consumers in any number of processes never get the same message while
/// its lock holds. Nothing runs in the background: an expired lock is simply claimable again.
/// Dead letters move to the queue `<name>.dlq` in the same table.
///
/// Waiting receivers wake at once for messages sent through the same [`SqlStore`], on
/// PostgreSQL also for messages sent by other processes (`LISTEN`/`NOTIFY`), and otherwise
/// poll every `options.poll_interval` (default 200 ms, 1 s on PostgreSQL), which also bounds
/// every wait: correctness never depends on a notification.
///
/// # Cancel safety
///
/// `receive` runs its claim in a task of its own: if the `receive` future is dropped, a
/// message the claim took is kept by this queue handle and returned by its next `receive`;
/// one that no `receive` takes within half the lock timeout (two seconds at most) is released,
/// so that it is redelivered at once.
pub struct SqlMessageQueue {
    base: Arc<QueueBase>,
    source: Source,
    store: Mutex<Option<SqlStore>>,
    dead_letter_queue: String,
    poll_interval: Duration,
    /// Messages claimed for `receive` calls that were cancelled (see [`Keeper`]).
    stash: Arc<Mutex<VecDeque<MessageEnvelope>>>,
    /// Claims in flight: `close` waits for them before it gives the kept claims back. Closed
    /// from the start, so that `wait` returns whenever none runs.
    claims: TaskTracker,
    /// Serializes `open` and `close`, so that each counts once on the shared store; holds the
    /// shared store's registry key while open.
    lifecycle: tokio::sync::Mutex<Option<SharedKey>>,
}

impl SqlMessageQueue {
    /// A closed queue on `store`, configured by `config` (`name` or `queue`, `options.*`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the invalid key.
    pub fn with_store(store: SqlStore, config: &ConfigParams) -> Result<Self> {
        let backend = store.backend();
        Self::new(Source::Given(store), backend, config)
    }

    /// A closed queue on the database `connection.uri` names (or `connection.protocol`,
    /// `host`, `port`, `database` and `credential.*`): on `open` it joins the process-wide
    /// store of that database, shared with every other queue on it, and the last `close` closes
    /// the store. Queue options may also be given as the URI's query parameters
    /// (`sqlite:///x.db?lock_timeout=300`); `options.*` keys win over them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the invalid, unknown or
    /// missing key.
    pub fn with_config(config: &ConfigParams) -> Result<Self> {
        let config = with_uri_options(config)?;
        let url = database_url(&config)?;
        let dialect = Dialect::from_url(&url).ok_or_else(|| {
            Error::config(
                "connection.uri",
                "is not a sqlite://, postgres:// or mysql:// URL",
            )
        })?;
        let options = StoreOptions {
            max_connections: config
                .get_as_u64("options.max_connections")?
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            connect_timeout: courier_core::QueueOptions::from_config(&config)?.connect_timeout,
        };
        Self::new(Source::Url { url, options }, dialect.name(), &config)
    }

    fn new(source: Source, backend: &'static str, config: &ConfigParams) -> Result<Self> {
        let mut known: Vec<&str> = OPTION_KEYS.to_vec();
        known.extend(SQL_OPTION_KEYS);
        check_known_options(config, &known).map_err(|e| e.with_backend(backend))?;
        let base = QueueBase::from_config(backend, config, None)?;
        check_name_fits(backend, base.name(), "name")?;
        check_name_fits(
            backend,
            &base.options().dead_letter_queue_name(base.name()),
            "options.dead_letter_queue",
        )?;
        let default_poll = if backend == Dialect::Postgres.name() {
            1000
        } else {
            200
        };
        let poll_interval = config
            .get_as_duration_ms("options.poll_interval")?
            .unwrap_or(Duration::from_millis(default_poll))
            .max(Duration::from_millis(1));
        let dead_letter_queue = base.options().dead_letter_queue_name(base.name());
        Ok(SqlMessageQueue {
            store: Mutex::new(match &source {
                Source::Given(store) => Some(store.clone()),
                Source::Url { .. } => None,
            }),
            base: Arc::new(base),
            source,
            dead_letter_queue,
            poll_interval,
            stash: Arc::new(Mutex::new(VecDeque::new())),
            claims: {
                let claims = TaskTracker::new();
                claims.close();
                claims
            },
            lifecycle: tokio::sync::Mutex::new(None),
        })
    }

    /// Creates a closed queue from a URI's configuration (see [`config_from_uri`]): what the
    /// registered schemes call.
    ///
    /// [`config_from_uri`]: courier_core::backend::config_from_uri
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](courier_core::ErrorKind::Config) for an invalid option or a
    /// missing `queue` parameter, or a parameter that is neither courier's nor one its sqlx
    /// driver knows ([`Dialect::driver_parameters`]).
    pub fn from_uri_config(config: &ConfigParams) -> Result<Self> {
        if config.get("queue").or_else(|| config.get("name")).is_none() {
            return Err(Error::config(
                "queue",
                "the URI needs a `queue=NAME` parameter",
            ));
        }
        Self::with_config(config)
    }

    /// The name of the dead-letter queue, in the same store.
    pub fn dead_letter_queue_name(&self) -> &str {
        &self.dead_letter_queue
    }

    fn store(&self) -> Result<SqlStore> {
        self.base.check_open()?;
        self.store
            .lock()
            .clone()
            .ok_or_else(|| Error::not_opened(self.base.name()).with_backend(self.base.backend()))
    }

    fn lock_of(message: &MessageEnvelope) -> Option<SqlLock> {
        message.lock_token()?.downcast_ref::<SqlLock>().copied()
    }

    /// Releases our claim of `message` (its lock token settles) through `op`.
    async fn settle<F, Fut>(&self, message: &MessageEnvelope, op: F) -> Result<bool>
    where
        F: FnOnce(SqlStore, SqlLock) -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let store = self.store()?;
        let Some(lock) = Self::lock_of(message) else {
            return Ok(false);
        };
        let done = op(store, lock).await?;
        if done {
            if let Some(token) = message.lock_token() {
                token.settle();
            }
        }
        Ok(done)
    }

    /// Up to `max` messages cancelled receives kept, whose locks are still fresh. Kept claims
    /// about to expire (someone else may claim them any moment) are given back uncounted
    /// instead.
    async fn take_stashed(&self, store: &SqlStore, max: usize) -> Vec<MessageEnvelope> {
        let margin = micros(self.base.options().lock_timeout / 10).min(1_000_000);
        let now = now_micros();
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut stash = self.stash.lock();
            while fresh.len() < max {
                let Some(message) = stash.pop_front() else {
                    break;
                };
                match Self::lock_of(&message) {
                    Some(lock) if lock.until.saturating_sub(now) > margin => fresh.push(message),
                    Some(lock) => stale.push(lock),
                    None => {}
                }
            }
        }
        if !stale.is_empty() {
            // In a task: a receive dropped meanwhile must not lose the fresh ones it holds.
            let (store, queue) = (store.clone(), self.name().to_owned());
            self.claims.spawn(async move {
                for lock in stale {
                    let _ = store.unclaim(&queue, lock.id, lock.token).await;
                }
            });
        }
        fresh
    }

    /// One claim of up to `max` messages, in a task of its own so that a cancelled receive
    /// loses nothing.
    async fn claim_once(&self, store: &SqlStore, max: usize) -> Result<Vec<MessageEnvelope>> {
        let (tx, rx) = oneshot::channel();
        let keeper = Keeper {
            stash: self.stash.clone(),
            store: store.clone(),
            queue: self.base.name().to_owned(),
            grace: (self.base.options().lock_timeout / 2).min(Duration::from_secs(2)),
        };
        let task = {
            let keeper = keeper.clone();
            let base = self.base.clone();
            let dead_letter_queue = self.dead_letter_queue.clone();
            async move {
                let result = claim(&keeper.store, &base, &dead_letter_queue, max).await;
                if let Err(Ok(messages)) = tx.send(result) {
                    for message in messages {
                        keeper.keep(message);
                    }
                }
            }
        };
        self.claims.spawn(task);
        let mut guard = StashOnDrop {
            rx,
            done: false,
            keeper,
        };
        let result = (&mut guard.rx).await;
        guard.done = true;
        result.unwrap_or_else(|_| {
            Err(
                Error::new(courier_core::ErrorKind::Backend, "the claim task failed")
                    .with_backend(self.base.backend()),
            )
        })
    }
}

/// Keeps messages claimed for receives that were cancelled: the next `receive` of the handle
/// returns them; one not taken within `grace` is released, so it is redelivered at once
/// rather than when its lock expires.
#[derive(Clone)]
struct Keeper {
    stash: Arc<Mutex<VecDeque<MessageEnvelope>>>,
    store: SqlStore,
    queue: String,
    grace: Duration,
}

impl Keeper {
    fn keep(&self, message: MessageEnvelope) {
        let Some(lock) = SqlMessageQueue::lock_of(&message) else {
            return;
        };
        self.stash.lock().push_back(message);
        // Outside a runtime (a runtime shutting down) the lock simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let keeper = self.clone();
            runtime.spawn(async move {
                tokio::time::sleep(keeper.grace).await;
                let unclaimed = {
                    let mut stash = keeper.stash.lock();
                    let before = stash.len();
                    stash.retain(|m| SqlMessageQueue::lock_of(m) != Some(lock));
                    stash.len() < before
                };
                if unclaimed {
                    // Nobody was given it: not a delivery.
                    let _ = keeper
                        .store
                        .unclaim(&keeper.queue, lock.id, lock.token)
                        .await;
                }
            });
        }
    }
}

/// Keeps the claimed messages that arrive after their `receive` was dropped.
struct StashOnDrop {
    rx: oneshot::Receiver<Result<Vec<MessageEnvelope>>>,
    done: bool,
    keeper: Keeper,
}

impl Drop for StashOnDrop {
    fn drop(&mut self) {
        if !self.done {
            // Closed first: from here on the claim task keeps what it gets itself.
            self.rx.close();
            if let Ok(Ok(messages)) = self.rx.try_recv() {
                for message in messages {
                    self.keeper.keep(message);
                }
            }
        }
    }
}

/// Claims the next messages of the queue, up to `max` (one claim statement): rows past
/// `max_deliveries` and rows that do not decode go to the dead-letter queue on the way. Empty
/// when the queue has no ready message.
async fn claim(
    store: &SqlStore,
    base: &QueueBase,
    dead_letter_queue: &str,
    max: usize,
) -> Result<Vec<MessageEnvelope>> {
    let queue = base.name();
    let lock_timeout = base.options().lock_timeout;
    loop {
        let now = now_micros();
        let until = now.saturating_add(i64::try_from(lock_timeout.as_micros()).unwrap_or(i64::MAX));
        let token = rand::random::<i64>();
        let rows = if max == 1 {
            store
                .claim(queue, now, until, token)
                .await?
                .into_iter()
                .collect()
        } else {
            store.claim_batch(queue, now, until, token, max).await?
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        // A row that cannot be moved to the dead-letter queue stays claimed and comes back; the
        // error is returned only when nothing else was claimed.
        let mut failed = None;
        for row in rows {
            let StoredRow {
                id,
                deliveries,
                envelope,
                ..
            } = row;
            let deliveries = u32::try_from(deliveries).unwrap_or(0);
            match envelope {
                Ok(mut envelope) if !base.is_spent(deliveries.saturating_sub(1)) => {
                    envelope.set_delivery_count(deliveries);
                    envelope.set_lock_token(Some(LockToken::new(SqlLock {
                        id,
                        token,
                        queue: queue_key(queue),
                        until,
                    })));
                    claimed.push(envelope);
                }
                Ok(envelope) => {
                    // Its lock expired after its last allowed delivery.
                    match store.move_locked(queue, dead_letter_queue, id, token).await {
                        Ok(true) => base.dead_lettered(&envelope),
                        Ok(false) => {}
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                Err(why) => {
                    tracing::error!(queue, row = id, error = %why, "Moving a message that does not decode to the dead-letter queue");
                    if let Err(e) = store.move_locked(queue, dead_letter_queue, id, token).await {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = failed.filter(|_| claimed.is_empty()) {
            return Err(e);
        }
        if !claimed.is_empty() {
            return Ok(claimed);
        }
    }
}

/// A queue name as its locks record it, to tell this queue's locks from others'.
fn queue_key(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// MySQL/MariaDB keep queue names in a `VARCHAR(255)` column: a name, or its dead-letter
/// queue's name (`<name>.dlq` by default), that does not fit is refused when the queue is made,
/// not at its first send (or at a dead letter that could then never be written).
fn check_name_fits(backend: &'static str, name: &str, key: &str) -> Result<()> {
    const MYSQL_NAME_LIMIT: usize = 255;
    if backend == Dialect::MySql.name() && name.chars().count() > MYSQL_NAME_LIMIT {
        return Err(Error::config(
            key,
            format!(
                "the queue name {name:?} is {} characters long; MySQL/MariaDB queues take at most {MYSQL_NAME_LIMIT}, the dead-letter queue's name (`<name>.dlq`, or set `options.dead_letter_queue`) included",
                name.chars().count()
            ),
        )
        .with_backend(backend));
    }
    Ok(())
}

/// `config` with the queue options written in `connection.uri`'s query (`lock_timeout=300`)
/// as `options.*` keys (those already set win), and without the driver's parameters that
/// [`config_from_uri`](courier_core::backend::config_from_uri) put under `options.` (they stay
/// in the database URL). A parameter that is neither courier's nor the driver's then is an
/// unknown option, which [`check_known_options`] reports.
fn with_uri_options(config: &ConfigParams) -> Result<ConfigParams> {
    let mut config = config.clone();
    let Some(uri) = config.get("connection.uri").map(str::to_owned) else {
        return Ok(config);
    };
    let driver = Dialect::from_url(&uri).map_or(&[][..], Dialect::driver_parameters);
    for key in driver {
        config.remove(&format!("options.{key}"));
    }
    if let Ok(url) = url::Url::parse(&uri) {
        for (k, v) in url.query_pairs() {
            let key = match k.as_ref() {
                "queue" | "name" => k.clone().into_owned(),
                k if driver.contains(&k) => continue,
                k => format!("options.{k}"),
            };
            if !config.contains_key(&key) {
                config.set(key, v.into_owned());
            }
        }
    }
    Ok(config)
}

/// The database URL of `config`: `connection.uri` without courier's own query parameters.
fn database_url(config: &ConfigParams) -> Result<String> {
    let Some(uri) = config.get("connection.uri") else {
        return url_from_parts(config);
    };
    courier_core::backend::check_userinfo(uri)?;
    let Ok(mut url) = url::Url::parse(uri) else {
        // `sqlite::memory:` and other forms the url crate cannot take apart go as they are.
        return Ok(uri.to_owned());
    };
    let driver = Dialect::from_url(uri).map_or(&[][..], Dialect::driver_parameters);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| driver.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(url.to_string())
}

/// The database URL from `connection.protocol|host|port|database` and
/// `credential.username|password`, for configurations without `connection.uri`.
fn url_from_parts(config: &ConfigParams) -> Result<String> {
    let protocol = config.get("connection.protocol").ok_or_else(|| {
        Error::config(
            "connection.uri",
            "an SQL queue needs `connection.uri`, or `connection.protocol` with the host and database",
        )
    })?;
    let database = config
        .get("connection.database")
        .or_else(|| config.get("connection.path"))
        .unwrap_or_default();
    if protocol.eq_ignore_ascii_case("sqlite") {
        if database.is_empty() {
            return Err(Error::config(
                "connection.database",
                "SQLite needs the database file",
            ));
        }
        return Ok(format!("sqlite://{database}"));
    }
    let mut url = url::Url::parse(&format!("{protocol}://localhost"))
        .map_err(|_| Error::config("connection.protocol", "is not a URI scheme"))?;
    let host = config.get("connection.host").unwrap_or("localhost");
    url.set_host(Some(host))
        .map_err(|_| Error::config("connection.host", "is not a host name"))?;
    let port = config.get_as_u64("connection.port")?;
    if let Some(port) = port {
        let port =
            u16::try_from(port).map_err(|_| Error::config("connection.port", "is not a port"))?;
        let _ = url.set_port(Some(port));
    }
    if let Some(user) = config.get("credential.username") {
        let _ = url.set_username(user);
    }
    if let Some(password) = config.get("credential.password") {
        let _ = url.set_password(Some(password));
    }
    url.set_path(database);
    Ok(url.to_string())
}

impl fmt::Debug for SqlMessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlMessageQueue")
            .field("base", &self.base)
            .field("store", &*self.store.lock())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageQueue for SqlMessageQueue {
    fn name(&self) -> &str {
        self.base.name()
    }

    fn capabilities(&self) -> MessagingCapabilities {
        MessagingCapabilities::all()
    }

    fn is_open(&self) -> bool {
        self.base.is_open()
    }

    async fn open(&self, correlation_id: Option<&str>) -> Result<()> {
        let mut shared = self.lifecycle.lock().await;
        if self.is_open() {
            return Ok(());
        }
        if let Some(left) = shared.take() {
            // A `close` cancelled after it marked the queue closed: give that hold back first.
            SqlStore::release_shared(left).await;
        }
        if let Source::Url { url, options } = &self.source {
            let (store, key) = SqlStore::acquire_shared(url, options)
                .await
                .map_err(|e| e.with_queue(self.name()))?;
            *self.store.lock() = Some(store);
            *shared = Some(key);
        }
        self.base.set_open(true);
        self.base.changed(correlation_id, "Opened");
        Ok(())
    }

    async fn close(&self, correlation_id: Option<&str>) -> Result<()> {
        let mut shared = self.lifecycle.lock().await;
        if !self.is_open() {
            return Ok(());
        }
        self.base.stop_listeners().await;
        self.base.set_open(false);
        // Claims still running for receives that were dropped (a listen loop stopping, a
        // `select!`) land in the stash; wait for them, then give every kept claim back
        // uncounted: nobody was handed those messages.
        let settle = self.base.options().lock_timeout.min(Duration::from_secs(5));
        if tokio::time::timeout(settle, self.claims.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                queue = self.name(),
                "claims still running at close; their messages come back when their locks expire"
            );
        }
        let kept: Vec<_> = self.stash.lock().drain(..).collect();
        let store = self.store.lock().clone();
        if let Some(store) = &store {
            for message in kept {
                if let Some(lock) = Self::lock_of(&message) {
                    let _ = store.unclaim(self.name(), lock.id, lock.token).await;
                }
            }
        }
        if let Some(held) = shared.take() {
            self.store.lock().take();
            SqlStore::release_shared(held).await;
        }
        self.base.changed(correlation_id, "Closed");
        Ok(())
    }

    async fn read_message_count(&self) -> Result<usize> {
        self.store()?.count(self.name(), now_micros()).await
    }

    async fn send(&self, correlation_id: Option<&str>, envelope: MessageEnvelope) -> Result<()> {
        let store = self.store()?;
        let envelope = self.base.prepare_send(envelope)?;
        store.insert(self.name(), &envelope).await?;
        self.base.sent(correlation_id, &envelope);
        Ok(())
    }

    async fn send_batch(
        &self,
        correlation_id: Option<&str>,
        envelopes: Vec<MessageEnvelope>,
    ) -> Result<()> {
        let store = self.store()?;
        let envelopes = self.base.prepare_batch(envelopes)?;
        if envelopes.is_empty() {
            return Ok(());
        }
        store.insert_batch(self.name(), &envelopes).await?;
        self.base.sent_batch(correlation_id, &envelopes);
        Ok(())
    }

    async fn peek(&self, correlation_id: Option<&str>) -> Result<Option<MessageEnvelope>> {
        Ok(self.peek_batch(correlation_id, 1).await?.into_iter().next())
    }

    async fn peek_batch(
        &self,
        correlation_id: Option<&str>,
        message_count: usize,
    ) -> Result<Vec<MessageEnvelope>> {
        let rows = self
            .store()?
            .peek(self.name(), now_micros(), message_count)
            .await?;
        let messages: Vec<_> = rows.into_iter().filter_map(|r| r.envelope.ok()).collect();
        self.base.peeked(correlation_id, messages.len());
        Ok(messages)
    }

    async fn receive(
        &self,
        correlation_id: Option<&str>,
        wait_timeout: Duration,
    ) -> Result<Option<MessageEnvelope>> {
        let mut taken = self.receive_batch(correlation_id, 1, wait_timeout).await?;
        Ok(taken.pop())
    }

    async fn receive_batch(
        &self,
        correlation_id: Option<&str>,
        max: usize,
        wait_timeout: Duration,
    ) -> Result<Vec<MessageEnvelope>> {
        let store = self.store()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let received = |messages: Vec<MessageEnvelope>| {
            for message in &messages {
                self.base.received(correlation_id, message);
            }
            messages
        };
        let stashed = self.take_stashed(&store, max).await;
        if !stashed.is_empty() {
            return Ok(received(stashed));
        }
        let deadline = deadline_after(tokio::time::Instant::now(), wait_timeout);
        let notify = store.notifier(self.name());
        loop {
            let arrived = notify.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let claimed = self.claim_once(&store, max).await?;
            if !claimed.is_empty() {
                return Ok(received(claimed));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake = deadline.min(deadline_after(now, self.poll_interval));
            tokio::select! {
                () = &mut arrived => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            self.base.check_open()?;
        }
    }

    async fn renew_lock(&self, message: &MessageEnvelope, lock_timeout: Duration) -> Result<()> {
        let store = self.store()?;
        if let Some(lock) = Self::lock_of(message) {
            let now = now_micros();
            store
                .renew(
                    self.name(),
                    lock.id,
                    lock.token,
                    now,
                    now.saturating_add(micros(lock_timeout)),
                )
                .await?;
        }
        Ok(())
    }

    async fn complete(&self, message: &MessageEnvelope) -> Result<()> {
        let queue = self.name();
        self.settle(message, |store, lock| async move {
            store.delete(queue, lock.id, lock.token).await
        })
        .await?;
        Ok(())
    }

    async fn complete_batch(&self, messages: &[MessageEnvelope]) -> Result<()> {
        let store = self.store()?;
        let ours = queue_key(self.name());
        let locked: Vec<_> = messages
            .iter()
            .filter_map(|m| Some((m, Self::lock_of(m).filter(|lock| lock.queue == ours)?)))
            .collect();
        if locked.is_empty() {
            return Ok(());
        }
        let locks: Vec<_> = locked.iter().map(|(_, l)| (l.id, l.token)).collect();
        store.delete_batch(self.name(), &locks).await?;
        // Each of this queue's locks is now gone: deleted here, or released before (expired
        // and claimed again, with another token). Other queues' locks are left alone.
        for (message, _) in locked {
            if let Some(token) = message.lock_token() {
                token.settle();
            }
        }
        Ok(())
    }

    async fn abandon(&self, message: &MessageEnvelope) -> Result<()> {
        let queue = self.name();
        let dead_letter_queue = self.dead_letter_queue.as_str();
        let to_dead = self.base.is_spent(message.delivery_count());
        let moved = self
            .settle(message, |store, lock| async move {
                if to_dead {
                    store
                        .move_locked(queue, dead_letter_queue, lock.id, lock.token)
                        .await
                } else {
                    store.release(queue, lock.id, lock.token).await
                }
            })
            .await?;
        if moved && to_dead {
            self.base.dead_lettered(message);
        }
        Ok(())
    }

    async fn move_to_dead_letter(&self, message: &MessageEnvelope) -> Result<()> {
        let queue = self.name();
        let dead_letter_queue = self.dead_letter_queue.as_str();
        let moved = self
            .settle(message, |store, lock| async move {
                store
                    .move_locked(queue, dead_letter_queue, lock.id, lock.token)
                    .await
            })
            .await?;
        if moved {
            self.base.dead_lettered(message);
        }
        Ok(())
    }

    async fn listen(
        &self,
        correlation_id: Option<&str>,
        receiver: Arc<dyn MessageReceiver>,
    ) -> Result<()> {
        self.base.listen(self, correlation_id, receiver).await
    }

    fn end_listen(&self, _correlation_id: Option<&str>) {
        self.base.end_listen();
    }

    fn base(&self) -> Option<&QueueBase> {
        Some(&self.base)
    }

    async fn clear(&self, correlation_id: Option<&str>) -> Result<()> {
        self.store()?.clear(self.name(), now_micros()).await?;
        self.base.changed(correlation_id, "Cleared");
        Ok(())
    }
}
