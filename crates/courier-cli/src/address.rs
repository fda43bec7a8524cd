//! From what the user typed to a queue URI: a URI as it is, a bare name in the embedded store
//! (or under `COURIER_URL`), and the URI of a queue's dead-letter queue.

use url::Url;

/// The file of the embedded store when `COURIER_DB` is not set.
pub const DEFAULT_DB: &str = "courier.db";

/// Schemes whose queue name is the URI's path (`nats://HOST/NAME`), not a `queue=` parameter.
const PATH_NAMED: [&str; 5] = ["nats", "tls", "mqtt", "mqtts", "memory"];

/// The URI of `queue`: a URI (it has `://`) as it is; a bare name in `prefix` (`COURIER_URL`)
/// if given, else in the SQLite file `db` (`COURIER_DB`, default [`DEFAULT_DB`]).
///
/// Under a prefix, the name is the path for `nats://`, `mqtt://` and `memory://` prefixes
/// (`nats://host:4222` + `orders` = `nats://host:4222/orders`) and the `queue=` parameter
/// for the others (`postgres://u@h/db` + `orders` = `postgres://u@h/db?queue=orders`).
pub fn queue_uri(queue: &str, prefix: Option<&str>, db: Option<&str>) -> String {
    if queue.contains("://") {
        return queue.to_owned();
    }
    // The name as typed: `#`, `?`, `+`, `&` or a space in it must not change the URI.
    let as_path = path_segment(queue);
    let as_param: String = url::form_urlencoded::byte_serialize(queue.as_bytes()).collect();
    let queue = (as_path.as_str(), as_param.as_str());
    match prefix.filter(|p| !p.is_empty()) {
        Some(prefix) => {
            let scheme = prefix.split("://").next().unwrap_or_default();
            let (path, param) = queue;
            if scheme == "memory" {
                format!("memory://{path}")
            } else if PATH_NAMED.contains(&scheme) {
                let (base, query) = prefix.split_once('?').unwrap_or((prefix, ""));
                let base = base.trim_end_matches('/');
                if query.is_empty() {
                    format!("{base}/{path}")
                } else {
                    format!("{base}/{path}?{query}")
                }
            } else if prefix.contains('?') {
                format!("{prefix}&queue={param}")
            } else {
                format!("{prefix}?queue={param}")
            }
        }
        None => {
            let db = db.filter(|d| !d.is_empty()).unwrap_or(DEFAULT_DB);
            format!("sqlite://{db}?queue={}", queue.1)
        }
    }
}

/// `text` as one URI path segment: unreserved characters as they are, the rest escaped.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `uri` with `key=value` added to its parameters (replacing an earlier `key`).
pub fn with_option(uri: &str, key: &str, value: &str) -> String {
    let Ok(mut url) = Url::parse(uri) else {
        return uri.to_owned();
    };
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(key, value);
    url.to_string()
}

/// Options of a queue's URI that its dead-letter queue does not get.
const NOT_FOR_DEAD_LETTERS: [&str; 8] = [
    "dead_letter_queue",
    "max_deliveries",
    "exchange",
    "exchange_type",
    "routing_key",
    "exclusive",
    "auto_delete",
    "no_queue",
];

/// The URI of the queue named `dead_letters` beside the queue at `uri`: same server and
/// options, another name (and no `dead_letter_queue` option of its own).
pub fn dead_letter_uri(uri: &str, dead_letters: &str) -> Option<String> {
    let mut url = Url::parse(uri).ok()?;
    let mut had_queue = false;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        // Not the queue's own dead-letter settings, nor a RabbitMQ binding: the dead-letter
        // queue is a plain queue, which must not receive what the exchange routes.
        .filter(|(k, _)| !NOT_FOR_DEAD_LETTERS.contains(&k.as_ref()))
        .map(|(k, v)| {
            if k == "queue" || k == "name" {
                had_queue = true;
                (k.into_owned(), dead_letters.to_owned())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    if !had_queue {
        if url.scheme() == "memory" {
            url.set_host(Some(dead_letters)).ok()?;
        } else {
            url.set_path(&format!("/{dead_letters}"));
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_go_to_the_embedded_store_or_under_the_prefix() {
        assert_eq!(
            queue_uri("orders", None, None),
            "sqlite://courier.db?queue=orders"
        );
        assert_eq!(
            queue_uri("orders", None, Some("/var/q.db")),
            "sqlite:///var/q.db?queue=orders"
        );
        assert_eq!(
            queue_uri("orders", Some("nats://h:4222"), None),
            "nats://h:4222/orders"
        );
        assert_eq!(
            queue_uri("orders", Some("mqtt://h/?qos=0"), None),
            "mqtt://h/orders?qos=0"
        );
        assert_eq!(
            queue_uri("orders", Some("postgres://u@h/db"), None),
            "postgres://u@h/db?queue=orders"
        );
        assert_eq!(
            queue_uri("orders", Some("redis://h/0?block=500"), None),
            "redis://h/0?block=500&queue=orders"
        );
        assert_eq!(
            queue_uri("memory://x", Some("nats://h"), None),
            "memory://x"
        );
    }

    #[test]
    fn dead_letter_uris_keep_the_server_and_rename_the_queue() {
        assert_eq!(
            dead_letter_uri("sqlite://q.db?queue=orders&max_deliveries=2", "orders.dlq").unwrap(),
            "sqlite://q.db?queue=orders.dlq"
        );
        assert_eq!(
            dead_letter_uri("nats://h:4222/orders?connect_timeout=100", "orders.dlq").unwrap(),
            "nats://h:4222/orders.dlq?connect_timeout=100"
        );
        assert_eq!(
            dead_letter_uri("memory://orders", "orders.dlq").unwrap(),
            "memory://orders.dlq"
        );
        assert_eq!(
            dead_letter_uri(
                "amqp://h/%2f?queue=o&exchange=ev&routing_key=k&persistent=true",
                "o.dlq"
            )
            .unwrap(),
            "amqp://h/%2f?queue=o.dlq&persistent=true"
        );
        assert_eq!(
            with_option(
                "sqlite://q.db?queue=a&listen_concurrency=1",
                "listen_concurrency",
                "4"
            ),
            "sqlite://q.db?queue=a&listen_concurrency=4"
        );
    }
}
