//! Every public way of creating a queue knows every enabled backend, with no registration
//! call first, and what `connect` returns prints usefully without its password.

#![cfg(feature = "sqlite")]

use courier::{ConfigParams, DefaultMessagingFactory, Descriptor, ErrorKind, MessageQueue};

fn temp_db() -> String {
    let path = std::env::temp_dir().join(format!(
        "courier-entry-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn create_from_uri_knows_sql_before_any_connect() {
    // This test binary calls nothing else first: `create_from_uri` must register by itself.
    let path = temp_db();
    let queue = courier::create_from_uri(&format!("sqlite://{path}?queue=entry")).unwrap();
    queue.open(None).await.unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 0);
    queue.close(None).await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn the_default_factory_has_every_enabled_descriptor() {
    let path = temp_db();
    let mut factory = DefaultMessagingFactory::new();
    factory.configure(&ConfigParams::from_tuples([(
        "connection.uri",
        format!("sqlite://{path}"),
    )]));
    let locator: Descriptor = "pip-services:message-queue:sqlite:orders:1.0"
        .parse()
        .unwrap();
    let queue = factory.create_queue(&locator).unwrap();
    assert_eq!(queue.name(), "orders");
    queue.open(None).await.unwrap();
    queue.close(None).await.unwrap();
    let _ = std::fs::remove_file(&path);
    // A descriptor whose kind is not the address's backend is refused.
    let wrong: Descriptor = "pip-services:message-queue:postgres:orders:1.0"
        .parse()
        .unwrap();
    let err = factory.create_queue(&wrong).map(drop).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

#[tokio::test]
async fn a_connected_queue_prints_its_name_backend_and_address_without_password() {
    let queue = courier::create_from_uri(
        "postgres://app:s3cr3tpw@127.0.0.1:1/db?queue=shown&lock_timeout=500",
    )
    .unwrap();
    let shown = format!("{queue:?}");
    assert_eq!(
        shown,
        r#"MessageQueue { name: "shown", backend: "postgres", uri: "postgres://app:***@127.0.0.1:1/db?queue=shown&lock_timeout=500", open: false }"#
    );
}
