//! No password reaches an error, `Debug` or `Display`, whatever the input: random printable
//! passwords, placed in URIs of every scheme (well formed, with a misspelt option, with a bad
//! port, not parseable at all) and in `ConfigParams`, never show up in what comes back, also
//! when the queue tries to connect. `COURIER_SECRET_CASES=N` runs N random passwords (64).

use std::error::Error as _;
use std::fmt::Write as _;

use courier::{ConfigParams, Descriptor, MessageQueue};
use proptest::prelude::*;

const SCHEMES: [&str; 13] = [
    "memory",
    "sqlite",
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "amqp",
    "amqps",
    "nats",
    "redis",
    "rediss",
    "mqtt",
    "mqtts",
];

/// Everything an error lets a caller see: `Display`, `Debug`, and its sources.
fn shown(e: &courier::Error) -> String {
    let mut text = format!("{e}\n{e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, "\n{s}\n{s:?}");
        source = s.source();
    }
    text
}

fn assert_hidden(text: &str, password: &str, context: &str) {
    let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
    assert!(
        !text.contains(password),
        "{context}: the password {password:?} shows in {text:?}"
    );
    assert!(
        !text.contains(&encoded),
        "{context}: the encoded password {encoded:?} shows in {text:?}"
    );
}

/// Creates (and, for servers that cannot be there, opens) the queue of `uri`; checks every
/// text that comes back.
async fn try_uri(uri: &str, password: &str) {
    match courier::create_from_uri(uri) {
        Err(e) => assert_hidden(&shown(&e), password, uri),
        Ok(queue) => {
            // 127.0.0.1:1 refuses at once; SQLite paths are not opened (they would be created).
            if !uri.starts_with("sqlite") && !uri.starts_with("memory") {
                if let Err(e) = queue.open(None).await {
                    assert_hidden(&shown(&e), password, uri);
                }
                let _ = queue.close(None).await;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("COURIER_SECRET_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn passwords_never_show(password in "[ -~]{8,20}") {
        prop_assume!(password.trim().len() >= 6);
        courier::register_backends();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for scheme in SCHEMES {
                for uri in [
                    format!("{scheme}://user:{password}@127.0.0.1:1/db?queue=q&connect_timeout=1000"),
                    format!("{scheme}://user:{password}@127.0.0.1:1/db?queue=q&lock_timout=5"),
                    format!("{scheme}://user:{password}@127.0.0.1:99999/db?queue=q"),
                    format!("{scheme}://user:{password}@[::1/db?queue=q"),
                    format!("{scheme}//user:{password}@127.0.0.1/db"),
                    format!("{scheme}://127.0.0.1:1/db?queue=q&password={password}"),
                    format!("{scheme}://127.0.0.1/app?user=admin@srv&password={password}&queue=q"),
                    format!("{scheme}://127.0.0.1:1/db?user=a@b&password={password}&queue=q"),
                ] {
                    try_uri(&uri, &password).await;
                }
                let uri = format!("{scheme}://user:{password}@127.0.0.1:1/db");
                let config = ConfigParams::from_tuples([
                    ("connection.uri", uri.as_str()),
                    ("credential.username", "user"),
                    ("credential.password", password.as_str()),
                    ("options.connect_timeout", "1000"),
                ]);
                assert_hidden(&format!("{config} {config:?}"), &password, "ConfigParams");
                let mut factory = courier::messaging_factory();
                factory.configure(&config);
                let locator: Descriptor = format!("pip-services:message-queue:{scheme}:q:1.0")
                    .parse()
                    .unwrap();
                match factory.create_queue(&locator) {
                    Err(e) => assert_hidden(&shown(&e), &password, "factory"),
                    Ok(queue) => {
                        if scheme != "sqlite" {
                            if let Err(e) = queue.open(None).await {
                                assert_hidden(&shown(&e), &password, "factory open");
                            }
                        }
                        let _ = queue.close(None).await;
                    }
                }
            }
        });
    }
}
