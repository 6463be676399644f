//! Wiring only: parse flags, start logging, take inherited sockets, bind, say READY, serve
//! until SIGTERM or SIGINT; SIGHUP reloads.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use envelope_proxy::config::Config;
use envelope_proxy::listen::{self, Server};
use envelope_proxy::ops::credentials::{self, Sources};
use envelope_proxy::ops::logging;
use envelope_proxy::ops::reload::Reload;
use envelope_proxy::ops::systemd;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error) => return exit_with_usage_error(error),
    };
    // Before any thread exists (the log writer is one): this unsets LISTEN_FDS/LISTEN_PID.
    let inherited = listen::take_inherited();
    // Kept to the end of `main`: dropping it writes the lines still queued.
    let _logging = logging::init(&config);

    // Where each secret comes from, for the ready line and STATUS= (never the secret itself).
    if let Some(warning) = credentials::none_found_warning() {
        tracing::warn!("{warning}");
    }
    let secrets = match config.secret_sources() {
        Ok(secrets) => secrets,
        Err(error) => return fail(&error.to_string()),
    };
    let inherited = match inherited {
        Ok(sockets) => sockets,
        Err(error) => return fail(&error.to_string()),
    };

    // The main thread accepts, handles signals and serves the admin listener; connections are
    // served by the worker threads, each with its own runtime (`workers.rs`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(run(config, secrets, inherited))
}

async fn run(config: Config, secrets: Sources, inherited: Vec<listen::Inherited>) -> ExitCode {
    // Handlers first: a signal that arrives right after READY=1 must not kill the process.
    let (mut term, mut int, mut hangup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hangup)) => (term, int, hangup),
        _ => return fail("cannot install the signal handlers"),
    };
    let activated = !inherited.is_empty();
    let reload = Reload::default();
    let server = match Server::build(config, inherited, &reload).await {
        Ok(server) => server,
        Err(error) => return fail(&error.to_string()),
    };
    let summary = format!("{}; {secrets}", server.summary());
    let metrics = server.metrics();
    tracing::info!(
        socket_activated = activated,
        "envelope-proxy ready: {summary}"
    );
    systemd::ready(&summary);
    if let Some(interval) = systemd::watchdog_interval() {
        systemd::spawn_watchdog(interval);
    }

    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            systemd::reloading();
            let failures = reload.reload_all();
            metrics.reloaded(failures.is_empty());
            let status = if failures.is_empty() {
                summary.clone()
            } else {
                let what: Vec<&str> = failures.iter().map(|f| f.name).collect();
                format!(
                    "{summary}; last reload failed ({}), previous kept",
                    what.join(", ")
                )
            };
            systemd::ready(&status);
        }
    });

    // SIGTERM or SIGINT starts the drain.
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    server.serve(shutdown).await;
    tracing::info!("envelope-proxy stopped");
    ExitCode::SUCCESS
}

/// A startup failure: logged, on stderr as one line, and exit code 1.
fn fail(message: &str) -> ExitCode {
    tracing::error!("cannot start: {message}");
    // The plain line last, after every log line (they are written by a thread of their own).
    logging::finish();
    eprintln!("envelope-proxy: {message}");
    ExitCode::FAILURE
}

/// clap's errors span several lines; operators get one line naming the flag, and exit code 2.
fn exit_with_usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    let line = line.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("envelope-proxy: {line}");
    ExitCode::from(2)
}
