//! Connections and clients that make no progress (issue 13, points 1 and 2): silent sockets,
//! half an HTTP/2 preface, HTTP/2 connections that stop after SETTINGS, TLS handshakes that
//! never end, idle keep-alive connections, connections over the limits, more HTTP/2 streams
//! than allowed, and clients that stop reading a stream (an HTTP/2 window of 0, an HTTP/1.1
//! reader that stops). Raw sockets for HTTP/1.1, the `h2` crate or hand-made frames for HTTP/2.
//!
//! Timeouts are set tiny through the flags; every wait is bounded by the harness's `WAIT` and
//! nothing asserts how fast the proxy was.

use test_support::{harness, mock_upstream, pki, process};

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{fixture, start, Harness, Reply, WAIT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mock_upstream::Shape;
use process::{ProxyProcess, TempDir};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the proxy closes the connection (a reset counts); panics after `bound`.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin), bound: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the proxy did not close the connection within {bound:?} (received {:?})",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            // A reset, or a TLS connection closed without close_notify, is closed too.
            Ok(Err(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return received
            }
            Ok(Err(error)) => panic!("read failed: {error}"),
        }
    }
}

/// `GET /v1/models` on a new connection: the recorded fixture, exactly.
async fn assert_served(addr: SocketAddr) {
    let reply = get(addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body, fixture("bare/models.json"));
}

/// A GET on a fresh client (no pooled connection to trip over).
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within the wait bound")
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn bare_error(message: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}})
}

const AT_CONNECTION_LIMIT: &str =
    "envelope-proxy is at its connection limit (--max-connections); retry shortly";

// === 1. Nothing holds a connection slot without progress ===

/// With the only connection slot taken by a client that sends `bytes` and then nothing, the
/// proxy closes it once the header time is up, and the next client is served.
async fn held_then_freed(bytes: &[u8]) {
    let h = start(
        Shape::Bare,
        &["--max-connections", "1", "--header-read-timeout", "1"],
    )
    .await;
    let mut stuck = TcpStream::connect(h.proxy.addr).await.unwrap();
    stuck.write_all(bytes).await.unwrap();
    until_closed(&mut stuck, WAIT).await;
    assert_served(h.proxy.addr).await;
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    held_then_freed(b"").await;
}

#[tokio::test]
async fn half_an_http2_preface_is_closed_after_the_header_read_timeout() {
    held_then_freed(&PREFACE[..16]).await;
}

#[tokio::test]
async fn an_http2_connection_idle_after_its_settings_is_closed_after_the_header_read_timeout() {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(SETTINGS);
    held_then_freed(&bytes).await;
}

#[tokio::test]
async fn an_http1_head_that_never_ends_is_closed_after_the_header_read_timeout() {
    held_then_freed(b"GET /v1/models HTTP/1.1\r\nHost: p\r\n").await;
}

#[tokio::test]
async fn a_silent_socket_on_the_admin_listener_is_closed_too() {
    let h = start(
        Shape::Bare,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "1",
        ],
    )
    .await;
    let Some(envelope_proxy::listen::ListenAddr::Tcp(admin)) = h.proxy.admin.clone() else {
        panic!("an admin TCP listener");
    };
    let mut silent = TcpStream::connect(admin).await.unwrap();
    until_closed(&mut silent, WAIT).await;
    let reply = get(admin, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok\n");
}

fn tls_flags(dir: &TempDir, ca: &pki::TestCa) -> Vec<String> {
    let (cert, key) = ca.server().write(&dir.0, "server");
    vec![
        "--tls-cert".into(),
        cert.to_str().unwrap().into(),
        "--tls-key".into(),
        key.to_str().unwrap().into(),
        "--max-connections".into(),
        "1".into(),
        "--header-read-timeout".into(),
        "1".into(),
    ]
}

async fn assert_served_over_tls(h: &Harness, ca: &pki::TestCa) {
    let url = format!("https://localhost:{}/v1/models", h.proxy.addr.port());
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let client = pki::https_client(ca, "h2");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, fixture("bare/models.json"));
}

#[tokio::test]
async fn a_tls_handshake_that_never_ends_counts_in_the_header_read_timeout() {
    let dir = TempDir::new("tls-stall");
    let ca = pki::TestCa::new("stall CA");
    let flags = tls_flags(&dir, &ca);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let h = start(Shape::Bare, &flags).await;
    // The header of a ClientHello record, and nothing of the record itself.
    let mut stuck = TcpStream::connect(h.proxy.addr).await.unwrap();
    stuck
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    // Before this fix the handshake alone had a fixed 10 s: a bound below that, generous for
    // a 1 s timeout, tells the two apart.
    until_closed(&mut stuck, Duration::from_secs(8)).await;
    assert_served_over_tls(&h, &ca).await;
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_after_the_handshake_is_closed() {
    let dir = TempDir::new("tls-silent");
    let ca = pki::TestCa::new("silent CA");
    let flags = tls_flags(&dir, &ca);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let h = start(Shape::Bare, &flags).await;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake within the wait bound")
        .expect("handshake");
    until_closed(&mut tls, WAIT).await;
    assert_served_over_tls(&h, &ca).await;
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let h = start(Shape::Bare, &["--idle-timeout", "1"]).await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .unwrap();
    // The answer, then (the connection kept alive, idle) the close.
    let received = until_closed(&mut stream, WAIT).await;
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.as_bytes(), fixture("bare/models.json"));
}

/// One whole answer on a raw HTTP/1.1 connection that stays open: its head and its
/// `Content-Length` bytes (bounded by `WAIT`).
async fn one_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the answer within the wait bound")
            .expect("read");
        assert!(read > 0, "closed before the whole answer: {text}");
        received.extend_from_slice(&chunk[..read]);
    }
}

/// A keep-alive connection served once, with the only connection slot and no idle timeout:
/// only the deadline on its next request head can end it.
async fn served_once_then(next: &[u8]) -> Vec<u8> {
    let h = start(
        Shape::Bare,
        &[
            "--max-connections",
            "1",
            "--header-read-timeout",
            "1",
            "--idle-timeout",
            "0",
        ],
    )
    .await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .unwrap();
    let answer = one_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.as_bytes(), fixture("bare/models.json"));
    stream.write_all(next).await.unwrap();
    let rest = until_closed(&mut stream, WAIT).await;
    assert_served(h.proxy.addr).await;
    rest
}

#[tokio::test]
async fn a_later_http1_head_that_never_ends_is_closed_after_the_header_read_timeout() {
    let rest = served_once_then(b"GET /v1/models HTTP/1.1\r\nHost: p\r\n").await;
    assert_eq!(String::from_utf8_lossy(&rest), "");
}

#[tokio::test]
async fn a_silent_http1_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let rest = served_once_then(b"").await;
    assert_eq!(String::from_utf8_lossy(&rest), "");
}

/// An h2 client on a new connection; the connection runs on its own task.
async fn h2_client(
    addr: SocketAddr,
    builder: &h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = builder.handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(connection))
}

async fn h2_body(response: Response<h2::RecvStream>) -> Bytes {
    let mut body = response.into_body();
    let mut out = BytesMut::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
        .await
        .expect("data within the wait bound")
    {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

fn h2_chat(path: &str, behaviour: Option<&str>) -> (Request<()>, Bytes) {
    let mut request =
        Request::post(format!("http://localhost{path}")).header("content-type", "application/json");
    if let Some(behaviour) = behaviour {
        request = request.header("x-mock-behaviour", behaviour);
    }
    let body =
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"stream":true}"#;
    (request.body(()).unwrap(), Bytes::from_static(body))
}

#[tokio::test]
async fn an_http2_connection_with_an_open_stream_stays_and_closes_once_idle() {
    let h = start(Shape::Bare, &["--idle-timeout", "1"]).await;
    let (mut send, connection) = h2_client(h.proxy.addr, &h2::client::Builder::new()).await;
    let (request, body) = h2_chat("/v1/chat/completions", Some("hold"));
    let (response, mut upload) = send.send_request(request, false).unwrap();
    upload.send_data(body, true).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Open three times longer than the idle timeout: an open stream is not idleness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.mock.state.release();
    let streamed = h2_body(response).await;
    assert_eq!(streamed, fixture("bare/chat_completion_stream.sse"));
    // Then idle: GOAWAY and the end of the connection.
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was never closed");
}

/// Hand-made HTTP/2 frames, for what the `h2` crate would not send or would hide.
mod frames {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;
    pub const ACK: u8 = 1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A header block of literals without indexing (no Huffman): valid HPACK, no table.
    pub fn headers(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            assert!(name.len() < 127 && value.len() < 127);
            out.push(0);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }
}

/// Reads one frame: (type, flags, stream, payload).
async fn read_frame(stream: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("a frame within the wait bound")
        .expect("a frame");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut payload))
        .await
        .expect("the payload within the wait bound")
        .expect("the payload");
    (head[3], head[4], id, payload)
}

#[tokio::test]
async fn http2_connections_with_an_open_stream_are_pinged() {
    let h = start(Shape::Bare, &["--idle-timeout", "1"]).await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let (request, body) = h2_chat("/v1/chat/completions", Some("hold"));
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", request.uri().path()),
        ("content-type", "application/json"),
        ("x-mock-behaviour", "hold"),
    ];
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(SETTINGS);
    bytes.extend(frames::frame(
        frames::HEADERS,
        frames::END_HEADERS,
        1,
        &frames::headers(&fields),
    ));
    bytes.extend(frames::frame(frames::DATA, frames::END_STREAM, 1, &body));
    stream.write_all(&bytes).await.unwrap();
    // Read (and answer the server's SETTINGS) until a PING arrives: the stream is held open
    // upstream, so nothing else comes after its first event.
    for _ in 0..100 {
        let (kind, flags, _, _) = read_frame(&mut stream).await;
        if kind == frames::SETTINGS && flags & frames::ACK == 0 {
            let ack = frames::frame(frames::SETTINGS, frames::ACK, 0, &[]);
            stream.write_all(&ack).await.unwrap();
        }
        if kind == frames::PING && flags & frames::ACK == 0 {
            h.mock.state.release();
            return;
        }
    }
    panic!("no PING in the first 100 frames");
}

#[tokio::test]
async fn http2_streams_over_the_per_connection_cap_are_refused() {
    let h = start(Shape::Bare, &["--max-concurrent-streams", "2"]).await;
    let tcp = TcpStream::connect(h.proxy.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut send = send.ready().await.unwrap();
    // Three streams opened before the server's SETTINGS are read: the client does not know
    // the cap yet, so all three go out.
    let mut responses = Vec::new();
    for _ in 0..3 {
        let (request, body) = h2_chat("/v1/chat/completions", Some("hold"));
        let (response, mut upload) = send.send_request(request, false).unwrap();
        upload.send_data(body, true).unwrap();
        responses.push(response);
    }
    // Drive the connection until the server's SETTINGS are in.
    let mut connection = Box::pin(connection);
    tokio::time::timeout(
        WAIT,
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                panic!("the connection ended: {result:?}");
            }
            if connection.max_concurrent_send_streams() == 2 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
    )
    .await
    .expect("the server's SETTINGS_MAX_CONCURRENT_STREAMS is 2");
    tokio::spawn(connection);
    let third = responses.pop().unwrap();
    let refused = tokio::time::timeout(WAIT, third)
        .await
        .expect("an answer within the wait bound")
        .expect_err("the third stream is refused");
    assert_eq!(refused.reason(), Some(h2::Reason::REFUSED_STREAM));
    for response in responses {
        let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    h.mock.state.release();
}

#[tokio::test]
async fn an_http2_connection_over_the_limit_gets_one_answer_and_goaway() {
    // The only slot is held by a silent socket (the default header time is 30 s).
    let h = start(Shape::Bare, &["--max-connections", "1"]).await;
    let _holder = TcpStream::connect(h.proxy.addr).await.unwrap();
    let (mut send, connection) = h2_client(h.proxy.addr, &h2::client::Builder::new()).await;
    let request = Request::get("http://localhost/v1/models").body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = serde_json::from_slice(&h2_body(response).await).unwrap();
    assert_eq!(body, bare_error(AT_CONNECTION_LIMIT, "proxy_overloaded"));
    // GOAWAY, then the connection ends; `Connection: close` means nothing on HTTP/2.
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "the refused HTTP/2 connection stayed open");
    let metrics = h.proxy.metrics().render();
    let line = r#"envelope_proxy_connections_refused_total{reason="max_connections"} 1"#;
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
}

#[tokio::test]
async fn beyond_the_overflow_cap_accepted_sockets_are_closed_at_once() {
    let h = start(
        Shape::Bare,
        &["--max-connections", "1", "--max-overflow-connections", "1"],
    )
    .await;
    let _served = TcpStream::connect(h.proxy.addr).await.unwrap();
    let _refused = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut dropped = TcpStream::connect(h.proxy.addr).await.unwrap();
    let received = until_closed(&mut dropped, WAIT).await;
    assert_eq!(received, b"");
    let metrics = h.proxy.metrics().render();
    for line in [
        r#"envelope_proxy_connections_refused_total{reason="max_connections"} 1"#,
        r#"envelope_proxy_connections_refused_total{reason="max_overflow_connections"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

// === 2. A client that stops reading holds nothing forever ===

/// An upstream that streams events without end (`/models` aside) and counts the streams it
/// saw cancelled (their body dropped: the proxy closed the connection).
struct EndlessUpstream {
    addr: SocketAddr,
    cancelled: Arc<AtomicUsize>,
}

const MODELS: &str =
    r#"{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"o"}]}"#;

struct Endless {
    event: Bytes,
    cancelled: Arc<AtomicUsize>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(self.event.clone()))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

type EitherBody = http_body_util::Either<Endless, Full<Bytes>>;

async fn endless_upstream() -> EndlessUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&cancelled);
    let content = "x".repeat(1000);
    let event = Bytes::from(format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
    ));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            let event = event.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = if request.uri().path().ends_with("/models") {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(EitherBody::Right(Full::new(Bytes::from_static(
                                MODELS.as_bytes(),
                            ))))
                    } else {
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(EitherBody::Left(Endless {
                                event: event.clone(),
                                cancelled: Arc::clone(&counter),
                            }))
                    };
                    std::future::ready(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    EndlessUpstream { addr, cancelled }
}

impl EndlessUpstream {
    async fn until_cancelled(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.cancelled.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "the upstream saw {} of {count} streams cancelled",
                self.cancelled.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The real binary (for its log) in front of `upstream`, JSON logs, with `extra` flags.
async fn spawn_proxy(
    dir: &TempDir,
    upstream: SocketAddr,
    extra: &[&str],
) -> (ProxyProcess, SocketAddr) {
    let upstream = format!("http://{upstream}/v1");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    process::spawn_ready(dir, BIN, &args).await
}

/// The stall tests' proxy: two requests at once, one second to take response bytes.
async fn proxy_process(dir: &TempDir, upstream: SocketAddr) -> (ProxyProcess, SocketAddr) {
    spawn_proxy(
        dir,
        upstream,
        &[
            "--max-concurrent-requests",
            "2",
            "--client-write-timeout",
            "1",
        ],
    )
    .await
}

fn log_lines(proxy: &ProxyProcess) -> Vec<Value> {
    proxy
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[tokio::test]
async fn refused_connections_are_logged_at_most_once_per_ten_seconds() {
    let upstream = endless_upstream().await;
    let dir = TempDir::new("refusals");
    let started = Instant::now();
    let (proxy, addr) = spawn_proxy(&dir, upstream.addr, &["--max-connections", "1"]).await;
    // The only slot, held by a silent socket (the default header time is 30 s).
    let _holder = TcpStream::connect(addr).await.unwrap();
    for _ in 0..5 {
        let reply = get(addr, "/v1/models").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.body).unwrap(),
            bare_error(AT_CONNECTION_LIMIT, "proxy_overloaded")
        );
    }
    let refusals = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("refusing client connections"))
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines = refusals(&log_lines(&proxy));
        if !lines.is_empty() {
            break lines;
        }
        assert!(Instant::now() < deadline, "no refusal logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The first refusal is logged at once, the rest wait for the next interval.
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["answered"], 1);
    assert_eq!(lines[0]["closed"], 0);
    let intervals = started.elapsed().as_secs() / 10;
    assert!(
        lines.len() as u64 <= 1 + intervals,
        "{} lines in {:?}: {lines:?}",
        lines.len(),
        started.elapsed()
    );
}

/// Waits for an access-log line per id with `outcome="client_stalled"`.
async fn until_logged_stalled(proxy: &ProxyProcess, ids: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = proxy.stderr();
        let stalled: Vec<String> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "access" && l["outcome"] == "client_stalled")
            .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
            .collect();
        if ids.iter().all(|id| stalled.iter().any(|s| s == id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no client_stalled line for each of {ids:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the stalled streams: a third client is served (the /models answer, exactly).
async fn third_client_is_served(addr: SocketAddr) {
    let reply = get(addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body, MODELS.as_bytes());
}

#[tokio::test]
async fn http2_clients_with_a_zero_window_do_not_hold_request_permits() {
    let upstream = endless_upstream().await;
    let dir = TempDir::new("stall-h2");
    let (proxy, addr) = proxy_process(&dir, upstream.addr).await;
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let mut held = Vec::new();
    for id in ["stall-h2-1", "stall-h2-2"] {
        let (mut send, connection) = h2_client(addr, &builder).await;
        let (mut request, body) = h2_chat("/v1/chat/completions", None);
        request
            .headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        let (response, mut upload) = send.send_request(request, false).unwrap();
        upload.send_data(body, true).unwrap();
        let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push((send, connection, response));
    }
    // Nothing is ever read: after --client-write-timeout both responses are abandoned, the
    // upstream requests cancelled and the permits freed.
    upstream.until_cancelled(2).await;
    third_client_is_served(addr).await;
    until_logged_stalled(&proxy, &["stall-h2-1", "stall-h2-2"]).await;
    drop(held);
}

#[tokio::test]
async fn http1_clients_that_stop_reading_a_stream_do_not_hold_request_permits() {
    let upstream = endless_upstream().await;
    let dir = TempDir::new("stall-h1");
    let (proxy, addr) = proxy_process(&dir, upstream.addr).await;
    let (_, body) = h2_chat("/v1/chat/completions", None);
    let mut held = Vec::new();
    for id in ["stall-h1-1", "stall-h1-2"] {
        // A small receive buffer, so that the proxy's writes back up soon.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nx-request-id: {id}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        // Read the status line, then stop reading.
        let mut start = [0u8; 12];
        tokio::time::timeout(WAIT, stream.read_exact(&mut start))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&start, b"HTTP/1.1 200");
        held.push(stream);
    }
    upstream.until_cancelled(2).await;
    third_client_is_served(addr).await;
    until_logged_stalled(&proxy, &["stall-h1-1", "stall-h1-2"]).await;
    // The stalled HTTP/1.1 connections are closed: what was sent, then the end.
    for mut stream in held {
        until_closed(&mut stream, WAIT).await;
    }
}
