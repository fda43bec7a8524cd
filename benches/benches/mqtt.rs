//! MQTT queues at QoS 1 against raw rumqttc doing the same work, in one run, with 64 B and
//! 4 KiB payloads: `count` sends, each waiting for the broker's PUBACK (raw: building the
//! pip-services envelope JSON with serde_json and base64, `publish`, then waiting for its
//! PUBACK event), then `count` receive + complete (raw: reading the subscription's publishes,
//! parsing each envelope and decoding its payload, and acknowledging it by hand). Both sides are
//! one client that is subscribed to the topic it publishes to, with manual acknowledgements
//! and a persistent session.
//!
//! ```sh
//! cargo bench -p courier-benches --bench mqtt
//! ```
//!
//! The broker comes from `COURIER_TEST_MQTT_URL` (default: the local Mosquitto); if it is
//! unreachable the bench says so and stops. Rounds are at most 1000 messages: Mosquitto keeps
//! at most 1000 (`max_queued_messages`) for a subscriber that does not take them.

use std::time::{Duration, Instant};

use courier_benches::{alternating, courier_send_then_take, payload, print_send_take_row};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

const ROUNDS: usize = 11;

/// courier: a queue on a fresh topic; (send, receive + complete) msg/s.
async fn courier_round(url: &str, count: usize, body: &bytes::Bytes) -> (f64, f64) {
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = courier::mqtt::from_uri(&format!("{url}/{topic}?qos=1")).unwrap();
    queue.open(None).await.unwrap();
    let rates = courier_send_then_take(&*queue, count, body).await;
    queue.close(None).await.unwrap();
    rates
}

/// Raw rumqttc: one client subscribed to a fresh topic, publishing the envelope JSON courier
/// writes; (publish + PUBACK, read + ack) msg/s.
async fn raw_round(host: &str, port: u16, count: usize, body: &bytes::Bytes) -> (f64, f64) {
    let topic = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut options = MqttOptions::new(format!("raw{}", &id[..16]), host, port);
    options
        .set_manual_acks(true)
        .set_clean_session(false)
        .set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<Publish>();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let _ = acks_tx.send(ack.pkid);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = incoming_tx.send(publish);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    client
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    subscribed.recv().await.expect("a SUBACK");
    let start = Instant::now();
    for _ in 0..count {
        client
            .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, envelope_json(body))
            .await
            .unwrap();
        acks.recv().await.expect("a PUBACK");
    }
    let send = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..count {
        let publish = tokio::time::timeout(Duration::from_secs(10), incoming.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        std::hint::black_box(read_envelope(&publish.payload));
        client.ack(&publish).await.unwrap();
    }
    let take = count as f64 / start.elapsed().as_secs_f64();
    // End the session, as courier's queue does with its generated client id.
    let _ = client.unsubscribe(topic).await;
    let _ = client.disconnect().await;
    let _ = task.await;
    (send, take)
}

/// What a hand-written pip-services sender does per message: the envelope's JSON, the
/// payload in base64.
fn envelope_json(body: &[u8]) -> bytes::Bytes {
    use base64::Engine as _;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let json = serde_json::json!({
        "message_id": id,
        "correlation_id": "cid",
        "message_type": "bench",
        "sent_time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "message": base64::engine::general_purpose::STANDARD.encode(body),
    });
    bytes::Bytes::from(serde_json::to_vec(&json).expect("JSON"))
}

/// What a hand-written pip-services reader does per message: parse the JSON, decode the
/// payload.
fn read_envelope(payload: &[u8]) -> (serde_json::Value, Vec<u8>) {
    use base64::Engine as _;
    let value: serde_json::Value = serde_json::from_slice(payload).expect("an envelope");
    let body = base64::engine::general_purpose::STANDARD
        .decode(value["message"].as_str().expect("a payload"))
        .expect("base64");
    (value, body)
}

fn main() {
    courier_benches::run_ratio_bench(|| async {
        let url = std::env::var("COURIER_TEST_MQTT_URL")
            .unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned());
        let host_port = url.trim_start_matches("mqtt://").trim_end_matches('/');
        let (host, port) = host_port
            .rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(1883)))
            .unwrap_or((host_port.to_owned(), 1883));
        if tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .is_err()
        {
            println!("MQTT at {url} is unreachable: nothing to measure");
            return;
        }
        let count = courier_benches::messages_per_round(1000).min(1000);
        println!(
            "\nMQTT QoS 1, msg/s (median of {ROUNDS} rounds of {count} messages, one worker, the order alternating; raw = rumqttc with manual acks, writing and reading the same envelope JSON with serde_json)"
        );
        println!(
            "| payload | courier send | raw publish+PUBACK | ratio | courier receive+complete | raw read+ack | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        for size in [64, 4096] {
            let body = payload(size);
            let (ours, raw) = alternating(
                ROUNDS,
                async || courier_round(&url, count, &body).await,
                async || raw_round(&host, port, count, &body).await,
            )
            .await;
            print_send_take_row(size, &ours, &raw);
        }
    });
}
