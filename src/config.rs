//! Command-line and environment configuration.
//!
//! Every flag also reads an `ENVELOPE_PROXY_*` environment variable so that a systemd
//! `EnvironmentFile=` or a container spec can configure the proxy without a wrapper script.
//! Parsing happens in two stages (as ripgrep does): clap validates the raw values here, and
//! [`UpstreamUrl`] turns the upstream flag into the pieces the request path needs, once.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use crate::dialect::Dialect;
use crate::listen::sockets::ListenAddr;
use crate::ops::credentials::{self, FlagsGiven, SourceError, Sources};
use crate::tls::UpstreamTls;
use crate::translate::template::{Envelopes, ErrorTemplate, Preset, SideFlags, SuccessTemplate};

/// envelope-proxy: a reverse proxy that translates between the bare OpenAI response dialect
/// (served under /v1/…) and the envelope dialect (served under /api/v1/…).
#[derive(Debug, Clone, Parser)]
#[command(name = "envelope-proxy", version, about, long_about = None)]
pub struct Config {
    /// Address to serve on: IP:PORT, [IPv6]:PORT or unix:/path. Repeat the flag for several;
    /// in the environment variable, separate them with commas. Ignored under socket activation.
    // The text is `--help`'s, where `[IPv6]` is read as written, not as a link to an item.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(
        long,
        env = "ENVELOPE_PROXY_LISTEN",
        default_value = "127.0.0.1:8080",
        value_delimiter = ',',
        value_parser = ListenAddr::parse
    )]
    pub listen: Vec<ListenAddr>,

    /// Serve /healthz, /readyz and /metrics on this address only (IP:PORT or unix:/path),
    /// instead of on the --listen addresses.
    #[arg(long, env = "ENVELOPE_PROXY_ADMIN_LISTEN", value_parser = ListenAddr::parse)]
    pub admin_listen: Option<ListenAddr>,

    /// Permissions of the Unix sockets the proxy creates, in octal.
    #[arg(long, env = "ENVELOPE_PROXY_UNIX_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub unix_socket_mode: u32,

    /// Seconds to let in-flight requests and streams finish after SIGTERM/SIGINT.
    #[arg(long, env = "ENVELOPE_PROXY_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,

    /// Serve HTTPS (TLS 1.2+, ALPN h2 and http/1.1) on TCP listeners with this PEM certificate
    /// chain; SIGHUP re-reads it. Default: $CREDENTIALS_DIRECTORY/tls-cert when present.
    #[arg(long, env = "ENVELOPE_PROXY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key for --tls-cert. Default: $CREDENTIALS_DIRECTORY/tls-key when present.
    #[arg(long, env = "ENVELOPE_PROXY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Trust only the CA certificates in this PEM file for an https:// upstream (a private
    /// CA), instead of the system's roots.
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Present this PEM client certificate chain to the upstream (mTLS); SIGHUP re-reads it.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM_CLIENT_CERT",
        requires = "upstream_client_key"
    )]
    pub upstream_client_cert: Option<PathBuf>,

    /// The PEM private key for --upstream-client-cert.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM_CLIENT_KEY",
        requires = "upstream_client_cert"
    )]
    pub upstream_client_key: Option<PathBuf>,

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

    /// The envelope clients on /api/v1 receive: standard
    /// ({"success","code","message","data"}), code-msg-data ({"code":0,"msg","data"}) or jsend
    /// ({"status","data"}). The template flags below replace its templates one by one.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_ENVELOPE",
        value_enum,
        default_value_t = Preset::Standard
    )]
    pub envelope: Preset,

    /// The envelope an `--upstream-shape envelope` upstream sends (default: the same as
    /// --envelope, template flags included).
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_ENVELOPE", value_enum)]
    pub upstream_envelope: Option<Preset>,

    /// The success template of envelope clients: a JSON object holding `$data` once, e.g.
    /// {"ok":true,"result":$data}; `$status` and "$status" may appear too.
    #[arg(long, env = "ENVELOPE_PROXY_ENVELOPE_SUCCESS", value_name = "TEMPLATE", value_parser = SuccessTemplate::parse)]
    pub envelope_success: Option<SuccessTemplate>,

    /// The error template of envelope clients: a JSON object with `$status`, "$status",
    /// `$message` and `$error` where their values go.
    #[arg(long, env = "ENVELOPE_PROXY_ENVELOPE_ERROR", value_name = "TEMPLATE", value_parser = ErrorTemplate::parse)]
    pub envelope_error: Option<ErrorTemplate>,

    /// The error template of envelope clients for 4xx errors, when it differs (JSend's fail).
    #[arg(long, env = "ENVELOPE_PROXY_ENVELOPE_CLIENT_ERROR", value_name = "TEMPLATE", value_parser = ErrorTemplate::parse)]
    pub envelope_client_error: Option<ErrorTemplate>,

    /// The success template an envelope upstream sends (default: the --upstream-envelope
    /// preset's when given, else the client side's).
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_ENVELOPE_SUCCESS", value_name = "TEMPLATE", value_parser = SuccessTemplate::parse)]
    pub upstream_envelope_success: Option<SuccessTemplate>,

    /// The error template an envelope upstream sends (default: the --upstream-envelope
    /// preset's when given, else the client side's).
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_ENVELOPE_ERROR", value_name = "TEMPLATE", value_parser = ErrorTemplate::parse)]
    pub upstream_envelope_error: Option<ErrorTemplate>,

    /// The client-error template an envelope upstream sends for 4xx errors (default: the
    /// --upstream-envelope preset's when given, else the client side's).
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_ENVELOPE_CLIENT_ERROR", value_name = "TEMPLATE", value_parser = ErrorTemplate::parse)]
    pub upstream_envelope_client_error: Option<ErrorTemplate>,

    /// Treat a chat stream that ends without `data: [DONE]` as truncated (true|false).
    #[arg(
        long,
        env = "ENVELOPE_PROXY_REQUIRE_DONE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub require_done: bool,

    /// Speak HTTP/2 with prior knowledge (h2c) to an `http://` upstream: its streams share a few
    /// multiplexed connections instead of one HTTP/1.1 connection each. No effect on `https://`
    /// upstreams, where ALPN already picks HTTP/2 when the upstream offers it.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM_HTTP2",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub upstream_http2: bool,

    /// With --upstream-http2: the most streams sent on one upstream HTTP/2 connection at once;
    /// a new connection is opened when every open one carries this many.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_UPSTREAM_HTTP2_MAX_STREAMS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub upstream_http2_max_streams: u32,

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

    /// Models labelled by name in envelope_proxy_tokens_total: the first N distinct models
    /// seen keep their own `model` label, later ones count under `model="other"`.
    #[arg(long, env = "ENVELOPE_PROXY_METRICS_MAX_MODELS", default_value_t = 64)]
    pub metrics_max_models: usize,

    /// File of client keys, one per line (`#` comments allowed); when set, every proxied request
    /// needs `Authorization: Bearer <key>`. Defaults to the systemd credential `api-keys`.
    #[arg(long, env = "ENVELOPE_PROXY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// File holding the upstream's API key; it replaces the client's `Authorization`.
    /// Defaults to the systemd credential `upstream-api-key`.
    #[arg(long, env = "ENVELOPE_PROXY_UPSTREAM_API_KEY_FILE")]
    pub upstream_api_key_file: Option<PathBuf>,

    /// Most client connections served at once; more get 503 and are closed.
    #[arg(long, env = "ENVELOPE_PROXY_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Most requests (including open streams) in flight at once; more get 503.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_MAX_CONCURRENT_REQUESTS",
        default_value_t = 16_384
    )]
    pub max_concurrent_requests: usize,

    /// Connections over --max-connections still answered (one 503, or GOAWAY on HTTP/2) before
    /// they are closed; beyond that, accepted sockets are closed at once.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_MAX_OVERFLOW_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_overflow_connections: usize,

    /// Most concurrent streams per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS); more
    /// are refused with REFUSED_STREAM.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_MAX_CONCURRENT_STREAMS",
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_streams: u32,

    /// Seconds from accepting a connection (TLS handshake included) to its first complete
    /// request head, and for each later HTTP/1.1 request head (slowloris guard).
    #[arg(long, env = "ENVELOPE_PROXY_HEADER_READ_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub header_read_timeout: Duration,

    /// Seconds a client connection may stay open with no request in flight (0 = never
    /// closed for idleness); HTTP/2 connections are also pinged after this long without a frame.
    #[arg(long, env = "ENVELOPE_PROXY_IDLE_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub idle_timeout: Duration,

    /// Seconds a response may wait for the client to take more bytes (a client that stopped
    /// reading) before it is abandoned and the upstream request cancelled (0 = never).
    #[arg(long, env = "ENVELOPE_PROXY_CLIENT_WRITE_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub client_write_timeout: Duration,

    /// Overall deadline, in seconds, for a non-streaming request whose body the proxy reads.
    #[arg(long, env = "ENVELOPE_PROXY_REQUEST_TIMEOUT", default_value = "900", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// Largest request head (request line + headers) in bytes; larger gets 431. At least 8192.
    #[arg(
        long,
        env = "ENVELOPE_PROXY_MAX_HEADER_BYTES",
        default_value_t = 64 * 1024,
        value_parser = clap::value_parser!(u32).range(8192..)
    )]
    pub max_header_bytes: u32,

    /// Most request headers; more gets 431.
    #[arg(long, env = "ENVELOPE_PROXY_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Log level filter (error, warn, info, debug, trace or a tracing directive); RUST_LOG wins when set.
    #[arg(long, env = "ENVELOPE_PROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format on stderr.
    #[arg(long, env = "ENVELOPE_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Worker threads, each a single-threaded runtime serving its share of the connections (default: the number of CPU cores).
    #[arg(long, env = "ENVELOPE_PROXY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl Config {
    /// The inbound certificate and key: the flags, else systemd credentials `tls-cert` and
    /// `tls-key` when both were passed with `LoadCredential=`.
    pub(crate) fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => Some((
                credentials::find(credentials::TLS_CERT_CREDENTIAL)?,
                credentials::find(credentials::TLS_KEY_CREDENTIAL)?,
            )),
        }
    }

    /// Where each secret comes from: its flag, else its systemd credential, else nowhere.
    pub fn secret_sources(&self) -> Result<Sources, SourceError> {
        Sources::resolve(FlagsGiven {
            upstream_key: self.upstream_api_key_file.is_some(),
            client_keys: self.api_keys_file.is_some(),
            tls_key: self.tls_key.is_some(),
        })
    }

    /// The envelopes of both sides, checked: an `--upstream-shape envelope` upstream's
    /// templates must be readable. Built once, at startup.
    pub fn envelopes(&self) -> Result<Envelopes, String> {
        let client = SideFlags {
            preset: Some(self.envelope),
            success: self.envelope_success.as_ref(),
            error: self.envelope_error.as_ref(),
            client_error: self.envelope_client_error.as_ref(),
        };
        let upstream = SideFlags {
            preset: self.upstream_envelope,
            success: self.upstream_envelope_success.as_ref(),
            error: self.upstream_envelope_error.as_ref(),
            client_error: self.upstream_envelope_client_error.as_ref(),
        };
        Envelopes::build(&client, &upstream, self.upstream_shape == Dialect::Envelope)
    }

    pub(crate) fn upstream_tls(&self) -> UpstreamTls {
        UpstreamTls {
            ca: self.upstream_ca.clone(),
            client_cert: self
                .upstream_client_cert
                .clone()
                .zip(self.upstream_client_key.clone()),
        }
    }
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

    /// `<base>/<rest>?<query>` as a full URI for the upstream client: `rest` is the client's
    /// path from `rest_at` on, the query the client's. When that is the client's own path
    /// (the proxy's prefix is the upstream's, as `/v1/…` to `…/v1`), the client's path and
    /// query are taken as they are: hyper checked them already, and they share its buffer.
    pub fn join(&self, client: &Uri, rest_at: usize) -> Result<Uri, http::Error> {
        let path = client.path();
        let base = self.base_path.as_bytes();
        let own = rest_at == base.len() + 1
            && path
                .as_bytes()
                .get(..rest_at)
                .is_some_and(|prefix| prefix.starts_with(base) && prefix.ends_with(b"/"));
        let path_and_query = match client.path_and_query() {
            Some(path_and_query) if own => path_and_query.clone(),
            _ => {
                let rest = path.get(rest_at..).unwrap_or_default();
                let query = client.query();
                // Exactly as long as it will be: `Bytes` then takes the buffer as it is, where
                // spare room would cost it an allocation of its own to keep the capacity.
                let mut joined = String::with_capacity(
                    base.len() + 1 + rest.len() + query.map_or(0, |query| 1 + query.len()),
                );
                joined.push_str(&self.base_path);
                joined.push('/');
                joined.push_str(rest);
                if let Some(query) = query {
                    joined.push('?');
                    joined.push_str(query);
                }
                PathAndQuery::try_from(joined)?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub(crate) fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

fn parse_mode(value: &str) -> Result<u32, String> {
    let digits = value.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "`{value}` is not an octal mode between 000 and 777 (e.g. 660)"
        )),
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
        let client = |target: &str| target.parse::<Uri>().unwrap();
        // The client's path from `rest_at` on (after `/api/v1/`), and its query.
        let asked = client("/api/v1/chat/completions?a=1&b=2");
        assert_eq!(
            url.join(&asked, 8).unwrap().to_string(),
            "https://api.example.com/v1/chat/completions?a=1&b=2"
        );
        let root = UpstreamUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            root.join(&client("/v1/models"), 4).unwrap().to_string(),
            "http://127.0.0.1:9000/models"
        );
        // The client's path is the upstream's: taken as it is, its bytes shared, not copied.
        for target in ["/v1/chat/completions?a=1&b=2", "/v1/models", "/v1/x?"] {
            let asked = client(target);
            let joined = url.join(&asked, 4).unwrap();
            assert_eq!(
                joined.to_string(),
                format!("https://api.example.com{target}")
            );
            let (own, upstream) = (asked.path_and_query(), joined.path_and_query());
            assert_eq!(
                own.map(|p| p.as_str().as_ptr()),
                upstream.map(|p| p.as_str().as_ptr())
            );
        }
        // Prefixes that only look alike are joined anew: a base that is not the client's
        // prefix, and a root upstream (`/models`, not `/v1/models`).
        let other = UpstreamUrl::parse("http://u/v2").unwrap();
        let joined = other.join(&client("/v1/models?q"), 4).unwrap();
        assert_eq!(joined.to_string(), "http://u/v2/models?q");
        let asked = client("/v1/models");
        let joined = root.join(&asked, 4).unwrap();
        assert_eq!(joined.path(), "/models");
        assert_ne!(asked.path().as_ptr(), joined.path().as_ptr());
    }

    #[test]
    fn upstream_url_rejects_what_it_cannot_serve() {
        let error = |value: &str| UpstreamUrl::parse(value).map(|_| ()).unwrap_err();
        assert_eq!(
            error("ftp://x/v1"),
            "the scheme must be http:// or https://"
        );
        assert_eq!(error("/v1"), "the scheme must be http:// or https://");
        assert_eq!(
            error("https://user:pw@x/v1"),
            "credentials in the URL are not supported; use the key options"
        );
        assert_eq!(
            error("https://x/v1?k=v"),
            "the URL must not have a query string"
        );
        assert_eq!(
            error("http://x y/v1"),
            "not a URL (invalid uri character); expected http://host[:port][/path] or https://…"
        );
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let config = Config::try_parse_from(["envelope-proxy"]).unwrap();
        assert_eq!(
            config.listen,
            [ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())]
        );
        assert_eq!(config.admin_listen, None);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.unix_socket_mode, 0o660);
        assert_eq!(config.upstream.to_string(), "https://api.openai.com/v1");
        assert_eq!(config.upstream_shape, Dialect::Bare);
        assert_eq!(config.stream_envelope, StreamEnvelope::Bare);
        assert!(config.require_done);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.response_timeout, Duration::from_secs(600));
        assert_eq!(config.header_read_timeout, Duration::from_secs(30));
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.client_write_timeout, Duration::from_secs(60));
        assert_eq!(config.max_concurrent_streams, 128);
        assert_eq!(config.max_overflow_connections, 1024);
        assert_eq!(config.metrics_max_models, 64);
        assert_eq!(config.envelope, Preset::Standard);
        assert_eq!(config.upstream_envelope, None);
        assert!(config.envelopes().unwrap().client().is_standard());
        assert!(config.envelopes().unwrap().same());
        assert!(!config.upstream_http2);
        assert_eq!(config.upstream_http2_max_streams, 100);
    }

    #[test]
    fn upstream_http2_is_a_switch_that_also_takes_a_value() {
        let parse = |args: &[&str]| Config::try_parse_from(args).map(|c| c.upstream_http2);
        assert!(parse(&["envelope-proxy", "--upstream-http2"]).unwrap());
        assert!(parse(&["envelope-proxy", "--upstream-http2=true"]).unwrap());
        assert!(!parse(&["envelope-proxy", "--upstream-http2=false"]).unwrap());
        assert!(parse(&["envelope-proxy", "--upstream-http2=maybe"]).is_err());
        let streams =
            |args: &[&str]| Config::try_parse_from(args).map(|c| c.upstream_http2_max_streams);
        assert_eq!(
            streams(&["envelope-proxy", "--upstream-http2-max-streams=2"]).unwrap(),
            2
        );
        assert!(streams(&["envelope-proxy", "--upstream-http2-max-streams=0"]).is_err());
        assert!(streams(&["envelope-proxy", "--upstream-http2-max-streams=10001"]).is_err());
    }

    #[test]
    fn envelope_templates_are_checked_when_parsed() {
        let message = |args: &[&str]| {
            Config::try_parse_from(args)
                .map(|_| ())
                .unwrap_err()
                .render()
                .to_string()
        };
        let error = message(&[
            "envelope-proxy",
            "--envelope-success",
            r#"{"a":$data,"b":$data}"#,
        ]);
        assert!(
            error.starts_with(r#"error: invalid value '{"a":$data,"b":$data}' for '--envelope-success <TEMPLATE>': `$data` appears more than once; a success template holds it exactly once"#),
            "{error}"
        );
        let error = message(&[
            "envelope-proxy",
            "--upstream-envelope-error",
            r#"{"x":$foo}"#,
        ]);
        assert!(
            error
                .contains("for '--upstream-envelope-error <TEMPLATE>': unknown placeholder `$foo`"),
            "{error}"
        );
        let config = Config::try_parse_from([
            "envelope-proxy",
            "--envelope=jsend",
            "--upstream-envelope=code-msg-data",
            "--upstream-shape=envelope",
        ])
        .unwrap();
        assert_eq!(
            (config.envelope, config.upstream_envelope),
            (Preset::Jsend, Some(Preset::CodeMsgData))
        );
        assert!(!config.envelopes().unwrap().same());
        // Unreadable upstream templates are refused once the upstream speaks envelope.
        let config = Config::try_parse_from([
            "envelope-proxy",
            "--upstream-shape=envelope",
            r#"--upstream-envelope-success={"data":$data}"#,
        ])
        .unwrap();
        assert_eq!(
            config.envelopes().map(|_| ()).unwrap_err(),
            "the upstream envelope cannot be read: the success template has no member with a constant value (a discriminator) to tell success from error"
        );
    }

    #[test]
    fn listen_repeats_on_the_command_line() {
        let config = Config::try_parse_from([
            "envelope-proxy",
            "--listen",
            "127.0.0.1:1",
            "--listen=unix:/run/envelope-proxy/proxy.sock",
        ])
        .unwrap();
        assert_eq!(
            config.listen,
            [
                ListenAddr::Tcp("127.0.0.1:1".parse().unwrap()),
                ListenAddr::Unix("/run/envelope-proxy/proxy.sock".into())
            ]
        );
    }

    #[test]
    fn paired_files_are_required_together_and_modes_are_octal() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| Config::try_parse_from(args).map(|_| ()).unwrap_err().kind();
        assert_eq!(
            kind(&["envelope-proxy", "--tls-cert", "/c.pem"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["envelope-proxy", "--upstream-client-key", "/k.pem"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["envelope-proxy", "--unix-socket-mode", "999"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o640").unwrap(), 0o640);
        let octal = |v: &str| format!("`{v}` is not an octal mode between 000 and 777 (e.g. 660)");
        assert_eq!(parse_mode("999"), Err(octal("999")));
        assert_eq!(parse_mode("1777"), Err(octal("1777")));
    }

    #[test]
    fn seconds_accept_fractions_and_reject_garbage() {
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_seconds("-1"),
            Err("`-1` must be between 0 and 31536000 seconds".to_string())
        );
        assert_eq!(
            parse_seconds("soon"),
            Err("`soon` is not a number of seconds".to_string())
        );
    }
}
