"""A core NATS peer for courier's interop tests, with nats-py: it publishes and reads exactly
what pip-services' NATS queues (Go, Node, .NET; v3 and v4) put on the wire (spec/pip-brokers.md
section 4.3): the raw body and the headers message_id, correlation_id (v3) or trace_id (v4),
message_type and sent_time (.NET v3 writes send_time).

    nats_peer.py publish URL SUBJECT   < JSON lines: {"headers": {...}, "body_b64": ...}
    nats_peer.py read URL SUBJECT N    prints READY once subscribed, then a JSON line per message
"""

import asyncio
import base64
import json
import sys

import nats


async def publish(url, subject):
    nc = await nats.connect(url)
    for line in sys.stdin:
        if not line.strip():
            continue
        m = json.loads(line)
        await nc.publish(subject, base64.b64decode(m.get("body_b64", "")), headers=m.get("headers"))
    await nc.flush()
    await nc.close()


async def read(url, subject, count):
    nc = await nats.connect(url)
    sub = await nc.subscribe(subject)
    await nc.flush()
    print("READY", flush=True)
    for _ in range(count):
        msg = await sub.next_msg(timeout=20)
        print(json.dumps({
            "headers": dict(msg.headers or {}),
            "body_b64": base64.b64encode(msg.data).decode(),
        }), flush=True)
    await nc.close()


if __name__ == "__main__":
    command, url, subject = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "publish":
        asyncio.run(publish(url, subject))
    elif command == "read":
        asyncio.run(read(url, subject, int(sys.argv[4])))
    else:
        sys.exit(f"unknown command {command}")
