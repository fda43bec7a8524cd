//! The conformance suite against `MemoryMessageQueue`, created through `memory://` URIs (so
//! reopening a name and reading `<name>.dlq` go through the process-wide registry), with the
//! stress mode running the whole suite four times in parallel.

use std::sync::Arc;

use courier_conformance::{Features, Harness, conformance_tests};
use courier_core::{MessageQueue, Result, async_trait, create_from_uri};

struct MemoryHarness;

#[async_trait]
impl Harness for MemoryHarness {
    fn backend(&self) -> &str {
        "memory"
    }

    fn features(&self) -> Features {
        Features::all()
    }

    async fn create(&self, name: &str, options: &[(&str, &str)]) -> Result<Arc<dyn MessageQueue>> {
        let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        create_from_uri(&format!("memory://{name}?{}", query.join("&")))
    }
}

conformance_tests!(Some(MemoryHarness), stress = 4);
