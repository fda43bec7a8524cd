//! The conformance suite against the live broker (`COURIER_TEST_MQTT_URL`), QoS 1, envelope
//! mode.

mod support;

use support::MqttHarness;

courier_conformance::conformance_tests!(MqttHarness::from_env().await, stress = 2);
