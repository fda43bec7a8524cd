//! The conformance suite against the live server, core NATS mode (`COURIER_TEST_NATS_URL`).

mod support;

use support::CoreNatsHarness;

courier_conformance::conformance_tests!(CoreNatsHarness::from_env().await, stress = 2);
