//! Upstream responses are never trusted blindly (issue 13, points 3, 4, 8, 11 and the OS
//! details of point 12): a raw-socket upstream sends what no HTTP library would — both
//! `Transfer-Encoding` and `Content-Length`, bodies shorter than their length, gzip whatever
//! was asked for, redirects and `101`s, silence after the TCP handshake — and every client
//! gets an exact, honest answer, with an access-log outcome that says what happened.

use test_support::{harness, pki, process, raw_upstream};

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envelope_proxy::RunningServer;
use harness::{start_proxy, wrapped, WAIT};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use raw_upstream::{chunk, gunzip, gzip, head, response, RawUpstream, Step, LAST_CHUNK};
use serde_json::{json, Value};
use tokio::sync::Notify;

const COMPLETION: &[u8] =
    br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help?"},"finish_reason":"stop"}]}"#;
const RATE_LIMITED: &[u8] =
    br#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

// === The access log, captured in process ===

/// Every access-log line of this test binary, as JSON lines. Call it before sending a request
/// whose line a test reads: lines written before the first call are not captured.
fn log_sink() -> &'static Arc<Mutex<Vec<u8>>> {
    static SINK: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&sink);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || SinkWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        sink
    })
}

struct SinkWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log sink").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access-log line of the request with `request_id` (waits for it, bounded).
async fn access_line(request_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&log_sink().lock().expect("log sink")).into_owned();
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["target"] == "access" && line["request_id"] == request_id);
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn outcome(request_id: &str) -> String {
    let line = access_line(request_id).await;
    line["outcome"].as_str().expect("outcome").to_owned()
}

// === Requests through the proxy ===

/// A response whose body may have broken.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Got {
    fn body(&self) -> &Bytes {
        self.body
            .as_ref()
            .unwrap_or_else(|e| panic!("the body broke: {e}"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(self.body()).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(self.body()))
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII"))
    }
}

/// Sends `method path` to `proxy` with `x-request-id: id` and `headers`; reads the body.
async fn call(
    proxy: &RunningServer,
    method: Method,
    path: &str,
    id: &str,
    headers: &[(&str, &str)],
) -> Got {
    log_sink();
    let mut request = Request::builder()
        .method(method.clone())
        .uri(format!("http://{}{path}", proxy.addr))
        .header("x-request-id", id);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if method == Method::POST {
        request = request.header("content-type", "application/json");
        Bytes::from_static(br#"{"model":"gpt-4o-mini","messages":[]}"#)
    } else {
        Bytes::new()
    };
    let request = request.body(Full::new(body)).expect("request");
    // A fresh client per call: every case gets its own connection to the proxy.
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response headers within the wait bound")
        .expect("the proxy answers");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body ends within the wait bound")
        .map(|collected| collected.to_bytes())
        .map_err(|e| e.to_string());
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn post(proxy: &RunningServer, path: &str, id: &str) -> Got {
    call(proxy, Method::POST, path, id, &[]).await
}

/// An upstream that answers every connection's first request with `bytes`, then closes.
async fn answering(bytes: Vec<u8>) -> RawUpstream {
    RawUpstream::start(vec![Step::ReadRequest, Step::send(bytes), Step::Close]).await
}

/// An upstream answering once with `plain` gzip-coded (with its exact length), though it was
/// asked for `identity`; also returns the coded bytes it sends.
async fn answering_gzip(status: &str, content_type: &str, plain: &[u8]) -> (RawUpstream, Vec<u8>) {
    let body = gzip(plain);
    let length = body.len().to_string();
    let bytes = response(
        status,
        &[
            ("content-type", content_type),
            ("content-encoding", "gzip"),
            ("content-length", &length),
            ("connection", "close"),
        ],
        &body,
    );
    (answering(bytes).await, body)
}

/// A proxy in front of `upstream`, which speaks `shape`.
async fn proxy_for(upstream: &RawUpstream, shape: &str) -> RunningServer {
    start_proxy(&upstream.url(), shape, &[]).await
}

fn bare_error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn envelope_error(status: u16, message: &str, kind: &str, code: Value) -> Value {
    json!({"success": false, "code": status.to_string(), "message": message, "data": null,
           "error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Both `Transfer-Encoding: chunked` and a stale `Content-Length: 10` (RFC 9112 §6.3: the
/// chunked framing wins), with the whole body in chunks.
fn te_and_cl(status: &str, body: &[u8], extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("transfer-encoding", "chunked"),
        ("content-length", "10"),
        ("connection", "close"),
    ];
    headers.extend_from_slice(extra);
    let mut out = head(status, &headers);
    let (first, rest) = body.split_at(body.len() / 2);
    out.extend(chunk(first));
    out.extend(chunk(rest));
    out.extend_from_slice(LAST_CHUNK);
    out
}

/// `Content-Length: 400` and only the first 40 bytes of `body`, then a clean close.
fn short_body(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    response(
        status,
        &[("content-type", content_type), ("content-length", "400")],
        &body[..40],
    )
}

// === Point 3: framing ===

#[tokio::test]
async fn te_and_cl_together_lose_the_stale_length_on_the_pass_through_route() {
    let up = answering(te_and_cl("200 OK", COMPLETION, &[])).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "te-cl-pass").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body(), COMPLETION);
    // The length is unknown until the last chunk: the client gets chunked framing.
    assert_eq!(got.header("content-length"), None);
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert_eq!(outcome("te-cl-pass").await, "ok");
}

#[tokio::test]
async fn te_and_cl_together_lose_the_stale_length_on_the_translated_route() {
    let up = answering(te_and_cl("200 OK", COMPLETION, &[])).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "te-cl-translated").await;
    assert_eq!(got.status, StatusCode::OK);
    let expected = wrapped(COMPLETION);
    assert_eq!(got.body(), &expected[..]);
    assert_eq!(
        got.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(outcome("te-cl-translated").await, "ok");
}

#[tokio::test]
async fn te_and_cl_together_lose_the_stale_length_on_a_429_error_body() {
    let bytes = te_and_cl(
        "429 Too Many Requests",
        RATE_LIMITED,
        &[("retry-after", "2")],
    );
    let up = answering(bytes).await;
    let proxy = proxy_for(&up, "bare").await;

    // Same dialect: the upstream's JSON error, whole, with its exact length.
    let got = post(&proxy, "/v1/chat/completions", "te-cl-429-bare").await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.body(), RATE_LIMITED);
    assert_eq!(
        got.header("content-length"),
        Some(RATE_LIMITED.len().to_string().as_str())
    );
    assert_eq!(got.header("retry-after"), Some("2"));
    assert_eq!(outcome("te-cl-429-bare").await, "ok");

    // Translated: the whole error, normalised.
    let got = post(&proxy, "/api/v1/chat/completions", "te-cl-429-envelope").await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        got.json(),
        envelope_error(
            429,
            "Rate limit reached for requests",
            "requests",
            json!("rate_limit_exceeded")
        )
    );
    assert_eq!(outcome("te-cl-429-envelope").await, "ok");
}

#[tokio::test]
async fn a_pass_through_body_shorter_than_its_length_breaks_the_clients_response() {
    let up = answering(short_body("200 OK", "application/json", COMPLETION)).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "short-pass").await;
    assert_eq!(got.status, StatusCode::OK);
    // The client was promised 400 bytes and sees its response break, not end.
    assert_eq!(got.header("content-length"), Some("400"));
    assert!(
        got.body.is_err(),
        "a short body ended cleanly: {:?}",
        got.body
    );
    let line = access_line("short-pass").await;
    assert_eq!(line["outcome"], "upstream_broken", "{line}");
    assert_eq!(line["level"], "WARN", "{line}");

    // Over HTTP/2 the stream is reset: the client sees an error, never a clean end.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("x-request-id", "short-pass-h2")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = tokio::time::timeout(WAIT, h2.request(request))
        .await
        .expect("headers within the wait bound")
        .expect("response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the body ends within the wait bound");
    assert!(body.is_err(), "a short body ended cleanly over h2");
    assert_eq!(outcome("short-pass-h2").await, "upstream_broken");
}

#[tokio::test]
async fn a_short_body_that_must_be_read_is_a_502_logged_as_upstream_broken() {
    let message = "upstream response was cut short: the upstream connection ended before the body was complete";

    let up = answering(short_body("200 OK", "application/json", COMPLETION)).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "short-translated").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        envelope_error(502, message, "upstream_error", json!("upstream_truncated"))
    );
    assert_eq!(outcome("short-translated").await, "upstream_broken");

    // A 429 cut short is no rate limit the client can act on: the upstream broke.
    let up = answering(short_body(
        "429 Too Many Requests",
        "application/json",
        RATE_LIMITED,
    ))
    .await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "short-429").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        bare_error(message, "upstream_error", json!("upstream_truncated"))
    );
    assert_eq!(outcome("short-429").await, "upstream_broken");
}

/// A chunked body whose framing breaks after `body`: a bad chunk size, or a trailer line ended
/// by a bare LF followed by a second response (read leniently, that response would be left on
/// the connection for the next request).
fn broken_chunks(body: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut out = head(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
    );
    out.extend(chunk(body));
    out.extend_from_slice(tail);
    out
}

const BARE_LF_TRAILER: &[u8] =
    b"0\r\nx-checksum: 1\n\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

#[tokio::test]
async fn broken_chunked_framing_is_a_502_that_says_so() {
    let message = "upstream response was cut short: the upstream sent invalid framing";
    for (tail, id) in [
        (&b"zz\r\n{}\r\n0\r\n\r\n"[..], "bad-chunk-size"),
        (BARE_LF_TRAILER, "bare-lf-trailer"),
    ] {
        let up = RawUpstream::start(vec![
            Step::ReadRequest,
            Step::send(broken_chunks(COMPLETION, tail)),
            Step::ReadRequest,
            Step::Close,
        ])
        .await;
        let proxy = proxy_for(&up, "bare").await;
        let got = post(&proxy, "/api/v1/chat/completions", id).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{id}");
        assert_eq!(
            got.json(),
            envelope_error(502, message, "upstream_error", json!("upstream_truncated")),
            "{id}"
        );
        assert_eq!(outcome(id).await, "upstream_broken", "{id}");
    }
}

// === Point 4: Content-Encoding ===

const EVENTS: &[&[u8]] = &[
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    b"data: [DONE]\n\n",
];

fn sse_head() -> Vec<u8> {
    head(
        "200 OK",
        &[
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
        ],
    )
}

#[tokio::test]
async fn a_gzip_event_stream_on_a_same_dialect_route_passes_untouched() {
    let stream = EVENTS.concat();
    let whole = gzip(&stream);
    // The first event alone, sync-flushed: a gzip prefix a decoder can already read.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(EVENTS[0]).unwrap();
    encoder.flush().unwrap();
    let first_part = encoder.get_ref().clone();

    let (complete, partial) = (whole.clone(), first_part.clone());
    let up = RawUpstream::start_with(move |n| {
        let mut bytes = sse_head();
        if n == 0 {
            bytes.extend(chunk(&complete));
            bytes.extend_from_slice(LAST_CHUNK);
            vec![Step::ReadRequest, Step::send(bytes), Step::Close]
        } else {
            bytes.extend(chunk(&partial));
            vec![Step::ReadRequest, Step::send(bytes), Step::Hold]
        }
    })
    .await;
    let proxy = proxy_for(&up, "bare").await;

    let got = call(
        &proxy,
        Method::POST,
        "/v1/chat/completions",
        "gzip-sse",
        &[("accept-encoding", "gzip")],
    )
    .await;
    // The upstream was asked for plain bytes, whatever the client accepts.
    assert_eq!(up.requests()[0].header("accept-encoding"), Some("identity"));
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    // Untouched: the upstream's gzip bytes exactly, nothing appended, and they decode whole.
    assert_eq!(got.body(), &whole[..]);
    assert_eq!(gunzip(got.body()), stream);
    assert_eq!(outcome("gzip-sse").await, "ok");

    // Not buffered either: what the upstream has sent reaches the client while it waits.
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("headers within the wait bound")
        .expect("response");
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < first_part.len() {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the first bytes arrive while the upstream holds the stream open")
            .expect("a frame")
            .expect("no error");
        received.extend_from_slice(&frame.into_data().expect("data"));
    }
    assert_eq!(received, first_part);
}

/// `{"data":` nested 200,000 deep (1.8 MB, under the default event limit of 4 MiB) around a
/// chunk with content: the event the proxy looks into for the first token. It overflowed a
/// worker's stack and aborted the proxy (the look went one level deeper per `data`).
fn deeply_nested_event() -> Vec<u8> {
    let depth = 200_000;
    let mut event = b"data: ".to_vec();
    event.extend(b"{\"data\":".repeat(depth));
    event.extend(br#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
    event.extend(b"}".repeat(depth));
    event.extend(b"\n\n");
    event
}

#[tokio::test]
async fn a_deeply_nested_event_passes_whole_and_the_proxy_keeps_serving() {
    let deep = deeply_nested_event();
    let token = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n".to_vec();
    let done = b"data: [DONE]\n\n".to_vec();
    // The first stream has a chunk with content after the nested event; the second does not.
    let streams = [
        [deep.clone(), token, done.clone()].concat(),
        [deep, done].concat(),
    ];
    let scripted = streams.clone();
    let up = RawUpstream::start_with(move |n| {
        let mut bytes = head(
            "200 OK",
            &[
                ("content-type", "text/event-stream"),
                ("transfer-encoding", "chunked"),
                ("connection", "close"),
            ],
        );
        bytes.extend(chunk(&scripted[n.min(1)]));
        bytes.extend_from_slice(LAST_CHUNK);
        vec![Step::ReadRequest, Step::send(bytes), Step::Close]
    })
    .await;
    let proxy = proxy_for(&up, "bare").await;

    for (id, stream) in ["deep-then-token", "deep-only"].into_iter().zip(&streams) {
        let got = post(&proxy, "/v1/chat/completions", id).await;
        assert_eq!(got.status, StatusCode::OK, "{id}");
        assert_eq!(
            got.body(),
            &stream[..],
            "{id}: passed through byte for byte"
        );
        let line = access_line(id).await;
        assert_eq!(line["outcome"], "ok", "{id}");
        // The nested chunk's content is no first token; the later chunk's is.
        assert_eq!(
            line["ttft_ms"].is_number(),
            id == "deep-then-token",
            "{id}: {line}"
        );
    }
}

#[tokio::test]
async fn a_gzip_html_502_never_reaches_a_bare_client() {
    let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    let (up, _) = answering_gzip("502 Bad Gateway", "text/html", html).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = call(
        &proxy,
        Method::POST,
        "/v1/chat/completions",
        "gzip-502",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(up.requests()[0].header("accept-encoding"), Some("identity"));
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(
        got.json(),
        bare_error(
            "upstream returned HTTP 502 with a gzip-encoded body",
            "server_error",
            Value::Null
        )
    );
    assert_eq!(outcome("gzip-502").await, "ok");
}

#[tokio::test]
async fn coded_bodies_are_passed_untouched_or_refused_never_read() {
    // A gzip JSON error between equal dialects: untouched, its own length.
    let (up, body) =
        answering_gzip("429 Too Many Requests", "application/json", RATE_LIMITED).await;
    let length = body.len().to_string();
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "gzip-429").await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(got.header("content-length"), Some(length.as_str()));
    assert_eq!(got.body(), &body[..]);

    // A gzip success that must be translated cannot be: a 502, never the coded bytes.
    let (up, _) = answering_gzip("200 OK", "application/json", COMPLETION).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "gzip-translated").await;
    assert_eq!(up.requests()[0].header("accept-encoding"), Some("identity"));
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        envelope_error(
            502,
            "upstream sent a gzip-encoded body under HTTP 200 although it was asked for identity; it cannot be translated",
            "upstream_error",
            json!("upstream_invalid_body")
        )
    );
    assert_eq!(outcome("gzip-translated").await, "upstream_error");

    // A gzip event stream whose events must be rewritten (wrapped) cannot be either.
    let mut bytes = sse_head();
    bytes.extend(chunk(&gzip(&EVENTS.concat())));
    bytes.extend_from_slice(LAST_CHUNK);
    let up = answering(bytes).await;
    let proxy = start_proxy(&up.url(), "bare", &["--stream-envelope", "wrap"]).await;
    let got = post(&proxy, "/api/v1/chat/completions", "gzip-sse-wrap").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(
        got.json(),
        envelope_error(
            502,
            "upstream sent a gzip-encoded body under HTTP 200 although it was asked for identity; it cannot be translated",
            "upstream_error",
            json!("upstream_invalid_body")
        )
    );
}

// === Point 8: status fidelity ===

#[tokio::test]
async fn a_201_from_a_bare_upstream_stays_201_for_envelope_clients() {
    let up = answering(response(
        "201 Created",
        &[
            ("content-type", "application/json"),
            ("content-length", &COMPLETION.len().to_string()),
        ],
        COMPLETION,
    ))
    .await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "status-201").await;
    assert_eq!(got.status, StatusCode::CREATED);
    let mut expected = br#"{"success":true,"code":"201","message":"successful","data":"#.to_vec();
    expected.extend_from_slice(COMPLETION);
    expected.push(b'}');
    assert_eq!(got.body(), &expected[..]);
}

#[tokio::test]
async fn a_201_envelope_with_code_201_is_a_success_for_bare_clients() {
    // What envelope-proxy itself writes for a bare 201: a chain of two proxies keeps the 201.
    let mut envelope = br#"{"success":true,"code":"201","message":"successful","data":"#.to_vec();
    envelope.extend_from_slice(COMPLETION);
    envelope.push(b'}');
    let up = answering(response(
        "201 Created",
        &[
            ("content-type", "application/json"),
            ("content-length", &envelope.len().to_string()),
        ],
        &envelope,
    ))
    .await;
    let proxy = proxy_for(&up, "envelope").await;
    let got = post(&proxy, "/v1/chat/completions", "status-201-envelope").await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert_eq!(got.body(), COMPLETION);
}

#[tokio::test]
async fn redirects_are_relayed_as_they_are_never_as_a_success() {
    let body = br#"{"moved":"https://elsewhere.example/v1/chat/completions"}"#;
    let up = answering(response(
        "302 Found",
        &[
            ("content-type", "application/json"),
            ("location", "https://elsewhere.example/v1/chat/completions"),
            ("content-length", &body.len().to_string()),
        ],
        body,
    ))
    .await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "status-302").await;
    assert_eq!(got.status, StatusCode::FOUND);
    assert_eq!(
        got.header("location"),
        Some("https://elsewhere.example/v1/chat/completions")
    );
    assert_eq!(got.body(), &body[..]);

    let up = answering(response(
        "307 Temporary Redirect",
        &[("location", "/v1/other"), ("content-length", "0")],
        b"",
    ))
    .await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "status-307").await;
    assert_eq!(got.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(got.header("location"), Some("/v1/other"));
    assert_eq!(got.body(), &b""[..]);

    // From an envelope upstream to a bare client: not unwrapped either.
    let body = br#"{"success":true,"code":"302","message":"moved","data":null}"#;
    let up = answering(response(
        "302 Found",
        &[
            ("content-type", "application/json"),
            ("location", "/v1/moved"),
            ("content-length", &body.len().to_string()),
        ],
        body,
    ))
    .await;
    let proxy = proxy_for(&up, "envelope").await;
    let got = post(&proxy, "/v1/chat/completions", "status-302-envelope").await;
    assert_eq!(got.status, StatusCode::FOUND);
    assert_eq!(got.header("location"), Some("/v1/moved"));
    assert_eq!(got.body(), &body[..]);
}

#[tokio::test]
async fn an_empty_success_is_data_null_for_envelope_clients_and_empty_for_bare_ones() {
    let empty = response(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("content-length", "0"),
        ],
        b"",
    );
    let up = answering(empty.clone()).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "empty-200").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body(),
        &br#"{"success":true,"code":"200","message":"successful","data":null}"#[..]
    );

    let up = answering(empty).await;
    let proxy = proxy_for(&up, "envelope").await;
    let got = post(&proxy, "/v1/chat/completions", "empty-200-bare").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-length"), Some("0"));
    assert_eq!(got.body(), &b""[..]);
}

#[tokio::test]
async fn an_upstream_101_is_a_502() {
    let up = RawUpstream::start(vec![
        Step::ReadRequest,
        Step::send(head(
            "101 Switching Protocols",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )),
        Step::Hold,
    ])
    .await;
    let proxy = proxy_for(&up, "bare").await;
    let message =
        "upstream answered HTTP 101 Switching Protocols to a request that asked for no upgrade";
    assert_invalid_response(&proxy, message, "status-101").await;
}

/// `proxy` answers both routes with a 502 `upstream_invalid_response` saying `message`, in
/// each client's dialect (request ids `id` and `id-bare`), logged as `upstream_error`.
async fn assert_invalid_response(proxy: &RunningServer, message: &str, id: &str) {
    let got = post(proxy, "/api/v1/chat/completions", id).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        envelope_error(
            502,
            message,
            "upstream_error",
            json!("upstream_invalid_response")
        )
    );
    assert_eq!(outcome(id).await, "upstream_error");
    let bare_id = format!("{id}-bare");
    let got = post(proxy, "/v1/chat/completions", &bare_id).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        bare_error(
            message,
            "upstream_error",
            json!("upstream_invalid_response")
        )
    );
    assert_eq!(outcome(&bare_id).await, "upstream_error");
}

// === Point 11: --connect-timeout covers TLS ===

#[tokio::test]
async fn a_tls_upstream_that_stays_silent_is_a_connect_timeout() {
    let dir = process::TempDir::new("silent-tls");
    let ca = pki::TestCa::new("silent upstream CA");
    let ca_file = ca.write(&dir.0, "ca.pem");
    // Accepts TCP, reads nothing, says nothing: the TLS handshake never finishes.
    let up = RawUpstream::start(vec![Step::Hold]).await;
    let proxy = start_proxy(
        &format!("https://localhost:{}/v1", up.addr.port()),
        "bare",
        &[
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--connect-timeout",
            "0.3",
            // Far beyond the connect timeout, and within the test's wait bound.
            "--response-timeout",
            "5",
        ],
    )
    .await;
    let got = post(&proxy, "/v1/chat/completions", "silent-tls").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        got.json(),
        bare_error(
            "upstream connect timed out: no connection within 0.3s (--connect-timeout)",
            "upstream_error",
            json!("upstream_connect_timeout")
        )
    );
    assert_eq!(up.connections(), 1);
    assert_eq!(outcome("silent-tls").await, "upstream_error");
}

// === Point 12 (part): no OS details for clients ===

/// Streams from `up`'s stream to the end: the first event, then `go`, then the rest.
async fn broken_stream(up_script: Vec<Step>, go: Arc<Notify>, id: &str) -> (Vec<u8>, Value) {
    log_sink();
    let up = RawUpstream::start(up_script).await;
    let proxy = proxy_for(&up, "bare").await;
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("x-request-id", id)
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("headers within the wait bound")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < EVENTS[0].len() {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the first event within the wait bound")
            .expect("a frame")
            .expect("no error");
        received.extend_from_slice(&frame.into_data().expect("data"));
    }
    assert_eq!(received, EVENTS[0]);
    go.notify_one();
    (received, harness::last_error_event(body).await)
}

#[tokio::test]
async fn a_broken_event_stream_says_what_broke_without_os_details() {
    let sse = |length: Option<&str>| {
        let mut headers = vec![("content-type", "text/event-stream")];
        match length {
            Some(length) => headers.push(("content-length", length)),
            None => headers.push(("transfer-encoding", "chunked")),
        }
        head("200 OK", &headers)
    };
    let broke = |failure: &str| {
        bare_error(
            &format!("the upstream stream broke before it finished ({failure}); the answer is incomplete"),
            "upstream_error",
            json!("upstream_broken"),
        )
    };

    // A chunked stream's head and first event, then, once the client has that event, `rest`.
    let chunked_then = |go: &Arc<Notify>, rest: &[Step]| {
        let mut bytes = sse(None);
        bytes.extend(chunk(EVENTS[0]));
        let mut script = vec![
            Step::ReadRequest,
            Step::send(bytes),
            Step::Wait(Arc::clone(go)),
        ];
        script.extend_from_slice(rest);
        script
    };

    // Reset after the first event (reported today as "Connection reset by peer (os error 104)").
    let go = Arc::new(Notify::new());
    let script = chunked_then(&go, &[Step::Reset]);
    let (_, event) = broken_stream(script, go, "sse-reset").await;
    assert_eq!(event, broke("the upstream reset the connection"));
    assert_eq!(outcome("sse-reset").await, "upstream_broken");

    // A body shorter than its Content-Length, closed cleanly.
    let go = Arc::new(Notify::new());
    let mut bytes = sse(Some("4000"));
    bytes.extend_from_slice(EVENTS[0]);
    let script = vec![
        Step::ReadRequest,
        Step::send(bytes),
        Step::Wait(Arc::clone(&go)),
        Step::Close,
    ];
    let (_, event) = broken_stream(script, go, "sse-short").await;
    assert_eq!(event, broke("the upstream connection ended early"));
    assert_eq!(outcome("sse-short").await, "upstream_broken");

    // Chunked framing that breaks: a bad chunk size, then a trailer ended by a bare LF.
    for (tail, id) in [
        (&b"zz\r\n"[..], "sse-bad-chunk-size"),
        (BARE_LF_TRAILER, "sse-bare-lf-trailer"),
    ] {
        let go = Arc::new(Notify::new());
        let script = chunked_then(&go, &[Step::send(tail.to_vec()), Step::ReadRequest]);
        let (_, event) = broken_stream(script, go, id).await;
        assert_eq!(event, broke("the upstream sent invalid framing"), "{id}");
        assert_eq!(outcome(id).await, "upstream_broken", "{id}");
    }
}

#[tokio::test]
async fn connect_errors_reach_clients_without_os_details() {
    let port = process::free_port();
    let proxy = start_proxy(&format!("http://127.0.0.1:{port}/v1"), "bare", &[]).await;
    let got = post(&proxy, "/api/v1/chat/completions", "refused").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        envelope_error(
            502,
            "upstream unreachable: the connection was refused",
            "upstream_error",
            json!("upstream_unreachable")
        )
    );
    assert_eq!(outcome("refused").await, "upstream_error");

    // An upstream that resets the connection instead of answering.
    let up = RawUpstream::start(vec![Step::ReadRequest, Step::Reset]).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "reset").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        bare_error(
            "upstream connection failed: the upstream closed or reset the connection before answering",
            "upstream_error",
            json!("upstream_error")
        )
    );
}

// === Bounded buffers ===

/// A response head of about `size` bytes: `COMPLETION` with one header that long.
fn head_of(size: usize) -> Vec<u8> {
    let filler = "a".repeat(size);
    response(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("x-filler", &filler),
            ("connection", "close"),
        ],
        COMPLETION,
    )
}

/// An upstream connection's read buffer is capped at 64 KiB (as nginx's and haproxy's
/// buffers are), and so is the response head it takes: one that fits passes whole, a larger
/// one is a 502 in the client's dialect that says so. (A head a little over 64 KiB may still
/// get through when it arrives in one read; one over twice that never does.)
#[tokio::test]
async fn a_response_head_larger_than_the_read_buffer_is_a_502() {
    let up = answering(head_of(60 * 1024)).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/v1/chat/completions", "head-fits").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-filler").map(str::len), Some(60 * 1024));
    assert_eq!(got.body(), COMPLETION);

    let message = "upstream response head is larger than 64 KiB, the most the proxy reads";
    let up = answering(head_of(200 * 1024)).await;
    let proxy = proxy_for(&up, "bare").await;
    assert_invalid_response(&proxy, message, "head-too-large").await;
}

// === A body sent in 1-byte chunks ===

/// A completion of about 200 KB whose text has escapes, as a chunked body of 1-byte chunks
/// (six bytes each on the wire).
fn in_one_byte_chunks(body: &[u8]) -> Vec<u8> {
    let mut out = head(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
        ],
    );
    for byte in body {
        out.extend(chunk(&[*byte]));
    }
    out.extend_from_slice(LAST_CHUNK);
    out
}

/// A body the proxy reads to translate, sent in 200,000 1-byte chunks, is gathered into few
/// pieces as it is read (each piece kept its whole read buffer alive: ~70 times the body's
/// size) and comes out exact both ways: wrapped for envelope clients, with its usage read
/// across the gathered pieces, and unwrapped for bare ones.
#[tokio::test]
async fn a_body_in_one_byte_chunks_is_translated_exactly_both_ways() {
    let text = "ab \\\"c\\\" \\u00e9\\n".repeat(12_000);
    let completion = format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"tiny-chunks","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}}}"#
    );
    let completion = completion.as_bytes();
    assert!(completion.len() > 200_000);

    let up = answering(in_one_byte_chunks(completion)).await;
    let proxy = proxy_for(&up, "bare").await;
    let got = post(&proxy, "/api/v1/chat/completions", "one-byte-chunks-wrap").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body(), &wrapped(completion)[..]);
    let length = wrapped(completion).len().to_string();
    assert_eq!(got.header("content-length"), Some(&length[..]));
    let line = access_line("one-byte-chunks-wrap").await;
    assert_eq!(
        (
            &line["model"],
            &line["prompt_tokens"],
            &line["completion_tokens"]
        ),
        (&json!("tiny-chunks"), &json!(5), &json!(7))
    );

    let up = answering(in_one_byte_chunks(&wrapped(completion))).await;
    let proxy = proxy_for(&up, "envelope").await;
    let got = post(&proxy, "/v1/chat/completions", "one-byte-chunks-unwrap").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body(), completion);
    let length = completion.len().to_string();
    assert_eq!(got.header("content-length"), Some(&length[..]));
}
