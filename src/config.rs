//! Command-line and environment configuration.
//!
//! Every flag also reads an `ENVELOPE_PROXY_*` environment variable so that a systemd
//! `EnvironmentFile=` or a container spec can configure the proxy without a wrapper script.
//! Parsing happens in two stages (as ripgrep does): clap validates the raw values here, and
//! [`UpstreamUrl`] turns the upstream flag into the pieces the request path needs, once.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::uri::{Authority, Scheme};
use http::Uri;

use crate::dialect::Dialect;

/// envelope-proxy: a reverse proxy that translates between the bare OpenAI response dialect
/// (served under /v1/…) and the envelope dialect (served under /api/v1/…).
#[derive(Debug, Clone, Parser)]
#[command(name = "envelope-proxy", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (IP:PORT).
    #[arg(long, env = "ENVELOPE_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base URL of the upstream API; `<upstream>/<rest>` receives `/v1/<rest>` and `/api/v1/<rest>`.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM",
        default_value = "https://api.openai.com/v1",
        value_parser = UpstreamUrl::parse
    )]
    pub upstream: UpstreamUrl,

    /// The response dialect the upstream speaks.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM_SHAPE",
        value_enum,
        default_value_t = Dialect::Bare
    )]
    pub upstream_shape: Dialect,

    /// How streamed events reach envelope clients from a bare upstream: `bare` leaves the
    /// OpenAI chunks as they are, `wrap` puts each chunk in a success envelope.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_STREAM_ENVELOPE",
        value_enum,
        default_value_t = StreamEnvelope::Bare
    )]
    pub stream_envelope: StreamEnvelope,

    /// Treat a chat stream that ends without `data: [DONE]` as truncated (true|false).
    #[arg(
        long,
        env = "ENVELOPE_PROXY_REQUIRE_DONE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub require_done: bool,

    /// Seconds to wait for a TCP (and TLS) connection to the upstream.
    #[arg(long, env = "ENVELOPE_PROXY_CONNECT_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,

    /// Seconds to wait for the upstream's response headers (a non-streaming completion can take minutes).
    #[arg(long, env = "ENVELOPE_PROXY_RESPONSE_TIMEOUT", default_value = "600", value_parser = parse_seconds)]
    pub response_timeout: Duration,

    /// Seconds a stream may go without an upstream event before it is ended with an error event.
    #[arg(long, env = "ENVELOPE_PROXY_STREAM_IDLE_TIMEOUT", default_value = "300", value_parser = parse_seconds)]
    pub stream_idle_timeout: Duration,

    /// Send an SSE comment to the client after this many idle seconds (0 = never).
    #[arg(long, env = "ENVELOPE_PROXY_SSE_KEEPALIVE", default_value = "0", value_parser = parse_seconds)]
    pub sse_keepalive: Duration,

    /// Largest request body accepted, in bytes (images arrive base64-encoded).
    #[arg(long, env = "ENVELOPE_PROXY_MAX_REQUEST_BODY", default_value_t = 32 * 1024 * 1024)]
    pub max_request_body: u64,

    /// Largest upstream body the proxy reads to translate or normalise, in bytes.
    #[arg(long, env = "ENVELOPE_PROXY_MAX_RESPONSE_BODY", default_value_t = 64 * 1024 * 1024)]
    pub max_response_body: u64,

    /// Largest single SSE event, in bytes; a larger one ends the stream with an error event.
    #[arg(long, env = "ENVELOPE_PROXY_MAX_SSE_EVENT", default_value_t = 4 * 1024 * 1024)]
    pub max_sse_event: usize,

    /// Log level filter (error, warn, info, debug, trace or a tracing directive); RUST_LOG wins when set.
    #[arg(long, env = "ENVELOPE_PROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format on stderr.
    #[arg(long, env = "ENVELOPE_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Runtime worker threads (default: the number of CPU cores).
    #[arg(long, env = "ENVELOPE_PROXY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// What envelope clients receive for streamed chunks from a bare upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamEnvelope {
    Bare,
    Wrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The upstream base URL, split once at startup into what each request needs.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Base path without a trailing slash ("" or "/v1").
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let uri: Uri = value.parse().map_err(|e| {
            format!("not a URL ({e}); expected http://host[:port][/path] or https://…")
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err("the scheme must be http:// or https://".into()),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "the URL has no host".to_string())?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported; use the key options".into());
        }
        if uri.query().is_some() {
            return Err("the URL must not have a query string".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// `<base>/<rest>?<query>` as a full URI for the upstream client.
    pub fn join(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut path_and_query = String::with_capacity(
            self.base_path.len() + rest.len() + 2 + query.map_or(0, str::len),
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push('/');
        path_and_query.push_str(rest);
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    if !(0.0..=31_536_000.0).contains(&seconds) {
        return Err(format!("`{value}` must be between 0 and 31536000 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_joins_rest_and_query() {
        let url = UpstreamUrl::parse("https://api.example.com/v1/").unwrap();
        assert_eq!(url.base_path, "/v1");
        assert_eq!(
            url.join("chat/completions", Some("a=1&b=2"))
                .unwrap()
                .to_string(),
            "https://api.example.com/v1/chat/completions?a=1&b=2"
        );
        let root = UpstreamUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            root.join("models", None).unwrap().to_string(),
            "http://127.0.0.1:9000/models"
        );
    }

    #[test]
    fn upstream_url_rejects_what_it_cannot_serve() {
        assert!(UpstreamUrl::parse("ftp://x/v1").is_err());
        assert!(UpstreamUrl::parse("/v1").is_err());
        assert!(UpstreamUrl::parse("https://user:pw@x/v1").is_err());
        assert!(UpstreamUrl::parse("https://x/v1?k=v").is_err());
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let config = Config::try_parse_from(["envelope-proxy"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.upstream.to_string(), "https://api.openai.com/v1");
        assert_eq!(config.upstream_shape, Dialect::Bare);
        assert_eq!(config.stream_envelope, StreamEnvelope::Bare);
        assert!(config.require_done);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.response_timeout, Duration::from_secs(600));
    }

    #[test]
    fn seconds_accept_fractions_and_reject_garbage() {
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
