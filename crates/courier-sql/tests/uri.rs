//! Queues made from URIs and config, and bad input: invalid URIs and options, unreachable
//! databases, a schema from a newer courier, rows that do not decode.

mod support;

use std::time::Duration;

use courier_core::{
    ConfigParams, ErrorKind, MessageEnvelope, MessageQueue, connect, create_from_uri,
};
use courier_sql::{SqlMessageQueue, SqlStore};
use support::SqlHarness;

fn temp_sqlite() -> (String, impl Drop) {
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0));
            }
        }
    }
    let path =
        std::env::temp_dir().join(format!("courier-uri-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    (format!("sqlite://{path}"), Remove(path))
}

#[tokio::test]
async fn connect_by_uri_sends_and_receives_on_every_dialect() {
    courier_sql::register();
    let (sqlite, _file) = temp_sqlite();
    let mut uris = vec![format!(
        "{sqlite}?queue=uri-test&lock_timeout=5000&poll_interval=20"
    )];
    for harness in [SqlHarness::postgres().await, SqlHarness::mysql().await]
        .into_iter()
        .flatten()
    {
        let name = format!("uri-{}", uuid::Uuid::new_v4().simple());
        uris.push(harness.queue_uri(&name, "max_deliveries=2"));
    }
    for uri in uris {
        let queue = connect(&uri).await.unwrap_or_else(|e| panic!("{uri}: {e}"));
        queue
            .send(
                Some("c"),
                MessageEnvelope::new(Some("c"), "t", "over a URI"),
            )
            .await
            .unwrap();
        let got = queue
            .receive(None, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.message_as_string().unwrap(), "over a URI");
        queue.complete(&got).await.unwrap();
        queue.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn config_keys_instead_of_a_uri_and_driver_parameters_in_a_uri() {
    let Some(harness) = SqlHarness::postgres().await else {
        return;
    };
    let name = format!("parts-{}", uuid::Uuid::new_v4().simple());
    let config = ConfigParams::from_tuples([
        ("name", name.as_str()),
        ("connection.protocol", "postgres"),
        ("connection.host", "127.0.0.1"),
        ("connection.port", "5432"),
        ("connection.database", "test"),
        ("credential.username", "postgres"),
    ]);
    let queue = SqlMessageQueue::with_config(&config).unwrap();
    queue.open(None).await.unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "t", "parts"))
        .await
        .unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 1);
    queue.clear(None).await.unwrap();
    // A parameter that is not courier's goes to the driver.
    courier_sql::register();
    let with_driver_param = connect(&harness.queue_uri(&name, "sslmode=disable"))
        .await
        .unwrap();
    assert_eq!(with_driver_param.read_message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    courier_sql::register();
    let queue = connect("sqlite::memory:?queue=mem").await.unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 1);
}

#[tokio::test]
async fn bad_uris_and_options_are_config_errors_naming_the_key() {
    courier_sql::register();
    let (sqlite, _file) = temp_sqlite();
    for (uri, key) in [
        (sqlite.clone(), "queue"),
        (
            format!("{sqlite}?queue=q&poll_interval=soon"),
            "options.poll_interval",
        ),
        (
            format!("{sqlite}?queue=q&max_deliveries=0"),
            "options.max_deliveries",
        ),
        // Misspelt courier options and parameters no driver knows are never passed on.
        (
            format!("{sqlite}?queue=q&lock_timout=5"),
            "options.lock_timout",
        ),
        (
            format!("{}?queue=q&max_delivery=1", support::POSTGRES_DEFAULT),
            "options.max_delivery",
        ),
        (
            format!("{}?queue=q&lock_timout=5", support::MYSQL_DEFAULT),
            "options.lock_timout",
        ),
    ] {
        let err = create_from_uri(&uri).map(drop).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{uri}: {err}");
        assert!(err.to_string().contains(key), "{uri}: {err}");
    }
    let err =
        SqlMessageQueue::with_config(&ConfigParams::from_string("name=q").unwrap()).unwrap_err();
    assert!(err.to_string().contains("connection.uri"), "{err}");
    let err = SqlMessageQueue::with_config(
        &ConfigParams::from_string("name=q;connection.protocol=postgres;connection.port=99999")
            .unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("connection.port"), "{err}");
}

#[tokio::test]
async fn config_params_are_checked_and_uri_options_apply() {
    let (sqlite, _file) = temp_sqlite();
    let typo = ConfigParams::from_tuples([
        ("name", "q"),
        ("connection.uri", sqlite.as_str()),
        ("options.lock_timout", "5"),
    ]);
    let err = SqlMessageQueue::with_config(&typo).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("options.lock_timout"), "{err}");
    // Queue options written in `connection.uri` take effect.
    let uri = format!("{sqlite}?lock_timeout=300&poll_interval=20");
    let config = ConfigParams::from_tuples([("name", "q"), ("connection.uri", uri.as_str())]);
    let queue = SqlMessageQueue::with_config(&config).unwrap();
    queue.open(None).await.unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap();
    let first = queue.receive(None, Duration::ZERO).await.unwrap().unwrap();
    let again = queue
        .receive(None, Duration::from_secs(3))
        .await
        .unwrap()
        .expect("the 300 ms lock of the URI expired");
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.delivery_count(), 2);
    queue.close(None).await.unwrap();
}

#[tokio::test]
async fn each_dialect_names_its_backend() {
    courier_sql::register();
    let (sqlite, _file) = temp_sqlite();
    let queue = create_from_uri(&format!("{sqlite}?queue=q")).unwrap();
    let err = queue.peek(None).await.unwrap_err();
    assert_eq!(err.backend(), Some("sqlite"), "{err:?}");
    for (uri, backend) in [
        (support::POSTGRES_DEFAULT, "postgres"),
        (support::MYSQL_DEFAULT, "mysql"),
    ] {
        let queue = create_from_uri(&format!("{uri}?queue=q")).unwrap();
        let err = queue.peek(None).await.unwrap_err();
        assert_eq!(err.backend(), Some(backend), "{err:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_fails_fast_saying_why() {
    courier_sql::register();
    let started = std::time::Instant::now();
    let err = connect("postgres://app:pw@127.0.0.1:1/db?queue=q")
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_database_is_a_connection_error_without_the_password() {
    let config =
        courier_core::backend::config_from_uri("postgres://app:s3cr3tpw@127.0.0.1:1/db?queue=q")
            .unwrap();
    let queue = SqlMessageQueue::from_uri_config(&config).unwrap();
    let err = queue.open(None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let shown = format!("{err} {err:?} {queue:?}");
    assert!(!shown.contains("s3cr3tpw"), "{shown}");
    assert_eq!(
        queue
            .send(None, MessageEnvelope::new(None, "t", "x"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotOpened
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (sqlite, _file) = temp_sqlite();
    let store = SqlStore::connect(&sqlite).await.unwrap();
    store
        .execute_raw("INSERT INTO courier_schema (version) VALUES (999)")
        .await
        .unwrap();
    store.close().await;
    let err = SqlStore::connect(&sqlite).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test]
async fn a_row_that_does_not_decode_goes_to_the_dead_letter_queue() {
    let (sqlite, _file) = temp_sqlite();
    let store = SqlStore::connect(&sqlite).await.unwrap();
    // SQLite keeps what it is given: a BLOB where text belongs does not decode as a String.
    store
        .execute_raw(
            "INSERT INTO courier_messages (queue, message_id, correlation_id, message_type, sent_time, payload) \
             VALUES ('rows', 'bad', NULL, X'FFFE', NULL, X'00')",
        )
        .await
        .unwrap();
    let config = ConfigParams::from_string("name=rows").unwrap();
    let queue = SqlMessageQueue::with_store(store.clone(), &config).unwrap();
    queue.open(None).await.unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "good", "fine"))
        .await
        .unwrap();
    let got = queue
        .receive(None, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("the good message");
    assert_eq!(
        got.message_type, "good",
        "the bad row must not block the queue"
    );
    let dlq =
        SqlMessageQueue::with_store(store, &ConfigParams::from_string("name=rows.dlq").unwrap())
            .unwrap();
    dlq.open(None).await.unwrap();
    assert_eq!(
        dlq.read_message_count().await.unwrap(),
        1,
        "the bad row is in the dead-letter queue"
    );
}

#[test]
fn sql_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SqlMessageQueue>();
    send_sync::<SqlStore>();
    send_sync::<courier_sql::StoreOptions>();
}

#[tokio::test]
async fn mysql_names_that_do_not_fit_fail_when_the_queue_is_made() {
    courier_sql::register();
    let Some(harness) = SqlHarness::mysql().await else {
        return;
    };
    // 252 characters fit the column, but `<name>.dlq` (256) would not.
    let long = "q".repeat(252);
    let err = create_from_uri(&harness.queue_uri(&long, ""))
        .map(drop)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("options.dead_letter_queue"),
        "{err}"
    );
    let err = create_from_uri(&harness.queue_uri(&"q".repeat(300), ""))
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("`name`"), "{err}");
    // The longest name whose dead-letter queue fits works, dead letters included.
    let fits = format!(
        "{}{}",
        "f".repeat(239),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let queue = connect(&harness.queue_uri(&fits, "max_deliveries=1&poll_interval=20"))
        .await
        .unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "t", "x"))
        .await
        .unwrap();
    let m = queue
        .receive(None, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    queue.abandon(&m).await.unwrap();
    // Reading that dead-letter queue: its own dead letters need a shorter name.
    let short = format!("dead-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dlq = connect(&harness.queue_uri(
        &format!("{fits}.dlq"),
        &format!("dead_letter_queue={short}"),
    ))
    .await
    .unwrap();
    assert_eq!(dlq.read_message_count().await.unwrap(), 1);
    dlq.clear(None).await.unwrap();
    queue.close(None).await.unwrap();
    dlq.close(None).await.unwrap();
}

#[tokio::test]
async fn a_payload_over_max_allowed_packet_names_the_limit() {
    courier_sql::register();
    let Some(harness) = SqlHarness::mysql().await else {
        return;
    };
    let name = format!("big-{}", uuid::Uuid::new_v4().simple());
    let queue = connect(&harness.queue_uri(&name, "")).await.unwrap();
    let limit: usize = 64 * 1024 * 1024; // over any default max_allowed_packet (16 MiB, 64 MiB)
    let err = queue
        .send(None, MessageEnvelope::new(None, "t", vec![0u8; limit + 1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidMessage, "{err}");
    assert!(err.to_string().contains("max_allowed_packet"), "{err}");
    // The connection is intact: a normal send goes through.
    queue
        .send(None, MessageEnvelope::new(None, "t", "small"))
        .await
        .unwrap();
    queue.clear(None).await.unwrap();
    queue.close(None).await.unwrap();
}

#[tokio::test]
async fn failed_authentication_is_named() {
    courier_sql::register();
    if SqlHarness::mysql().await.is_none() {
        return;
    }
    let err = connect("mysql://courier_nobody:wrong@127.0.0.1:3306/test?queue=q")
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(!format!("{err:?}").contains("wrong@"), "{err:?}");
}

/// A store belongs to the runtime that opened it: a queue on the same URL in another runtime,
/// after the first one is gone or while it idles on another thread, gets a store of its own.
#[test]
fn stores_are_not_shared_across_runtimes() {
    courier_sql::register();
    let (sqlite, _file) = temp_sqlite();
    let uri = format!("{sqlite}?queue=runtimes");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // Left open on purpose: its runtime ends with it.
    let first = runtime().block_on(connect(&uri)).unwrap();
    let second = std::thread::spawn({
        let uri = uri.clone();
        move || {
            runtime().block_on(async {
                let queue = connect(&uri).await.unwrap();
                queue
                    .send(None, MessageEnvelope::new(None, "t", "x"))
                    .await
                    .unwrap();
                let count = queue.read_message_count().await.unwrap();
                queue.close(None).await.unwrap();
                count
            })
        }
    })
    .join()
    .unwrap();
    assert_eq!(second, 1);
    let third = runtime().block_on(async {
        let queue = connect(&uri).await.unwrap();
        queue.read_message_count().await
    });
    assert_eq!(third.expect("a store whose runtime is gone was reused"), 1);
    drop(first);
}
