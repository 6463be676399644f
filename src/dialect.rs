//! The two response dialects and the routes that select them.
//!
//! A client picks its dialect by path: `/v1/<rest>` is bare (OpenAI's own shape),
//! `/api/v1/<rest>` is envelope. The upstream's dialect is configured. Everything the proxy
//! does to a response follows from the pair (client dialect, upstream dialect).

use clap::ValueEnum;

use crate::error::Form;

/// A response dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Dialect {
    /// OpenAI Chat Completions: the payload itself, errors as `{"error":{…}}`.
    Bare,
    /// `{"success":…,"code":…,"message":…,"data":<payload>}`.
    Envelope,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Bare => "bare",
            Dialect::Envelope => "envelope",
        }
    }
}

impl From<Dialect> for Form {
    fn from(dialect: Dialect) -> Form {
        match dialect {
            Dialect::Bare => Form::Bare,
            Dialect::Envelope => Form::Envelope,
        }
    }
}

/// Where a request goes: the client's dialect and the path below the dialect's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Proxied to `<upstream>/<rest>`.
    Proxy { client: Dialect, rest: &'a str },
    /// `/healthz`: the process is alive.
    Healthz,
    /// `/readyz`: ready to serve (503 while draining).
    Readyz,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// Not ours: answered with 404 in the bare dialect.
    Unknown,
}

const BARE_PREFIX: &str = "/v1/";
const ENVELOPE_PREFIX: &str = "/api/v1/";

/// Classifies a request path. `rest` never starts with `/` and is never empty.
pub fn route(path: &str) -> Route<'_> {
    match path {
        "/healthz" => return Route::Healthz,
        "/readyz" => return Route::Readyz,
        "/metrics" => return Route::Metrics,
        _ => {}
    }
    let (client, rest) = if let Some(rest) = path.strip_prefix(BARE_PREFIX) {
        (Dialect::Bare, rest)
    } else if let Some(rest) = path.strip_prefix(ENVELOPE_PREFIX) {
        (Dialect::Envelope, rest)
    } else {
        return Route::Unknown;
    };
    if rest.is_empty() {
        return Route::Unknown;
    }
    Route::Proxy { client, rest }
}

/// The dialect a path asks for, for answers given before routing (a refused target or head,
/// a connection over its limit): `/api/…` is an envelope client's, anything else bare.
pub(crate) fn asked_by(path: &str) -> Dialect {
    if path.starts_with("/api/") {
        Dialect::Envelope
    } else {
        Dialect::Bare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_select_the_client_dialect() {
        assert_eq!(
            route("/v1/chat/completions"),
            Route::Proxy {
                client: Dialect::Bare,
                rest: "chat/completions"
            }
        );
        assert_eq!(
            route("/api/v1/models"),
            Route::Proxy {
                client: Dialect::Envelope,
                rest: "models"
            }
        );
    }

    #[test]
    fn everything_else_is_not_proxied() {
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/api/v1/",
            "/v2/models",
            "/api/v2/x",
            "/healthz/x",
        ] {
            assert_eq!(route(path), Route::Unknown, "{path}");
        }
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/readyz"), Route::Readyz);
        assert_eq!(route("/metrics"), Route::Metrics);
    }
}
