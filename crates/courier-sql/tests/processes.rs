//! Several processes on one database: a producer killed with SIGKILL mid-stream loses no
//! message whose `send` returned `Ok` (SQLite and PostgreSQL), and two processes sharing one
//! SQLite file lose and duplicate nothing.
//!
//! The children are this test binary run again with `--exact <test>` and `COURIER_CHILD`
//! set: the test function then plays the child's part.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use courier_core::{ConfigParams, MessageEnvelope, MessageQueue};
use courier_sql::{SqlMessageQueue, SqlStore};
use support::SqlHarness;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHILD: &str = "COURIER_CHILD";
const URL: &str = "COURIER_CHILD_URL";
const QUEUE: &str = "COURIER_CHILD_QUEUE";

async fn open_queue(url: &str, name: &str, lock_timeout_ms: u64) -> SqlMessageQueue {
    let store = SqlStore::connect(url).await.expect("connect");
    let config = ConfigParams::from_tuples([
        ("name", name.to_owned()),
        ("options.lock_timeout", lock_timeout_ms.to_string()),
        ("options.poll_interval", "20".to_owned()),
    ]);
    let queue = SqlMessageQueue::with_store(store, &config).expect("queue");
    queue.open(None).await.expect("open");
    queue
}

fn spawn_child(test: &str, role: &str, url: &str, queue: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env(URL, url)
        .env(QUEUE, queue)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child")
}

/// The child that is killed: sends forever, printing each acknowledged id, and takes every
/// third message without completing it.
async fn doomed_producer() {
    let queue = open_queue(
        &std::env::var(URL).unwrap(),
        &std::env::var(QUEUE).unwrap(),
        1000,
    )
    .await;
    for i in 0u64.. {
        let envelope = MessageEnvelope::new(None, "crash", i.to_string());
        let id = envelope.message_id.clone();
        queue.send(None, envelope).await.expect("send");
        println!("SENT {id}");
        if i % 3 == 0 {
            let _held = queue.receive(None, Duration::ZERO).await.expect("receive");
        }
    }
}

/// Sends 200 messages while receiving and completing; prints what it sent and completed.
async fn worker() {
    let queue = open_queue(
        &std::env::var(URL).unwrap(),
        &std::env::var(QUEUE).unwrap(),
        30_000,
    )
    .await;
    let mut idle = 0;
    let mut sent = 0;
    while idle < 3 {
        if sent < 200 {
            let envelope = MessageEnvelope::new(None, "shared", sent.to_string());
            let id = envelope.message_id.clone();
            queue.send(None, envelope).await.expect("send");
            println!("SENT {id}");
            sent += 1;
        }
        match queue
            .receive(
                None,
                Duration::from_millis(if sent < 200 { 0 } else { 500 }),
            )
            .await
            .expect("receive")
        {
            Some(m) => {
                queue.complete(&m).await.expect("complete");
                println!("DONE {}", m.message_id);
                idle = 0;
            }
            None if sent >= 200 => idle += 1,
            None => {}
        }
    }
}

/// Reads the child's `SENT`/`DONE` lines until it exits or `stop_after` ids were sent.
async fn read_lines(child: &mut Child, stop_after: Option<usize>) -> (Vec<String>, Vec<String>) {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut sent, mut done) = (Vec::new(), Vec::new());
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the child stopped talking")
    {
        // libtest's "test … " header may share the first line: look anywhere in it.
        if let Some((_, id)) = line.split_once("SENT ") {
            sent.push(id.trim().to_owned());
        } else if let Some((_, id)) = line.split_once("DONE ") {
            done.push(id.trim().to_owned());
        }
        if stop_after.is_some_and(|n| sent.len() >= n) {
            break;
        }
    }
    (sent, done)
}

/// In a child process (`COURIER_CHILD` set), plays the child's part and returns `true`.
async fn play_child() -> bool {
    match std::env::var(CHILD).as_deref() {
        Ok("doomed") => doomed_producer().await,
        Ok("worker") => worker().await,
        Ok(_) => {}
        Err(_) => return false,
    }
    true
}

async fn sigkill_loses_no_acknowledged_send(test: &str, url: &str) {
    let queue_name = format!("crash-{}", uuid::Uuid::new_v4().simple());
    let mut child = spawn_child(test, "doomed", url, &queue_name);
    let (acknowledged, _) = read_lines(&mut child, Some(300)).await;
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "the child was killed, not finished");

    let queue = open_queue(url, &queue_name, 1000).await;
    let mut received = Vec::new();
    // Held messages come back when their 1 s locks expire; 3 quiet seconds end the drain.
    while let Some(m) = queue
        .receive(None, Duration::from_secs(3))
        .await
        .expect("receive")
    {
        received.push(m.message_id.clone());
        queue.complete(&m).await.expect("complete");
    }
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "a message was delivered twice after the crash"
    );
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !unique.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sends were lost",
        missing.len(),
        acknowledged.len()
    );
    assert!(acknowledged.len() >= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_loses_no_acknowledged_send() {
    if play_child().await {
        return;
    }
    let harness = SqlHarness::sqlite().await.expect("sqlite");
    sigkill_loses_no_acknowledged_send("sqlite_sigkill_loses_no_acknowledged_send", &harness.url)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_loses_no_acknowledged_send() {
    if play_child().await {
        return;
    }
    let Some(harness) = SqlHarness::postgres().await else {
        return;
    };
    sigkill_loses_no_acknowledged_send("postgres_sigkill_loses_no_acknowledged_send", &harness.url)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_sqlite_file() {
    if play_child().await {
        return;
    }
    let harness = SqlHarness::sqlite().await.expect("sqlite");
    let queue_name = format!("shared-{}", uuid::Uuid::new_v4().simple());
    let test = "two_processes_share_a_sqlite_file";
    let mut a = spawn_child(test, "worker", &harness.url, &queue_name);
    let mut b = spawn_child(test, "worker", &harness.url, &queue_name);
    let (ra, rb) = tokio::join!(read_lines(&mut a, None), read_lines(&mut b, None));
    assert!(a.wait().await.expect("wait").success() && b.wait().await.expect("wait").success());
    let sent: Vec<String> = ra.0.into_iter().chain(rb.0).collect();
    let done: Vec<String> = ra.1.into_iter().chain(rb.1).collect();
    assert_eq!(sent.len(), 400);
    let unique: HashSet<&String> = done.iter().collect();
    assert_eq!(unique.len(), done.len(), "a message was completed twice");
    assert_eq!(
        unique,
        sent.iter().collect::<HashSet<_>>(),
        "sent and completed differ"
    );
}
