//! Abandoned messages go behind the messages already waiting (as in the memory queue), but a
//! busy stream never starves them: a receive claims them first at least every 100 ms.

mod support;

use std::time::Duration;

use courier_conformance::unique_name;
use courier_core::{MessageEnvelope, MessageQueue};

#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_message_comes_back_while_a_backlog_remains() {
    let Some(url) = support::reachable().await else {
        return;
    };
    let name = unique_name("claims");
    let queue = courier_redis::from_uri(&support::queue_url(&url, &name, &[])).unwrap();
    queue.open(None).await.unwrap();
    queue
        .send(None, MessageEnvelope::new(None, "abandoned", "a"))
        .await
        .unwrap();
    let first = queue
        .receive(None, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the first message");
    const BACKLOG: usize = 3000;
    for i in 0..BACKLOG {
        queue
            .send(None, MessageEnvelope::new(None, "backlog", format!("{i}")))
            .await
            .unwrap();
    }
    queue.abandon(&first).await.unwrap();
    let mut taken = 0;
    loop {
        let m = queue
            .receive(None, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a message");
        queue.complete(&m).await.unwrap();
        if m.message_type == "abandoned" {
            assert_eq!(m.delivery_count(), 2);
            break;
        }
        taken += 1;
        assert!(
            taken < BACKLOG,
            "the abandoned message waited for the whole backlog"
        );
    }
    assert!(
        queue.read_message_count().await.unwrap() > 0,
        "a backlog remains when the abandoned message comes back"
    );
    queue.clear(None).await.unwrap();
    assert_eq!(queue.read_message_count().await.unwrap(), 0);
    queue.close(None).await.unwrap();
    support::delete_streams(&url, &[name]);
}
