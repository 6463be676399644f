//! The request path: request id → route → checks → upstream request → send → response path.
//!
//! [`Proxy::handle`] does everything before the upstream at once, without a future, and
//! [`Proxy::forwarded`] runs the exchange of a request it let through. Neither fails: every
//! problem becomes a response in the client's dialect
//! (400/431/501 refused targets and heads, 400 a broken upload, 404 unknown path, 413 body too
//! large, 502 unreachable or broken upstream, 504 timeouts).
//! It also answers the operational endpoints (`/healthz`, `/readyz`, `/metrics`) on the
//! listener that serves them, and attaches a [`RequestRecord`] to every other response, so
//! the access log and the metrics see how each request ends.
//!
//! In order along a request: `request_id`, then (this file) the route and the checks —
//! `request_target`, `request_head`, `auth` (client keys), the concurrency permit — then
//! `forward` (the upstream request, with `request_body` watching the client's upload and
//! `upstream` the client pool), and `response_body`, the guard every response is sent in.

mod auth;
mod forward;
mod request_body;
mod request_head;
mod request_id;
mod request_target;
pub(crate) mod response_body;
pub(crate) mod upstream;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialect::{self, route, Dialect, Route};
use crate::headers::{Present, TRACEPARENT};
use crate::ops::access_log::{self, RequestRecord};
use crate::ops::credentials;
use crate::ops::metrics::{self, Metrics};
use crate::ops::reload::Reloadable;
use crate::translate::body::ProxyBody;
use crate::translate::synthetic::{
    error_response, overloaded, text_response, unauthorized, unknown_route, Limit,
};
use crate::translate::template::Envelopes;
use auth::{ClientKeys, KeyError, UpstreamKey};
use request_id::X_REQUEST_ID;
use response_body::{observed, unobserved, ResponseBody};
use upstream::Upstream;

/// Where a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientInfo {
    /// `None` on a Unix socket.
    pub ip: Option<IpAddr>,
    /// "http" or "https", for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The worker thread serving the connection: its requests use that worker's upstream pool,
    /// whose connections live on the same thread.
    pub worker: usize,
}

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `--listen`: proxied routes, plus health and metrics unless `--admin-listen` is set.
    Public,
    /// `--admin-listen`: `/healthz`, `/readyz`, `/metrics` only.
    Admin,
}

/// Shared by every connection.
pub struct Proxy {
    config: Arc<Config>,
    /// One per worker thread (see [`ClientInfo::worker`]); never empty.
    upstreams: Box<[Upstream]>,
    client_keys: Option<ClientKeys>,
    upstream_key: Option<UpstreamKey>,
    /// One permit per request in flight (streams hold theirs until they end).
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Cancelled when the shutdown grace period runs out.
    cut: CancellationToken,
    /// The envelopes of both sides, built once from the config.
    envelopes: Envelopes,
}

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error("no upstream client was built")]
    NoUpstream,
    #[error("{0}")]
    Envelope(String),
}

/// A request's response: observed for the access log and metrics, holding its concurrency
/// permit until the body is done.
pub(crate) type ProxyResponse = Response<ResponseBody>;

/// What [`Proxy::handle`] made of a request: its answer, or a request that passed every check
/// and waits for its upstream exchange ([`Proxy::forwarded`]).
pub(crate) enum Handled {
    Answered(ProxyResponse),
    Forward(Forward),
}

/// What [`Proxy::handle`] learnt of a request's head before routing it.
#[derive(Clone, Copy)]
struct Sent<'a> {
    /// How many header fields the client sent (before the proxy's own `x-request-id`).
    fields: usize,
    /// Which of the fields the proxy acts on the client sent.
    present: Present,
    request_id: &'a HeaderValue,
}

/// A proxied request past its route, checks, client key and permit: what the upstream
/// exchange needs, held by value so that the exchange's future is the only one that waits.
pub(crate) struct Forward {
    request: Request<Incoming>,
    dialect: Dialect,
    /// Where the path below the dialect's prefix starts (`Route::Proxy`'s `rest`).
    rest_at: usize,
    client: ClientInfo,
    request_id: HeaderValue,
    /// Which of the fields the proxy acts on the client sent.
    present: Present,
    record: RequestRecord,
    permit: OwnedSemaphorePermit,
}

impl Proxy {
    pub(crate) fn new(
        config: Arc<Config>,
        upstreams: Vec<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        if upstreams.is_empty() {
            return Err(SetupError::NoUpstream);
        }
        let client_keys = credentials::flag_or_credential(
            config.api_keys_file.as_deref(),
            credentials::CLIENT_KEYS_CREDENTIAL,
        )
        .map(|path| ClientKeys::load(&path))
        .transpose()?;
        let upstream_key = credentials::flag_or_credential(
            config.upstream_api_key_file.as_deref(),
            credentials::UPSTREAM_KEY_CREDENTIAL,
        )
        .map(|path| UpstreamKey::load(&path))
        .transpose()?;
        let envelopes = config.envelopes().map_err(SetupError::Envelope)?;
        let in_flight = Arc::new(Semaphore::new(config.max_concurrent_requests));
        Ok(Self {
            envelopes,
            config,
            upstreams: upstreams.into_boxed_slice(),
            client_keys,
            upstream_key,
            in_flight,
            metrics,
            draining: AtomicBool::new(false),
            cut: CancellationToken::new(),
        })
    }

    /// True when key files are in use (and so worth reloading on SIGHUP).
    pub(crate) fn has_key_files(&self) -> bool {
        self.client_keys.is_some() || self.upstream_key.is_some()
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

    /// The envelopes of both sides (for answers given outside `handle`).
    pub(crate) fn envelopes(&self) -> &Envelopes {
        &self.envelopes
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// From now on `/readyz` answers 503.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The grace period is over: open streams end with a `shutting_down` error event and
    /// requests still waiting for the upstream get a 503.
    pub(crate) fn cut_remaining(&self) {
        self.cut.cancel();
    }

    /// Everything a request needs before the upstream, at once: the request id, the route and
    /// the checks, the client key and the concurrency permit. Never fails: every problem is an
    /// answer in the client's dialect. Done outside any future, so that a proxied request's
    /// only future is its exchange ([`Proxy::forwarded`]), moved and allocated once.
    pub(crate) fn handle(
        &self,
        mut request: Request<Incoming>,
        client: ClientInfo,
        role: Role,
    ) -> Handled {
        // Counted before the proxy adds its own `x-request-id` (`--max-headers` is the client's).
        let fields = request.headers().len();
        let present = Present::of(request.headers());
        let request_id = request_id::ensure(request.headers_mut(), present.x_request_id);
        let sent = Sent {
            fields,
            present,
            request_id: &request_id,
        };
        match self.dispatch(request, sent, client, role) {
            Handled::Answered(response) => Handled::Answered(with_request_id(response, request_id)),
            forward => forward,
        }
    }

    fn dispatch(
        &self,
        request: Request<Incoming>,
        sent: Sent<'_>,
        client: ClientInfo,
        role: Role,
    ) -> Handled {
        let path = request.uri().path();
        // Before routing: `//v1/models` is a bad path, not an unknown route; a head with too
        // many fields, a foreign transfer coding or two `Authorization`s is refused everywhere.
        let checked =
            request_target::check_target(request.method(), request.uri(), request.version())
                .and_then(|()| request_target::check_path(path))
                .and_then(|()| {
                    request_head::check_head(
                        request.headers(),
                        sent.present,
                        sent.fields,
                        self.config.max_headers,
                    )
                });
        if let Err(error) = checked {
            let mut record = self.record(&request, sent);
            if let Route::Proxy { client, .. } = route(path) {
                record.set_client(client);
            }
            return Handled::Answered(observed(
                error_response(dialect::asked_by(path), &self.envelopes, &error, None),
                record,
            ));
        }
        // The operational endpoints live on the admin listener when there is one.
        let operational = match role {
            Role::Admin => true,
            Role::Public => self.config.admin_listen.is_none(),
        };
        let response = match route(path) {
            Route::Healthz if operational => unobserved(text_response(StatusCode::OK, "ok\n")),
            Route::Readyz if operational => unobserved(self.readyz()),
            Route::Metrics if operational => {
                if may_read_metrics(&request, role, self.client_keys.as_ref()) {
                    unobserved(self.metrics_response())
                } else {
                    unobserved(unauthorized(Dialect::Bare, &self.envelopes))
                }
            }
            Route::Proxy {
                client: dialect,
                rest,
            } if role == Role::Public => {
                let rest_at = path.len() - rest.len();
                return self.proxied(request, dialect, rest_at, client, sent);
            }
            _ => {
                let record = self.record(&request, sent);
                observed(
                    unknown_route(request.method(), request.uri().path()),
                    record,
                )
            }
        };
        Handled::Answered(response)
    }

    /// A proxied route: no trailing slash, client key, concurrency permit; then it is ready
    /// for the upstream.
    fn proxied(
        &self,
        request: Request<Incoming>,
        dialect: Dialect,
        rest_at: usize,
        client: ClientInfo,
        sent: Sent<'_>,
    ) -> Handled {
        let mut record = self.record(&request, sent);
        record.set_client(dialect);
        let refused = if let Err(error) = request_target::check_proxied_path(request.uri().path()) {
            error_response(dialect, &self.envelopes, &error, None)
        } else if !self
            .client_keys
            .as_ref()
            .is_none_or(|keys| keys.allows(request.headers()))
        {
            unauthorized(dialect, &self.envelopes)
        } else {
            match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => {
                    return Handled::Forward(Forward {
                        request,
                        dialect,
                        rest_at,
                        client,
                        request_id: sent.request_id.clone(),
                        present: sent.present,
                        record,
                        permit,
                    })
                }
                Err(_) => overloaded(dialect, &self.envelopes, Limit::ConcurrentRequests),
            }
        };
        Handled::Answered(observed(refused, record))
    }

    fn record<B>(&self, request: &Request<B>, sent: Sent<'_>) -> RequestRecord {
        let mut record = RequestRecord::start(
            Arc::clone(&self.metrics),
            sent.request_id.clone(),
            request.method(),
            request.uri().path(),
            self.config.upstream_shape,
        );
        record.set_cut(self.cut.clone());
        // Logged only; the header itself is forwarded upstream as it came.
        if sent.present.traceparent {
            record.set_trace_id(access_log::trace_id(request.headers().get(TRACEPARENT)));
        }
        record
    }

    /// After the remaining connections were dropped: waits (at most `limit`) until every
    /// request has written its access-log line on its worker, so none is lost at exit.
    pub(crate) async fn records_settled(&self, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        while self.metrics.active_requests() > 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
}

/// The upstream's own `x-request-id`, when it sent one, is what the SDKs report; else ours.
fn with_request_id(mut response: ProxyResponse, request_id: HeaderValue) -> ProxyResponse {
    // One lookup for the test and the insertion.
    response
        .headers_mut()
        .entry(X_REQUEST_ID)
        .or_insert(request_id);
    response
}

/// The single place that decides who may read `/metrics` on a listener.
/// (The public listener will ask for a client key here once inbound keys exist.)
/// `/metrics` is open on the admin listener; on the public one it needs a client key when
/// keys are configured (issue: security, access control).
fn may_read_metrics<B>(request: &Request<B>, role: Role, keys: Option<&ClientKeys>) -> bool {
    match (role, keys) {
        (Role::Admin, _) | (Role::Public, None) => true,
        (Role::Public, Some(keys)) => keys.allows(request.headers()),
    }
}

/// SIGHUP re-reads the key files through the reload registry.
impl Reloadable for Proxy {
    fn name(&self) -> &'static str {
        "API key files"
    }

    fn reload(&self) -> Result<(), String> {
        let errors: Vec<String> = self.reload_keys().iter().map(ToString::to_string).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}
