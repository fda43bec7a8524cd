"""A RabbitMQ peer for courier's interop tests, with pika: it publishes and reads exactly
what pip-services' RabbitMQ queues (Go, Node, .NET) put on the wire (spec/pip-brokers.md
section 3.3): the raw body, the AMQP properties message_id, correlation_id and type (each
only when set), content_type text/plain, delivery_mode 2 when persistent.

    amqp_peer.py publish URL QUEUE   < JSON lines: {"message_id", "correlation_id", "type",
                                        "body_b64", "headers", "reply_to", "bare", "persistent"}
    amqp_peer.py read URL QUEUE N    > JSON lines, one per message (basic.get, then ack)

"bare" publishes with no properties at all (a foreign client); "headers" adds headers.
"""

import base64
import json
import sys
import time

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def publish(url, queue):
    connection = connect(url)
    channel = connection.channel()
    channel.confirm_delivery()
    for line in sys.stdin:
        if not line.strip():
            continue
        m = json.loads(line)
        body = base64.b64decode(m.get("body_b64", ""))
        if m.get("bare"):
            props = pika.BasicProperties(headers=m.get("headers"))
        else:
            # As pip-services' Go and Node queues do: each property only when set.
            props = pika.BasicProperties(
                content_type="text/plain",
                message_id=m.get("message_id") or None,
                correlation_id=m.get("correlation_id") or None,
                type=m.get("type") or None,
                delivery_mode=2 if m.get("persistent", True) else None,
                reply_to=m.get("reply_to"),
                headers=m.get("headers"),
            )
        channel.basic_publish("", queue, body, props, mandatory=True)
    connection.close()


def read(url, queue, count):
    connection = connect(url)
    channel = connection.channel()
    got = 0
    deadline = time.time() + 20
    while got < count and time.time() < deadline:
        method, props, body = channel.basic_get(queue)
        if method is None:
            time.sleep(0.05)
            continue
        print(json.dumps({
            "message_id": props.message_id,
            "correlation_id": props.correlation_id,
            "type": props.type,
            "content_type": props.content_type,
            "delivery_mode": props.delivery_mode,
            "timestamp": props.timestamp,
            "reply_to": props.reply_to,
            "headers": {k: str(v) for k, v in (props.headers or {}).items()},
            "body_b64": base64.b64encode(body).decode(),
            # What a pip-services Node receiver makes of the body: UTF-8 text.
            "node_text": body.decode("utf-8", errors="replace"),
        }), flush=True)
        channel.basic_ack(method.delivery_tag)
        got += 1
    connection.close()


if __name__ == "__main__":
    command, url, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "publish":
        publish(url, queue)
    elif command == "read":
        read(url, queue, int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {command}")
