//! Test harness: a mock upstream, envelope-proxy in front of it, and a plain HTTP client.
//!
//! Everything binds `127.0.0.1:0`; the proxy is configured through its real command line.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use envelope_proxy::{Config, RunningServer};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::mock_upstream::{self, MockUpstream, Shape};

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub mock: MockUpstream,
    pub proxy: RunningServer,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    /// Forgets the client's pooled connections: for a test whose proxy closes idle
    /// connections sooner than a reused one would be written to.
    pub fn fresh_client(&mut self) {
        self.client = client();
    }
}

/// Starts a mock upstream of `shape` and a proxy in front of it with `--upstream-shape shape`
/// and any `extra` flags.
pub async fn start(shape: Shape, extra: &[&str]) -> Harness {
    let mock = mock_upstream::start(shape).await;
    let shape_flag = match shape {
        Shape::Bare => "bare",
        Shape::Envelope => "envelope",
    };
    let proxy = start_proxy(&mock.base_url(), shape_flag, extra).await;
    Harness {
        mock,
        proxy,
        client: client(),
    }
}

pub async fn start_proxy(upstream: &str, shape: &str, extra: &[&str]) -> RunningServer {
    let mut args = vec![
        "envelope-proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--upstream-shape",
        shape,
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).expect("valid test flags");
    RunningServer::start(config).await.expect("proxy starts")
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A finished response, body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

/// A request to the proxy, built up fluently.
pub struct Call<'a> {
    harness: &'a Harness,
    request: Request<Full<Bytes>>,
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.addr, path)
    }

    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = method;
        *request.uri_mut() = self.url(path).parse().expect("valid test URI");
        Call {
            harness: self,
            request,
        }
    }

    pub fn get(&self, path: &str) -> Call<'_> {
        self.call(Method::GET, path)
    }

    /// POST a chat completion request (`stream` as given).
    pub fn chat(&self, path: &str, stream: bool) -> Call<'_> {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}],"stream":{stream}}}"#
        );
        self.call(Method::POST, path).json(body)
    }
}

impl Call<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
        self
    }

    /// Serve `fixture` (a path under fixtures/) with `status`.
    pub fn fixture(self, fixture: &str, status: u16) -> Self {
        self.header("x-mock-fixture", fixture)
            .header("x-mock-status", &status.to_string())
    }

    pub fn json(mut self, body: impl Into<Bytes>) -> Self {
        *self.request.body_mut() = Full::new(body.into());
        self.request
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        *self.request.body_mut() = Full::new(body.into());
        self
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn open(self) -> Response<Incoming> {
        tokio::time::timeout(WAIT, self.harness.client.request(self.request))
            .await
            .expect("response headers within the wait bound")
            .expect("request reaches the proxy")
    }

    /// Sends and reads the whole body.
    pub async fn send(self) -> Reply {
        let response = self.open().await;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("body within the wait bound")
            .expect("body completes")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// The bytes of a fixture file.
pub fn fixture(path: &str) -> Bytes {
    let full = mock_upstream::MockState::fixtures_dir().join(path);
    Bytes::from(std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display())))
}

/// The fixture parsed as JSON.
pub fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).expect("fixture is JSON")
}

/// What is left of an event stream the proxy ended with an error event: read to its end
/// (within [`WAIT`]), it must be exactly one `data: <JSON>` event; the JSON.
pub async fn last_error_event(body: Incoming) -> Value {
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the stream ends within the wait bound")
        .expect("the proxy ends the stream cleanly, with an error event")
        .to_bytes();
    let text = std::str::from_utf8(&rest).expect("UTF-8");
    let event = text
        .strip_prefix("data: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one error event: {text:?}"));
    serde_json::from_str(event).expect("JSON event")
}

/// `{"success":true,"code":"200","message":"successful","data":<payload>}` as bytes.
pub fn wrapped(payload: &[u8]) -> Vec<u8> {
    let mut out = br#"{"success":true,"code":"200","message":"successful","data":"#.to_vec();
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// `body` percent-encoded for `x-mock-body-pct` (every byte but ASCII letters and digits), so
/// that any bytes can be the mock's body.
pub fn pct(body: &[u8]) -> String {
    body.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The proxy's `envelope_proxy_tokens_total` lines, sorted, once they are `expected` or when
/// [`WAIT`] has passed (for the caller to compare): a response's usage is counted when its body
/// is done, which may follow the reply's end.
pub async fn token_series(h: &Harness, expected: &[&str]) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metrics = h.get("/metrics").send().await.text();
        let mut tokens: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("envelope_proxy_tokens_total{"))
            .map(str::to_owned)
            .collect();
        tokens.sort();
        if tokens == expected || std::time::Instant::now() > deadline {
            return tokens;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
