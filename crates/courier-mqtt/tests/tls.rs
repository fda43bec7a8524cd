//! TLS on a live broker: a `mosquitto` of the test's own, TLS only, with a certificate signed
//! by a CA the test makes with `openssl`. A queue that trusts the CA (`tls_ca_file`) sends and
//! receives over `mqtts://`; one that does not is refused with a `Config` error.

use courier_conformance::tls::{self, TlsServer};
use courier_core::ErrorKind;

/// A TLS-only Mosquitto on a free port.
async fn tls_server() -> Option<TlsServer> {
    let program =
        std::env::var("COURIER_TEST_MOSQUITTO").unwrap_or_else(|_| "mosquitto".to_owned());
    TlsServer::start("mqtt", &program, |port, cert, key| {
        let dir = cert.parent().expect("the certificates' directory");
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let text = format!(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            cert.display(),
            key.display()
        );
        std::fs::write(&conf, text).expect("the mosquitto config");
        vec!["-c".into(), conf.display().to_string()]
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_queue_that_trusts_the_ca_talks_tls_and_one_that_does_not_is_refused() {
    let Some(server) = tls_server().await else {
        return;
    };
    let (port, ca) = (server.port, server.ca_file());
    let trusted = courier_mqtt::from_uri(&format!(
        "mqtts://127.0.0.1:{port}/tls-queue?tls_ca_file={}",
        ca.display()
    ))
    .unwrap();
    let untrusted = courier_mqtt::from_uri(&format!(
        "mqtts://127.0.0.1:{port}/tls-queue?connect_timeout=3000"
    ))
    .unwrap();
    tls::trusted_and_refused(&*trusted, &*untrusted).await;
}

#[test]
fn tls_files_are_checked() {
    let e = courier_mqtt::from_uri("mqtt://127.0.0.1/q?tls_ca_file=/nonexistent/ca.pem")
        .expect_err("a missing CA file");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("tls_ca_file"), "{e}");
}
