//! No open proxy: request targets refused before any upstream contact.
//!
//! Only `/v1/…` and `/api/v1/…` are proxied, and always to the configured upstream. Refused
//! with 400: `CONNECT`; absolute-form targets (`GET http://evil/ … HTTP/1.1`);
//! paths with `.` or `..` segments (also percent-encoded, `%2e%2e`), empty segments,
//! backslashes, or encoded `/` and `\` — anything an upstream or a path-normalising hop in front
//! of it might resolve to somewhere other than what we routed.

use http::{Method, StatusCode, Uri, Version};

use crate::api_error::ApiError;

/// Checks the method and the target's form, for every request. `Err` carries the reason.
pub fn check_target(method: &Method, uri: &Uri, version: Version) -> Result<(), ApiError> {
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

/// Checks the path of a request about to be proxied.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    if path.contains('\\') {
        return Err(refuse("the path must not contain backslashes"));
    }
    // Skip the leading "/"; every segment after it must be a plain name.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(refuse("the path must not contain empty segments"));
        }
        let decoded = percent_decode_lossy(segment);
        if decoded == "." || decoded == ".." {
            return Err(refuse("the path must not contain `.` or `..` segments"));
        }
        if decoded.contains('/') || decoded.contains('\\') {
            return Err(refuse("the path must not contain encoded `/` or `\\`"));
        }
    }
    Ok(())
}

/// Percent-decoding for the checks above; invalid escapes stay as they are.
fn percent_decode_lossy(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn refuse(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("request refused: {reason}"),
    )
    .with_code("invalid_request_target")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_uri(method: Method, target: &str) -> Result<(), String> {
        let uri: Uri = target.parse().unwrap();
        check_target(&method, &uri, Version::HTTP_11)
            .and_then(|()| check_path(uri.path()))
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
