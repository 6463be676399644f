//! The real binary's lifecycle: READY after the port accepts, STOPPING and exit 0 on SIGTERM,
//! in-flight streams drained, the grace deadline, the watchdog, socket activation, a stderr
//! that takes nothing, and the start-to-ready time (measured and printed, never asserted).

use test_support::{harness, mock_upstream, process};

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{client, fixture, WAIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mock_upstream::Shape;
use nix::sys::signal::Signal;
use process::{field, free_port, served_tcp_addr, until_refused, Notify, ProxyProcess, TempDir};

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

const BARE_STREAM: &str = "bare/chat_completion_stream.sse";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"stream":true}"#;

/// Starts the binary with a test NOTIFY_SOCKET; returns it, the socket, and the served address.
async fn start_notified(
    dir: &TempDir,
    args: &[&str],
) -> (ProxyProcess, Notify, SocketAddr, String) {
    let notify = Notify::bind(dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    let proxy = ProxyProcess::spawn(dir, BIN, args, &[("NOTIFY_SOCKET", &socket)]);
    let ready = notify.until("READY=1").await;
    let status = field(&ready, "STATUS")
        .expect("STATUS= with READY=1")
        .to_owned();
    let addr = served_tcp_addr(&status);
    (proxy, notify, addr, status)
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client().request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let status = response.status();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body within the wait bound")
        .expect("body")
        .to_bytes();
    (status, body)
}

/// The admin listener's address in a `STATUS=serving …; admin IP:PORT; …` line.
fn admin_addr(status: &str) -> SocketAddr {
    let rest = &status[status
        .find("; admin ")
        .expect("an admin listener in STATUS")
        + 8..];
    rest[..rest.find(';').unwrap_or(rest.len())]
        .parse()
        .expect("IP:PORT after `admin`")
}

/// A held chat stream through the proxy at `addr`, with its first event read.
async fn open_held_stream(addr: SocketAddr) -> (Incoming, BytesMut) {
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-behaviour", "hold")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client().request(request))
        .await
        .expect("response headers within the wait bound")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    while !seen.windows(2).any(|w| w == b"\n\n") {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("first event within the wait bound")
            .expect("a frame")
            .expect("a good frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    (body, seen)
}

async fn read_to_end(body: Incoming, seen: &mut BytesMut) {
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the stream ends within the wait bound")
        .expect("the stream ends cleanly")
        .to_bytes();
    seen.extend_from_slice(&rest);
}

/// The first event of the bare stream fixture.
fn first_event() -> Bytes {
    let all = fixture(BARE_STREAM);
    let end = all.windows(2).position(|w| w == b"\n\n").expect("an event") + 2;
    all.slice(..end)
}

#[tokio::test]
async fn ready_comes_after_the_port_accepts_and_sigterm_sends_stopping_refuses_and_exits_0() {
    let dir = TempDir::new("ready");
    let (mut proxy, notify, addr, status) = start_notified(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
    )
    .await;
    assert_eq!(
        status,
        format!(
            "serving http://{addr}; upstream http://127.0.0.1:9/v1 (bare); upstream key: none; \
             client keys: none; TLS key: none"
        )
    );
    // READY=1 was sent: the port accepts and serves already.
    assert_eq!(
        get(addr, "/healthz").await,
        (StatusCode::OK, Bytes::from_static(b"ok\n"))
    );

    proxy.signal(Signal::SIGTERM);
    let stopping = notify.until("STOPPING=1").await;
    // The count depends on whether the client's idle keep-alive connection is still open.
    let status = field(&stopping, "STATUS").expect("STATUS= with STOPPING=1");
    assert!(
        status.starts_with("draining ") && status.ends_with(" connection(s) for up to 30s"),
        "{status}"
    );
    until_refused(addr).await;
    let exit = proxy.wait().await;
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", proxy.stderr());
}

#[tokio::test]
async fn an_in_flight_stream_completes_during_the_drain_while_new_connections_are_refused() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("drain");
    let upstream = mock.base_url();
    let (mut proxy, notify, addr, _) =
        start_notified(&dir, &["--listen", "127.0.0.1:0", "--upstream", &upstream]).await;
    let (body, mut seen) = open_held_stream(addr).await;

    proxy.signal(Signal::SIGTERM);
    let stopping = notify.until("STOPPING=1").await;
    assert_eq!(
        field(&stopping, "STATUS"),
        Some("draining 1 connection(s) for up to 30s")
    );
    until_refused(addr).await;
    assert!(proxy.is_running(), "the proxy waits for the stream");

    mock.state.release();
    read_to_end(body, &mut seen).await;
    assert_eq!(
        seen.freeze(),
        fixture(BARE_STREAM),
        "the whole stream, [DONE] included"
    );
    let exit = proxy.wait().await;
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", proxy.stderr());
}

#[tokio::test]
async fn streams_still_open_when_the_grace_ends_get_an_error_event_and_the_exit_code_is_0() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("grace");
    let upstream = mock.base_url();
    let (mut proxy, notify, addr, _) = start_notified(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--shutdown-grace",
            "0.2",
        ],
    )
    .await;
    let (body, mut seen) = open_held_stream(addr).await;

    // SIGINT drains exactly like SIGTERM.
    proxy.signal(Signal::SIGINT);
    notify.until("STOPPING=1").await;
    read_to_end(body, &mut seen).await;
    let mut expected = BytesMut::from(&first_event()[..]);
    expected.extend_from_slice(
        b"data: {\"error\":{\"message\":\"the proxy is shutting down; the stream was closed before it finished\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"shutting_down\"}}\n\n",
    );
    assert_eq!(seen, expected);
    let exit = proxy.wait().await;
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        mock.state.wait_client_gone(WAIT).await,
        "the upstream request was cancelled"
    );
}

#[tokio::test]
async fn the_watchdog_is_pinged_after_ready_when_the_unit_asks_for_it() {
    let dir = TempDir::new("watchdog");
    let notify = Notify::bind(&dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    // WATCHDOG_PID must be the proxy's own pid: a shell that execs the binary keeps its pid.
    let mut proxy = ProxyProcess::spawn(
        &dir,
        "/bin/sh",
        &[
            "-c",
            r#"WATCHDOG_PID=$$ exec "$0" "$@""#,
            BIN,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "200000")],
    );
    let first = notify.next().await;
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    assert_eq!(notify.next().await, "WATCHDOG=1\n");
    assert_eq!(notify.next().await, "WATCHDOG=1\n");
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
}

/// GET over a Unix socket.
async fn unix_get(path: &Path, uri: &str) -> (StatusCode, Bytes) {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect to the Unix socket");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = Request::get(uri)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn socket_activation_serves_the_inherited_tcp_and_unix_sockets_instead_of_binding() {
    let tool = "systemd-socket-activate";
    assert!(
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "{tool} is needed (Debian/Ubuntu: apt-get install -y systemd)"
    );
    let mock = mock_upstream::start(Shape::Bare).await;
    let upstream = mock.base_url();
    let dir = TempDir::new("activate");
    let notify = Notify::bind(&dir);
    let unix = dir.path("proxy.sock");
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let notify_env = format!("NOTIFY_SOCKET={}", notify.path.display());
    let unix_arg = unix.to_str().expect("UTF-8 path").to_owned();
    // --listen names a socket that cannot be bound: the proxy must not try.
    let mut proxy = ProxyProcess::spawn(
        &dir,
        tool,
        &[
            "-l",
            &tcp,
            "-l",
            &unix_arg,
            "-E",
            &notify_env,
            "--",
            BIN,
            "--listen",
            "unix:/nonexistent/envelope-proxy.sock",
            "--upstream",
            &upstream,
        ],
        &[],
    );
    let addr: SocketAddr = tcp.parse().expect("address");
    // The first connection starts the service; the kernel queues it meanwhile.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{tool} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        get(addr, "/v1/models").await,
        (StatusCode::OK, fixture("bare/models.json"))
    );
    let ready = notify.until("READY=1").await;
    assert_eq!(
        field(&ready, "STATUS"),
        Some(
            format!(
                "serving http://{addr}, unix:{}; upstream {upstream} (bare); upstream key: none; \
                 client keys: none; TLS key: none",
                unix.display()
            )
            .as_str()
        )
    );
    assert_eq!(
        unix_get(&unix, "/v1/models").await,
        (StatusCode::OK, fixture("bare/models.json"))
    );

    proxy.signal(Signal::SIGTERM);
    assert_eq!(
        proxy.wait().await.code(),
        Some(0),
        "stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        process::exists(&unix),
        "an inherited socket file belongs to the service manager and is left in place"
    );
}

/// Prints the median time from spawn to READY=1. Measure a release build with
/// `ENVELOPE_PROXY_BIN=target/release/envelope-proxy cargo test --test lifecycle start_to_ready -- --nocapture`.
#[tokio::test]
async fn start_to_ready_is_measured() {
    const RUNS: usize = 15;
    let bin = process::measured_bin(BIN);
    for (label, upstream) in [
        ("http upstream", "http://127.0.0.1:9/v1"),
        ("https upstream (system roots)", "https://api.openai.com/v1"),
    ] {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let dir = TempDir::new("startup");
            let notify = Notify::bind(&dir);
            let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
            let started = Instant::now();
            let mut proxy = ProxyProcess::spawn(
                &dir,
                &bin,
                &["--listen", "127.0.0.1:0", "--upstream", upstream],
                &[("NOTIFY_SOCKET", &socket)],
            );
            notify.until("READY=1").await;
            times.push(started.elapsed());
            proxy.signal(Signal::SIGTERM);
            assert_eq!(proxy.wait().await.code(), Some(0));
        }
        times.sort();
        let median = times[RUNS / 2];
        println!(
            "start to READY=1 ({bin}), {label}: median {:.1} ms over {RUNS} runs (min {:.1}, max {:.1})",
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[RUNS - 1].as_secs_f64() * 1e3
        );
    }
}

#[tokio::test]
async fn sighup_reloads_the_key_files_through_the_same_registry() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let upstream = mock.base_url();
    let dir = TempDir::new("keys");
    let keys = dir.path("api-keys");
    std::fs::write(&keys, "sk-first\n").unwrap();
    let keys_arg = keys.to_str().expect("UTF-8 path").to_owned();
    let (mut proxy, notify, addr, status) = start_notified(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--api-keys-file",
            &keys_arg,
        ],
    )
    .await;
    let status_with = |key: &'static str| async move {
        let request = Request::get(format!("http://{addr}/v1/models"))
            .header("authorization", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(WAIT, client().request(request))
            .await
            .unwrap()
            .unwrap();
        response.status()
    };
    assert_eq!(status_with("Bearer sk-first").await, StatusCode::OK);

    std::fs::write(&keys, "sk-second\n").unwrap();
    proxy.signal(Signal::SIGHUP);
    notify.until("RELOADING=1").await;
    let reloaded = notify.until("READY=1").await;
    assert_eq!(field(&reloaded, "STATUS"), Some(status.as_str()));
    assert_eq!(status_with("Bearer sk-second").await, StatusCode::OK);
    assert_eq!(
        status_with("Bearer sk-first").await,
        StatusCode::UNAUTHORIZED
    );

    std::fs::write(&keys, "# no keys left\n").unwrap();
    proxy.signal(Signal::SIGHUP);
    let failed = notify.until("READY=1").await;
    assert_eq!(
        field(&failed, "STATUS"),
        Some(format!("{status}; last reload failed (API key files), previous kept").as_str())
    );
    assert_eq!(status_with("Bearer sk-second").await, StatusCode::OK);

    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
}

#[tokio::test]
async fn the_process_is_the_main_thread_the_workers_and_the_log_writer_and_all_serve() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("workers");
    let upstream = mock.base_url();
    let (mut proxy, _notify, addr, status) = start_notified(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--worker-threads",
            "3",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    // Three held streams on three connections, each with its first event read.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open_held_stream(addr).await);
    }
    // Each worker holds one of them: every worker is serving a stream. (Read on the admin
    // listener, whose connections no worker serves.)
    let (status, metrics) = get(admin_addr(&status), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics.to_vec()).expect("UTF-8 metrics");
    let per_worker: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("envelope_proxy_worker_connections{"))
        .collect();
    assert_eq!(
        per_worker,
        [
            r#"envelope_proxy_worker_connections{worker="0"} 1"#,
            r#"envelope_proxy_worker_connections{worker="1"} 1"#,
            r#"envelope_proxy_worker_connections{worker="2"} 1"#,
        ],
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "envelope_proxy_active_streams 3"),
        "{metrics}"
    );
    let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .expect("the proxy's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    threads.sort();
    assert_eq!(
        threads,
        ["envelope-proxy", "log", "worker-0", "worker-1", "worker-2"],
        "the main thread, three workers and the log writer, nothing else"
    );

    mock.state.release();
    for (body, mut seen) in held {
        read_to_end(body, &mut seen).await;
        assert_eq!(seen.freeze(), fixture(BARE_STREAM));
    }
    proxy.signal(Signal::SIGTERM);
    let exit = proxy.wait().await;
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", proxy.stderr());
}

#[tokio::test]
async fn a_stderr_that_takes_nothing_never_holds_up_the_proxy() {
    // A log pipe nobody drains (a stalled journal, a container runtime that stopped reading).
    // Once the pipe (64 KiB) and the proxy's queue (8,192 lines) are full, access-log lines
    // are dropped and counted, and every request is still answered.
    const REQUESTS: usize = 10_000;
    const CONCURRENCY: usize = 8;
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("stderr-stalled");
    let notify = Notify::bind(&dir);
    let upstream = mock.base_url();
    let mut child = std::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream])
        .args(["--worker-threads", "1", "--log-level", "info"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    // Held, and not read until every request is answered.
    let mut stderr = child.stderr.take().expect("the stderr pipe");
    let ready = notify.until("READY=1").await;
    let addr = served_tcp_addr(field(&ready, "STATUS").expect("STATUS"));

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        clients.spawn(async move {
            let mut ok = 0;
            for _ in 0..REQUESTS / CONCURRENCY {
                if get(addr, "/v1/models").await.0 == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        });
    }
    let answered: usize = clients.join_all().await.into_iter().sum();
    assert_eq!(answered, REQUESTS);
    assert_eq!(get(addr, "/healthz").await.0, StatusCode::OK);
    let (_, metrics) = get(addr, "/metrics").await;
    let dropped: usize = String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|line| line.strip_prefix("envelope_proxy_log_lines_dropped_total "))
        .expect("the dropped lines' counter")
        .parse()
        .expect("a count");
    assert!(dropped > 0, "the queue overflowed, so lines were dropped");

    // Drained now: every line of the requests above was either dropped or comes out, in order
    // of the requests' ends (waited for within the bound: the queue is written as it drains).
    let logged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = std::thread::spawn({
        let logged = std::sync::Arc::clone(&logged);
        move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(&mut stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" access: ") && line.contains("path=/v1/models ") {
                    logged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    let all_accounted = tokio::time::timeout(WAIT, async {
        while logged.load(std::sync::atomic::Ordering::SeqCst) + dropped < REQUESTS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(all_accounted.is_ok(), "lines written or counted as dropped");
    assert_eq!(
        logged.load(std::sync::atomic::Ordering::SeqCst) + dropped,
        REQUESTS
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid")),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("the wait")
        .expect("the exit status");
    assert_eq!(exit.code(), Some(0));
    reader.join().expect("the reader");
}
