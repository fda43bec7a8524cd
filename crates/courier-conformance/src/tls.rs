//! A TLS server of a test's own: a CA and a server certificate made with `openssl`, and the
//! broker's own binary started on a free port with them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

/// A server started by a test, killed (and its files removed) when dropped.
#[derive(Debug)]
pub struct TlsServer {
    child: Child,
    /// The port it listens on, at 127.0.0.1.
    pub port: u16,
    /// The folder that holds `ca.pem` (the CA to trust), `server.pem` and `server.key`.
    pub dir: PathBuf,
}

impl TlsServer {
    /// The CA certificate clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Makes a CA and a server certificate for 127.0.0.1, then runs `program` with the
    /// arguments `args` gives for the port and the certificate and key files, and waits until
    /// it accepts connections. `None` after [`skip_or_fail`](crate::skip_or_fail) for
    /// `backend` if `openssl` or `program` is missing or the server does not come up.
    ///
    /// # Panics
    ///
    /// When `backend` is required (`COURIER_TEST_REQUIRE`) and the server cannot be started.
    pub async fn start(
        backend: &str,
        program: &str,
        args: impl Fn(u16, &Path, &Path) -> Vec<String>,
    ) -> Option<TlsServer> {
        let dir =
            std::env::temp_dir().join(format!("courier-tls-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::create_dir_all(&dir).is_err() || !certificates(&dir) {
            return crate::skip_or_fail(backend, "openssl cannot make test certificates");
        }
        // A port picked free may be taken by another test before the server binds it: a
        // server that exits instead of listening is started again on another port.
        for _ in 0..3 {
            let Some(port) = free_port() else { break };
            let child = Command::new(program)
                .args(args(port, &dir.join("server.pem"), &dir.join("server.key")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return crate::skip_or_fail(backend, &format!("cannot start {program}: {e}"));
                }
            };
            if listening(&mut child, port).await {
                return Some(TlsServer { child, port, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        crate::skip_or_fail(backend, &format!("the TLS {program} did not start"))
    }
}

/// What every backend's TLS test checks on a [`TlsServer`]: `trusted` (configured with
/// `tls_ca_file` = [`TlsServer::ca_file`]) opens, sends and receives over TLS; `untrusted`
/// (the system's roots, which lack the test CA) is refused with a `Config` error that points
/// at `tls_ca_file`, and stays closed.
///
/// # Panics
///
/// If either does otherwise.
pub async fn trusted_and_refused(trusted: &dyn MessageQueue, untrusted: &dyn MessageQueue) {
    trusted.open(None).await.expect("open over TLS");
    trusted
        .send(None, MessageEnvelope::new(Some("c1"), "t", "over tls"))
        .await
        .expect("send over TLS");
    let got = trusted
        .receive(None, Duration::from_secs(5))
        .await
        .expect("receive over TLS")
        .expect("the message, over TLS");
    assert_eq!(&got.message[..], b"over tls");
    trusted.complete(&got).await.expect("complete over TLS");
    trusted.close(None).await.expect("close");

    let e = untrusted
        .open(None)
        .await
        .expect_err("an untrusted certificate");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("tls_ca_file"), "{e}");
    assert!(!untrusted.is_open());
}

/// Waits up to 5 s for `child` to accept connections on `port`; false if it exits first or
/// never does.
async fn listening(child: &mut Child, port: u16) -> bool {
    let running = |child: &mut Child| matches!(child.try_wait(), Ok(None));
    for _ in 0..100 {
        if !running(child) {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            // Whoever accepted, the server must still be running to own the port.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return running(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A port free on `127.0.0.1` when this returns.
fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`), in `dir`.
fn certificates(dir: &Path) -> bool {
    let key = |file: &str| {
        [
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            file,
        ]
        .map(str::to_owned)
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .is_ok()
        && openssl(dir, &key("ca.key").each_ref().map(String::as_str))
        && openssl(
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
        && openssl(dir, &key("server.key").each_ref().map(String::as_str))
        && openssl(
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
        && openssl(
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
