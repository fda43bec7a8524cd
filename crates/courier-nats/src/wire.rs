//! The pip-services NATS wire format (`spec/pip-brokers.md` §4.3), both ways: the body is the
//! payload's bytes, the envelope's fields travel in NATS headers.
//!
//! | envelope | header written | headers read |
//! |---|---|---|
//! | `message_id` | `message_id` | `message_id` (a new id when absent or empty) |
//! | `correlation_id` | `correlation_id` and `trace_id` (v3 and v4 peers) | `trace_id`, else `correlation_id` |
//! | `message_type` | `message_type` | `message_type` |
//! | `sent_time` | `sent_time`, RFC 3339 UTC with milliseconds | `sent_time`, else `send_time` (.NET's spelling), in every format of §1.2; the receive time when absent or unreadable |

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use courier_core::MessageEnvelope;
use courier_core::envelope::{format_sent_time, parse_sent_time};

/// The header of a copy courier put back in a JetStream queue in place of a message it
/// fetched for a `receive` that was dropped: the deliveries of the original, which the copy's
/// own count starts again from.
pub const EARLIER_DELIVERIES: &str = "courier_deliveries";

/// The deliveries before this message's own that [`EARLIER_DELIVERIES`] says (0 without it,
/// or when it is not a number).
pub fn earlier_deliveries(headers: Option<&HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(EARLIER_DELIVERIES))
        .and_then(|v| v.as_str().trim().parse::<u64>().ok())
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The headers that carry `envelope` (its body is `envelope.message`). Empty fields are not
/// written.
pub fn headers(envelope: &MessageEnvelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if !envelope.message_id.is_empty() {
        headers.insert("message_id", envelope.message_id.as_str());
    }
    if let Some(cid) = envelope.correlation_id.as_deref().filter(|c| !c.is_empty()) {
        headers.insert("correlation_id", cid);
        headers.insert("trace_id", cid);
    }
    if !envelope.message_type.is_empty() {
        headers.insert("message_type", envelope.message_type.as_str());
    }
    if let Some(sent) = envelope.sent_time {
        headers.insert("sent_time", format_sent_time(sent).as_str());
    }
    headers
}

/// The envelope a peer's message carries. Never fails: missing or unreadable fields get a
/// generated id, no correlation id, an empty type, the receive time.
pub fn envelope(
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    received_at: DateTime<Utc>,
) -> MessageEnvelope {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
    };
    let correlation_id = get("trace_id").or_else(|| get("correlation_id"));
    let message_type = get("message_type").unwrap_or_default();
    let mut envelope = MessageEnvelope::with_id(
        get("message_id").unwrap_or_default(),
        correlation_id.as_deref(),
        &message_type,
        payload,
    );
    envelope.sent_time = Some(
        get("sent_time")
            .or_else(|| get("send_time"))
            .and_then(|t| parse_sent_time(&t).ok())
            .unwrap_or(received_at),
    );
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn an_envelope_round_trips_through_headers() {
        let mut sent = MessageEnvelope::new(Some("123"), "Test", vec![0u8, 255]);
        sent.sent_time = Some(Utc.timestamp_millis_opt(1_600_000_000_123).unwrap());
        let headers = headers(&sent);
        assert_eq!(headers.get("trace_id").unwrap().as_str(), "123");
        let got = envelope(Some(&headers), sent.message.clone(), now());
        assert_eq!(got.message_id, sent.message_id);
        assert_eq!(got.correlation_id.as_deref(), Some("123"));
        assert_eq!(got.message_type, "Test");
        assert_eq!(got.sent_time, sent.sent_time);
        assert_eq!(got.message, sent.message);
    }

    #[test]
    fn every_peer_dialect_is_read() {
        let mut go = HeaderMap::new();
        go.insert("message_id", "");
        go.insert("correlation_id", "c3");
        go.insert("message_type", "t");
        go.insert("sent_time", "2026-11-23T00:55:47+04:00");
        let got = envelope(Some(&go), "x".into(), now());
        assert_eq!(got.message_id.len(), 32, "an empty id is replaced");
        assert_eq!(got.correlation_id.as_deref(), Some("c3"));
        assert_eq!(
            got.sent_time.unwrap().to_rfc3339(),
            "2026-11-22T20:55:47+00:00"
        );
        let mut dotnet_v4 = HeaderMap::new();
        dotnet_v4.insert("trace_id", "c4");
        dotnet_v4.insert("send_time", "2026-11-22T20:55:47.1234567Z");
        let got = envelope(Some(&dotnet_v4), "x".into(), now());
        assert_eq!(got.correlation_id.as_deref(), Some("c4"));
        assert!(got.sent_time.unwrap() > now());
    }

    #[test]
    fn garbage_and_absence_are_not_errors() {
        let got = envelope(None, "x".into(), now());
        assert_eq!(got.message_id.len(), 32);
        assert_eq!(got.sent_time, Some(now()));
        let mut bad = HeaderMap::new();
        bad.insert("sent_time", "not a time");
        assert_eq!(
            envelope(Some(&bad), "x".into(), now()).sent_time,
            Some(now())
        );
    }
}
