//! Where log lines go: stderr, written by a thread of their own.
//!
//! Writing to stderr blocks when its reader takes nothing: journald stalled, a container's log
//! pipe that nobody drains (64 KiB, about 300 access-log lines). Written from the workers, as
//! they were, the next line then stopped every connection of its worker, `/healthz` included.
//! Here a worker only queues the line. At most [`QUEUED_LINES`] wait; beyond that, lines are
//! dropped and counted (`envelope_proxy_log_lines_dropped_total`), as haproxy's UDP syslog
//! drops them rather than wait. The queue is emptied in order, a batch per write; what is
//! still queued at exit is written then, for up to about a second ([`Logging`]'s drop).

use std::io::{BufWriter, IsTerminal};
use std::sync::{Mutex, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// The most lines waiting for stderr: a few MB at most (a line is a few hundred bytes).
pub const QUEUED_LINES: usize = 8192;

/// The dropped lines' count, once logging started (none in tests that start no logging).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The log thread, until [`finish`].
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Keeps the log thread; dropping it [`finish`]es logging.
#[must_use = "dropping it stops the log thread"]
pub struct Logging(());

impl Drop for Logging {
    fn drop(&mut self) {
        finish();
    }
}

/// Writes the lines still queued (for up to about a second) and stops the log thread; lines
/// logged after this are dropped. For the last words of a process that is about to exit:
/// what it then prints to stderr directly comes after every log line.
pub fn finish() {
    let writer = WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(writer);
}

/// Starts logging at `--log-level` (or `RUST_LOG`) in `--log-format`. Call it once, before
/// anything logs; keep what it returns until exit.
pub fn init(config: &Config) -> Logging {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log")
        // A batch of lines in one write; the thread flushes after each batch.
        .finish(BufWriter::new(std::io::stderr()));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Text => builder.init(),
        // One flat JSON object per line, fields at the top level (journald / log shippers).
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    *WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(guard);
    Logging(())
}

/// Lines dropped so far because stderr took none (see the module docs).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}
