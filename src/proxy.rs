//! The request path: route → upstream request → send → response path.
//!
//! [`Proxy::handle`] never fails: every problem becomes a response in the client's dialect
//! (404 unknown path, 413 body too large, 502 unreachable or broken upstream, 504 timeouts).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::access_log::{ObservedBody, RequestRecord};
use crate::api_error::ApiError;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::dialect::{route, Dialect, Route};
use crate::headers;
use crate::metrics::{self, Metrics};
use crate::request_id::{self, X_REQUEST_ID};
use crate::sse::{EventMode, StreamSettings};
use crate::translate::{self, error_response, ErrorCode, Exchange, Translated};
use crate::upstream::Upstream;

/// Where a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// `None` on a Unix socket.
    pub ip: Option<IpAddr>,
    /// "http" or "https", for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--listen`: proxied routes, plus health and metrics unless `--admin-listen` is set.
    Public,
    /// `--admin-listen`: `/healthz`, `/readyz`, `/metrics` only.
    Admin,
}

/// Response extension: the status the upstream answered with.
#[derive(Debug, Clone, Copy)]
struct UpstreamStatus(StatusCode);

/// Shared by every connection.
pub struct Proxy {
    config: Arc<Config>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Cancelled when the shutdown grace period runs out.
    cut: CancellationToken,
}

impl Proxy {
    pub fn new(config: Arc<Config>, upstream: Upstream, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            upstream,
            metrics,
            draining: AtomicBool::new(false),
            cut: CancellationToken::new(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// From now on `/readyz` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The grace period is over: open streams end with a `shutting_down` error event and
    /// requests still waiting for the upstream get a 503.
    pub fn cut_remaining(&self) {
        self.cut.cancel();
    }

    /// Serves one request; never fails (every problem is a response in the client's dialect).
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        client: ClientInfo,
        role: Role,
    ) -> Response<ObservedBody> {
        let request_id = request_id::ensure(request.headers_mut());
        // The operational endpoints live on the admin listener when there is one.
        let operational = match role {
            Role::Admin => true,
            Role::Public => self.config.admin_listen.is_none(),
        };
        let route = route(request.uri().path());
        let mut response = match route {
            Route::Healthz if operational => unobserved(text_response(StatusCode::OK, "ok\n")),
            Route::Readyz if operational => unobserved(self.readyz()),
            Route::Metrics if operational && may_read_metrics(&request, role) => {
                unobserved(self.metrics_response())
            }
            Route::Proxy {
                client: dialect,
                rest,
            } if role == Role::Public => {
                let rest = rest.to_owned();
                let mut record = self.record(&request, &request_id);
                record.set_client(dialect);
                let response = self
                    .forward(request, dialect, &rest, client, &request_id)
                    .await;
                observed(response, record)
            }
            _ => {
                let record = self.record(&request, &request_id);
                observed(unknown_route(&request), record)
            }
        };
        // The upstream's own id, when it sent one, is what the SDKs report; else ours.
        if !response.headers().contains_key(&X_REQUEST_ID) {
            response.headers_mut().insert(X_REQUEST_ID, request_id);
        }
        response
    }

    fn record<B>(&self, request: &Request<B>, request_id: &HeaderValue) -> RequestRecord {
        RequestRecord::start(
            Arc::clone(&self.metrics),
            request_id.clone(),
            request.method(),
            request.uri().path(),
            self.config.upstream_shape,
        )
    }

    fn readyz(&self) -> Response<ProxyBody> {
        if self.draining.load(Ordering::SeqCst) {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else {
            text_response(StatusCode::OK, "ready\n")
        }
    }

    fn metrics_response(&self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.metrics.render().into()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        dialect: Dialect,
        rest: &str,
        client: ClientInfo,
        request_id: &HeaderValue,
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
            cut: self.cut.clone(),
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

        let sent = tokio::select! {
            sent = self.upstream.send(upstream_request) => sent,
            () = self.cut.cancelled() => return error_response(dialect, &shutting_down(), None),
        };
        match sent {
            Ok(response) => {
                let status = response.status();
                let mut response = translate::respond(&exchange, response).await;
                response.extensions_mut().insert(UpstreamStatus(status));
                response
            }
            Err(error) => {
                let request_id = request_id.to_str().unwrap_or("-");
                tracing::warn!(request_id, kind = error.kind(), %error, "upstream request failed");
                error_response(dialect, &error.to_api_error(config.max_request_body), None)
            }
        }
    }
}

/// The single place that decides who may read `/metrics` on a listener.
/// (The public listener will ask for a client key here once inbound keys exist.)
fn may_read_metrics<B>(_request: &Request<B>, _role: Role) -> bool {
    true
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the proxy is shutting down; retry the request",
    )
    .with_type("server_error")
    .with_code("shutting_down")
}

fn unobserved(response: Response<ProxyBody>) -> Response<ObservedBody> {
    response.map(|body| ObservedBody::new(body, None))
}

/// Attaches the request's record to its response, with what the response says about itself.
fn observed(
    mut response: Response<ProxyBody>,
    mut record: RequestRecord,
) -> Response<ObservedBody> {
    let extensions = response.extensions_mut();
    let upstream_status = extensions.remove::<UpstreamStatus>().map(|s| s.0.as_u16());
    let error_code = extensions.remove::<ErrorCode>().map(|c| c.0);
    let translated = extensions.remove::<Translated>().is_some();
    record.set_response(
        response.status().as_u16(),
        upstream_status,
        error_code,
        translated,
        response.body().is_stream(),
    );
    response.map(|body| ObservedBody::new(body, Some(record)))
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(bytes::Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
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
