//! PostgreSQL connections: the `LISTEN` connection lives outside the pool, queues opened from
//! one URL share one store, and `close` is quick.

mod support;

use std::time::{Duration, Instant};

use courier_conformance::skip_or_fail;
use courier_core::{MessageEnvelope, MessageQueue, connect};
use courier_sql::SqlStore;

/// The local PostgreSQL's URL, or `None` (skipped) when it cannot be reached.
async fn postgres() -> Option<String> {
    let url = std::env::var("COURIER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| support::POSTGRES_DEFAULT.to_owned());
    match SqlStore::connect(&url).await {
        Ok(store) => {
            store.close().await;
            Some(url)
        }
        Err(e) => skip_or_fail("postgres", &e.to_string()),
    }
}

/// How many server connections carry `application_name`.
async fn connections(probe: &SqlStore, application: &str) -> i64 {
    let sql = format!("SELECT 1 FROM pg_stat_activity WHERE application_name = '{application}'");
    i64::try_from(probe.execute_raw(&sql).await.unwrap()).unwrap()
}

#[tokio::test]
async fn one_pooled_connection_is_enough() {
    let Some(url) = postgres().await else { return };
    courier_sql::register();
    let queue = connect(&format!(
        "{url}?queue={}&max_connections=1",
        courier_conformance::unique_name("pool1")
    ))
    .await
    .unwrap();
    let work = async {
        for i in 0..5 {
            queue
                .send(None, MessageEnvelope::new(None, "t", i.to_string()))
                .await
                .unwrap();
            let m = queue
                .receive(None, Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap();
            queue.complete(&m).await.unwrap();
        }
        assert_eq!(queue.read_message_count().await.unwrap(), 0);
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("statements waited for the only connection, held by LISTEN");
    queue.close(None).await.unwrap();
}

#[tokio::test]
async fn queues_from_one_url_share_one_store() {
    let Some(url) = postgres().await else { return };
    courier_sql::register();
    let application = courier_conformance::unique_name("courier-share");
    let probe = SqlStore::connect(&url).await.unwrap();
    let mut queues = Vec::new();
    for i in 0..200 {
        let uri = format!("{url}?queue=share-{i}&max_connections=4&application_name={application}");
        let queue = connect(&uri).await.unwrap();
        queue.read_message_count().await.unwrap();
        queues.push(queue);
    }
    let held = connections(&probe, &application).await;
    assert!(
        (1..=5).contains(&held),
        "200 queues hold {held} connections (pool of 4, plus LISTEN)"
    );
    for queue in &queues {
        queue.close(None).await.unwrap();
    }
    // The last close closes the store: its connections go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections(&probe, &application).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the store outlived its last queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe.close().await;
}

#[tokio::test]
async fn close_returns_within_a_second() {
    let Some(url) = postgres().await else { return };
    courier_sql::register();
    for i in 0..20 {
        let queue = connect(&format!("{url}?queue=close-{i}")).await.unwrap();
        queue.read_message_count().await.unwrap();
        let started = Instant::now();
        queue.close(None).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "close took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn closing_one_queue_twice_at_once_leaves_the_shared_store_to_the_others() {
    let Some(url) = postgres().await else { return };
    courier_sql::register();
    let a = connect(&format!("{url}?queue=twice-a")).await.unwrap();
    let b = connect(&format!("{url}?queue=twice-b")).await.unwrap();
    let (first, second) = tokio::join!(a.close(None), a.close(None));
    first.unwrap();
    second.unwrap();
    b.read_message_count()
        .await
        .expect("the store was closed under a queue still using it");
    b.close(None).await.unwrap();
}
