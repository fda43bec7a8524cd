//! The command line's grammar (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes, as `--help` documents them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime error (unreachable server, unsupported operation, ...)
  2  usage error (bad flags, bad URI or option)
  3  `receive` timed out with no message

QUEUE is a URI (memory://, sqlite://, postgres://, mysql://, amqp://, nats://, redis://,
mqtt://) or a bare name: a queue of the embedded store, sqlite://$COURIER_DB (default
./courier.db), or under the URI prefix $COURIER_URL when it is set.";

/// Send, receive, peek, count, listen to and benchmark any courier queue.
#[derive(Debug, Parser)]
#[command(name = "courier", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sends a message (MESSAGE, --file, or stdin), or one per line with --lines.
    Send {
        /// The queue.
        queue: String,
        /// The payload; without it (and --file), stdin is read.
        message: Option<String>,
        /// The message type.
        #[arg(long = "type", short = 't', default_value = "")]
        message_type: String,
        /// The correlation id.
        #[arg(long, short = 'c')]
        correlation_id: Option<String>,
        /// Reads the payload from this file.
        #[arg(long, short = 'f', conflicts_with = "message")]
        file: Option<PathBuf>,
        /// Sends one message per line (of stdin, or of --file).
        #[arg(long, conflicts_with = "message")]
        lines: bool,
    },
    /// Receives messages and prints their payloads (or envelopes with --json); completes them.
    Receive {
        /// The queue.
        queue: String,
        /// How long to wait for each message (500ms, 10s, 2m).
        #[arg(long, default_value = "5s", value_parser = duration)]
        timeout: Duration,
        /// How many messages to receive at most.
        #[arg(long, short = 'n', default_value_t = 1, value_parser = at_least_one())]
        count: usize,
        /// How messages are printed.
        #[command(flatten)]
        format: Format,
        /// Leaves the messages in the queue: gives them back at the end instead of completing
        /// them (each counts a delivery, so max_deliveries applies).
        #[arg(long)]
        no_complete: bool,
    },
    /// Shows the next messages without taking them.
    Peek {
        /// The queue.
        queue: String,
        /// How many messages at most.
        #[arg(long, short = 'n', default_value_t = 1, value_parser = at_least_one())]
        count: usize,
        /// How messages are printed.
        #[command(flatten)]
        format: Format,
    },
    /// Prints how many messages wait in the queue.
    Count {
        /// The queue.
        queue: String,
    },
    /// Deletes every message waiting in the queue.
    Clear {
        /// The queue.
        queue: String,
    },
    /// Handles messages until Ctrl-C or SIGTERM, then finishes those under way.
    Listen {
        /// The queue.
        queue: String,
        /// How messages are printed.
        #[command(flatten)]
        format: Format,
        /// How many messages are handled at once.
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        concurrency: usize,
        /// Runs this shell command per message: the payload on stdin, the envelope in
        /// COURIER_MESSAGE_ID, COURIER_CORRELATION_ID, COURIER_MESSAGE_TYPE,
        /// COURIER_SENT_TIME, COURIER_DELIVERY_COUNT and COURIER_QUEUE. Exit 0 completes the
        /// message; anything else abandons it (max_deliveries then applies).
        #[arg(long)]
        exec: Option<String>,
    },
    /// Shows the queue's dead-letter queue, or moves its messages back with --requeue.
    DeadLetters {
        /// The queue (not its dead-letter queue).
        queue: String,
        /// Moves every dead letter back to the queue.
        #[arg(long)]
        requeue: bool,
        /// How messages are printed.
        #[command(flatten)]
        format: Format,
    },
    /// Measures throughput and latency: producers send, consumers receive and complete.
    Bench(BenchArgs),
    /// Prints the completion script of SHELL.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// How messages are printed.
#[derive(Debug, Clone, Copy, Args)]
pub struct Format {
    /// One pip-services wire-JSON envelope per line instead of the payload.
    #[arg(long)]
    pub json: bool,
}

/// `courier bench`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The queue: it is cleared first, so give a queue of its own.
    pub queue: String,
    /// How many messages in all.
    #[arg(long, short = 'n', default_value_t = 10_000, value_parser = at_least_one())]
    pub messages: usize,
    /// The payload size in bytes, 16 (a send timestamp travels in it) to 64 MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=64 * 1024 * 1024))]
    pub size: usize,
    /// Sending tasks.
    #[arg(long, short = 'p', default_value_t = 1, value_parser = at_least_one())]
    pub producers: usize,
    /// Receiving tasks.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = at_least_one())]
    pub consumers: usize,
    /// Prints the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Appends the result to this CSV file (a header first if it is new).
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// A count of at least 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// Parses `500ms`, `10s`, `2m`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write 500ms, 10s or 2m)"))
}
