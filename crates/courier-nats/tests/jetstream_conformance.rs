//! The conformance suite against the live server, JetStream mode (`COURIER_TEST_NATS_URL`).

mod support;

use support::JetStreamHarness;

courier_conformance::conformance_tests!(JetStreamHarness::from_env().await, stress = 1);
