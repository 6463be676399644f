//! `x-request-id`: kept when the client sent a usable one, generated otherwise.
//!
//! The id goes upstream with the request (it is an end-to-end header), back to the client on
//! the response when the upstream did not set its own, and into the access log. A client's
//! id is used only if it is 1–200 visible ASCII characters, so it cannot break a log line.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Returns the request's id, generating one (and setting the header) when it has no usable one.
pub(crate) fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        if is_usable(value) {
            return value.clone();
        }
    }
    let id = generate();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

fn is_usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=200).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// 32 hex digits: a per-process random key hashed with a counter (unique within the process,
/// unpredictable across processes), with no randomness dependency.
fn generate() -> HeaderValue {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let keys = KEYS.get_or_init(RandomState::new);
    let mut id = [0u8; 32];
    hex(keys.hash_one(n), &mut id[..16]);
    hex(keys.hash_one(!n), &mut id[16..]);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `value` as lower-case hex digits filling `out` (16 for a whole `u64`), most significant
/// first: what `{:016x}` writes, without the formatting machinery on every request.
fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let last = out.len().saturating_sub(1);
    for (i, digit) in out.iter_mut().enumerate() {
        let shift = 4 * (last - i);
        *digit = DIGITS[(value.checked_shr(shift as u32).unwrap_or(0) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_those_of_the_formatter() {
        for value in [
            0,
            1,
            0xf,
            0x10,
            0xdead_beef,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            let mut out = [0u8; 16];
            hex(value, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{value:016x}"));
        }
    }

    #[test]
    fn a_usable_client_id_is_kept_and_a_missing_or_odd_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("req_abc-123"));
        assert_eq!(ensure(&mut headers), "req_abc-123");

        let mut headers = HeaderMap::new();
        let generated = ensure(&mut headers);
        assert_eq!(generated.len(), 32);
        assert!(generated.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(headers[X_REQUEST_ID], generated);
        assert_ne!(ensure(&mut HeaderMap::new()), generated);

        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("two words"));
        let replaced = ensure(&mut headers);
        assert_ne!(replaced, "two words");
        assert_eq!(headers[X_REQUEST_ID], replaced);
    }
}
