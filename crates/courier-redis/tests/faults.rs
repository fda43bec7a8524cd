//! Redis queues on a broken network and with dying consumers: connections cut while two
//! producers and two consumers run lose no message whose `send` returned `Ok`; sends during an
//! outage fail or land; a consumer process killed with SIGKILL while it holds messages gives
//! them up after `lock_timeout`; `open` against a closed port fails within `connect_timeout`.

mod support;

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_conformance::fault::ClosedPort;
use courier_conformance::{outages, unique_name};
use courier_core::{MessageEnvelope, MessageQueue};

async fn open(url: &str, name: &str, options: &[(&str, &str)]) -> Arc<dyn MessageQueue> {
    let queue = courier_redis::from_uri(&support::queue_url(url, name, options)).unwrap();
    queue.open(None).await.expect("open");
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_under_two_producers_and_two_consumers_lose_nothing() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let options = [("connect_timeout", "2000"), ("lock_timeout", "2000")];
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
    println!("redis cuts: {report}");
    for queue in queues {
        queue.close(None).await.expect("close");
    }
    support::delete_streams(&support::server_url(), &[name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_an_outage_fail_or_land() {
    let Some((proxy, url)) = support::proxied().await else {
        return;
    };
    let name = unique_name("fault");
    let queue = open(&url, &name, &[("connect_timeout", "1000")]).await;
    outages::outage_sends_fail_or_land(&proxy, &*queue).await;
    queue.close(None).await.unwrap();
    support::delete_streams(&support::server_url(), &[name]);
}

#[tokio::test(flavor = "current_thread")]
async fn open_against_a_closed_port_fails_within_connect_timeout() {
    if support::reachable().await.is_none() {
        return;
    }
    let nobody = ClosedPort::new().unwrap();
    let queue = courier_redis::from_uri(&format!(
        "redis://courier:s3cret@127.0.0.1:{}/0?queue=never&connect_timeout=1000",
        nobody.port()
    ))
    .unwrap();
    outages::open_fails_fast(&*queue, Duration::from_secs(2), "s3cret").await;
}

/// The environment variable that makes [`a_consumer_killed_holding_messages_gives_them_up`]
/// the holding consumer: the queue's name.
const HOLDER: &str = "COURIER_REDIS_HOLDER_QUEUE";
const HELD: usize = 3;
const LOCK_MS: u64 = 2000;

/// A consumer process (this test binary again, as the holder) receives three messages and is
/// killed with SIGKILL before it settles them. Another consumer gets none of them while their
/// locks run, and all three once `lock_timeout` has passed, as their second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_holding_messages_gives_them_up() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let lock = LOCK_MS.to_string();
    let options = [("lock_timeout", lock.as_str())];
    if let Ok(name) = std::env::var(HOLDER) {
        // The holder: take the messages, say so, and wait to be killed.
        let queue = open(&url, &name, &options).await;
        let mut held = Vec::new();
        while held.len() < HELD {
            if let Some(m) = queue.receive(None, Duration::from_secs(5)).await.unwrap() {
                held.push(m);
            }
        }
        println!("HELD {}", held.len());
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("the holder was not killed");
    }
    let name = unique_name("killed");
    let other = open(&url, &name, &options).await;
    for i in 0..HELD {
        other
            .send(None, MessageEnvelope::new(None, "held", format!("m{i}")))
            .await
            .unwrap();
    }
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_consumer_killed_holding_messages_gives_them_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER, &name)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the holder process");
    let stdout = holder.stdout.take().expect("its output");
    let said = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .any(|line| line.contains(&format!("HELD {HELD}")))
    });
    let held = tokio::time::timeout(Duration::from_secs(30), said).await;
    holder.kill().expect("SIGKILL");
    let _ = holder.wait();
    assert!(
        matches!(held, Ok(Ok(true))),
        "the holder never held the messages"
    );
    let killed = Instant::now();

    let early = other
        .receive(None, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        early.is_none(),
        "a held message was delivered before its lock ran out"
    );
    let mut back = Vec::new();
    while back.len() < HELD {
        let m = other
            .receive(None, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the killed consumer's messages come back");
        assert_eq!(m.delivery_count(), 2, "the holder's delivery counts");
        other.complete(&m).await.unwrap();
        back.push(m);
    }
    assert!(killed.elapsed() < Duration::from_millis(LOCK_MS + 3000));
    assert_eq!(other.read_message_count().await.unwrap(), 0);
    other.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}
