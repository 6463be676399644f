//! Bad input, tried for real: each case gets a clear error in the right dialect (or the HTTP
//! layer's own refusal), nothing panics, and the proxy still serves a normal request afterwards.

use test_support::{harness, mock_upstream, raw};

use std::time::Duration;

use bytes::BytesMut;
use harness::{fixture, start, Harness, WAIT};
use http::StatusCode;
use http_body_util::BodyExt;
use mock_upstream::Shape;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxy still answers a normal request with the upstream's exact body.
async fn still_serves(h: &Harness) {
    let reply = h.chat("/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, fixture("bare/chat_completion.json"));
}

fn envelope_error(status: u16, message: &str, kind: &str, code: &str) -> Value {
    json!({"success":false,"code":status.to_string(),"message":message,"data":null,
           "error":{"message":message,"type":kind,"param":null,"code":code}})
}

// === What the upstream sends ===

#[tokio::test]
async fn invalid_utf8_json_under_200_is_a_502_when_it_must_be_translated() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .fixture("errors/invalid_utf8.json", 200)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        envelope_error(
            502,
            "upstream sent a body that is not valid JSON under HTTP 200",
            "upstream_error",
            "upstream_invalid_body"
        )
    );
    still_serves(&h).await;
}

#[tokio::test]
async fn an_upstream_body_ten_times_the_limit_is_a_502() {
    let h = start(Shape::Bare, &["--max-response-body", "123"]).await;
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        envelope_error(
            502,
            "upstream response body exceeds the limit of 123 bytes (--max-response-body)",
            "upstream_error",
            "upstream_body_too_large"
        )
    );
    still_serves(&h).await;
}

#[tokio::test]
async fn an_upstream_that_stalls_after_headers_hits_the_request_deadline() {
    let h = start(Shape::Bare, &["--request-timeout", "0.3"]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-behaviour", "stall-after-headers")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        envelope_error(
            504,
            "the request did not complete within 0.3s (--request-timeout)",
            "upstream_error",
            "request_timeout"
        )
    );
    still_serves(&h).await;
}

#[tokio::test]
async fn an_upstream_reset_mid_body_is_a_502_when_translating() {
    let h = start(Shape::Envelope, &[]).await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-behaviour", "reset-mid-body:50")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "upstream_truncated");
    assert_eq!(body["error"]["type"], "upstream_error");
    let reply = h.chat("/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::OK);
}

// === What clients send ===

#[tokio::test]
async fn malformed_http_is_refused_and_the_proxy_keeps_serving() {
    let h = start(Shape::Bare, &[]).await;
    let tls_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /v1/models HTTP/9.9\r\n\r\n",
        tls_hello,
    ] {
        let response = raw::exchange_bytes(h.proxy.addr, garbage).await;
        // hyper's own refusal: 400, no body, connection closed.
        assert_eq!(response.status, 400, "{garbage:?}: {}", response.text);
        assert_eq!(response.body, "", "{garbage:?}: {}", response.text);
    }
    assert!(h.mock.state.requests().is_empty());
    still_serves(&h).await;
}

#[tokio::test]
async fn request_smuggling_attempts_are_refused_or_reframed() {
    let h = start(Shape::Bare, &[]).await;
    // Duplicate, conflicting lengths and an unknown final coding: refused by the HTTP layer.
    for attempt in [
        "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ] {
        let response = raw::exchange(h.proxy.addr, attempt).await;
        assert_eq!(response.status, 400, "{attempt:?}: {}", response.text);
    }
    assert!(h.mock.state.requests().is_empty());

    // Content-Length with Transfer-Encoding: chunking wins (RFC 9112 §6.3), the stale length is
    // dropped, the upstream gets the same single request the proxy saw, and the connection
    // closes, so the smuggled second request is never read.
    let attempt = "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n";
    let response = raw::exchange(h.proxy.addr, attempt).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.text.matches("HTTP/1.1 ").count(),
        1,
        "{}",
        response.text
    );
    let seen = h.mock.state.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.path(), "/v1/chat/completions");
    assert_eq!(seen[0].body.len(), 0);
    assert_eq!(seen[0].headers.get("content-length"), None);
    still_serves(&h).await;
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_a_431() {
    let h = start(
        Shape::Bare,
        &["--max-header-bytes", "16384", "--max-headers", "50"],
    )
    .await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: p\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(raw::exchange(h.proxy.addr, &big).await.status, 431);
    let many: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /v1/models HTTP/1.1\r\nHost: p\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw::exchange(h.proxy.addr, &many).await.status, 431);
    assert!(h.mock.state.requests().is_empty());
    still_serves(&h).await;
}

#[tokio::test]
async fn five_hundred_slow_clients_do_not_keep_others_out_and_are_cut_off() {
    let mut h = start(Shape::Bare, &["--header-read-timeout", "1"]).await;
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
        // Headers that never end.
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    still_serves(&h).await;
    // Each slow client is closed by the proxy once its header time is up (408 or a plain close).
    for stream in &mut slow {
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "a slow client was never cut off");
        let text = String::from_utf8_lossy(&buffer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // The first check's keep-alive connection has been idle for the same second by now, and
    // the proxy closes it too; a request racing that close would fail on the client's side.
    h.fresh_client();
    still_serves(&h).await;
}

/// Polls the proxy's metrics (in process, so reading them is no request) until `line` is
/// there; returns the whole text.
async fn metrics_showing(h: &Harness, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = h.proxy.metrics().render();
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed {line:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_body_does_not_hurt_others() {
    let h = start(Shape::Bare, &[]).await;
    for left in 1..=5 {
        let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")
            .await
            .unwrap();
        drop(stream);
        // Each departure is one cancellation, and the request is no longer active.
        let text = metrics_showing(
            &h,
            &format!("envelope_proxy_client_cancellations_total {left}"),
        )
        .await;
        assert!(
            text.lines()
                .any(|l| l == "envelope_proxy_active_requests 0"),
            "{text}"
        );
    }
    still_serves(&h).await;
    let text = metrics_showing(&h, "envelope_proxy_active_requests 0").await;
    assert!(
        text.lines()
            .any(|l| l == "envelope_proxy_client_cancellations_total 5"),
        "{text}"
    );
}

// === Limits on concurrency ===

#[tokio::test]
async fn over_the_request_limit_is_a_503_with_retry_after_in_the_clients_dialect() {
    let h = start(Shape::Bare, &["--max-concurrent-requests", "1"]).await;
    let held = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = held.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let message = "envelope-proxy is at its concurrent request limit (--max-concurrent-requests); retry shortly";
    assert_eq!(
        reply.json(),
        envelope_error(503, message, "server_error", "proxy_overloaded")
    );

    // The stream's permit is released when it ends.
    h.mock.state.release();
    let mut rest = BytesMut::new();
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    drop(body);
    still_serves(&h).await;
}

#[tokio::test]
async fn over_the_connection_limit_is_a_503_and_a_close() {
    let h = start(Shape::Bare, &["--max-connections", "1"]).await;
    // One connection holds the only slot: a keep-alive connection with nothing in flight.
    let mut holder = TcpStream::connect(h.proxy.addr).await.unwrap();
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let n = tokio::time::timeout(WAIT, holder.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));

    let response = raw::exchange(
        h.proxy.addr,
        "GET /api/v1/models HTTP/1.1\r\nHost: p\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 503, "{}", response.text);
    assert!(response
        .text
        .to_ascii_lowercase()
        .contains("connection: close"));
    assert!(response
        .text
        .to_ascii_lowercase()
        .contains("retry-after: 1"));
    let body: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "proxy_overloaded");
    assert_eq!(body["code"], "503");

    drop(holder);
    // The slot frees once the holder is gone.
    let mut served = false;
    for _ in 0..100 {
        let response = raw::exchange(
            h.proxy.addr,
            "GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        )
        .await;
        if response.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the connection slot was never released");
}
