//! What both pools of `http://` connections share (`upstream.rs`, `upstream/h2c.rs`): the
//! upstream's address, the TCP connection under the `--connect-timeout` deadline, and
//! [`UpstreamError`], the one classification of transport failures. Its `Display` (for the
//! log) keeps every detail of the cause; [`UpstreamError::to_api_error`] decides the status
//! and the message the client sees, which never carry OS error text.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http_body_util::{LengthLimitError, Limited};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::describe_chain;
use crate::error::{ApiError, ErrorCode};

/// The request body sent upstream: the client's body, streamed, with the size limit applied.
pub(crate) type UpstreamRequestBody = Limited<crate::proxy::request_body::ClientBody>;

/// How long an idle pooled connection is kept (hyper-util's default, kept for `https://`).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most an upstream connection reads at once, and so the largest response head it takes
/// (nginx and haproxy bound theirs by their buffers too). hyper's HTTP/1 client doubles its
/// read buffer while reads fill it, up to this — its default, about 400 KiB, would then stay
/// allocated for the connection's life, as would a client connection's write buffer, which
/// takes each read whole as one body frame.
pub(crate) const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// `host:port` of an `http://` upstream, what its connections are made to.
pub(super) fn address(config: &Config) -> String {
    let authority = &config.upstream.authority;
    let port = authority.port_u16().unwrap_or(80);
    format!("{}:{port}", authority.host())
}

/// Resolve and TCP to `address` by `deadline` (`limit` after the connection attempt began).
pub(super) async fn connect_tcp(
    address: &str,
    deadline: Instant,
    limit: Duration,
) -> Result<TcpStream, UpstreamError> {
    let connecting = async {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(stream)
    };
    match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => {
            let reason = match error.kind() {
                io::ErrorKind::ConnectionRefused => "the connection was refused",
                // getaddrinfo's failures have no kind of their own.
                _ if error.to_string().contains("lookup") => "the host name could not be resolved",
                _ => "the connection could not be established",
            };
            Err(UpstreamError::Connect {
                reason,
                detail: format!("{address}: {error}"),
            })
        }
        Err(_elapsed) => Err(UpstreamError::ConnectTimeout {
            limit,
            detail: format!(
                "no connection (DNS and TCP) to {address} within {}s",
                limit.as_secs_f64()
            ),
        }),
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
    /// The response head did not fit in [`UPSTREAM_READ_BUFFER`].
    #[error("upstream response head exceeds the read buffer: {0}")]
    HeadTooLarge(String),
    /// h2 refused the upstream's HTTP/2 frames (a protocol error, an oversized header list).
    #[error("upstream broke the HTTP/2 protocol: {0}")]
    Http2Protocol(String),
    /// `--upstream-http2`, and the upstream answered the preface in HTTP/1.
    #[error("upstream does not speak HTTP/2: {0}")]
    NotHttp2(String),
    #[error("upstream did not send response headers within {}s", .0.as_secs_f64())]
    ResponseTimeout(Duration),
    #[error("request body exceeds the limit")]
    RequestBodyTooLarge,
    #[error("upstream connection failed: {0}")]
    Other(String),
}

impl UpstreamError {
    pub(super) fn classify(
        error: &(dyn StdError + 'static),
        is_connect: bool,
        connect_timeout: Duration,
    ) -> Self {
        let chain = describe_chain(error);
        let mut connect_reason = "the connection could not be established";
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = source {
            if current.is::<LengthLimitError>() {
                return UpstreamError::RequestBodyTooLarge;
            }
            // The head filled the read buffer (HTTP/1.1).
            if current
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse_too_large)
            {
                return UpstreamError::HeadTooLarge(chain);
            }
            // h2 gave the stream or the connection up itself: the upstream broke the protocol
            // (a header list over the limit is one such break: h2 names no cause finer than a
            // protocol error or "too many continuations").
            if current
                .downcast_ref::<h2::Error>()
                .is_some_and(h2::Error::is_library)
            {
                return UpstreamError::Http2Protocol(chain);
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
                if io_error.kind() == io::ErrorKind::TimedOut && is_connect {
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
        if is_connect {
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
            UpstreamError::HeadTooLarge(_) => (
                ErrorCode::UpstreamInvalidResponse,
                format!(
                    "upstream response head is larger than {} KiB, the most the proxy reads",
                    UPSTREAM_READ_BUFFER / 1024
                ),
            ),
            UpstreamError::Http2Protocol(_) => (
                ErrorCode::UpstreamInvalidResponse,
                format!(
                    "upstream broke the HTTP/2 protocol in its response (a frame it may not send, or a header list larger than {} KiB)",
                    UPSTREAM_READ_BUFFER / 1024
                ),
            ),
            UpstreamError::NotHttp2(_) => (
                ErrorCode::UpstreamInvalidResponse,
                "upstream answered in HTTP/1.1: with --upstream-http2 it must speak HTTP/2 with prior knowledge (h2c)".to_owned(),
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
            UpstreamError::HeadTooLarge(_)
            | UpstreamError::Http2Protocol(_)
            | UpstreamError::NotHttp2(_) => "invalid_body",
            UpstreamError::Other(_) => "reset",
        }
    }
}
