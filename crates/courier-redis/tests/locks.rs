//! Locks and the queue's life: a renewal longer than `lock_timeout` holds to its end, a
//! receive waiting when the queue closes ends with `NotOpened`, and a stream deleted under an
//! open queue is created again by the next call.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_conformance::unique_name;
use courier_core::{ErrorKind, MessageEnvelope, MessageQueue};

async fn open(url: &str, name: &str) -> Arc<dyn MessageQueue> {
    let queue =
        courier_redis::from_uri(&support::queue_url(url, name, &[("lock_timeout", "1000")]))
            .unwrap();
    queue.open(None).await.unwrap();
    queue
}

#[tokio::test(flavor = "current_thread")]
async fn a_renewal_longer_than_the_lock_timeout_holds_to_its_end() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("renew");
    let (holder, other) = (open(&url, &name).await, open(&url, &name).await);
    holder
        .send(None, MessageEnvelope::new(None, "t", "renewed"))
        .await
        .unwrap();
    let held = holder
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the message");
    let renewed = Instant::now();
    holder
        .renew_lock(&held, Duration::from_millis(2500))
        .await
        .unwrap();
    let early = other
        .receive(None, Duration::from_millis(2200))
        .await
        .unwrap();
    assert!(
        early.is_none(),
        "taken {:?} after a renewal for 2.5 s",
        renewed.elapsed()
    );
    let back = other
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("back once the renewal ran out");
    assert!(renewed.elapsed() < Duration::from_millis(4500));
    assert_eq!(back.delivery_count(), 2);
    other.complete(&back).await.unwrap();
    holder.complete(&held).await.unwrap();
    assert_eq!(other.read_message_count().await.unwrap(), 0);
    for queue in [holder, other] {
        queue.close(None).await.unwrap();
    }
    support::delete_streams(&url, &[name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_waiting_when_the_queue_closes_ends_with_not_opened() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("closing");
    let queue = open(&url, &name).await;
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.receive(None, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = Instant::now();
    queue.close(None).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the receive ended")
        .unwrap();
    assert_eq!(ended.unwrap_err().kind(), ErrorKind::NotOpened);
    assert!(closed.elapsed() < Duration::from_secs(4));
    support::delete_streams(&url, &[name]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_deleted_under_an_open_queue_is_created_again() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("deleted");
    let queue = open(&url, &name).await;
    support::delete_streams(&url, std::slice::from_ref(&name));
    assert!(queue.peek(None).await.unwrap().is_none());
    assert_eq!(queue.read_message_count().await.unwrap(), 0);
    queue
        .send(None, MessageEnvelope::new(None, "t", "after"))
        .await
        .unwrap();
    let got = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the message sent after the deletion");
    queue.complete(&got).await.unwrap();
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}
