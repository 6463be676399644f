//! In-process mock upstream for envelope-proxy's tests.
//!
//! A real hyper 1 server (HTTP/1.1 and h2c prior knowledge, via `hyper_util`'s auto builder) that
//! serves the recorded bodies in `fixtures/` in either the `bare` (OpenAI) or the `envelope` dialect,
//! and whose behaviour is driven by `x-mock-*` request headers, so a test sets them on the request
//! it sends through the proxy:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-fixture: errors/nginx_502.html` | serve that file (path relative to `fixtures/`) |
//! | `x-mock-body: <literal>` | serve that literal string (as `application/json` unless overridden) |
//! | `x-mock-body-pct: <%-encoded>` | the same, percent-decoded first (`%0A`): for line breaks, any byte |
//! | `x-mock-status: 429` | response status (default 200, or 404 for unknown paths) |
//! | `x-mock-content-type: <ct>` | override the content type picked from the extension |
//! | `x-mock-header: Name: value` | add a response header (may repeat) |
//! | `x-mock-key: k` | count the request in `attempts("k")` |
//! | `x-mock-fail-first: N` | with `x-mock-key`: attempts 1..=N get the directives above, later ones the default success |
//! | `x-mock-behaviour: …` | delivery, see [`Behaviour`]; several may be given comma-separated or in repeated headers |
//!
//! Without directives: `POST …/chat/completions` → `<shape>/chat_completion.json`, or with
//! `"stream":true` → `<shape>/chat_completion_stream.sse` (bare + `stream_options.include_usage` →
//! `bare/chat_completion_stream_usage.sse`); `GET …/models` → `<shape>/models.json`;
//! `POST …/embeddings` → `<shape>/embeddings.json` (suffix match, so `/v1/…` and `/api/v1/…` both
//! work); anything else → 404 with `Invalid URL (METHOD /path)` in the shape's error format.
//! A broken directive (unknown fixture, bad status, unknown behaviour…) answers 500 with
//! `x-mock-error: 1` and a `mock-upstream: …` text body, so a typo fails loudly.
//! Fixtures are read from `$MOCK_FIXTURES_DIR`, else the main crate's `fixtures/`.
//!
//! Every behaviour is implemented inside hyper: the ones that must break the connection
//! (`no-response`, `reset-mid-body`, `truncate-content-length`) make the service or the response
//! body fail, which makes hyper drop the socket without writing anything more (HTTP/1.1), or reset the
//! stream (h2). Doing it in hyper keeps them working on a reused keep-alive connection.
//!
//! Control endpoints (not recorded, not counted): `GET /__mock/health`, `GET /__mock/attempts?key=K`,
//! `GET /__mock/requests`, `POST /__mock/release`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response body type of the mock.
pub type MockBody = BoxBody<Bytes, BoxError>;

/// How long a breaking behaviour waits after its last data frame before failing the body, so
/// that hyper has flushed that frame to the socket first.
const FLUSH_GRACE: Duration = Duration::from_millis(50);

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";
const HTML: &str = "text/html; charset=UTF-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The dialect the mock answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Plain OpenAI Chat Completions bodies and errors.
    Bare,
    /// `{"success":…,"code":…,"message":…,"data":…}` around the bare payload.
    Envelope,
}

impl Shape {
    /// `"bare"` or `"envelope"`, also the fixture sub-directory.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Bare => "bare",
            Shape::Envelope => "envelope",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bare" => Ok(Shape::Bare),
            "envelope" => Ok(Shape::Envelope),
            other => Err(format!(
                "unknown shape {other:?} (expected bare or envelope)"
            )),
        }
    }
}

/// One request as the mock received it (the body fully read).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query as received (origin form, also for h2).
    pub uri: Uri,
    /// HTTP/1.1, or HTTP/2 (h2c prior knowledge).
    pub version: Version,
    /// `:authority` over HTTP/2; `None` over HTTP/1.1 (origin form: see the `host` header).
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }
}

/// Shared state of one mock: what it received, and the knobs tests turn.
#[derive(Debug)]
pub struct MockState {
    shape: Shape,
    requests: Mutex<Vec<RecordedRequest>>,
    attempts: Mutex<HashMap<String, usize>>,
    release_epoch: AtomicU64,
    release_notify: Notify,
    client_gone: AtomicUsize,
    client_gone_notify: Notify,
    verbose: AtomicBool,
    shutdown: watch::Receiver<()>,
    connections: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock must not hide the recorded data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MockState {
    fn new(shape: Shape, shutdown: watch::Receiver<()>) -> Self {
        MockState {
            shape,
            requests: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            release_epoch: AtomicU64::new(0),
            release_notify: Notify::new(),
            client_gone: AtomicUsize::new(0),
            client_gone_notify: Notify::new(),
            verbose: AtomicBool::new(false),
            shutdown,
            connections: AtomicUsize::new(0),
        }
    }

    /// Every request received so far (control endpoints excluded), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.requests).last().cloned()
    }

    /// Number of requests that carried `x-mock-key: key`.
    pub fn attempts(&self, key: &str) -> usize {
        lock(&self.attempts).get(key).copied().unwrap_or(0)
    }

    /// Forget recorded requests and attempt counts.
    pub fn clear(&self) {
        lock(&self.requests).clear();
        lock(&self.attempts).clear();
    }

    /// Lets every `hold` response that arrived before this call send the rest of its body.
    /// (A hold that arrives after the call waits for the next `release()`.)
    pub fn release(&self) {
        self.release_epoch.fetch_add(1, Ordering::SeqCst);
        self.release_notify.notify_waiters();
    }

    /// True once a held, dripping, split or stalled response saw its body receiver dropped
    /// (the client went away mid-body); false if that did not happen within `timeout`.
    pub async fn wait_client_gone(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.client_gone_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.client_gone.load(Ordering::SeqCst) > 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Log one line per request to stderr.
    pub fn set_verbose(&self, on: bool) {
        self.verbose.store(on, Ordering::Relaxed);
    }

    /// `$MOCK_FIXTURES_DIR` if set, else the main crate's `fixtures/` (this crate is
    /// `tests/support/` inside it).
    pub fn fixtures_dir() -> PathBuf {
        match std::env::var_os("MOCK_FIXTURES_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .expect("tests/support/ lies two levels under the main crate")
                .join("fixtures"),
        }
    }

    fn mark_client_gone(&self) {
        self.client_gone.fetch_add(1, Ordering::SeqCst);
        self.client_gone_notify.notify_waiters();
    }

    async fn wait_released(&self, since: u64) {
        loop {
            let notified = self.release_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.release_epoch.load(Ordering::SeqCst) > since {
                return;
            }
            notified.await;
        }
    }

    async fn shutdown_signal(&self) {
        let mut rx = self.shutdown.clone();
        // Nothing is ever sent: this resolves when the MockUpstream (the sender) is dropped.
        while rx.changed().await.is_ok() {}
    }
}

/// A running mock. Dropping it stops accepting, closes its connections and ends held bodies.
#[derive(Debug)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    _shutdown: watch::Sender<()>,
}

impl MockUpstream {
    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.origin())
    }

    fn origin(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }
}

/// Starts a mock on `127.0.0.1:0`.
pub async fn start(shape: Shape) -> MockUpstream {
    start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), shape)
        .await
        .expect("mock upstream: bind 127.0.0.1:0")
}

/// Starts a mock on `addr` (port 0 allowed; the bound address is in `MockUpstream::addr`).
pub async fn start_on(addr: SocketAddr, shape: Shape) -> std::io::Result<MockUpstream> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let state = Arc::new(MockState::new(shape, shutdown_rx));
    tokio::spawn(accept_loop(listener, state.clone()));
    Ok(MockUpstream {
        addr,
        state,
        _shutdown: shutdown_tx,
    })
}

async fn accept_loop(listener: TcpListener, state: Arc<MockState>) {
    loop {
        tokio::select! {
            _ = state.shutdown_signal() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<MockState>) {
    let svc_state = state.clone();
    let service = service_fn(move |req| handle(svc_state.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Errors here are expected (no-response, reset-mid-body, clients hanging up).
        _ = conn => {}
        _ = state.shutdown_signal() => {}
    }
}

// ------------------------------------------------------------------------------------------------
// Behaviours

/// Delivery behaviours, from `x-mock-behaviour` (or `x-mock-behavior`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `echo`: 200 JSON description of the request as received.
    Echo,
    /// `split:<n>` or `split:<n>:<ms>`: body in n-byte frames (yielding, or sleeping ms, between frames).
    Split(usize, Duration),
    /// `drip:<ms>`: one SSE event per frame, `ms` apart.
    Drip(Duration),
    /// `hold`: first SSE event, then wait for `release()` (or the client leaving), then the rest.
    Hold,
    /// `reset-mid-body:<n>`: chunked, first n bytes, then the connection is dropped (no last chunk).
    ResetMidBody(usize),
    /// `truncate-content-length:<n>`: content-length of the full body, n bytes, then the connection is dropped.
    TruncateContentLength(usize),
    /// `stall-after-headers`: headers, then no body until the client goes away.
    StallAfterHeaders,
    /// `no-response`: read the request, close the connection without writing anything.
    NoResponse,
    /// `slow-headers:<ms>`: wait before sending the response headers (combinable with the others).
    SlowHeaders(Duration),
}

impl std::str::FromStr for Behaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s, None),
        };
        let num = |what: &str| -> Result<u64, String> {
            arg.ok_or_else(|| format!("behaviour {name} needs :<{what}>"))?
                .parse::<u64>()
                .map_err(|_| format!("behaviour {s:?}: <{what}> must be a non-negative integer"))
        };
        let ms = |what: &str| num(what).map(Duration::from_millis);
        let no_arg = |b: Behaviour| match arg {
            None => Ok(b),
            Some(_) => Err(format!("behaviour {name} takes no argument")),
        };
        match name.to_ascii_lowercase().as_str() {
            "echo" => no_arg(Behaviour::Echo),
            "split" => {
                let arg = arg.ok_or_else(|| "behaviour split needs :<n>".to_string())?;
                let (n, delay) = match arg.split_once(':') {
                    Some((n, d)) => (n.trim(), Some(d.trim())),
                    None => (arg, None),
                };
                let n: usize =
                    n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("behaviour {s:?}: <n> must be a positive integer")
                    })?;
                let delay = match delay {
                    None => Duration::ZERO,
                    Some(d) => Duration::from_millis(
                        d.parse()
                            .map_err(|_| format!("behaviour {s:?}: <ms> must be an integer"))?,
                    ),
                };
                Ok(Behaviour::Split(n, delay))
            }
            "drip" => Ok(Behaviour::Drip(ms("ms")?)),
            "hold" => no_arg(Behaviour::Hold),
            "reset-mid-body" => Ok(Behaviour::ResetMidBody(num("n")? as usize)),
            "truncate-content-length" => Ok(Behaviour::TruncateContentLength(num("n")? as usize)),
            "stall-after-headers" => no_arg(Behaviour::StallAfterHeaders),
            "no-response" => no_arg(Behaviour::NoResponse),
            "slow-headers" => Ok(Behaviour::SlowHeaders(ms("ms")?)),
            _ => Err(format!("unknown x-mock-behaviour {s:?}")),
        }
    }
}

fn parse_behaviours(headers: &HeaderMap) -> Result<Vec<Behaviour>, String> {
    let mut out = Vec::new();
    for name in ["x-mock-behaviour", "x-mock-behavior"] {
        for value in headers.get_all(name) {
            let value = value
                .to_str()
                .map_err(|_| format!("{name} is not valid ASCII"))?;
            for item in value.split(',').filter(|i| !i.trim().is_empty()) {
                out.push(item.parse()?);
            }
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct MockAbort(&'static str);

impl fmt::Display for MockAbort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mock-upstream: {}", self.0)
    }
}

impl std::error::Error for MockAbort {}

// ------------------------------------------------------------------------------------------------
// Request handling

async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    // Snapshot before anything else: a release() from now on lets this request's hold go.
    let release_since = state.release_epoch.load(Ordering::SeqCst);
    let (parts, incoming) = req.into_parts();
    // A broken request body closes the connection (the error goes back to hyper).
    let body = incoming.collect().await?.to_bytes();
    let uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => parts.uri.clone(),
    };

    if uri.path().starts_with("/__mock/") {
        return Ok(control(&state, &parts.method, &uri));
    }

    let recorded = RecordedRequest {
        method: parts.method.clone(),
        uri: uri.clone(),
        version: parts.version,
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    lock(&state.requests).push(recorded.clone());

    let key = header_str(&parts.headers, "x-mock-key").map(str::to_owned);
    let attempt = key.as_ref().map(|k| {
        let mut attempts = lock(&state.attempts);
        let n = attempts.entry(k.clone()).or_insert(0);
        *n += 1;
        *n
    });

    let plan = match build_plan(&state, &recorded, attempt) {
        Ok(plan) => plan,
        Err(msg) => {
            if state.verbose.load(Ordering::Relaxed) {
                eprintln!(
                    "mock-upstream: {} {} -> mock error: {msg}",
                    parts.method, uri
                );
            }
            return Ok(mock_error(&msg));
        }
    };
    if state.verbose.load(Ordering::Relaxed) {
        eprintln!(
            "mock-upstream: {} {} {:?} -> {} {:?}",
            parts.method, uri, parts.version, plan.status, plan.behaviours
        );
    }
    respond(state, plan, parts.version, release_since).await
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

struct Plan {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    behaviours: Vec<Behaviour>,
}

fn build_plan(
    state: &MockState,
    req: &RecordedRequest,
    attempt: Option<usize>,
) -> Result<Plan, String> {
    let h = &req.headers;
    // x-mock-fail-first: N → after N attempts for the key, ignore every directive.
    let directives = match header_str(h, "x-mock-fail-first") {
        None => true,
        Some(n) => {
            let n: usize = n
                .parse()
                .map_err(|_| format!("x-mock-fail-first: {n:?} is not a non-negative integer"))?;
            let attempt =
                attempt.ok_or_else(|| "x-mock-fail-first needs x-mock-key".to_string())?;
            attempt <= n
        }
    };
    if !directives {
        let (status, ct, body) = default_route(state.shape, req)?;
        return Ok(Plan {
            status,
            content_type: Some(HeaderValue::from_static(ct)),
            extra_headers: Vec::new(),
            body,
            behaviours: Vec::new(),
        });
    }

    let behaviours = parse_behaviours(h)?;
    let (mut status, ct, body): (StatusCode, HeaderValue, Bytes) =
        if behaviours.contains(&Behaviour::Echo) {
            (
                StatusCode::OK,
                HeaderValue::from_static(JSON),
                echo_body(req),
            )
        } else if let Some(literal) = h.get("x-mock-body") {
            // Labelled JSON like everything an OpenAI-compatible upstream sends (also when the
            // literal is broken JSON, which is the point of many tests); x-mock-content-type overrides.
            let body = Bytes::copy_from_slice(literal.as_bytes());
            (StatusCode::OK, HeaderValue::from_static(JSON), body)
        } else if let Some(encoded) = h.get("x-mock-body-pct") {
            let body = percent_decode_body(encoded.as_bytes())
                .ok_or_else(|| "x-mock-body-pct: bad %-escape".to_string())?;
            (StatusCode::OK, HeaderValue::from_static(JSON), body)
        } else if let Some(rel) = header_str(h, "x-mock-fixture") {
            let body = read_fixture(rel).map_err(|e| format!("fixture {rel:?}: {e}"))?;
            (
                StatusCode::OK,
                HeaderValue::from_static(content_type_for(rel)),
                body,
            )
        } else {
            let (status, ct, body) = default_route(state.shape, req)?;
            (status, HeaderValue::from_static(ct), body)
        };

    if let Some(s) = header_str(h, "x-mock-status") {
        status = s
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| format!("x-mock-status: {s:?} is not a valid status code"))?;
    }
    let content_type = match h.get("x-mock-content-type") {
        Some(v) => Some(v.clone()),
        None => Some(ct),
    };
    let mut extra_headers = Vec::new();
    for v in h.get_all("x-mock-header") {
        let v = v
            .to_str()
            .map_err(|_| "x-mock-header is not valid ASCII".to_string())?;
        let (name, value) = v
            .split_once(':')
            .ok_or_else(|| format!("x-mock-header: {v:?} is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("x-mock-header: bad header name in {v:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("x-mock-header: bad header value in {v:?}"))?;
        extra_headers.push((name, value));
    }
    Ok(Plan {
        status,
        content_type,
        extra_headers,
        body,
        behaviours,
    })
}

/// `%XX` escapes decoded; every other byte (`+` too) as it is.
fn percent_decode_body(encoded: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(Bytes::from(out))
}

/// The success (or 404) answer for a request without directives.
fn default_route(
    shape: Shape,
    req: &RecordedRequest,
) -> Result<(StatusCode, &'static str, Bytes), String> {
    let path = req.uri.path().trim_end_matches('/');
    let dir = shape.as_str();
    let rel = if req.method == Method::POST && path.ends_with("/chat/completions") {
        let json = req.json();
        let flag = |ptr: &str| {
            json.as_ref()
                .and_then(|j| j.pointer(ptr))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        if !flag("/stream") {
            format!("{dir}/chat_completion.json")
        } else if shape == Shape::Bare && flag("/stream_options/include_usage") {
            format!("{dir}/chat_completion_stream_usage.sse")
        } else {
            format!("{dir}/chat_completion_stream.sse")
        }
    } else if req.method == Method::GET && path.ends_with("/models") {
        format!("{dir}/models.json")
    } else if req.method == Method::POST && path.ends_with("/embeddings") {
        format!("{dir}/embeddings.json")
    } else {
        let message = format!("Invalid URL ({} {})", req.method, req.uri.path());
        return Ok((StatusCode::NOT_FOUND, JSON, not_found_body(shape, &message)));
    };
    let body = read_fixture(&rel).map_err(|e| format!("fixture {rel:?}: {e}"))?;
    Ok((StatusCode::OK, content_type_for(&rel), body))
}

fn not_found_body(shape: Shape, message: &str) -> Bytes {
    let msg = serde_json::Value::from(message).to_string();
    match shape {
        // OpenAI's own layout: 4-space pretty, trailing newline.
        Shape::Bare => format!(
            "{{\n    \"error\": {{\n        \"message\": {msg},\n        \"type\": \"invalid_request_error\",\n        \"param\": null,\n        \"code\": null\n    }}\n}}\n"
        )
        .into(),
        Shape::Envelope => {
            format!("{{\"success\":false,\"code\":\"404\",\"message\":{msg},\"data\":null}}").into()
        }
    }
}

fn content_type_for(rel: &str) -> &'static str {
    match Path::new(rel).extension().and_then(|e| e.to_str()) {
        Some("json") => JSON,
        Some("sse") => SSE,
        Some("html") | Some("htm") => HTML,
        Some("txt") => TEXT,
        _ => "application/octet-stream",
    }
}

fn read_fixture(rel: &str) -> std::io::Result<Bytes> {
    let rel_path = Path::new(rel);
    if !rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "fixture path must be relative to fixtures/ without `..`",
        ));
    }
    std::fs::read(MockState::fixtures_dir().join(rel_path)).map(Bytes::from)
}

fn echo_body(req: &RecordedRequest) -> Bytes {
    let mut headers = serde_json::Map::new();
    for name in req.headers.keys() {
        let values: Vec<serde_json::Value> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        let value = if values.len() == 1 {
            values.into_iter().next().unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Array(values)
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let echo = serde_json::json!({
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "query": req.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    });
    Bytes::from(echo.to_string())
}

fn mock_error(msg: &str) -> Response<MockBody> {
    let mut resp = Response::new(full(Bytes::from(format!("mock-upstream: {msg}\n"))));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    resp.headers_mut()
        .insert("x-mock-error", HeaderValue::from_static("1"));
    resp
}

fn json_response(status: StatusCode, body: String) -> Response<MockBody> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
}

fn control(state: &MockState, method: &Method, uri: &Uri) -> Response<MockBody> {
    match (method, uri.path()) {
        (&Method::GET, "/__mock/health") => json_response(
            StatusCode::OK,
            format!(
                "{{\"status\":\"ok\",\"shape\":\"{}\"}}",
                state.shape.as_str()
            ),
        ),
        (&Method::GET, "/__mock/attempts") => match query_param(uri.query().unwrap_or(""), "key") {
            Some(key) => {
                let n = state.attempts(&key);
                let key = serde_json::Value::from(key);
                json_response(
                    StatusCode::OK,
                    format!("{{\"key\":{key},\"attempts\":{n}}}"),
                )
            }
            None => json_response(
                StatusCode::BAD_REQUEST,
                r#"{"error":"missing ?key="}"#.to_string(),
            ),
        },
        (&Method::GET, "/__mock/requests") => {
            let list: Vec<serde_json::Value> = state
                .requests()
                .iter()
                .filter_map(|r| serde_json::from_slice(&echo_body(r)).ok())
                .collect();
            json_response(StatusCode::OK, serde_json::Value::Array(list).to_string())
        }
        (&Method::POST, "/__mock/release") => {
            state.release();
            json_response(StatusCode::OK, r#"{"released":true}"#.to_string())
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            r#"{"error":"unknown mock control endpoint"}"#.to_string(),
        ),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------------------------------
// Response delivery

fn full(body: Bytes) -> MockBody {
    Full::new(body)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body fed by a channel: every message is its own frame; an `Err` fails the body.
struct ChanBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|res| res.map(Frame::data)))
    }
}

/// The sending side, which notes in the state when the client went away.
struct BodyTx {
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    state: Arc<MockState>,
}

impl BodyTx {
    /// Sends one frame; false (and the client is noted gone) if the body was dropped.
    async fn send(&self, data: Bytes) -> bool {
        if data.is_empty() {
            return !self.gone_now();
        }
        if self.tx.send(Ok(data)).await.is_err() {
            self.state.mark_client_gone();
            return false;
        }
        true
    }

    fn gone_now(&self) -> bool {
        if self.tx.is_closed() {
            self.state.mark_client_gone();
            true
        } else {
            false
        }
    }

    /// Waits `d`; false (client noted gone) if the body was dropped meanwhile or on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.tx.closed() => { self.state.mark_client_gone(); false }
            _ = self.state.shutdown_signal() => { self.fail("shutting down").await; false }
        }
    }

    /// Fails the body (the client sees a broken body, never a clean end).
    async fn fail(&self, why: &'static str) {
        let _ = self.tx.send(Err(Box::new(MockAbort(why)))).await;
    }

    /// Lets hyper write out what was sent, then fails the body so the connection is torn down.
    async fn abort(self, why: &'static str) {
        if self.pause(FLUSH_GRACE).await {
            self.fail(why).await;
        }
    }
}

fn chan_body(state: &Arc<MockState>) -> (BodyTx, MockBody) {
    let (tx, rx) = mpsc::channel(1);
    (
        BodyTx {
            tx,
            state: state.clone(),
        },
        ChanBody { rx }.boxed(),
    )
}

/// Splits a body after each blank line (`\n\n` or `\r\n\r\n`), keeping the separators.
fn sse_events(body: &Bytes) -> Vec<Bytes> {
    let b = &body[..];
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let end = if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else {
            None
        };
        match end {
            Some(end) => {
                out.push(body.slice(start..end));
                start = end;
                i = end;
            }
            None => i += 1,
        }
    }
    if start < b.len() {
        out.push(body.slice(start..));
    }
    out
}

async fn respond(
    state: Arc<MockState>,
    plan: Plan,
    version: Version,
    release_since: u64,
) -> Result<Response<MockBody>, BoxError> {
    for b in &plan.behaviours {
        if let Behaviour::SlowHeaders(d) = b {
            tokio::select! {
                _ = tokio::time::sleep(*d) => {}
                _ = state.shutdown_signal() => return Err(Box::new(MockAbort("shutting down"))),
            }
        }
    }
    if plan.behaviours.contains(&Behaviour::NoResponse) {
        // hyper drops the connection without writing a byte (h2: resets the stream).
        return Err(Box::new(MockAbort("no-response")));
    }

    let mut headers = HeaderMap::new();
    if let Some(ct) = plan.content_type {
        headers.insert(CONTENT_TYPE, ct);
    }
    let mut seen: Vec<HeaderName> = Vec::new();
    for (name, value) in plan.extra_headers {
        // The first x-mock-header of a name replaces the mock's own value; later ones add.
        if seen.contains(&name) {
            headers.append(name, value);
        } else {
            headers.insert(name.clone(), value);
            seen.push(name);
        }
    }

    // The last delivery behaviour given wins.
    let delivery = plan
        .behaviours
        .iter()
        .rev()
        .find(|b| !matches!(b, Behaviour::Echo | Behaviour::SlowHeaders(_)))
        .cloned();
    let body = plan.body;
    let response_body = match delivery {
        None => full(body),
        Some(Behaviour::Split(n, delay)) => {
            let (tx, rb) = chan_body(&state);
            tokio::spawn(async move {
                let mut first = true;
                for chunk in body.chunks(n) {
                    if !first {
                        let still_there = if delay.is_zero() {
                            tokio::task::yield_now().await;
                            true
                        } else {
                            tx.pause(delay).await
                        };
                        if !still_there {
                            return;
                        }
                    }
                    first = false;
                    if !tx.send(body.slice_ref(chunk)).await {
                        return;
                    }
                }
            });
            rb
        }
        Some(Behaviour::Drip(delay)) => {
            let (tx, rb) = chan_body(&state);
            tokio::spawn(async move {
                for (i, event) in sse_events(&body).into_iter().enumerate() {
                    if i > 0 && !tx.pause(delay).await {
                        return;
                    }
                    if !tx.send(event).await {
                        return;
                    }
                }
            });
            rb
        }
        Some(Behaviour::Hold) => {
            let (tx, rb) = chan_body(&state);
            let st = state.clone();
            tokio::spawn(async move {
                let mut events = sse_events(&body).into_iter();
                if let Some(first) = events.next() {
                    if !tx.send(first).await {
                        return;
                    }
                }
                tokio::select! {
                    _ = st.wait_released(release_since) => {}
                    _ = tx.tx.closed() => { st.mark_client_gone(); return; }
                    _ = st.shutdown_signal() => { tx.fail("shutting down").await; return; }
                }
                for event in events {
                    if !tx.send(event).await {
                        return;
                    }
                }
            });
            rb
        }
        Some(Behaviour::ResetMidBody(n)) => {
            headers.remove(CONTENT_LENGTH);
            if version == Version::HTTP_11 {
                headers.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let (tx, rb) = chan_body(&state);
            tokio::spawn(async move {
                let n = n.min(body.len());
                if tx.send(body.slice(..n)).await {
                    tx.abort("reset-mid-body").await;
                }
            });
            rb
        }
        Some(Behaviour::TruncateContentLength(n)) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            let (tx, rb) = chan_body(&state);
            tokio::spawn(async move {
                let n = n.min(body.len());
                if tx.send(body.slice(..n)).await {
                    tx.abort("truncate-content-length").await;
                }
            });
            rb
        }
        Some(Behaviour::StallAfterHeaders) => {
            headers.remove(CONTENT_LENGTH);
            let (tx, rb) = chan_body(&state);
            let st = state.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tx.tx.closed() => st.mark_client_gone(),
                    _ = st.shutdown_signal() => tx.fail("shutting down").await,
                }
            });
            rb
        }
        Some(Behaviour::Echo | Behaviour::SlowHeaders(_) | Behaviour::NoResponse) => full(body),
    };

    let mut resp = Response::new(response_body);
    *resp.status_mut() = plan.status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
