//! TLS end to end, with certificates made at test time: HTTPS clients through a TLS listener
//! (h2 and http/1.1), the proxy to an HTTPS upstream signed by a private CA, a wrong CA, mTLS
//! to the upstream, and SIGHUP certificate reloads on the real binary.

use test_support::{harness, mock_upstream, pki, process, raw_upstream};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use harness::{fixture, start, start_proxy, WAIT};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use mock_upstream::Shape;
use nix::sys::signal::Signal;
use pki::{https_client, tls_front, HttpsClient, TestCa};
use process::{field, served_tcp_addr, Notify, ProxyProcess, TempDir};
use serde_json::json;

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

async fn https_get(client: &HttpsClient, url: &str) -> (StatusCode, Version, Bytes) {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let (status, version) = (response.status(), response.version());
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body within the wait bound")
        .expect("body")
        .to_bytes();
    (status, version, body)
}

#[tokio::test]
async fn https_clients_reach_the_proxy_over_h2_and_http11() {
    let dir = TempDir::new("tls-in");
    let ca = TestCa::new("inbound test CA");
    let (cert, key) = ca.server().write(&dir.0, "server");
    let h = start(
        Shape::Bare,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let url = format!("https://localhost:{}/v1/models", h.proxy.addr.port());
    for (alpn, version) in [("h2", Version::HTTP_2), ("http/1.1", Version::HTTP_11)] {
        let (status, got_version, body) = https_get(&https_client(&ca, alpn), &url).await;
        assert_eq!(status, StatusCode::OK, "{alpn}");
        assert_eq!(got_version, version, "{alpn}");
        assert_eq!(body, fixture("bare/models.json"), "{alpn}");
    }
    let seen = h
        .mock
        .state
        .last_request()
        .expect("the upstream got the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // A client that does not trust the proxy's CA cannot complete the handshake.
    let stranger = https_client(&TestCa::new("someone else"), "http/1.1");
    let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
    let error = tokio::time::timeout(WAIT, stranger.request(request))
        .await
        .expect("a quick failure")
        .expect_err("the handshake fails");
    assert_unknown_issuer(&error);
}

/// The request failed in the client's handshake because the server's certificate chains to no
/// CA the client trusts (not a refused connection, not a timeout, not another TLS failure).
fn assert_unknown_issuer(error: &(dyn std::error::Error + 'static)) {
    // hyper and tokio-rustls wrap the rustls error; an io::Error hides it from `source()`.
    let mut next = Some(error);
    let mut found = None;
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            found = Some(tls);
            break;
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    assert_eq!(
        found,
        Some(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        )),
        "{error:?}"
    );
}

/// A mock upstream behind a TLS front with a certificate from `ca`.
async fn https_upstream(
    ca: &TestCa,
    client_ca: Option<&TestCa>,
) -> (mock_upstream::MockUpstream, pki::TlsFront) {
    let mock = mock_upstream::start(Shape::Bare).await;
    let front = tls_front(mock.addr, &ca.server(), client_ca).await;
    (mock, front)
}

fn upstream_url(front: &pki::TlsFront) -> String {
    format!("https://localhost:{}/v1", front.addr.port())
}

/// A proxy in front of `front` (an upstream speaking `shape`), trusting `ca` (written to `dir`).
async fn proxy_trusting(
    front: &pki::TlsFront,
    ca: &TestCa,
    dir: &TempDir,
    shape: &str,
) -> envelope_proxy::RunningServer {
    let ca_file = ca.write(&dir.0, "ca.pem");
    start_proxy(
        &upstream_url(front),
        shape,
        &["--upstream-ca", ca_file.to_str().unwrap()],
    )
    .await
}

async fn plain_get(addr: SocketAddr, path: &str) -> harness::Reply {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(request))
        .await
        .expect("response within the wait bound")
        .expect("response");
    let (parts, body) = response.into_parts();
    harness::Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

#[tokio::test]
async fn the_proxy_reaches_an_https_upstream_signed_by_a_private_ca() {
    let dir = TempDir::new("tls-up");
    let ca = TestCa::new("upstream test CA");
    let (_mock, front) = https_upstream(&ca, None).await;
    let proxy = proxy_trusting(&front, &ca, &dir, "bare").await;
    let reply = plain_get(proxy.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, fixture("bare/models.json"));
    let reply = plain_get(proxy.addr, "/api/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, harness::wrapped(&fixture("bare/models.json")));
}

/// The `https://` client's HTTP/1.1 connections read at most 64 KiB at once too: a response
/// head larger than that is a 502 that says so.
#[tokio::test]
async fn an_https_upstream_with_a_head_larger_than_the_read_buffer_is_a_502() {
    use raw_upstream::{response, RawUpstream, Step};
    let dir = TempDir::new("tls-big-head");
    let ca = TestCa::new("upstream big head CA");
    let filler = "a".repeat(200 * 1024);
    let bytes = response(
        "200 OK",
        &[("content-type", "application/json"), ("x-filler", &filler)],
        b"{}",
    );
    let raw = RawUpstream::start(vec![Step::ReadRequest, Step::send(bytes), Step::Close]).await;
    let front = tls_front(raw.addr, &ca.server(), None).await;
    let proxy = proxy_trusting(&front, &ca, &dir, "bare").await;
    let reply = plain_get(proxy.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply.body).expect("JSON"),
        json!({"error": {
            "message": "upstream response head is larger than 64 KiB, the most the proxy reads",
            "type": "upstream_error", "param": null, "code": "upstream_invalid_response"}})
    );
}

#[tokio::test]
async fn an_https_upstream_over_h2_answers_a_head_on_a_translated_route_without_a_length() {
    let dir = TempDir::new("tls-h2-head");
    let ca = TestCa::new("upstream h2 CA");
    // The mock speaks h2c behind the front, so ALPN's `h2` is HTTP/2 end to end.
    let mock = mock_upstream::start(Shape::Envelope).await;
    let front = pki::tls_front_with_alpn(mock.addr, &ca.server(), None, &[b"h2"]).await;
    let proxy = proxy_trusting(&front, &ca, &dir, "envelope").await;
    let head = Request::head(format!("http://{}/v1/models", proxy.addr))
        .header("x-mock-fixture", "envelope/models.json")
        .header("x-mock-status", "200")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, harness::client().request(head))
        .await
        .expect("response within the wait bound")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let upstream = mock.state.last_request().expect("HEAD went upstream");
    assert_eq!(upstream.version, Version::HTTP_2);
    // The upstream's length is its envelope's, not the bare body's a GET gets.
    assert_eq!(
        response.headers().get("content-length"),
        None,
        "{:?}",
        response.headers()
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(body.is_empty());
    // The same route's GET: the bare payload, with its own length.
    let reply = plain_get(proxy.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_wrong_upstream_ca_is_a_502_in_the_clients_dialect_naming_the_tls_error() {
    let dir = TempDir::new("tls-wrong");
    let (_mock, front) = https_upstream(&TestCa::new("the real CA"), None).await;
    let other = TestCa::new("another CA").write(&dir.0, "other.pem");
    let proxy = start_proxy(
        &upstream_url(&front),
        "bare",
        &["--upstream-ca", other.to_str().unwrap()],
    )
    .await;
    let message = "upstream TLS handshake failed: invalid peer certificate: UnknownIssuer";

    let bare = plain_get(proxy.addr, "/v1/models").await;
    assert_eq!(bare.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        bare.json(),
        json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_tls_error"}})
    );
    let envelope = plain_get(proxy.addr, "/api/v1/models").await;
    assert_eq!(envelope.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        envelope.json(),
        json!({"success": false, "code": "502", "message": message, "data": null,
               "error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_tls_error"}})
    );
    let metrics = plain_get(proxy.addr, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"envelope_proxy_upstream_errors_total{kind="tls"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_upstream_client_certificate_is_presented_for_mtls() {
    let dir = TempDir::new("tls-mtls");
    let ca = TestCa::new("upstream CA");
    let client_ca = TestCa::new("client CA");
    let (mock, front) = https_upstream(&ca, Some(&client_ca)).await;
    let ca_file = ca.write(&dir.0, "ca.pem");
    let (cert, key) = client_ca.client().write(&dir.0, "client");

    let with_cert = start_proxy(
        &upstream_url(&front),
        "bare",
        &[
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--upstream-client-cert",
            cert.to_str().unwrap(),
            "--upstream-client-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let reply = plain_get(with_cert.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, fixture("bare/models.json"));
    assert_eq!(front.client_certs_seen.load(Ordering::SeqCst), 1);

    // Without the certificate the upstream refuses the connection: a 502, nothing proxied.
    let requests_before = mock.state.requests().len();
    let without = start_proxy(
        &upstream_url(&front),
        "bare",
        &["--upstream-ca", ca_file.to_str().unwrap()],
    )
    .await;
    let reply = plain_get(without.addr, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json()["error"]["code"],
        "upstream_tls_error",
        "{}",
        reply.text()
    );
    assert_eq!(mock.state.requests().len(), requests_before);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_from_credentials_without_dropping_connections() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("tls-reload");
    let credentials = dir.path("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let first_ca = TestCa::new("first CA");
    let first = first_ca.server();
    std::fs::write(credentials.join("tls-cert"), &first.cert_pem).unwrap();
    std::fs::write(credentials.join("tls-key"), &first.key_pem).unwrap();

    let notify = Notify::bind(&dir);
    let socket = notify.path.to_str().unwrap().to_owned();
    let upstream = mock.base_url();
    // No TLS flags: the certificate comes from $CREDENTIALS_DIRECTORY (LoadCredential=).
    let mut proxy = ProxyProcess::spawn(
        &dir,
        BIN,
        &["--listen", "127.0.0.1:0", "--upstream", &upstream],
        &[
            ("NOTIFY_SOCKET", &socket),
            ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
        ],
    );
    let ready = notify.until("READY=1").await;
    let status = field(&ready, "STATUS").unwrap().to_owned();
    assert!(status.starts_with("serving https://"), "{status}");
    let addr = served_tcp_addr(&status);
    let models = format!("https://localhost:{}/v1/models", addr.port());
    let chat = format!("https://localhost:{}/v1/chat/completions", addr.port());

    // A stream in flight on a connection made with the first certificate.
    let old_client = https_client(&first_ca, "http/1.1");
    let request = Request::post(&chat)
        .header("content-type", "application/json")
        .header("x-mock-behaviour", "hold")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[],"stream":true}"#,
        )))
        .unwrap();
    let response = tokio::time::timeout(WAIT, old_client.request(request))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    while !seen.windows(2).any(|w| w == b"\n\n") {
        let frame = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
        if let Ok(data) = frame.unwrap().unwrap().into_data() {
            seen.extend_from_slice(&data);
        }
    }

    // Renew: a certificate from another CA, then SIGHUP.
    let second_ca = TestCa::new("second CA");
    let second = second_ca.server();
    std::fs::write(credentials.join("tls-cert"), &second.cert_pem).unwrap();
    std::fs::write(credentials.join("tls-key"), &second.key_pem).unwrap();
    proxy.signal(Signal::SIGHUP);
    notify.until("RELOADING=1").await;
    let reloaded = notify.until("READY=1").await;
    assert_eq!(field(&reloaded, "STATUS"), Some(status.as_str()));

    let (code, _, body_bytes) = https_get(&https_client(&second_ca, "http/1.1"), &models).await;
    assert_eq!(
        (code, body_bytes),
        (StatusCode::OK, fixture("bare/models.json"))
    );
    let stale = https_client(&first_ca, "http/1.1");
    let request = Request::get(&models).body(Full::new(Bytes::new())).unwrap();
    // New handshakes use the new certificate, which the first CA did not sign.
    let error = tokio::time::timeout(WAIT, stale.request(request))
        .await
        .unwrap()
        .expect_err("the first CA no longer verifies the proxy");
    assert_unknown_issuer(&error);
    // The connection made before the reload carries on to the end of its stream.
    mock.state.release();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    seen.extend_from_slice(&rest);
    assert_eq!(seen.freeze(), fixture("bare/chat_completion_stream.sse"));

    // A broken renewal is refused; the previous certificate stays in use.
    std::fs::write(credentials.join("tls-cert"), "not a certificate").unwrap();
    proxy.signal(Signal::SIGHUP);
    notify.until("RELOADING=1").await;
    let failed = notify.until("READY=1").await;
    assert_eq!(
        field(&failed, "STATUS"),
        Some(format!("{status}; last reload failed (TLS certificate), previous kept").as_str())
    );
    let (code, _, _) = https_get(&https_client(&second_ca, "h2"), &models).await;
    assert_eq!(code, StatusCode::OK);
    let log = proxy.stderr();
    assert!(
        log.contains("reload failed; keeping the previous one")
            && log.contains("no PEM certificate in the file"),
        "{log}"
    );

    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
}
