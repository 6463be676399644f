//! The upstream exchange: the upstream request made from the client's (target, forwarding
//! headers, the upstream key, the body limit), sent within the request deadline, and its
//! response handed to `translate` for the client's dialect.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::dialect::Dialect;
use crate::error::ApiError;
use crate::headers;
use crate::ops::access_log::RequestRecord;
use crate::translate::body::ProxyBody;
use crate::translate::sse::{EventMode, StreamSettings};
use crate::translate::synthetic::{broken_request_body, shutting_down};
use crate::translate::{self, Exchange};

use super::request_body::ClientBody;
use super::upstream::UpstreamError;
use super::{auth, ClientInfo, Proxy};

impl Proxy {
    pub(super) async fn forward(
        &self,
        request: Request<Incoming>,
        dialect: Dialect,
        rest_at: usize,
        client: ClientInfo,
        request_id: &HeaderValue,
        record: &mut RequestRecord,
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
        if let Some(length) = declared_length(&request) {
            if length > config.max_request_body {
                return exchange
                    .error_response(&ApiError::request_too_large(config.max_request_body), None);
            }
        }

        let (mut parts, body) = request.into_parts();
        let uri = match config
            .upstream
            .join(rest(&parts.uri, rest_at), parts.uri.query())
        {
            Ok(uri) => uri,
            Err(_) => {
                let error =
                    ApiError::new(StatusCode::BAD_REQUEST, "request path is not a valid URI");
                return exchange.error_response(&error, None);
            }
        };
        headers::prepare_upstream_request(
            &mut parts.headers,
            parts.uri.authority().map(http::uri::Authority::as_str),
            client.ip,
            client.proto,
        );
        parts.uri = uri;
        // The upstream connection picks its own HTTP version (ALPN or HTTP/1.1).
        parts.version = http::Version::HTTP_11;
        auth::upstream_authorization(
            &mut parts.headers,
            self.upstream_key.as_ref(),
            self.client_keys.is_some(),
        );
        let (body, client_body) = ClientBody::new(body);
        let upstream_request =
            Request::from_parts(parts, Limited::new(body, config.max_request_body as usize));

        let upstream = &self.upstreams[client.worker % self.upstreams.len()];
        // One timer for both limits on the wait for the head: whichever ends first.
        let head_deadline = Instant::now() + upstream.response_timeout();
        let sent = tokio::time::timeout_at(
            head_deadline.min(exchange.deadline),
            upstream.send(upstream_request),
        );
        let sent = tokio::select! {
            sent = sent => sent,
            () = self.cut.cancelled() => return exchange.error_response(&shutting_down(), None),
        };
        let sent = match sent {
            Ok(sent) => sent,
            Err(_elapsed) if head_deadline <= exchange.deadline => {
                Err(UpstreamError::ResponseTimeout(upstream.response_timeout()))
            }
            Err(_elapsed) => {
                return exchange
                    .error_response(&ApiError::request_timeout(config.request_timeout), None);
            }
        };
        match sent {
            Ok(response) => {
                let status = response.status();
                let mut response = translate::respond(&exchange, response).await;
                if exchange.head && !head_keeps_length(&exchange, &response) {
                    // The upstream's length is that of its own body, not the one a GET would get.
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
    }
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
