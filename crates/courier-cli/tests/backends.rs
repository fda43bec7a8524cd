//! The same commands on every live backend (`COURIER_TEST_<BACKEND>_URL`, loopback defaults):
//! what one `courier` process sends, another receives, and the counts agree. MQTT keeps
//! messages only for a session: the receiving client id subscribes first, with `count`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{courier, stdout};

/// `host:port` of `url`, if something listens there; else skips (or fails when required).
async fn reachable(backend: &str, url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or_default();
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default().to_owned();
    let connect = tokio::net::TcpStream::connect(host_port.clone());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => true,
        _ => {
            courier_conformance::skip_or_fail::<()>(backend, &format!("{host_port} is unreachable"))
                .is_some()
        }
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test]
async fn every_backend_sends_and_receives_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let name = "courier-cli-test";
    let with_queue = |base: String| {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}queue={name}")
    };
    let backends = [
        (
            "postgres",
            with_queue(env_or(
                "COURIER_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            )),
        ),
        (
            "mysql",
            with_queue(env_or(
                "COURIER_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306/test",
            )),
        ),
        (
            "rabbitmq",
            with_queue(env_or(
                "COURIER_TEST_RABBITMQ_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            )),
        ),
        (
            "nats",
            format!(
                "{}/{name}",
                env_or("COURIER_TEST_NATS_URL", "nats://127.0.0.1:4222").trim_end_matches('/')
            ),
        ),
        (
            "redis",
            with_queue(env_or("COURIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")),
        ),
    ];
    for (backend, uri) in backends {
        if !reachable(backend, &uri).await {
            continue;
        }
        round_trip(dir.path(), backend, &uri);
        dead_letters_round_trip(dir.path(), backend, &uri);
    }

    // MQTT: a fixed client id at QoS 1 keeps its session (and what is sent meanwhile).
    let mqtt = env_or("COURIER_TEST_MQTT_URL", "mqtt://127.0.0.1:1883");
    if reachable("mqtt", &mqtt).await {
        let durable = format!(
            "{}/{name}?client_id=courier-cli-test",
            mqtt.trim_end_matches('/')
        );
        courier(dir.path())
            .args(["count", &durable])
            .assert()
            .success();
        courier(dir.path())
            .args([
                "send",
                &format!("{}/{name}", mqtt.trim_end_matches('/')),
                "hello",
            ])
            .assert()
            .success();
        let got = stdout(courier(dir.path()).args(["receive", &durable]));
        assert_eq!(got, "hello\n");
        // QoS 0 is a clean session: the broker forgets this one.
        courier(dir.path())
            .args(["count", &format!("{durable}&qos=0")])
            .assert()
            .success();
        // MQTT has no dead letters a command line can read: said, exit 1.
        courier(dir.path())
            .args([
                "dead-letters",
                &format!("{}/{name}", mqtt.trim_end_matches('/')),
            ])
            .assert()
            .code(1);
    }
}

/// send, count, peek, receive, and `receive` finding nothing (exit 3).
fn round_trip(dir: &Path, backend: &str, uri: &str) {
    courier(dir).args(["clear", uri]).assert().success();
    courier(dir)
        .args(["send", uri, "hello", "--type", "greet"])
        .assert()
        .success();
    let count = stdout(courier(dir).args(["count", uri]));
    assert_eq!(count.trim(), "1", "{backend}");
    let peeked = courier(dir).args(["peek", uri]).output().unwrap();
    if backend == "rabbitmq" {
        // RabbitMQ cannot peek: said, exit 1.
        assert_eq!(peeked.status.code(), Some(1), "{backend}");
        assert!(String::from_utf8_lossy(&peeked.stderr).contains("peek"));
    } else {
        assert_eq!(
            String::from_utf8_lossy(&peeked.stdout),
            "hello\n",
            "{backend}"
        );
    }
    let got = stdout(courier(dir).args(["receive", uri, "--json"]));
    let envelope: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(envelope["message_type"], "greet", "{backend}");
    assert_eq!(envelope["message"], "aGVsbG8=", "{backend}");
    let count = stdout(courier(dir).args(["count", uri]));
    assert_eq!(count.trim(), "0", "{backend}");
    courier(dir)
        .args(["receive", uri, "--timeout", "200ms"])
        .assert()
        .code(3);
}

/// `listen --exec` failing with `max_deliveries=1` dead-letters the message; `dead-letters
/// --requeue` moves it back.
fn dead_letters_round_trip(dir: &Path, backend: &str, uri: &str) {
    let uri =
        format!("{uri}&max_deliveries=1").replacen("/courier-cli-test&", "/courier-cli-test?", 1);
    let dlq_count = |dir: &Path| -> usize {
        let dlq = uri
            .replace("queue=courier-cli-test", "queue=courier-cli-test.dlq")
            .replace("/courier-cli-test?", "/courier-cli-test.dlq?")
            .replace("&max_deliveries=1", "")
            .replace("?max_deliveries=1", "");
        stdout(courier(dir).args(["count", &dlq]))
            .trim()
            .parse()
            .unwrap()
    };
    courier(dir)
        .args(["dead-letters", &uri, "--requeue"])
        .assert()
        .success();
    courier(dir).args(["clear", &uri]).assert().success();
    courier(dir)
        .args(["send", &uri, "poison"])
        .assert()
        .success();
    let mut listener = std::process::Command::new(assert_cmd::cargo::cargo_bin("courier"))
        .args(["listen", &uri, "--exec", "cat > /dev/null; exit 1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dlq_count(dir) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{backend}: nothing dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &listener.id().to_string()])
        .status()
        .unwrap();
    assert!(listener.wait().unwrap().success(), "{backend}: listen exit");
    courier(dir)
        .args(["dead-letters", &uri, "--requeue"])
        .assert()
        .success();
    assert_eq!(dlq_count(dir), 0, "{backend}");
    let got = stdout(courier(dir).args(["receive", &uri]));
    assert_eq!(got, "poison\n", "{backend}");
}
