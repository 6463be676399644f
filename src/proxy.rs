//! The request path: route → upstream request → send → response path.
//!
//! [`Proxy::handle`] never fails: every problem becomes a response in the client's dialect
//! (404 unknown path, 413 body too large, 502 unreachable or broken upstream, 504 timeouts).

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Limited;
use hyper::body::Incoming;

use crate::api_error::ApiError;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::dialect::{route, Dialect, Route};
use crate::headers;
use crate::sse::{EventMode, StreamSettings};
use crate::translate::{self, error_response, Exchange};
use crate::upstream::Upstream;

/// Where a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// "http" or "https", for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

/// Shared by every connection.
pub struct Proxy {
    config: Arc<Config>,
    upstream: Upstream,
}

impl Proxy {
    pub fn new(config: Arc<Config>) -> std::io::Result<Self> {
        let upstream = Upstream::new(&config)?;
        Ok(Self { config, upstream })
    }

    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        match route(request.uri().path()) {
            Route::Healthz => healthz(),
            Route::Unknown => unknown_route(&request),
            Route::Proxy {
                client: dialect,
                rest,
            } => {
                let rest = rest.to_owned();
                self.forward(request, dialect, &rest, client).await
            }
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        dialect: Dialect,
        rest: &str,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        let config = &self.config;
        let exchange = Exchange {
            client: dialect,
            upstream: config.upstream_shape,
            head: request.method() == Method::HEAD,
            max_response_body: config.max_response_body,
            stream: StreamSettings {
                mode: EventMode::select(dialect, config.upstream_shape, config.stream_envelope),
                client: dialect,
                upstream: config.upstream_shape,
                // Only (chat) completions promise `[DONE]`.
                require_done: config.require_done && rest.ends_with("completions"),
                idle_timeout: config.stream_idle_timeout,
                keepalive: (!config.sse_keepalive.is_zero()).then_some(config.sse_keepalive),
                max_event_bytes: config.max_sse_event,
            },
        };
        if let Some(length) = declared_length(&request) {
            if length > config.max_request_body {
                return error_response(
                    dialect,
                    &ApiError::request_too_large(config.max_request_body),
                    None,
                );
            }
        }

        let (mut parts, body) = request.into_parts();
        let uri = match config.upstream.join(rest, parts.uri.query()) {
            Ok(uri) => uri,
            Err(_) => {
                let error =
                    ApiError::new(StatusCode::BAD_REQUEST, "request path is not a valid URI");
                return error_response(dialect, &error, None);
            }
        };
        headers::prepare_upstream_request(
            &mut parts.headers,
            client.ip,
            client.proto,
            exchange.translates(),
        );
        parts.uri = uri;
        // The upstream connection picks its own HTTP version (ALPN or HTTP/1.1).
        parts.version = http::Version::HTTP_11;
        let upstream_request =
            Request::from_parts(parts, Limited::new(body, config.max_request_body as usize));

        match self.upstream.send(upstream_request).await {
            Ok(response) => translate::respond(&exchange, response).await,
            Err(error) => {
                tracing::warn!(kind = error.kind(), %error, "upstream request failed");
                error_response(dialect, &error.to_api_error(config.max_request_body), None)
            }
        }
    }
}

fn healthz() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(bytes::Bytes::from_static(b"ok\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn unknown_route<B>(request: &Request<B>) -> Response<ProxyBody> {
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "Unknown path: {} {}. envelope-proxy serves /v1/… (bare dialect) and /api/v1/… (envelope dialect).",
            request.method(),
            request.uri().path()
        ),
    )
    .with_type("invalid_request_error")
    .with_code("unknown_route");
    error_response(Dialect::Bare, &error, None)
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
