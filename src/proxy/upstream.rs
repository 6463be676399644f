//! The client side: the pooled connections to the configured upstream.
//!
//! One hyper-util pooled client with keep-alive per worker thread (`listen/workers.rs`), so a
//! pooled connection is only ever used on the thread that opened it; `https://` upstreams use rustls with ALPN
//! (HTTP/2 when the upstream offers it, else HTTP/1.1), `http://` upstreams HTTP/1.1.
//! `--connect-timeout` bounds the whole connection set-up — DNS, TCP and the TLS handshake —
//! so an upstream that accepts TCP and then stays silent is a connect timeout, not a
//! response timeout. Transport failures are classified once here into [`UpstreamError`]: its
//! `Display` (for the log) keeps every detail of the cause; [`UpstreamError::to_api_error`]
//! decides the status and the message the client sees, which never carry OS error text.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::error::{describe_chain, BoxError};
use crate::error::{ApiError, ErrorCode};

/// The request body sent upstream: the client's body, streamed, with the size limit applied.
pub(crate) type UpstreamRequestBody = Limited<crate::proxy::request_body::ClientBody>;

type HttpsClient = Client<ConnectDeadline<HttpsConnector<HttpConnector>>, UpstreamRequestBody>;

/// A handle to the upstream; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// A connector whose every connection attempt (resolve, connect, TLS handshake) must finish
/// within `limit`; else it fails with an `io::ErrorKind::TimedOut` error.
#[derive(Clone)]
pub(crate) struct ConnectDeadline<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<Uri> for ConnectDeadline<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_elapsed) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection (DNS, TCP and TLS) within {}s",
                        limit.as_secs_f64()
                    ),
                )
                .into()),
            }
        })
    }
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
        let connector = ConnectDeadline {
            inner: connector,
            limit: config.connect_timeout,
        };

        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            client,
            connect_timeout: config.connect_timeout,
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
            Ok(Err(error)) => Err(UpstreamError::classify(&error, self.connect_timeout)),
            Err(_elapsed) => Err(UpstreamError::ResponseTimeout(self.response_timeout)),
        }
    }
}

/// Why the upstream did not produce response headers. `Display` is the log's text, with the
/// full cause; clients get [`UpstreamError::to_api_error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("upstream unreachable: {detail}")]
    Connect {
        /// What the client is told, e.g. "the connection was refused".
        reason: &'static str,
        detail: String,
    },
    #[error("upstream connect timed out after {}s: {detail}", .limit.as_secs_f64())]
    ConnectTimeout { limit: Duration, detail: String },
    #[error("upstream TLS handshake failed: {0}")]
    Tls(String),
    #[error("upstream did not send response headers within {}s", .0.as_secs_f64())]
    ResponseTimeout(Duration),
    #[error("request body exceeds the limit")]
    RequestBodyTooLarge,
    #[error("upstream connection failed: {0}")]
    Other(String),
}

impl UpstreamError {
    fn classify(error: &hyper_util::client::legacy::Error, connect_timeout: Duration) -> Self {
        let chain = describe_chain(error);
        let mut connect_reason = "the connection could not be established";
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = source {
            if current.is::<LengthLimitError>() {
                return UpstreamError::RequestBodyTooLarge;
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
                    return UpstreamError::ConnectTimeout {
                        limit: connect_timeout,
                        detail: chain,
                    };
                }
                if io_error.kind() == io::ErrorKind::ConnectionRefused {
                    connect_reason = "the connection was refused";
                }
            }
            // hyper-util's resolver error has no public type; its text names it.
            if current.to_string().starts_with("dns error") {
                connect_reason = "the host name could not be resolved";
            }
            source = current.source();
        }
        if error.is_connect() {
            UpstreamError::Connect {
                reason: connect_reason,
                detail: chain,
            }
        } else {
            UpstreamError::Other(chain)
        }
    }

    /// What the client is told: the status, a code and a message without OS error details
    /// (those are in the log, from `Display`).
    pub(crate) fn to_api_error(&self, max_request_body: u64) -> ApiError {
        let (code, message) = match self {
            UpstreamError::Connect { reason, .. } => (
                ErrorCode::UpstreamUnreachable,
                format!("upstream unreachable: {reason}"),
            ),
            // The rustls error names the TLS problem (certificate, protocol), no OS detail.
            UpstreamError::Tls(_) => (
                ErrorCode::UpstreamTlsError,
                self.to_string(),
            ),
            UpstreamError::Other(_) => (
                ErrorCode::UpstreamError,
                "upstream connection failed: the upstream closed or reset the connection before answering".to_owned(),
            ),
            UpstreamError::ConnectTimeout { limit, .. } => (
                ErrorCode::UpstreamConnectTimeout,
                format!(
                    "upstream connect timed out: no connection within {}s (--connect-timeout)",
                    limit.as_secs_f64()
                ),
            ),
            UpstreamError::ResponseTimeout(_) => (
                ErrorCode::UpstreamTimeout,
                self.to_string(),
            ),
            UpstreamError::RequestBodyTooLarge => {
                return ApiError::request_too_large(max_request_body)
            }
        };
        ApiError::proxy(code, message)
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout(_) => "timeout",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::RequestBodyTooLarge => "request_too_large",
            UpstreamError::Other(_) => "reset",
        }
    }
}
