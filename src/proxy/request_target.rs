//! No open proxy: request targets refused before any upstream contact.
//!
//! Only `/v1/…` and `/api/v1/…` are proxied, and always to the configured upstream. Refused
//! with 400: `CONNECT`; absolute-form targets (`GET http://evil/ … HTTP/1.1`); and, on every
//! path before routing, empty segments, backslashes, NUL and other control characters (also
//! percent-encoded), encoded `/` and `\`, and any segment that a path-normalising hop behind us
//! could resolve to `.` or `..`. Tomcat, Jetty and Spring (common behind enterprise envelope
//! platforms) strip `;params` from segments, decode percent-escapes and trim whitespace and NUL,
//! so `..;`, `%2e%2e%3b`, `..%00` and `..%20` all count as `..`; a hop that decodes again sees
//! `%252e%252e` as `..` too, so up to [`DECODE_ROUNDS`] decodings are checked.

use http::{Method, Uri, Version};

use crate::error::{ApiError, ErrorCode};

/// Checks the method and the target's form, for every request. `Err` carries the reason.
pub(crate) fn check_target(method: &Method, uri: &Uri, version: Version) -> Result<(), ApiError> {
    if method == Method::CONNECT {
        return Err(refuse(
            "CONNECT is not supported: envelope-proxy is not a forward proxy",
        ));
    }
    // HTTP/2 always carries :authority in the URI; in HTTP/1 an authority means absolute-form,
    // which clients only send to a forward proxy — exactly what we refuse to be.
    if version < Version::HTTP_2 && uri.authority().is_some() {
        return Err(refuse("absolute-form request targets are not proxied"));
    }
    Ok(())
}

/// How many successive percent-decodings a path segment is checked under.
const DECODE_ROUNDS: usize = 3;

/// Checks a request's path, for every request before it is routed.
pub(crate) fn check_path(path: &str) -> Result<(), ApiError> {
    // Bytes, not chars: a `str` pattern search set up per segment cost more than the checks.
    let path = path.as_bytes();
    if path.contains(&b'\\') {
        return Err(refuse("the path must not contain backslashes"));
    }
    // Skip the leading "/"; every segment after it must be a plain name. A trailing slash is
    // left to routing (`/` and `/api/v1/` are unknown routes) and to [`check_proxied_path`].
    let segments = path.strip_suffix(b"/").unwrap_or(path);
    for segment in segments.split(|&b| b == b'/').skip(1) {
        if segment.is_empty() {
            return Err(refuse("the path must not contain empty segments"));
        }
        check_segment(segment)?;
    }
    Ok(())
}

/// The extra rule for a path about to be proxied: no trailing empty segment either.
pub(crate) fn check_proxied_path(path: &str) -> Result<(), ApiError> {
    if path.ends_with('/') {
        return Err(refuse("the path must not contain empty segments"));
    }
    Ok(())
}

/// One segment, as it is and under each further decoding a hop behind us might apply.
fn check_segment(segment: &[u8]) -> Result<(), ApiError> {
    // The usual case (`chat`, `gpt-4.1`) has nothing any hop could decode, strip or trim.
    let plain = segment
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if plain && segment != b"." && segment != b".." {
        return Ok(());
    }
    let mut current = segment.to_vec();
    for _ in 0..DECODE_ROUNDS {
        let resolved = resolve(&current);
        if resolved == "." || resolved == ".." {
            return Err(refuse("the path must not contain `.` or `..` segments"));
        }
        if current.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(refuse(
                "the path must not contain NUL or control characters",
            ));
        }
        if resolved.is_empty() {
            return Err(refuse("the path must not contain empty segments"));
        }
        if current.contains(&b'/') || current.contains(&b'\\') {
            return Err(refuse("the path must not contain encoded `/` or `\\`"));
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            break;
        }
        current = decoded;
    }
    Ok(())
}

/// What a Tomcat/Jetty/Spring hop makes of the segment: `;params` stripped, then whitespace and
/// control characters (NUL included) trimmed from both ends.
fn resolve(segment: &[u8]) -> String {
    let name = match segment.iter().position(|&b| b == b';') {
        Some(end) => &segment[..end],
        None => segment,
    };
    String::from_utf8_lossy(name)
        .trim_matches(|c: char| c <= ' ' || c == '\u{7f}' || c.is_whitespace())
        .to_owned()
}

/// One round of percent-decoding; invalid escapes stay as they are.
fn percent_decode(segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (
                segment.get(i + 1).copied().and_then(hex),
                segment.get(i + 2).copied().and_then(hex),
            ) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(segment[i]);
        i += 1;
    }
    out
}

fn refuse(reason: &str) -> ApiError {
    ApiError::proxy(
        ErrorCode::InvalidRequestTarget,
        format!("request refused: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_uri(method: Method, target: &str) -> Result<(), String> {
        let uri: Uri = target.parse().unwrap();
        check_target(&method, &uri, Version::HTTP_11)
            .and_then(|()| check_path(uri.path()))
            .and_then(|()| check_proxied_path(uri.path()))
            .map_err(|e| e.message)
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/v1/chat/completions",
            "/api/v1/models/gpt-4o",
            "/v1/files/file-abc%20x",
            "/healthz",
        ] {
            assert_eq!(check_uri(Method::POST, path), Ok(()), "{path}");
        }
    }

    #[test]
    fn traversal_in_every_spelling_is_refused() {
        let dots = "the path must not contain `.` or `..` segments";
        let empty = "the path must not contain empty segments";
        let encoded = "the path must not contain encoded `/` or `\\`";
        for (path, reason) in [
            ("/v1/../admin", dots),
            ("/v1/%2e%2e/admin", dots),
            ("/v1/%2E%2e/admin", dots),
            ("/v1/.%2e/admin", dots),
            ("/v1/./models", dots),
            ("/v1/%2e/models", dots),
            ("/v1//models", empty),
            ("/v1/models/", empty),
            ("/v1/a\\..\\b", "the path must not contain backslashes"),
            ("/v1/..%2fadmin", encoded),
            ("/v1/%5c..", encoded),
        ] {
            assert_eq!(
                check_uri(Method::GET, path),
                Err(format!("request refused: {reason}")),
                "{path}"
            );
        }
    }

    #[test]
    fn segments_a_servlet_hop_resolves_to_dots_are_refused() {
        let dots = "request refused: the path must not contain `.` or `..` segments";
        for path in [
            "/v1/..;/admin",
            "/v1/..;jsessionid=x/admin",
            "/v1/.;/models",
            "/v1/%2e%2e%3b/admin",
            "/v1/%2e%2e%3B/admin",
            "/v1/..%00/x",
            "/v1/..%20/x",
            "/v1/%20..%09/x",
            "/v1/..%e3%80%80/x",
            "/v1/%252e%252e/admin",
        ] {
            assert_eq!(check_uri(Method::GET, path), Err(dots.to_owned()), "{path}");
        }
        let control = "request refused: the path must not contain NUL or control characters";
        for path in ["/v1/models%00", "/v1/a%0ab", "/v1/x%7f", "/v1/%2500"] {
            assert_eq!(
                check_uri(Method::GET, path),
                Err(control.to_owned()),
                "{path}"
            );
        }
        assert_eq!(
            check_uri(Method::GET, "/v1/;x/models").unwrap_err(),
            "request refused: the path must not contain empty segments"
        );
        assert_eq!(check_path("/"), Ok(()));
        assert_eq!(check_path("/api/v1/"), Ok(()));
        // Names that merely contain dots, semicolons or escapes stay allowed.
        for path in [
            "/v1/models/gpt-4.1",
            "/v1/files/a..b",
            "/v1/files/...",
            "/v1/files/x;y",
            "/v1/files/%2541",
        ] {
            assert_eq!(check_uri(Method::GET, path), Ok(()), "{path}");
        }
    }

    #[test]
    fn connect_and_foreign_absolute_form_are_refused() {
        assert_eq!(
            check_uri(Method::CONNECT, "evil.example:443").unwrap_err(),
            "request refused: CONNECT is not supported: envelope-proxy is not a forward proxy"
        );
        for target in [
            "http://evil.example/v1/models",
            "http://127.0.0.1:8080/v1/models",
        ] {
            assert_eq!(
                check_uri(Method::GET, target).unwrap_err(),
                "request refused: absolute-form request targets are not proxied"
            );
        }
    }
}
