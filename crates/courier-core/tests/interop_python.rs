//! The envelope's wire JSON against the real pip-services Python package
//! (`pip_services3_messaging` 3.1.2, installed by `.ci/run`): what courier writes, Python
//! reads, and the reverse.

use std::process::Command;

use courier_core::MessageEnvelope;

/// Runs `script` with python3; `None` (after `skip_or_fail`) if the package is missing.
fn python(script: &str, input: &str) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import pip_services3_messaging"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            return courier_conformance::skip_or_fail(
                "python",
                "python3 with pip_services3_messaging is not installed (pip install pip_services3_messaging==3.1.2)",
            );
        }
    }
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(out.status.success(), "python failed");
    Some(String::from_utf8(out.stdout).expect("UTF-8 output"))
}

#[test]
fn python_reads_what_courier_writes() {
    let mut envelopes = vec![
        MessageEnvelope::new(Some("123"), "Test", "Test message"),
        MessageEnvelope::new(None, "binary", vec![0u8, 1, 2, 254, 255]),
        MessageEnvelope::new(Some("ü-corr"), "unicode", "héllo wörld ✓"),
    ];
    envelopes[0].sent_time = Some(chrono::Utc::now());
    let input: String = envelopes.iter().map(|e| e.to_json() + "\n").collect();
    let script = r#"
import sys, json, base64
from pip_services3_messaging.queues import MessageEnvelope
for line in sys.stdin:
    e = MessageEnvelope.from_json(line)
    print(json.dumps([e.message_id, e.correlation_id, e.message_type,
                      base64.b64encode(e.message or b"").decode(), e.sent_time is not None]))
"#;
    let Some(out) = python(script, &input) else {
        return;
    };
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), envelopes.len());
    for (row, sent) in rows.iter().zip(&envelopes) {
        assert_eq!(row[0], sent.message_id.as_str());
        assert_eq!(
            row[1].as_str(),
            Some(sent.correlation_id.as_deref().unwrap_or(""))
        );
        assert_eq!(row[2], sent.message_type.as_str());
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(row[3].as_str().unwrap())
            .unwrap();
        assert_eq!(
            payload,
            &sent.message[..],
            "payload of {}",
            sent.message_type
        );
        assert_eq!(row[4], true, "sent_time is always written");
    }
}

#[test]
fn courier_reads_what_python_writes() {
    let script = r#"
import json
from pip_services3_messaging.queues import MessageEnvelope
for cid, mtype, text in [("123", "Test", "Test message"), (None, "plain", "x"), ("c", "unicode", "héllo ✓")]:
    e = MessageEnvelope(cid, mtype, text)
    print(json.dumps([e.message_id, json.dumps(e.to_json())]))
"#;
    let Some(out) = python(script, "") else {
        return;
    };
    let expected = [
        (Some("123"), "Test", "Test message"),
        (None, "plain", "x"),
        (Some("c"), "unicode", "héllo ✓"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (line, (cid, mtype, text)) in lines.iter().zip(expected) {
        let [id, json]: [String; 2] = serde_json::from_str(line).unwrap();
        let env = MessageEnvelope::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(env.message_id, id);
        assert_eq!(env.correlation_id.as_deref(), cid);
        assert_eq!(env.message_type, mtype);
        assert_eq!(env.message_as_string().unwrap(), text);
        assert!(env.sent_time.is_some(), "Python's naive local time is read");
    }
}
