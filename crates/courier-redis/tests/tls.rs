//! TLS on a live server: a `redis-server` of the test's own, TLS only, with a certificate signed
//! by a CA the test makes. A queue that trusts the CA (`rediss://…&tls_ca_file=`) works end to
//! end; one that does not is refused with a `Config` error that says why.

use courier_conformance::tls::{self, TlsServer};
use courier_core::ErrorKind;

/// A TLS-only redis-server on a free port, keeping nothing on disk.
async fn tls_server() -> Option<TlsServer> {
    let program =
        std::env::var("COURIER_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
    TlsServer::start("redis", &program, |port, cert, key| {
        let ca = cert.with_file_name("ca.pem");
        [
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
            "--tls-port",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.display().to_string(),
        ])
        .collect()
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_queue_that_trusts_the_ca_talks_tls_and_one_that_does_not_is_refused() {
    let Some(server) = tls_server().await else {
        return;
    };
    let trusted = courier_redis::from_uri(&format!(
        "rediss://127.0.0.1:{}/0?queue=tls-queue&tls_ca_file={}",
        server.port,
        server.ca_file().display()
    ))
    .unwrap();
    let untrusted = courier_redis::from_uri(&format!(
        "rediss://127.0.0.1:{}/0?queue=tls-queue&connect_timeout=3000",
        server.port
    ))
    .unwrap();
    tls::trusted_and_refused(&*trusted, &*untrusted).await;
}

#[test]
fn tls_files_are_checked_and_ask_for_tls() {
    let e = courier_redis::from_uri("redis://127.0.0.1/0?queue=q&tls_ca_file=/no/such/ca.pem")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("tls_ca_file"), "{e}");
    let e = courier_redis::from_uri(concat!(
        "redis://127.0.0.1/0?queue=q&tls_key_file=",
        env!("CARGO_MANIFEST_DIR"),
        "/Cargo.toml"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("tls_cert_file"), "{e}");
}
