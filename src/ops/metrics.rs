//! Prometheus metrics: lock-free counters in the request path, text exposition on `/metrics`.
//!
//! Every label set is small and known in advance (two dialects, five status classes, a
//! handful of error kinds and stream outcomes), so each series is a plain atomic in a fixed
//! array: recording is one `fetch_add`, with no map, lock or allocation. [`Metrics::render`]
//! writes the Prometheus text format (version 0.0.4) by hand.
//!
//! The one open label set is `model` on the token counters: the first `--metrics-max-models`
//! models seen keep their own series, later ones count under `model="other"`, so the set stays
//! bounded. Finding a model's series takes a read lock, once per response that reports usage
//! (a write lock the first time a model is seen), never per event or per byte.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::dialect::Dialect;
use crate::translate::sse::body::StreamEnd;
use crate::translate::usage::{cut, Usage, MAX_MODEL_BYTES};

/// The default of `--metrics-max-models`.
pub const DEFAULT_MAX_MODELS: usize = 64;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) use crate::error::UpstreamErrorKind;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over `--max-connections`: answered with a 503 (GOAWAY on HTTP/2), then closed.
    MaxConnections,
    /// Over `--max-overflow-connections` as well: closed at once.
    MaxOverflow,
}

impl Refusal {
    const ALL: [Refusal; 2] = [Refusal::MaxConnections, Refusal::MaxOverflow];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxOverflow => "max_overflow_connections",
        }
    }
}

const STREAM_ENDS: [StreamEnd; 8] = [
    StreamEnd::Complete,
    StreamEnd::UpstreamErrorEvent,
    StreamEnd::Truncated,
    StreamEnd::Broken,
    StreamEnd::IdleTimeout,
    StreamEnd::EventTooLarge,
    StreamEnd::ClientCancelled,
    StreamEnd::ShuttingDown,
];

/// Upper bounds of the latency histograms, in seconds: from a cached answer to a long
/// reasoning stream.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

/// A fixed-bucket histogram; the last slot counts values above every bound.
#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

const DIALECTS: [Dialect; 2] = [Dialect::Bare, Dialect::Envelope];

fn dialect_index(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Bare => 0,
        Dialect::Envelope => 1,
    }
}

/// One model's token counts, by kind (in [`Usage::kinds`]' order); a kind never reported has
/// no series (unknown is not zero).
#[derive(Default)]
struct Series {
    counts: [AtomicU64; 4],
    /// Bit `k`: kind `k` was reported at least once.
    seen: AtomicU8,
}

/// `envelope_proxy_tokens_total` by model, then by kind.
struct Tokens {
    max_models: usize,
    models: RwLock<HashMap<Box<str>, Series, BuildHasherDefault<Fnv>>>,
    other: Series,
}

/// FNV-1a, for the model names of [`Tokens`]: one multiply per byte where the default
/// SipHash cost ~1 % of a small request. Collision flooding buys nothing: the map holds at
/// most `--metrics-max-models` names, so a lookup compares at most that many.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Tokens {
    fn new(max_models: usize) -> Self {
        Self {
            max_models,
            models: RwLock::default(),
            other: Default::default(),
        }
    }

    fn add(&self, model: &str, usage: &Usage) {
        let add = |series: &Series| {
            for (k, (slot, (_, count))) in series.counts.iter().zip(usage.kinds()).enumerate() {
                if let Some(count) = count {
                    slot.fetch_add(count, Relaxed);
                    series.seen.fetch_or(1 << k, Relaxed);
                }
            }
        };
        // A poisoned lock only means another thread panicked mid-insert: the map is whole.
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = models.get(model) {
            return add(series);
        }
        drop(models);
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if models.len() >= self.max_models && !models.contains_key(model) {
            return add(&self.other);
        }
        add(models.entry(model.into()).or_default());
    }

    fn render(&self, out: &mut String) {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&str> = models.keys().map(AsRef::as_ref).collect();
        names.sort_unstable();
        let series = names
            .into_iter()
            .filter_map(|name| Some((escape_label(name), models.get(name)?)))
            .chain([("other".to_string(), &self.other)]);
        for (label, series) in series {
            let seen = series.seen.load(Relaxed);
            for (k, ((kind, _), count)) in Usage::default()
                .kinds()
                .iter()
                .zip(&series.counts)
                .enumerate()
            {
                if seen & (1 << k) == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "envelope_proxy_tokens_total{{model=\"{label}\",kind=\"{kind}\"}} {}",
                    count.load(Relaxed)
                );
            }
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            ch => out.push(ch),
        }
    }
    out
}

/// Every series the proxy exports.
pub struct Metrics {
    /// [client dialect][upstream shape][status class 1xx..5xx]
    requests: [[[AtomicU64; 5]; 2]; 2],
    /// By client dialect.
    duration: [Histogram; 2],
    time_to_first_byte: [Histogram; 2],
    upstream_errors: [AtomicU64; 5],
    /// [upstream shape] → the other dialect.
    translations: [AtomicU64; 2],
    active_requests: AtomicI64,
    active_streams: AtomicI64,
    streamed_bytes: AtomicU64,
    client_cancellations: AtomicU64,
    streams: [AtomicU64; STREAM_ENDS.len()],
    /// [ok, failed]
    reloads: [AtomicU64; 2],
    /// By [`Refusal`].
    connections_refused: [AtomicU64; 2],
    /// Each worker's open-connection count, in worker order (the workers keep them).
    worker_connections: OnceLock<Vec<Arc<AtomicUsize>>>,
    tokens: Tokens,
    /// By client dialect.
    time_to_first_token: [Histogram; 2],
    stream_events: [AtomicU64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MODELS)
    }
}

impl Metrics {
    /// The metrics of a proxy that labels at most `max_models` models by name.
    pub fn new(max_models: usize) -> Self {
        Self {
            requests: Default::default(),
            duration: Default::default(),
            time_to_first_byte: Default::default(),
            upstream_errors: Default::default(),
            translations: Default::default(),
            active_requests: AtomicI64::default(),
            active_streams: AtomicI64::default(),
            streamed_bytes: AtomicU64::default(),
            client_cancellations: AtomicU64::default(),
            streams: Default::default(),
            reloads: Default::default(),
            connections_refused: Default::default(),
            worker_connections: OnceLock::new(),
            tokens: Tokens::new(max_models),
            time_to_first_token: Default::default(),
            stream_events: Default::default(),
        }
    }

    /// Tokens a response reported; `model` as the response named it (`None`: `unknown`).
    pub(crate) fn tokens(&self, model: Option<&str>, usage: &Usage) {
        self.tokens
            .add(cut(model.unwrap_or("unknown"), MAX_MODEL_BYTES), usage);
    }

    pub(crate) fn first_token(&self, client: Dialect, elapsed: Duration) {
        self.time_to_first_token[dialect_index(client)].observe(elapsed);
    }

    pub(crate) fn stream_events(&self, client: Dialect, events: u64) {
        self.stream_events[dialect_index(client)].fetch_add(events, Relaxed);
    }

    pub(crate) fn request_started(&self) {
        self.active_requests.fetch_add(1, Relaxed);
    }

    /// A proxied request finished (its response fully sent, or abandoned).
    pub(crate) fn request_finished(
        &self,
        client: Dialect,
        upstream: Dialect,
        status: u16,
        duration: Duration,
    ) {
        self.active_requests.fetch_sub(1, Relaxed);
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[dialect_index(client)][dialect_index(upstream)][class].fetch_add(1, Relaxed);
        self.duration[dialect_index(client)].observe(duration);
    }

    /// A request that was not proxied (health, metrics, unknown path) still ends.
    pub(crate) fn request_abandoned(&self) {
        self.active_requests.fetch_sub(1, Relaxed);
    }

    /// Requests started and not yet finished (their access-log line not yet written).
    pub fn active_requests(&self) -> i64 {
        self.active_requests.load(Relaxed)
    }

    pub(crate) fn first_byte(&self, client: Dialect, elapsed: Duration) {
        self.time_to_first_byte[dialect_index(client)].observe(elapsed);
    }

    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// A response was rewritten from `upstream`'s dialect into the other one.
    pub fn translated(&self, upstream: Dialect) {
        self.translations[dialect_index(upstream)].fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_started(&self) {
        self.active_streams.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_finished(&self, end: StreamEnd) {
        self.active_streams.fetch_sub(1, Relaxed);
        if let Some(slot) = STREAM_ENDS.iter().position(|e| *e == end) {
            self.streams[slot].fetch_add(1, Relaxed);
        }
    }

    pub fn streamed(&self, bytes: usize) {
        self.streamed_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn client_cancelled(&self) {
        self.client_cancellations.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_refused(&self, reason: Refusal) {
        self.connections_refused[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Exports the workers' open-connection counts (set once, when the workers start).
    pub(crate) fn watch_workers(&self, open: Vec<Arc<AtomicUsize>>) {
        let _ = self.worker_connections.set(open);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(
            out,
            "# HELP envelope_proxy_build_info The running version.\n# TYPE envelope_proxy_build_info gauge\nenvelope_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        header(
            &mut out,
            "envelope_proxy_requests_total",
            "counter",
            "Proxied requests by client dialect, upstream shape and response status class.",
        );
        for client in DIALECTS {
            for upstream in DIALECTS {
                for (class, count) in self.requests[dialect_index(client)][dialect_index(upstream)]
                    .iter()
                    .enumerate()
                {
                    let _ = writeln!(
                        out,
                        "envelope_proxy_requests_total{{dialect=\"{}\",upstream_shape=\"{}\",status_class=\"{}xx\"}} {}",
                        client.as_str(),
                        upstream.as_str(),
                        class + 1,
                        count.load(Relaxed)
                    );
                }
            }
        }

        header(
            &mut out,
            "envelope_proxy_request_duration_seconds",
            "histogram",
            "From the request's arrival to the last byte of the response.",
        );
        for client in DIALECTS {
            self.duration[dialect_index(client)].render(
                &mut out,
                "envelope_proxy_request_duration_seconds",
                &format!("dialect=\"{}\"", client.as_str()),
            );
        }
        header(
            &mut out,
            "envelope_proxy_time_to_first_byte_seconds",
            "histogram",
            "From the request's arrival to the first byte of the response body.",
        );
        for client in DIALECTS {
            self.time_to_first_byte[dialect_index(client)].render(
                &mut out,
                "envelope_proxy_time_to_first_byte_seconds",
                &format!("dialect=\"{}\"", client.as_str()),
            );
        }

        header(
            &mut out,
            "envelope_proxy_time_to_first_token_seconds",
            "histogram",
            "Streamed chat completions: from the request's arrival to the first event with content.",
        );
        for client in DIALECTS {
            self.time_to_first_token[dialect_index(client)].render(
                &mut out,
                "envelope_proxy_time_to_first_token_seconds",
                &format!("dialect=\"{}\"", client.as_str()),
            );
        }

        header(
            &mut out,
            "envelope_proxy_tokens_total",
            "counter",
            "Tokens the upstream reported in usage objects, by the response's model and kind.",
        );
        self.tokens.render(&mut out);

        header(
            &mut out,
            "envelope_proxy_stream_events_total",
            "counter",
            "Events relayed from the upstream to clients, by client dialect (comments not counted).",
        );
        for client in DIALECTS {
            let _ = writeln!(
                out,
                "envelope_proxy_stream_events_total{{dialect=\"{}\"}} {}",
                client.as_str(),
                self.stream_events[dialect_index(client)].load(Relaxed)
            );
        }

        header(
            &mut out,
            "envelope_proxy_upstream_errors_total",
            "counter",
            "Failed exchanges with the upstream, by kind.",
        );
        for kind in UpstreamErrorKind::ALL {
            let _ = writeln!(
                out,
                "envelope_proxy_upstream_errors_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.upstream_errors[kind as usize].load(Relaxed)
            );
        }

        header(
            &mut out,
            "envelope_proxy_translations_total",
            "counter",
            "Responses rewritten from one dialect into the other, by direction.",
        );
        for (direction, upstream) in [
            ("bare_to_envelope", Dialect::Bare),
            ("envelope_to_bare", Dialect::Envelope),
        ] {
            let _ = writeln!(
                out,
                "envelope_proxy_translations_total{{direction=\"{direction}\"}} {}",
                self.translations[dialect_index(upstream)].load(Relaxed)
            );
        }

        header(
            &mut out,
            "envelope_proxy_streams_total",
            "counter",
            "Finished event streams by outcome (stream_truncated: ended without [DONE]).",
        );
        for (end, count) in STREAM_ENDS.iter().zip(&self.streams) {
            let _ = writeln!(
                out,
                "envelope_proxy_streams_total{{outcome=\"{}\"}} {}",
                end.as_str(),
                count.load(Relaxed)
            );
        }

        for (name, kind, help, value) in [
            (
                "envelope_proxy_active_requests",
                "gauge",
                "Requests being served.",
                self.active_requests.load(Relaxed).max(0) as u64,
            ),
            (
                "envelope_proxy_active_streams",
                "gauge",
                "Event streams being sent.",
                self.active_streams.load(Relaxed).max(0) as u64,
            ),
            (
                "envelope_proxy_streamed_bytes_total",
                "counter",
                "Bytes of event streams sent to clients.",
                self.streamed_bytes.load(Relaxed),
            ),
            (
                "envelope_proxy_client_cancellations_total",
                "counter",
                "Requests the client abandoned before the response was complete.",
                self.client_cancellations.load(Relaxed),
            ),
            (
                "envelope_proxy_log_lines_dropped_total",
                "counter",
                "Log lines dropped because stderr took none while the queue was full.",
                crate::ops::logging::dropped_lines(),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }

        header(
            &mut out,
            "envelope_proxy_connections_refused_total",
            "counter",
            "Client connections refused, by the limit they hit.",
        );
        for reason in Refusal::ALL {
            let _ = writeln!(
                out,
                "envelope_proxy_connections_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.connections_refused[reason as usize].load(Relaxed)
            );
        }

        header(
            &mut out,
            "envelope_proxy_reloads_total",
            "counter",
            "SIGHUP reloads by result.",
        );
        for (result, count) in ["ok", "failed"].iter().zip(&self.reloads) {
            let _ = writeln!(
                out,
                "envelope_proxy_reloads_total{{result=\"{result}\"}} {}",
                count.load(Relaxed)
            );
        }

        if let Some(workers) = self.worker_connections.get() {
            header(
                &mut out,
                "envelope_proxy_worker_connections",
                "gauge",
                "Open client connections on each worker thread (admin connections excluded).",
            );
            for (worker, open) in workers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "envelope_proxy_worker_connections{{worker=\"{worker}\"}} {}",
                    open.load(Relaxed)
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::default();
        metrics.request_started();
        metrics.request_finished(
            Dialect::Envelope,
            Dialect::Bare,
            200,
            Duration::from_millis(30),
        );
        metrics.first_byte(Dialect::Envelope, Duration::from_millis(7));
        let text = metrics.render();
        for line in [
            r#"envelope_proxy_requests_total{dialect="envelope",upstream_shape="bare",status_class="2xx"} 1"#,
            r#"envelope_proxy_requests_total{dialect="bare",upstream_shape="bare",status_class="2xx"} 0"#,
            r#"envelope_proxy_request_duration_seconds_bucket{dialect="envelope",le="0.025"} 0"#,
            r#"envelope_proxy_request_duration_seconds_bucket{dialect="envelope",le="0.05"} 1"#,
            r#"envelope_proxy_request_duration_seconds_bucket{dialect="envelope",le="+Inf"} 1"#,
            r#"envelope_proxy_request_duration_seconds_sum{dialect="envelope"} 0.03"#,
            r#"envelope_proxy_request_duration_seconds_count{dialect="envelope"} 1"#,
            r#"envelope_proxy_time_to_first_byte_seconds_bucket{dialect="envelope",le="0.005"} 0"#,
            r#"envelope_proxy_time_to_first_byte_seconds_bucket{dialect="envelope",le="0.01"} 1"#,
            "envelope_proxy_active_requests 0",
            r#"envelope_proxy_connections_refused_total{reason="max_connections"} 0"#,
            r#"envelope_proxy_connections_refused_total{reason="max_overflow_connections"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn fnv_gives_the_published_fnv_1a_values() {
        for (input, expected) in [
            ("", 0xcbf2_9ce4_8422_2325u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hasher = Fnv::default();
            hasher.write(input.as_bytes());
            assert_eq!(hasher.finish(), expected, "{input:?}");
        }
    }

    #[test]
    fn tokens_keep_the_first_models_then_other_escaped_and_capped() {
        let metrics = Metrics::new(2);
        let usage = Usage {
            prompt: Some(3),
            completion: Some(5),
            cached_prompt: None,
            reasoning: Some(1),
        };
        metrics.tokens(Some("a\"b\\c\nd"), &usage);
        metrics.tokens(Some(&"é".repeat(100)), &usage);
        metrics.tokens(Some("third"), &usage);
        metrics.tokens(Some("a\"b\\c\nd"), &usage);
        let text = metrics.render();
        let long = "é".repeat(64);
        for line in [
            r#"envelope_proxy_tokens_total{model="a\"b\\c\nd",kind="prompt"} 6"#.to_string(),
            r#"envelope_proxy_tokens_total{model="a\"b\\c\nd",kind="completion"} 10"#.into(),
            r#"envelope_proxy_tokens_total{model="a\"b\\c\nd",kind="reasoning"} 2"#.into(),
            format!(r#"envelope_proxy_tokens_total{{model="{long}",kind="prompt"}} 3"#),
            r#"envelope_proxy_tokens_total{model="other",kind="prompt"} 3"#.into(),
            r#"envelope_proxy_tokens_total{model="other",kind="reasoning"} 1"#.into(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(!text.contains("third"));
        // Never reported: no series, not a zero.
        assert!(!text.contains("cached_prompt"), "{text}");
    }

    #[test]
    fn error_codes_map_to_kinds() {
        assert_eq!(
            UpstreamErrorKind::from_code("upstream_tls_error"),
            Some(UpstreamErrorKind::Tls)
        );
        assert_eq!(
            UpstreamErrorKind::from_code("upstream_timeout"),
            Some(UpstreamErrorKind::Timeout)
        );
        assert_eq!(UpstreamErrorKind::from_code("rate_limit_exceeded"), None);
    }
}
