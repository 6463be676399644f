//! The JSON check's long texts, looked at a block at a time in vector registers: how far a
//! string's contents run in whole blocks of plain bytes ([`plain`]), where a text in another
//! script stops ([`stops`], a mask of its quotes, backslashes and control characters), and how
//! far a text written in `\u` escapes runs ([`unicode_run`]).
//!
//! A completion's text is the one long string of most bodies, and at 64 KiB this loop was a
//! third of a wrapped request's instructions. The release build targets any x86-64, whose
//! vectors are SSE2's 16 bytes; where the CPU has AVX2 (every x86-64 server of the last
//! decade), the same loop compiled for it takes 32 bytes a step, chosen once per long string by
//! the standard library's cached CPU check. Other targets use the portable loop, which the
//! compiler vectorises for their own registers (NEON on aarch64).
//!
//! The masks of [`stops`] and [`unicode_run`] need the vector instruction that makes a mask of
//! a comparison (`pmovmskb`), which the compiler makes of no portable loop: they are written
//! with the standard library's SSE2 and AVX2 intrinsics. On other targets [`stops`] reads a
//! word at a time, and [`unicode_run`] leaves the run to its caller's word-at-a-time read.

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

/// The bytes of ten `\u` escapes: what [`unicode_run`] takes a block at a time. A block of
/// [`LANES`] bytes holds ten whole escapes and the start of an eleventh.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const TEN_ESCAPES: usize = 60;

/// A block of `\u` escapes from its start, byte by byte: `\` and `u` where each escape starts,
/// and `0` (one of the hex digits) in the places of its digits.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const ESCAPES_BLOCK: [u8; LANES] = {
    let mut block = [b'0'; LANES];
    let mut at = 0;
    while at < LANES {
        block[at] = b'\\';
        block[at + 1] = b'u';
        at += 6;
    }
    block
};

/// The places of the hex digits in [`ESCAPES_BLOCK`], bit `i` for byte `i`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const HEX_PLACES: u64 = {
    let mut places = 0;
    let mut at = 0;
    while at < LANES {
        if at % 6 >= 2 {
            places |= 1 << at;
        }
        at += 1;
    }
    places
};

/// How many bytes from the start of `bytes` are `\u` escapes, whole, one after another (a
/// multiple of six). A text in another script from a serialiser that writes only ASCII is
/// nothing but these, and one at a time each cost 21 instructions; here ten are looked at
/// together, in vectors. It stops where fewer than [`LANES`] bytes are left: the caller reads
/// the rest one escape at a time. On other targets than x86-64 it takes none: the caller reads
/// the whole run.
#[inline(never)]
pub(super) fn unicode_run(bytes: &[u8]) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return if std::arch::is_x86_feature_detected!("avx2") {
        unicode_run_avx2(bytes)
    } else {
        unicode_run_in::<false>(bytes)
    };
    #[allow(unreachable_code)]
    {
        let _ = bytes;
        0
    }
}

/// [`unicode_run`] in the build's vectors (`AVX2` false) or in AVX2's.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn unicode_run_in<const AVX2: bool>(bytes: &[u8]) -> usize {
    let mut taken = 0;
    while let Some(block) = bytes.get(taken..).and_then(<[u8]>::first_chunk) {
        let wrong = !escape_places::<AVX2>(block);
        if wrong != 0 {
            // The escapes before the first wrong byte's are whole. (One in the eleventh
            // escape's first four bytes ends the run after the tenth, as the next block would.)
            return taken + wrong.trailing_zeros() as usize / 6 * 6;
        }
        taken += TEN_ESCAPES;
    }
    taken
}

/// [`unicode_run`] on a CPU that has AVX2: a call to code compiled for it.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
fn unicode_run_avx2(bytes: &[u8]) -> usize {
    debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
    // SAFETY: `unicode_run`, the only caller, calls this only after
    // `is_x86_feature_detected!("avx2")` said the CPU has AVX2, the one requirement of a
    // `#[target_feature]` function; its body's AVX2 steps need it too.
    unsafe { unicode_run_compiled_for_avx2(bytes) }
}

/// [`unicode_run_in`] in a function the compiler may use AVX2 in.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn unicode_run_compiled_for_avx2(bytes: &[u8]) -> usize {
    unicode_run_in::<true>(bytes)
}

/// Which bytes of `block` are what a run of `\u` escapes from its start has in their places
/// ([`ESCAPES_BLOCK`]: `\`, `u`, a hex digit), bit `i` for byte `i`. `AVX2` as for [`stops`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn escape_places<const AVX2: bool>(block: &[u8; LANES]) -> u64 {
    if AVX2 {
        escape_places_avx2(block)
    } else {
        escape_places_sse2(block)
    }
}

/// [`escape_places`] in AVX2: two vectors of 32 bytes, the same steps as
/// [`escape_places_sse2`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline(always)]
fn escape_places_avx2(block: &[u8; LANES]) -> u64 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_sub_epi8,
    };
    let mut places = 0;
    for (i, (half, expected)) in block
        .chunks_exact(32)
        .zip(ESCAPES_BLOCK.chunks_exact(32))
        .enumerate()
    {
        // SAFETY: `escape_places::<true>`, the only caller, runs only where the CPU was found
        // to have AVX2 (`unicode_run_avx2`, and the tests after the same check); each load
        // reads the 32 bytes of `half` or of `expected`.
        let (same, hex) = unsafe {
            let bytes = _mm256_loadu_si256(half.as_ptr().cast::<__m256i>());
            let same = _mm256_cmpeq_epi8(
                bytes,
                _mm256_loadu_si256(expected.as_ptr().cast::<__m256i>()),
            );
            // `x - lo` at most `hi - lo`, unsigned: `min(d, hi - lo) == d`.
            let digit = _mm256_sub_epi8(bytes, _mm256_set1_epi8(b'0' as i8));
            let digit = _mm256_cmpeq_epi8(_mm256_min_epu8(digit, _mm256_set1_epi8(9)), digit);
            let lower = _mm256_or_si256(bytes, _mm256_set1_epi8(0x20));
            let letter = _mm256_sub_epi8(lower, _mm256_set1_epi8(b'a' as i8));
            let letter = _mm256_cmpeq_epi8(_mm256_min_epu8(letter, _mm256_set1_epi8(5)), letter);
            (
                _mm256_movemask_epi8(same),
                _mm256_movemask_epi8(_mm256_or_si256(digit, letter)),
            )
        };
        let hex = u64::from(hex as u32) & (HEX_PLACES >> (32 * i));
        places |= (u64::from(same as u32) | hex) << (32 * i);
    }
    places
}

/// [`escape_places`] in SSE2: four vectors of sixteen bytes. A byte is in its place when it
/// equals [`ESCAPES_BLOCK`]'s (whose `0` in a digit's place is itself a hex digit), or is a
/// hex digit where a digit goes: `x - '0'` at most 9, or `(x | 0x20) - 'a'` at most 5.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline(always)]
fn escape_places_sse2(block: &[u8; LANES]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_sub_epi8,
    };
    let mut places = 0;
    for (i, (sixteen, expected)) in block
        .chunks_exact(16)
        .zip(ESCAPES_BLOCK.chunks_exact(16))
        .enumerate()
    {
        // SAFETY: the intrinsics need SSE2, which this build targets (the `cfg` above); each
        // load reads the sixteen bytes of `sixteen` or of `expected`.
        let (same, hex) = unsafe {
            let bytes = _mm_loadu_si128(sixteen.as_ptr().cast::<__m128i>());
            let same = _mm_cmpeq_epi8(bytes, _mm_loadu_si128(expected.as_ptr().cast::<__m128i>()));
            // `x - lo` at most `hi - lo`, unsigned: `min(d, hi - lo) == d`.
            let digit = _mm_sub_epi8(bytes, _mm_set1_epi8(b'0' as i8));
            let digit = _mm_cmpeq_epi8(_mm_min_epu8(digit, _mm_set1_epi8(9)), digit);
            let lower = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
            let letter = _mm_sub_epi8(lower, _mm_set1_epi8(b'a' as i8));
            let letter = _mm_cmpeq_epi8(_mm_min_epu8(letter, _mm_set1_epi8(5)), letter);
            (
                _mm_movemask_epi8(same),
                _mm_movemask_epi8(_mm_or_si128(digit, letter)),
            )
        };
        let hex = u64::from(hex as u16) & (HEX_PLACES >> (16 * i));
        places |= (u64::from(same as u16) | hex) << (16 * i);
    }
    places
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

    /// The mask [`escape_places`] must make, one byte at a time.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    fn escape_places_reference(block: &[u8; LANES]) -> u64 {
        let mut places = 0;
        for (i, &byte) in block.iter().enumerate() {
            let in_place = match i % 6 {
                0 => byte == b'\\',
                1 => byte == b'u',
                _ => byte.is_ascii_hexdigit(),
            };
            places |= u64::from(in_place) << i;
        }
        places
    }

    /// Whole `\u` escapes, `count` of them, in several kinds of digits.
    fn unicode_escapes_text(count: usize) -> Vec<u8> {
        let escapes: [&[u8]; 5] = [b"\\u4f60", b"\\uABCD", b"\\u00e9", b"\\ufFfF", b"\\u9a0B"];
        escapes
            .iter()
            .cycle()
            .take(count)
            .copied()
            .collect::<Vec<_>>()
            .concat()
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[test]
    fn every_byte_in_every_place_of_a_block_of_unicode_escapes() {
        let valid = unicode_escapes_text(11);
        for at in 0..LANES {
            for byte in 0..=255u8 {
                let mut block: [u8; LANES] = valid[..LANES].try_into().unwrap();
                block[at] = byte;
                let expected = escape_places_reference(&block);
                assert_eq!(
                    escape_places::<false>(&block),
                    expected,
                    "{byte:02x} at {at}"
                );
                if std::arch::is_x86_feature_detected!("avx2") {
                    assert_eq!(
                        escape_places::<true>(&block),
                        expected,
                        "{byte:02x} at {at}"
                    );
                }
            }
        }
        assert_eq!(
            escape_places_reference(&valid[..LANES].try_into().unwrap()),
            u64::MAX
        );
    }

    /// How many bytes from the start of `bytes` are whole `\u` escapes, one at a time.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    fn unicode_run_reference(bytes: &[u8]) -> usize {
        bytes
            .chunks_exact(6)
            .take_while(|six| six[..2] == *b"\\u" && six[2..].iter().all(u8::is_ascii_hexdigit))
            .count()
            * 6
    }

    /// [`unicode_run`] of `bytes` from every build here: the run one at a time, but no further
    /// than the blocks of ten it looks at (from the start, while a whole block is left).
    fn unicode_runs_agree(bytes: &[u8]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            let blocks = bytes.len().saturating_sub(LANES - TEN_ESCAPES) / TEN_ESCAPES;
            let expected = unicode_run_reference(bytes).min(blocks * TEN_ESCAPES);
            assert_eq!(unicode_run(bytes), expected, "{bytes:02x?}");
            assert_eq!(unicode_run_in::<false>(bytes), expected, "{bytes:02x?}");
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        assert_eq!(unicode_run(bytes), 0, "{bytes:02x?}");
    }

    #[test]
    fn a_run_of_unicode_escapes_is_taken_in_blocks_to_its_last_whole_escape() {
        // Runs of every length to past four blocks, then whatever may follow one, and a few
        // bytes more or less: the run ends after its last whole escape, never short of it
        // within the blocks looked at, never past it.
        for count in 0..=45 {
            for tail in super::super::tests::AFTER_A_RUN {
                for extra in 0..8 {
                    let text =
                        [&unicode_escapes_text(count)[..], tail, &vec![b'0'; extra]].concat();
                    unicode_runs_agree(&text);
                }
            }
        }
        // Every byte value in every place of a run of 25 escapes.
        let valid = unicode_escapes_text(25);
        for at in 0..valid.len() {
            for byte in 0..=255u8 {
                let mut text = valid.clone();
                text[at] = byte;
                unicode_runs_agree(&text);
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
