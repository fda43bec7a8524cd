//! The pip-services RabbitMQ wire format against a real peer on the live broker: a Python
//! client (pika, `interop/python/amqp_peer.py`) that publishes and reads exactly what
//! pip-services' Go and Node RabbitMQ queues do. What courier sends, the peer reads intact;
//! what the peer sends (also without a `message_id`, without any property, with a body that
//! is not UTF-8, oversized), courier receives intact, and its listener keeps running.

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use courier_conformance::{TestMessageReceiver, unique_name};
use courier_core::{MessageEnvelope, MessageQueue, MessageQueueExt};
use serde_json::{Value, json};

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/python/amqp_peer.py")
}

/// Runs the peer with `args`, feeding `input`; returns its stdout.
fn run_peer(args: &[&str], input: &str) -> String {
    let mut child = Command::new("python3")
        .arg(peer_script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "peer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The peer publishes `messages` (see `amqp_peer.py`) to queue `name`.
async fn peer_publishes(url: &str, name: &str, messages: &[Value]) {
    let input = messages
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let (url, name) = (url.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || run_peer(&["publish", &url, &name], &input))
        .await
        .unwrap();
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Opens a fresh courier queue on the broker; with the broker's URL.
async fn queue(options: &[(&str, &str)]) -> Option<(Arc<dyn MessageQueue>, String, String)> {
    let url = support::reachable().await?;
    if !courier_conformance::python_module_or_skip("pika", "rabbitmq-interop") {
        return None;
    }
    let name = unique_name("interop");
    let mut options = options.to_vec();
    options.push(("expires", "60000"));
    let queue = courier_rabbitmq::from_uri(&support::queue_url(&url, &name, &options)).unwrap();
    queue.open(None).await.unwrap();
    Some((Arc::new(queue), url, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_courier_sends_a_pip_peer_reads() {
    let Some((queue, url, name)) = queue(&[]).await else {
        return;
    };
    let sent = vec![
        MessageEnvelope::new(Some("123"), "Test", "Test message"),
        MessageEnvelope::new(None, "order.created", r#"{"id":7}"#),
        MessageEnvelope::new(Some("bin"), "blob", vec![0u8, 159, 146, 150, 255]),
    ];
    for envelope in &sent {
        queue.send(None, envelope.clone()).await.unwrap();
    }
    let out = tokio::task::spawn_blocking({
        let (url, name) = (url.clone(), name.clone());
        move || run_peer(&["read", &url, &name, "3"], "")
    })
    .await
    .unwrap();
    let got: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3, "{out}");
    for (envelope, read) in sent.iter().zip(&got) {
        assert_eq!(read["message_id"], json!(envelope.message_id));
        assert_eq!(
            read["correlation_id"],
            envelope
                .correlation_id
                .as_deref()
                .map_or(Value::Null, |c| json!(c))
        );
        assert_eq!(read["type"], json!(envelope.message_type));
        assert_eq!(read["body_b64"], json!(b64(&envelope.message)));
        assert_eq!(read["content_type"], json!("text/plain"));
        assert_eq!(read["delivery_mode"], json!(2), "persistent by default");
        assert!(read["timestamp"].as_u64().is_some(), "sent_time travels");
    }
    // A Node receiver decodes the body as text: the fixture's message survives that.
    assert_eq!(got[0]["node_text"], json!("Test message"));
    queue.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_pip_peer_sends_courier_reads() {
    let Some((queue, url, name)) = queue(&[]).await else {
        return;
    };
    let text = "Test message ✓";
    let binary = [0xffu8, 0xfe, 0x00, 0x80];
    let input = [
        json!({"message_id": "m-1", "correlation_id": "123", "type": "Test", "body_b64": b64(text.as_bytes())}),
        // pip-services Node receivers ignore message_id, and a Go sender with an empty one
        // sends none: courier makes one up.
        json!({"correlation_id": "no-id", "type": "Test", "body_b64": b64(b"x")}),
        json!({"message_id": "m-3", "type": "blob", "body_b64": b64(&binary), "persistent": false}),
    ];
    peer_publishes(&url, &name, &input).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = queue
            .receive(None, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the peer's message");
        queue.complete(&m).await.unwrap();
        got.push(m);
    }
    assert_eq!(got[0].message_id, "m-1");
    assert_eq!(got[0].correlation_id.as_deref(), Some("123"));
    assert_eq!(got[0].message_type, "Test");
    assert_eq!(got[0].message_as_string().unwrap(), text);
    assert!(
        got[0].sent_time.is_some(),
        "receive time when the peer sends none"
    );
    assert_eq!(got[1].message_id.len(), 32, "a generated id");
    assert!(got[1].message_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(got[1].correlation_id.as_deref(), Some("no-id"));
    assert_eq!(got[2].message_id, "m-3");
    assert_eq!(got[2].correlation_id, None);
    assert_eq!(&got[2].message[..], &binary[..]);
    assert!(got.iter().all(|m| m.delivery_count() == 1));
    queue.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}

/// Bad input from a foreign client: no properties at all, a body that is not UTF-8, a
/// message bigger than a frame (4 MiB), delivery-count headers of the wrong type or absurd.
/// Each is delivered (or, past `max_deliveries`, dead-lettered), nothing panics, and the
/// listener goes on to the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_bad_input_is_delivered_and_the_listener_keeps_running() {
    let Some((queue, url, name)) = queue(&[("max_deliveries", "3")]).await else {
        return;
    };
    let big = vec![b'z'; 4 << 20];
    let input = [
        json!({"bare": true, "body_b64": b64(b"no properties")}),
        json!({"message_id": "not-utf8", "body_b64": b64(&[0xc3, 0x28, 0xa0, 0xa1])}),
        json!({"message_id": "big", "body_b64": b64(&big)}),
        json!({"message_id": "count-text", "headers": {"x-delivery-count": "many"}, "body_b64": b64(b"1")}),
        json!({"message_id": "count-negative", "headers": {"x-courier-deliveries": -5}, "body_b64": b64(b"2")}),
        json!({"message_id": "count-absurd", "headers": {"x-courier-deliveries": 1_000_000_000_000i64}, "body_b64": b64(b"3")}),
        json!({"message_id": "last", "body_b64": b64(b"the listener still runs")}),
    ];
    peer_publishes(&url, &name, &input).await;
    let receiver = Arc::new(TestMessageReceiver::new());
    let listening = queue.begin_listen(None, receiver.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.message_count() < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queue.end_listen(None);
    listening.join().await.unwrap();
    let got: HashMap<String, MessageEnvelope> = receiver
        .messages()
        .into_iter()
        .map(|m| (m.message_id.clone(), m))
        .collect();
    assert_eq!(got.len(), 6, "delivered: {:?}", got.keys());
    assert_eq!(&got["not-utf8"].message[..], &[0xc3, 0x28, 0xa0, 0xa1]);
    assert!(
        got["not-utf8"].message_as_string().is_err(),
        "bad UTF-8 is an error, not a panic"
    );
    assert_eq!(got["big"].message.len(), 4 << 20);
    assert_eq!(got["count-text"].delivery_count(), 1);
    assert_eq!(got["count-negative"].delivery_count(), 1);
    assert!(got.contains_key("last"));
    assert!(
        got.values()
            .any(|m| m.message_as_string().ok().as_deref() == Some("no properties")),
        "the bare message, with a generated id"
    );
    // Delivered as its trillionth time, past max_deliveries: dead-lettered, not handed out.
    assert!(!got.contains_key("count-absurd"));
    let dead = courier_rabbitmq::from_uri(&support::queue_url(
        &url,
        &format!("{name}.dlq"),
        &[("expires", "60000")],
    ))
    .unwrap();
    dead.open(None).await.unwrap();
    let buried = dead
        .receive(None, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the absurd count was dead-lettered");
    assert_eq!(buried.message_id, "count-absurd");
    dead.complete(&buried).await.unwrap();
    dead.close(None).await.unwrap();
    queue.close(None).await.unwrap();
    support::delete_queues(&url, &[name]);
}

/// A message courier prefetched and never handed out goes back, on `close`, as a copy with the
/// peer's own properties and headers (and no delivery used up), which a pip-services peer
/// reads as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_message_goes_back_with_its_properties() {
    let Some((queue, url, name)) = queue(&[]).await else {
        return;
    };
    let messages = [
        json!({"message_id": "first", "body_b64": b64(b"1")}),
        json!({"message_id": "second", "type": "t", "reply_to": "replies",
               "headers": {"tenant": "acme"}, "body_b64": b64(b"2")}),
    ];
    peer_publishes(&url, &name, &messages).await;
    let first = queue
        .receive(None, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the first message");
    assert_eq!(first.message_id, "first");
    queue.complete(&first).await.unwrap();
    // The consumer prefetched the second; closing puts it back.
    queue.close(None).await.unwrap();
    let out = tokio::task::spawn_blocking({
        let (url, name) = (url.clone(), name.clone());
        move || run_peer(&["read", &url, &name, "1"], "")
    })
    .await
    .unwrap();
    let read: Value = serde_json::from_str(out.trim()).expect("the peer read it");
    assert_eq!(read["message_id"], json!("second"));
    assert_eq!(read["type"], json!("t"));
    assert_eq!(read["reply_to"], json!("replies"));
    assert_eq!(read["headers"]["tenant"], json!("acme"), "{read}");
    assert_eq!(
        read["headers"]["x-courier-deliveries"],
        json!("0"),
        "{read}"
    );
    assert_eq!(read["body_b64"], json!(b64(b"2")));
    support::delete_queues(&url, &[name]);
}
