//! The envelope's wire JSON against the real pip-services packages: Python
//! (`pip_services3_messaging` 3.1.2) and Node (`pip-services3-messaging-nodex` 1.0.1, in
//! `interop/node`), both installed by `.ci/run`. What courier writes, each reads; what each
//! writes, courier reads.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use courier_core::MessageEnvelope;

#[derive(Clone, Copy, Debug)]
enum Peer {
    Python,
    Node,
}

impl Peer {
    fn node_modules() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/node/node_modules")
    }

    fn command(self, script: &str) -> Command {
        match self {
            Peer::Python => {
                let mut c = Command::new("python3");
                c.args(["-c", script]);
                c
            }
            Peer::Node => {
                let mut c = Command::new("node");
                c.args(["-e", script])
                    .env("NODE_PATH", Self::node_modules());
                c
            }
        }
    }

    /// Runs `script` with `input` on stdin; `None` (after `skip_or_fail`) if the package is
    /// not installed.
    fn run(self, script: &str, input: &str) -> Option<String> {
        let probe = match self {
            Peer::Python => "import pip_services3_messaging",
            Peer::Node => "require('pip-services3-messaging-nodex')",
        };
        let installed = self
            .command(probe)
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            return courier_conformance::skip_or_fail(
                &format!("{self:?}").to_lowercase(),
                "the pip-services package is not installed (bash .ci/run installs it)",
            );
        }
        let mut child = self
            .command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the interpreter runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("the interpreter finishes");
        assert!(out.status.success(), "{self:?} failed");
        Some(String::from_utf8(out.stdout).expect("UTF-8 output"))
    }
}

/// Reads each line of stdin with the peer's `fromJSON` and prints
/// `[message_id, correlation_id, message_type, base64(message), has sent_time]`.
fn reader(peer: Peer) -> &'static str {
    match peer {
        Peer::Python => {
            r#"
import sys, json, base64
from pip_services3_messaging.queues import MessageEnvelope
for line in sys.stdin:
    e = MessageEnvelope.from_json(line)
    print(json.dumps([e.message_id, e.correlation_id or "", e.message_type,
                      base64.b64encode(e.message or b"").decode(), e.sent_time is not None]))
"#
        }
        Peer::Node => {
            r#"
const { MessageEnvelope } = require('pip-services3-messaging-nodex');
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(l => l.length > 0);
for (const line of lines) {
    const e = MessageEnvelope.fromJSON(line);
    console.log(JSON.stringify([e.message_id, e.correlation_id || "", e.message_type,
        (e.message || Buffer.alloc(0)).toString('base64'), e.sent_time != null]));
}
"#
        }
    }
}

/// Prints `[message_id, json]` for three envelopes made by the peer.
fn writer(peer: Peer) -> &'static str {
    match peer {
        Peer::Python => {
            r#"
import json
from pip_services3_messaging.queues import MessageEnvelope
for cid, mtype, text in [("123", "Test", "Test message"), (None, "plain", "x"), ("c", "unicode", "héllo ✓")]:
    e = MessageEnvelope(cid, mtype, text)
    print(json.dumps([e.message_id, json.dumps(e.to_json())]))
"#
        }
        Peer::Node => {
            r#"
const { MessageEnvelope } = require('pip-services3-messaging-nodex');
for (const [cid, mtype, text] of [["123", "Test", "Test message"], [null, "plain", "x"], ["c", "unicode", "héllo ✓"]]) {
    const e = new MessageEnvelope(cid, mtype, text);
    console.log(JSON.stringify([e.message_id, JSON.stringify(e)]));
}
"#
        }
    }
}

fn peer_reads_what_courier_writes(peer: Peer) {
    let mut envelopes = vec![
        MessageEnvelope::new(Some("123"), "Test", "Test message"),
        MessageEnvelope::new(None, "binary", vec![0u8, 1, 2, 254, 255]),
        MessageEnvelope::new(Some("ü-corr"), "unicode", "héllo wörld ✓"),
    ];
    envelopes[0].sent_time = Some(chrono::Utc::now());
    let input: String = envelopes.iter().map(|e| e.to_json() + "\n").collect();
    let Some(out) = peer.run(reader(peer), &input) else {
        return;
    };
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), envelopes.len(), "{peer:?}");
    for (row, sent) in rows.iter().zip(&envelopes) {
        assert_eq!(row[0], sent.message_id.as_str(), "{peer:?}");
        assert_eq!(
            row[1].as_str(),
            Some(sent.correlation_id.as_deref().unwrap_or("")),
            "{peer:?}"
        );
        assert_eq!(row[2], sent.message_type.as_str(), "{peer:?}");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(row[3].as_str().unwrap())
            .unwrap();
        assert_eq!(
            payload,
            &sent.message[..],
            "{peer:?}: payload of {}",
            sent.message_type
        );
        assert_eq!(row[4], true, "{peer:?}: sent_time is always written");
    }
}

fn courier_reads_what_peer_writes(peer: Peer) {
    let Some(out) = peer.run(writer(peer), "") else {
        return;
    };
    let expected = [
        (Some("123"), "Test", "Test message"),
        (None, "plain", "x"),
        (Some("c"), "unicode", "héllo ✓"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{peer:?}");
    for (line, (cid, mtype, text)) in lines.iter().zip(expected) {
        let [id, json]: [String; 2] = serde_json::from_str(line).unwrap();
        let env =
            MessageEnvelope::from_json(&json).unwrap_or_else(|e| panic!("{peer:?} {json}: {e}"));
        assert_eq!(env.message_id, id, "{peer:?}");
        assert_eq!(env.correlation_id.as_deref(), cid, "{peer:?}");
        assert_eq!(env.message_type, mtype, "{peer:?}");
        assert_eq!(env.message_as_string().unwrap(), text, "{peer:?}");
        assert!(env.sent_time.is_some(), "{peer:?}: sent_time is read");
    }
}

#[test]
fn python_reads_what_courier_writes() {
    peer_reads_what_courier_writes(Peer::Python);
}

#[test]
fn courier_reads_what_python_writes() {
    courier_reads_what_peer_writes(Peer::Python);
}

#[test]
fn node_reads_what_courier_writes() {
    peer_reads_what_courier_writes(Peer::Node);
}

#[test]
fn courier_reads_what_node_writes() {
    courier_reads_what_peer_writes(Peer::Node);
}
