//! Entries a foreign client adds to a queue's stream with `XADD` (as `redis-cli` would):
//! without courier's fields, or with garbage in them. Each is delivered with generated values
//! (the entry's id for a missing `message_id`) or moved to the dead-letter queue, never a
//! panic, and a listener keeps running.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::{TestMessageReceiver, unique_name};
use courier_core::{MessageEnvelope, MessageQueue, MessageQueueExt};

/// Adds an entry with `fields` to stream `name`, as a foreign client; its id.
async fn xadd(url: &str, name: &str, fields: &[(&str, &[u8])]) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut add = redis::cmd("XADD");
    add.arg(name).arg("*");
    for (field, value) in fields {
        add.arg(*field).arg(*value);
    }
    add.query_async(&mut connection).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn foreign_entries_are_delivered_with_generated_values_or_dead_lettered() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("foreign");
    let open = |name: String| {
        let url = url.clone();
        async move {
            let queue = courier_redis::from_uri(&support::queue_url(&url, &name, &[])).unwrap();
            queue.open(None).await.unwrap();
            queue
        }
    };
    let queue = open(name.clone()).await;
    let only_body = xadd(&url, &name, &[("message", b"only a body")]).await;
    let garbage = xadd(
        &url,
        &name,
        &[
            ("message_id", b""),
            ("message_type", &[0xff, 0xfe]),
            ("sent_time", b"the day before yesterday"),
            ("correlation_id", b"c1"),
            ("message", &[0x00, 0xff]),
        ],
    )
    .await;
    let _ = xadd(&url, &name, &[("data", b"no message field")]).await;

    let first = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the first");
    assert_eq!(&first.message[..], b"only a body");
    assert_eq!(first.message_id, only_body, "the entry's id");
    assert!(first.sent_time.is_some(), "the time Redis added it");
    queue.complete(&first).await.unwrap();
    let second = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the second");
    assert_eq!(&second.message[..], &[0x00, 0xff]);
    assert_eq!(second.message_id, garbage);
    assert_eq!(second.message_type, "");
    assert_eq!(second.correlation_id.as_deref(), Some("c1"));
    queue.complete(&second).await.unwrap();
    assert!(
        queue
            .receive(None, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "the entry without a body is not delivered"
    );
    let dead = open(format!("{name}.dlq")).await;
    let buried = dead
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the entry without a body, dead-lettered");
    assert!(buried.message.is_empty());
    dead.complete(&buried).await.unwrap();
    for queue in [queue, dead] {
        queue.close(None).await.unwrap();
    }
    support::delete_streams(&url, &[name]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_listener_keeps_running_through_foreign_entries() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("foreign");
    let queue: Arc<dyn MessageQueue> =
        courier_redis::from_uri(&support::queue_url(&url, &name, &[])).unwrap();
    queue.open(None).await.unwrap();
    let receiver = Arc::new(TestMessageReceiver::new());
    let listening = queue.begin_listen(None, receiver.clone());
    let _ = xadd(&url, &name, &[("junk", b"1")]).await;
    let _ = xadd(&url, &name, &[("message", b"foreign"), ("sent_time", b"?")]).await;
    queue
        .send(None, MessageEnvelope::new(None, "t", "ours"))
        .await
        .unwrap();
    assert_eq!(receiver.wait_for(2, Duration::from_secs(10)).await, 2);
    let _ = xadd(&url, &name, &[("junk", b"2")]).await;
    queue
        .send(None, MessageEnvelope::new(None, "t", "after"))
        .await
        .unwrap();
    assert_eq!(
        receiver.wait_for(3, Duration::from_secs(10)).await,
        3,
        "the listener stopped"
    );
    let bodies: Vec<_> = receiver
        .messages()
        .iter()
        .map(|m| m.message.clone())
        .collect();
    assert_eq!(bodies, ["foreign".as_bytes(), b"ours", b"after"]);
    queue.end_listen(None);
    listening.join().await.unwrap();
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}

/// Runs `redis-cli` against the test server with `args`; its output.
fn redis_cli(url: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The stream layout the README documents, both ways with `redis-cli`: an entry it adds with
/// the documented fields is received intact, and `XRANGE` shows the fields of a message courier
/// sent.
#[tokio::test(flavor = "current_thread")]
async fn the_documented_layout_works_with_redis_cli() {
    let Some(url) = support::reachable().await else {
        return;
    };
    if redis_cli(&url, &["PING"]).is_none() {
        courier_conformance::skip_or_fail::<()>("redis", "redis-cli is not installed");
        return;
    }
    let name = unique_name("layout");
    let queue = courier_redis::from_uri(&support::queue_url(&url, &name, &[])).unwrap();
    queue.open(None).await.unwrap();
    let added = redis_cli(
        &url,
        &[
            "XADD",
            &name,
            "*",
            "message_id",
            "id-1",
            "correlation_id",
            "c-1",
            "message_type",
            "order.created",
            "sent_time",
            "2026-11-28T10:00:00.123Z",
            "message",
            "{\"order\":1}",
        ],
    );
    assert!(added.is_some(), "redis-cli XADD failed");
    let got = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("redis-cli's message");
    assert_eq!(got.message_id, "id-1");
    assert_eq!(got.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(got.message_type, "order.created");
    assert_eq!(
        got.sent_time
            .map(courier_core::envelope::format_sent_time)
            .as_deref(),
        Some("2026-11-28T10:00:00.123Z")
    );
    assert_eq!(&got.message[..], b"{\"order\":1}");
    queue.complete(&got).await.unwrap();

    let sent = MessageEnvelope::new(Some("c-2"), "order.paid", "{\"order\":2}");
    queue.send(None, sent.clone()).await.unwrap();
    let shown = redis_cli(&url, &["XRANGE", &name, "-", "+"]).expect("redis-cli XRANGE");
    let lines: Vec<&str> = shown.lines().collect();
    for (field, value) in [
        ("message_id", sent.message_id.as_str()),
        ("correlation_id", "c-2"),
        ("message_type", "order.paid"),
        ("message", "{\"order\":2}"),
    ] {
        let at = lines.iter().position(|l| *l == field).unwrap_or_else(|| {
            panic!("no field {field} in {shown}");
        });
        assert_eq!(lines.get(at + 1), Some(&value), "{field}");
    }
    let at = lines
        .iter()
        .position(|l| *l == "sent_time")
        .expect("sent_time");
    assert!(courier_core::envelope::parse_sent_time(lines[at + 1]).is_ok());
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}
