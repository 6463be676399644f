//! Requests an attacker or a broken client sends (issue 13, points 9, 10 and 12): raw HTTP/1
//! over a TCP socket and hand-made HTTP/2 requests, each answered exactly, in the client's
//! dialect, without the upstream being contacted when it must not be.

use test_support::{harness, mock_upstream, process, raw};

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{start, Harness, WAIT};
use http::{HeaderMap, Method, Request, StatusCode};
use mock_upstream::Shape;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

/// The bare error body the proxy sends.
fn bare_error(message: &str, error_type: &str, code: &str) -> Value {
    json!({"error":{"message":message,"type":error_type,"param":null,"code":code}})
}

/// The envelope error body the proxy sends for `status`.
fn envelope_error(status: u16, message: &str, error_type: &str, code: &str) -> Value {
    json!({
        "success": false,
        "code": status.to_string(),
        "message": message,
        "data": null,
        "error": {"message":message,"type":error_type,"param":null,"code":code},
    })
}

/// Sends one raw request head (plus `Connection: close`) and returns status and JSON body.
async fn raw_json(h: &Harness, head: &str) -> (u16, Value) {
    let response = raw::exchange(h.proxy.addr, &format!("{head}Connection: close\r\n\r\n")).await;
    let body = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{head:?}: body is not JSON ({e}): {}", response.text));
    (response.status, body)
}

/// Polls /metrics until every line in `expected` is present (a request is recorded when its
/// response is done, which can be a moment after the client saw it).
async fn metrics_with(h: &Harness, expected: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.get("/metrics").send().await.text();
        if expected.iter().all(|e| text.lines().any(|l| l == *e)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {:?}:\n{text}",
            expected
                .iter()
                .filter(|e| !text.lines().any(|l| l == **e))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `bytes`, half-closes (or not), and reads whatever the proxy answers until it closes.
async fn send_then_read(h: &Harness, bytes: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(h.proxy.addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    if half_close {
        stream.shutdown().await.expect("half-close");
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the proxy neither answered nor closed");
    String::from_utf8_lossy(&received).into_owned()
}

const DOTS: &str = "request refused: the path must not contain `.` or `..` segments";

// === point 9: the path guard ===

#[tokio::test]
async fn paths_a_servlet_hop_would_resolve_to_dot_segments_are_refused_before_the_upstream() {
    let h = start(Shape::Bare, &[]).await;
    let cases = [
        ("/v1/..;/admin", DOTS),
        ("/v1/%2e%2e%3b/admin", DOTS),
        ("/v1/..%00/x", DOTS),
        ("/v1/..%20/x", DOTS),
        ("/v1/.;jsessionid=1/models", DOTS),
        ("/v1/%252e%252e/admin", DOTS),
        (
            "/v1/models%00",
            "request refused: the path must not contain NUL or control characters",
        ),
        (
            "/v1/chat%0d%0acompletions",
            "request refused: the path must not contain NUL or control characters",
        ),
        // Empty segments and backslashes are refused before routing, not answered 404.
        (
            "//v1/models",
            "request refused: the path must not contain empty segments",
        ),
        (
            "/v1\\models",
            "request refused: the path must not contain backslashes",
        ),
        (
            "//healthz",
            "request refused: the path must not contain empty segments",
        ),
    ];
    for (path, message) in cases {
        let (status, body) = raw_json(&h, &format!("GET {path} HTTP/1.1\r\nHost: p\r\n")).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            body,
            bare_error(message, "invalid_request_error", "invalid_request_target"),
            "{path}"
        );
    }
    // The envelope prefix gets the envelope form.
    for path in ["/api/v1/..;/admin", "/api/v1/%2e%2e%3b/admin"] {
        let (status, body) = raw_json(&h, &format!("GET {path} HTTP/1.1\r\nHost: p\r\n")).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            body,
            envelope_error(400, DOTS, "invalid_request_error", "invalid_request_target"),
            "{path}"
        );
    }
    // The same over HTTP/2, where `:path` is taken as sent.
    for path in [
        "/v1/..;/admin",
        "/v1/%2e%2e%3b/admin",
        "/v1/..%00/x",
        "/v1/..%20/x",
    ] {
        let (status, _, body) = h2_send(&h, Method::GET, path, &[]).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            json_of(&body),
            bare_error(DOTS, "invalid_request_error", "invalid_request_target"),
            "{path}"
        );
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream was contacted: {:?}",
        h.mock.state.requests()
    );
    // Names with dots and escapes that no hop resolves to a dot segment still pass.
    let (status, _) = raw_json(
        &h,
        "GET /v1/models/gpt-4.1;v=2 HTTP/1.1\r\nHost: p\r\nx-mock-behaviour: echo\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen: Vec<String> = h
        .mock
        .state
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(seen, ["/v1/models/gpt-4.1;v=2"]);
}

// === point 10: a client's broken upload is the client's error ===

const BROKEN_BODY: &str = "the request body could not be read: it ended before it was complete or its chunked encoding is invalid";

/// The status and JSON body of a raw HTTP/1 response.
fn status_and_json(answer: &str) -> (u16, Value) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    (status, body)
}

#[tokio::test]
async fn a_client_that_aborts_mid_body_is_a_client_cancellation_not_an_upstream_error() {
    let h = start(Shape::Bare, &[]).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":";
    // Half the body, then the client half-closes: it can still read the 400.
    let answer = send_then_read(&h, head.as_bytes(), true).await;
    assert_eq!(
        status_and_json(&answer),
        (
            400,
            bare_error(BROKEN_BODY, "invalid_request_error", "invalid_request_body")
        )
    );
    metrics_with(
        &h,
        &[
            "envelope_proxy_client_cancellations_total 1",
            "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
            "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"4xx\"} 1",
            "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"5xx\"} 0",
        ],
    )
    .await;
    // Half the body, then the socket is gone: nothing can be sent, and it is still the client's.
    let mut stream = TcpStream::connect(h.proxy.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    drop(stream);
    let metrics = metrics_with(&h, &["envelope_proxy_client_cancellations_total 2"]).await;
    for line in [
        "envelope_proxy_upstream_errors_total{kind=\"connect\"} 0",
        "envelope_proxy_upstream_errors_total{kind=\"timeout\"} 0",
        "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
        "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"5xx\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream never got a whole request"
    );
}

/// Sends `request` raw to an envelope route and checks that the answer is the 400 for a body
/// that could not be read; returns the whole answer.
async fn broken_body_answer(h: &Harness, request: &[u8]) -> String {
    let answer = send_then_read(h, request, false).await;
    assert_eq!(
        status_and_json(&answer),
        (
            400,
            envelope_error(
                400,
                BROKEN_BODY,
                "invalid_request_error",
                "invalid_request_body"
            )
        )
    );
    answer
}

#[tokio::test]
async fn a_bad_chunk_size_is_the_clients_error() {
    let h = start(Shape::Envelope, &[]).await;
    broken_body_answer(
        &h,
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"model\":\r\nzz\r\n1\r\n}\r\n0\r\n\r\n",
    )
    .await;
    metrics_with(
        &h,
        &[
            "envelope_proxy_client_cancellations_total 1",
            "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"4xx\"} 1",
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"5xx\"} 0",
        ],
    )
    .await;
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream never got a whole request"
    );
    // The proxy keeps serving.
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, 200);
}

/// A trailer line ended by a bare LF is a broken body, not the end of one: read leniently, the
/// bytes after it would be taken for a second request the client's front proxy never saw
/// (request smuggling). hyper refuses it from 1.13 on; before, the body ended there and the
/// bytes after it were read as the connection's next request.
#[tokio::test]
async fn a_trailer_ended_by_a_bare_lf_is_a_broken_body_and_smuggles_nothing() {
    let h = start(Shape::Envelope, &[]).await;
    let answer = broken_body_answer(
        &h,
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX: value\n\nGET /api/v1/models HTTP/1.1\r\nHost: p\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer, for one request: {answer:?}"
    );
    metrics_with(
        &h,
        &[
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"4xx\"} 1",
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"2xx\"} 0",
        ],
    )
    .await;
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream got neither the broken request nor the smuggled one"
    );
}

/// On HTTP/2 a reset stream drops its handler inside hyper, so this held before the HTTP/1 fix
/// too; it is here so that it stays so.
#[tokio::test]
async fn an_http2_client_that_resets_its_upload_is_a_client_cancellation() {
    let h = start(Shape::Bare, &[]).await;
    let tcp = TcpStream::connect(h.proxy.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let request = Request::post(format!("http://{}/v1/chat/completions", h.proxy.addr))
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(())
        .expect("request");
    let (_response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(Bytes::from_static(b"{\"model\":"), false)
        .expect("half the body");
    // Wait until the proxy is sending the body upstream, then give up on it.
    metrics_with(&h, &["envelope_proxy_active_requests 1"]).await;
    send.send_reset(h2::Reason::CANCEL);
    let metrics = metrics_with(
        &h,
        &[
            "envelope_proxy_client_cancellations_total 1",
            "envelope_proxy_active_requests 0",
        ],
    )
    .await;
    for line in [
        "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
        "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"5xx\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream never got a whole request"
    );
    driver.abort();
}

// === point 12: request heads ===

/// One HTTP/2 request over a fresh prior-knowledge connection; status, headers and body.
async fn h2_send(
    h: &Harness,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let tcp = TcpStream::connect(h.proxy.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready within the wait bound")
        .expect("ready");
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", h.proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("request");
    let (response, _send) = client.send_request(request, true).expect("send");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("response within the wait bound")
        .expect("response");
    let (parts, mut body) = response.into_parts();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("body within the wait bound")
    {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (parts.status, parts.headers, bytes.freeze())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn max_headers_holds_on_http2_too() {
    let h = start(Shape::Bare, &["--max-headers", "40"]).await;
    let names: Vec<String> = (0..41).map(|i| format!("x-filler-{i:03}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let message = "request refused: more than 40 header fields (--max-headers)";
    let (status, _, body) = h2_send(&h, Method::GET, "/v1/models", &many).await;
    assert_eq!(status, 431);
    assert_eq!(
        json_of(&body),
        bare_error(message, "invalid_request_error", "too_many_headers")
    );
    let (status, _, body) = h2_send(&h, Method::GET, "/api/v1/models", &many).await;
    assert_eq!(status, 431);
    assert_eq!(
        json_of(&body),
        envelope_error(431, message, "invalid_request_error", "too_many_headers")
    );
    assert!(
        h.mock.state.requests().is_empty(),
        "nothing reached the upstream"
    );
    // At the limit it passes.
    let (status, _, _) = h2_send(&h, Method::GET, "/v1/models", &many[..40]).await;
    assert_eq!(status, 200);
    assert_eq!(h.mock.state.requests().len(), 1);
    // HTTP/1 gets hyper's 431 as before.
    let mut head = String::from("GET /v1/models HTTP/1.1\r\nHost: p\r\n");
    for name in &names {
        head.push_str(&format!("{name}: v\r\n"));
    }
    let response = raw::exchange(h.proxy.addr, &format!("{head}Connection: close\r\n\r\n")).await;
    assert_eq!(response.status, 431, "{}", response.text);
    assert_eq!(h.mock.state.requests().len(), 1);
}

/// A key file in the temp dir, removed on drop.
struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "envelope-proxy-adversarial-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write the key file");
        KeyFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_proxy_key_never_leaves_the_proxy_and_two_authorizations_are_refused() {
    let keys = KeyFile::new("proxy-keys", "sk-proxy-only\n");
    let h = start(Shape::Bare, &["--api-keys-file", keys.path()]).await;
    // HTTP/1: accepted, and the upstream sees no Authorization at all.
    let reply = h
        .get("/v1/models")
        .header("authorization", "Bearer sk-proxy-only")
        .header("x-mock-behaviour", "echo")
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let seen = h.mock.state.last_request().expect("one request upstream");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 0);
    assert!(!format!("{:?}", seen.headers).contains("sk-proxy-only"));
    // HTTP/2, the same.
    let (status, _, _) = h2_send(
        &h,
        Method::GET,
        "/v1/models",
        &[("authorization", "Bearer sk-proxy-only")],
    )
    .await;
    assert_eq!(status, 200);
    let seen = h
        .mock
        .state
        .last_request()
        .expect("a second request upstream");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 0);
    assert_eq!(h.mock.state.requests().len(), 2);

    // Two Authorization fields (a good key first, anything second): 400, on HTTP/2 and HTTP/1.
    let message = "request refused: more than one Authorization header";
    let two = [
        ("authorization", "Bearer sk-proxy-only"),
        ("authorization", "Bearer sk-for-someone-else"),
    ];
    let (status, _, body) = h2_send(&h, Method::GET, "/v1/models", &two).await;
    assert_eq!(status, 400);
    assert_eq!(
        json_of(&body),
        bare_error(message, "invalid_request_error", "duplicate_authorization")
    );
    let (status, _, body) = h2_send(&h, Method::POST, "/api/v1/chat/completions", &two).await;
    assert_eq!(status, 400);
    assert_eq!(
        json_of(&body),
        envelope_error(
            400,
            message,
            "invalid_request_error",
            "duplicate_authorization"
        )
    );
    let (status, body) = raw_json(
        &h,
        "GET /v1/models HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer sk-proxy-only\r\nAuthorization: Bearer x\r\n",
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            bare_error(message, "invalid_request_error", "duplicate_authorization")
        )
    );
    assert_eq!(
        h.mock.state.requests().len(),
        2,
        "none of them reached the upstream"
    );
}

#[tokio::test]
async fn without_client_keys_the_clients_own_authorization_still_reaches_the_upstream() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .get("/v1/models")
        .header("authorization", "Bearer sk-upstream-own")
        .header("x-mock-behaviour", "echo")
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let seen = h.mock.state.last_request().expect("one request upstream");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream-own"));
}

const MODELS: &str = "envelope/models.json";

#[tokio::test]
async fn head_on_a_translated_route_never_carries_the_upstreams_length() {
    let h = start(Shape::Envelope, &[]).await;
    let get = h.get("/v1/models").fixture(MODELS, 200).send().await;
    assert_eq!(get.status, 200);
    assert_eq!(
        get.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    // The upstream's envelope is longer than the bare body a GET gets: no length at all.
    let head = h
        .call(Method::HEAD, "/v1/models")
        .fixture(MODELS, 200)
        .send()
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), None, "{:?}", head.headers);
    assert!(head.body.is_empty());
    let upstream = h.mock.state.last_request().expect("HEAD went upstream");
    assert_eq!(upstream.method, Method::HEAD);
    // Same dialect, passed through: the upstream's length is the one a GET gets.
    let get = h.get("/api/v1/models").fixture(MODELS, 200).send().await;
    let head = h
        .call(Method::HEAD, "/api/v1/models")
        .fixture(MODELS, 200)
        .send()
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_gets_501() {
    let h = start(Shape::Bare, &[]).await;
    let message = "request refused: the only transfer coding accepted is `chunked`";
    for (path, expected) in [
        (
            "/v1/chat/completions",
            bare_error(
                message,
                "invalid_request_error",
                "unsupported_transfer_coding",
            ),
        ),
        (
            "/api/v1/chat/completions",
            envelope_error(
                501,
                message,
                "invalid_request_error",
                "unsupported_transfer_coding",
            ),
        ),
    ] {
        let response = raw::exchange(
            h.proxy.addr,
            &format!("POST {path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
        )
        .await;
        assert_eq!(status_and_json(&response.text), (501, expected), "{path}");
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn forwarding_headers_are_the_proxys_own() {
    let h = start(Shape::Bare, &[]).await;
    let (status, body) = raw_json(
        &h,
        "GET /v1/models HTTP/1.1\r\nHost: api.example:8443\r\nx-mock-behaviour: echo\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7, 192.0.2.1\r\n\
         X-Forwarded-Host: evil.example\r\nForwarded: for=1.2.3.4;host=evil.example;proto=https\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = h.mock.state.last_request().expect("one request upstream");
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .collect()
    };
    assert_eq!(
        all("x-forwarded-for"),
        ["203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1"]
    );
    assert_eq!(all("x-forwarded-host"), ["api.example:8443"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert_eq!(all("forwarded"), Vec::<String>::new());

    // HTTP/2: the host is :authority.
    let (status, _, _) = h2_send(
        &h,
        Method::GET,
        "/v1/models",
        &[
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = h
        .mock
        .state
        .last_request()
        .expect("a second request upstream");
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(h.proxy.addr.to_string().as_str())
    );
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

// === point 12: the access log ===

/// The binary in front of `upstream`, with `extra` flags; returns it, its notify socket (kept
/// open, as systemd would) and its address.
async fn start_binary(
    dir: &process::TempDir,
    upstream: &str,
    extra: &[&str],
) -> (process::ProxyProcess, process::Notify, std::net::SocketAddr) {
    let notify = process::Notify::bind(dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", upstream];
    args.extend_from_slice(extra);
    let proxy = process::ProxyProcess::spawn(dir, BIN, &args, &[("NOTIFY_SOCKET", &socket)]);
    let ready = notify.until("READY=1").await;
    let addr = process::served_tcp_addr(process::field(&ready, "STATUS").expect("STATUS"));
    (proxy, notify, addr)
}

/// The JSON access-log lines in `log`.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .collect()
}

/// Opens a request through the proxy at `addr` and reads until `until` has arrived.
async fn open_raw(addr: std::net::SocketAddr, request: &str, until: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{until:?} within the wait bound"))
            .expect("read");
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (stream, seen)
}

fn chat_request(id: &str, behaviour: &str, stream: bool) -> String {
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-request-id: {id}\r\nx-mock-behaviour: {behaviour}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn streams_cut_at_shutdown_leave_an_access_log_line() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = process::TempDir::new("cut-log");
    let (mut proxy, _notify, addr) = start_binary(
        &dir,
        &mock.base_url(),
        &["--shutdown-grace", "0.2", "--log-format", "json"],
    )
    .await;
    // An event stream (it ends with the shutting_down error event) and a pass-through body
    // that the cut cannot end (it is dropped after the final flush).
    let (mut events, mut seen_events) =
        open_raw(addr, &chat_request("cut-stream", "hold", true), "data: ").await;
    let (mut stalled, _) = open_raw(
        addr,
        &chat_request("cut-passthru", "stall-after-headers", false),
        "\r\n\r\n",
    )
    .await;
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = tokio::time::timeout(WAIT, events.read_to_end(&mut seen_events)).await;
    let _ = tokio::time::timeout(WAIT, stalled.read_to_end(&mut Vec::new())).await;
    assert_eq!(proxy.wait().await.code(), Some(0));
    let text = String::from_utf8_lossy(&seen_events);
    assert!(text.contains("\"code\":\"shutting_down\""), "{text}");
    let log = proxy.stderr();
    let mut outcomes: Vec<(String, String, u64)> = access_lines(&log)
        .iter()
        .map(|l| {
            (
                l["request_id"].as_str().unwrap_or_default().to_owned(),
                l["outcome"].as_str().unwrap_or_default().to_owned(),
                l["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("cut-passthru".to_owned(), "shutting_down".to_owned(), 200),
            ("cut-stream".to_owned(), "shutting_down".to_owned(), 200),
        ],
        "{log}"
    );
}

#[tokio::test]
async fn raw_non_ascii_and_bidi_controls_in_paths_are_escaped_in_text_logs() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = process::TempDir::new("escape-log");
    let (mut proxy, _notify, addr) = start_binary(&dir, &mock.base_url(), &[]).await;
    // U+202E RIGHT-TO-LEFT OVERRIDE and a raw é, as UTF-8 bytes in the request line.
    let response = raw::exchange_bytes(
        addr,
        b"GET /v1/models/\xe2\x80\xaegpj.exe\xc3\xa9 HTTP/1.1\r\nHost: p\r\nx-request-id: bidi-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(response.status, 0, "the proxy answered");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let log = proxy.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" access: ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(
            r#"request_id="bidi-1" method=GET path=/v1/models/\xE2\x80\xAEgpj.exe\xC3\xA9 "#
        ),
        "{log}"
    );
    assert!(!log.contains('\u{202e}') && !log.contains('é'), "{log}");
}
