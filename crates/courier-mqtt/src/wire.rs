//! How courier's MQTT queues put envelopes on the wire, as pip-services' MQTT queues do
//! (`spec/pip-brokers.md` §5.3).
//!
//! * **Envelope mode** (`serialize_envelope=true`, the default): the payload is the UTF-8
//!   JSON of the whole envelope, `{"message_id", "correlation_id", "message_type",
//!   "sent_time", "message": <base64>}` ([`MessageEnvelope::to_json`]). What is read back is
//!   what any pip-services language writes: v3 `correlation_id` or v4 `trace_id`, missing keys
//!   and `null`s, every `sent_time` form ([`MessageEnvelope::from_json`]).
//! * **Raw mode** (`serialize_envelope=false`): the payload is the message's bytes, nothing
//!   else travels. A received message's `message_type` is the topic it was published to, its
//!   `correlation_id` is empty and its `message_id` is new (pip-services uses the MQTT packet
//!   id, which the broker reuses; courier does not).
//!
//! A payload that envelope mode cannot read (not UTF-8 JSON, JSON that is not an object, an
//! object with neither `message` nor `message_id`, or one whose keys have the wrong types) is
//! a foreign publisher's: it is **delivered raw**, as raw mode would deliver it, never dropped
//! and never a panic. A consumer tells such messages by their `message_type`, the topic.

use bytes::Bytes;
use courier_core::MessageEnvelope;

/// The payload `envelope` is published with.
pub fn encode(envelope: &MessageEnvelope, serialize_envelope: bool) -> Bytes {
    if serialize_envelope {
        Bytes::from(envelope.to_json())
    } else {
        envelope.message.clone()
    }
}

/// The envelope of a message received on `topic` with `payload`; see the
/// [module docs](self) for what is read and what falls back to raw.
pub fn decode(topic: &str, payload: Bytes, serialize_envelope: bool) -> MessageEnvelope {
    read(topic, payload, serialize_envelope).0
}

/// [`decode`], and whether the payload was an envelope (its `message_id` the sender's).
pub(crate) fn read(
    topic: &str,
    payload: Bytes,
    serialize_envelope: bool,
) -> (MessageEnvelope, bool) {
    if serialize_envelope {
        if let Some(envelope) = envelope_json(&payload) {
            return (envelope, true);
        }
        tracing::debug!(
            topic,
            bytes = payload.len(),
            "An MQTT payload is not a pip-services envelope: delivered raw"
        );
    }
    (MessageEnvelope::new(None, topic, payload), false)
}

/// The envelope in `payload`, if it is one.
fn envelope_json(payload: &[u8]) -> Option<MessageEnvelope> {
    // Cheap checks first: a foreign payload is usually not a JSON object at all.
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let object = value.as_object()?;
    if !object.contains_key("message") && !object.contains_key("message_id") {
        return None;
    }
    MessageEnvelope::from_json_value(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let mut sent = MessageEnvelope::new(Some("c1"), "order.created", "{\"id\":1}");
        sent.sent_time = Some(chrono::Utc::now());
        let back = decode("orders", encode(&sent, true), true);
        assert_eq!(back.message_id, sent.message_id);
        assert_eq!(back.correlation_id.as_deref(), Some("c1"));
        assert_eq!(back.message_type, "order.created");
        assert_eq!(back.message, sent.message);
        assert!(back.sent_time.is_some());
    }

    #[test]
    fn v4_and_python_envelopes_decode() {
        let v4 = br#"{"message_id":"m1","trace_id":"t1","message_type":"T","sent_time":"2024-01-01T00:00:00.000Z","message":"QUJD"}"#;
        let env = decode("x", Bytes::from_static(v4), true);
        assert_eq!(
            (env.message_id.as_str(), env.correlation_id.as_deref()),
            ("m1", Some("t1"))
        );
        assert_eq!(&env.message[..], b"ABC");
        let python = br#"{"message_id": "m2", "correlation_id": null, "message_type": "T", "sent_time": "2024-01-01T12:09:02.123456", "message": "QUJD"}"#;
        let env = decode("x", Bytes::from_static(python), true);
        assert_eq!(env.message_id, "m2");
        assert_eq!(env.correlation_id, None);
    }

    #[test]
    fn foreign_payloads_are_delivered_raw() {
        for payload in [
            &b"21.5"[..],
            b"not json",
            b"{\"temp\": 21}",
            b"[1,2]",
            b"{\"message\": 5}",
            b"{\"message_id\":\"x\",\"sent_time\":\"yesterday\"}",
            b"\xff\xfe{",
            b"",
        ] {
            let env = decode("sensors/a", Bytes::copy_from_slice(payload), true);
            assert_eq!(env.message_type, "sensors/a");
            assert_eq!(&env.message[..], payload);
            assert_eq!(env.correlation_id, None);
            assert_eq!(env.message_id.len(), 32);
        }
    }

    #[test]
    fn raw_mode_sends_the_payload_and_takes_the_type_from_the_topic() {
        let sent = MessageEnvelope::new(Some("c"), "T", "hello");
        assert_eq!(&encode(&sent, false)[..], b"hello");
        let got = decode("a/b", Bytes::from_static(b"{\"message\":\"QUJD\"}"), false);
        assert_eq!(got.message_type, "a/b");
        assert_eq!(&got.message[..], b"{\"message\":\"QUJD\"}");
    }
}
