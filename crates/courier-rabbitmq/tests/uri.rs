//! Configuration without a broker: URIs and pip-services `ConfigParams` become the same
//! settings, RabbitMQ's defaults apply, bad input is a `Config` error naming the key, and no
//! password shows anywhere.

use std::error::Error as _;

use courier_core::{ConfigParams, DefaultMessagingFactory, Descriptor, ErrorKind, MessageQueue};
use courier_rabbitmq::{QueueType, from_config, from_uri};

fn config_error(uri: &str) -> courier_core::Error {
    let e = from_uri(uri).map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{uri}: {e}");
    e
}

#[test]
fn defaults_are_rabbitmqs_and_courier_durable_ones() {
    let q = from_uri("amqp://127.0.0.1?queue=orders").unwrap();
    let c = q.broker().config();
    assert_eq!(c.address(), "amqp://127.0.0.1:5672/%2F");
    assert_eq!(c.queue, "orders");
    assert_eq!(c.routing_key, "orders");
    assert_eq!(c.dead_letter_queue, "orders.dlq");
    assert_eq!(c.queue_type, QueueType::Quorum);
    assert!(c.persistent && c.auto_create && !c.exclusive && !c.auto_delete && !c.no_queue);
    assert_eq!(c.prefetch, courier_rabbitmq::DEFAULT_PREFETCH);
    assert_eq!(c.exchange, "");
    let tls = from_uri("amqps://h/vh?queue=q").unwrap();
    assert_eq!(tls.broker().config().address(), "amqps://h:5671/vh");
}

#[test]
fn pip_options_are_read_from_the_uri_and_from_config_params() {
    let uri = "amqp://u:p@broker:5673/%2f?queue=jobs&exchange=events&exchange_type=direct\
               &routing_key=job.created&prefetch=7&max_size=5&lock_timeout=2000&max_deliveries=3";
    let by_uri = from_uri(uri).unwrap();
    let config = ConfigParams::from_tuples([
        ("queue", "jobs"),
        ("exchange", "events"),
        ("connection.protocol", "amqp"),
        ("connection.host", "broker"),
        ("connection.port", "5673"),
        ("credential.username", "u"),
        ("credential.password", "p"),
        ("options.exchange_type", "direct"),
        ("options.routing_key", "job.created"),
        ("options.prefetch", "7"),
        ("options.max_size", "5"),
        ("options.lock_timeout", "2000"),
        ("options.max_deliveries", "3"),
    ]);
    let from_params = from_config(&config).unwrap();
    for q in [&by_uri, &from_params] {
        let c = q.broker().config();
        assert_eq!(c.exchange, "events");
        assert_eq!(c.exchange_type, "direct");
        assert_eq!(c.routing_key, "job.created");
        assert_eq!(c.prefetch, 5, "the prefetch never exceeds max_size");
        assert_eq!(c.address(), "amqp://broker:5673/%2F");
    }
    // pip-services' defaults, written out, are accepted.
    from_uri("amqp://h?queue=q&persistent=false&auto_create=false&exclusive=true&auto_delete=true&interval=10000").unwrap();
}

#[test]
fn classic_queues_are_chosen_by_their_options_and_refuse_max_deliveries() {
    for uri in [
        "amqp://h?queue=q&exclusive=true",
        "amqp://h?queue=q&auto_delete=true",
        "amqp://h?queue=q&persistent=false",
        "amqp://h?queue=q&queue_type=classic",
    ] {
        let q = from_uri(uri).unwrap();
        assert_eq!(q.broker().config().queue_type, QueueType::Classic, "{uri}");
    }
    let e = config_error("amqp://h?queue=q&queue_type=quorum&exclusive=true");
    assert!(e.to_string().contains("queue_type"), "{e}");
    let e = config_error("amqp://h?queue=q&queue_type=classic&max_deliveries=2");
    assert!(e.to_string().contains("max_deliveries"), "{e}");
}

#[test]
fn a_send_only_queue_may_be_named_by_its_exchange() {
    let q = from_uri("amqp://h?exchange=logs&no_queue=true").unwrap();
    assert_eq!(q.name(), "logs");
    let caps = q.capabilities();
    assert!(caps.can_send());
    assert!(!caps.can_receive() && !caps.can_peek() && !caps.can_message_count());
}

#[test]
fn bad_input_is_a_config_error_naming_the_key() {
    for (uri, key) in [
        ("amqp://h", "queue"),
        ("amqp://h?queue=q&prefech=10", "options.prefech"),
        ("amqp://h?queue=q&prefetch=0", "options.prefetch"),
        ("amqp://h?queue=q&prefetch=lots", "options.prefetch"),
        (
            "amqp://h?queue=q&exchange_type=fan",
            "options.exchange_type",
        ),
        ("amqp://h?queue=q&queue_type=stream", "options.queue_type"),
        ("amqp://h?queue=q&persistent=maybe", "options.persistent"),
        ("amqp://h?queue=q&heartbeat=99999999", "options.heartbeat"),
        ("amqp://h?queue=q&queue=r", "queue"),
    ] {
        let e = config_error(uri);
        assert!(
            e.to_string().contains(key),
            "{uri}: {e} does not name {key}"
        );
        assert_eq!(e.backend(), Some("rabbitmq"), "{uri}: {e}");
    }
    let e = from_config(&ConfigParams::from_tuples([
        ("queue", "q"),
        ("connection.protocol", "http"),
        ("connection.host", "h"),
    ]))
    .map(drop)
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = from_config(&ConfigParams::from_tuples([("queue", "q")]))
        .map(drop)
        .unwrap_err();
    assert!(e.to_string().contains("connection.host"), "{e}");
}

#[test]
fn no_password_in_debug_display_or_errors() {
    let secret = "pa55-w0rd";
    let q = from_uri(&format!("amqp://user:{secret}@h:5672/v?queue=q")).unwrap();
    let shown = format!("{q:?} {:?}", q.broker());
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("user"), "the user is shown: {shown}");
    let e = config_error(&format!("amqp://user:{secret}@h:5672/v?queue=q&bogus=1"));
    let mut text = format!("{e} {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!text.contains(secret), "{text}");
}

#[test]
fn the_descriptor_and_the_schemes_create_rabbitmq_queues() {
    courier_rabbitmq::register();
    let q = courier_core::create_from_uri("amqps://h?queue=q").unwrap();
    assert_eq!(q.name(), "q");
    let mut factory = DefaultMessagingFactory::new();
    courier_rabbitmq::register_descriptors(&mut factory);
    factory.configure(&ConfigParams::from_tuples([(
        "connection.uri",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )]));
    let locator: Descriptor = "pip-services:message-queue:rabbitmq:orders:1.0"
        .parse()
        .unwrap();
    let queue = factory.create_queue(&locator).unwrap();
    assert_eq!(queue.name(), "orders");
    assert!(!queue.is_open());
    assert!(!queue.capabilities().can_peek(), "AMQP cannot peek");
}
