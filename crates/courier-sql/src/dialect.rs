//! The SQL each database speaks: the schema and every statement the queue issues.

/// The three databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or newer (RETURNING).
    Sqlite,
    /// PostgreSQL 9.5 or newer (SKIP LOCKED).
    Postgres,
    /// MySQL 8 or MariaDB 10.6 or newer (SKIP LOCKED).
    MySql,
}

impl Dialect {
    /// The dialect of a database URL's scheme (`sqlite`, `postgres`/`postgresql`,
    /// `mysql`/`mariadb`), whether or not its feature is enabled.
    pub fn from_url(url: &str) -> Option<Dialect> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// The backend name errors and logs give: `sqlite`, `postgres` or `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// The query parameters the database driver (sqlx) understands in this dialect's URLs;
    /// any other parameter that is not courier's is a typo, reported as a `Config` error.
    pub fn driver_parameters(self) -> &'static [&'static str] {
        match self {
            Dialect::Sqlite => &["mode", "cache", "immutable", "vfs"],
            Dialect::Postgres => &[
                "sslmode",
                "sslrootcert",
                "sslcert",
                "sslkey",
                "ssl-root-cert",
                "ssl-cert",
                "ssl-key",
                "statement-cache-capacity",
                "host",
                "hostaddr",
                "port",
                "dbname",
                "user",
                "password",
                "application_name",
                "options",
            ],
            Dialect::MySql => &[
                "ssl-mode",
                "ssl-ca",
                "ssl-cert",
                "ssl-key",
                "statement-cache-capacity",
                "socket",
                "timezone",
                "charset",
                "collation",
            ],
        }
    }
}

/// The version of the schema this crate writes; `open` refuses a database whose
/// `courier_schema` says more.
pub const SCHEMA_VERSION: i32 = 1;

/// The columns a claim or a peek reads, in order.
pub(crate) const ROW_COLUMNS: &str =
    "id, message_id, correlation_id, message_type, sent_time, payload, deliveries, lock_token";

const INSERT: &str = "INSERT INTO courier_messages (queue, message_id, correlation_id, message_type, sent_time, payload) \
                      VALUES (?, ?, ?, ?, ?, ?)";

/// The most rows one batch statement carries: 6 binds a row stays far below every dialect's
/// limit on binds (SQLite 32 766, PostgreSQL and MySQL 65 535). Longer batches take several
/// statements (in one transaction for inserts).
pub(crate) const BATCH_ROWS: usize = 250;

/// Every statement, written for one dialect (placeholders included).
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) dialect: Dialect,
    /// DDL, run in order on open.
    pub(crate) schema: Vec<String>,
    pub(crate) schema_version: String,
    pub(crate) insert_version: String,
    /// Binds: queue, message_id, correlation_id, message_type, sent_time, payload. On Postgres
    /// it also wakes LISTENers of channel `courier` with the queue's name.
    pub(crate) insert: String,
    /// Postgres and SQLite: one UPDATE … RETURNING. Binds: locked_until, lock_token, queue, now.
    /// MySQL: the first of a claim's three steps ([`mysql_candidates`]). Binds: queue, now,
    /// limit.
    pub(crate) claim: String,
    /// The claim of up to N rows ([`BatchStatements::claim`]), made once (not used on MySQL,
    /// whose claim depends on the number of candidates).
    pub(crate) claim_batch: String,
    /// Binds: id, lock_token, queue.
    pub(crate) delete: String,
    /// Binds: id, lock_token, queue.
    pub(crate) release: String,
    /// Gives back a claim no caller was handed (a cancelled receive): as `release`, and the
    /// claim's delivery is not counted. Binds: id, lock_token, queue.
    pub(crate) unclaim: String,
    /// Binds: locked_until, id, lock_token, queue, now.
    pub(crate) renew: String,
    /// Moves a row to another queue, ready and undelivered. Binds: new queue, id, lock_token,
    /// queue.
    pub(crate) move_locked: String,
    /// Binds: queue, now.
    pub(crate) count: String,
    /// Binds: queue, now, limit.
    pub(crate) peek: String,
    /// Binds: queue, now.
    pub(crate) clear: String,
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Self {
        // `key` is the indexed queue name (MySQL cannot index TEXT without a prefix length).
        let (id, bigint, int, key, text, blob) = match dialect {
            Dialect::Sqlite => (
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "INTEGER",
                "INTEGER",
                "TEXT",
                "TEXT",
                "BLOB",
            ),
            Dialect::Postgres => (
                "BIGSERIAL PRIMARY KEY",
                "BIGINT",
                "INTEGER",
                "TEXT",
                "TEXT",
                "BYTEA",
            ),
            Dialect::MySql => (
                "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
                "BIGINT",
                "INT",
                "VARCHAR(255)",
                "TEXT",
                "LONGBLOB",
            ),
        };
        let index_inline = if dialect == Dialect::MySql {
            ",\n  INDEX courier_messages_queue (queue, id)"
        } else {
            ""
        };
        let mut schema = vec![format!(
            "CREATE TABLE IF NOT EXISTS courier_messages (
  id {id},
  queue {key} NOT NULL,
  message_id {text} NOT NULL,
  correlation_id {text},
  message_type {text} NOT NULL,
  sent_time {bigint},
  payload {blob} NOT NULL,
  locked_until {bigint} NOT NULL DEFAULT 0,
  lock_token {bigint},
  deliveries {int} NOT NULL DEFAULT 0{index_inline}
)"
        )];
        if dialect != Dialect::MySql {
            schema.push(
                "CREATE INDEX IF NOT EXISTS courier_messages_queue ON courier_messages (queue, id)"
                    .into(),
            );
        }
        schema.push(format!(
            "CREATE TABLE IF NOT EXISTS courier_schema (version {int} NOT NULL)"
        ));

        let skip_locked = if dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        let ready = "queue = ? AND locked_until <= ?";
        let claim = match dialect {
            Dialect::MySql => {
                format!("SELECT id FROM courier_messages WHERE {ready} ORDER BY id LIMIT ?")
            }
            _ => format!(
                "UPDATE courier_messages SET locked_until = ?, lock_token = ?, deliveries = deliveries + 1 \
                 WHERE id = (SELECT id FROM courier_messages WHERE {ready} ORDER BY id LIMIT 1{skip_locked}) \
                 RETURNING {ROW_COLUMNS}"
            ),
        };
        let statements = Statements {
            dialect,
            schema,
            schema_version: "SELECT MAX(version) FROM courier_schema".into(),
            insert_version: "INSERT INTO courier_schema (version) VALUES (?)".into(),
            insert: if dialect == Dialect::Postgres {
                format!("WITH m AS ({INSERT} RETURNING queue) SELECT pg_notify('courier', queue) FROM m")
            } else {
                INSERT.into()
            },
            claim,
            claim_batch: BatchStatements::new(dialect, 1).claim,
            delete: "DELETE FROM courier_messages WHERE id = ? AND lock_token = ? AND queue = ?".into(),
            release: "UPDATE courier_messages SET locked_until = 0, lock_token = NULL \
                      WHERE id = ? AND lock_token = ? AND queue = ?"
                .into(),
            unclaim: "UPDATE courier_messages SET locked_until = 0, lock_token = NULL, \
                      deliveries = CASE WHEN deliveries > 0 THEN deliveries - 1 ELSE 0 END \
                      WHERE id = ? AND lock_token = ? AND queue = ?"
                .into(),
            renew: "UPDATE courier_messages SET locked_until = ? \
                    WHERE id = ? AND lock_token = ? AND queue = ? AND locked_until > ?"
                .into(),
            move_locked: "UPDATE courier_messages SET queue = ?, locked_until = 0, lock_token = NULL, deliveries = 0 \
                          WHERE id = ? AND lock_token = ? AND queue = ?"
                .into(),
            count: format!("SELECT COUNT(*) FROM courier_messages WHERE {ready}"),
            peek: format!("SELECT {ROW_COLUMNS} FROM courier_messages WHERE {ready} ORDER BY id LIMIT ?"),
            clear: format!("DELETE FROM courier_messages WHERE {ready}"),
        };
        statements.with_placeholders()
    }

    /// Postgres numbers its placeholders: `?` becomes `$1`, `$2`, ...
    fn with_placeholders(mut self) -> Self {
        if self.dialect != Dialect::Postgres {
            return self;
        }
        for sql in [
            &mut self.insert_version,
            &mut self.insert,
            &mut self.claim,
            &mut self.delete,
            &mut self.release,
            &mut self.unclaim,
            &mut self.renew,
            &mut self.move_locked,
            &mut self.count,
            &mut self.peek,
            &mut self.clear,
        ] {
            *sql = number_placeholders(sql);
        }
        self
    }
}

/// The statements of the batch calls, for `rows` rows (at most [`BATCH_ROWS`]): built per
/// batch size (the drivers cache each prepared statement).
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct BatchStatements {
    /// What `send_batch` issues: a multi-row `INSERT` (on PostgreSQL with one `pg_notify`).
    /// Binds: the six of `insert`, for each row.
    pub insert: String,
    /// What `receive_batch` issues: one claim of up to `limit` rows. PostgreSQL: binds queue,
    /// now, limit, locked_until, lock_token. SQLite: locked_until, lock_token, queue, now,
    /// limit. MySQL: the second of a claim's three steps (see [`mysql_candidates`]), a
    /// `SELECT … FOR UPDATE SKIP LOCKED` of up to `limit` of `rows` candidates; binds each
    /// candidate's id, queue, now, limit.
    pub claim: String,
    /// MySQL: the third step of a claim, the `UPDATE` of the rows it locked. Binds:
    /// locked_until, lock_token, then each row's id.
    pub claim_update: String,
    /// What `complete_batch` issues. Binds: each row's id, the queue, then each row's id and
    /// lock token.
    pub delete: String,
}

impl BatchStatements {
    /// The batch statements of `dialect` for `rows` rows.
    pub fn new(dialect: Dialect, rows: usize) -> Self {
        let rows = rows.max(1);
        let list = |one: &str| vec![one; rows].join(", ");
        let insert = format!(
            "INSERT INTO courier_messages (queue, message_id, correlation_id, message_type, sent_time, payload) VALUES {}",
            list("(?, ?, ?, ?, ?, ?)")
        );
        let ready = "queue = ? AND locked_until <= ?";
        let (insert, claim) = match dialect {
            Dialect::Postgres => (
                format!(
                    "WITH m AS ({insert} RETURNING queue) SELECT pg_notify('courier', queue) FROM m LIMIT 1"
                ),
                format!(
                    "WITH c AS (SELECT id FROM courier_messages WHERE {ready} ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) \
                     UPDATE courier_messages m SET locked_until = ?, lock_token = ?, deliveries = m.deliveries + 1 \
                     FROM c WHERE m.id = c.id RETURNING {}",
                    prefixed_columns("m.")
                ),
            ),
            Dialect::Sqlite => (
                insert,
                format!(
                    "UPDATE courier_messages SET locked_until = ?, lock_token = ?, deliveries = deliveries + 1 \
                     WHERE id IN (SELECT id FROM courier_messages WHERE {ready} ORDER BY id LIMIT ?) \
                     RETURNING {ROW_COLUMNS}"
                ),
            ),
            Dialect::MySql => (
                insert,
                format!(
                    "SELECT {ROW_COLUMNS} FROM courier_messages WHERE id IN ({}) AND {ready} \
                     ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
                    list("?")
                ),
            ),
        };
        let statements = BatchStatements {
            insert,
            claim,
            claim_update: format!(
                "UPDATE courier_messages SET locked_until = ?, lock_token = ?, deliveries = deliveries + 1 WHERE id IN ({})",
                list("?")
            ),
            // The id list lets every database find the rows by primary key; the pairs then
            // check each row's own lock token.
            delete: format!(
                "DELETE FROM courier_messages WHERE id IN ({}) AND queue = ? AND ({})",
                list("?"),
                vec!["(id = ? AND lock_token = ?)"; rows].join(" OR ")
            ),
        };
        if dialect == Dialect::Postgres {
            BatchStatements {
                insert: number_placeholders(&statements.insert),
                claim: number_placeholders(&statements.claim),
                claim_update: number_placeholders(&statements.claim_update),
                delete: number_placeholders(&statements.delete),
            }
        } else {
            statements
        }
    }
}

/// [`ROW_COLUMNS`], each prefixed with `prefix` (a table alias).
fn prefixed_columns(prefix: &str) -> String {
    ROW_COLUMNS
        .split(", ")
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many candidates a MySQL claim of up to `limit` rows reads first, and so how many ids
/// its locking read binds (padded with 0, which is never an id): a few more than `limit`, so
/// that rows another consumer is claiming at the same moment leave some to take, rounded up to
/// a power of two, so that few statements are prepared.
///
/// A MySQL claim is three steps in one transaction:
/// 1. a plain (consistent) read of the ids of the oldest ready rows ([`Statements`]'s claim);
/// 2. a locking read of up to `limit` of those, skipping rows other consumers hold
///    ([`BatchStatements::claim`]);
/// 3. the `UPDATE` of the rows it locked ([`BatchStatements::claim_update`]).
///
/// A locking read alone (`… ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`) could take rows out
/// of order: while it scans, a multi-row send may commit, so that it skips that send's first
/// rows (still locked) and takes its last ones. The plain read sees a send's rows all or none.
#[doc(hidden)]
pub fn mysql_candidates(limit: usize) -> usize {
    (limit + 16).next_power_of_two()
}

/// The statements a queue issues on the hot path, for benchmarks that issue the same ones
/// directly with sqlx. Binds as documented on the queue's internal statements: insert (queue,
/// message_id, correlation_id, message_type, sent_time µs, payload); claim (Postgres and
/// SQLite: locked_until, lock_token, queue, now; MySQL: the candidates' read, binds queue, now,
/// limit, then the [`BatchStatements`] of [`mysql_candidates`]); delete (id, lock_token,
/// queue).
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct HotStatements {
    /// What `send` issues.
    pub insert: String,
    /// What `receive` issues (on MySQL the first of three steps, see [`mysql_candidates`]).
    pub claim: String,
    /// What `complete` issues.
    pub delete: String,
}

/// The hot-path statements of `dialect`.
#[doc(hidden)]
pub fn hot_statements(dialect: Dialect) -> HotStatements {
    let s = Statements::new(dialect);
    HotStatements {
        insert: s.insert,
        claim: s.claim,
        delete: s.delete,
    }
}

/// `?` → `$1`, `$2`, ... (the statements here have no `?` inside string literals).
fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        let s = Statements::new(Dialect::Postgres);
        assert!(s.claim.contains("$1") && s.claim.contains("$4") && !s.claim.contains('?'));
        assert!(s.claim.contains("SKIP LOCKED"));
        assert!(s.insert.contains("pg_notify('courier', queue)") && s.insert.contains("$6"));
    }

    #[test]
    fn sqlite_has_no_skip_locked_and_mysql_claims_in_two_steps() {
        let sqlite = Statements::new(Dialect::Sqlite);
        assert!(!sqlite.claim.contains("SKIP LOCKED") && sqlite.claim.contains("RETURNING"));
        let mysql = Statements::new(Dialect::MySql);
        assert!(mysql.claim.starts_with("SELECT id") && !mysql.claim.contains("FOR UPDATE"));
        let lock = BatchStatements::new(Dialect::MySql, mysql_candidates(1)).claim;
        assert_eq!(lock.matches('?').count(), mysql_candidates(1) + 3);
        assert!(lock.ends_with("FOR UPDATE SKIP LOCKED"));
        assert_eq!(mysql_candidates(1), 32);
        assert_eq!(mysql_candidates(250), 512);
        assert_eq!(
            mysql.schema.len(),
            2,
            "MySQL declares its index inside CREATE TABLE"
        );
    }
}
