//! What each command does.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use courier::{
    Error, ErrorKind, MessageEnvelope, MessageQueue, MessageQueueExt, MessageReceiver, Result,
    async_trait,
};
use tokio::sync::Notify;

use crate::address::{dead_letter_uri, with_option};
use crate::cli::{Command, Format};
use crate::{Env, Exit, Failure};

/// How many dead letters `dead-letters` shows at most.
const SHOWN: usize = 10_000;
/// How long `dead-letters --requeue` waits for the next dead letter.
const REQUEUE_WAIT: Duration = Duration::from_millis(500);

/// Runs `command`.
pub(crate) async fn run(command: Command, env: &Env) -> std::result::Result<Exit, Failure> {
    match command {
        Command::Send {
            queue,
            message,
            message_type,
            correlation_id,
            file,
            lines,
        } => {
            let queue = open(&env.uri(&queue)).await?;
            let envelope = |payload: Vec<u8>| {
                MessageEnvelope::new(correlation_id.as_deref(), &message_type, payload)
            };
            let result = async {
                if lines {
                    let input: Box<dyn BufRead + Send> = match &file {
                        Some(path) => Box::new(std::io::BufReader::new(
                            std::fs::File::open(path).map_err(|e| read_error(path, e))?,
                        )),
                        None => Box::new(std::io::BufReader::new(std::io::stdin())),
                    };
                    for line in input.lines() {
                        let line = line.map_err(|e| Failure::Runtime(format!("reading: {e}")))?;
                        queue.send(None, envelope(line.into_bytes())).await?;
                    }
                } else {
                    let payload = match (message, &file) {
                        (Some(message), _) => message.into_bytes(),
                        (None, Some(path)) => {
                            std::fs::read(path).map_err(|e| read_error(path, e))?
                        }
                        (None, None) => {
                            if std::io::stdin().is_terminal() {
                                return Err(Failure::Usage(
                                    "give MESSAGE, --file, or pipe the payload into stdin".into(),
                                ));
                            }
                            let mut all = Vec::new();
                            std::io::stdin()
                                .read_to_end(&mut all)
                                .map_err(|e| Failure::Runtime(format!("reading stdin: {e}")))?;
                            all
                        }
                    };
                    queue.send(None, envelope(payload)).await?;
                }
                Ok(Exit::Success)
            }
            .await;
            finish(&*queue, result).await
        }
        Command::Receive {
            queue,
            timeout,
            count,
            format,
            no_complete,
        } => {
            let queue = open(&env.uri(&queue)).await?;
            let result = receive(&*queue, timeout, count, format, no_complete).await;
            finish(&*queue, result).await
        }
        Command::Peek {
            queue,
            count,
            format,
        } => {
            let queue = open(&env.uri(&queue)).await?;
            let result = async {
                let messages = if count <= 1 {
                    queue.peek(None).await?.into_iter().collect()
                } else {
                    queue.peek_batch(None, count).await?
                };
                for m in &messages {
                    if print(m, format).is_err() {
                        break; // the reader went away
                    }
                }
                Ok(Exit::Success)
            }
            .await;
            finish(&*queue, result).await
        }
        Command::Count { queue } => {
            let queue = open(&env.uri(&queue)).await?;
            let result = async {
                let count = queue.read_message_count().await?;
                let _ = writeln!(std::io::stdout(), "{count}");
                Ok(Exit::Success)
            }
            .await;
            finish(&*queue, result).await
        }
        Command::Clear { queue } => {
            let queue = open(&env.uri(&queue)).await?;
            let result = async {
                queue.clear(None).await?;
                Ok(Exit::Success)
            }
            .await;
            finish(&*queue, result).await
        }
        Command::Listen {
            queue,
            format,
            concurrency,
            exec,
        } => {
            let uri = env.uri(&queue);
            let uri = if concurrency > 1 {
                with_option(&uri, "listen_concurrency", &concurrency.to_string())
            } else {
                uri
            };
            listen(&uri, format, exec).await
        }
        Command::DeadLetters {
            queue,
            requeue,
            format,
        } => dead_letters(&env.uri(&queue), requeue, format).await,
        Command::Bench(args) => crate::bench::run(&env.uri(&args.queue), &args).await,
        Command::Completions { shell } => {
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "courier", &mut script);
            // A reader that went away is not an error.
            let _ = std::io::stdout().write_all(&script);
            Ok(Exit::Success)
        }
    }
}

/// Creates and opens the queue at `uri`.
pub(crate) async fn open(uri: &str) -> std::result::Result<Arc<dyn MessageQueue>, Failure> {
    Ok(courier::connect(uri).await?)
}

/// Closes `queue` and returns `result` (or the close's error if the command succeeded).
async fn finish(
    queue: &dyn MessageQueue,
    result: std::result::Result<Exit, Failure>,
) -> std::result::Result<Exit, Failure> {
    let closed = queue.close(None).await;
    let exit = result?;
    closed?;
    Ok(exit)
}

fn read_error(path: &std::path::Path, e: std::io::Error) -> Failure {
    Failure::Usage(format!("cannot read {}: {e}", path.display()))
}

/// Receives up to `count` messages, printing and completing each. A message that could not
/// be printed (the reader closed the pipe) is given back, not completed; with
/// `no_complete`, every message is given back at the end (held until then, so that the next
/// receive takes the next message).
async fn receive(
    queue: &dyn MessageQueue,
    timeout: Duration,
    count: usize,
    format: Format,
    no_complete: bool,
) -> std::result::Result<Exit, Failure> {
    let mut received = 0;
    let mut held = Vec::new();
    let mut result = Ok(());
    for _ in 0..count {
        let message = match queue.receive(None, timeout).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        received += 1;
        if print(&message, format).is_err() {
            // The reader went away: not a failure, and this one was not printed.
            held.push(message);
            break;
        }
        if no_complete {
            held.push(message);
        } else if let Err(e) = queue.complete(&message).await {
            result = Err(e);
            break;
        }
    }
    for message in &held {
        queue.abandon(message).await?;
    }
    result?;
    Ok(if received == 0 {
        Exit::NoMessage
    } else {
        Exit::Success
    })
}

/// Prints `message`: its payload and a newline, or its wire JSON with `--json`; flushed.
fn print(message: &MessageEnvelope, format: Format) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if format.json {
        writeln!(out, "{}", message.to_json())?;
    } else {
        out.write_all(&message.message)?;
        if !message.message.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

/// `listen`: until Ctrl-C or SIGTERM (or stdout closes, or the listen loop ends by itself),
/// then drains.
async fn listen(
    uri: &str,
    format: Format,
    exec: Option<String>,
) -> std::result::Result<Exit, Failure> {
    let queue = open(uri).await?;
    let lock_timeout = queue
        .base()
        .map_or(Duration::from_secs(30), |base| base.options().lock_timeout);
    let stop = Arc::new(Notify::new());
    let receiver = Arc::new(Handler {
        format,
        exec,
        queue: queue.name().to_owned(),
        lock_timeout,
        stop: stop.clone(),
    });
    let listener = queue.clone().begin_listen(None, receiver);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Runtime(format!("cannot watch SIGTERM: {e}")))?;
    let joined = listener.join();
    tokio::pin!(joined);
    let listened = tokio::select! {
        listened = &mut joined => listened,
        _ = tokio::signal::ctrl_c() => {
            queue.end_listen(None);
            joined.await
        }
        _ = terminate.recv() => {
            queue.end_listen(None);
            joined.await
        }
        () = stop.notified() => {
            queue.end_listen(None);
            joined.await
        }
    };
    finish(
        &*queue,
        listened.map(|()| Exit::Success).map_err(Failure::from),
    )
    .await
}

/// What `listen` does with each message.
struct Handler {
    format: Format,
    exec: Option<String>,
    queue: String,
    /// Renewed while a command runs.
    lock_timeout: Duration,
    stop: Arc<Notify>,
}

#[async_trait]
impl MessageReceiver for Handler {
    async fn receive_message(
        &self,
        envelope: &MessageEnvelope,
        queue: &dyn MessageQueue,
    ) -> Result<()> {
        let Some(command) = &self.exec else {
            return print(envelope, self.format).map_err(|e| {
                // Nobody reads any more: stop listening; this message is given back.
                self.stop.notify_one();
                Error::new(ErrorKind::Backend, format!("cannot print: {e}"))
            });
        };
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("COURIER_QUEUE", &self.queue)
            .env("COURIER_MESSAGE_ID", &envelope.message_id)
            .env(
                "COURIER_CORRELATION_ID",
                envelope.correlation_id.as_deref().unwrap_or(""),
            )
            .env("COURIER_MESSAGE_TYPE", &envelope.message_type)
            .env(
                "COURIER_SENT_TIME",
                envelope
                    .sent_time
                    .map(courier::envelope::format_sent_time)
                    .unwrap_or_default(),
            )
            .env(
                "COURIER_DELIVERY_COUNT",
                envelope.delivery_count().to_string(),
            )
            .stdin(std::process::Stdio::piped())
            // Its own process group: Ctrl-C stops `courier`, which lets the command finish.
            .process_group(0)
            // A command still running when the drain gives up is stopped with it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Backend, format!("cannot run `{command}`: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&envelope.message).await;
        }
        // The lock is renewed while the command runs, so that a long one is not handed the
        // same message again meanwhile.
        let renew = queue.capabilities().can_renew_lock();
        let mut ticks = tokio::time::interval(self.lock_timeout / 2);
        ticks.tick().await;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = ticks.tick(), if renew => {
                    let _ = queue.renew_lock(envelope, self.lock_timeout).await;
                }
            }
        }
        .map_err(|e| Error::new(ErrorKind::Backend, format!("`{command}`: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Backend,
                format!("`{command}` exited with {status}: the message is given back"),
            ))
        }
    }
}

/// `dead-letters`: shows the dead-letter queue of the queue at `uri`, or moves it back.
async fn dead_letters(
    uri: &str,
    requeue: bool,
    format: Format,
) -> std::result::Result<Exit, Failure> {
    let queue = open(uri).await?;
    let result = async {
        if !queue.capabilities().can_dead_letter() {
            return Err(Failure::Runtime(format!(
                "the queue {} keeps its dead letters in its own process (or has none): a command line cannot read them",
                queue.name()
            )));
        }
        let name = queue
            .base()
            .map(|base| base.options().dead_letter_queue_name(queue.name()))
            .unwrap_or_else(|| format!("{}.dlq", queue.name()));
        let dlq_uri = dead_letter_uri(uri, &name)
            .ok_or_else(|| Failure::Usage(format!("cannot name the dead-letter queue of {}", courier::redact_uri(uri))))?;
        let dlq = open(&dlq_uri).await?;
        let moved = async {
            if requeue {
                let mut moved = 0usize;
                let mut seen = HashSet::new();
                // A short wait, not none: a push broker delivers after the subscription.
                while let Some(m) = dlq.receive(None, REQUEUE_WAIT).await? {
                    if !seen.insert(m.message_id.clone()) {
                        // Back already (a consumer failed it again): moved once is enough.
                        dlq.abandon(&m).await?;
                        break;
                    }
                    let again = MessageEnvelope::with_id(
                        m.message_id.clone(),
                        m.correlation_id.as_deref(),
                        &m.message_type,
                        m.message.clone(),
                    );
                    queue.send(None, again).await?;
                    dlq.complete(&m).await?;
                    moved += 1;
                }
                crate::complain(&format!("{moved} dead letters moved back to {}", queue.name()));
            } else {
                for m in dlq.peek_batch(None, SHOWN).await? {
                    if print(&m, format).is_err() {
                        break;
                    }
                }
            }
            Ok(Exit::Success)
        }
        .await;
        finish(&*dlq, moved).await
    }
    .await;
    finish(&*queue, result).await
}
