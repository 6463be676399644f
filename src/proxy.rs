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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api_error::ApiError;
use crate::auth::{self, ClientKeys, KeyError, UpstreamKey};
use crate::body::{Held, ProxyBody};
use crate::config::Config;
use crate::dialect::{route, Dialect, Route};
use crate::headers;
use crate::request_target;
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
    client_keys: Option<ClientKeys>,
    upstream_key: Option<UpstreamKey>,
    /// One permit per request in flight (streams hold theirs until they end).
    in_flight: Arc<Semaphore>,
}

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream client: {0}")]
    Upstream(#[from] std::io::Error),
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
}

/// A request's response, holding its concurrency permit until the body is done.
pub type ProxyResponse = Response<Held<ProxyBody, Option<OwnedSemaphorePermit>>>;

impl Proxy {
    pub fn new(config: Arc<Config>) -> Result<Self, SetupError> {
        let upstream = Upstream::new(&config)?;
        let client_keys = auth::resolve_key_file(
            config.api_keys_file.as_deref(),
            auth::CLIENT_KEYS_CREDENTIAL,
        )
        .map(|path| ClientKeys::load(&path))
        .transpose()?;
        let upstream_key = auth::resolve_key_file(
            config.upstream_api_key_file.as_deref(),
            auth::UPSTREAM_KEY_CREDENTIAL,
        )
        .map(|path| UpstreamKey::load(&path))
        .transpose()?;
        let in_flight = Arc::new(Semaphore::new(config.max_concurrent_requests));
        Ok(Self {
            config,
            upstream,
            client_keys,
            upstream_key,
            in_flight,
        })
    }

    /// Re-reads the key files (SIGHUP). A file that fails keeps its old keys; the error says why.
    pub fn reload_keys(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        if let Some(keys) = &self.client_keys {
            match keys.reload() {
                Ok(count) => tracing::info!(keys = count, "client keys reloaded"),
                Err(error) => errors.push(error),
            }
        }
        if let Some(key) = &self.upstream_key {
            match key.reload() {
                Ok(()) => tracing::info!("upstream key reloaded"),
                Err(error) => errors.push(error),
            }
        }
        errors
    }

    pub async fn handle(&self, request: Request<Incoming>, client: ClientInfo) -> ProxyResponse {
        let path = request.uri().path();
        let checked =
            request_target::check_target(request.method(), request.uri(), request.version());
        if let Err(error) = checked {
            return unheld(error_response(dialect_of(path), &error, None));
        }
        match route(path) {
            Route::Healthz => unheld(healthz()),
            Route::Unknown => unheld(unknown_route(&request)),
            Route::Proxy {
                client: dialect,
                rest,
            } => {
                if let Err(error) = request_target::check_path(path) {
                    return unheld(error_response(dialect, &error, None));
                }
                if let Some(keys) = &self.client_keys {
                    if !keys.allows(request.headers()) {
                        return unheld(unauthorized(dialect));
                    }
                }
                let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                    return unheld(overloaded(dialect));
                };
                let rest = rest.to_owned();
                let response = self.forward(request, dialect, &rest, client).await;
                response.map(|body| Held::new(body, Some(permit)))
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
            deadline: Instant::now() + config.request_timeout,
            request_timeout: config.request_timeout,
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
        if let Some(key) = &self.upstream_key {
            key.apply(&mut parts.headers);
        }
        let upstream_request =
            Request::from_parts(parts, Limited::new(body, config.max_request_body as usize));

        let sent = tokio::time::timeout_at(exchange.deadline, self.upstream.send(upstream_request));
        match sent.await {
            Ok(Ok(response)) => translate::respond(&exchange, response).await,
            Ok(Err(error)) => {
                tracing::warn!(kind = error.kind(), %error, "upstream request failed");
                error_response(dialect, &error.to_api_error(config.max_request_body), None)
            }
            Err(_elapsed) => {
                error_response(dialect, &deadline_exceeded(config.request_timeout), None)
            }
        }
    }
}

/// A response that holds no permit (answered by the proxy itself).
fn unheld(response: Response<ProxyBody>) -> ProxyResponse {
    response.map(|body| Held::new(body, None))
}

/// The dialect a path asks for, for refusals issued before routing.
fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/api/") {
        Dialect::Envelope
    } else {
        Dialect::Bare
    }
}

fn unauthorized(dialect: Dialect) -> Response<ProxyBody> {
    let error = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Missing or invalid API key: send `Authorization: Bearer <key>` with a key this proxy accepts.",
    )
    .with_code("invalid_api_key");
    let mut response = error_response(dialect, &error, None);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn overloaded(dialect: Dialect) -> Response<ProxyBody> {
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "envelope-proxy is at its concurrent request limit (--max-concurrent-requests); retry shortly",
    )
    .with_code("proxy_overloaded");
    let mut response = error_response(dialect, &error, None);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

pub(crate) fn deadline_exceeded(limit: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the request did not complete within {}s (--request-timeout)",
            limit.as_secs_f64()
        ),
    )
    .with_type("upstream_error")
    .with_code("request_timeout")
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
