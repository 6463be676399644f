//! The JSON check's long texts, looked at a block at a time in vector registers: how far a
//! string's contents run in whole blocks of plain bytes ([`plain`]), and where a text in
//! another script stops ([`stops`], a mask of its quotes, backslashes and control characters).
//!
//! A completion's text is the one long string of most bodies, and at 64 KiB this loop was a
//! third of a wrapped request's instructions. The release build targets any x86-64, whose
//! vectors are SSE2's 16 bytes; where the CPU has AVX2 (every x86-64 server of the last
//! decade), the same loop compiled for it takes 32 bytes a step, chosen once per long string by
//! the standard library's cached CPU check. Other targets use the portable loop, which the
//! compiler vectorises for their own registers (NEON on aarch64).
//!
//! The masks of [`stops`] need the vector instruction that makes a mask of a comparison
//! (`pmovmskb`), which the compiler makes of no portable loop: they are written with the
//! standard library's SSE2 and AVX2 intrinsics, and a word at a time on other targets.

/// The bytes [`plain`] passes over at once when none of them is special.
pub(super) const BLOCK: usize = 64;

/// `"`, `\`, a control character or non-ASCII: what `specials` flags, for one byte, written
/// without branches so that a block of them is checked in vector registers. `^ 2` takes `"` to
/// 0x20 and keeps the control characters among themselves, so one signed comparison finds
/// those two and everything from 0x80 up (negative as a signed byte): two comparisons a
/// vector where three took 15 % more instructions and 20 % more time on a long string.
#[inline(always)]
pub(super) fn is_special(byte: u8) -> bool {
    (i8::from_ne_bytes([byte ^ 2]) < 0x21) | (byte == b'\\')
}

/// A byte a text in another script stops at (`text_end` in the parent module): `"`, `\` or a
/// control character. Non-ASCII is no stop there: that text's UTF-8 is checked whole.
#[inline(always)]
pub(super) fn is_stop(byte: u8) -> bool {
    (byte == b'"') | (byte == b'\\') | (byte < 0x20)
}

/// The bytes [`stops`] looks at together.
pub(super) const LANES: usize = 64;

/// The stops of `block` ([`is_stop`]) as a mask, bit `i` for byte `i`. `AVX2` is true only in
/// code compiled for AVX2 and run where the CPU has it (`text_end_avx2` in the parent module).
#[inline(always)]
pub(super) fn stops<const AVX2: bool>(block: &[u8; LANES]) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return if AVX2 {
        stops_avx2(block)
    } else {
        stops_sse2(block)
    };
    #[allow(unreachable_code)]
    stops_portable(block)
}

/// [`stops`] in AVX2: two vectors of 32 bytes, the same steps as [`stops_sse2`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline(always)]
fn stops_avx2(block: &[u8; LANES]) -> u64 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_xor_si256,
    };
    let mut mask = 0;
    for (i, half) in block.chunks_exact(32).enumerate() {
        // SAFETY: `stops::<true>`, the only caller, runs only where the CPU was found to have
        // AVX2 (`text_end_avx2`, and the tests after the same check); the load reads the 32
        // bytes of `half`.
        let bits = unsafe {
            let bytes = _mm256_loadu_si256(half.as_ptr().cast::<__m256i>());
            let shifted = _mm256_xor_si256(bytes, _mm256_set1_epi8(2));
            let control_or_quote =
                _mm256_cmpeq_epi8(_mm256_min_epu8(shifted, _mm256_set1_epi8(0x20)), shifted);
            let backslash = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(b'\\' as i8));
            _mm256_movemask_epi8(_mm256_or_si256(control_or_quote, backslash))
        };
        mask |= u64::from(bits as u32) << (32 * i);
    }
    mask
}

/// [`stops`] in SSE2, which every x86-64 has: four vectors of sixteen bytes, each made a mask
/// of sixteen bits by one instruction (`pmovmskb`). The compiler makes no such mask of a
/// portable loop (it shifts each byte's bit into place, some 40 instructions a vector).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline(always)]
fn stops_sse2(block: &[u8; LANES]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_xor_si128,
    };
    let mut mask = 0;
    for (i, sixteen) in block.chunks_exact(16).enumerate() {
        // SAFETY: the intrinsics need SSE2, which this build targets (the `cfg` above: every
        // x86-64 has it); the load reads the sixteen bytes of `sixteen`, unaligned loads allowed.
        let bits = unsafe {
            let bytes = _mm_loadu_si128(sixteen.as_ptr().cast::<__m128i>());
            // `^ 2` takes `"` to 0x20 and keeps the control characters below it: one unsigned
            // comparison (`min(x, 0x20) == x`) finds both, the non-ASCII bytes left out.
            let shifted = _mm_xor_si128(bytes, _mm_set1_epi8(2));
            let control_or_quote =
                _mm_cmpeq_epi8(_mm_min_epu8(shifted, _mm_set1_epi8(0x20)), shifted);
            let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(control_or_quote, backslash))
        };
        mask |= u64::from(bits as u16) << (16 * i);
    }
    mask
}

/// [`stops`] a word of eight bytes at a time, for other targets: exact for each byte (no sum
/// carries from one byte into the next, as `x & 0x7f` plus at most 0x7f stays in its byte),
/// and each word's high bits gathered into eight bits by one multiplication.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline(always)]
fn stops_portable(block: &[u8; LANES]) -> u64 {
    const ONES: u64 = u64::MAX / 0xff;
    const LOW7: u64 = ONES * 0x7f;
    // `x == 0` for each byte: the high bit of `!(((x & 0x7f) + 0x7f) | x)`.
    let zero = |x: u64| !(((x & LOW7).wrapping_add(LOW7)) | x);
    let mut mask = 0;
    for (i, eight) in block.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        // `x < 0x20`: the high bit of `!(((x & 0x7f) + 0x60) | x)`.
        let control = !(((word & LOW7).wrapping_add(ONES * 0x60)) | word);
        let flags = (control
            | zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\'))))
            & (ONES << 7);
        // The high bits, 8 apart, gathered into the top byte in order: bit `8j` times
        // `2^(56 - 7k)` lands at `56 + j` for `k = j`, and every other pair at a bit of its own
        // outside the top byte, so nothing carries.
        let bits = (flags >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= bits << (8 * i);
    }
    mask
}

/// How many bytes from the start of `bytes` lie in whole [`BLOCK`]s that hold no special byte
/// (a multiple of `BLOCK`; the block that holds one, and a last part block, are left to the
/// caller's word-by-word read).
#[inline(always)]
pub(super) fn plain(bytes: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return plain_avx2(bytes);
    }
    plain_portable(bytes)
}

/// How many blocks [`plain_few`] looks at, in line.
pub(super) const FEW: usize = 4;

/// [`plain`] of at most [`FEW`] blocks, in the build's own vectors and in line: a streamed
/// chunk's content is a block or two, and a call costs more than the wider vectors save there.
#[inline(always)]
pub(super) fn plain_few(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    for _ in 0..FEW {
        match rest.first_chunk::<BLOCK>() {
            Some(block) if !has_special(block) => rest = rest.get(BLOCK..).unwrap_or_default(),
            _ => break,
        }
    }
    bytes.len() - rest.len()
}

/// Whether a block holds a special byte: a branch-free fold the compiler does in vectors.
#[inline(always)]
fn has_special(block: &[u8; BLOCK]) -> bool {
    block
        .iter()
        .fold(false, |any, &byte| any | is_special(byte))
}

/// [`plain`] in whatever vectors the build targets.
#[inline(always)]
fn plain_portable(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    while let Some(block) = rest.first_chunk::<BLOCK>() {
        if has_special(block) {
            break;
        }
        rest = rest.get(BLOCK..).unwrap_or_default();
    }
    bytes.len() - rest.len()
}

/// [`plain`] on a CPU that has AVX2: a call to code compiled for AVX2 on a CPU just found to
/// have it. Measured (BENCHMARKS.md, sixteenth step): the check of a
/// 64 KiB English completion 41.7 k → 20.5 k instructions.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(never)]
fn plain_avx2(bytes: &[u8]) -> usize {
    // Checked by the caller, which is the only one; checked again in debug builds.
    debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
    // SAFETY: the only requirement of a `#[target_feature]` function is that the CPU running
    // it has the features it enables, and `plain` calls this one only after
    // `is_x86_feature_detected!("avx2")` said so. Its body is safe Rust.
    unsafe { compiled_for_avx2(bytes) }
}

/// The portable loop inlined into a function the compiler may use AVX2 in.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn compiled_for_avx2(bytes: &[u8]) -> usize {
    plain_portable(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the first special byte's block starts, one byte at a time: what [`plain`] must
    /// return.
    fn reference(bytes: &[u8]) -> usize {
        let whole = bytes.len() / BLOCK * BLOCK;
        let first_special = bytes.iter().position(|&b| is_special(b)).unwrap_or(whole);
        (first_special / BLOCK * BLOCK).min(whole)
    }

    #[test]
    fn every_byte_at_every_place_of_three_blocks_and_a_part() {
        let len = 3 * BLOCK + 17;
        for byte in 0..=255u8 {
            for at in 0..len {
                let mut bytes = vec![b'a'; len];
                bytes[at] = byte;
                let expected = reference(&bytes);
                assert_eq!(plain_portable(&bytes), expected, "{byte:02x} at {at}");
                assert_eq!(plain(&bytes), expected, "{byte:02x} at {at}");
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    assert_eq!(plain_avx2(&bytes), expected, "{byte:02x} at {at}");
                }
            }
        }
        // Every length from empty to past three blocks, all plain: whole blocks only.
        for len in 0..len {
            let bytes = vec![b'~'; len];
            assert_eq!(plain(&bytes), len / BLOCK * BLOCK, "{len}");
            assert_eq!(plain_portable(&bytes), len / BLOCK * BLOCK, "{len}");
        }
    }

    /// The mask [`stops`] must make, one byte at a time.
    fn stops_reference(block: &[u8; LANES]) -> u64 {
        let mut mask = 0;
        for (i, &byte) in block.iter().enumerate() {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// `block`'s mask from every way of making it there is here.
    fn stops_agree(block: &[u8; LANES]) {
        let expected = stops_reference(block);
        assert_eq!(stops::<false>(block), expected, "{block:02x?}");
        assert_eq!(stops_portable(block), expected, "{block:02x?}");
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(stops::<true>(block), expected, "{block:02x?}");
        }
    }

    #[test]
    fn every_bit_of_a_stop_mask_is_its_own_byte() {
        // Every byte value at every place, among bytes of every kind: each bit is set for its
        // own byte alone (a borrow or carry from a neighbour would set or clear another).
        for filler in [
            b'a', b' ', 0x7f, 0x80, 0xe4, 0xff, b'"', b'\\', 0x00, 0x1f, b'!', 0x5d,
        ] {
            for at in 0..LANES {
                for byte in 0..=255u8 {
                    let mut block = [filler; LANES];
                    block[at] = byte;
                    stops_agree(&block);
                }
            }
        }
        // Every pair of values side by side at the places where words and vectors meet.
        for at in [0, 7, 15, 31, 47, 62] {
            for first in 0..=255u8 {
                for second in 0..=255u8 {
                    let mut block = [b'x'; LANES];
                    (block[at], block[at + 1]) = (first, second);
                    stops_agree(&block);
                }
            }
        }
    }

    #[test]
    fn is_stop_is_quote_backslash_or_control() {
        for byte in 0..=255u8 {
            let expected = byte == b'"' || byte == b'\\' || byte < 0x20;
            assert_eq!(is_stop(byte), expected, "{byte:02x}");
        }
    }

    #[test]
    fn is_special_is_quote_backslash_control_or_non_ascii() {
        for byte in 0..=255u8 {
            let expected = byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte);
            assert_eq!(is_special(byte), expected, "{byte:02x}");
        }
    }
}
