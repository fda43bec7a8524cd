//! TLS on a live server: a `nats-server` of the test's own, started with a certificate signed by
//! a CA the test makes with `openssl`. A queue that trusts the CA (`tls_ca_file`) sends and
//! receives over TLS; one that does not is refused with a `Config` error.

use courier_conformance::tls::{self, TlsServer};
use courier_core::ErrorKind;

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
    let trusted = courier_nats::from_uri(&format!(
        "tls://127.0.0.1:{port}/tls-queue?jetstream=false&queue_group=g&tls_ca_file={}",
        ca.display()
    ))
    .unwrap();
    let untrusted = courier_nats::from_uri(&format!(
        "tls://127.0.0.1:{port}/tls-queue?jetstream=false&connect_timeout=3000&retry_connect=false"
    ))
    .unwrap();
    tls::trusted_and_refused(&*trusted, &*untrusted).await;
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
