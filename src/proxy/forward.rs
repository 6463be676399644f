//! The upstream exchange ([`Proxy::forwarded`]): the upstream request made from the client's
//! (target, forwarding headers, the upstream key, the body limit), sent within the request
//! deadline, and its response handed to `translate` for the client's dialect, observed for the
//! access log. It is a request's only future, in one layer: each `async fn` awaited inside
//! another adds its state to the box every request allocates, and moves it once more.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Limited;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::headers;
use crate::translate::body::ProxyBody;
use crate::translate::sse::{EventMode, StreamSettings};
use crate::translate::synthetic::{broken_request_body, shutting_down};
use crate::translate::{self, Exchange};

use super::request_body::ClientBody;
use super::response_body::observed_holding;
use super::upstream::UpstreamError;
use super::{auth, with_request_id, Forward, Proxy, ProxyResponse};

impl Proxy {
    /// The upstream exchange of a request [`Proxy::handle`] let through, and its response.
    /// `finish` makes the response what the caller hands on: it runs inside this future, so
    /// the caller needs no future of its own around it (one layer less to allocate and move).
    pub(crate) async fn forwarded<R>(
        self: Arc<Self>,
        forward: Forward,
        finish: impl FnOnce(ProxyResponse) -> R,
    ) -> R {
        let Forward {
            request,
            dialect,
            rest_at,
            client,
            request_id,
            present,
            mut record,
            permit,
        } = forward;
        let config = &self.config;
        let response = 'answer: {
            let exchange = Exchange {
                client: dialect,
                upstream: config.upstream_shape,
                head: request.method() == Method::HEAD,
                max_response_body: config.max_response_body,
                deadline: Instant::now() + config.request_timeout,
                request_timeout: config.request_timeout,
                stream: StreamSettings {
                    mode: EventMode::select_with(
                        dialect,
                        config.upstream_shape,
                        config.stream_envelope,
                        self.envelopes,
                    ),
                    client: dialect,
                    upstream: config.upstream_shape,
                    // Only (chat) completions promise `[DONE]`.
                    require_done: config.require_done
                        && rest(request.uri(), rest_at).ends_with("completions"),
                    idle_timeout: config.stream_idle_timeout,
                    keepalive: (!config.sse_keepalive.is_zero()).then_some(config.sse_keepalive),
                    max_event_bytes: config.max_sse_event,
                    envelopes: self.envelopes,
                },
                cut: self.cut.clone(),
            };
            if let Some(length) = present
                .content_length
                .then(|| declared_length(&request))
                .flatten()
            {
                if length > config.max_request_body {
                    break 'answer exchange.error_response(
                        &ApiError::request_too_large(config.max_request_body),
                        None,
                    );
                }
            }

            let (mut parts, body) = request.into_parts();
            let uri = match config.upstream.join(&parts.uri, rest_at) {
                Ok(uri) => uri,
                Err(_) => {
                    let error =
                        ApiError::new(StatusCode::BAD_REQUEST, "request path is not a valid URI");
                    break 'answer exchange.error_response(&error, None);
                }
            };
            let upstream = &self.upstreams[client.worker % self.upstreams.len()];
            headers::prepare_upstream_request(
                &mut parts.headers,
                present,
                upstream.host(),
                parts.uri.authority().map(http::uri::Authority::as_str),
                client.ip,
                client.proto,
            );
            parts.uri = uri;
            // The upstream connection picks its own HTTP version (ALPN or HTTP/1.1).
            parts.version = http::Version::HTTP_11;
            auth::upstream_authorization(
                &mut parts.headers,
                present.authorization,
                self.upstream_key.as_ref(),
                self.client_keys.is_some(),
            );
            let (body, client_body) = ClientBody::new(body);
            let upstream_request =
                Request::from_parts(parts, Limited::new(body, config.max_request_body as usize));

            // One timer for both limits on the wait for the head: whichever ends first.
            let head_deadline = Instant::now() + upstream.response_timeout();
            // The three waits are polled in place, the response first: `timeout` and `select!`
            // would each move the upstream's future (1.3 KB) into one of their own. In a block
            // of their own, so that their room is the response's afterwards.
            let waited = {
                let mut sending = pin!(upstream.send(upstream_request));
                let mut timer = pin!(tokio::time::sleep_until(
                    head_deadline.min(exchange.deadline)
                ));
                let mut cut = pin!(self.cut.cancelled());
                poll_fn(|cx| {
                    if let Poll::Ready(sent) = sending.as_mut().poll(cx) {
                        Poll::Ready(Waited::Sent(sent))
                    } else if cut.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Waited::Cut)
                    } else if timer.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Waited::TimedOut)
                    } else {
                        Poll::Pending
                    }
                })
                .await
            };
            let sent = match waited {
                Waited::Sent(sent) => sent,
                Waited::Cut => break 'answer exchange.error_response(&shutting_down(), None),
                Waited::TimedOut if head_deadline <= exchange.deadline => {
                    Err(UpstreamError::ResponseTimeout(upstream.response_timeout()))
                }
                Waited::TimedOut => {
                    break 'answer exchange
                        .error_response(&ApiError::request_timeout(config.request_timeout), None);
                }
            };
            match sent {
                Ok(response) => {
                    let status = response.status();
                    let mut response = translate::respond(&exchange, response).await;
                    if exchange.head && !head_keeps_length(&exchange, &response) {
                        // The upstream's length is that of its own body, not the one a GET
                        // would get.
                        response.headers_mut().remove(header::CONTENT_LENGTH);
                    }
                    record.set_upstream_status(status.as_u16());
                    response
                }
                Err(error) if client_body.happened() => {
                    let request_id = request_id.to_str().unwrap_or("-");
                    tracing::debug!(request_id, %error, "client request body failed");
                    record.set_client_aborted();
                    exchange.error_response(&broken_request_body(), None)
                }
                Err(error) => {
                    let request_id = request_id.to_str().unwrap_or("-");
                    tracing::warn!(request_id, kind = error.kind(), %error, "upstream request failed");
                    exchange.error_response(&error.to_api_error(config.max_request_body), None)
                }
            }
        };
        let response = observed_holding(response, record, Some(permit));
        finish(with_request_id(response, request_id))
    }
}

/// How the wait for the upstream's response head ended.
enum Waited<T> {
    Sent(T),
    /// The shutdown grace period ran out.
    Cut,
    /// The response or the request deadline passed.
    TimedOut,
}

/// True when a GET would pass the upstream's body through untouched, so the upstream's
/// `Content-Length` on a HEAD is the one the client would get: same dialects, no error to
/// normalise, no event stream.
fn head_keeps_length(exchange: &Exchange, response: &Response<ProxyBody>) -> bool {
    exchange.passes_through()
        && response.status().as_u16() < 400
        && !headers::is_event_stream(response.headers())
}

/// The path below the dialect's prefix (`/v1/` or `/api/v1/`), which starts at `rest_at`.
fn rest(uri: &http::Uri, rest_at: usize) -> &str {
    uri.path().get(rest_at..).unwrap_or_default()
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
