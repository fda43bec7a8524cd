"""An MQTT peer for courier's interop tests: the published pip-services Python queue,
pip_services3_mqtt.queues.MqttMessageQueue (with paho-mqtt<2), in envelope mode at QoS 1.
It runs in the project's virtualenv, interop/python/.venv, which .ci/run makes.

    mqtt_peer.py send TOPIC CLIENT_ID       < JSON lines: {"message_id", "correlation_id",
                                              "message_type", "message_b64"}
    mqtt_peer.py receive TOPIC CLIENT_ID N  prints READY once subscribed, then a JSON line per
                                            message received, for N distinct messages

The package connects to localhost:1883 whatever it is told (spec/pip-brokers.md section 5.2).
"""

import base64
import json
import sys
import time

from pip_services3_commons.config import ConfigParams
from pip_services3_messaging.queues import MessageEnvelope
from pip_services3_mqtt.queues import MqttMessageQueue


def open_queue(topic, client_id, subscribe):
    queue = MqttMessageQueue(topic)
    queue.configure(ConfigParams.from_tuples(
        "topic", topic,
        "client_id", client_id,
        "connection.protocol", "mqtt",
        "connection.host", "localhost",
        "connection.port", 1883,
        "options.serialize_envelope", True,
        "options.autosubscribe", subscribe,
        "options.qos", 1,
    ))
    queue.open(None)
    return queue


def send(topic, client_id):
    queue = open_queue(topic, client_id, False)
    for line in sys.stdin:
        if not line.strip():
            continue
        m = json.loads(line)
        envelope = MessageEnvelope(m.get("correlation_id"), m.get("message_type"), "")
        envelope.message = base64.b64decode(m["message_b64"])
        envelope.message_id = m["message_id"]
        queue.send(None, envelope)
    # paho publishes in the background: give it time to get the broker's acknowledgements.
    time.sleep(1.0)
    queue.close(None)


def receive(topic, client_id, count):
    queue = open_queue(topic, client_id, True)
    # paho subscribes in the background.
    time.sleep(1.0)
    print("READY", flush=True)
    # Every receive of the package subscribes again and adds a listener, so each message
    # comes once more per receive (spec/pip-brokers.md section 5.4): print each id once.
    seen = set()
    while len(seen) < count:
        m = queue.receive(None, 20000)
        if m is None:
            print(json.dumps({"timeout": True}), flush=True)
            break
        if m.message_id in seen:
            continue
        seen.add(m.message_id)
        print(json.dumps({
            "message_id": m.message_id,
            "correlation_id": m.correlation_id,
            "message_type": m.message_type,
            "sent_time": None if m.sent_time is None else m.sent_time.isoformat(),
            "message_b64": base64.b64encode(m.message or b"").decode(),
        }), flush=True)
    queue.close(None)


if __name__ == "__main__":
    command, topic, client_id = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "send":
        send(topic, client_id)
    elif command == "receive":
        receive(topic, client_id, int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {command}")
