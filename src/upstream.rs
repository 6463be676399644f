//! The client side: one pooled connection to the configured upstream.
//!
//! hyper-util's pooled client with keep-alive; `https://` upstreams use rustls with ALPN
//! (HTTP/2 when the upstream offers it, else HTTP/1.1), `http://` upstreams HTTP/1.1.
//! Transport failures are classified once here into [`UpstreamError`], which decides the
//! status and message the client sees.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::api_error::ApiError;
use crate::config::Config;

/// The request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamRequestBody = Limited<Incoming>;

type HttpsClient = Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>;

/// A handle to the upstream; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    response_timeout: Duration,
}

impl Upstream {
    /// `tls` comes from [`crate::tls::client_config`] (system roots or `--upstream-ca`).
    pub fn new(config: &Config, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));

        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            client,
            response_timeout: config.response_timeout,
        }
    }

    /// Sends `request` and waits for the response headers, at most `--response-timeout`.
    pub async fn send(
        &self,
        request: Request<UpstreamRequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(UpstreamError::classify(&error)),
            Err(_elapsed) => Err(UpstreamError::ResponseTimeout(self.response_timeout)),
        }
    }
}

/// The error code of [`UpstreamError::ClientBody`]: the client left mid-upload, which the
/// access log and metrics count as a client cancellation.
pub const CLIENT_BODY_INCOMPLETE: &str = "request_body_incomplete";

/// Why the upstream did not produce response headers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Connect(String),
    #[error("upstream connect timed out: {0}")]
    ConnectTimeout(String),
    #[error("upstream TLS handshake failed: {0}")]
    Tls(String),
    #[error("upstream did not send response headers within {}s", .0.as_secs_f64())]
    ResponseTimeout(Duration),
    #[error("request body exceeds the limit")]
    RequestBodyTooLarge,
    /// The client's request body broke off (it left mid-upload): not the upstream's doing.
    #[error("the client's request body ended early: {0}")]
    ClientBody(String),
    #[error("upstream connection failed: {0}")]
    Other(String),
}

impl UpstreamError {
    fn classify(error: &hyper_util::client::legacy::Error) -> Self {
        let chain = describe_chain(error);
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = source {
            if current.is::<LengthLimitError>() {
                return UpstreamError::RequestBodyTooLarge;
            }
            // hyper's User(Body) around the client connection's own error: reading the
            // client's body failed. (Around a LengthLimitError it is the check above.)
            if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
                if hyper_error.is_user()
                    && hyper_error.source().is_some_and(|s| s.is::<hyper::Error>())
                {
                    return UpstreamError::ClientBody(chain);
                }
            }
            // hyper-rustls may hand the rustls error on as it is.
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return UpstreamError::Tls(tls.to_string());
            }
            if let Some(io_error) = current.downcast_ref::<io::Error>() {
                // tokio-rustls hides the rustls error inside an io::Error, and hyper-rustls wraps
                // that in another one; source() skips both, so look inside each layer.
                let mut inner = io_error.get_ref();
                while let Some(layer) = inner {
                    if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
                        return UpstreamError::Tls(tls.to_string());
                    }
                    inner = layer
                        .downcast_ref::<io::Error>()
                        .and_then(io::Error::get_ref);
                }
                if io_error.kind() == io::ErrorKind::TimedOut && error.is_connect() {
                    return UpstreamError::ConnectTimeout(chain);
                }
            }
            source = current.source();
        }
        if error.is_connect() {
            UpstreamError::Connect(chain)
        } else {
            UpstreamError::Other(chain)
        }
    }

    /// What the client is told.
    pub fn to_api_error(&self, max_request_body: u64) -> ApiError {
        let (status, code) = match self {
            UpstreamError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            UpstreamError::Tls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls_error"),
            UpstreamError::Other(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            UpstreamError::ConnectTimeout(_) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout")
            }
            UpstreamError::ResponseTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            UpstreamError::RequestBodyTooLarge => {
                return ApiError::request_too_large(max_request_body)
            }
            UpstreamError::ClientBody(_) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "the request body ended before it was complete",
                )
                .with_code(CLIENT_BODY_INCOMPLETE)
            }
        };
        ApiError::new(status, self.to_string())
            .with_type("upstream_error")
            .with_code(code)
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_) => "timeout",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::RequestBodyTooLarge => "request_too_large",
            UpstreamError::ClientBody(_) => "client_body",
            UpstreamError::Other(_) => "reset",
        }
    }
}

/// The error's chain of causes on one line, without hyper-util's generic wrapper text.
pub fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.join(": ")
}
