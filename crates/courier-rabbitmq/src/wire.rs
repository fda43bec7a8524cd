//! The pip-services RabbitMQ wire format (`spec/pip-brokers.md` §3.3), both ways.
//!
//! | envelope | AMQP |
//! |---|---|
//! | `message` | the body, raw bytes |
//! | `message_id` | property `message_id` (generated when a peer sends none) |
//! | `correlation_id` | property `correlation_id` |
//! | `message_type` | property `type` |
//! | `sent_time` | property `timestamp` (whole seconds; the receive time when absent) |
//! | | `content_type` `text/plain`, `delivery_mode` 2 when persistent |
//! | delivery count | header `x-delivery-count` (quorum queues), else the `redelivered` flag; plus header [`EARLIER_DELIVERIES`] on a copy courier put back |

use chrono::{DateTime, TimeZone, Utc};
use courier_core::{Error, MessageEnvelope, Result};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ShortString};

/// The header of a copy courier put back in the queue in place of a message it had prefetched
/// and not handed out: the deliveries of the original, which the copy's own count starts
/// again from.
pub const EARLIER_DELIVERIES: &str = "x-courier-deliveries";

/// The longest `message_id`, `correlation_id` or `message_type`: AMQP short strings hold 255
/// bytes.
pub const MAX_PROPERTY_LEN: usize = 255;

/// The AMQP properties that carry `envelope` (its body is `envelope.message`).
///
/// # Errors
///
/// [`ErrorKind::InvalidMessage`](courier_core::ErrorKind::InvalidMessage) if an id or the type
/// is longer than [`MAX_PROPERTY_LEN`] bytes.
pub fn properties(envelope: &MessageEnvelope, persistent: bool) -> Result<BasicProperties> {
    let short = |value: &str, field: &str| -> Result<ShortString> {
        if value.len() > MAX_PROPERTY_LEN {
            return Err(Error::invalid_message(format!(
                "{field} is {} bytes; AMQP carries at most {MAX_PROPERTY_LEN}",
                value.len()
            )));
        }
        Ok(value.into())
    };
    let mut props = BasicProperties::default().with_content_type("text/plain".into());
    if !envelope.message_id.is_empty() {
        props = props.with_message_id(short(&envelope.message_id, "message_id")?);
    }
    if let Some(cid) = envelope.correlation_id.as_deref().filter(|c| !c.is_empty()) {
        props = props.with_correlation_id(short(cid, "correlation_id")?);
    }
    if !envelope.message_type.is_empty() {
        props = props.with_type(short(&envelope.message_type, "message_type")?);
    }
    if let Some(seconds) = envelope
        .sent_time
        .and_then(|t| u64::try_from(t.timestamp()).ok())
    {
        props = props.with_timestamp(seconds);
    }
    if persistent {
        props = props.with_delivery_mode(2);
    }
    Ok(props)
}

/// The envelope a peer's message carries, and how many times the broker delivered it before
/// this delivery. Never fails: whatever a peer sends is a message (a missing id is generated,
/// missing fields stay empty, a body is bytes whatever it holds).
pub fn envelope(
    properties: &BasicProperties,
    body: Vec<u8>,
    redelivered: bool,
    received_at: DateTime<Utc>,
) -> (MessageEnvelope, u32) {
    let text = |v: &Option<ShortString>| {
        v.as_ref()
            .map(|s| s.as_str().to_owned())
            .filter(|s| !s.is_empty())
    };
    let mut envelope = MessageEnvelope::with_id(
        text(properties.message_id()).unwrap_or_default(),
        text(properties.correlation_id()).as_deref(),
        text(properties.kind()).as_deref().unwrap_or_default(),
        body,
    );
    envelope.sent_time = Some(
        properties
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .unwrap_or(received_at),
    );
    let header = |name: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(as_count)
    };
    let counted = header("x-delivery-count").unwrap_or(u32::from(redelivered));
    let earlier = header(EARLIER_DELIVERIES)
        .unwrap_or(0)
        .saturating_add(counted);
    (envelope, earlier)
}

/// A header's value as a count, whatever integer type a broker or peer used.
fn as_count(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        _ => return None,
    };
    u32::try_from(n.max(0)).ok().or(Some(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn envelope_round_trips_through_properties() {
        let mut sent = MessageEnvelope::new(Some("123"), "Test", vec![0u8, 159, 146, 150]);
        sent.sent_time = Some(Utc.timestamp_opt(1_600_000_000, 0).unwrap());
        let props = properties(&sent, true).unwrap();
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(*props.timestamp(), Some(1_600_000_000));
        let (got, earlier) = envelope(&props, sent.message.to_vec(), false, now());
        assert_eq!(got.message_id, sent.message_id);
        assert_eq!(got.correlation_id.as_deref(), Some("123"));
        assert_eq!(got.message_type, "Test");
        assert_eq!(got.message, sent.message);
        assert_eq!(got.sent_time, sent.sent_time);
        assert_eq!(earlier, 0);
    }

    #[test]
    fn a_bare_message_gets_an_id_and_the_receive_time() {
        let (got, earlier) = envelope(&BasicProperties::default(), b"x".to_vec(), true, now());
        assert_eq!(got.message_id.len(), 32);
        assert_eq!(got.correlation_id, None);
        assert_eq!(got.message_type, "");
        assert_eq!(got.sent_time, Some(now()));
        assert_eq!(
            earlier, 1,
            "redelivered without a count: delivered once before"
        );
    }

    #[test]
    fn delivery_count_header_of_any_integer_type() {
        for (value, expected) in [
            (AMQPValue::LongLongInt(3), 3),
            (AMQPValue::LongUInt(2), 2),
            (AMQPValue::ShortShortUInt(1), 1),
            (AMQPValue::LongLongInt(-5), 0),
            (AMQPValue::LongLongInt(i64::MAX), u32::MAX),
        ] {
            let mut headers = FieldTable::default();
            headers.insert("x-delivery-count".into(), value);
            let props = BasicProperties::default().with_headers(headers);
            assert_eq!(envelope(&props, vec![], true, now()).1, expected);
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongString("many".into()),
        );
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(envelope(&props, vec![], false, now()).1, 0);
    }

    #[test]
    fn a_copy_put_back_adds_its_original_deliveries() {
        let mut headers = FieldTable::default();
        headers.insert(EARLIER_DELIVERIES.into(), AMQPValue::LongLongInt(2));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(1));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(envelope(&props, vec![], true, now()).1, 3);
    }

    #[test]
    fn long_fields_are_refused_not_truncated() {
        let long = "x".repeat(MAX_PROPERTY_LEN + 1);
        let e = properties(&MessageEnvelope::new(Some(&long), "t", "x"), false).unwrap_err();
        assert_eq!(e.kind(), courier_core::ErrorKind::InvalidMessage);
        assert!(e.to_string().contains("correlation_id"), "{e}");
        let props = properties(&MessageEnvelope::new(None, "", ""), false).unwrap();
        assert!(props.kind().is_none() && props.correlation_id().is_none());
        assert!(props.delivery_mode().is_none());
    }
}
