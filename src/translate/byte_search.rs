//! The byte searches the body readers repeat many times a body: a string's next `"` (or `"` or
//! `\`), an event stream's next line ending. Each searcher is built once.
//!
//! `memchr::memchr2` picks its implementation through a function pointer and builds its
//! vectors of the two bytes on every call (`memchr` likewise for one): about 35 of the ~80
//! instructions of a search over the few dozen bytes between two escapes of a text, or across
//! one streamed event. Where the CPU has AVX2, the same search from a searcher built at the
//! first use costs only the search; elsewhere it is `memchr2` (or `memchr`) as before.

use std::sync::LazyLock;

/// The first `"` or `\` in `haystack`.
#[inline(always)]
pub(crate) fn quote_or_backslash(haystack: &[u8]) -> Option<usize> {
    static SEARCH: LazyLock<TwoBytes> = LazyLock::new(|| TwoBytes::new(b'"', b'\\'));
    SEARCH.find(haystack)
}

/// The first `"` in `haystack`.
#[inline(always)]
pub(crate) fn quote(haystack: &[u8]) -> Option<usize> {
    static SEARCH: LazyLock<OneByte> = LazyLock::new(|| OneByte::new(b'"'));
    SEARCH.find(haystack)
}

/// The first `\n` or `\r` in `haystack`.
#[inline(always)]
pub(crate) fn line_end(haystack: &[u8]) -> Option<usize> {
    static SEARCH: LazyLock<TwoBytes> = LazyLock::new(|| TwoBytes::new(b'\n', b'\r'));
    SEARCH.find(haystack)
}

/// A search for one byte.
struct OneByte {
    byte: u8,
    /// Built when the CPU has AVX2, which `One::new` checks.
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::One>,
}

impl OneByte {
    fn new(byte: u8) -> Self {
        OneByte {
            byte,
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::One::new(byte),
        }
    }

    #[inline(always)]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(search) = &self.avx2 {
            return search.find(haystack);
        }
        memchr::memchr(self.byte, haystack)
    }
}

/// A search for either of two bytes.
struct TwoBytes {
    bytes: (u8, u8),
    /// Built when the CPU has AVX2, which `Two::new` checks.
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
}

impl TwoBytes {
    fn new(first: u8, second: u8) -> Self {
        TwoBytes {
            bytes: (first, second),
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(first, second),
        }
    }

    #[inline(always)]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(search) = &self.avx2 {
            return search.find(haystack);
        }
        memchr::memchr2(self.bytes.0, self.bytes.1, haystack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte at every place of a haystack longer than two AVX2 vectors and a part, and
    /// every length, against a byte-by-byte search; both searchers and `memchr2`'s way.
    #[test]
    fn finds_the_first_of_the_two_bytes_anywhere() {
        let len = 2 * 32 + 17;
        for byte in 0..=255u8 {
            for at in 0..len {
                let mut haystack = vec![b'a'; len];
                haystack[at] = byte;
                if at + 2 < len {
                    // A second one further on: the first is the answer.
                    haystack[len - 1] = b'"';
                    haystack[len - 2] = b'\n';
                }
                for start in [0, at.saturating_sub(1), at, at + 1] {
                    let part = &haystack[start.min(len)..];
                    let quote = part.iter().position(|&b| b == b'"' || b == b'\\');
                    let only_quote = part.iter().position(|&b| b == b'"');
                    let line = part.iter().position(|&b| b == b'\n' || b == b'\r');
                    assert_eq!(quote_or_backslash(part), quote, "{byte:02x} at {at}");
                    assert_eq!(super::quote(part), only_quote, "{byte:02x} at {at}");
                    assert_eq!(line_end(part), line, "{byte:02x} at {at}");
                    let fallback = TwoBytes {
                        #[cfg(target_arch = "x86_64")]
                        avx2: None,
                        ..TwoBytes::new(b'"', b'\\')
                    };
                    assert_eq!(fallback.find(part), quote, "{byte:02x} at {at}");
                    let fallback = OneByte {
                        #[cfg(target_arch = "x86_64")]
                        avx2: None,
                        ..OneByte::new(b'"')
                    };
                    assert_eq!(fallback.find(part), only_quote, "{byte:02x} at {at}");
                }
            }
        }
        for len in 0..len {
            let plain = vec![b'x'; len];
            assert_eq!(quote_or_backslash(&plain), None, "{len}");
            assert_eq!(quote(&plain), None, "{len}");
            assert_eq!(line_end(&plain), None, "{len}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn uses_avx2_where_the_cpu_has_it() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        assert_eq!(TwoBytes::new(b'"', b'\\').avx2.is_some(), avx2);
        assert_eq!(OneByte::new(b'"').avx2.is_some(), avx2);
    }
}
