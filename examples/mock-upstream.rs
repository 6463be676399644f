//! Standalone mock upstream for manual runs and out-of-process client test suites.
//!
//! ```text
//! cargo run --example mock-upstream -- --listen 127.0.0.1:9000 --shape envelope
//! ```
//!
//! Prints exactly one line, `mock-upstream listening on http://ADDR (shape SHAPE)`, once bound,
//! then serves until SIGINT or SIGTERM. Behaviour is driven by `x-mock-*` request headers, see
//! `tests/support/src/mock_upstream.rs`; `GET /__mock/health` and `GET /__mock/attempts?key=K` let a
//! client in another process check it.

use test_support::mock_upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "mock-upstream",
    about = "Mock OpenAI-compatible upstream (bare or envelope dialect) for envelope-proxy tests"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "MOCK_UPSTREAM_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,

    /// Response dialect.
    #[arg(
        long,
        env = "MOCK_UPSTREAM_SHAPE",
        default_value = "bare",
        value_parser = ["bare", "envelope"]
    )]
    shape: String,

    /// Log one line per request to stderr.
    #[arg(long, env = "MOCK_UPSTREAM_VERBOSE")]
    verbose: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let shape: mock_upstream::Shape = match args.shape.parse() {
        Ok(shape) => shape,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let mock = match mock_upstream::start_on(args.listen, shape).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    mock.state.set_verbose(args.verbose);

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "mock-upstream listening on http://{} (shape {shape})",
        mock.addr
    );
    let _ = stdout.flush();
    drop(stdout);

    wait_for_signal().await;
    drop(mock);
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
