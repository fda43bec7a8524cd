//! The `courier` binary end to end, on the embedded store (a SQLite file in a temporary
//! folder, `COURIER_DB`): each command in a process of its own, as a shell script runs them.

mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command as Std, Stdio};
use std::time::{Duration, Instant};

use support::{courier, stdout};

fn count(dir: &Path, queue: &str) -> usize {
    stdout(courier(dir).args(["count", queue]))
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn what_one_process_sends_another_receives() {
    let dir = tempfile::tempdir().unwrap();
    courier(dir.path())
        .args(["send", "orders", "hello", "--type", "greet", "-c", "c1"])
        .assert()
        .success();
    courier(dir.path())
        .args(["send", "orders", "--file"])
        .arg(write(dir.path(), "body.txt", "from a file"))
        .assert()
        .success();
    courier(dir.path())
        .args(["send", "orders", "--lines"])
        .write_stdin("one\ntwo\n")
        .assert()
        .success();
    assert_eq!(count(dir.path(), "orders"), 4);
    let peeked = stdout(courier(dir.path()).args(["peek", "orders", "-n", "2"]));
    assert_eq!(peeked, "hello\nfrom a file\n");
    let json = stdout(courier(dir.path()).args(["receive", "orders", "--json"]));
    let envelope: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(envelope["message_type"], "greet");
    assert_eq!(envelope["correlation_id"], "c1");
    assert_eq!(
        envelope["message"], "aGVsbG8=",
        "the pip-services wire JSON, base64 payload"
    );
    let rest =
        stdout(courier(dir.path()).args(["receive", "orders", "-n", "10", "--timeout", "200ms"]));
    assert_eq!(rest, "from a file\none\ntwo\n");
    assert_eq!(count(dir.path(), "orders"), 0);
    // Stdin as the payload; --no-complete leaves it there.
    courier(dir.path())
        .args(["send", "orders"])
        .write_stdin("piped")
        .assert()
        .success();
    courier(dir.path())
        .args(["receive", "orders", "--no-complete"])
        .assert()
        .success()
        .stdout("piped\n");
    assert_eq!(count(dir.path(), "orders"), 1);
    courier(dir.path())
        .args(["clear", "orders"])
        .assert()
        .success();
    assert_eq!(count(dir.path(), "orders"), 0);
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // 3: nothing to receive.
    courier(dir.path())
        .args(["receive", "empty", "--timeout", "100ms"])
        .assert()
        .code(3)
        .stdout("");
    // 2: bad flags, a bad duration, an unknown scheme or option.
    for args in [
        vec!["receive", "q", "--nope"],
        vec!["receive", "q", "--timeout", "soon"],
        vec!["count", "bogus://x"],
        vec!["count", "sqlite://x.db?queue=q&colour=red"],
    ] {
        let output = courier(dir.path()).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    // 1: a server that is not there; one line, no password.
    let nobody = courier_conformance::fault::ClosedPort::new().unwrap();
    let output = courier(dir.path())
        .args(["count"])
        .arg(format!(
            "postgres://user:s3cret@127.0.0.1:{}/test?queue=q&connect_timeout=1000",
            nobody.port()
        ))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("courier: ") && !err.contains("s3cret"),
        "{err}"
    );
}

/// `receive` whose reader has gone (`courier receive | head -1` after head exits): no
/// message it could not print is completed, and it exits 0.
#[test]
fn a_closed_pipe_completes_nothing_it_could_not_print() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        courier(dir.path())
            .args(["send", "q", &format!("m{i}")])
            .assert()
            .success();
    }
    let mut child = Std::new(assert_cmd::cargo::cargo_bin("courier"))
        .args(["receive", "q", "-n", "3"])
        .env("COURIER_DB", dir.path().join("test.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is printed
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(
        count(dir.path(), "q"),
        3,
        "a message nobody saw was completed"
    );
}

/// `listen --exec`: exit 0 completes; anything else gives the message back, and with
/// `max_deliveries=1` it goes to the dead-letter queue, which `dead-letters` shows and
/// `--requeue` empties back into the queue.
#[test]
fn listen_exec_completes_or_abandons_and_dead_letters_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    let queue = format!("sqlite://{}?queue=jobs&max_deliveries=1", db.display());
    courier(dir.path())
        .args(["send", &queue, "good", "--type", "job"])
        .assert()
        .success();
    courier(dir.path())
        .args(["send", &queue, "bad", "--type", "job"])
        .assert()
        .success();
    let out = dir.path().join("handled.txt");
    let script = format!(
        "body=$(cat); printf '%s %s %s\\n' \"$COURIER_MESSAGE_TYPE\" \"$body\" \"$COURIER_DELIVERY_COUNT\" >> {}; [ \"$body\" = good ]",
        out.display()
    );
    let mut listener = Std::new(assert_cmd::cargo::cargo_bin("courier"))
        .args(["listen", &queue, "--exec", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = stdout(courier(dir.path()).args(["dead-letters", &queue]));
        if shown == "bad\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dead-lettered: {shown:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: the listener drains and exits 0.
    Std::new("kill")
        .args(["-TERM", &listener.id().to_string()])
        .status()
        .unwrap();
    assert!(listener.wait().unwrap().success());
    let handled = std::fs::read_to_string(&out).unwrap();
    assert!(handled.contains("job good 1\n"), "{handled}");
    assert!(handled.contains("job bad 1\n"), "{handled}");
    assert_eq!(count(dir.path(), &queue), 0);
    courier(dir.path())
        .args(["dead-letters", &queue, "--requeue"])
        .assert()
        .success();
    assert_eq!(
        stdout(courier(dir.path()).args(["dead-letters", &queue])),
        ""
    );
    assert_eq!(
        stdout(courier(dir.path()).args(["receive", &queue])),
        "bad\n"
    );
}

#[test]
fn bench_reports_throughput_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let json = stdout(courier(dir.path()).args([
        "bench",
        "memory://bench",
        "--messages",
        "300",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--json",
    ]));
    let result: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(result["messages"], 300);
    assert!(result["msgs_per_sec"].as_f64().unwrap() > 0.0);
    let p50 = result["latency_ms"]["p50"].as_f64().unwrap();
    let max = result["latency_ms"]["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{result}");
    let text = stdout(courier(dir.path()).args(["bench", "memory://b", "-n", "50"]));
    assert!(text.contains("msgs/s") && text.contains("p99"), "{text}");
}

#[test]
fn completions_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let script = stdout(courier(dir.path()).args(["completions", "bash"]));
    assert!(
        script.contains("courier") && script.contains("dead-letters"),
        "{script}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A bare name under `COURIER_URL` is a queue of that server (here another SQLite file);
/// without it, of `COURIER_DB`.
#[test]
fn bare_names_follow_courier_url() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.db");
    courier(dir.path())
        .env("COURIER_URL", format!("sqlite://{}", other.display()))
        .args(["send", "q", "there"])
        .assert()
        .success();
    assert_eq!(count(dir.path(), "q"), 0, "not in COURIER_DB");
    let uri = format!("sqlite://{}?queue=q", other.display());
    assert_eq!(
        stdout(courier(dir.path()).args(["receive", &uri])),
        "there\n"
    );
}

/// Names are taken as typed (`#`, `+`, spaces); `--no-complete` gives back at the end, so
/// `-n 2` shows two messages and leaves both.
#[test]
fn odd_names_and_no_complete() {
    let dir = tempfile::tempdir().unwrap();
    for body in ["first", "second"] {
        courier(dir.path())
            .args(["send", "jobs#1 c++", body])
            .assert()
            .success();
    }
    assert_eq!(count(dir.path(), "jobs"), 0, "not the queue `jobs`");
    let shown =
        stdout(courier(dir.path()).args(["receive", "jobs#1 c++", "-n", "2", "--no-complete"]));
    assert_eq!(shown, "first\nsecond\n");
    assert_eq!(count(dir.path(), "jobs#1 c++"), 2);
}

/// Output into a pipe whose reader is gone is not an error, and nothing panics.
#[test]
fn closed_pipes_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["completions", "bash"],
        vec!["bench", "memory://b", "-n", "20", "--json"],
    ] {
        let mut child = Std::new(assert_cmd::cargo::cargo_bin("courier"))
            .args(&args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "{args:?}: {status} {err}");
    }
}
