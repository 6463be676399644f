//! The long-string skip of the JSON check: how far a string's contents run in whole blocks of
//! plain bytes, looked at a block at a time in vector registers.
//!
//! A completion's text is the one long string of most bodies, and at 64 KiB this loop was a
//! third of a wrapped request's instructions. The release build targets any x86-64, whose
//! vectors are SSE2's 16 bytes; where the CPU has AVX2 (every x86-64 server of the last
//! decade), the same loop compiled for it takes 32 bytes a step, chosen once per long string by
//! the standard library's cached CPU check. Other targets use the portable loop, which the
//! compiler vectorises for their own registers (NEON on aarch64).

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

/// [`plain`] on a CPU that has AVX2: the crate's only `unsafe`, a call to code compiled for AVX2
/// on a CPU just found to have it. Measured (BENCHMARKS.md, sixteenth step): the check of a
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

    #[test]
    fn is_special_is_quote_backslash_control_or_non_ascii() {
        for byte in 0..=255u8 {
            let expected = byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte);
            assert_eq!(is_special(byte), expected, "{byte:02x}");
        }
    }
}
