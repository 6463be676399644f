//! The access log and the per-request metrics, recorded when a request really ends.
//!
//! A [`RequestRecord`] is created when a request arrives. It rides inside the response body
//! (`response_body.rs`), so it sees the first byte (time to first byte), every byte, and the
//! end: the last frame, a broken body, or the body being dropped early (the client went
//! away). If the request ends before there is a response at all (the client left while the
//! upstream was thinking), dropping the record says so. Either way exactly one line is
//! written, to stderr through `tracing` (target `access`):
//!
//! `request_id method path dialect upstream_shape status upstream_status duration_ms ttfb_ms
//! bytes outcome`, then when known `model prompt_tokens completion_tokens` (the response's own
//! usage), `ttft_ms` (streams: time to the first event with content) and `trace_id` (from a
//! valid W3C `traceparent`) — never a body, a query string, a key or an `Authorization` header. The path
//! is escaped as nginx escapes its logs: bytes outside visible ASCII (control characters,
//! spaces, raw UTF-8 such as bidi overrides) and `"` and `\` become `\xHH`, so a path can
//! neither forge a line nor reorder what a terminal shows.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::dialect::Dialect;
use crate::error::ErrorCode;
use crate::ops::metrics::{Metrics, UpstreamErrorKind};
use crate::translate::sse::body::StreamEnd;
use crate::translate::sse::transform::StreamStats;
use crate::translate::usage::UsageReport;

/// The status logged for a request the client abandoned before any response (as nginx does).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// How the response body ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    Complete,
    /// The body failed while being sent (a pass-through upstream body broke).
    Broken,
    /// Dropped before the end: the client went away.
    Cancelled,
    /// Dropped before the end after the shutdown grace ran out: the proxy cut it.
    Cut,
    /// Abandoned: the client took no bytes for `--client-write-timeout` (see `progress.rs`).
    Stalled,
}

/// Everything the log line and the metrics need about one request.
pub(crate) struct RequestRecord {
    metrics: Arc<Metrics>,
    start: Instant,
    request_id: HeaderValue,
    method: Method,
    /// Escaped only when a line is written ([`LoggedPath`]). A copy: the request's own `Uri`
    /// shares hyper's read buffer, which holding it would keep from being reused (+8 KB of
    /// heap per open HTTP/1.1 stream, `tests/memory.rs`).
    path: String,
    /// `None` for paths that are not proxied (404s): logged, not counted per dialect.
    client: Option<Dialect>,
    upstream: Dialect,
    status: u16,
    upstream_status: Option<u16>,
    error_code: Option<ErrorCode>,
    translated: bool,
    stream: bool,
    first_byte: Option<Duration>,
    bytes: u64,
    /// The client's request body broke: the request ends as cancelled by the client.
    client_aborted: bool,
    /// Cancelled when the shutdown grace runs out: a body dropped after that was cut by us.
    cut: Option<CancellationToken>,
    /// The response's `usage` and `model`, when it had them.
    report: Option<UsageReport>,
    /// Streams: events relayed, and the time to the first one with content.
    events: u64,
    first_token: Option<Duration>,
    /// The trace-id of a valid W3C `traceparent`.
    trace_id: Option<String>,
    done: bool,
}

impl RequestRecord {
    pub fn start(
        metrics: Arc<Metrics>,
        request_id: HeaderValue,
        method: &Method,
        path: &str,
        upstream: Dialect,
    ) -> Self {
        metrics.request_started();
        Self {
            metrics,
            start: Instant::now(),
            request_id,
            method: method.clone(),
            path: path.to_owned(),
            client: None,
            upstream,
            status: CLIENT_CLOSED_REQUEST,
            upstream_status: None,
            error_code: None,
            translated: false,
            stream: false,
            first_byte: None,
            bytes: 0,
            client_aborted: false,
            cut: None,
            report: None,
            events: 0,
            first_token: None,
            trace_id: None,
            done: false,
        }
    }

    /// See [`trace_id`].
    pub(crate) fn set_trace_id(&mut self, trace_id: Option<String>) {
        self.trace_id = trace_id;
    }

    /// The `usage` and `model` of a body the proxy read whole, or scanned.
    pub(crate) fn set_usage(&mut self, report: UsageReport) {
        self.report = Some(report);
    }

    /// What a stream's events said (read when the body ends).
    pub(crate) fn set_stream_stats(&mut self, mut stats: StreamStats) {
        self.events = stats.events;
        self.first_token = stats
            .first_token()
            .map(|at| at.saturating_duration_since(self.start));
        if stats.report.is_some() {
            self.report = stats.report;
        }
    }

    pub(crate) fn set_client(&mut self, client: Dialect) {
        self.client = Some(client);
    }

    /// What the response says about itself; called once the response head is known.
    pub(crate) fn set_response(
        &mut self,
        status: u16,
        error_code: Option<ErrorCode>,
        translated: bool,
        stream: bool,
    ) {
        self.status = status;
        self.error_code = error_code;
        self.translated = translated;
        self.stream = stream;
        if stream {
            self.metrics.stream_started();
        }
    }

    /// The token cancelled when the shutdown grace runs out (see [`BodyEnd::Cut`]).
    pub(crate) fn set_cut(&mut self, cut: CancellationToken) {
        self.cut = Some(cut);
    }

    /// The status the upstream answered with (before any translation).
    pub(crate) fn set_upstream_status(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    /// The client broke its own request (its body failed mid-upload): logged and counted as
    /// a client cancellation, whatever the response says, never as an upstream error.
    pub(crate) fn set_client_aborted(&mut self) {
        self.client_aborted = true;
    }

    /// A frame of `len` bytes was handed to the client.
    pub(crate) fn on_data(&mut self, len: usize) {
        if self.first_byte.is_none() {
            let elapsed = self.start.elapsed();
            self.first_byte = Some(elapsed);
            if let Some(client) = self.client {
                self.metrics.first_byte(client, elapsed);
            }
        }
        self.bytes += len as u64;
        if self.stream {
            self.metrics.streamed(len);
        }
    }

    /// The response body ended as `end` says; the first call writes the line, later ones
    /// do nothing.
    pub(crate) fn complete(&mut self, end: BodyEnd, stream_end: Option<StreamEnd>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let cut = self
            .cut
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled);
        let end = match end {
            _ if self.client_aborted => BodyEnd::Cancelled,
            BodyEnd::Cancelled if cut => BodyEnd::Cut,
            end => end,
        };
        let duration = self.start.elapsed();
        let outcome = self.outcome(end, stream_end);
        let metrics = &self.metrics;
        // Before the request counts as finished: a reader that sees it finished sees these.
        // Tokens count from successes only: an error (the upstream's, or ours) reports none.
        let success = (200..300).contains(&self.status) && self.error_code.is_none();
        let usage = self
            .report
            .as_ref()
            .filter(|_| success)
            .and_then(|r| Some((r.model.as_deref(), r.usage.as_ref()?)));
        if let Some((model, usage)) = usage {
            metrics.tokens(model, usage);
        }
        if let (Some(client), true) = (self.client, self.stream) {
            metrics.stream_events(client, self.events);
            if let Some(ttft) = self.first_token {
                metrics.first_token(client, ttft);
            }
        }
        match self.client {
            Some(client) => metrics.request_finished(client, self.upstream, self.status, duration),
            None => metrics.request_abandoned(),
        }
        if let Some(kind) = outcome.upstream_error {
            metrics.upstream_error(kind);
        }
        // A stalled client is counted as a cancelling one; only the log tells them apart.
        let cancelled = matches!(end, BodyEnd::Cancelled | BodyEnd::Stalled);
        if self.translated && !cancelled && end != BodyEnd::Cut {
            metrics.translated(self.upstream);
        }
        if cancelled {
            metrics.client_cancelled();
        }
        if self.stream {
            metrics.stream_finished(match end {
                _ if cancelled => StreamEnd::ClientCancelled,
                BodyEnd::Cut => StreamEnd::ShuttingDown,
                _ => stream_end.unwrap_or(StreamEnd::Complete),
            });
        }

        let duration_ms = millis(duration);
        let ttfb_ms = self.first_byte.map(millis);
        let request_id = self.request_id.to_str().unwrap_or("-");
        let dialect = self.client.map_or("-", Dialect::as_str);
        let model = self.report.as_ref().and_then(|r| r.model.as_deref());
        let prompt_tokens = usage.and_then(|(_, u)| u.prompt);
        let completion_tokens = usage.and_then(|(_, u)| u.completion);
        let ttft_ms = self.first_token.map(millis);
        let trace_id = self.trace_id.as_deref();
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    request_id,
                    method = %self.method,
                    path = %LoggedPath(&self.path),
                    dialect,
                    upstream_shape = self.upstream.as_str(),
                    status = self.status,
                    upstream_status = self.upstream_status,
                    duration_ms,
                    ttfb_ms,
                    bytes = self.bytes,
                    outcome = outcome.label,
                    model,
                    prompt_tokens,
                    completion_tokens,
                    ttft_ms,
                    trace_id,
                    "request"
                )
            };
        }
        if outcome.warn {
            line!(Level::WARN);
        } else {
            line!(Level::INFO);
        }
    }

    fn outcome(&self, end: BodyEnd, stream_end: Option<StreamEnd>) -> Outcome {
        match end {
            BodyEnd::Cancelled => return Outcome::quiet(StreamEnd::ClientCancelled.as_str()),
            BodyEnd::Cut => return Outcome::quiet(StreamEnd::ShuttingDown.as_str()),
            BodyEnd::Stalled => return Outcome::quiet("client_stalled"),
            // A pass-through body the upstream broke (reset, or shorter than its length).
            BodyEnd::Broken => {
                return Outcome::upstream("upstream_broken", UpstreamErrorKind::Reset);
            }
            BodyEnd::Complete => {}
        }
        if let Some(end) = stream_end {
            let label = end.as_str();
            return match end {
                StreamEnd::Complete | StreamEnd::UpstreamErrorEvent | StreamEnd::ShuttingDown => {
                    Outcome::quiet(label)
                }
                // A stream that ended without [DONE] is the upstream's failure too.
                StreamEnd::Truncated => Outcome {
                    label,
                    upstream_error: None,
                    warn: true,
                },
                _ => match end.error_code() {
                    Some(code) => Outcome {
                        label,
                        upstream_error: code.metric_kind(),
                        warn: code.log_level() == Level::WARN,
                    },
                    None => Outcome::quiet(label),
                },
            };
        }
        match self.error_code {
            Some(code) => match code.metric_kind() {
                // A body cut short is a broken upstream, whether passed through or read.
                Some(kind) if code == ErrorCode::UpstreamTruncated => {
                    Outcome::upstream("upstream_broken", kind)
                }
                Some(kind) => Outcome::upstream("upstream_error", kind),
                None if code == ErrorCode::ShuttingDown => Outcome::quiet("shutting_down"),
                None if self.upstream_status.is_none() => Outcome::quiet("rejected"),
                None => Outcome::OK,
            },
            None => Outcome::OK,
        }
    }
}

impl Drop for RequestRecord {
    /// Dropped without completing: the request future was dropped, i.e. the client left.
    fn drop(&mut self) {
        self.complete(BodyEnd::Cancelled, None);
    }
}

struct Outcome {
    label: &'static str,
    upstream_error: Option<UpstreamErrorKind>,
    /// Logged at WARN: the upstream failed, or a stream ended early.
    warn: bool,
}

impl Outcome {
    const OK: Outcome = Outcome::quiet("ok");

    const fn quiet(label: &'static str) -> Self {
        Outcome {
            label,
            upstream_error: None,
            warn: false,
        }
    }

    const fn upstream(label: &'static str, kind: UpstreamErrorKind) -> Self {
        Outcome {
            label,
            upstream_error: Some(kind),
            warn: true,
        }
    }
}

/// The trace-id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, version `00`, neither
/// id all zeros), lower-case as the spec writes it; anything else has none.
pub(crate) fn trace_id(traceparent: Option<&HeaderValue>) -> Option<String> {
    let value = traceparent?.as_bytes();
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |b: &[u8]| b.iter().all(|&c| c == b'0');
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !hex(trace) || !hex(parent) || !hex(flags) || zero(trace) || zero(parent) {
        return None;
    }
    String::from_utf8(trace.to_vec()).ok()
}

/// The path as logged (see the module docs), written straight into the line: runs of plain
/// bytes as they are, every other byte as `\\xHH`.
struct LoggedPath<'a>(&'a str);

impl std::fmt::Display for LoggedPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |byte: u8| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\';
        // Each piece is a run of plain bytes, then at most one byte to escape.
        for piece in self.0.as_bytes().split_inclusive(|&byte| !plain(byte)) {
            let (run, escaped) = match piece.split_last() {
                Some((&byte, run)) if !plain(byte) => (run, Some(byte)),
                _ => (piece, None),
            };
            // Plain bytes are visible ASCII: always text.
            f.write_str(std::str::from_utf8(run).unwrap_or_default())?;
            if let Some(byte) = escaped {
                write!(f, "\\x{byte:02X}")?;
            }
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(error_code: Option<&str>, upstream_status: Option<u16>) -> RequestRecord {
        let mut record = RequestRecord::start(
            Arc::new(Metrics::default()),
            HeaderValue::from_static("test"),
            &Method::POST,
            "/v1/chat/completions",
            Dialect::Bare,
        );
        record.set_client(Dialect::Bare);
        record.set_response(502, error_code.and_then(ErrorCode::parse), false, false);
        if let Some(status) = upstream_status {
            record.set_upstream_status(status);
        }
        record
    }

    fn outcome(
        error_code: Option<&str>,
        upstream_status: Option<u16>,
        end: BodyEnd,
        stream_end: Option<StreamEnd>,
    ) -> (&'static str, Option<UpstreamErrorKind>, bool) {
        let o = record(error_code, upstream_status).outcome(end, stream_end);
        (o.label, o.upstream_error, o.warn)
    }

    #[test]
    fn only_valid_traceparents_give_a_trace_id() {
        let id = |v: &str| trace_id(Some(&HeaderValue::from_str(v).unwrap()));
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            id(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(),
            Some(trace)
        );
        for bad in [
            format!("01-{trace}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{trace}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
            format!("00-{trace}-00f067aa0ba902b7-01-x"),
            format!("00-{trace}-00f067aa0ba902b7"),
            format!("00-{trace}x00f067aa0ba902b7-01"),
            format!("00-{trace}-00f067aa0ba902bg-01"),
        ] {
            assert_eq!(id(&bad), None, "{bad}");
        }
        assert_eq!(trace_id(None), None);
    }

    #[test]
    fn paths_are_escaped_for_the_log() {
        let logged = |path: &str| LoggedPath(path).to_string();
        assert_eq!(logged("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(
            logged("/v1/files/a\u{202e}b\u{e9}\"\\"),
            "/v1/files/a\\xE2\\x80\\xAEb\\xC3\\xA9\\x22\\x5C"
        );
        assert_eq!(logged(""), "");
        assert_eq!(logged(" "), "\\x20");
        assert_eq!(logged("\"a b\""), "\\x22a\\x20b\\x22");
    }

    #[test]
    fn outcomes_and_levels_follow_how_the_request_ended() {
        use BodyEnd::*;
        use UpstreamErrorKind as K;
        assert_eq!(
            outcome(None, Some(200), Complete, None),
            ("ok", None, false)
        );
        // The upstream's own error, passed or normalised, is its answer: ok.
        assert_eq!(
            outcome(Some("rate_limit_exceeded"), Some(429), Complete, None),
            ("ok", None, false)
        );
        assert_eq!(
            outcome(Some("upstream_tls_error"), None, Complete, None),
            ("upstream_error", Some(K::Tls), true)
        );
        assert_eq!(
            outcome(Some("invalid_api_key"), None, Complete, None),
            ("rejected", None, false)
        );
        assert_eq!(
            outcome(None, Some(200), Broken, None),
            ("upstream_broken", Some(K::Reset), true)
        );
        assert_eq!(
            outcome(Some("upstream_truncated"), Some(200), Complete, None),
            ("upstream_broken", Some(K::Reset), true)
        );
        assert_eq!(
            outcome(None, Some(200), Cancelled, None),
            ("client_cancelled", None, false)
        );
        assert_eq!(
            outcome(None, Some(200), Stalled, None),
            ("client_stalled", None, false)
        );
        assert_eq!(
            outcome(None, Some(200), Complete, Some(StreamEnd::Truncated)),
            ("stream_truncated", None, true)
        );
        assert_eq!(
            outcome(None, Some(200), Complete, Some(StreamEnd::IdleTimeout)),
            ("idle_timeout", Some(K::Timeout), true)
        );
        assert_eq!(
            outcome(None, Some(200), Complete, Some(StreamEnd::ShuttingDown)),
            ("shutting_down", None, false)
        );
        assert_eq!(
            outcome(None, Some(200), Cut, None),
            ("shutting_down", None, false)
        );
    }
}
