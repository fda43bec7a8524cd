//! The conformance suite against the live broker (`COURIER_TEST_RABBITMQ_URL`).

mod support;

use support::RabbitMqHarness;

courier_conformance::conformance_tests!(RabbitMqHarness::from_env().await, stress = 1);
