//! The pip-services NATS wire format against a real peer on the live server: a Python client
//! (nats-py, `interop/python/nats_peer.py`) that publishes and reads what pip-services' Go,
//! Node and .NET NATS queues do, v3 and v4 header names. What courier sends, the peer reads
//! intact; what the peer sends, courier reads intact; foreign messages without headers, or
//! with garbage `sent_time` or ids, are delivered with generated values, never a panic.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use courier_conformance::unique_name;
use courier_core::{MessageEnvelope, MessageQueue};
use serde_json::{Value, json};

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/python/nats_peer.py")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An open core queue on subject `name`, and the server's URL.
async fn core_queue(name: &str) -> Option<(std::sync::Arc<dyn MessageQueue>, String)> {
    let url = support::reachable().await?;
    if !courier_conformance::python_module_or_skip("nats", "nats-interop") {
        return None;
    }
    let queue =
        courier_nats::from_uri(&support::queue_url(&url, name, &[("jetstream", "false")])).unwrap();
    queue.open(None).await.unwrap();
    Some((queue, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_courier_sends_a_pip_peer_reads() {
    let name = unique_name("interop");
    let Some((queue, url)) = core_queue(&name).await else {
        return;
    };
    let mut reader = Command::new("python3")
        .arg(peer_script())
        .args(["read", &url, &name, "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let first = lines.next();
        (first, lines)
    });
    let (first, lines) = ready.await.unwrap();
    assert_eq!(first.unwrap().unwrap(), "READY");
    let sent = [
        MessageEnvelope::new(Some("123"), "Test", "Test message"),
        MessageEnvelope::new(None, "blob", vec![0u8, 255, 1]),
    ];
    for envelope in &sent {
        queue.send(None, envelope.clone()).await.unwrap();
    }
    let got: Vec<Value> = tokio::task::spawn_blocking(move || {
        lines
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert!(reader.wait().unwrap().success());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["headers"]["message_id"], json!(sent[0].message_id));
    assert_eq!(
        got[0]["headers"]["correlation_id"],
        json!("123"),
        "v3 peers"
    );
    assert_eq!(got[0]["headers"]["trace_id"], json!("123"), "v4 peers");
    assert_eq!(got[0]["headers"]["message_type"], json!("Test"));
    let sent_time = got[0]["headers"]["sent_time"].as_str().unwrap();
    assert!(
        sent_time.ends_with('Z') && sent_time.len() == 24,
        "{sent_time}"
    );
    assert_eq!(got[0]["body_b64"], json!(b64(b"Test message")));
    assert_eq!(got[1]["body_b64"], json!(b64(&[0, 255, 1])));
    assert!(
        got[1]["headers"].get("correlation_id").is_none(),
        "no empty headers"
    );
    queue.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pip_peers_send_courier_reads() {
    let name = unique_name("interop");
    let Some((queue, url)) = core_queue(&name).await else {
        return;
    };
    let messages = [
        // Node v3.
        json!({"headers": {"message_id": "node", "correlation_id": "c3", "message_type": "Test",
                           "sent_time": "2026-11-22T20:55:47.193Z"}, "body_b64": b64(b"Test message")}),
        // Go v4: RFC 3339 with an offset, empty values written.
        json!({"headers": {"message_id": "go", "trace_id": "c4", "message_type": "Test",
                           "sent_time": "2026-11-23T00:55:47+04:00"}, "body_b64": b64(b"x")}),
        // .NET v3: `send_time`, seven fractional digits.
        json!({"headers": {"message_id": "dotnet", "correlation_id": "c5", "message_type": "T",
                           "send_time": "2026-11-22T20:55:47.1234567Z"}, "body_b64": b64(b"y")}),
        // A foreign client: no headers; then garbage in them.
        json!({"body_b64": b64(&[0xff, 0xfe])}),
        json!({"headers": {"message_id": "", "sent_time": "yesterday", "trace_id": ""}, "body_b64": b64(b"z")}),
    ];
    let input = messages
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let (url2, name2) = (url.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(peer_script())
            .args(["publish", &url2, &name2])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..messages.len() {
        let m = queue
            .receive(None, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the peer's message");
        queue.complete(&m).await.unwrap();
        got.push(m);
    }
    assert_eq!(got[0].message_id, "node");
    assert_eq!(got[0].correlation_id.as_deref(), Some("c3"));
    assert_eq!(got[0].message_as_string().unwrap(), "Test message");
    assert_eq!(
        got[0].sent_time.unwrap().to_rfc3339(),
        "2026-11-22T20:55:47.193+00:00"
    );
    assert_eq!(got[1].correlation_id.as_deref(), Some("c4"));
    assert_eq!(
        got[1].sent_time.unwrap().to_rfc3339(),
        "2026-11-22T20:55:47+00:00"
    );
    assert_eq!(got[2].correlation_id.as_deref(), Some("c5"));
    assert_eq!(got[2].sent_time.unwrap().timestamp(), 1_795_380_947);
    assert_eq!(got[3].message_id.len(), 32, "a generated id");
    assert_eq!(&got[3].message[..], &[0xff, 0xfe]);
    assert_eq!(got[4].message_id.len(), 32);
    assert_eq!(got[4].correlation_id, None);
    assert!(got[4].sent_time.is_some(), "the receive time");
    queue.close(None).await.unwrap();
}
