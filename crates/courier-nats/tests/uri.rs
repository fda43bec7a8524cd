//! Configuration without a server: URIs and pip-services `ConfigParams`, bad input as
//! `Config` errors naming the key, no secret shown.

use courier_core::{ConfigParams, ErrorKind};
use courier_nats::{from_config, from_uri, stream_name};

fn config_error(uri: &str) -> courier_core::Error {
    let e = from_uri(uri).map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{uri}: {e}");
    e
}

#[test]
fn modes_names_and_streams() {
    let js = from_uri("nats://127.0.0.1:4222/orders").unwrap();
    assert_eq!(js.name(), "orders");
    assert!(
        js.capabilities().can_dead_letter(),
        "JetStream has dead letters"
    );
    let core = from_uri("nats://127.0.0.1/orders?jetstream=false&queue_group=workers").unwrap();
    assert!(!core.capabilities().can_dead_letter(), "core NATS has none");
    assert!(core.capabilities().can_peek());
    assert_eq!(stream_name("orders.dlq"), "COURIER_orders_2Edlq");
    assert_eq!(stream_name("a_b c"), "COURIER_a_5Fb_20c");
    assert_ne!(
        stream_name("a.b"),
        stream_name("a_b"),
        "escaping never merges two names"
    );
}

#[test]
fn bad_input_names_the_key() {
    for (uri, key) in [
        ("nats://h:4222", "queue"),
        ("nats://h/q?jetstrem=false", "options.jetstrem"),
        ("nats://h/q?jetstream=maybe", "options.jetstream"),
        ("nats://h/q?max_reconnect=-1", "options.max_reconnect"),
        ("nats://TOKEN@h/q", "credential.password"),
    ] {
        let e = config_error(uri);
        assert!(
            e.to_string().contains(key),
            "{uri}: {e} does not name {key}"
        );
    }
    let e = from_config(&ConfigParams::from_tuples([
        ("queue", "q"),
        ("connections.0.protocol", "http"),
        ("connections.0.host", "h"),
    ]))
    .map(drop)
    .unwrap_err();
    assert!(e.to_string().contains("connections.0.protocol"), "{e}");
}

#[test]
fn pip_connection_lists_and_tls() {
    let q = from_config(&ConfigParams::from_tuples([
        ("queue", "q"),
        ("options.jetstream", "false"),
        ("connections.0.protocol", "nats"),
        ("connections.0.host", "a"),
        ("connections.1.protocol", "tls"),
        ("connections.1.host", "b"),
        ("connections.1.port", "4443"),
        ("credential.token", "s3cr3t-token"),
    ]))
    .unwrap();
    let shown = format!("{q:?}");
    assert!(!shown.contains("s3cr3t-token"), "{shown}");
    // An empty token (an unset variable) does not replace user and password.
    from_config(&ConfigParams::from_tuples([
        ("queue", "q"),
        ("connection.host", "h"),
        ("credential.username", "u"),
        ("credential.password", "p"),
        ("credential.token", ""),
    ]))
    .unwrap();
}

#[test]
fn no_password_in_debug_or_errors() {
    let secret = "pa55-w0rd";
    let q = from_uri(&format!("nats://user:{secret}@h:4222/q")).unwrap();
    assert!(!format!("{q:?}").contains(secret));
    let e = config_error(&format!("nats://user:{secret}@h:4222/q?bogus=1"));
    assert!(!format!("{e} {e:?}").contains(secret));
}
