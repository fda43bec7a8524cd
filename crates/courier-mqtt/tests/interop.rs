//! The wire against the published pip-services Python MQTT queue (`pip-services3-mqtt` with
//! `paho-mqtt<2`, in the project's virtualenv `interop/python/.venv`, which `.ci/run` makes),
//! both ways, on the live broker: id, correlation id, type and payload arrive intact.
//! The Python package connects to localhost:1883 whatever it is told.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use courier_conformance::unique_name;
use courier_core::{MessageEnvelope, MessageQueue};
use serde_json::{Value, json};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/python")
}

/// The virtualenv's Python if pip-services3-mqtt is installed there, else `None` after
/// [`courier_conformance::skip_or_fail`].
fn python() -> Option<PathBuf> {
    let python = interop_dir().join(".venv/bin/python");
    let present = Command::new(&python)
        .args(["-c", "import pip_services3_mqtt, paho.mqtt"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        Some(python)
    } else {
        courier_conformance::skip_or_fail(
            "mqtt-interop",
            "pip-services3-mqtt is not installed in interop/python/.venv (bash .ci/run installs it)",
        )
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The pip-services queue's reachable broker: only the local one on port 1883.
async fn local_broker() -> Option<String> {
    let url = support::reachable().await?;
    if support::host_port(&url) != "127.0.0.1:1883" && support::host_port(&url) != "localhost:1883"
    {
        return courier_conformance::skip_or_fail(
            "mqtt-interop",
            "the pip-services Python queue only reaches localhost:1883",
        );
    }
    Some(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_courier_sends_the_pip_services_queue_receives() {
    let Some(url) = local_broker().await else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let topic = unique_name("interop");
    let queue = support::open(&url, &topic, &[("autosubscribe", "false")]).await;
    let mut peer = Command::new(python)
        .arg(interop_dir().join("mqtt_peer.py"))
        .args([
            "receive",
            &topic,
            &format!("pip-{}", &topic[topic.len() - 8..]),
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the peer runs");
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    let (first, lines) = tokio::task::spawn_blocking(move || (lines.next(), lines))
        .await
        .unwrap();
    assert_eq!(first.unwrap().unwrap(), "READY");
    // Text only: the Python package logs each envelope it receives as UTF-8 text, and a
    // binary payload kills its network thread.
    let sent = [
        MessageEnvelope::new(Some("123"), "Test", "Test message"),
        MessageEnvelope::new(None, "note", "héllo ✓"),
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
    assert!(peer.wait().unwrap().success());
    assert_eq!(got.len(), 2, "{got:?}");
    for (m, envelope) in got.iter().zip(&sent) {
        assert_eq!(m["message_id"], json!(envelope.message_id));
        assert_eq!(m["message_type"], json!(envelope.message_type));
        assert_eq!(m["message_b64"], json!(b64(&envelope.message)));
        assert!(m["sent_time"].is_string(), "{m}");
    }
    assert_eq!(got[0]["correlation_id"], json!("123"));
    queue.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_pip_services_queue_sends_courier_receives() {
    let Some(url) = local_broker().await else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let topic = unique_name("interop");
    let queue = support::open(&url, &topic, &[]).await;
    let messages = [
        json!({"message_id": "5d0f3a8c2b9e4f61a7c3d2e1f0b9a8c7", "correlation_id": "123",
               "message_type": "Test", "message_b64": b64(b"Test message")}),
        json!({"message_id": "m2", "correlation_id": null, "message_type": "blob",
               "message_b64": b64(&[0u8, 255, 1])}),
    ];
    let mut peer = Command::new(python)
        .arg(interop_dir().join("mqtt_peer.py"))
        .args([
            "send",
            &topic,
            &format!("pip-{}", &topic[topic.len() - 8..]),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("the peer runs");
    {
        let mut stdin = peer.stdin.take().unwrap();
        for m in &messages {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    let status = tokio::task::spawn_blocking(move || peer.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut got = Vec::new();
    while let Some(m) = queue.receive(None, Duration::from_secs(5)).await.unwrap() {
        queue.complete(&m).await.unwrap();
        got.push(m);
        if got.len() == messages.len() {
            break;
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].message_id, "5d0f3a8c2b9e4f61a7c3d2e1f0b9a8c7");
    assert_eq!(got[0].correlation_id.as_deref(), Some("123"));
    assert_eq!(got[0].message_type, "Test");
    assert_eq!(got[0].message_as_string().unwrap(), "Test message");
    assert!(
        got[0].sent_time.is_some(),
        "Python's naive sent_time is read"
    );
    assert_eq!(got[1].message_id, "m2");
    assert_eq!(got[1].correlation_id, None);
    assert_eq!(&got[1].message[..], &[0u8, 255, 1]);
    queue.close(None).await.unwrap();
}
