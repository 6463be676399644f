//! `json_check::is_json` against its definition on arbitrary bytes: valid UTF-8 and one value
//! that serde_json accepts with `IgnoredAny` (what `envelope::is_json` was before it).
//!
//! Checked: the two agree on the input as it is, and on the input as an array element and as
//! an object member (so that the fuzzer's JSON is also judged nested, between other bytes).
//! `is_json_across` of the input cut into pieces (of a size its first byte picks) never calls
//! JSON what serde refuses, and agrees with it where no token is too long to read across a cut;
//! `object_members_across` sees the members `object_members` sees in the joined body.

#![no_main]

use bytes::Bytes;
use envelope_proxy::translate::json_check::{
    is_json, is_json_across, object_members, object_members_across, Spread,
};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fn oracle(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok() && serde_json::from_slice::<IgnoredAny>(body).is_ok()
}

fn agree(body: &[u8]) {
    assert_eq!(
        is_json(body),
        oracle(body),
        "json_check and serde disagree on {:?}",
        String::from_utf8_lossy(body)
    );
}

/// `body` in pieces of `size` bytes, checked without joining them.
fn agree_across(body: &[u8], size: usize) {
    let pieces: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
    let (across, whole) = (is_json_across(&pieces), oracle(body));
    let context = || format!("{:?} in pieces of {size}", String::from_utf8_lossy(body));
    assert!(
        !across || whole,
        "across calls JSON what serde refuses: {}",
        context()
    );
    // The longest a token's start may be when a cut falls in it (half of the copy).
    if body.len() <= 64 {
        assert_eq!(across, whole, "across and serde disagree: {}", context());
    }
    // Each member's name and value, joined, are those read in the joined body.
    let mut seen = Vec::new();
    let joined = |spread: Spread<'_>| spread.parts().collect::<Vec<_>>().concat();
    let members = object_members_across(&pieces, |k, v| seen.push((joined(k), joined(v))));
    let mut whole_seen = Vec::new();
    let whole_members =
        object_members(body, |k, v| whole_seen.push((k.to_vec(), body[v].to_vec())));
    assert_eq!(members, across && whole_members, "members: {}", context());
    if members {
        assert_eq!(seen, whole_seen, "members: {}", context());
    }
}

fuzz_target!(|data: &[u8]| {
    agree(data);
    if let Some(&first) = data.first() {
        agree_across(data, 1 + usize::from(first % 23));
    }
    agree(&[b"[", data, b"]"].concat());
    agree(&[b"{\"k\":", data, b"}"].concat());
});
