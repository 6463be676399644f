//! `--upstream-http2`: HTTP/2 with prior knowledge (h2c) to an `http://` upstream
//! (`src/proxy/upstream/h2c.rs`).
//!
//! The mock upstream serves h2c and HTTP/1.1 alike and records the version of each request, so
//! the translation tests compare the same exchange over both and check which one the upstream
//! saw. The attacker cases use a raw socket (an upstream that never speaks) or a hand-made
//! HTTP/2 server on the `h2` crate (GOAWAY, a reset stream).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use test_support::harness::{self, fixture, start_proxy, wrapped, Harness, Reply, WAIT};
use test_support::mock_upstream::Shape;
use test_support::process;
use test_support::raw_upstream::{self, RawUpstream, Step};

const BIN: &str = test_support::proxy_bin!();

async fn h2c(extra: &[&str]) -> Harness {
    // One worker: one pool, so that a test knows which connections its requests share.
    let mut flags = vec!["--upstream-http2", "--worker-threads", "1"];
    flags.extend_from_slice(extra);
    harness::start(Shape::Bare, &flags).await
}

/// Every request `harness`'s upstream received came over HTTP/2, named `:authority` and no
/// `Host` (hyper's HTTP/2 client sends none), or all over HTTP/1.1.
fn assert_versions(harness: &Harness, version: Version) {
    let requests = harness.mock.state.requests();
    assert!(!requests.is_empty());
    for request in requests {
        assert_eq!(request.version, version);
        if version == Version::HTTP_2 {
            assert_eq!(
                request.authority.as_deref(),
                Some(harness.mock.addr.to_string().as_str())
            );
            assert_eq!(request.header("host"), None);
        }
    }
}

fn bare_error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

// === Translation over an h2 upstream ===

#[tokio::test]
async fn json_is_wrapped_for_api_v1_and_passed_for_v1() {
    let h2 = h2c(&[]).await;
    let completion = fixture("bare/chat_completion.json");

    let got = h2.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, wrapped(&completion));

    let got = h2.chat("/v1/chat/completions", false).send().await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, completion);

    assert_versions(&h2, Version::HTTP_2);
    // Both on one connection.
    assert_eq!(h2.mock.state.connections(), 1);
    assert_eq!(
        h2.mock.state.last_request().expect("recorded").path(),
        "/v1/chat/completions"
    );
}

#[tokio::test]
async fn an_event_stream_is_wrapped_as_over_http1() {
    let flags = ["--stream-envelope", "wrap"];
    let h1 = harness::start(Shape::Bare, &flags).await;
    let h2 = h2c(&flags).await;
    let one = h1.chat("/api/v1/chat/completions", true).send().await;
    let two = h2.chat("/api/v1/chat/completions", true).send().await;
    assert_eq!(two.status, StatusCode::OK);
    assert_eq!(two.header("content-type"), Some("text/event-stream"));
    assert_eq!(two.body, one.body);
    let text = two.text();
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let source = fixture("bare/chat_completion_stream.sse");
    let source = std::str::from_utf8(&source).expect("UTF-8");
    let source_events: Vec<&str> = source.split_terminator("\n\n").collect();
    assert_eq!(events.len(), source_events.len());
    for (event, chunk) in events.iter().zip(&source_events) {
        match chunk.strip_prefix("data: ") {
            Some("[DONE]") => assert_eq!(*event, "data: [DONE]"),
            Some(payload) => assert_eq!(
                *event,
                format!(
                    "data: {}",
                    String::from_utf8(wrapped(payload.as_bytes())).expect("UTF-8")
                )
            ),
            None => panic!("a fixture event without data: {chunk:?}"),
        }
    }
    assert_versions(&h1, Version::HTTP_11);
    assert_versions(&h2, Version::HTTP_2);
}

#[tokio::test]
async fn an_upstream_error_is_translated() {
    let h2 = h2c(&[]).await;
    let got = h2
        .chat("/api/v1/chat/completions", false)
        .fixture("errors/openai_429_rate_limit.json", 429)
        .send()
        .await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    let message = "Rate limit reached for gpt-4o-mini in organization org-Qx3LbN8vTz1Kd7RmYw5sHp2c on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit https://platform.openai.com/account/rate-limits to learn more.";
    assert_eq!(
        got.json(),
        json!({"success": false, "code": "429", "message": message, "data": null,
               "error": {"message": message, "type": "requests", "param": null,
                         "code": "rate_limit_exceeded"}})
    );
    assert_versions(&h2, Version::HTTP_2);
}

#[tokio::test]
async fn head_on_a_translated_route_carries_no_length() {
    let h2 = harness::start(Shape::Envelope, &["--upstream-http2"]).await;
    let head = h2
        .call(Method::HEAD, "/v1/models")
        .fixture("envelope/models.json", 200)
        .send()
        .await;
    assert_eq!(head.status, StatusCode::OK);
    // The upstream's length is its envelope's, not the bare body's a GET gets.
    assert_eq!(head.header("content-length"), None, "{:?}", head.headers);
    assert!(head.body.is_empty());
    let upstream = h2.mock.state.last_request().expect("HEAD went upstream");
    assert_eq!(upstream.method, Method::HEAD);
    assert_eq!(upstream.version, Version::HTTP_2);
    // The connection serves on.
    let got = h2
        .get("/v1/models")
        .fixture("envelope/models.json", 200)
        .send()
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
}

// === The cap on streams per connection ===

/// A held stream (`hold`: the first event, then the rest once released), with its first
/// event read.
async fn held(harness: &Harness) -> (Response<Incoming>, Bytes) {
    let response = harness
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (parts, mut body) = response.into_parts();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the first event within the wait bound")
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data");
    (Response::from_parts(parts, body), first)
}

#[tokio::test]
async fn streams_beyond_the_cap_open_exactly_one_more_connection() {
    let h2 = h2c(&["--upstream-http2-max-streams", "2"]).await;
    let mut open = Vec::new();
    for expected_connections in [1, 1, 2, 2] {
        open.push(held(&h2).await);
        assert_eq!(h2.mock.state.connections(), expected_connections);
    }
    h2.mock.state.release();
    let whole = fixture("bare/chat_completion_stream.sse");
    for (response, first) in open {
        let rest = tokio::time::timeout(WAIT, response.into_body().collect())
            .await
            .expect("the stream ends within the wait bound")
            .expect("whole")
            .to_bytes();
        assert_eq!([first, rest].concat(), whole.as_ref());
    }
    // The ended streams gave their places back: the next ones go to the open connections.
    let got = h2.chat("/v1/chat/completions", true).send().await;
    assert_eq!(got.body, whole);
    assert_eq!(h2.mock.state.connections(), 2);
    assert_versions(&h2, Version::HTTP_2);
}

// === Credentials on a shared connection ===

/// A relay in front of `upstream` that records every byte the proxy sends through it.
async fn recording_relay(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let (mut from_proxy, mut to_proxy) = client.into_split();
                let (mut from_upstream, mut to_upstream) = server.into_split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = from_proxy.read(&mut buf).await {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to_upstream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_upstream.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut from_upstream, &mut to_proxy).await;
                    let _ = to_proxy.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, sent)
}

/// How each HEADERS block in `bytes` (an HTTP/2 client's side of a connection) sends the
/// `authorization` field: the representation of every field named by static index 23 (RFC
/// 7541 appendix A), per block, and of every reference to a dynamic entry that was one.
/// String literals are skipped unread, so Huffman coding needs no decoding; a few small
/// requests never fill the 4,096-byte table, so nothing is evicted.
fn authorization_representations(bytes: &[u8]) -> Vec<Vec<&'static str>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert!(bytes.starts_with(PREFACE), "no client preface");
    let mut at = PREFACE.len();
    // Newest first, as HPACK numbers them: whether each dynamic entry is an `authorization`.
    let mut dynamic = std::collections::VecDeque::new();
    let mut blocks = Vec::new();
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
        // The relay may have recorded only the start of the last frame.
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        at += 9 + len;
        if kind != 0x1 {
            continue;
        }
        assert_eq!(
            flags & 0x4,
            0x4,
            "a header block in one frame (END_HEADERS)"
        );
        let mut block = payload;
        if flags & 0x8 != 0 {
            let pad = usize::from(block[0]);
            block = &block[1..block.len() - pad];
        }
        if flags & 0x20 != 0 {
            block = &block[5..];
        }
        blocks.push(hpack_authorizations(block, &mut dynamic));
    }
    blocks
}

/// An HPACK integer with an `n`-bit prefix at `block[*at]`.
fn hpack_int(block: &[u8], at: &mut usize, n: u32) -> usize {
    let max = (1usize << n) - 1;
    let mut value = usize::from(block[*at]) & max;
    *at += 1;
    if value == max {
        let mut shift = 0;
        loop {
            let byte = block[*at];
            *at += 1;
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

fn hpack_authorizations(
    block: &[u8],
    dynamic: &mut std::collections::VecDeque<bool>,
) -> Vec<&'static str> {
    const AUTHORIZATION: usize = 23;
    const STATIC_ENTRIES: usize = 61;
    let mut found = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let (kind, prefix) = match block[at] {
            0x80.. => ("indexed", 7),
            0x40.. => ("incremental indexing", 6),
            0x20.. => {
                hpack_int(block, &mut at, 5); // a dynamic table size update
                continue;
            }
            0x10.. => ("never indexed", 4),
            _ => ("without indexing", 4),
        };
        let index = hpack_int(block, &mut at, prefix);
        let is_authorization = match index {
            0 => false, // a literal name: h2 names `authorization` by its static index
            1..=STATIC_ENTRIES => index == AUTHORIZATION,
            _ => dynamic[index - STATIC_ENTRIES - 1],
        };
        if kind != "indexed" {
            for _ in 0..if index == 0 { 2 } else { 1 } {
                let len = hpack_int(block, &mut at, 7); // a string literal: skipped
                at += len;
            }
        }
        if kind == "incremental indexing" {
            dynamic.push_front(is_authorization);
        }
        if is_authorization {
            found.push(kind);
        }
    }
    found
}

/// With neither `--upstream-key-file` nor client keys the client's own `Authorization` goes
/// upstream, where the requests of every client share connections. It goes as a never-indexed
/// literal, as the upstream key does, so that an HTTP/2 intermediary behind the upstream URL
/// never indexes it either (RFC 7541 §7.1.3); unmarked, h2 sends it without indexing, a form
/// an intermediary may index when it re-encodes.
#[tokio::test]
async fn a_clients_authorization_is_never_indexed_on_the_shared_upstream_connection() {
    let mock = test_support::mock_upstream::start(Shape::Bare).await;
    let (relay, sent) = recording_relay(mock.addr).await;
    let proxy = start_proxy(
        &format!("http://{relay}/v1"),
        "bare",
        &["--upstream-http2", "--worker-threads", "1"],
    )
    .await;
    for _ in 0..2 {
        let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
            .header("authorization", "Bearer sk-client-one")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o-mini"}"#)))
            .unwrap();
        let response = tokio::time::timeout(WAIT, harness::client().request(request))
            .await
            .expect("an answer within the wait bound")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let requests = mock.state.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer sk-client-one")
        );
    }
    assert_eq!(
        mock.state.connections(),
        1,
        "both requests shared one upstream connection"
    );
    let sent = sent.lock().unwrap().clone();
    assert_eq!(
        authorization_representations(&sent),
        vec![vec!["never indexed"], vec!["never indexed"]]
    );
}

// === Attacker cases ===

/// A client that sends a request and then reads nothing, on a socket with a small receive
/// buffer.
async fn stalled_client(proxy: SocketAddr, path: &str, body: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(proxy).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\nx-mock-behaviour: echo\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    stream
}

#[tokio::test]
async fn clients_that_stop_reading_do_not_block_the_other_streams_of_a_connection() {
    let h2 = h2c(&["--upstream-http2-max-streams", "4"]).await;
    // Three clients ask for 8 MiB answers (the mock echoes the request) and read none: far
    // more than a stream's window, the socket buffers and the proxy's own hold together.
    let pad = "x".repeat(8 << 20);
    let body = format!(r#"{{"model":"m","pad":"{pad}"}}"#);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_client(h2.proxy.addr, "/v1/chat/completions", body.as_bytes()).await);
    }
    // Until the upstream answered them; then a moment for their windows to fill (without the
    // moment the test cannot fail wrongly, only pass without proving anything).
    for _ in 0..1000 {
        if h2.mock.state.requests().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h2.mock.state.requests().len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another request on the same connection gets its whole answer.
    let got = h2.chat("/v1/chat/completions", false).send().await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, fixture("bare/chat_completion.json"));
    assert_eq!(h2.mock.state.connections(), 1);
    drop(stalled);
}

/// `--upstream-http2` in front of a server that speaks HTTP/1.1 only (it answers the client
/// preface with a 400): a 502 that says the upstream does not speak HTTP/2 as it must.
#[tokio::test]
async fn an_http1_only_upstream_behind_the_flag_is_a_502_that_says_so() {
    let refusal = raw_upstream::response(
        "400 Bad Request",
        &[("content-type", "text/plain"), ("connection", "close")],
        b"bad request",
    );
    let up = RawUpstream::start(vec![Step::ReadRequest, Step::send(refusal), Step::Close]).await;
    let proxy = start_proxy(&up.url(), "bare", &["--upstream-http2"]).await;
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
        .expect("request");
    let got = read_all(
        tokio::time::timeout(WAIT, harness::client().request(request))
            .await
            .expect("an answer within the wait bound")
            .expect("response"),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        bare_error(
            "upstream answered in HTTP/1.1: with --upstream-http2 it must speak HTTP/2 with prior knowledge (h2c)",
            "upstream_error",
            json!("upstream_invalid_response")
        )
    );
}

#[tokio::test]
async fn an_upstream_that_accepts_and_never_speaks_is_a_connect_timeout() {
    // Accepts TCP, reads nothing, says nothing: no answer to the client preface.
    let up = RawUpstream::start(vec![Step::Hold]).await;
    let proxy = start_proxy(
        &up.url(),
        "bare",
        &[
            "--upstream-http2",
            "--connect-timeout",
            "0.3",
            // Far beyond the connect timeout, and within the test's wait bound.
            "--response-timeout",
            "5",
        ],
    )
    .await;
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
        .expect("request");
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("an answer within the wait bound")
        .expect("response");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        body,
        bare_error(
            "upstream connect timed out: no connection within 0.3s (--connect-timeout)",
            "upstream_error",
            json!("upstream_connect_timeout")
        )
    );
    assert_eq!(up.connections(), 1);
}

// === A hand-made HTTP/2 upstream (the h2 crate) ===

const EVENTS: &[&[u8]] = &[
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    b"data: [DONE]\n\n",
];

/// What the hand-made upstream does with one request (`x-case`).
#[derive(Clone)]
struct Script {
    /// Sent on every stream once it sent its first event.
    go: Arc<Notify>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Connections that ended.
    ended: Arc<AtomicUsize>,
    ended_notify: Arc<Notify>,
    /// After its first stream, the connection says GOAWAY and closes.
    goaway_after_one: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS, when not h2's default (unlimited).
    max_streams: Option<u32>,
}

/// Starts the hand-made h2c upstream; returns its address.
async fn h2_upstream(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            script.accepted.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                serve_h2(tcp, &script).await;
                script.ended.fetch_add(1, Ordering::SeqCst);
                script.ended_notify.notify_waiters();
            });
        }
    });
    addr
}

async fn serve_h2(tcp: TcpStream, script: &Script) {
    let mut builder = h2::server::Builder::new();
    if let Some(max) = script.max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake(tcp).await else {
        return;
    };
    let mut streams = tokio::task::JoinSet::new();
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let case = request
            .headers()
            .get("x-case")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("json")
            .to_owned();
        let go = Arc::clone(&script.go);
        let mut request_body = request.into_body();
        let stream = async move {
            let sse = case != "json" && case != "big-head";
            // `big-head`: a header list of 70 KiB, beyond the 64 KiB the proxy takes. The
            // request is read whole first: answering before it ends would make h2 reset the
            // stream (NO_ERROR, "stop sending"), which may reach the proxy before it refuses
            // the head.
            let filler = "a".repeat(if case == "big-head" { 70 * 1024 } else { 0 });
            if case == "big-head" {
                while let Some(Ok(_)) = request_body.data().await {}
            }
            let mut head = Response::builder().status(200).header("x-filler", filler);
            if case == "overlong" {
                // A length the stream then exceeds: h2 (the proxy's client) must refuse it.
                head = head.header("content-length", EVENTS[0].len());
            }
            let head = head
                .header(
                    "content-type",
                    if sse {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .body(())
                .expect("head");
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            if !sse {
                let _ = send.send_data(Bytes::from_static(br#"{"id":"c1"}"#), true);
                return;
            }
            // Registered before the first event leaves, so no `go` is missed.
            let notified = go.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _ = send.send_data(Bytes::from_static(EVENTS[0]), false);
            notified.await;
            if case == "reset" {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            for (n, event) in EVENTS.iter().enumerate().skip(1) {
                let _ = send.send_data(Bytes::from_static(event), n == EVENTS.len() - 1);
            }
        };
        if script.goaway_after_one {
            stream.await;
            connection.graceful_shutdown();
            // Drives the GOAWAY out; ends when the connection has closed.
            while let Some(Ok(_)) = connection.accept().await {}
            return;
        }
        streams.spawn(stream);
        // Reap the finished ones; the rest run while accept() drives the connection.
        while streams.try_join_next().is_some() {}
    }
}

/// The response head is bounded over HTTP/2 as over HTTP/1.1 (64 KiB): h2 resets the stream
/// of a larger one with a protocol error of its own, a 502 `upstream_invalid_response` (h2
/// names no finer cause), and the connection goes on serving the next request.
#[tokio::test]
async fn a_response_head_larger_than_the_limit_is_a_502() {
    let script = script(false);
    let upstream = h2_upstream(script.clone()).await;
    let proxy = start_proxy(
        &format!("http://{upstream}"),
        "bare",
        &["--upstream-http2", "--worker-threads", "1"],
    )
    .await;
    let got = read_all(send(proxy.addr, "/v1/chat/completions", "big-head").await).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        got.json(),
        bare_error(
            "upstream broke the HTTP/2 protocol in its response (a frame it may not send, or a header list larger than 64 KiB)",
            "upstream_error",
            json!("upstream_invalid_response")
        )
    );
    let got = read_all(send(proxy.addr, "/v1/chat/completions", "json").await).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, &br#"{"id":"c1"}"#[..]);
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1, "one connection");
}

fn script(goaway_after_one: bool) -> Script {
    Script {
        go: Arc::new(Notify::new()),
        accepted: Arc::new(AtomicUsize::new(0)),
        ended: Arc::new(AtomicUsize::new(0)),
        ended_notify: Arc::new(Notify::new()),
        goaway_after_one,
        max_streams: None,
    }
}

async fn send(proxy: SocketAddr, path: &str, case: &str) -> Response<Incoming> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{proxy}{path}"))
        .header("content-type", "application/json")
        .header("x-case", case)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true}"#,
        )))
        .expect("request");
    tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response headers within the wait bound")
        .expect("response")
}

async fn read_all(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body ends within the wait bound")
        .expect("the body ends cleanly")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

#[tokio::test]
async fn after_a_goaway_the_next_request_goes_to_a_new_connection() {
    let script = script(true);
    let addr = h2_upstream(script.clone()).await;
    // One worker: one pool, where the closed connection would be found.
    let flags = ["--upstream-http2", "--worker-threads", "1"];
    let proxy = start_proxy(&format!("http://{addr}/v1"), "bare", &flags).await;

    let ended = script.ended_notify.notified();
    tokio::pin!(ended);
    ended.as_mut().enable();
    let got = read_all(send(proxy.addr, "/v1/chat/completions", "json").await).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, Bytes::from_static(br#"{"id":"c1"}"#));
    // The upstream said GOAWAY and closed that connection.
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the upstream closes its first connection");
    assert_eq!(script.ended.load(Ordering::SeqCst), 1);

    let got = read_all(send(proxy.addr, "/api/v1/chat/completions", "json").await).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, wrapped(br#"{"id":"c1"}"#));
    assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
}

/// Reads `response`'s body until `len` bytes arrived.
async fn first_bytes(body: &mut Incoming, len: usize) -> Vec<u8> {
    let mut received = Vec::new();
    while received.len() < len {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the first event within the wait bound")
            .expect("a frame")
            .expect("no error");
        received.extend_from_slice(&frame.into_data().expect("data"));
    }
    received
}

#[tokio::test]
async fn a_stream_reset_mid_sse_ends_that_stream_only() {
    let script = script(false);
    let addr = h2_upstream(script.clone()).await;
    // One worker: one pool, so both streams can share a connection.
    let flags = ["--upstream-http2", "--worker-threads", "1"];
    let proxy = start_proxy(&format!("http://{addr}/v1"), "bare", &flags).await;

    let mut reset = send(proxy.addr, "/v1/chat/completions", "reset")
        .await
        .into_body();
    let mut whole = send(proxy.addr, "/v1/chat/completions", "whole")
        .await
        .into_body();
    assert_eq!(first_bytes(&mut reset, EVENTS[0].len()).await, EVENTS[0]);
    assert_eq!(first_bytes(&mut whole, EVENTS[0].len()).await, EVENTS[0]);
    // Both streams on one connection.
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
    script.go.notify_waiters();

    let rest = |body: Incoming| async move {
        tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("the stream ends within the wait bound")
            .expect("the proxy ends the stream cleanly")
            .to_bytes()
    };
    assert_eq!(
        harness::last_error_event(reset).await,
        broken("the upstream reset the stream")
    );
    assert_eq!(rest(whole).await, EVENTS[1..].concat());
}

/// The error event of a stream the upstream broke, `why` (error::body_failure).
fn broken(why: &str) -> Value {
    bare_error(
        &format!("the upstream stream broke before it finished ({why}); the answer is incomplete"),
        "upstream_error",
        json!("upstream_broken"),
    )
}

/// An upstream that sends more than the `content-length` it announced breaks HTTP/2: h2
/// resets the stream itself, and the client's error event says so.
#[tokio::test]
async fn a_stream_that_breaks_http2_mid_sse_says_so() {
    let script = script(false);
    let addr = h2_upstream(script.clone()).await;
    let flags = ["--upstream-http2", "--worker-threads", "1"];
    let proxy = start_proxy(&format!("http://{addr}/v1"), "bare", &flags).await;
    let mut body = send(proxy.addr, "/v1/chat/completions", "overlong")
        .await
        .into_body();
    assert_eq!(first_bytes(&mut body, EVENTS[0].len()).await, EVENTS[0]);
    script.go.notify_waiters();
    assert_eq!(
        harness::last_error_event(body).await,
        broken("the upstream broke the HTTP/2 protocol")
    );
}

#[tokio::test]
async fn an_upstream_that_allows_fewer_streams_than_the_cap_gets_more_connections() {
    let script = Script {
        max_streams: Some(1),
        ..script(false)
    };
    let addr = h2_upstream(script.clone()).await;
    let flags = ["--upstream-http2", "--worker-threads", "1"];
    let proxy = start_proxy(&format!("http://{addr}/v1"), "bare", &flags).await;

    // Open at once, each on a connection of its own: the upstream takes one stream at a time
    // (the second would wait for the first one's end, which waits for `go`).
    let mut open = Vec::new();
    for expected_connections in [1, 2, 3] {
        let mut body = send(proxy.addr, "/v1/chat/completions", "whole")
            .await
            .into_body();
        assert_eq!(first_bytes(&mut body, EVENTS[0].len()).await, EVENTS[0]);
        assert_eq!(script.accepted.load(Ordering::SeqCst), expected_connections);
        open.push(body);
    }
    script.go.notify_waiters();
    for body in open {
        let rest = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("the stream ends within the wait bound")
            .expect("whole")
            .to_bytes();
        assert_eq!(rest, EVENTS[1..].concat());
    }
}

// === The flag and its variable on the real binary ===

#[tokio::test]
async fn the_flag_and_its_variable_select_http2_on_the_real_binary() {
    let mock = test_support::mock_upstream::start(Shape::Bare).await;
    let upstream = mock.base_url();
    /// Flags, variables, and the version the upstream sees.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], Version);
    let cases: [Case; 5] = [
        (&["--upstream-http2"], &[], Version::HTTP_2),
        (&["--upstream-http2=false"], &[], Version::HTTP_11),
        (
            &[],
            &[("ENVELOPE_PROXY_UPSTREAM_HTTP2", "true")],
            Version::HTTP_2,
        ),
        (
            &[],
            &[("ENVELOPE_PROXY_UPSTREAM_HTTP2", "false")],
            Version::HTTP_11,
        ),
        (&[], &[], Version::HTTP_11),
    ];
    for (n, (flags, envs, version)) in cases.into_iter().enumerate() {
        let dir = process::TempDir::new(&format!("upstream-http2-{n}"));
        let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", upstream.as_str()];
        args.extend_from_slice(flags);
        let notify = process::Notify::bind(&dir);
        let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
        let mut all_envs = vec![("NOTIFY_SOCKET", socket.as_str())];
        all_envs.extend_from_slice(envs);
        let mut child = process::ProxyProcess::spawn(&dir, BIN, &args, &all_envs);
        let ready = notify.until("READY=1").await;
        let addr = process::served_tcp_addr(process::field(&ready, "STATUS").expect("STATUS"));
        let got = read_all(send(addr, "/v1/chat/completions", "json").await).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, fixture("bare/chat_completion_stream.sse"));
        assert_eq!(
            mock.state.last_request().expect("recorded").version,
            version,
            "{flags:?} {envs:?}"
        );
        child.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(child.wait().await.success());
    }
}
