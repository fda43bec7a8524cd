//! TLS on a live server: a `nats-server` of the test's own, started with a certificate signed by
//! a CA the test makes with `openssl`. A queue that trusts the CA (`tls_ca_file`) sends and
//! receives over TLS; one that does not is refused with a `Config` error.

use std::time::Duration;

use courier_conformance::tls::TlsServer;
use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

/// A TLS-only nats-server on a free port.
async fn tls_server() -> Option<TlsServer> {
    let program =
        std::env::var("COURIER_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
    TlsServer::start("nats", &program, |port, cert, key| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "--tls".into(),
            "--tlscert".into(),
            cert.display().to_string(),
            "--tlskey".into(),
            key.display().to_string(),
        ]
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_queue_that_trusts_the_ca_talks_tls_and_one_that_does_not_is_refused() {
    let Some(server) = tls_server().await else {
        return;
    };
    let (port, ca) = (server.port, server.ca_file());
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
