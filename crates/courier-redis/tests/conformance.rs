//! The conformance suite against the live server (`COURIER_TEST_REDIS_URL`).

mod support;

use support::RedisHarness;

courier_conformance::conformance_tests!(RedisHarness::from_env().await, stress = 1);
