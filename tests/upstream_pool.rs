//! The worker's own HTTP/1.1 connections to an `http://` upstream (`proxy/upstream.rs`): a
//! connection whose response ended whole serves the next request, a bodiless response gives
//! its connection back too, a connection the upstream said it would close is not reused, and
//! one the upstream closed while idle is closed here too without waiting for a request.
//! A raw-socket upstream counts the connections it accepted; a listener whose accept queue is
//! full makes a connect that makes no progress at all (--connect-timeout).

use test_support::{harness, raw_upstream};

use std::sync::Arc;

use bytes::Bytes;
use envelope_proxy::RunningServer;
use harness::{start_proxy, WAIT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use raw_upstream::{response, RawUpstream, Step};
use tokio::sync::Notify;

const COMPLETION: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#;

/// `method /v1/chat/completions` through `proxy` on a fresh client connection: the status and
/// the body.
async fn call(proxy: &RunningServer, method: Method) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response headers within the wait bound")
        .expect("the proxy answers");
    let status = response.status();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the body ends within the wait bound")
        .expect("the body is whole")
        .to_bytes();
    (status, body)
}

fn ok_json() -> Vec<u8> {
    response(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("content-length", &COMPLETION.len().to_string()),
        ],
        COMPLETION,
    )
}

#[tokio::test]
async fn a_connection_whose_response_ended_whole_serves_the_next_request() {
    let up = RawUpstream::start(vec![
        Step::ReadRequest,
        Step::send(ok_json()),
        Step::ReadRequest,
        Step::send(ok_json()),
        Step::Hold,
    ])
    .await;
    let proxy = start_proxy(&up.url(), "bare", &["--worker-threads", "1"]).await;
    for _ in 0..2 {
        assert_eq!(
            call(&proxy, Method::POST).await,
            (StatusCode::OK, Bytes::from_static(COMPLETION))
        );
    }
    assert_eq!(up.connections(), 1);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn a_bodiless_response_gives_its_connection_back() {
    let up = RawUpstream::start(vec![
        Step::ReadRequest,
        Step::send(response("204 No Content", &[], b"")),
        Step::ReadRequest,
        Step::send(ok_json()),
        Step::Hold,
    ])
    .await;
    let proxy = start_proxy(&up.url(), "bare", &["--worker-threads", "1"]).await;
    assert_eq!(
        call(&proxy, Method::POST).await,
        (StatusCode::NO_CONTENT, Bytes::new())
    );
    assert_eq!(
        call(&proxy, Method::POST).await,
        (StatusCode::OK, Bytes::from_static(COMPLETION))
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_said_it_closes_is_not_reused() {
    let closing = response(
        "200 OK",
        &[
            ("content-type", "application/json"),
            ("content-length", &COMPLETION.len().to_string()),
            ("connection", "close"),
        ],
        COMPLETION,
    );
    // Each connection answers once, says so, and then stays open: only the header tells.
    let up = RawUpstream::start(vec![Step::ReadRequest, Step::send(closing), Step::Hold]).await;
    let proxy = start_proxy(&up.url(), "bare", &["--worker-threads", "1"]).await;
    for _ in 0..2 {
        assert_eq!(
            call(&proxy, Method::POST).await,
            (StatusCode::OK, Bytes::from_static(COMPLETION))
        );
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_closed_without_another_request() {
    // An upstream with a keep-alive timeout (uvicorn's, under vLLM): it answers, then, once
    // the connection waits in the pool, closes its end. Ours must follow without a next
    // request to notice it (one may never come): else it stays half-closed (CLOSE_WAIT) with
    // its descriptor.
    let idle = Arc::new(Notify::new());
    let up = RawUpstream::start_with({
        let idle = Arc::clone(&idle);
        move |n| match n {
            0 => vec![
                Step::ReadRequest,
                Step::send(ok_json()),
                Step::Wait(Arc::clone(&idle)),
                Step::CloseWrite,
                Step::AwaitPeerClose,
            ],
            _ => vec![Step::ReadRequest, Step::send(ok_json()), Step::Hold],
        }
    })
    .await;
    let proxy = start_proxy(&up.url(), "bare", &["--worker-threads", "1"]).await;
    assert_eq!(
        call(&proxy, Method::POST).await,
        (StatusCode::OK, Bytes::from_static(COMPLETION))
    );
    idle.notify_one();
    tokio::time::timeout(WAIT, up.peer_closed())
        .await
        .expect("the proxy closes the connection the upstream closed, with no request after");
    // The next request takes a new connection.
    assert_eq!(
        call(&proxy, Method::POST).await,
        (StatusCode::OK, Bytes::from_static(COMPLETION))
    );
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn an_upstream_whose_accept_queue_is_full_is_a_connect_timeout() {
    // A listener nobody accepts on: once its queue is full, the kernel drops new connection
    // attempts, so a TCP connect makes no progress at all.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut queued = Vec::new();
    // Long enough that only a full queue explains it (a loopback connect completes at once;
    // a dropped attempt is retried after a second, and dropped again while nobody accepts).
    let filler = std::time::Duration::from_secs(2);
    loop {
        match tokio::time::timeout(filler, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(error)) => panic!("filling the accept queue: {error}"),
            // This attempt made no progress: the queue is full.
            Err(_) => break,
        }
        assert!(queued.len() < 10_000, "the accept queue never filled");
    }
    let proxy = start_proxy(
        &format!("http://{addr}/v1"),
        "bare",
        &["--connect-timeout", "0.3", "--response-timeout", "5"],
    )
    .await;
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("an answer within the wait bound")
        .expect("the proxy answers");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"error": {
            "message": "upstream connect timed out: no connection within 0.3s (--connect-timeout)",
            "type": "upstream_error", "param": null, "code": "upstream_connect_timeout"}})
    );
    drop(queued);
}
