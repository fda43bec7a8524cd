//! The pip-services JSON form of an envelope.
//!
//! Written: five string keys, never null, in the Node v3 order:
//! `{"message_id":"…","correlation_id":"…","message_type":"…","sent_time":"2026-11-22T20:55:47.193Z","message":"<base64>"}`.
//!
//! Read: what every pip-services language writes. Missing keys and `null`s (Node, .NET), `trace_id`
//! instead of `correlation_id` (v4), `sent_time` with 0–9 fractional digits and `Z`, an offset
//! (Go) or no zone at all (Python, taken as UTC), and a `message` that is not base64 (Java's plain
//! string). Anything else (not JSON, not an object, a key of the wrong type, a date that is not
//! a date) is [`InvalidMessage`](crate::ErrorKind::InvalidMessage).

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{MessageEnvelope, new_message_id};
use crate::{Error, Result};

/// Standard alphabet, padding optional: Go and Node pad, some encoders do not.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Serialize)]
struct WireOut<'a> {
    message_id: &'a str,
    correlation_id: &'a str,
    message_type: &'a str,
    sent_time: String,
    message: String,
}

impl MessageEnvelope {
    /// The pip-services wire JSON of this envelope (five string keys, see the
    /// [module docs](crate::envelope)): `message` is standard padded base64 and `sent_time` is
    /// RFC 3339 UTC with milliseconds, or the current time if the envelope was never sent (as in
    /// pip-services Node).
    ///
    /// ```
    /// use courier_core::MessageEnvelope;
    ///
    /// let env = MessageEnvelope::new(Some("123"), "Test", "Test message");
    /// let back = MessageEnvelope::from_json(&env.to_json()).unwrap();
    /// assert_eq!(back.message_id, env.message_id);
    /// assert_eq!(back.message_as_string().unwrap(), "Test message");
    /// ```
    pub fn to_json(&self) -> String {
        let sent = self.sent_time.unwrap_or_else(Utc::now);
        let out = WireOut {
            message_id: &self.message_id,
            correlation_id: self.correlation_id.as_deref().unwrap_or(""),
            message_type: &self.message_type,
            sent_time: format_sent_time(sent),
            message: STANDARD.encode(&self.message),
        };
        // Serializing a struct of strings into a String cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// Decodes an envelope from the JSON any pip-services language writes (see the
    /// [module docs](crate::envelope)). A missing or empty `message_id` gets a new id.
    ///
    /// # Errors
    ///
    /// [`InvalidMessage`](crate::ErrorKind::InvalidMessage) if `json` is not a JSON object, a key
    /// has the wrong type, or `sent_time` is not a date.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| Error::invalid_message(format!("envelope is not JSON: {e}")))?;
        Self::from_json_value(&value)
    }

    /// [`from_json`](Self::from_json) of JSON already parsed: for a caller that looks at the
    /// document first (to tell an envelope from a foreign payload, say) without parsing twice.
    ///
    /// # Errors
    ///
    /// As [`from_json`](Self::from_json).
    pub fn from_json_value(value: &Value) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(Error::invalid_message("envelope JSON is not an object"));
        };
        let message_id = string_field(map, "message_id")?
            .filter(|s| !s.is_empty())
            .map_or_else(new_message_id, str::to_owned);
        let correlation_id = match string_field(map, "trace_id")? {
            Some(id) if !id.is_empty() => Some(id),
            _ => string_field(map, "correlation_id")?.filter(|s| !s.is_empty()),
        };
        let message_type = string_field(map, "message_type")?.unwrap_or("");
        let sent_time = match string_field(map, "sent_time")? {
            Some(s) if !s.is_empty() => Some(parse_time(s)?),
            _ => None,
        };
        let message = match map.get("message") {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(s)) => decode_payload(s),
            Some(other) => {
                return Err(Error::invalid_message(format!(
                    "envelope key `message` must be a string, found {}",
                    type_name(other)
                )));
            }
        };
        let mut env = MessageEnvelope::new(correlation_id, message_type, message);
        env.message_id = message_id;
        env.sent_time = sent_time;
        Ok(env)
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::invalid_message(format!(
            "envelope key `{key}` must be a string, found {}",
            type_name(other)
        ))),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Base64 first (Node, Go, Python, .NET); a string that is not base64 is Java's plain text.
fn decode_payload(text: &str) -> Bytes {
    match LENIENT_BASE64.decode(text) {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => Bytes::copy_from_slice(text.as_bytes()),
    }
}

/// Reads a `sent_time` as any pip-services language writes it (in JSON envelopes and in
/// NATS or Kafka headers): RFC 3339 with 0–9 fractional digits and `Z` or an offset (Node,
/// Go, .NET), or a zone-less local time (Python), taken as UTC.
///
/// ```
/// use courier_core::envelope::parse_sent_time;
///
/// let node = parse_sent_time("2026-11-22T20:55:47.193Z").unwrap();
/// let go = parse_sent_time("2026-11-23T00:55:47.193+04:00").unwrap();
/// assert_eq!(node, go);
/// assert!(parse_sent_time("yesterday").is_err());
/// ```
///
/// # Errors
///
/// [`InvalidMessage`](crate::ErrorKind::InvalidMessage) for anything else.
pub fn parse_sent_time(text: &str) -> Result<DateTime<Utc>> {
    parse_time(text)
}

/// Writes a `sent_time` as Node does and every pip-services language reads: RFC 3339, UTC,
/// milliseconds, `Z`.
pub fn format_sent_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    // Python writes naive local times without a zone; pip-services' own decoders take them as UTC.
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    Err(Error::invalid_message(format!(
        "envelope key `sent_time` is not an RFC 3339 date: {text:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn writes_five_string_keys_in_node_order() {
        let mut env = MessageEnvelope::new(None, "Test", "Test message");
        env.sent_time = Some(
            DateTime::parse_from_rfc3339("2026-11-22T20:55:47.193456Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let json = env.to_json();
        let expected = format!(
            "{{\"message_id\":\"{}\",\"correlation_id\":\"\",\"message_type\":\"Test\",\"sent_time\":\"2026-11-22T20:55:47.193Z\",\"message\":\"VGVzdCBtZXNzYWdl\"}}",
            env.message_id
        );
        assert_eq!(json, expected);
    }

    #[test]
    fn unsent_envelope_writes_now() {
        let env = MessageEnvelope::new(None, "t", "");
        let before = Utc::now() - chrono::Duration::seconds(1);
        let back = MessageEnvelope::from_json(&env.to_json()).unwrap();
        assert!(back.sent_time.unwrap() >= before);
        assert!(back.message.is_empty());
    }

    #[test]
    fn reads_node_v3() {
        let env = MessageEnvelope::from_json(
            r#"{"message_id":"a277ab29a5a04f44bf207a3f7e6c7975","correlation_id":"123","message_type":"Test","sent_time":"2026-11-22T20:55:47.193Z","message":"VGhpcyBpcyBhIHRlc3QgbWVzc2FnZQ=="}"#,
        )
        .unwrap();
        assert_eq!(env.message_id, "a277ab29a5a04f44bf207a3f7e6c7975");
        assert_eq!(env.correlation_id.as_deref(), Some("123"));
        assert_eq!(env.message_type, "Test");
        assert_eq!(env.message_as_string().unwrap(), "This is a test message");
        assert_eq!(
            env.sent_time
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            "2026-11-22T20:55:47.193Z"
        );
    }

    #[test]
    fn reads_v4_trace_id_and_nulls() {
        let env = MessageEnvelope::from_json(
            r#"{"message_id":"x1","trace_id":"t-9","message_type":null,"sent_time":null,"message":null}"#,
        )
        .unwrap();
        assert_eq!(env.correlation_id.as_deref(), Some("t-9"));
        assert_eq!(env.message_type, "");
        assert!(env.sent_time.is_none());
        assert!(env.message.is_empty());
    }

    #[test]
    fn reads_go_offset_nanos_and_missing_message() {
        let env = MessageEnvelope::from_json(
            r#"{"message_id":"g","correlation_id":"","message_type":"T","sent_time":"2023-01-24T11:27:19.123456789+04:00"}"#,
        )
        .unwrap();
        assert_eq!(env.correlation_id, None);
        assert_eq!(
            env.sent_time
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Nanos, true),
            "2023-01-24T07:27:19.123456789Z"
        );
        assert!(env.message.is_empty());
    }

    #[test]
    fn reads_python_naive_time_and_dotnet_missing_keys() {
        let py = MessageEnvelope::from_json(
            r#"{"message_id":"p","correlation_id":null,"message_type":"T","sent_time":"2023-01-24T12:09:02.123456","message":"QUJD"}"#,
        )
        .unwrap();
        assert_eq!(
            py.sent_time
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            "2023-01-24T12:09:02.123456Z"
        );
        assert_eq!(py.message_as_string().unwrap(), "ABC");
        let net = MessageEnvelope::from_json(
            r#"{"message_type":"T","sent_time":"2025-12-25T13:50:53.1234567Z","message":"QUJD"}"#,
        )
        .unwrap();
        assert_eq!(net.message_id.len(), 32);
        assert_eq!(net.correlation_id, None);
    }

    #[test]
    fn reads_java_plain_string_and_unpadded_base64() {
        let java =
            MessageEnvelope::from_json(r#"{"message_id":"j","message":"hello world!"}"#).unwrap();
        assert_eq!(java.message_as_string().unwrap(), "hello world!");
        let unpadded = MessageEnvelope::from_json(r#"{"message":"QUI"}"#).unwrap();
        assert_eq!(unpadded.message_as_string().unwrap(), "AB");
    }

    #[test]
    fn binary_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        let env = MessageEnvelope::new(Some("c"), "bin", bytes.clone());
        let back = MessageEnvelope::from_json(&env.to_json()).unwrap();
        assert_eq!(&back.message[..], &bytes[..]);
    }

    #[test]
    fn rejects_garbage() {
        for garbage in [
            "",
            "not json",
            "[1,2]",
            "42",
            "null",
            r#"{"message_id":5}"#,
            r#"{"message":{"a":1}}"#,
            r#"{"sent_time":"yesterday"}"#,
            r#"{"correlation_id":["x"]}"#,
            "{\"message_id\":\"\u{0}",
        ] {
            let err = MessageEnvelope::from_json(garbage).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidMessage, "{garbage:?}");
        }
    }
}
