//! Allocations and copies, counted (not timed) with dhat as the global allocator.
//!
//! 1. Pass-through and wrap requests end to end, in process: a client, the proxy and a tiny
//!    upstream on one current-thread runtime. The proxy's allocations per request are the
//!    allocations of a run through the proxy minus those of the same run straight to the
//!    upstream, at 1 KiB, 64 KiB and 1 MiB bodies.
//! 2. SSE: the payload bytes the proxy copies per event. Every frame the client receives is
//!    checked against the upstream's chunks: a frame that points into an upstream chunk was
//!    sliced, not copied; the bytes of any other frame are counted as copied. Also allocations
//!    per event.
//!
//! `cargo bench --bench allocs` prints both tables; `cargo test --benches` (or `-- --test`) runs
//! fewer requests.

use std::convert::Infallible;
use std::ops::Range;

use bytes::Bytes;
use clap::Parser;
use envelope_proxy::translate::sse::{EventMode, SseBody};
use envelope_proxy::{Config, RunningServer};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use test_support::streams::{chat_events, chunked, mode_stream, Chunks};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    // Like criterion: a full run under `cargo bench` (which passes `--bench`), one quick
    // pass under `cargo test --benches` or with `--test`.
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test");
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(requests(if quick { 20 } else { 200 }));
    runtime.block_on(sse_copies());
    if quick {
        println!("allocs: smoke run complete");
    }
}

fn stats() -> (u64, u64) {
    let s = dhat::HeapStats::get();
    (s.total_blocks, s.total_bytes)
}

// === 1. allocations per request ===

async fn upstream(body: Bytes) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Allocations (blocks, bytes) of `n` keep-alive GETs of `url`, each body read to the end.
async fn run(url: &str, n: usize) -> (u64, u64) {
    let uri: http::Uri = url.parse().expect("uri");
    let stream = TcpStream::connect((uri.host().expect("host"), uri.port_u16().expect("port")))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut once = || {
        // Origin-form: the proxy refuses absolute-form targets (it is no forward proxy).
        let request = Request::get(uri.path())
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request);
        async move {
            let response = response.await.expect("response");
            assert!(response.status().is_success(), "{}", response.status());
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .len()
        }
    };
    for _ in 0..10 {
        once().await;
    }
    let before = stats();
    for _ in 0..n {
        once().await;
    }
    let after = stats();
    (after.0 - before.0, after.1 - before.1)
}

fn completion(size: usize) -> Bytes {
    let head = r#"{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    let tail = r#""},"finish_reason":"stop"}]}"#;
    let fill = size.saturating_sub(head.len() + tail.len()).max(1);
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

async fn requests(n: usize) {
    println!("Proxy allocations per request (through the proxy minus straight to the upstream, {n} requests):");
    println!("| body | pass-through allocs | pass-through bytes | wrap allocs | wrap bytes |");
    println!("|---|---|---|---|---|");
    for (label, size) in [("1 KiB", 1 << 10), ("64 KiB", 64 << 10), ("1 MiB", 1 << 20)] {
        let upstream = upstream(completion(size)).await;
        let config = Config::try_parse_from([
            "envelope-proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("{upstream}/v1"),
            "--log-level",
            "warn",
        ])
        .expect("config");
        let proxy = RunningServer::start(config).await.expect("proxy");
        let direct = run(&format!("{upstream}/v1/chat/completions"), n).await;
        let passthru = run(&format!("http://{}/v1/chat/completions", proxy.addr), n).await;
        let wrap = run(&format!("http://{}/api/v1/chat/completions", proxy.addr), n).await;
        let per = |(blocks, bytes): (u64, u64)| {
            (
                (blocks as f64 - direct.0 as f64) / n as f64,
                (bytes as f64 - direct.1 as f64) / n as f64,
            )
        };
        let (pb, pbytes) = per(passthru);
        let (wb, wbytes) = per(wrap);
        println!("| {label} | {pb:.1} | {pbytes:.0} | {wb:.1} | {wbytes:.0} |");
        proxy.stop().await;
    }
}

// === 2. copies per SSE event ===

async fn sse_copies() {
    println!();
    println!("SSE: payload bytes copied and allocations per event (200 events of ~300 B):");
    println!(
        "| mode | chunking | bytes copied / event | allocs / event | bytes allocated / event |"
    );
    println!("|---|---|---|---|---|");
    for (mode, name) in [
        (EventMode::Passthru, "pass-through"),
        (EventMode::Wrap, "wrap"),
        (EventMode::Unwrap, "unwrap"),
    ] {
        let evs = chat_events(mode == EventMode::Unwrap, 200, 300);
        for (label, chunk) in [("per event", 0), ("16 KiB", 16 << 10), ("1 KiB", 1 << 10)] {
            let chunks = chunked(&evs, chunk);
            let ranges: Vec<Range<usize>> = chunks
                .iter()
                .map(|c| c.as_ptr() as usize..c.as_ptr() as usize + c.len())
                .collect();
            let before = stats();
            let mut body = std::pin::pin!(SseBody::new(
                Chunks(chunks.into_iter().collect()),
                mode_stream(mode),
            ));
            let mut copied = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.expect("frame").into_data() else {
                    continue;
                };
                let at = data.as_ptr() as usize;
                let sliced = data.is_empty()
                    || ranges.iter().any(|r| r.contains(&at))
                    // The static prefixes and suffixes of rewritten events are not payload.
                    || is_static_piece(&data);
                if !sliced {
                    copied += data.len();
                }
            }
            let after = stats();
            let per = |v: u64| v as f64 / evs.len() as f64;
            println!(
                "| {name} | {label} | {:.0} | {:.2} | {:.0} |",
                copied as f64 / evs.len() as f64,
                per(after.0 - before.0),
                per(after.1 - before.1),
            );
        }
    }
}

fn is_static_piece(data: &[u8]) -> bool {
    const PIECES: [&[u8]; 4] = [
        b"data: ",
        b"\n\n",
        b"}\n\n",
        br#"data: {"success":true,"code":"200","message":"successful","data":"#,
    ];
    PIECES.contains(&data)
}
