//! How a message is stored in its stream: one stream entry per message, the envelope's fields
//! as the entry's fields. Any client that writes these fields with `XADD` sends to a courier
//! queue, and any that reads them receives from one:
//!
//! | field | value | when absent or unreadable |
//! |---|---|---|
//! | `message_id` | the envelope's id, UTF-8 | the entry's id (`1764324000000-0`), the same on every delivery |
//! | `correlation_id` | UTF-8; absent when the envelope has none | none |
//! | `message_type` | UTF-8 | empty |
//! | `sent_time` | RFC 3339 UTC with milliseconds (`2026-11-28T10:00:00.000Z`); every pip-services date format is read | the time in the entry's id (when Redis added it) |
//! | `message` | the payload, raw bytes | **required**: an entry without it is not a message and goes to the dead-letter queue |
//!
//! Fields are written in that order. Other fields are ignored (and kept in a dead letter).

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use courier_core::MessageEnvelope;
use courier_core::envelope::{format_sent_time, parse_sent_time};

/// The field that holds the payload.
pub const MESSAGE: &str = "message";

/// The fields (name, value) an entry holds for `envelope`, in the order they are written.
/// Empty optional fields are not written.
pub fn fields(envelope: &MessageEnvelope) -> Vec<(&'static str, Bytes)> {
    let mut fields = Vec::with_capacity(5);
    fields.push(("message_id", Bytes::from(envelope.message_id.clone())));
    if let Some(cid) = envelope.correlation_id.as_deref().filter(|c| !c.is_empty()) {
        fields.push(("correlation_id", Bytes::copy_from_slice(cid.as_bytes())));
    }
    fields.push(("message_type", Bytes::from(envelope.message_type.clone())));
    if let Some(sent) = envelope.sent_time {
        fields.push(("sent_time", Bytes::from(format_sent_time(sent))));
    }
    fields.push((MESSAGE, envelope.message.clone()));
    fields
}

/// The envelope of the entry `id` with `fields`, or `None` if it has no `message` field (it
/// is not a courier message). Missing or unreadable fields get the values of the module docs'
/// table; never fails otherwise.
pub fn envelope(id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Option<MessageEnvelope> {
    let (mut message_id, mut correlation_id, mut message_type, mut sent_time, mut message) =
        (None, None, None, None, None);
    for (name, value) in fields {
        let text = || {
            String::from_utf8(value.clone())
                .ok()
                .filter(|v| !v.is_empty())
        };
        match name.as_slice() {
            b"message_id" => message_id = text(),
            b"correlation_id" => correlation_id = text(),
            b"message_type" => message_type = text(),
            b"sent_time" => sent_time = text().and_then(|t| parse_sent_time(&t).ok()),
            b"message" => message = Some(Bytes::from(value)),
            _ => {}
        }
    }
    let mut envelope = MessageEnvelope::with_id(
        message_id.unwrap_or_else(|| id.to_owned()),
        correlation_id.as_deref(),
        message_type.as_deref().unwrap_or_default(),
        message?,
    );
    envelope.sent_time = sent_time.or_else(|| added_at(id));
    Some(envelope)
}

/// When Redis added the entry `id` (`<milliseconds>-<sequence>`), if the id says.
pub fn added_at(id: &str) -> Option<DateTime<Utc>> {
    let millis: i64 = id.split('-').next()?.parse().ok()?;
    Utc.timestamp_millis_opt(millis).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(fields: Vec<(&'static str, Bytes)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn an_envelope_round_trips_through_fields() {
        let mut sent = MessageEnvelope::new(Some("123"), "Test", vec![0u8, 255]);
        sent.sent_time = Some(Utc.timestamp_millis_opt(1_600_000_000_123).unwrap());
        let got = envelope("1-0", owned(fields(&sent))).expect("a message");
        assert_eq!(got.message_id, sent.message_id);
        assert_eq!(got.correlation_id.as_deref(), Some("123"));
        assert_eq!(got.message_type, "Test");
        assert_eq!(got.sent_time, sent.sent_time);
        assert_eq!(got.message, sent.message);
    }

    #[test]
    fn foreign_entries_get_generated_values_or_are_refused() {
        let garbage = vec![
            (b"message".to_vec(), b"body".to_vec()),
            (b"message_id".to_vec(), vec![0xff, 0xfe]),
            (b"sent_time".to_vec(), b"yesterday".to_vec()),
            (b"other".to_vec(), b"x".to_vec()),
        ];
        let got = envelope("1700000000000-3", garbage).expect("a message");
        assert_eq!(got.message_id, "1700000000000-3", "the entry's id");
        assert_eq!(got.sent_time, added_at("1700000000000-3"));
        assert_eq!(&got.message[..], b"body");
        assert!(envelope("1-0", vec![(b"data".to_vec(), b"x".to_vec())]).is_none());
        assert_eq!(added_at("nonsense"), None);
    }
}
