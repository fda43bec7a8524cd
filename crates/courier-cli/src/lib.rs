//! `courier`, the command line of courier queues: send, receive, peek, count, clear, listen,
//! dead letters and benchmarks, with one syntax on every backend.
//!
//! ```sh
//! courier send orders '{"id":1}' --type order.created     # the embedded store, ./courier.db
//! courier receive orders --timeout 10s --json
//! courier count "postgres://postgres@127.0.0.1/test?queue=orders"
//! COURIER_URL=nats://127.0.0.1:4222 courier listen orders --exec './handle.sh'
//! courier bench "redis://127.0.0.1/0?queue=bench" --messages 20000 --size 4096
//! ```
//!
//! The binary is a thin wrapper around [`main`]; the grammar is [`cli::Cli`].

pub mod address;
mod bench;
pub mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done (0).
    Success,
    /// `receive` timed out with no message (3).
    NoMessage,
}

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: flags, URI, options (2).
    Usage(String),
    /// Anything else (1).
    Runtime(String),
}

impl From<courier::Error> for Failure {
    fn from(e: courier::Error) -> Self {
        match e.kind() {
            courier::ErrorKind::Config => Failure::Usage(e.to_string()),
            _ => Failure::Runtime(e.to_string()),
        }
    }
}

/// Where bare queue names live: `COURIER_URL` and `COURIER_DB`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `COURIER_URL`: a URI prefix for bare names.
    pub prefix: Option<String>,
    /// `COURIER_DB`: the embedded store's file.
    pub db: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Env {
            prefix: std::env::var("COURIER_URL").ok(),
            db: std::env::var("COURIER_DB").ok(),
        }
    }

    /// The URI of `queue` (see [`address::queue_uri`]).
    pub fn uri(&self, queue: &str) -> String {
        address::queue_uri(queue, self.prefix.as_deref(), self.db.as_deref())
    }
}

/// The `courier` binary: parses the arguments (usage errors exit 2), runs the command on a
/// Tokio runtime, and prints a failure as one line on stderr.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: clap's first, without its "error: " and the usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            complain(&format!(
                "{} (see courier --help)",
                first.trim_start_matches("error: ")
            ));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            complain(&format!("cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let env = Env::from_process();
    match runtime.block_on(commands::run(cli.command, &env)) {
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::NoMessage) => ExitCode::from(3),
        Err(Failure::Usage(message)) => {
            complain(&message);
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            complain(&message);
            ExitCode::from(1)
        }
    }
}

/// Writes `courier: MESSAGE` on stderr, on one line; a closed stderr is not an error.
pub(crate) fn complain(message: &str) {
    use std::io::Write as _;
    let one_line = message.replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "courier: {one_line}");
}
