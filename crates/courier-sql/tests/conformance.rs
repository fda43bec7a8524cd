//! The conformance suite on SQLite (a temporary file), PostgreSQL and MariaDB/MySQL
//! (`COURIER_TEST_POSTGRES_URL`, `COURIER_TEST_MYSQL_URL`).

mod support;

mod sqlite {
    use super::support::SqlHarness;
    courier_conformance::conformance_tests!(SqlHarness::sqlite().await, stress = 1);
}

mod postgres {
    use super::support::SqlHarness;
    courier_conformance::conformance_tests!(SqlHarness::postgres().await, stress = 1);
}

mod mysql {
    use super::support::SqlHarness;
    courier_conformance::conformance_tests!(SqlHarness::mysql().await, stress = 1);
}
