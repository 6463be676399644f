//! Load-test helpers for `benches/load.sh`: a lean upstream and the stream clients oha lacks.
//!
//! ```text
//! bench-tool upstream --listen 127.0.0.1:0 [--threads 1]
//! bench-tool ttfe --n 400 URL...          # time to first event, URLs interleaved (shuffled)
//! bench-tool streams --url URL --n 10000 --pid PID[,PID...] [--http2 N]   # N connections, multiplexed
//! bench-tool sse-cpu --url URL --streams 400 --concurrency 50 --pids PID,...
//! bench-tool ready --bin target/release/envelope-proxy --n 20   # start to ready
//! bench-tool free-port
//! bench-tool floor --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT   # the least a hyper proxy does
//! ```
//!
//! The upstream does no per-request work beyond routing on the path: bodies are built once per
//! size and served from a cache, so its cost stays small next to the proxy it measures. It
//! speaks HTTP/1.1, and HTTP/2 to a client that opens with the preface (h2c prior knowledge, the
//! proxy's `--upstream-http2`), with up to 100,000 concurrent streams per connection. Paths
//! (below any prefix, e.g. `/v1/bench/json/1024`):
//!
//! | path | response |
//! |---|---|
//! | `…/json/<bytes>` | a bare chat completion of about that size |
//! | `…/env/<bytes>` | the same inside a success envelope |
//! | `…/zh/<bytes>` | a bare chat completion whose text is Chinese (three-byte characters, a `\n` escape a line) |
//! | `…/zhu/<bytes>` | the same text as a serialiser that writes only ASCII writes it: every character a `\u` escape |
//! | `…/sse/<events>/<bytes>/<gap_ms>` | a bare chat stream: `events` chunks of about `bytes` each, `gap_ms` apart (first one at once), then `[DONE]` |
//! | `…/envsse/<events>/<bytes>/<gap_ms>` | the same with every chunk in a success envelope |
//!
//! Every client loop here is bounded in count and time and talks to 127.0.0.1 only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use test_support::streams::chat_event;
use tokio::net::{TcpListener, TcpStream};

mod bodies;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage();
    };
    let opts = Opts::parse(rest);
    match command.as_str() {
        "upstream" => upstream(&opts),
        "ttfe" => client_runtime().block_on(ttfe(&opts)),
        "streams" => client_runtime().block_on(streams(&opts)),
        "sse-cpu" => client_runtime().block_on(sse_cpu(&opts)),
        "ready" => ready(&opts),
        "floor" => floor(&opts),
        "free-port" => {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            println!("{}", socket.local_addr().expect("addr").port());
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-tool upstream|ttfe|streams|sse-cpu|ready|free-port|floor [--flag value]... [URL]..."
    );
    std::process::exit(2)
}

/// `--name value` pairs and positional URLs.
struct Opts {
    flags: HashMap<String, String>,
    positional: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut flags = HashMap::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let value = it.next().unwrap_or_else(|| usage());
                flags.insert(name.to_string(), value.clone());
            } else {
                positional.push(arg.clone());
            }
        }
        Opts { flags, positional }
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.flags.get(name) {
            Some(value) => value.parse().unwrap_or_else(|_| {
                eprintln!("bench-tool: bad value for --{name}: {value}");
                std::process::exit(2)
            }),
            None => default,
        }
    }

    fn str(&self, name: &str) -> String {
        self.flags.get(name).cloned().unwrap_or_else(|| {
            eprintln!("bench-tool: --{name} is required");
            std::process::exit(2)
        })
    }
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// === upstream ===

fn upstream(opts: &Opts) {
    let listen: SocketAddr = opts.get("listen", "127.0.0.1:0".parse().expect("addr"));
    let threads: usize = opts.get("threads", 1);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        println!(
            "bench-upstream listening on http://{}",
            listener.local_addr().expect("addr")
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                if speaks_h2(&stream).await {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(H2_MAX_STREAMS)
                        .serve_connection(TokioIo::new(stream), service_fn(serve))
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service_fn(serve))
                        .await;
                }
            });
        }
    });
}

/// Streams an HTTP/2 client (the proxy's `--upstream-http2`) may open on one connection: more
/// than any proxy under test sends, so the upstream never queues.
const H2_MAX_STREAMS: u32 = 100_000;

/// Whether the connection opens with the HTTP/2 client preface (prior knowledge, h2c): its
/// first bytes, peeked, so the HTTP/1.1 path reads the socket exactly as before.
async fn speaks_h2(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    // Bounded: each peek waits for more bytes, and the preface arrives in one segment.
    for _ in 0..PREFACE.len() {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= PREFACE.len() || !PREFACE.starts_with(&first[..n]) => {
                return first[..n] == *PREFACE;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    false
}

async fn serve(request: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = request.uri().path().to_string();
    // Drain the request body so the connection stays reusable.
    let _ = request.into_body().collect().await;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let num = |i: usize| -> Option<usize> { segments.get(i)?.parse().ok() };
    let at = segments
        .iter()
        .position(|s| matches!(*s, "json" | "env" | "zh" | "zhu" | "sse" | "envsse"));
    let response = match at.map(|i| (segments[i], i)) {
        Some(("json", i)) | Some(("env", i)) | Some(("zh", i)) | Some(("zhu", i)) => num(i + 1)
            .map(|size| {
                let body = cached(segments[i], size);
                Response::builder()
                    .header("content-type", "application/json")
                    .body(UpBody::Full(Some(body)))
                    .expect("response")
            }),
        Some(("sse", i)) | Some(("envsse", i)) => match (num(i + 1), num(i + 2), num(i + 3)) {
            (Some(events), Some(size), Some(gap_ms)) => {
                let envelope = segments[i] == "envsse";
                let event = chat_event(envelope, size);
                Some(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(UpBody::Sse(SseSource {
                            event,
                            left: events,
                            done: false,
                            gap: Duration::from_millis(gap_ms as u64),
                            sleep: None,
                        }))
                        .expect("response"),
                )
            }
            _ => None,
        },
        _ => None,
    };
    Ok(response.unwrap_or_else(|| {
        let mut r = Response::new(UpBody::Full(Some(Bytes::from_static(b"{\"error\":{\"message\":\"bench-upstream: unknown path\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}"))));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }))
}

thread_local! {
    static CACHE: RefCell<HashMap<(&'static str, usize), Bytes>> = RefCell::new(HashMap::new());
}

/// A chat completion of about `size` bytes (`size` ≥ ~300) of a `kind` the path names (`json`,
/// `env`, `zh` or `zhu`), built once per thread.
fn cached(kind: &str, size: usize) -> Bytes {
    let (kind, envelope, text) = match kind {
        "env" => ("env", true, bodies::LATIN),
        "zh" => ("zh", false, bodies::CHINESE),
        "zhu" => ("zhu", false, bodies::CHINESE_ASCII),
        _ => ("json", false, bodies::LATIN),
    };
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry((kind, size))
            .or_insert_with(|| bodies::completion(envelope, size, text))
            .clone()
    })
}

enum UpBody {
    Full(Option<Bytes>),
    Sse(SseSource),
}

struct SseSource {
    event: Bytes,
    left: usize,
    done: bool,
    gap: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpBody::Full(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Sse(source) => {
                if let Some(sleep) = source.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    source.sleep = None;
                }
                if source.left > 0 {
                    source.left -= 1;
                    if !source.gap.is_zero() {
                        source.sleep = Some(Box::pin(tokio::time::sleep(source.gap)));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(source.event.clone()))));
                }
                if !source.done {
                    source.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b"data: [DONE]\n\n",
                    )))));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(body) => body.is_none(),
            UpBody::Sse(source) => source.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(Some(body)) => SizeHint::with_exact(body.len() as u64),
            UpBody::Full(None) => SizeHint::with_exact(0),
            UpBody::Sse(_) => SizeHint::default(),
        }
    }
}

// === floor ===

/// The least a proxy built on hyper does for one request, as a baseline beside nginx and
/// haproxy (`benches/profile.sh cpu`): what is left of a gap to them when hyper alone is
/// measured is hyper's, the rest is envelope-proxy's. One thread; hyper's HTTP/1.1 server with
/// writev, as envelope-proxy's; each request sent as it came (no header rewrite, no checks, no
/// log) on an idle connection of a plain pool of `client::conn::http1` connections, each
/// driven by its own task as in hyper's examples; the response's head and body handed back
/// untouched. No limits and no timeouts: a bench instrument, never a proxy to deploy.
fn floor(opts: &Opts) {
    let listen: SocketAddr = opts.get("listen", "127.0.0.1:0".parse().expect("addr"));
    let upstream: SocketAddr = opts.get("upstream", "127.0.0.1:80".parse().expect("addr"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(tokio::task::LocalSet::new().run_until(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        println!(
            "bench-floor listening on http://{}",
            listener.local_addr().expect("addr")
        );
        let pool: FloorPool = Default::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service =
                    service_fn(move |request| floor_forward(pool.clone(), upstream, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .writev(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }));
}

type FloorSender = hyper::client::conn::http1::SendRequest<Incoming>;
type FloorPool = std::rc::Rc<RefCell<Vec<FloorSender>>>;

async fn floor_forward(
    pool: FloorPool,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    // An idle connection, else a new one; back in the pool once the head has come (hyper
    // holds a request for it until the body has been read).
    let idle = {
        let mut idle = pool.borrow_mut();
        idle.retain(|sender| !sender.is_closed());
        idle.iter()
            .position(|sender| sender.is_ready())
            .map(|at| idle.swap_remove(at))
    };
    let mut sender = match idle {
        Some(sender) => sender,
        None => {
            let stream = TcpStream::connect(upstream).await?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(connection);
            sender
        }
    };
    let response = sender.send_request(request).await;
    pool.borrow_mut().push(sender);
    Ok(response?)
}

// === clients ===

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(uri: &Uri) -> std::io::Result<Sender> {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn connect_h2(
    uri: &Uri,
) -> std::io::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// HTTP/2 requests carry the full URI (`:scheme`, `:authority`).
fn request(uri: &Uri) -> Request<Empty<Bytes>> {
    build_request(uri, uri.clone())
}

/// HTTP/1.1 requests use origin-form: envelope-proxy refuses absolute-form (it is no forward proxy).
fn h1_request(uri: &Uri) -> Request<Empty<Bytes>> {
    build_request(uri, uri.path())
}

fn build_request<T>(uri: &Uri, target: T) -> Request<Empty<Bytes>>
where
    Uri: TryFrom<T>,
    <Uri as TryFrom<T>>::Error: Into<http::Error>,
{
    Request::get(target)
        .header("host", uri.authority().map_or("127.0.0.1", |a| a.as_str()))
        .body(Empty::new())
        .expect("request")
}

/// Reads a stream to its end; `Some(first_frame_at)` when it ended with `[DONE]`.
async fn read_stream(
    mut body: Incoming,
    started: Instant,
    first: &mut Option<Duration>,
) -> Option<()> {
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if first.is_none() && !data.is_empty() {
                *first = Some(started.elapsed());
            }
            tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
            let keep = tail.len().saturating_sub(32);
            tail.drain(..keep);
        }
    }
    let text = String::from_utf8_lossy(&tail);
    text.trim_end().ends_with("data: [DONE]").then_some(())
}

/// Time to first event: `n` requests per URL, one at a time, URLs interleaved so that every
/// target sees the same machine state. Each URL keeps one keep-alive connection. Only streams
/// that answer 200 and end with `[DONE]` count; the others are reported as `failed=`.
async fn ttfe(opts: &Opts) {
    let n: usize = opts.get("n", 200);
    let uris: Vec<Uri> = opts
        .positional
        .iter()
        .map(|u| u.parse().expect("URL"))
        .collect();
    let mut senders = Vec::new();
    for uri in &uris {
        senders.push(connect(uri).await.expect("connect"));
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); uris.len()];
    let mut failed = vec![0usize; uris.len()];
    let mut order: Vec<usize> = (0..uris.len()).collect();
    let mut shuffle = XorShift(0x9E37_79B9_7F4A_7C15);
    let deadline = Instant::now() + Duration::from_secs(120);
    // A few warm-up rounds, not recorded.
    for round in 0..n + 20 {
        if Instant::now() > deadline {
            break;
        }
        // A new order every round: in a fixed (or rotated) order a target always follows the
        // same one, and the one after the direct target paid for its server having idled.
        shuffle.permute(&mut order);
        for &i in &order {
            let uri = &uris[i];
            let started = Instant::now();
            let Ok(response) = senders[i].send_request(h1_request(uri)).await else {
                // A failed send is a failed sample, not the end of the step: reconnect.
                if round >= 20 {
                    failed[i] += 1;
                }
                if let Ok(sender) = connect(uri).await {
                    senders[i] = sender;
                }
                continue;
            };
            let status = response.status();
            let mut first = None;
            let done = read_stream(response.into_body(), started, &mut first).await;
            if round < 20 {
                continue;
            }
            match (status, done, first) {
                (StatusCode::OK, Some(()), Some(first)) => {
                    samples[i].push(first.as_secs_f64() * 1e6);
                }
                _ => failed[i] += 1,
            }
        }
    }
    for ((uri, mut s), failed) in uris.iter().zip(samples).zip(failed) {
        s.sort_by(f64::total_cmp);
        println!(
            "ttfe url={uri} n={} p50_us={:.1} p99_us={:.1} failed={failed}",
            s.len(),
            percentile(&s, 0.50),
            percentile(&s, 0.99)
        );
    }
}

/// A small deterministic generator for shuffling the visiting order (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher–Yates.
    fn permute(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Holds `n` streams open at once: opens them (at most `--ramp` connects in flight), waits
/// until every one has its first event, samples the RSS of `--pid` (summed over a comma list,
/// for nginx's worker processes), then reads all to the end.
async fn streams(opts: &Opts) {
    let n: usize = opts.get("n", 10_000);
    let ramp: usize = opts.get("ramp", 256);
    let pids = parse_pids(&opts.get("pid", String::new()));
    let uri: Uri = opts.str("url").parse().expect("URL");
    let limit = Duration::from_secs(opts.get("timeout", 120));
    let started = Instant::now();
    let opened = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(ramp));
    // With --http2 N the streams share N HTTP/2 connections (so the proxy needs one file
    // descriptor per stream, for its upstream connection, instead of two).
    let h2_conns: usize = opts.get("http2", 0);
    let mut h2 = Vec::new();
    for _ in 0..h2_conns {
        h2.push(connect_h2(&uri).await.expect("HTTP/2 connect"));
    }
    let h2 = Arc::new(h2);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (uri, opened, completed, failed, gate, h2) = (
            uri.clone(),
            opened.clone(),
            completed.clone(),
            failed.clone(),
            gate.clone(),
            h2.clone(),
        );
        tasks.spawn(async move {
            let run = async {
                let permit = gate.acquire_owned().await.ok()?;
                let response = if h2.is_empty() {
                    let mut sender = connect(&uri).await.ok()?;
                    sender.send_request(h1_request(&uri)).await.ok()?
                } else {
                    let mut sender = h2[i % h2.len()].clone();
                    sender.ready().await.ok()?;
                    sender.send_request(request(&uri)).await.ok()?
                };
                if response.status() != StatusCode::OK {
                    return None;
                }
                let mut body = response.into_body();
                // The first frame proves the stream is open end to end.
                let first = body.frame().await?.ok()?;
                drop(permit);
                opened.fetch_add(1, Ordering::Relaxed);
                let mut seen = None;
                let done = read_stream(body, Instant::now(), &mut seen).await;
                drop(first);
                done
            };
            match tokio::time::timeout(limit, run).await {
                Ok(Some(())) => completed.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
    let mut peak_rss = 0;
    let mut all_open_at = None;
    let mut rss_all_open = 0;
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let rss: u64 = pids.iter().map(|&pid| rss_kb(pid)).sum();
                peak_rss = peak_rss.max(rss);
                if all_open_at.is_none() && opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= n {
                    all_open_at = Some(started.elapsed());
                    rss_all_open = rss;
                }
            }
        }
    }
    println!(
        "streams n={n} opened={} completed={} dropped={} all_open_s={:.1} rss_all_open_kb={} rss_peak_kb={} total_s={:.1}",
        opened.load(Ordering::Relaxed),
        completed.load(Ordering::Relaxed),
        n - completed.load(Ordering::Relaxed),
        all_open_at.map_or(f64::NAN, |d| d.as_secs_f64()),
        rss_all_open,
        peak_rss,
        started.elapsed().as_secs_f64()
    );
}

/// `1,2,3` → the process ids; anything unparsable is skipped.
fn parse_pids(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (ns) used so far by all threads of `pid`, from schedstat.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU per stream of the processes in `--pids`: `--streams` streams of `--url`, at most
/// `--concurrency` at once; prints the CPU time each process spent per stream.
async fn sse_cpu(opts: &Opts) {
    let uri: Uri = opts.str("url").parse().expect("URL");
    let total: usize = opts.get("streams", 400);
    let concurrency: usize = opts.get("concurrency", 50);
    let pids = parse_pids(&opts.str("pids"));
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (uri, next, ok) = (uri.clone(), next.clone(), ok.clone());
        tasks.spawn(async move {
            let Ok(mut sender) = connect(&uri).await else {
                return;
            };
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if started.elapsed() > Duration::from_secs(120) {
                    return;
                }
                let Ok(response) = sender.send_request(h1_request(&uri)).await else {
                    return;
                };
                // Only a 200 stream that ends in [DONE] counts (as in ttfe and streams).
                let status = response.status();
                let mut first = None;
                let done = read_stream(response.into_body(), Instant::now(), &mut first).await;
                if status == StatusCode::OK && done.is_some() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let done = ok.load(Ordering::Relaxed).max(1);
    let per_stream: Vec<String> = pids
        .iter()
        .zip(before)
        // A process that exited reads as 0: no underflow, and no figure worth reading.
        .map(|(&p, b)| {
            format!(
                "{:.1}",
                cpu_ns(p).saturating_sub(b) as f64 / done as f64 / 1e3
            )
        })
        .collect();
    println!(
        "sse-cpu streams_ok={} wall_s={:.2} cpu_us_per_stream={}",
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        per_stream.join(",")
    );
}

/// Start to ready: spawns `--bin` `--n` times with `--listen 127.0.0.1:0`, and times from
/// spawn until its `/healthz` answers (the address comes from its "ready: serving …" log line).
fn ready(opts: &Opts) {
    use std::io::{BufRead, BufReader, Read, Write};
    let bin = opts.str("bin");
    let n: usize = opts.get("n", 20);
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--upstream", "http://127.0.0.1:9/v1"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let mut addr = None;
        for line in BufReader::new(stderr).lines().take(50) {
            let Ok(line) = line else { break };
            // "envelope-proxy ready: serving http://IP:PORT; upstream …"
            const SERVING: &str = "serving http://";
            if let Some(at) = line.find(SERVING) {
                let rest = &line[at + SERVING.len()..];
                addr = rest.split([';', ',', '"', ' ']).next().map(str::to_string);
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            eprintln!("bench-tool: {bin} never logged its listen address");
            std::process::exit(1)
        };
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let elapsed = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 200"), "healthz: {answer}");
        samples.push(elapsed.as_secs_f64() * 1e3);
        let _ = child.kill();
        let _ = child.wait();
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "ready n={} p50_ms={:.2} max_ms={:.2}",
        samples.len(),
        percentile(&samples, 0.5),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}
