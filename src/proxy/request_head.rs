//! Request heads refused before any upstream contact, for every request and on HTTP/1 and
//! HTTP/2 alike:
//!
//! - more header fields than `--max-headers`: 431 (hyper enforces the limit on HTTP/1 with a
//!   bare 431; HTTP/2 requests are counted here and answered in the client's dialect);
//! - a transfer coding other than `chunked` (`Transfer-Encoding: gzip, chunked`): 501, as
//!   RFC 9112 §6.1 asks — forwarding it would silently drop the coding;
//! - more than one `Authorization` field: 400, as nginx does. The proxy checks one key and must
//!   never let a second, unchecked one through.

use http::header::{HeaderMap, AUTHORIZATION, TRANSFER_ENCODING};

use crate::error::{ApiError, ErrorCode};
use crate::headers::Present;

/// Checks the header fields of a request; `fields` is how many the client sent (the proxy may
/// have added its `x-request-id` since), `present` which of them.
pub(crate) fn check_head(
    headers: &HeaderMap,
    present: Present,
    fields: usize,
    max_headers: usize,
) -> Result<(), ApiError> {
    if fields > max_headers {
        return Err(ApiError::proxy(
            ErrorCode::TooManyHeaders,
            format!("request refused: more than {max_headers} header fields (--max-headers)"),
        ));
    }
    let foreign_coding = present.transfer_encoding
        && headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if foreign_coding {
        return Err(ApiError::proxy(
            ErrorCode::UnsupportedTransferCoding,
            "request refused: the only transfer coding accepted is `chunked`",
        ));
    }
    if present.authorization && headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(ApiError::proxy(
            ErrorCode::DuplicateAuthorization,
            "request refused: more than one Authorization header",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn check(headers: &HeaderMap, max_headers: usize) -> Result<(), ApiError> {
        check_head(headers, Present::of(headers), headers.len(), max_headers)
    }

    fn code(result: Result<(), ApiError>) -> Option<(u16, String)> {
        result
            .err()
            .map(|e| (e.status.as_u16(), e.code.to_string()))
    }

    #[test]
    fn heads_are_checked() {
        assert_eq!(code(check(&map(&[("a", "1"), ("a", "2")]), 2)), None);
        assert_eq!(
            code(check(&map(&[("a", "1"), ("a", "2"), ("b", "3")]), 2)),
            Some((431, "\"too_many_headers\"".into()))
        );
        for te in ["chunked", "Chunked", " chunked "] {
            assert_eq!(code(check(&map(&[("transfer-encoding", te)]), 100)), None);
        }
        for te in ["gzip, chunked", "identity", "chunked, x"] {
            assert_eq!(
                code(check(&map(&[("transfer-encoding", te)]), 100)),
                Some((501, "\"unsupported_transfer_coding\"".into())),
                "{te}"
            );
        }
        assert_eq!(
            code(check(
                &map(&[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked")
                ]),
                100
            )),
            Some((501, "\"unsupported_transfer_coding\"".into()))
        );
        assert_eq!(
            code(check(
                &map(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                100
            )),
            Some((400, "\"duplicate_authorization\"".into()))
        );
        assert_eq!(
            code(check(&map(&[("authorization", "Bearer a")]), 100)),
            None
        );
    }
}
