//! Observability: /metrics series after known traffic, /readyz and the admin listener,
//! x-request-id, the Unix listener, and the access log of the real binary.

use test_support::{harness, mock_upstream, process};

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{fixture, start, start_proxy, Harness, Reply, WAIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mock_upstream::Shape;
use nix::sys::signal::Signal;
use process::TempDir;
use serde_json::{json, Value};

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

async fn get_at(addr: std::net::SocketAddr, path: &str) -> Reply {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// Polls /metrics until every line in `expected` is present (the server records a request
/// when it has finished sending it, which can be a moment after the client read it all).
async fn metrics_with(h: &Harness, expected: &[String]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.get("/metrics").send().await.text();
        if expected.iter().all(|e| text.lines().any(|l| l == e)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {:?}:\n{text}",
            expected
                .iter()
                .filter(|e| !text.lines().any(|l| l == e.as_str()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_translations_streams_errors_and_cancellations() {
    let h = start(Shape::Envelope, &[]).await;

    // envelope → bare translation, and a same-dialect pass-through.
    assert_eq!(h.get("/v1/models").send().await.status, StatusCode::OK);
    assert_eq!(h.get("/api/v1/models").send().await.status, StatusCode::OK);
    // A stream unwrapped event by event: a translation, a complete stream.
    let stream = h.chat("/v1/chat/completions", true).send().await;
    assert_eq!(stream.status, StatusCode::OK);
    // A stream that ends without [DONE]: truncated.
    let truncated = h
        .chat("/api/v1/chat/completions", true)
        .fixture("envelope/chat_completion_stream_no_done.sse", 200)
        .send()
        .await;
    assert!(truncated.text().contains("\"code\":\"stream_truncated\""));
    // The upstream's own 429 (envelope → envelope: passed as it is).
    let limited = h
        .get("/api/v1/models")
        .fixture("errors/envelope_429_int_code.json", 429)
        .send()
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // The upstream closes the connection without answering.
    let broken = h
        .get("/v1/models")
        .header("x-mock-behaviour", "no-response")
        .send()
        .await;
    assert_eq!(broken.status, StatusCode::BAD_GATEWAY);
    // A client that leaves mid-stream.
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = response.into_body();
    let _first = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    drop(body);
    assert!(h.mock.state.wait_client_gone(WAIT).await);

    let streamed = stream.body.len() + truncated.body.len();
    let text = metrics_with(
        &h,
        &[
            r#"envelope_proxy_requests_total{dialect="bare",upstream_shape="envelope",status_class="2xx"} 3"#.into(),
            r#"envelope_proxy_requests_total{dialect="bare",upstream_shape="envelope",status_class="5xx"} 1"#.into(),
            r#"envelope_proxy_requests_total{dialect="envelope",upstream_shape="envelope",status_class="2xx"} 2"#.into(),
            r#"envelope_proxy_requests_total{dialect="envelope",upstream_shape="envelope",status_class="4xx"} 1"#.into(),
        ],
    )
    .await;
    let expected = [
        r#"envelope_proxy_request_duration_seconds_count{dialect="bare"} 4"#.to_string(),
        r#"envelope_proxy_request_duration_seconds_count{dialect="envelope"} 3"#.into(),
        r#"envelope_proxy_time_to_first_byte_seconds_count{dialect="envelope"} 3"#.into(),
        r#"envelope_proxy_upstream_errors_total{kind="reset"} 1"#.into(),
        r#"envelope_proxy_upstream_errors_total{kind="connect"} 0"#.into(),
        // /v1/models and the unwrapped stream; the cancelled stream is not counted.
        r#"envelope_proxy_translations_total{direction="envelope_to_bare"} 2"#.into(),
        r#"envelope_proxy_translations_total{direction="bare_to_envelope"} 0"#.into(),
        r#"envelope_proxy_streams_total{outcome="ok"} 1"#.into(),
        r#"envelope_proxy_streams_total{outcome="stream_truncated"} 1"#.into(),
        r#"envelope_proxy_streams_total{outcome="client_cancelled"} 1"#.into(),
        "envelope_proxy_client_cancellations_total 1".into(),
        format!(
            "envelope_proxy_streamed_bytes_total {}",
            streamed + first_event_len()
        ),
        "envelope_proxy_active_requests 0".into(),
        "envelope_proxy_active_streams 0".into(),
        r#"envelope_proxy_reloads_total{result="ok"} 0"#.into(),
        // No logging started in this process: nothing dropped.
        "envelope_proxy_log_lines_dropped_total 0".into(),
        "# TYPE envelope_proxy_request_duration_seconds histogram".into(),
    ];
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    let response = h.get("/metrics").send().await;
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

/// The first event the held envelope stream sends, unwrapped for a bare client.
fn first_event_len() -> usize {
    let bare = fixture("bare/chat_completion_stream.sse");
    bare.windows(2).position(|w| w == b"\n\n").unwrap() + 2
}

#[tokio::test]
async fn admin_listen_moves_health_and_metrics_and_readyz_turns_503_while_draining() {
    let mut h = start(Shape::Bare, &["--admin-listen", "127.0.0.1:0"]).await;
    let Some(envelope_proxy::listen::ListenAddr::Tcp(admin)) = h.proxy.admin.clone() else {
        panic!("an admin TCP listener");
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = h.get(path).send().await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path} on the public listener"
        );
        assert_eq!(reply.json()["error"]["code"], "unknown_route");
    }
    let health = get_at(admin, "/healthz").await;
    assert_eq!(
        (health.status, health.text()),
        (StatusCode::OK, "ok\n".into())
    );
    let ready = get_at(admin, "/readyz").await;
    assert_eq!(
        (ready.status, ready.text()),
        (StatusCode::OK, "ready\n".into())
    );
    let metrics = get_at(admin, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .text()
        .starts_with("# HELP envelope_proxy_build_info"));
    let proxied = get_at(admin, "/v1/models").await;
    assert_eq!(
        proxied.status,
        StatusCode::NOT_FOUND,
        "the admin listener proxies nothing"
    );

    // A stream in flight, then shutdown: not ready, but the stream goes on.
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    seen.extend_from_slice(first.data_ref().unwrap());
    h.proxy.begin_shutdown();
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = get_at(admin, "/readyz").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(ready.text(), "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.mock.state.release();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    seen.extend_from_slice(&rest.to_bytes());
    assert_eq!(seen.freeze(), fixture("bare/chat_completion_stream.sse"));
    let deadline = Instant::now() + WAIT;
    while !h.proxy.is_stopped() {
        assert!(Instant::now() < deadline, "the drain did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn request_ids_are_generated_when_missing_passed_upstream_and_returned() {
    let h = start(Shape::Bare, &[]).await;

    let reply = h
        .get("/v1/models")
        .header("x-mock-behaviour", "echo")
        .send()
        .await;
    let generated = reply.header("x-request-id").expect("an id").to_owned();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        reply.json()["headers"]["x-request-id"],
        Value::from(generated.clone())
    );

    let reply = h
        .get("/v1/models")
        .header("x-mock-behaviour", "echo")
        .header("x-request-id", "client-req-1")
        .send()
        .await;
    assert_eq!(reply.header("x-request-id"), Some("client-req-1"));
    assert_eq!(reply.json()["headers"]["x-request-id"], "client-req-1");

    // The upstream's own id reaches the client (the SDKs report it); it got ours.
    let reply = h
        .get("/v1/models")
        .header("x-request-id", "client-req-2")
        .header("x-mock-header", "x-request-id: req_upstream")
        .send()
        .await;
    assert_eq!(reply.header("x-request-id"), Some("req_upstream"));
    assert_eq!(
        h.mock.state.last_request().unwrap().header("x-request-id"),
        Some("client-req-2")
    );

    // The proxy's own errors carry it too.
    let unreachable = start_proxy("http://127.0.0.1:9/v1", "bare", &[]).await;
    let reply = get_at(unreachable.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.headers["x-request-id"].len(), 32);
}

#[tokio::test]
async fn a_unix_listener_serves_beside_tcp_with_its_mode_and_is_removed_on_stop() {
    let dir = TempDir::new("unix");
    let path = dir.path("proxy.sock");
    let listen = format!("unix:{}", path.display());
    let h = start(
        Shape::Bare,
        &["--listen", &listen, "--unix-socket-mode", "0666"],
    )
    .await;
    assert_eq!(h.proxy.addrs.len(), 2);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/api/v1/models")
        .header("host", "localhost")
        .header("x-mock-behaviour", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: Value = serde_json::from_slice(&body).unwrap();
    // Wrapped for the envelope client; no client address to forward.
    assert_eq!(echo["success"], true);
    assert_eq!(echo["data"]["headers"]["x-forwarded-for"], Value::Null);
    assert_eq!(echo["data"]["headers"]["x-forwarded-proto"], "http");
    drop(sender);

    let Harness { proxy, .. } = h;
    proxy.stop().await;
    assert!(
        !path.exists(),
        "the proxy removes the socket file it created"
    );
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_and_no_secrets() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("access");
    let upstream = mock.base_url();
    let (mut proxy, addr) = process::spawn_ready(
        &dir,
        BIN,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--log-format",
            "json",
        ],
    )
    .await;

    let request = Request::post(format!(
        "http://{addr}/api/v1/chat/completions?api_key=hidden-query"
    ))
    .header("authorization", "Bearer sk-secret-123")
    .header("content-type", "application/json")
    .header("x-request-id", "log-test-1")
    .body(Full::new(Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"secret-body"}]}"#,
    )))
    .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();

    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let log = proxy.stderr();
    for secret in ["sk-secret-123", "secret-body", "hidden-query", "Bearer"] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &Value| l["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = &lines[0];
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(line["ttfb_ms"].as_f64().is_some(), "{line}");
    assert!(line["timestamp"].as_str().is_some(), "{line}");
    let mut fields = line.as_object().unwrap().clone();
    for varying in ["duration_ms", "ttfb_ms", "timestamp"] {
        fields.remove(varying);
    }
    assert_eq!(
        Value::Object(fields),
        json!({
            "level": "INFO",
            "target": "access",
            "message": "request",
            "request_id": "log-test-1",
            "method": "POST",
            "path": "/api/v1/chat/completions",
            "dialect": "envelope",
            "upstream_shape": "bare",
            "status": 200,
            "upstream_status": 200,
            "bytes": body.len(),
            "outcome": "ok",
            // The response's own model and usage (issue 17).
            "model": "gpt-4o-mini-2024-07-18",
            "prompt_tokens": 27,
            "completion_tokens": 86,
        })
    );
}
