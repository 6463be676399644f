//! `x-request-id`: kept when the client sent a usable one, generated otherwise.
//!
//! The id goes upstream with the request (it is an end-to-end header), back to the client on
//! the response when the upstream did not set its own, and into the access log. A client's
//! id is used only if it is 1–200 visible ASCII characters, so it cannot break a log line.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

pub(crate) use crate::headers::X_REQUEST_ID;

/// Returns the request's id, generating one (and setting the header) when it has no usable one.
/// `sent`: whether the client sent the field at all ([`crate::headers::Present`]).
pub(crate) fn ensure(headers: &mut HeaderMap, sent: bool) -> HeaderValue {
    if let Some(value) = sent.then(|| headers.get(&X_REQUEST_ID)).flatten() {
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

/// 32 hex digits: 16 random per process (two processes' ids differ), then the request's
/// number in the process through a bijection (unique within it, and not sequential to the
/// eye), with no randomness dependency. An id is no secret — a client may send any id it
/// likes — so a keyed hash per request (two SipHash runs, ~1 % of a small request's
/// instructions) bought nothing.
fn generate() -> HeaderValue {
    static PROCESS: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let &(prefix, key) = PROCESS.get_or_init(|| {
        let random = RandomState::new();
        (random.hash_one(0u64), random.hash_one(1u64))
    });
    let mut id = [0u8; 32];
    hex(prefix, &mut id[..16]);
    hex(mix(n ^ key), &mut id[16..]);
    // Owned by its `Bytes` (one allocation, with the count): the id is cloned for the log,
    // and a value copied from a slice would make that clone allocate its count apart.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// splitmix64's finaliser: a bijection of `u64` (each step is invertible), so distinct
/// numbers give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    fn generated_ids_share_the_process_half_and_never_repeat() {
        let ids: Vec<HeaderValue> = (0..20_000).map(|_| generate()).collect();
        let prefix = &ids[0].as_bytes()[..16];
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && &id.as_bytes()[..16] == prefix));
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().map(|id| id.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        // Consecutive numbers do not give neighbouring ids.
        assert_ne!(ids[0].as_bytes()[16..30], ids[1].as_bytes()[16..30]);
    }

    #[test]
    fn mix_undone_gives_back_the_lowest_and_the_highest_numbers() {
        // Inverting each step: the finaliser undone gives the number back.
        fn unmix(mut z: u64) -> u64 {
            z ^= (z >> 31) ^ (z >> 62);
            z = z.wrapping_mul(0x3196_42b2_d24d_8ec3);
            z ^= (z >> 27) ^ (z >> 54);
            z = z.wrapping_mul(0x96de_1b17_3f11_9089);
            z ^= (z >> 30) ^ (z >> 60);
            z
        }
        for n in (0..10_000u64).chain((0..10_000).map(|i| u64::MAX - i)) {
            assert_eq!(unmix(mix(n)), n);
        }
    }

    /// [`ensure`] as a request's headers call it.
    fn ensured(headers: &mut HeaderMap) -> HeaderValue {
        let sent = crate::headers::Present::of(headers).x_request_id;
        ensure(headers, sent)
    }

    #[test]
    fn a_usable_client_id_is_kept_and_a_missing_or_odd_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("req_abc-123"));
        assert_eq!(ensured(&mut headers), "req_abc-123");

        let mut headers = HeaderMap::new();
        let generated = ensured(&mut headers);
        assert_eq!(generated.len(), 32);
        assert!(generated.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(headers[X_REQUEST_ID], generated);
        assert_ne!(ensured(&mut HeaderMap::new()), generated);

        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("two words"));
        let replaced = ensured(&mut headers);
        assert_ne!(replaced, "two words");
        assert_eq!(headers[X_REQUEST_ID], replaced);
    }
}
