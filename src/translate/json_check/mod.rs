//! Whether a body is one JSON text in UTF-8, decided in a single pass without allocating.
//!
//! [`is_json`] accepts exactly what `std::str::from_utf8(body).is_ok() &&
//! serde_json::from_slice::<IgnoredAny>(body).is_ok()` accepts (the tests compare the two), at
//! about 30% fewer instructions: that pair reads the body twice (UTF-8, then serde's
//! `ignore_value`) and serde keeps a scratch `Vec` of the open containers (one allocation per
//! body that nests). Here string contents are scanned a word of eight bytes at a time,
//! multi-byte UTF-8 is checked where it stands (RFC 3629, the set `from_utf8` accepts), and the
//! open containers are a bit stack whose innermost 64 levels are held in a register. Compact
//! JSON (no whitespace between tokens) takes the shortest paths: whitespace is looked for only
//! where a token is not next, a string that ends within its first sixteen bytes is done
//! inline, and an object's string and number members are read without entering the loop that
//! keeps the container stack.
//!
//! serde_json's rules, as its `ignore_value` applies them (and so, here):
//! - whitespace is space, `\t`, `\n`, `\r` only; one value, surrounded by whitespace at most;
//! - numbers: `-`? then `0` or `[1-9][0-9]*` (no leading zeros), then `.` and at least one
//!   digit, then `e`/`E`, an optional sign and at least one digit;
//! - strings: no byte below 0x20 (DEL is fine); escapes `\" \\ \/ \b \f \n \r \t` and `\u`
//!   with any four hex digits (lone surrogates included: an ignored string is never decoded);
//! - no depth limit: ignoring a value does not recurse.
//!
//! [`object_members`] is the same check for a body that must be an object, and hands out where
//! each top-level member's key and value are as it goes (an envelope's members are read so).
//! [`EventChecks`] (`resume.rs`) is that check for a stream's events, each started where it
//! stops matching the event before.

use std::ops::{Range, RangeInclusive};

use bytes::Bytes;

mod blocks;
mod resume;

pub use resume::EventChecks;
use resume::{Entry, Notes};

/// True when `body` is valid UTF-8 and exactly one JSON value, with optional whitespace around
/// it. Linear in `body`; allocates only beyond 64 levels of nesting (a bit per level).
pub fn is_json(body: &[u8]) -> bool {
    Checker::<false>::new(body, &[]).document().is_some()
}

/// True when the body cut into `pieces` is one JSON text ([`is_json`] of them joined), read
/// without joining them: a string runs on from one piece into the next (a long completion's
/// text, where the cuts of a large body fall), a member's name and whitespace too; a number or
/// a literal cut in two is read again from a copy of its two halves. False when it is not
/// JSON, and also when a number's part before the cut is longer than [`STITCH`] / 2 bytes (an
/// `f64` needs 17 digits): then only [`is_json`] of the joined body can tell.
pub fn is_json_across(pieces: &[Bytes]) -> bool {
    Checker::<true>::across(pieces).is_some_and(|mut checker| checker.document().is_some())
}

/// Whether `body` is one JSON text whose value is an object, as [`is_json`] decides, calling
/// `member(key, value)` for each of that object's members in order: `key` as written between
/// its quotes (escapes undecoded), `value` where the member's value lies in `body` (no
/// whitespace around it). The same single pass: the members of a body that turns out not to be
/// JSON may have been seen before the verdict, so they count only when this returns true.
pub fn object_members<'a>(body: &'a [u8], member: impl FnMut(&'a [u8], Range<usize>)) -> bool {
    Checker::<false>::new(body, &[]).object(member).is_some()
}

/// Whether a member name, as [`object_members`] hands it over (between its quotes), holds an
/// escape (serde would decode it). A plain loop: names are short, and `contains` set up a
/// vector search for each one (0.7 % of a wrapped stream's instructions).
#[allow(clippy::manual_contains)]
pub fn has_escape(name: &[u8]) -> bool {
    name.iter().any(|&byte| byte == b'\\')
}

/// Whether `body` is one JSON text whose value is an array, as [`is_json`] decides, calling
/// `element(value)` for each of its elements in order: where the element lies in `body` (no
/// whitespace around it). As with [`object_members`], the elements count only when this
/// returns true.
pub fn array_elements(body: &[u8], element: impl FnMut(Range<usize>)) -> bool {
    Checker::<false>::new(body, &[]).array(element).is_some()
}

/// [`object_members`] for a body in pieces, read without joining them as [`is_json_across`]
/// reads them (and false where it is false): `member(key, value)` sees where each member's
/// name (as written between its quotes) and its value lie.
pub fn object_members_across<'a>(
    pieces: &'a [Bytes],
    member: impl FnMut(Spread<'a>, Spread<'a>),
) -> bool {
    Checker::<true>::across(pieces)
        .is_some_and(|mut checker| checker.object_across(pieces, member).is_some())
}

impl EventChecks {
    /// [`object_members`] of `body`, the next event of a stream: the same verdict, the same
    /// members handed to `member` in the same order, the check started where `body` stops
    /// matching the event before (see [`resume`]). The stream's first event is checked as
    /// alone: nothing is noted or allocated on the way of a stream's first bytes out.
    pub fn object_members<'a>(
        &mut self,
        body: &'a [u8],
        member: impl FnMut(&'a [u8], Range<usize>),
    ) -> bool {
        if self.first() {
            return object_members(body, member);
        }
        self.resume(body, member, |entry, marks, member| {
            Checker::<false, _>::noting(body, &[], marks)
                .object_from(entry, member)
                .is_some()
        })
    }
}

/// Where a value or a name lies in a body read in pieces: from an offset in one piece to an
/// offset in the same piece or a later one (end excluded).
#[derive(Clone, Copy, Debug)]
pub struct Spread<'a> {
    pieces: &'a [Bytes],
    /// The piece and the offset in it where the value starts.
    start: (usize, usize),
    /// The piece and the offset in it where the value ends.
    end: (usize, usize),
}

impl<'a> Spread<'a> {
    /// Its bytes, piece by piece.
    pub fn parts(self) -> impl Iterator<Item = &'a [u8]> + Clone {
        let ((first, start), (last, end)) = (self.start, self.end);
        let pieces = self.pieces.get(first..=last).unwrap_or_default();
        pieces.iter().enumerate().map(move |(i, piece)| {
            let from = if i == 0 { start } else { 0 };
            let to = if first + i == last { end } else { piece.len() };
            piece.get(from..to).unwrap_or_default()
        })
    }
}

/// 0x01 and 0x80 in every byte of a word.
const ONES: u64 = u64::MAX / 0xff;
const HIGHS: u64 = ONES << 7;

/// The high bit of each byte of `word` that is `"`, `\`, a control character or non-ASCII.
/// For an ASCII byte (not borrowed from), `(byte ^ 2) - 0x21` sets the high bit exactly below
/// 0x20 and at `"` (`^ 2` keeps 0..=0x1f among themselves and takes `"` to 0x20), and
/// `(byte ^ 0x5c) - 1` exactly at `\`. A non-ASCII byte never borrows, and is flagged by one
/// of the two: the second misses only 0xdc, whose `^ 2` is above 0xa0. A borrow comes only
/// out of a lower byte that is flagged, so the lowest flagged byte is always exact (those above
/// it may not be).
#[inline(always)]
fn specials(word: u64) -> u64 {
    let control_or_quote = (word ^ (ONES * 2)).wrapping_sub(ONES * 0x21);
    let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    (control_or_quote | backslash) & HIGHS
}

/// The first flagged byte of `word` (`flags` not 0): its offset in the word, and the byte.
#[inline(always)]
fn first_flagged(word: u64, flags: u64) -> (usize, u8) {
    let shift = flags.trailing_zeros() & !7;
    (shift as usize / 8, (word >> shift) as u8)
}

/// The next byte at or after `at` that is not whitespace, and where it is; None at the end.
/// Compact JSON has none between its tokens: one comparison when the byte at `at` is not.
#[inline(always)]
fn next(bytes: &[u8], at: usize) -> Option<(u8, usize)> {
    let &byte = bytes.get(at)?;
    // Every whitespace byte is at most a space.
    if byte > b' ' {
        Some((byte, at))
    } else {
        after_whitespace(bytes, at)
    }
}

/// [`next`] past whitespace, out of line: rarer, and the hot paths stay short.
#[inline(never)]
fn after_whitespace(bytes: &[u8], mut at: usize) -> Option<(u8, usize)> {
    while let Some(&byte) = bytes.get(at) {
        if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
            return Some((byte, at));
        }
        at += 1;
    }
    None
}

/// A string whose opening quote is before `at`: where it ends. The usual string (a key, an
/// id, a model's name) ends within the next sixteen bytes with nothing to look at before its
/// quote, and is done here, with one load and the second word looked at only when the first
/// has nothing; any other goes on out of line.
#[inline(always)]
fn string(bytes: &[u8], at: usize) -> Option<usize> {
    if let Some(chunk) = bytes
        .get(at..at + 16)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        let both = u128::from_le_bytes(*chunk);
        let (low, high) = (both as u64, (both >> 64) as u64);
        let low_flags = specials(low);
        let (word, flags, at) = if low_flags != 0 {
            (low, low_flags, at)
        } else {
            let high_flags = specials(high);
            if high_flags == 0 {
                return long_string(bytes, at + 16);
            }
            (high, high_flags, at + 8)
        };
        let (offset, byte) = first_flagged(word, flags);
        if byte == b'"' {
            return Some(at + offset + 1);
        }
        return long_string(bytes, at + offset);
    }
    long_string(bytes, at)
}

/// The rest of a string from `at` (inside it, after no quote): where it ends. Plain ASCII is
/// skipped sixteen then eight bytes at a time; the first byte that is not is usually the
/// closing quote. (A leaf but for its last call: no registers to save on the way in.)
#[inline(never)]
fn long_string(bytes: &[u8], at: usize) -> Option<usize> {
    let (byte, stop) = scan(bytes, at)?;
    if byte == b'"' {
        return Some(stop + 1);
    }
    string_specials(bytes, stop)
}

/// The rest of a string from `at`, escapes and multi-byte UTF-8 included: where it ends.
#[inline(never)]
fn string_specials(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut characters = 0;
    loop {
        let (byte, stop) = scan(bytes, at)?;
        at = stop;
        match byte {
            b'"' => return Some(at + 1),
            b'\\' => at = escapes(bytes, at)?,
            0..=0x1f => return None,
            0x80..=0xff if characters < ONE_BY_ONE => {
                characters += 1;
                at = utf8(bytes, at)?;
            }
            0x80..=0xff => at = text_run(bytes, at).ok()?,
            // Only in the last few bytes, which are read one at a time.
            _ => at += 1,
        }
    }
}

/// Skips plain ASCII string contents from `at`, sixteen then eight bytes at a time, and
/// returns the byte it stopped at and where (the byte taken from the word: reading it again
/// from memory would lengthen the chain of every string). Fewer than eight bytes from the end,
/// it returns the next byte whatever it is; None at the end.
#[inline(always)]
fn scan(bytes: &[u8], at: usize) -> Option<(u8, usize)> {
    let rest = bytes.get(at..)?;
    if let Some(chunk) = rest.first_chunk::<16>() {
        if let Some(stop) = stop_in(chunk, at) {
            return Some(stop);
        }
        // Sixteen plain bytes: a long text, likely (a completion's content). The next few
        // blocks are looked at here, in vector registers (`blocks.rs`); a text that runs on past
        // them goes on out of line, where the CPU's widest vectors are used. No call on the way
        // of a shorter string: its callers stay leaves (a call cost every string some thirty
        // instructions). The block that holds the stop is read word by word.
        let after = rest.get(16..).unwrap_or_default();
        let plain = blocks::plain_few(after);
        if plain == blocks::FEW * blocks::BLOCK && after.len() - plain >= blocks::BLOCK {
            return long_text(bytes, at + 16 + plain);
        }
        return words(bytes, at + 16 + plain);
    }
    words(bytes, at)
}

/// [`scan`] of a long text, past its first blocks: the rest of its plain blocks (`blocks.rs`),
/// then the block that holds the stop word by word.
#[inline(never)]
fn long_text(bytes: &[u8], at: usize) -> Option<(u8, usize)> {
    let plain = blocks::plain(bytes.get(at..)?);
    words(bytes, at + plain)
}

/// [`scan`] sixteen bytes at a time, then eight, then one.
#[inline(always)]
fn words(bytes: &[u8], mut at: usize) -> Option<(u8, usize)> {
    let mut rest = bytes.get(at..)?;
    // Fixed-size loads: no bounds check per word.
    while let Some(chunk) = rest.first_chunk::<16>() {
        if let Some(stop) = stop_in(chunk, at) {
            return Some(stop);
        }
        at += 16;
        rest = rest.get(16..).unwrap_or_default();
    }
    if let Some(chunk) = rest.first_chunk::<8>() {
        let word = u64::from_le_bytes(*chunk);
        let flags = specials(word);
        if flags != 0 {
            let (offset, byte) = first_flagged(word, flags);
            return Some((byte, at + offset));
        }
        at += 8;
        rest = rest.get(8..).unwrap_or_default();
    }
    rest.first().map(|&byte| (byte, at))
}

/// The first byte [`specials`] flags in sixteen bytes that start at `at`, and where.
#[inline(always)]
fn stop_in(chunk: &[u8; 16], at: usize) -> Option<(u8, usize)> {
    let both = u128::from_le_bytes(*chunk);
    let (low, high) = (both as u64, (both >> 64) as u64);
    let (low_flags, high_flags) = (specials(low), specials(high));
    if low_flags != 0 {
        let (offset, byte) = first_flagged(low, low_flags);
        return Some((byte, at + offset));
    }
    if high_flags != 0 {
        let (offset, byte) = first_flagged(high, high_flags);
        return Some((byte, at + 8 + offset));
    }
    None
}

/// An escape whose backslash is at `at`: where it ends. Any four hex digits after `\u`
/// (ignored strings are never decoded, so serde accepts lone surrogates there).
fn escape(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let hex = bytes.get(at + 2..at + 6)?.first_chunk::<4>()?;
            let end = at + 6;
            // Out of line, and only where another `\u` follows: the escapes of code and of
            // markdown (`\n`, `\"`) keep the short loop they had.
            hex_digits(u32::from_le_bytes(*hex)).then(|| match bytes.get(end..end + 2) {
                Some(b"\\u") => unicode_escapes(bytes, end),
                _ => end,
            })
        }
        _ => None,
    }
}

/// Past a `\u` escape, at `at`: where the run of `\u` escapes that follows ends. Each is read as
/// two words, its `\u` and its four hex digits, without the general escape's dispatch: a text in
/// another script from a serialiser that writes only ASCII is nothing but these, and the
/// dispatch cost 37 instructions an escape. A run that goes on past the escapes read one at a
/// time ([`ESCAPES_ONE_BY_ONE`]) is such a text, and the rest of it is looked at ten escapes at
/// a time ([`blocks::unicode_run`]).
/// Any other escape, or a `\u` cut by the end of `bytes`, is left to the caller.
#[inline(never)]
fn unicode_escapes(bytes: &[u8], mut at: usize) -> usize {
    const BACKSLASH_U: u16 = u16::from_le_bytes(*b"\\u");
    let mut read = 0;
    while let Some(six) = bytes.get(at..at + 6) {
        let (Some(start), Some(hex)) = (six.first_chunk::<2>(), six.last_chunk::<4>()) else {
            break;
        };
        if u16::from_le_bytes(*start) != BACKSLASH_U || !hex_digits(u32::from_le_bytes(*hex)) {
            break;
        }
        at += 6;
        read += 1;
        if read == ESCAPES_ONE_BY_ONE {
            at += blocks::unicode_run(bytes.get(at..).unwrap_or_default());
        }
    }
    at
}

/// The `\u` escapes after a run's first that [`unicode_escapes`] reads one at a time before it
/// looks at the rest in blocks: an accented letter (`\u00e9`) or an emoji's surrogate pair
/// ends before, and does not pay for a block's look (about 45 instructions in AVX2).
const ESCAPES_ONE_BY_ONE: u32 = 2;

/// True when the four bytes of `word` are all hex digits (`0-9`, `a-f`, `A-F`), looked at
/// together: a text written in `\u` escapes has four of them every six bytes. Per byte, `+ 0x50`
/// sets the high bit from `0` up and `+ 0x46` from past `9`; the same for the letters in lower
/// case. A sum carries into the next byte only from a byte that is not ASCII, which fails its
/// own test first, so the four pass exactly when every high bit comes out set.
#[inline(always)]
fn hex_digits(word: u32) -> bool {
    const HIGH: u32 = 0x8080_8080;
    let lower = word | 0x2020_2020;
    let digit = word.wrapping_add(0x5050_5050) & !word.wrapping_add(0x4646_4646);
    let letter = lower.wrapping_add(0x1f1f_1f1f) & !lower.wrapping_add(0x1919_1919);
    (digit | letter) & HIGH == HIGH
}

/// A run of escapes from the one at `at`: where the last one ends. Escapes come in runs: a
/// text in another script from a serialiser that writes only ASCII (Python's `json.dumps` by
/// default) is nothing but `\u` escapes, and markdown has its `\n\n`. Each escape after the
/// first is taken here, without a scan for the next special byte that would find it right
/// away: a 64 KiB Chinese completion written so (21,336 escapes) cost the check 1,366 k
/// instructions, 64 an escape.
#[inline(always)]
fn escapes(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = escape(bytes, at)?;
        if bytes.get(at) != Some(&b'\\') {
            return Some(at);
        }
    }
}

/// Multi-byte characters a string's check takes one at a time before it takes the rest of the
/// string in one go ([`text_run`], whose setup costs about 200 instructions): a word in another
/// script, a name with an accent, a typographic quote cost less so. Measured on a streamed
/// chunk's check: with " café" 1,768 instructions (taken in one go from the first character:
/// 1,949), with five Chinese characters 2,108 (2,142); with twenty, 2,940 (2,622).
const ONE_BY_ONE: u32 = 8;

/// One multi-byte UTF-8 sequence at `at` (RFC 3629 table 3-7: no overlongs, no surrogates,
/// nothing above U+10FFFF): where it ends.
fn utf8(bytes: &[u8], at: usize) -> Option<usize> {
    let (len, second) = utf8_lead(*bytes.get(at)?)?;
    let sequence = bytes.get(at..at + len)?;
    let continued = sequence.get(2..)?.iter().all(|b| (0x80..=0xbf).contains(b));
    if !second.contains(sequence.get(1)?) || !continued {
        return None;
    }
    Some(at + len)
}

/// The rest of a string from `at`, where a non-ASCII byte stands: where its closing quote is
/// (`Ok`, the quote not taken), or `Ok(bytes.len())` when `bytes` ends between characters;
/// `Err(Some(open))` when `bytes` ends inside a character or an escape, and what the rest of it
/// must be; `Err(None)` when it is no string's contents.
///
/// A text in another script than Latin is mostly multi-byte characters, each of which stopped
/// the scan for a check of its own (some fifty instructions a character: a 64 KiB Chinese
/// body cost 50 times an English one). Here the stretch up to the quote is looked at a block
/// at a time for its quote, escapes and control characters ([`text_end`]), each escape checked
/// where it is, and then checked as UTF-8 at once (simdutf8, in vector registers; it accepts what `from_utf8`
/// accepts: RFC 3629, no overlongs, no surrogates, nothing above U+10FFFF). Every byte is
/// looked at a bounded number of times: linear.
#[inline(never)]
fn text_run(bytes: &[u8], at: usize) -> Result<usize, Option<Open>> {
    let rest = bytes.get(at..).unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    let (len, cut) = if std::arch::is_x86_feature_detected!("avx2") {
        text_end_avx2(rest)?
    } else {
        text_end::<false>(rest)?
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (len, cut) = text_end::<false>(rest)?;
    let text = rest.get(..len).unwrap_or_default();
    if simdutf8::basic::from_utf8(text).is_ok() {
        return match cut {
            Some(open) => Err(Some(open)),
            None => Ok(at + len),
        };
    }
    // Not UTF-8 as it stands (rare): where and why, from the standard library. Cut inside a
    // character only by the end of `bytes`: a lead byte before an escape or a quote is an
    // invalid sequence.
    let Err(error) = std::str::from_utf8(text) else {
        return Err(None);
    };
    let partial = text.get(error.valid_up_to()..).unwrap_or_default();
    if error.error_len().is_some() || len < rest.len() {
        return Err(None);
    }
    let (whole, second) = utf8_lead(*partial.first().ok_or(None)?).ok_or(None)?;
    Err(Some(match partial.len() {
        1 => Open::Utf8(whole as u8 - 1, second),
        n => Open::Utf8((whole - n) as u8, 0x80..=0xbf),
    }))
}

/// Where a text that starts at `rest`'s start ends: at its closing quote, or at `rest`'s end
/// (`Ok((len, None))`), or where `rest` ends inside an escape (`Ok((len, Some(open)))`, `len`
/// at its backslash); `Err(None)` at a control character or a bad escape.
///
/// The text is looked at a block at a time as a mask of its stops (`"`, `\`, a control
/// character; [`blocks::stops`]), and each escape is checked where its bit says: a search
/// started again past each escape cost about 45 instructions of setup, and a text in another
/// script has a line break every hundred bytes or so. Every byte is in one block or, in the
/// last part block, looked at once: linear.
#[inline(always)]
fn text_end<const AVX2: bool>(rest: &[u8]) -> Result<(usize, Option<Open>), Option<Open>> {
    let mut from = 0;
    'blocks: while let Some(block) = rest.get(from..).and_then(<[u8]>::first_chunk) {
        let mut mask = blocks::stops::<AVX2>(block);
        while mask != 0 {
            match text_stop(rest, from + mask.trailing_zeros() as usize)? {
                TextStop::End(len, cut) => return Ok((len, cut)),
                // The bits of the escape's own bytes are cleared (an escaped `"` or `\`).
                TextStop::Past(end) if end - from < blocks::LANES => {
                    mask &= u64::MAX << (end - from)
                }
                TextStop::Past(end) => {
                    from = end;
                    continue 'blocks;
                }
            }
        }
        from += blocks::LANES;
    }
    while let Some(offset) = rest
        .get(from..)
        .and_then(|tail| tail.iter().position(|&b| blocks::is_stop(b)))
    {
        match text_stop(rest, from + offset)? {
            TextStop::End(len, cut) => return Ok((len, cut)),
            TextStop::Past(end) => from = end,
        }
    }
    Ok((rest.len(), None))
}

/// [`text_end`] compiled for AVX2, on a CPU that has it: its blocks' masks in two vectors each,
/// not four.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(never)]
fn text_end_avx2(rest: &[u8]) -> Result<(usize, Option<Open>), Option<Open>> {
    debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
    // SAFETY: `text_run`, the only caller, calls this only after
    // `is_x86_feature_detected!("avx2")` said the CPU has AVX2, the one requirement of a
    // `#[target_feature]` function; its body is `text_end`, whose AVX2 steps need it too.
    unsafe { compiled_for_avx2(rest) }
}

/// [`text_end`] in a function the compiler may use AVX2 in.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn compiled_for_avx2(rest: &[u8]) -> Result<(usize, Option<Open>), Option<Open>> {
    text_end::<true>(rest)
}

/// What a text's stop at `stop` is (see [`text_end`]).
enum TextStop {
    /// The text ends at this length; with an escape left open when `rest` cuts it.
    End(usize, Option<Open>),
    /// An escape, which ends here.
    Past(usize),
}

/// The stop of a text at `stop`: its closing quote, an escape (whole or cut), or `Err(None)`
/// for a control character or a bad escape.
#[inline(always)]
fn text_stop(rest: &[u8], stop: usize) -> Result<TextStop, Option<Open>> {
    match rest.get(stop) {
        Some(b'"') => Ok(TextStop::End(stop, None)),
        Some(b'\\') => Ok(match escape_open(rest, stop)? {
            Ok(end) => TextStop::Past(end),
            Err(open) => TextStop::End(stop, Some(open)),
        }),
        _ => Err(None),
    }
}

/// [`escape`] where `bytes` may end inside it: `Ok(Ok(end))`, `Ok(Err(open))` when cut (and
/// what the rest must be), `Err(None)` when it is no escape. In line: a text in another
/// script has an escape every hundred bytes or so, and a call there cost the scan its vector
/// registers.
#[inline(always)]
fn escape_open(bytes: &[u8], at: usize) -> Result<Result<usize, Open>, Option<Open>> {
    let Some(&kind) = bytes.get(at + 1) else {
        return Ok(Err(Open::Escape));
    };
    match kind {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(Ok(at + 2)),
        b'u' => {
            if let Some(hex) = bytes.get(at + 2..at + 6).and_then(<[u8]>::first_chunk) {
                return if hex_digits(u32::from_le_bytes(*hex)) {
                    Ok(Ok(at + 6))
                } else {
                    Err(None)
                };
            }
            // Cut by the end of `bytes`: fewer than four digits.
            let hex = bytes.get(at + 2..).unwrap_or_default();
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(None);
            }
            Ok(Err(Open::Hex(4 - hex.len() as u8)))
        }
        _ => Err(None),
    }
}

/// A multi-byte sequence's length from its lead byte, and the bytes its second may be.
fn utf8_lead(lead: u8) -> Option<(usize, RangeInclusive<u8>)> {
    Some(match lead {
        0xc2..=0xdf => (2, 0x80..=0xbf),
        0xe0 => (3, 0xa0..=0xbf),
        0xe1..=0xec | 0xee..=0xef => (3, 0x80..=0xbf),
        0xed => (3, 0x80..=0x9f),
        0xf0 => (4, 0x90..=0xbf),
        0xf1..=0xf3 => (4, 0x80..=0xbf),
        0xf4 => (4, 0x80..=0x8f),
        _ => return None,
    })
}

/// Where a string cut at a piece's end stands: what the next piece's first bytes must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    /// Between characters.
    Plain,
    /// After a backslash.
    Escape,
    /// In `\u`'s digits: this many to come.
    Hex(u8),
    /// In a multi-byte character: this many bytes to come, the next one in the range.
    Utf8(u8, RangeInclusive<u8>),
}

/// The rest of a string from `at` in `bytes`, from where `open` says it stands: `Ok` where it
/// ends, `Err(Some(open))` when `bytes` ends first (and where the string then stands),
/// `Err(None)` when it is not a string.
fn string_rest(bytes: &[u8], mut at: usize, mut open: Open) -> Result<usize, Option<Open>> {
    let mut characters = 0;
    loop {
        let byte = match open {
            Open::Plain => match scan(bytes, at) {
                Some((0x80..=0xff, stop)) if characters == ONE_BY_ONE => {
                    at = text_run(bytes, stop)?;
                    continue;
                }
                Some((byte, stop)) => {
                    at = stop;
                    byte
                }
                None => return Err(Some(Open::Plain)),
            },
            _ => match bytes.get(at) {
                Some(&byte) => byte,
                None => return Err(Some(open)),
            },
        };
        at += 1;
        open = match (open, byte) {
            (Open::Plain, b'"') => return Ok(at),
            (Open::Plain, b'\\') => Open::Escape,
            (Open::Plain, 0..=0x1f) => return Err(None),
            (Open::Plain, 0x80..=0xff) => {
                characters += 1;
                let (len, second) = utf8_lead(byte).ok_or(None)?;
                Open::Utf8(len as u8 - 1, second)
            }
            // Only in the last few bytes, which `scan` hands over one at a time.
            (Open::Plain, _) => Open::Plain,
            (Open::Escape, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Open::Plain,
            (Open::Escape, b'u') => Open::Hex(4),
            (Open::Hex(left), _) if byte.is_ascii_hexdigit() => match left {
                1 => Open::Plain,
                _ => Open::Hex(left - 1),
            },
            (Open::Utf8(left, range), _) if range.contains(&byte) => match left {
                1 => Open::Plain,
                _ => Open::Utf8(left - 1, 0x80..=0xbf),
            },
            _ => return Err(None),
        };
    }
}

/// An object's key and its colon, the key's opening quote expected at `at` (`first` is the
/// byte there, not whitespace): where the colon ends.
#[inline(always)]
fn key(bytes: &[u8], at: usize, first: u8) -> Option<usize> {
    if first != b'"' {
        return None;
    }
    let end = string(bytes, at + 1)?;
    let (colon, at) = next(bytes, end)?;
    (colon == b':').then_some(at + 1)
}

/// A number whose first byte (`-` or a digit) is at `at`: where it ends.
#[inline(always)]
fn number(bytes: &[u8], at: usize, first: u8) -> Option<usize> {
    let (first, mut at) = if first == b'-' {
        (*bytes.get(at + 1)?, at + 2)
    } else {
        (first, at + 1)
    };
    match first {
        // One leading zero, never followed by a digit (checked with the byte after it).
        b'0' => {}
        b'1'..=b'9' => at = digits(bytes, at),
        _ => return None,
    }
    match bytes.get(at) {
        // Only after a leading zero: the run of digits above ends on a byte that is not one.
        Some(b'0'..=b'9') => None,
        Some(b'.' | b'e' | b'E') => fraction_and_exponent(bytes, at),
        _ => Some(at),
    }
}

/// The run of digits from `at`: where it ends.
#[inline(always)]
fn digits(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// A number's fraction and exponent, either optional, from `at` (after its integer part).
#[inline(never)]
fn fraction_and_exponent(bytes: &[u8], mut at: usize) -> Option<usize> {
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        at = digits(bytes, start);
        if at == start {
            return None;
        }
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let start = at;
        at = digits(bytes, start);
        if at == start {
            return None;
        }
    }
    Some(at)
}

/// `word` at `at`: where it ends.
#[inline(always)]
fn literal<const N: usize>(bytes: &[u8], at: usize, word: &[u8; N]) -> Option<usize> {
    (bytes.get(at..)?.first_chunk::<N>()? == word).then_some(at + N)
}

/// [`number`] from `at`, its first byte read there (a token read again across a cut).
fn first_number(bytes: &[u8], at: usize) -> Option<usize> {
    number(bytes, at, *bytes.get(at)?)
}

/// Whether only whitespace is left from `at`.
fn only_whitespace(bytes: &[u8], at: usize) -> bool {
    bytes.get(at..).is_some_and(|rest| {
        rest.iter()
            .all(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r'))
    })
}

/// The bytes a token cut by a piece's end is read again from: its start, and what follows.
const STITCH: usize = 128;

#[cfg(test)]
thread_local! {
    /// How many pieces [`Checker::token_across`] has copied from, for the test of its bound.
    static PIECES_COPIED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `ACROSS`: the body is in pieces, `bytes` the one being read and `rest` those after it (see
/// [`is_json_across`]); else `bytes` is all of it. `N` is told where the check stands at each
/// point it could later be resumed from ([`EventChecks`]); `()` is told nothing. Each is
/// compiled apart, so the plain one-slice check has no trace of the others.
struct Checker<'a, const ACROSS: bool, N: Notes = ()> {
    bytes: &'a [u8],
    rest: &'a [Bytes],
    /// The kinds of the open containers below the innermost 64 (which [`Checker::value`]
    /// holds in a register), one bit per level (1 = object), 64 to a word, outermost first:
    /// grown on the way down, never shrunk.
    deeper: Vec<u64>,
    notes: N,
}

impl<'a, const ACROSS: bool> Checker<'a, ACROSS> {
    fn new(bytes: &'a [u8], rest: &'a [Bytes]) -> Self {
        Self::noting(bytes, rest, ())
    }

    /// A check of `pieces`, from the first; None when there are none.
    fn across(pieces: &'a [Bytes]) -> Option<Self> {
        let (first, rest) = pieces.split_first()?;
        Some(Self::new(first, rest))
    }
}

impl<'a, const ACROSS: bool, N: Notes> Checker<'a, ACROSS, N> {
    fn noting(bytes: &'a [u8], rest: &'a [Bytes], notes: N) -> Self {
        Checker {
            bytes,
            rest,
            deeper: Vec::new(),
            notes,
        }
    }

    /// The whole body: a value, then whitespace only.
    fn document(&mut self) -> Option<()> {
        let at = self.value(0)?;
        self.only_whitespace_left(at).then_some(())
    }

    /// Whether only whitespace is left from `at` in the piece being read, and after it.
    fn only_whitespace_left(&self, at: usize) -> bool {
        let rest_blank = !ACROSS || self.rest.iter().all(|piece| only_whitespace(piece, 0));
        only_whitespace(self.bytes, at) && rest_blank
    }

    /// [`string`] from `at` (after the opening quote) in `bytes`, the piece being read; in
    /// pieces, on into the next ones (then `bytes` is the piece where it ends).
    #[inline(always)]
    fn string_in(&mut self, bytes: &mut &'a [u8], at: usize) -> Option<usize> {
        match string(bytes, at) {
            None if ACROSS => {
                let end = self.string_across(at)?;
                *bytes = self.bytes;
                Some(end)
            }
            found => found,
        }
    }

    /// A string (a value or a name) whose contents start at `at` and that did not end in this
    /// piece: where it ends in a later one, which becomes the piece being read. None when it is
    /// not a string, or no piece is left.
    #[cold]
    #[inline(never)]
    fn string_across(&mut self, at: usize) -> Option<usize> {
        let mut open = match string_rest(self.bytes, at, Open::Plain) {
            // It ended here after all: `string` refused it.
            Ok(_) | Err(None) => return None,
            Err(Some(open)) => open,
        };
        while let Some((piece, rest)) = self.rest.split_first() {
            (self.bytes, self.rest) = (piece, rest);
            match string_rest(piece, 0, open) {
                Ok(end) => return Some(end),
                Err(None) => return None,
                Err(Some(still)) => open = still,
            }
        }
        None
    }

    /// [`next`] in `bytes`, the piece being read; in pieces, on into the pieces after it where
    /// it ends (then `bytes` is the piece the byte is in).
    #[inline(always)]
    fn next_in(&mut self, bytes: &mut &'a [u8], at: usize) -> Option<(u8, usize)> {
        match next(bytes, at) {
            None if ACROSS => {
                let found = self.next_across()?;
                *bytes = self.bytes;
                Some(found)
            }
            found => found,
        }
    }

    /// The first byte that is not whitespace in the pieces after the one being read, which
    /// become the piece being read as they are passed.
    #[cold]
    #[inline(never)]
    fn next_across(&mut self) -> Option<(u8, usize)> {
        while let Some((piece, rest)) = self.rest.split_first() {
            (self.bytes, self.rest) = (piece, rest);
            if let Some(found) = next(piece, 0) {
                return Some(found);
            }
        }
        None
    }

    /// A token that starts at `here` in `bytes` and that `read` found to end at `found`: as it
    /// is, unless in pieces it reached the piece's end or was refused there. Then it may run on
    /// into the next piece, and is read again across the cut (`bytes` becomes the piece where
    /// it ends).
    #[inline(always)]
    fn token_in(
        &mut self,
        bytes: &mut &'a [u8],
        here: usize,
        found: Option<usize>,
        read: impl Fn(&[u8], usize) -> Option<usize>,
    ) -> Option<usize> {
        if ACROSS && !self.rest.is_empty() && found.is_none_or(|end| end == bytes.len()) {
            let end = self.token_across(here, read)?;
            *bytes = self.bytes;
            Some(end)
        } else {
            found
        }
    }

    /// [`key`] in `bytes`, the piece being read; in pieces, the name runs on into the next
    /// piece as a string does, and the colon may be in a later one (then `bytes` is that piece).
    #[inline(always)]
    fn key_in(&mut self, bytes: &mut &'a [u8], at: usize, first: u8) -> Option<usize> {
        if !ACROSS {
            return key(bytes, at, first);
        }
        if first != b'"' {
            return None;
        }
        let end = self.string_in(bytes, at + 1)?;
        let (colon, here) = self.next_in(bytes, end)?;
        (colon == b':').then_some(here + 1)
    }

    /// [`Checker::token_in`]'s token cut by the end of the piece being read: `read` again from
    /// a copy of its start and of the next pieces' first bytes, and where it ends, in the piece
    /// it ends in (which becomes the piece being read). None when it is no token, when its
    /// start is more than half of [`STITCH`], and when it runs to the end of the copy with
    /// more bytes after it (it may go on: left to the joined check).
    #[cold]
    #[inline(never)]
    fn token_across(
        &mut self,
        here: usize,
        read: impl Fn(&[u8], usize) -> Option<usize>,
    ) -> Option<usize> {
        let head = self.bytes.get(here..)?;
        if head.len() > STITCH / 2 {
            return None;
        }
        let mut copy = [0u8; STITCH];
        let mut copied = head.len();
        copy.get_mut(..copied)?.copy_from_slice(head);
        let mut left_out = false;
        for (i, piece) in self.rest.iter().enumerate() {
            let take = piece.len().min(STITCH - copied);
            copy.get_mut(copied..copied + take)?
                .copy_from_slice(piece.get(..take)?);
            copied += take;
            #[cfg(test)]
            PIECES_COPIED.with(|n| n.set(n.get() + 1));
            if copied == STITCH {
                // Full: the pieces after it are not walked (a walk per cut token over all the
                // pieces left made a body of many small pieces quadratic); only whether a byte
                // is left out counts, and the first non-empty piece says so.
                left_out = take < piece.len()
                    || self
                        .rest
                        .get(i + 1..)
                        .is_some_and(|after| after.iter().any(|p| !p.is_empty()));
                break;
            }
        }
        let end = read(copy.get(..copied)?, 0)?;
        if end == copied && left_out {
            return None;
        }
        // Where `end` is: still in this piece, or so many bytes into the next ones.
        let Some(mut past) = end.checked_sub(head.len()).filter(|&past| past > 0) else {
            return Some(here + end);
        };
        while let Some((piece, rest)) = self.rest.split_first() {
            (self.bytes, self.rest) = (piece, rest);
            if past <= piece.len() {
                return Some(past);
            }
            past -= piece.len();
        }
        None
    }

    /// One value from `at`, after optional whitespace: where it ends. Values nest by a stack
    /// of container kinds, not by recursion (it is empty before and after): the innermost 64
    /// levels in a register, innermost in the lowest bit, the deeper ones in `self.deeper`.
    #[inline(always)]
    fn value(&mut self, at: usize) -> Option<usize> {
        self.value_from(at, 0, 0)
    }

    /// [`Checker::value`] resumed where a value is expected at `at` inside `depth` open
    /// containers of `kinds` (at most 64: none in `self.deeper`): where the outermost ends.
    fn value_from(&mut self, mut at: usize, mut depth: usize, mut kinds: u64) -> Option<usize> {
        let mut bytes = self.bytes;
        loop {
            // A value is expected here.
            self.notes.value(at, depth, kinds);
            let (byte, here) = self.next_in(&mut bytes, at)?;
            // Strings first: the most frequent value, taken before the table of the others.
            at = if byte == b'"' {
                self.string_in(&mut bytes, here + 1)?
            } else {
                match byte {
                    b'{' | b'[' => {
                        // `}` and `]` are two above their opening brackets.
                        let (inner, inside) = self.next_in(&mut bytes, here + 1)?;
                        if inner == byte + 2 {
                            inside + 1
                        } else {
                            let object = byte == b'{';
                            if depth >= 64 {
                                self.spill(depth - 64, kinds >> 63);
                            }
                            kinds = kinds << 1 | u64::from(object);
                            depth += 1;
                            at = if object {
                                self.key_in(&mut bytes, inside, inner)?
                            } else {
                                inside
                            };
                            continue;
                        }
                    }
                    b'-' | b'0'..=b'9' => {
                        let found = number(bytes, here, byte);
                        self.token_in(&mut bytes, here, found, first_number)?
                    }
                    b't' => {
                        let found = literal(bytes, here, b"true");
                        self.token_in(&mut bytes, here, found, |b, at| literal(b, at, b"true"))?
                    }
                    b'f' => {
                        let found = literal(bytes, here, b"false");
                        self.token_in(&mut bytes, here, found, |b, at| literal(b, at, b"false"))?
                    }
                    b'n' => {
                        let found = literal(bytes, here, b"null");
                        self.token_in(&mut bytes, here, found, |b, at| literal(b, at, b"null"))?
                    }
                    _ => return None,
                }
            };
            // A value ended: what follows it in its container (or the end of the value).
            loop {
                if depth == 0 {
                    return Some(at);
                }
                let (after, here) = self.next_in(&mut bytes, at)?;
                at = here + 1;
                let object = kinds & 1 == 1;
                if after == b',' {
                    if object {
                        let (first, here) = self.next_in(&mut bytes, at)?;
                        at = self.key_in(&mut bytes, here, first)?;
                    }
                    break;
                }
                // `]`, or `}` (0x20 above it) in an object.
                if after != b']' | ((kinds as u8 & 1) << 5) {
                    return None;
                }
                kinds >>= 1;
                depth -= 1;
                if depth >= 64 {
                    kinds |= self.unspill(depth - 64) << 63;
                }
            }
        }
    }

    /// Keeps the kind (`bit`) of the container at `level`, on its way out of the register.
    #[cold]
    fn spill(&mut self, level: usize, bit: u64) {
        let (word, bit_at) = (level / 64, level % 64);
        if word == self.deeper.len() {
            self.deeper.push(0);
        }
        if let Some(w) = self.deeper.get_mut(word) {
            *w = (*w & !(1u64 << bit_at)) | (bit << bit_at);
        }
    }

    /// The kind of the container at `level`, back into the register. (Taking `self` by
    /// `&mut` and never inlined: else its loads of `deeper` are hoisted into every value's
    /// end, spent for nothing in all but the deepest bodies.)
    #[cold]
    #[inline(never)]
    fn unspill(&mut self, level: usize) -> u64 {
        self.deeper
            .get(level / 64)
            .map_or(0, |w| w >> (level % 64) & 1)
    }
}

impl<'a, N: Notes> Checker<'a, false, N> {
    /// The whole body: an object, then whitespace only; `member` sees each of the object's
    /// members as it is read.
    #[inline(always)]
    fn object(&mut self, member: impl FnMut(&'a [u8], Range<usize>)) -> Option<()> {
        self.object_from(Entry::Start, member)
    }

    /// [`Checker::object`] from `entry`: its start, or a point inside it where an earlier
    /// check of the same first bytes stood (see [`EventChecks`]; `member` has already seen
    /// the members before that point).
    fn object_from(
        &mut self,
        entry: Entry,
        mut member: impl FnMut(&'a [u8], Range<usize>),
    ) -> Option<()> {
        let bytes = self.bytes;
        let (mut byte, mut at) = match entry {
            Entry::Start => {
                let (open, at) = next(bytes, 0)?;
                if open != b'{' {
                    return None;
                }
                let (byte, at) = next(bytes, at + 1)?;
                if byte == b'}' {
                    return only_whitespace(bytes, at + 1).then_some(());
                }
                (byte, at)
            }
            Entry::Key { at } => (*bytes.get(at)?, at),
            Entry::Value {
                key,
                start,
                at,
                depth,
                kinds,
            } => {
                let end = self.value_from(at, depth, kinds)?;
                member(bytes.get(key)?, start..end);
                self.notes.ended(end);
                match after_member(bytes, end)? {
                    Ok(next) => next,
                    Err(end) => return only_whitespace(bytes, end).then_some(()),
                }
            }
        };
        loop {
            if byte != b'"' {
                return None;
            }
            self.notes.key(at);
            let key_start = at + 1;
            let key_end = string(bytes, key_start)?;
            // The closing quote is consumed: the key's contents end one byte before.
            let key = bytes.get(key_start..key_end - 1)?;
            let (colon, after) = next(bytes, key_end)?;
            if colon != b':' {
                return None;
            }
            let (first, start) = next(bytes, after + 1)?;
            self.notes.member(key_start..key_end - 1, start);
            // Strings and numbers here, sparing most members the call that sets up the
            // container stack.
            let end = match first {
                b'"' => string(bytes, start + 1)?,
                b'-' | b'0'..=b'9' => number(bytes, start, first)?,
                _ => self.value(start)?,
            };
            member(key, start..end);
            self.notes.ended(end);
            match after_member(bytes, end)? {
                Ok(next) => (byte, at) = next,
                Err(end) => return only_whitespace(bytes, end).then_some(()),
            }
        }
    }
}

impl Checker<'_, false> {
    /// The whole body: an array, then whitespace only; `element` sees where each of its
    /// elements lies as it is read.
    fn array(&mut self, mut element: impl FnMut(Range<usize>)) -> Option<()> {
        let bytes = self.bytes;
        let (open, at) = next(bytes, 0)?;
        if open != b'[' {
            return None;
        }
        let (first, mut start) = next(bytes, at + 1)?;
        if first == b']' {
            return only_whitespace(bytes, start + 1).then_some(());
        }
        loop {
            let end = self.value(start)?;
            element(start..end);
            match next(bytes, end)? {
                (b',', comma) => start = next(bytes, comma + 1)?.1,
                (b']', close) => return only_whitespace(bytes, close + 1).then_some(()),
                _ => return None,
            }
        }
    }
}

/// What follows a member's value that ends at `end`: `Ok` with the next member's first byte
/// and where it is, `Err` with where the object ended; None when neither follows.
#[inline(always)]
fn after_member(bytes: &[u8], end: usize) -> Option<Result<(u8, usize), usize>> {
    let (after, here) = next(bytes, end)?;
    match after {
        b',' => next(bytes, here + 1).map(Ok),
        b'}' => Some(Err(here + 1)),
        _ => None,
    }
}

impl<'a> Checker<'a, true> {
    /// Which of `pieces` (all of them) is being read.
    fn piece(&self, pieces: &[Bytes]) -> usize {
        pieces.len() - self.rest.len() - 1
    }

    /// [`Checker::object`] over pieces: the whole body, an object, then whitespace only;
    /// `member` sees each member's name and where its value lies, as it is read.
    fn object_across(
        &mut self,
        pieces: &'a [Bytes],
        mut member: impl FnMut(Spread<'a>, Spread<'a>),
    ) -> Option<()> {
        let mut bytes = self.bytes;
        let (open, at) = self.next_in(&mut bytes, 0)?;
        if open != b'{' {
            return None;
        }
        let (mut byte, mut at) = self.next_in(&mut bytes, at + 1)?;
        if byte == b'}' {
            at += 1;
        } else {
            loop {
                if byte != b'"' {
                    return None;
                }
                // The name, from after its opening quote to before its closing one.
                let from = (self.piece(pieces), at + 1);
                let end = self.string_in(&mut bytes, at + 1)?;
                let name = Spread {
                    pieces,
                    start: from,
                    end: (self.piece(pieces), end - 1),
                };
                let (colon, here) = self.next_in(&mut bytes, end)?;
                if colon != b':' {
                    return None;
                }
                let after = here + 1;
                let (first, start) = self.next_in(&mut bytes, after)?;
                let from = (self.piece(pieces), start);
                let end = match first {
                    b'"' => self.string_in(&mut bytes, start + 1)?,
                    b'-' | b'0'..=b'9' => {
                        let found = number(bytes, start, first);
                        self.token_in(&mut bytes, start, found, first_number)?
                    }
                    _ => self.value(start)?,
                };
                bytes = self.bytes;
                let to = (self.piece(pieces), end);
                member(
                    name,
                    Spread {
                        pieces,
                        start: from,
                        end: to,
                    },
                );
                let (after, here) = self.next_in(&mut bytes, end)?;
                match after {
                    b',' => (byte, at) = self.next_in(&mut bytes, here + 1)?,
                    b'}' => {
                        at = here + 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.only_whitespace_left(at).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;
    use serde_json::Value;

    /// What `envelope::is_json` was: the definition [`is_json`] must match.
    fn oracle(body: &[u8]) -> bool {
        std::str::from_utf8(body).is_ok() && serde_json::from_slice::<IgnoredAny>(body).is_ok()
    }

    /// Each case with its verdict, which must be both the oracle's and ours.
    fn check(cases: &[(&[u8], bool)]) {
        for &(body, expected) in cases {
            let shown = String::from_utf8_lossy(body);
            let shown: String = shown.chars().take(80).collect();
            assert_eq!(oracle(body), expected, "oracle on {shown:?} ({body:02x?})");
            assert_eq!(is_json(body), expected, "is_json on {shown:?}");
        }
    }

    #[test]
    fn scalars_and_whitespace() {
        check(&[
            (b"", false),
            (b" \t\r\n", false),
            (b"0", true),
            (b" \t\r\n0 \t\r\n", true),
            // Form feed, vertical tab, NBSP and a BOM are not JSON whitespace.
            (b"\x0c0", false),
            (b"0\x0b", false),
            (b"\xc2\xa00", false),
            (b"\xef\xbb\xbf{}", false),
            (b"0\0", false),
            (b"true", true),
            (b"false", true),
            (b"null", true),
            (b"t", false),
            (b"tru", false),
            (b"fals", false),
            (b"nul", false),
            (b"truex", false),
            (b"True", false),
            (b"nulL", false),
            (b"true false", false),
            (b"{} {}", false),
            (b"1 2", false),
            (b"\"a\"x", false),
        ]);
    }

    #[test]
    fn numbers() {
        check(&[
            (b"-", false),
            (b"-0", true),
            (b"-01", false),
            (b"00", false),
            (b"01", false),
            (b"[01]", false),
            (b"0.0", true),
            (b"10", true),
            (b"1.", false),
            (b"1.e5", false),
            (b".5", false),
            (b"+1", false),
            (b"1e", false),
            (b"1e+", false),
            (b"1e-", false),
            (b"1E+5", true),
            (b"1e05", true),
            (b"-1.25e-3", true),
            (b"0e0", true),
            (b"1e5.5", false),
            (b"1.2.3", false),
            (b"--1", false),
            (b"- 1", false),
            (b"1x", false),
            (b"[1x]", false),
            (b"[-]", false),
            (b"[1.]", false),
            (b"[1e]", false),
            (b"123456789012345678901234567890e999999999999", true),
            (b"NaN", false),
            (b"Infinity", false),
        ]);
    }

    #[test]
    fn strings_and_escapes() {
        check(&[
            (b"\"\"", true),
            (b"\"", false),
            (b"\"abc", false),
            (b"\"abcdefghijklmnop", false),
            (b"\"abcdefghijklmno\"", true),
            (b"\"a\x7fb\"", true),
            (b"\"a\x1fb\"", false),
            (b"\"a\tb\"", false),
            (b"\"a\nb\"", false),
            (b"\"\0\"", false),
            (b"\"01234567\x01\"", false),
            (br#""\" \\ \/ \b \f \n \r \t""#, true),
            (br#""\a""#, false),
            (br#""\x41""#, false),
            (br#""\'""#, false),
            (b"\"\\", false),
            (b"\"\\\"", false),
            (br#""\u0041""#, true),
            (br#""\uABcd""#, true),
            (br#""\ud800""#, true),
            (br#""\udc00\ud800""#, true),
            (br#""\u004""#, false),
            (br#""\u004g""#, false),
            (b"\"\\u00", false),
            (b"\"\\u0041", false),
            (br#""\U0041""#, false),
            (br#""\u{41}""#, false),
        ]);
    }

    #[test]
    fn utf8_inside_and_outside_strings() {
        check(&[
            ("\"é ü 日本 😀\"".as_bytes(), true),
            (b"\"\xc3\xa9\"", true),
            // Invalid UTF-8 inside a string, and outside.
            (b"\"\xff\"", false),
            (b"\"\x80\"", false),
            (b"\"a\xc3\"", false),
            (b"\xc3\xa9", false),
            (b"0\xff", false),
            (b"{\"a\":1}\xff", false),
            // Overlong encodings: `/` as C0 AF, E0 80 AF, F0 80 80 AF; NUL as C0 80.
            (b"\"\xc0\xaf\"", false),
            (b"\"\xc1\xbf\"", false),
            (b"\"\xe0\x80\xaf\"", false),
            (b"\"\xe0\x9f\xbf\"", false),
            (b"\"\xe0\xa0\x80\"", true),
            (b"\"\xf0\x80\x80\xaf\"", false),
            (b"\"\xf0\x8f\xbf\xbf\"", false),
            (b"\"\xf0\x90\x80\x80\"", true),
            (b"\"\xc0\x80\"", false),
            // Surrogates: ED A0 80 (U+D800) and ED BF BF (U+DFFF); ED 9F BF is U+D7FF.
            (b"\"\xed\xa0\x80\"", false),
            (b"\"\xed\xbf\xbf\"", false),
            (b"\"\xed\x9f\xbf\"", true),
            // U+10FFFF is the last; F4 90 80 80 (U+110000) and F5.. are beyond.
            (b"\"\xf4\x8f\xbf\xbf\"", true),
            (b"\"\xf4\x90\x80\x80\"", false),
            (b"\"\xf5\x80\x80\x80\"", false),
            (b"\"\xff\xfe\"", false),
            // Continuation bytes that are not.
            (b"\"\xe2\x82\"", false),
            (b"\"\xe2\x28\xa1\"", false),
            (b"\"\xf0\x9f\x98\"", false),
            (b"\"\xc3\xc3\xa9\"", false),
            // Truncated sequences at the end.
            (b"\"\xc3", false),
            (b"\"\xe2\x82", false),
            (b"\"\xf0\x9f\x98", false),
            (b"\"\xf0\x9f\x98\x80", false),
            (b"\xf0\x9f\x98", false),
            // A sequence across the end of a word of eight.
            (b"\"abcdef\xe2\x82\xac\"", true),
            (b"\"abcdefg\xe2\x82\xac\"", true),
            (b"\"abcdefgh\xf0\x9f\x98\x80abcdefgh\"", true),
        ]);
    }

    #[test]
    fn every_byte_at_every_place_of_a_word() {
        // Fillers next to the classes' edges (0x20, 0x22, 0x5c, 0x7f), where a borrow out of a
        // flagged byte could flag its neighbour.
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7f] {
            for byte in 0..=255u8 {
                // 25 bytes of contents and the quote: a step of sixteen, one of eight, then
                // the last two bytes one at a time.
                for at in 0..25 {
                    let mut body = vec![b'"'];
                    body.extend(std::iter::repeat_n(filler, at));
                    body.push(byte);
                    body.extend(std::iter::repeat_n(filler, 24 - at));
                    body.push(b'"');
                    assert_eq!(is_json(&body), oracle(&body), "{body:02x?}");
                }
            }
        }
        // Every pair of bytes, across a word's end and inside one.
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                for prefix in [&b"\"abcdef"[..], b"\"abc"] {
                    let body = [prefix, &[first, second], b"ghijklmn\""].concat();
                    assert_eq!(is_json(&body), oracle(&body), "{body:02x?}");
                }
            }
        }
    }

    #[test]
    fn every_byte_at_every_place_of_a_block() {
        // A string long enough for words, blocks of BLOCK bytes, then words again: each byte
        // at each place of the first words, of the first blocks and of the words after them.
        for byte in 0..=255u8 {
            for at in 0..(3 * blocks::BLOCK + 20) {
                let mut body = vec![b'"'];
                body.extend(std::iter::repeat_n(b'a', at));
                body.push(byte);
                body.extend(std::iter::repeat_n(b'b', 3 * blocks::BLOCK + 20 - at));
                body.push(b'"');
                assert_eq!(is_json(&body), oracle(&body), "{byte:02x} at {at}");
            }
        }
        for byte in 0..=255u8 {
            // The word's lowest byte, which no borrow reaches: flagged exactly.
            let word = u64::from_le_bytes([byte, b'a', b'a', b'a', b'a', b'a', b'a', b'a']);
            assert_eq!(
                blocks::is_special(byte),
                specials(word) & 0x80 != 0,
                "{byte:02x}"
            );
        }
    }

    #[test]
    fn containers() {
        check(&[
            (b"[]", true),
            (b"{}", true),
            (b"[ ]", true),
            (b"{ }", true),
            (b"[", false),
            (b"{", false),
            (b"]", false),
            (b"}", false),
            (b"[}", false),
            (b"{]", false),
            (b"[1,]", false),
            (b"[,1]", false),
            (b"[1,,2]", false),
            (b"[1 2]", false),
            (b"[1,2]", true),
            (b"{\"a\":1,}", false),
            (b"{\"a\"}", false),
            (b"{\"a\":}", false),
            (b"{\"a\" 1}", false),
            (b"{\"a\":1 \"b\":2}", false),
            (b"{a:1}", false),
            (b"{1:1}", false),
            (b"{\"a\":1,\"a\":2}", true),
            (b" { \"a\" : [ 1 , { } , [ ] ] , \"b\" : null } ", true),
            (b"[{[{", false),
            (b"[{\"a\":[{\"b\":[]}]}]", true),
            (b"[{\"a\":[{\"b\":[]}]]]", false),
            (b"[[[]]]]", false),
            (b"[[[]]", false),
            (b"{\"a\":{\"b\":{}}}}", false),
        ]);
    }

    /// `body` cut at `cuts` (ascending), as pieces.
    fn pieces(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut from = 0;
        let mut out = Vec::new();
        for &cut in cuts.iter().chain([&body.len()]) {
            out.push(Bytes::copy_from_slice(&body[from..cut]));
            from = cut;
        }
        out
    }

    /// A body of 20,000 pieces, each ending in a number cut at its end (`[1` `,1` `,1` …): every
    /// cut number is read again from a copy of at most [`STITCH`] bytes, whose pieces were all
    /// walked each time (quadratic: 200 million pieces for this body, hours for a large one).
    #[test]
    fn numbers_cut_at_every_piece_copy_a_bounded_number_of_pieces() {
        let n = 20_000;
        let mut parts = vec![Bytes::from_static(b"{\"a\":[1")];
        parts.extend(std::iter::repeat_n(Bytes::from_static(b",1"), n - 2));
        parts.push(Bytes::from_static(b"]}"));
        let joined = parts.concat();
        PIECES_COPIED.with(|c| c.set(0));
        assert!(is_json_across(&parts));
        let mut seen = Vec::new();
        let object = object_members_across(&parts, |key, value| {
            let join = |s: Spread<'_>| s.parts().collect::<Vec<_>>().concat();
            seen.push((join(key), join(value).len()));
        });
        assert!(object);
        assert_eq!(seen, [(b"a".to_vec(), joined.len() - 6)]);
        let copied = PIECES_COPIED.with(std::cell::Cell::get);
        // Two checks, each copying from at most STITCH / 2 pieces of two bytes per cut number.
        assert!(copied <= 2 * n * STITCH / 2, "{copied} pieces copied from");
        // And no fewer than the cuts ask for: the numbers were read across.
        assert!(copied >= 2 * (n - 2), "{copied} pieces copied from");

        // A number that fills the copy exactly: empty pieces after it leave nothing out, a
        // digit after them may continue it (left to the joined check: false here).
        let digits = |n| Bytes::from(vec![b'1'; n]);
        let empty = Bytes::new();
        assert!(is_json_across(&[
            digits(60),
            digits(68),
            empty.clone(),
            empty.clone()
        ]));
        assert!(!is_json_across(&[
            digits(60),
            digits(68),
            empty.clone(),
            digits(1)
        ]));
        assert!(!is_json_across(&[digits(60), digits(69), empty]));
    }

    /// Each of `faults` put into `valid` at `place`: checked whole, and cut at, after and past
    /// it, as serde judges the whole.
    fn faults_agree_with_serde(valid: &[u8], place: usize, faults: &[&[u8]]) {
        for fault in faults {
            let body = [&valid[..place], fault, &valid[place..]].concat();
            let expected = oracle(&body);
            assert_eq!(is_json(&body), expected, "{fault:02x?} at {place}");
            for cut in [place, place + 1, place + fault.len()] {
                assert_eq!(
                    is_json_across(&pieces(&body, &[cut])),
                    expected,
                    "{fault:02x?} at {place}, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn hex_digits_are_the_four_bytes_is_ascii_hexdigit_takes() {
        // Each byte's test is its own (no carry reaches the next once all four are ASCII, and
        // one that is not fails them all): every value at every place among valid ones, and
        // every pair of values at the two middle places.
        for place in 0..4 {
            for byte in 0..=255u8 {
                for filler in [b'0', b'9', b'a', b'f', b'A', b'F'] {
                    let mut bytes = [filler; 4];
                    bytes[place] = byte;
                    assert_eq!(
                        hex_digits(u32::from_le_bytes(bytes)),
                        byte.is_ascii_hexdigit(),
                        "{bytes:02x?}"
                    );
                }
            }
        }
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let bytes = [b'7', first, second, b'c'];
                assert_eq!(
                    hex_digits(u32::from_le_bytes(bytes)),
                    first.is_ascii_hexdigit() && second.is_ascii_hexdigit(),
                    "{bytes:02x?}"
                );
            }
        }
    }

    /// What may follow a run of `\u` escapes: another escape, a bad or cut `\u`, text, the end.
    pub(super) const AFTER_A_RUN: [&[u8]; 10] = [
        b"",
        b"\\n\\u4f60",
        b"\\u12G4",
        b"\\u12",
        b"\\u004",
        b"\\U4f60",
        b"\\",
        b"\"",
        b"x\\u4f60",
        b"\xe4\xbd\xa0",
    ];

    #[test]
    fn a_run_of_unicode_escapes_is_read_to_the_end_of_its_last_whole_one() {
        // Whatever follows a run (another escape, a bad or cut `\u`, text, the end), the run
        // ends after its last whole `\u` escape: never short of it, never past it.
        let escapes: [&[u8]; 4] = [b"\\u4f60", b"\\uABCD", b"\\u00e9", b"\\ufFfF"];
        // Past two escapes the rest of a run is read in blocks of ten: runs to past three.
        for lead in [&b""[..], b"ab"] {
            for run in 0..=40 {
                for tail in AFTER_A_RUN {
                    let text: Vec<u8> = escapes
                        .iter()
                        .cycle()
                        .take(run)
                        .fold(lead.to_vec(), |text, escape| [&text[..], escape].concat());
                    let end = text.len();
                    let text = [&text[..], tail].concat();
                    assert_eq!(unicode_escapes(&text, lead.len()), end, "{text:02x?}");
                }
            }
        }
    }

    #[test]
    fn a_long_run_of_unicode_escapes_agrees_with_serde_whatever_byte_is_wrong() {
        // Thirty escapes: the first three one at a time, then two blocks of ten, then seven one
        // at a time.
        let text = r#"\u4f60\u597d\uD83D\uDE00\uABCD\u00e9"#.repeat(5);
        let valid = format!(r#"{{"content":"{text}","n":1}}"#);
        let valid = valid.as_bytes();
        assert!(oracle(valid) && is_json(valid));
        let start = valid.iter().position(|&b| b == b'\\').unwrap();
        every_byte_in_place_and_every_cut(valid, start..start + text.len());
    }

    /// Every byte value in each of `places` of `valid` checked as serde checks it, and `valid`
    /// cut at every place checked valid.
    fn every_byte_in_place_and_every_cut(valid: &[u8], places: Range<usize>) {
        for place in places {
            for byte in 0..=255u8 {
                let mut body = valid.to_vec();
                body[place] = byte;
                assert_eq!(is_json(&body), oracle(&body), "{byte:02x} at {place}");
            }
        }
        for cut in 0..=valid.len() {
            assert!(is_json_across(&pieces(valid, &[cut])), "cut at {cut}");
        }
    }

    #[test]
    fn a_run_of_escapes_is_checked_whole_and_cut_anywhere() {
        // A text in `\u` escapes (as Python writes one), then other escapes in a row and a
        // `\u` run that ends at the closing quote.
        let text = r#"\u4f60\u597d\uD83D\uDE00\uABCD\n\n\"\\\/\u00e9\t\u0041"#;
        let valid = format!(r#"{{"content":"{text}","n":1}}"#);
        let valid = valid.as_bytes();
        assert!(oracle(valid) && is_json(valid));
        let start = valid.iter().position(|&b| b == b'\\').unwrap();
        let end = start + text.len();
        let faults: [&[u8]; 7] = [
            b"\\x", b"\\u12G4", b"\\u12", b"\\", b"\x01", b"\"", b"\xc3(",
        ];
        for place in start..=end {
            faults_agree_with_serde(valid, place, &faults);
        }
        every_byte_in_place_and_every_cut(valid, start..end);
    }

    #[test]
    fn a_text_in_another_script_is_checked_in_one_go_whole_and_cut_anywhere() {
        // More multi-byte characters than are taken one at a time, then escapes of every kind
        // between characters of two, three and four bytes: what `text_run` takes in one go.
        let text = format!(
            "{}\\n{}\\\"引用\\\\ \\/\\u00e9\\uD83D\\t 😀é{}",
            "日本語".repeat(ONE_BY_ONE as usize),
            "中文",
            "한국어 ".repeat(3)
        );
        let valid = format!(r#"{{"id":"x","content":"{text}","n":1}}"#);
        let valid = valid.as_bytes();
        assert!(oracle(valid) && is_json(valid));
        let start = valid.windows(3).position(|w| w == "日".as_bytes()).unwrap();
        let end = start + text.len();
        // Past the characters taken one at a time: where the one-go check stands.
        let one_go = start + 3 * ONE_BY_ONE as usize + 1;
        let faults: [&[u8]; 9] = [
            b"\\x",
            b"\\u12G4",
            b"\\",
            b"\x01",
            b"\x1f",
            b"\"",
            b"\xc3(",
            b"\xe6\x97",
            b"\xed\xa0\x80",
        ];
        for place in one_go..=end {
            faults_agree_with_serde(valid, place, &faults);
        }
        for at in start..=end {
            assert!(is_json_across(&pieces(valid, &[at])), "cut at {at}");
            assert!(members_agree(valid, &[at]), "cut at {at}");
            assert!(
                is_json_across(&pieces(valid, &[start, at])),
                "cut at {start}, {at}"
            );
        }
        // Every byte a piece of its own, and the text that never ends.
        let bytes: Vec<usize> = (1..valid.len()).collect();
        assert!(is_json_across(&pieces(valid, &bytes)));
        assert!(!is_json(&valid[..end]));
        assert!(!is_json_across(&pieces(&valid[..end], &[one_go])));
    }

    /// What [`text_end`] must say of `rest`, one byte at a time.
    fn text_end_reference(rest: &[u8]) -> Result<(usize, Option<Open>), Option<Open>> {
        let mut at = 0;
        while let Some(&byte) = rest.get(at) {
            match byte {
                b'"' => return Ok((at, None)),
                b'\\' => match escape_open(rest, at)? {
                    Ok(end) => at = end,
                    Err(open) => return Ok((at, Some(open))),
                },
                0..=0x1f => return Err(None),
                _ => at += 1,
            }
        }
        Ok((rest.len(), None))
    }

    /// `rest`'s end from each build of [`text_end`] there is here, and from the reference.
    fn text_ends_agree(rest: &[u8]) {
        let expected = text_end_reference(rest);
        assert_eq!(text_end::<false>(rest), expected, "{rest:02x?}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(text_end_avx2(rest), expected, "{rest:02x?}");
        }
    }

    #[test]
    fn a_text_ends_where_its_stops_say_at_any_place_of_its_blocks() {
        // Three blocks and a part of Chinese text (three bytes a character), with each insert
        // at every place: escapes that end inside their block, at its end and past it (the
        // scan goes on from there), escaped quotes and backslashes (their bits cleared), the
        // closing quote, a control character, bad escapes; each also cut at and after every
        // byte of the insert, and at the blocks' ends.
        let text = "中文字".repeat(24);
        let inserts: [&[u8]; 14] = [
            b"\\n",
            b"\\\"",
            b"\\\\",
            b"\\\\\"",
            b"\\u4e2d",
            b"\\u4e2d\\n\\\"x",
            b"\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n",
            b"\"",
            b"\x01",
            b"\x1f",
            b"\\x",
            b"\\u12G4",
            b"\\",
            b"\\u12",
        ];
        for insert in inserts {
            for place in 0..=text.len() {
                let rest = [&text.as_bytes()[..place], insert, &text.as_bytes()[place..]].concat();
                text_ends_agree(&rest);
                // Cut at and around the insert, and at every block's end.
                for cut in (place..place + insert.len() + 2).chain([63, 64, 65, 128, 192]) {
                    text_ends_agree(rest.get(..cut).unwrap_or(&rest));
                }
            }
        }
        // Every byte value at every place of two blocks and a part of escapes.
        let escapes = b"\\u00e9\\n".repeat(18);
        for place in 0..escapes.len() {
            for byte in 0..=255u8 {
                let mut rest = escapes.clone();
                rest[place] = byte;
                text_ends_agree(&rest);
            }
        }
    }

    proptest! {
        #[test]
        fn a_text_of_stops_ends_where_one_byte_at_a_time_says(
            rest in prop::collection::vec(
                prop::sample::select(vec![b'"', b'\\', b'n', b'u', b'0', b'a', b'G', 0x01, 0xe4, 0xb8, b' ']),
                0..300,
            )
        ) {
            text_ends_agree(&rest);
        }
    }

    #[test]
    fn a_string_runs_on_across_pieces_cut_anywhere_in_it() {
        // Escapes and characters of two, three and four bytes next to every cut.
        let text = r#"plain \" \\ \/ \b\f\n\r\t \u00e9\uD83D é 日本 😀 and more plain text"#;
        let valid =
            format!(r#"{{"id":"x","choices":[{{"content":"{text}","n":[1,2]}}],"u":{{"t":3}}}}"#);
        let valid = valid.as_bytes();
        let start = valid.windows(5).position(|w| w == b"plain").unwrap();
        let end = start + text.len();
        // Each of these, put in the text, makes the body no JSON (mostly: see below).
        let faults: [&[u8]; 6] = [
            b"\\x",
            b"\\u12G4",
            b"\x01",
            b"\xc3(",
            b"\xe6\x97",
            b"\xed\xa0\x80",
        ];
        for at in start..=end {
            assert!(is_json_across(&pieces(valid, &[at])), "cut at {at}");
            for mid in (at..=end).step_by(7) {
                let cut = pieces(valid, &[at, mid]);
                assert!(is_json_across(&cut), "cut at {at} and {mid}");
            }
            for fault in faults {
                // The fault right before and right after the cut.
                for place in [at.saturating_sub(fault.len()).max(start), at] {
                    let body = [&valid[..place], fault, &valid[place..]].concat();
                    // Next to a backslash or inside a character, some make it JSON again.
                    if oracle(&body) {
                        continue;
                    }
                    for cut in [place, place + fault.len() / 2, place + fault.len()] {
                        assert!(
                            !is_json_across(&pieces(&body, &[cut])),
                            "{fault:02x?} at {place}, cut at {cut}"
                        );
                    }
                }
            }
        }
        // Whitespace after the value, in a piece of its own; anything else after it.
        let spaced = [valid, b" \n"].concat();
        assert!(is_json_across(&pieces(&spaced, &[start + 3, valid.len()])));
        let more = [valid, b" 1"].concat();
        assert!(!is_json_across(&pieces(&more, &[start + 3, valid.len()])));
        assert!(!is_json_across(&[]));
    }

    #[test]
    fn every_cut_between_and_inside_tokens_agrees_with_the_joined_body() {
        for body in compact_bodies() {
            // Compact, whitespace between every token, and broken variants of both.
            let spaced: Vec<u8> = String::from_utf8(body.clone())
                .unwrap()
                .replace(',', " ,\n ")
                .replace(':', "\t: ")
                .replace('[', "[ ")
                .replace('}', " }")
                .into_bytes();
            let mut variants = vec![body.clone(), spaced.clone()];
            for base in [&body, &spaced] {
                for at in (0..base.len()).step_by(3) {
                    let mut removed = base.clone();
                    removed.remove(at);
                    variants.push(removed);
                    variants.push([&base[..at], b"x", &base[at..]].concat());
                }
            }
            for variant in variants {
                let expected = oracle(&variant);
                for at in 0..=variant.len() {
                    let one = pieces(&variant, &[at]);
                    assert_eq!(is_json_across(&one), expected, "{variant:?} cut at {at}");
                    assert!(members_agree(&variant, &[at]), "{variant:?} cut at {at}");
                    // A second cut one byte later: a piece of one byte, tokens in three pieces.
                    if at < variant.len() {
                        let two = pieces(&variant, &[at, at + 1]);
                        assert_eq!(is_json_across(&two), expected, "{variant:?} at {at}, +1");
                        assert!(
                            members_agree(&variant, &[at, at + 1]),
                            "{variant:?} {at}, +1"
                        );
                    }
                }
                // Every byte a piece of its own.
                let bytes: Vec<usize> = (1..variant.len()).collect();
                assert_eq!(is_json_across(&pieces(&variant, &bytes)), expected);
                assert!(members_agree(&variant, &bytes), "{variant:?} byte by byte");
            }
        }
        // Empty pieces anywhere are nothing.
        let empty = [b"".as_slice(), b"[1", b"", b"2,tr", b"", b"ue]", b""].map(Bytes::from_static);
        assert!(is_json_across(&empty));
    }

    #[test]
    fn a_number_too_long_to_read_again_across_a_cut_is_left_to_the_joined_check() {
        // A name runs on across cuts as any string does; a number is read again from a copy,
        // which holds it when no more than half of the copy is before the cut.
        let name = "n".repeat(3 * STITCH);
        let digits = "7".repeat(STITCH / 2 + 20);
        let body = format!(r#"{{"{name}":[{digits},1]}}"#);
        let body = body.as_bytes();
        assert!(oracle(body));
        let digits_at = body.iter().position(|&b| b == b'[').unwrap() + 1;
        for at in [2, 2 + STITCH, digits_at + 1, digits_at + STITCH / 2] {
            assert!(is_json_across(&pieces(body, &[at])), "cut at {at}");
            assert!(members_agree(body, &[at]), "cut at {at}");
        }
        // More than half of the copy before the cut: not decided here.
        let at = digits_at + STITCH / 2 + 1;
        assert!(!is_json_across(&pieces(body, &[at])));
        assert_eq!(members_across(&pieces(body, &[at])), None);
        // A number that runs on past the end of the copy: not decided here either.
        let long = format!("[{}]", "7".repeat(2 * STITCH));
        let long = long.as_bytes();
        assert!(oracle(long));
        assert!(!is_json_across(&pieces(long, &[10])));
    }

    #[test]
    fn nesting_has_no_depth_limit_and_tracks_every_level() {
        for depth in [63, 64, 65, 127, 128, 129, 10_000] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth));
            // Alternating kinds: a wrong bit at any level closes with the wrong bracket.
            let mixed_open: String = (0..depth)
                .map(|i| if i % 2 == 0 { "[" } else { "{\"k\":" })
                .collect();
            let mixed_close: String = (0..depth)
                .rev()
                .map(|i| if i % 2 == 0 { "]" } else { "}" })
                .collect();
            let mixed = format!("{mixed_open}0{mixed_close}");
            // The same with the closing kinds swapped at the outermost level only.
            let mut swapped = mixed.clone().into_bytes();
            let last = swapped.len() - 1;
            swapped[last] = if swapped[last] == b']' { b'}' } else { b']' };
            let unclosed = &mixed[..mixed.len() - 1];
            check(&[
                (arrays.as_bytes(), true),
                (objects.as_bytes(), true),
                (mixed.as_bytes(), true),
                (&swapped, false),
                (unclosed.as_bytes(), false),
                (&arrays.as_bytes()[1..], false),
            ]);
        }
        // [{[{ … 65 levels, and the inner levels swapped one at a time.
        let open: String = (0..65).map(|i| ["[", "{\"\":"][i % 2]).collect();
        let close: Vec<u8> = (0..65).rev().map(|i| [b']', b'}'][i % 2]).collect();
        for flip in 0..close.len() {
            let mut wrong = close.clone();
            wrong[flip] = if wrong[flip] == b']' { b'}' } else { b']' };
            let body = [open.as_bytes(), b"null", &wrong].concat();
            check(&[(&body, false)]);
        }
        check(&[(&[open.as_bytes(), b"null", &close].concat(), true)]);
    }

    #[test]
    fn the_nesting_stack_reuses_its_words() {
        // Down past 128, back up to 1, down again: the deeper words hold stale bits.
        let down = "[{\"\":".repeat(80);
        let up = "}]".repeat(80);
        let body = format!("[{down}1{up},{down}2{up}]");
        check(&[(body.as_bytes(), true)]);
        let wrong = format!("[{down}1{up},{}2{up}]", "{\"\":[".repeat(80));
        check(&[(wrong.as_bytes(), false)]);
    }

    /// Compact bodies with every kind of token, keys and strings of every length around a word
    /// of eight, escapes and UTF-8 next to the quotes, numbers of every shape, empty and nested
    /// containers.
    fn compact_bodies() -> Vec<Vec<u8>> {
        let strings: Vec<String> = (0..=18)
            .map(|n| "abcdefghijklmnopqrs"[..n].to_string())
            .collect();
        let members: Vec<String> = strings.iter().map(|s| format!("\"{s}\":\"{s}\"")).collect();
        let items: Vec<String> = strings.iter().map(|s| format!("\"{s}\"")).collect();
        vec![
            br#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"lorem ipsum"},"finish_reason":null}]}"#.to_vec(),
            format!("{{{}}}", members.join(",")).into_bytes(),
            format!("[{}]", items.join(",")).into_bytes(),
            br#"{"a":[],"b":{},"c":[[]],"d":[{}],"e":{"f":[1,-0,0.5,-1.25e-3,1E+5,0e0]},"g":[true,false,null]}"#.to_vec(),
            br#"[{"\"":"\\","\u00e9x":"x\n","k\/":"\t"},"\"\"","a\"b"]"#.to_vec(),
            "{\"é\":\"日本\",\"ab\u{e9}\":\"😀\",\"abcdefg\u{e9}\":\"abcdef\u{e9}\"}".as_bytes().to_vec(),
            br#"[[[{"a":[{"b":[0]}]}]],1,"x",{"c":{"d":{}}}]"#.to_vec(),
            b"0".to_vec(),
            b"\"abcdefg\"".to_vec(),
        ]
    }

    #[test]
    fn compact_fast_paths_agree_at_every_place() {
        for body in compact_bodies() {
            let mut variants = vec![body.clone()];
            for at in 0..=body.len() {
                // Cut after every token and inside each.
                variants.push(body[..at].to_vec());
                // Whitespace where compact JSON has none (and bytes that are not whitespace).
                for byte in [b' ', b'\t', b'\n', b'\r', 0x0c, 0] {
                    let mut spaced = body.clone();
                    spaced.insert(at, byte);
                    variants.push(spaced);
                }
                if at < body.len() {
                    let mut removed = body.clone();
                    removed.remove(at);
                    variants.push(removed);
                }
            }
            for variant in variants {
                assert_eq!(
                    is_json(&variant),
                    oracle(&variant),
                    "{:?}",
                    String::from_utf8_lossy(&variant)
                );
                assert_eq!(
                    members(&variant),
                    members_oracle(&variant),
                    "{:?}",
                    String::from_utf8_lossy(&variant)
                );
            }
        }
    }

    #[test]
    fn nesting_across_the_register_agrees_with_serde() {
        // Down past 64 and 128 levels of arrays and objects, each level with an element or a
        // member after its inner value: read after the levels below are closed, when a spilled
        // level has come back into the register.
        for depth in [63usize, 64, 65, 66, 127, 128, 129, 130, 200] {
            let kinds: Vec<bool> = (0..depth).map(|i| i % 3 == 0).collect();
            let open: String = kinds
                .iter()
                .map(|&o| if o { "{\"k\":" } else { "[" })
                .collect();
            let close: String = kinds
                .iter()
                .rev()
                .map(|&o| if o { ",\"z\":1}" } else { ",0]" })
                .collect();
            let body = format!("{open}null{close}");
            let text = body.as_bytes();
            assert!(oracle(text), "{depth}");
            assert!(is_json(text), "{depth}");
            // The outermost level is an object: its members as serde reads them.
            assert!(members(text).is_some_and(|m| m.len() == 2), "{depth}");
            assert_eq!(members(text), members_oracle(text), "{depth}");
            // One level's closing bracket swapped: wrong wherever it is.
            for level in [
                0,
                depth / 2,
                depth.saturating_sub(65),
                depth - 64.min(depth),
                depth - 1,
            ] {
                let mut wrong = body.clone().into_bytes();
                let at = {
                    // The closing bracket of `level` is the last byte of its piece of `close`.
                    let pieces: usize = kinds[level..].iter().map(|&o| if o { 7 } else { 3 }).sum();
                    open.len() + 4 + pieces - 1
                };
                wrong[at] = if wrong[at] == b']' { b'}' } else { b']' };
                assert!(!oracle(&wrong), "{depth} {level}");
                assert!(!is_json(&wrong), "{depth} {level}");
            }
        }
    }

    /// Any JSON value serde_json can write: strings from all of Unicode (control characters,
    /// surrogates' neighbours, astral planes), integers and floats.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn whitespace() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b" \t\n\r".to_vec()), 0..4)
    }

    /// `value` written compactly, or pretty with whitespace of every kind between the tokens,
    /// with whitespace around it.
    pub(super) fn json_text() -> impl Strategy<Value = Vec<u8>> {
        (
            value(),
            prop::option::of(whitespace()),
            whitespace(),
            whitespace(),
        )
            .prop_map(|(value, indent, before, after)| {
                let mut out = before;
                match indent {
                    None => serde_json::to_writer(&mut out, &value),
                    Some(indent) => {
                        let formatter = serde_json::ser::PrettyFormatter::with_indent(&indent);
                        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
                        serde::Serialize::serialize(&value, &mut ser)
                    }
                }
                .expect("a Value serialises");
                out.extend_from_slice(&after);
                out
            })
    }

    #[derive(Debug, Clone)]
    pub(super) enum Edit {
        Replace(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
    }

    /// Bytes that matter to JSON or to UTF-8 more often than the others.
    fn edit_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => prop::sample::select(
                b"{}[],:\"\\/ \t\n\r0123456789-+.eEtrufalsn\x00\x1f\x7f\x80\xbf\xc0\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff"
                    .to_vec()
            ),
            1 => any::<u8>(),
        ]
    }

    pub(super) fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            3 => (any::<usize>(), edit_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
            3 => (any::<usize>(), edit_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
            2 => any::<usize>().prop_map(Edit::Delete),
            1 => any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    pub(super) fn apply(mut body: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for edit in edits {
            let len = body.len();
            match *edit {
                Edit::Replace(at, b) if len > 0 => body[at % len] = b,
                Edit::Insert(at, b) => body.insert(at % (len + 1), b),
                Edit::Delete(at) if len > 0 => {
                    body.remove(at % len);
                }
                Edit::Truncate(at) => body.truncate(at % (len + 1)),
                _ => {}
            }
        }
        body
    }

    /// Short runs of number characters, alone or in an array: leading zeros, lone signs and
    /// dots, empty exponents are frequent here and rare in mutated JSON.
    fn number_like() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop::sample::select(b"-+0123456789.eE".to_vec()), 1..8),
            any::<bool>(),
        )
            .prop_map(|(number, in_array)| {
                if in_array {
                    [b"[".as_slice(), &number, b"]"].concat()
                } else {
                    number
                }
            })
    }

    /// Pieces of JSON and of UTF-8 (whole, partial, invalid) strung together at random.
    pub(super) fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let pieces: Vec<&'static [u8]> = vec![
            b"0",
            b"1",
            b"7",
            b"-",
            b".",
            b"e",
            b"+",
            b"[",
            b"]",
            b"{",
            b"}",
            b",",
            b":",
            b" ",
            b"\"",
            b"\"a\"",
            b"\\",
            b"u",
            b"0041",
            b"d800",
            b"n",
            b"/",
            b"true",
            b"tru",
            b"null",
            b"false",
            b"\t",
            b"\x01",
            b"\x7f",
            b"\xc3\xa9",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\xed\x9f\xbf",
            b"\xf4\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xe0\x80",
            b"\xf0\x9f\x98\x80",
            b"\xc0\xaf",
            b"abcdefgh",
        ];
        prop::collection::vec(prop::sample::select(pieces), 0..16).prop_map(|p| p.concat())
    }

    /// A string of pieces of text, escapes and UTF-8 (whole, partial, invalid), closed or not.
    fn string_like() -> impl Strategy<Value = Vec<u8>> {
        let pieces: Vec<&'static [u8]> = vec![
            b"a",
            b"abcdefgh",
            b" ",
            b"\x7f",
            b"\x01",
            b"\x1f",
            b"\t",
            b"\\n",
            b"\\/",
            b"\\\"",
            b"\\u",
            b"0041",
            b"d800",
            b"DFFF",
            b"g",
            b"\\",
            b"\"",
            b"\xc3\xa9",
            b"\xc3",
            b"\xa9",
            b"\xe2\x82\xac",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xed\x9f\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x9f\x98\x80",
            b"\xf0\x8f\xbf\xbf",
            b"\xf4\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xc1\xbf",
            b"\xf5\x80\x80\x80",
            b"\xff",
        ];
        (
            prop::collection::vec(prop::sample::select(pieces), 0..8),
            any::<bool>(),
        )
            .prop_map(|(pieces, closed)| {
                let mut out = vec![b'"'];
                out.extend(pieces.concat());
                if closed {
                    out.push(b'"');
                }
                out
            })
    }

    /// What [`object_members`] must say: the body is valid UTF-8 and one JSON object to serde,
    /// whose members, as serde reads them raw (keys undecoded, between their quotes), are these.
    fn members_oracle(body: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        use serde::de::{MapAccess, Visitor};
        use serde_json::value::RawValue;
        struct Pairs<'a>(Vec<(&'a RawValue, &'a RawValue)>);
        impl<'de> serde::Deserialize<'de> for Pairs<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> Visitor<'de> for Visit {
                    type Value = Pairs<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Pairs<'de>, A::Error> {
                        let mut pairs = Vec::new();
                        while let Some(key) = map.next_key::<&'de RawValue>()? {
                            pairs.push((key, map.next_value::<&'de RawValue>()?));
                        }
                        Ok(Pairs(pairs))
                    }
                }
                d.deserialize_map(Visit)
            }
        }
        let text = std::str::from_utf8(body).ok()?;
        let pairs = serde_json::from_str::<Pairs<'_>>(text).ok()?;
        Some(
            pairs
                .0
                .iter()
                .map(|(k, v)| {
                    let k = k.get().as_bytes();
                    (&k[1..k.len() - 1], v.get().as_bytes())
                })
                .collect(),
        )
    }

    /// What [`array_elements`] must say: the body is valid UTF-8 and one JSON array to serde,
    /// whose elements, as serde reads them raw, are these.
    fn elements_oracle(body: &[u8]) -> Option<Vec<&[u8]>> {
        use serde_json::value::RawValue;
        let text = std::str::from_utf8(body).ok()?;
        let elements = serde_json::from_str::<Vec<&RawValue>>(text).ok()?;
        Some(elements.iter().map(|e| e.get().as_bytes()).collect())
    }

    /// [`array_elements`] with what it saw, `None` when it said no.
    fn elements(body: &[u8]) -> Option<Vec<&[u8]>> {
        let mut seen = Vec::new();
        array_elements(body, |value| seen.push(&body[value])).then_some(seen)
    }

    /// Arrays: a JSON text whose value is an array.
    fn array_text() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(value(), 0..6),
            whitespace(),
            whitespace(),
        )
            .prop_map(|(elements, before, after)| {
                let array = Value::Array(elements);
                let text = serde_json::to_vec_pretty(&array).expect("a Value serialises");
                [before, text, after].concat()
            })
    }

    #[test]
    fn array_elements_are_where_serde_reads_them() {
        type Elements<'a> = Option<Vec<&'a [u8]>>;
        let cases: [(&[u8], Elements<'_>); 12] = [
            (b"[]", Some(vec![])),
            (b" [ ] ", Some(vec![])),
            (b"[1]", Some(vec![b"1"])),
            (
                br#"[ {"a":[1,{}]} , "x\"" ,null,-0.5e3 ]"#,
                Some(vec![br#"{"a":[1,{}]}"#, br#""x\"""#, b"null", b"-0.5e3"]),
            ),
            (b"[[],[[]]]", Some(vec![b"[]", b"[[]]"])),
            (b"[1,]", None),
            (b"[,1]", None),
            (b"[1 2]", None),
            (b"[1", None),
            (b"[1]]", None),
            (b"{}", None),
            (b"[\"\xff\"]", None),
        ];
        for (body, expected) in cases {
            assert_eq!(
                elements(body),
                expected,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                elements_oracle(body),
                expected,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// [`object_members`] with what it saw, `None` when it said no.
    pub(super) fn members(body: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        let mut seen = Vec::new();
        object_members(body, |key, value| seen.push((key, &body[value]))).then_some(seen)
    }

    /// [`members`] of a body in pieces, each name and value joined.
    fn members_across(pieces: &[Bytes]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut seen = Vec::new();
        let joined = |spread: Spread<'_>| spread.parts().collect::<Vec<_>>().concat();
        object_members_across(pieces, |key, value| seen.push((joined(key), joined(value))))
            .then_some(seen)
    }

    /// Whether [`members_across`] of `body` cut at `cuts` sees what [`members`] sees whole.
    fn members_agree(body: &[u8], cuts: &[usize]) -> bool {
        let whole = members(body).map(|m| {
            m.into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        });
        members_across(&pieces(body, cuts)) == whole
    }

    #[test]
    fn object_members_are_where_they_stand() {
        type Pairs<'a> = Option<Vec<(&'a [u8], &'a [u8])>>;
        let cases: Vec<(&[u8], Pairs<'_>)> = vec![
            (b"{}", Some(vec![])),
            (b" \t{ }\r\n", Some(vec![])),
            (
                b"{\"a\":1,\"b\" : [1, {\"c\":2}] ,\"a\":\"x\\\"y\"}",
                Some(vec![
                    (b"a", b"1"),
                    (b"b", b"[1, {\"c\":2}]"),
                    (b"a", b"\"x\\\"y\""),
                ]),
            ),
            (
                b"{\"d\\u0061ta\":null,\"\":{},\"\\ud800\":-0.5e1}",
                Some(vec![
                    (b"d\\u0061ta", b"null"),
                    (b"", b"{}"),
                    (b"\\ud800", b"-0.5e1"),
                ]),
            ),
            (
                b"{\"\xc3\xa9\":true}",
                Some(vec![("\u{e9}".as_bytes(), b"true")]),
            ),
            // Not one object.
            (b"[]", None),
            (b"1", None),
            (b"", None),
            (b"{", None),
            (b"{\"a\"}", None),
            (b"{\"a\":}", None),
            (b"{\"a\":1,}", None),
            (b"{,}", None),
            (b"{\"a\":1 \"b\":2}", None),
            (b"{\"a\":1}}", None),
            (b"{\"a\":1} 1", None),
            (b"{\"a\":[1}", None),
            (b"{\"a\":\"\xff\"}", None),
            (b"{\"\xff\":1}", None),
            (b"{a:1}", None),
        ];
        for (body, expected) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(members_oracle(body), expected, "oracle on {shown}");
            assert_eq!(members(body), expected, "object_members on {shown}");
        }
    }

    /// Objects: a JSON text whose value is an object, or such a text's members mutated.
    pub(super) fn object_text() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec((any::<String>(), value()), 0..6),
            whitespace(),
            whitespace(),
        )
            .prop_map(|(members, before, after)| {
                let object = Value::Object(members.into_iter().collect());
                [
                    before,
                    serde_json::to_vec(&object).expect("a Value serialises"),
                    after,
                ]
                .concat()
            })
    }

    proptest! {
        #[test]
        fn object_members_agree_with_serde_on_objects(body in object_text()) {
            prop_assert!(members_oracle(&body).is_some());
            prop_assert_eq!(members(&body), members_oracle(&body));
        }

        #[test]
        fn object_members_agree_with_serde_on_mutated_json(
            body in prop_oneof![object_text(), json_text()],
            edits in prop::collection::vec(edit(), 0..4),
        ) {
            let body = apply(body, &edits);
            prop_assert_eq!(members(&body), members_oracle(&body), "{:02x?}", body);
        }

        #[test]
        fn array_elements_agree_with_serde_on_arrays(body in array_text()) {
            prop_assert!(elements_oracle(&body).is_some());
            prop_assert_eq!(elements(&body), elements_oracle(&body));
        }

        #[test]
        fn array_elements_agree_with_serde_on_mutated_json(
            body in prop_oneof![array_text(), json_text()],
            edits in prop::collection::vec(edit(), 0..4),
        ) {
            let body = apply(body, &edits);
            prop_assert_eq!(elements(&body), elements_oracle(&body), "{:02x?}", body);
        }

        #[test]
        fn array_elements_agree_with_serde_on_token_soup(body in token_soup()) {
            let body = [b"[1,".as_slice(), &body].concat();
            prop_assert_eq!(elements(&body), elements_oracle(&body), "{:02x?}", body);
        }

        #[test]
        fn object_members_agree_with_serde_on_token_soup(body in token_soup()) {
            let body = [b"{\"k\":".as_slice(), &body].concat();
            prop_assert_eq!(members(&body), members_oracle(&body), "{:02x?}", body);
        }
    }

    proptest! {
        #[test]
        fn across_pieces_is_never_json_where_the_joined_body_is_not(
            body in prop_oneof![json_text(), string_like(), token_soup()],
            edits in prop::collection::vec(edit(), 0..3),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        ) {
            let body = apply(body, &edits);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let across = is_json_across(&pieces(&body, &cuts));
            if across {
                prop_assert!(oracle(&body), "{:02x?} cut at {:?}", body, cuts);
            }
            // No token of a body this short is too long to read again across a cut.
            if body.len() <= STITCH / 2 {
                prop_assert_eq!(across, oracle(&body), "{:02x?} cut at {:?}", body, cuts);
                prop_assert!(members_agree(&body, &cuts), "{:02x?} cut at {:?}", body, cuts);
            }
        }

        #[test]
        fn members_across_pieces_are_those_of_the_joined_object(
            body in object_text(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            // Where a token is too long to read across its cut, both are refused instead.
            let decided = is_json_across(&pieces(&body, &cuts));
            prop_assert_eq!(members_across(&pieces(&body, &cuts)).is_some(), decided);
            if decided {
                prop_assert!(members_agree(&body, &cuts), "{:02x?} cut at {:?}", body, cuts);
            }
        }

        #[test]
        fn agrees_with_serde_on_string_like_bytes(body in string_like()) {
            prop_assert_eq!(is_json(&body), oracle(&body), "{:02x?}", body);
        }

        #[test]
        fn agrees_with_serde_on_number_like_bytes(body in number_like()) {
            prop_assert_eq!(is_json(&body), oracle(&body), "{:?}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn agrees_with_serde_on_token_soup(body in token_soup()) {
            prop_assert_eq!(is_json(&body), oracle(&body), "{:02x?}", body);
        }

        #[test]
        fn agrees_with_serde_on_valid_json(body in json_text()) {
            prop_assert!(oracle(&body), "{:?}", String::from_utf8_lossy(&body));
            prop_assert!(is_json(&body), "{:?}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn agrees_with_serde_on_mutated_json(
            body in json_text(),
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            let body = apply(body, &edits);
            prop_assert_eq!(
                is_json(&body), oracle(&body), "{:?} ({:02x?})", String::from_utf8_lossy(&body), body
            );
        }

        #[test]
        fn agrees_with_serde_on_arbitrary_bytes(
            body in prop::collection::vec(edit_byte(), 0..40),
        ) {
            prop_assert_eq!(is_json(&body), oracle(&body), "{:02x?}", body);
        }
    }
}
