//! Broken networks between courier and RabbitMQ, through the conformance crate's TCP fault
//! proxy: connections cut while two producers and two consumers run lose no message whose
//! `send` returned `Ok`; a consumer whose connection dies while its handler holds a message
//! gets it again (and its late `complete` reports the lost lock, never acknowledging another
//! delivery); `open` against a closed port or a silent server fails with `Connection` within
//! `connect_timeout`; bad credentials are a `Config` error that does not show the password.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_conformance::fault::{ClosedPort, FaultProxy};
use courier_conformance::{outages, unique_name};
use courier_core::{
    CallbackMessageReceiver, ErrorKind, MessageEnvelope, MessageQueue, MessageQueueExt,
};
use parking_lot::Mutex;

/// A proxy in front of the broker, and the broker's URL with the proxy's address.
async fn proxied() -> Option<(FaultProxy, String)> {
    let url = support::reachable().await?;
    let upstream: SocketAddr = tokio::net::lookup_host(support::host_port(&url))
        .await
        .expect("the broker's address")
        .next()
        .expect("an address");
    let proxy = FaultProxy::start(upstream).await.expect("a proxy");
    let mut through = url::Url::parse(&url).unwrap();
    through.set_port(Some(proxy.port())).unwrap();
    Some((proxy, through.to_string()))
}

async fn open(url: &str, name: &str, options: &[(&str, &str)]) -> Arc<dyn MessageQueue> {
    let mut options = options.to_vec();
    options.push(("expires", "60000"));
    let queue = courier_rabbitmq::from_uri(&support::queue_url(url, name, &options)).unwrap();
    queue.open(None).await.expect("open through the proxy");
    Arc::new(queue)
}

/// Two producers and two consumers, each on its own connection, while every connection is
/// cut five times: every message whose send returned `Ok` is completed at least once, and
/// the queue ends empty. Duplicates (a `complete` whose channel died first) are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_under_two_producers_and_two_consumers_lose_nothing() {
    let Some((proxy, url)) = proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let options = [("connect_timeout", "3000"), ("lock_timeout", "5000")];
    let consumers = [
        open(&url, &name, &options).await,
        open(&url, &name, &options).await,
    ];
    let producers = [
        open(&url, &name, &options).await,
        open(&url, &name, &options).await,
    ];
    let queues: Vec<_> = consumers.iter().chain(&producers).cloned().collect();
    let report = outages::cuts_lose_nothing(&proxy, producers, consumers).await;
    println!("rabbitmq cuts: {report}");
    for queue in queues {
        queue.close(None).await.expect("close");
    }
    support::delete_queues(&support::broker_url(), &[name]);
}

/// The consumer's connection dies while its handler holds a message: the message comes back
/// (to the same listener, reconnected), and the handler's completion of the first delivery
/// reports the lost lock instead of acknowledging anything on the new channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_comes_back_after_its_connection_dies() {
    let Some((proxy, url)) = proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let queue = open(&url, &name, &[("connect_timeout", "3000")]).await;
    let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let completions = Arc::new(Mutex::new(Vec::new()));
    let (holding, held) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let receiver = {
        let (seen, completions, queue) = (seen.clone(), completions.clone(), queue.clone());
        let (holding, held) = (holding.clone(), held.clone());
        Arc::new(CallbackMessageReceiver::new(move |m: MessageEnvelope| {
            let (seen, completions, queue) = (seen.clone(), completions.clone(), queue.clone());
            let (holding, held) = (holding.clone(), held.clone());
            async move {
                let first = {
                    let mut seen = seen.lock();
                    seen.push((m.message_id.clone(), m.delivery_count()));
                    seen.len() == 1
                };
                if first {
                    holding.notify_one();
                    held.notified().await;
                }
                let completed = queue.complete(&m).await;
                completions.lock().push(completed.map_err(|e| e.kind()));
                Ok(())
            }
        }))
    };
    let listening = queue.begin_listen(None, receiver);
    let envelope = MessageEnvelope::new(Some("held"), "fault", "hold me");
    let id = envelope.message_id.clone();
    queue.send(None, envelope).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), holding.notified())
        .await
        .expect("the handler got the message");
    proxy.cut();
    // Let the consumer notice and reconnect before the handler finishes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.notify_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queue.end_listen(None);
    listening.join().await.unwrap();
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2, "the message came back once: {seen:?}");
    assert!(seen.iter().all(|(got, _)| *got == id));
    assert_eq!(seen[0].1, 1);
    assert_eq!(seen[1].1, 2, "the broker counted the lost delivery");
    let completions = completions.lock().clone();
    assert_eq!(
        completions,
        vec![Err(ErrorKind::Connection), Ok(())],
        "the first completion reports the lost lock, the second completes"
    );
    assert_eq!(queue.read_message_count().await.unwrap(), 0);
    queue.close(None).await.unwrap();
    support::delete_queues(&support::broker_url(), &[name]);
}

/// `open` against a port nothing listens on, and against a server that accepts and never
/// answers, fails with `Connection` within `connect_timeout` (1 s).
#[tokio::test]
async fn open_fails_within_connect_timeout() {
    let Some((proxy, url)) = proxied().await else {
        return;
    };
    let nobody = ClosedPort::new().unwrap();
    let closed_port = nobody.port();
    let mut closed = url::Url::parse(&url).unwrap();
    closed.set_port(Some(closed_port)).unwrap();
    proxy.stall();
    for (what, base) in [
        ("a closed port", closed.to_string()),
        ("a silent server", url),
    ] {
        let queue = courier_rabbitmq::from_uri(&support::queue_url(
            &base,
            "never",
            &[("connect_timeout", "1000")],
        ))
        .unwrap();
        let started = Instant::now();
        let err = queue.open(None).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Connection, "{what}: {err}");
        assert!(
            waited < Duration::from_millis(2000),
            "{what}: open failed after {waited:?}: {err}"
        );
        assert!(!queue.is_open());
        assert!(!err.to_string().contains("guest@"), "{err}");
    }
}

/// Sends while the broker is unreachable fail with `Connection` within `connect_timeout` or,
/// once it is back, land: no `Ok` is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_an_outage_fail_or_land() {
    let Some((proxy, url)) = proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let queue = open(&url, &name, &[("connect_timeout", "1000")]).await;
    outages::outage_sends_fail_or_land(&proxy, &*queue).await;
    queue.close(None).await.unwrap();
    support::delete_queues(&support::broker_url(), &[name]);
}

/// Bad credentials: a `Config` error at once (no retrying), without the password.
#[tokio::test]
async fn bad_credentials_are_a_config_error_without_the_password() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let mut wrong = url::Url::parse(&url).unwrap();
    wrong.set_username("courier-nobody").unwrap();
    wrong.set_password(Some("s3cr3t-pw")).unwrap();
    let queue =
        courier_rabbitmq::from_uri(&support::queue_url(wrong.as_str(), "never", &[])).unwrap();
    let started = Instant::now();
    let err = queue.open(None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
}
