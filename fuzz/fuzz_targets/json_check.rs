//! `json_check::is_json` against its definition on arbitrary bytes: valid UTF-8 and one value
//! that serde_json accepts with `IgnoredAny` (what `envelope::is_json` was before it).
//!
//! Checked: the two agree on the input as it is, and on the input as an array element and as
//! an object member (so that the fuzzer's JSON is also judged nested, between other bytes).

#![no_main]

use envelope_proxy::translate::json_check::is_json;
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

fuzz_target!(|data: &[u8]| {
    agree(data);
    agree(&[b"[", data, b"]"].concat());
    agree(&[b"{\"k\":", data, b"}"].concat());
});
