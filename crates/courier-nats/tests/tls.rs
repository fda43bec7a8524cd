//! TLS on a live server: a `nats-server` of the test's own, started with a certificate signed by
//! a CA the test makes with `openssl`. A queue that trusts the CA (`tls_ca_file`) sends and
//! receives over TLS; one that does not is refused with a `Config` error.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

/// A nats-server child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 (`server.pem`,
/// `server.key`), in `dir`.
fn certificates(dir: &Path) -> bool {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .is_ok()
        && run(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ca.key",
            ],
        )
        && run(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "2",
                "-subj",
                "/CN=courier test CA",
                "-out",
                "ca.pem",
            ],
        )
        && run(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "server.key",
            ],
        )
        && run(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-subj",
                "/CN=localhost",
                "-out",
                "server.csr",
            ],
        )
        && run(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        )
}

/// A TLS-only nats-server on a free port, with the certificates of [`certificates`].
async fn tls_server(dir: &Path) -> Option<(Server, u16)> {
    if !certificates(dir) {
        return courier_conformance::skip_or_fail("nats", "openssl cannot make test certificates");
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(
        std::env::var("COURIER_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned()),
    )
    .args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--tls",
        "--tlscert",
    ])
    .arg(dir.join("server.pem"))
    .arg("--tlskey")
    .arg(dir.join("server.key"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn();
    let server = match child {
        Ok(child) => Server(child),
        Err(e) => {
            return courier_conformance::skip_or_fail(
                "nats",
                &format!("cannot start nats-server: {e}"),
            );
        }
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some((server, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    courier_conformance::skip_or_fail("nats", "the TLS nats-server did not start")
}

#[tokio::test(flavor = "current_thread")]
async fn a_queue_that_trusts_the_ca_talks_tls_and_one_that_does_not_is_refused() {
    let dir = std::env::temp_dir().join(format!("courier-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((_server, port)) = tls_server(&dir).await else {
        return;
    };
    let ca = dir.join("ca.pem");
    let uri = format!(
        "tls://127.0.0.1:{port}/tls-queue?jetstream=false&queue_group=g&tls_ca_file={}",
        ca.display()
    );
    let queue = courier_nats::from_uri(&uri).unwrap();
    queue.open(None).await.expect("open over TLS");
    queue
        .send(None, MessageEnvelope::new(Some("c1"), "t", "over tls"))
        .await
        .unwrap();
    let got = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the message, over TLS");
    assert_eq!(&got.message[..], b"over tls");
    queue.close(None).await.unwrap();

    // The system's roots do not hold the test CA: the certificate is refused.
    let untrusted = format!(
        "tls://127.0.0.1:{port}/tls-queue?jetstream=false&connect_timeout=3000&retry_connect=false"
    );
    let queue = courier_nats::from_uri(&untrusted).unwrap();
    let e = queue
        .open(None)
        .await
        .expect_err("an untrusted certificate");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(!queue.is_open());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_ca_file_is_a_config_error_naming_the_key() {
    let e =
        courier_nats::from_uri("tls://127.0.0.1:4222/q?tls_ca_file=/no/such/ca.pem").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("tls_ca_file"), "{e}");
    let e = courier_nats::from_uri(concat!(
        "nats://127.0.0.1:4222/q?tls_cert_file=",
        env!("CARGO_MANIFEST_DIR"),
        "/Cargo.toml"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("tls_key_file"), "{e}");
}
