//! Header operations on the way up and on the way back.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and never cross the proxy;
//! everything else is end-to-end and passes through, so the headers SDK retries depend on
//! (`retry-after`, `retry-after-ms`, `x-should-retry`, `x-ratelimit-*`, `x-request-id`) always
//! reach the client.
//!
//! The fields the proxy checks, reads or removes are found in one pass over a map's names
//! ([`Present`]); only those present are looked up.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Connection-scoped headers that are always removed. [`Present`] has a bit for each, in
/// this order.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Which of the fields the proxy checks, reads or removes a header map holds, found in one
/// pass over its names. Most are usually absent, and a lookup of an absent field still hashes
/// its name and probes the map (70–110 instructions; BENCHMARKS.md, twenty-fifth step): the
/// request and response paths look only where this says a field is.
///
/// A field it says is absent is absent for as long as the proxy adds none of these fields
/// itself; one it says is present may since have been removed (a name `Connection` lists), so
/// its lookup may still find nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present {
    pub authorization: bool,
    pub content_encoding: bool,
    pub content_length: bool,
    pub content_type: bool,
    pub etag: bool,
    pub forwarded: bool,
    pub host: bool,
    pub traceparent: bool,
    pub transfer_encoding: bool,
    pub x_forwarded_host: bool,
    pub x_request_id: bool,
    /// Which of [`HOP_BY_HOP`] are there: bit `i` for `HOP_BY_HOP[i]` (`Transfer-Encoding`
    /// among them). Clients send `Connection: keep-alive` (the OpenAI Python SDK does), and a
    /// streamed response comes with `Transfer-Encoding`: only those present are removed.
    pub hop_by_hop: u16,
}

/// [`Present::hop_by_hop`]'s bit for `HOP_BY_HOP[index]`.
const fn hop(index: usize) -> u16 {
    1 << index
}

// Each name's bit, by its place in [`HOP_BY_HOP`] (the census test checks every one).
const CONNECTION_BIT: u16 = hop(0);
const KEEP_ALIVE_BIT: u16 = hop(1);
const PROXY_CONNECTION_BIT: u16 = hop(2);
const PROXY_AUTHENTICATE_BIT: u16 = hop(3);
const PROXY_AUTHORIZATION_BIT: u16 = hop(4);
const TE_BIT: u16 = hop(5);
const TRAILER_BIT: u16 = hop(6);
const TRANSFER_ENCODING_BIT: u16 = hop(7);
const UPGRADE_BIT: u16 = hop(8);

/// Notes a field [`Present::of`] found; no hop-by-hop bit.
fn mark(field: &mut bool) -> u16 {
    *field = true;
    0
}

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Present {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            // By length first: most names are decided by one comparison, or none (a name
            // compared with each field in turn cost ~60 instructions, more than the lookups
            // it saves).
            let name = name.as_str();
            let hop_by_hop = match name.len() {
                2 if name == "te" => TE_BIT,
                4 if name == "host" => mark(&mut present.host),
                4 if name == "etag" => mark(&mut present.etag),
                7 if name == "trailer" => TRAILER_BIT,
                7 if name == "upgrade" => UPGRADE_BIT,
                9 if name == "forwarded" => mark(&mut present.forwarded),
                10 if name == "connection" => CONNECTION_BIT,
                10 if name == "keep-alive" => KEEP_ALIVE_BIT,
                11 if name == "traceparent" => mark(&mut present.traceparent),
                12 if name == "content-type" => mark(&mut present.content_type),
                12 if name == "x-request-id" => mark(&mut present.x_request_id),
                13 if name == "authorization" => mark(&mut present.authorization),
                14 if name == "content-length" => mark(&mut present.content_length),
                16 if name == "content-encoding" => mark(&mut present.content_encoding),
                16 if name == "x-forwarded-host" => mark(&mut present.x_forwarded_host),
                16 if name == "proxy-connection" => PROXY_CONNECTION_BIT,
                17 if name == "transfer-encoding" => {
                    present.transfer_encoding = true;
                    TRANSFER_ENCODING_BIT
                }
                18 if name == "proxy-authenticate" => PROXY_AUTHENTICATE_BIT,
                19 if name == "proxy-authorization" => PROXY_AUTHORIZATION_BIT,
                _ => 0,
            };
            present.hop_by_hop |= hop_by_hop;
        }
        present
    }

    /// [`content_kind`], with no lookup when there is no `Content-Type`.
    pub(crate) fn content_kind(self, headers: &HeaderMap) -> ContentKind {
        kind_of(
            self.content_type
                .then(|| headers.get(header::CONTENT_TYPE))
                .flatten(),
        )
    }

    /// [`is_content_encoded`], with no lookup when there is no `Content-Encoding`.
    pub(crate) fn is_content_encoded(self, headers: &HeaderMap) -> bool {
        is_coding(
            self.content_encoding
                .then(|| headers.get(header::CONTENT_ENCODING))
                .flatten(),
        )
    }
}

/// Removes hop-by-hop headers, including any header the `Connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, present: Present) {
    // Usually there are none, or only `Connection: keep-alive` or `Transfer-Encoding`.
    let mut hop_by_hop = present.hop_by_hop;
    if hop_by_hop & CONNECTION_BIT != 0 {
        hop_by_hop &= !CONNECTION_BIT;
        // Taken out of the map first, as its values borrow it: the usual single line as it
        // is, several lines copied.
        let (line, more) = match headers.entry(header::CONNECTION) {
            Entry::Occupied(entry) if entry.iter().nth(1).is_none() => {
                (Some(entry.remove()), Vec::new())
            }
            Entry::Occupied(entry) => {
                let more: Vec<HeaderValue> = entry.iter().cloned().collect();
                entry.remove();
                (None, more)
            }
            Entry::Vacant(_) => (None, Vec::new()),
        };
        // Names listed in Connection are hop-by-hop for this message too. Each is removed as
        // written (no name is built); those of [`HOP_BY_HOP`] are left to the loop below,
        // which removes the ones that are there.
        let listed = line.iter().chain(&more).filter_map(|v| v.to_str().ok());
        for name in listed.flat_map(|value| value.split(',')).map(str::trim) {
            if !is_hop_by_hop(name) {
                headers.remove(name);
            }
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if hop_by_hop & hop(index) != 0 {
            headers.remove(name);
        }
    }
}

/// True when `name` (in any case) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
}

/// Drops the upstream's framing from a response about to be relayed (RFC 9112 §6.3).
///
/// `Content-Length` goes whenever `Transfer-Encoding` came with it (the length is stale), and
/// whenever the response has a body: the body the proxy sends states its own exact length,
/// which for a pass-through body is the length hyper enforced while reading it, so a body that
/// ends early breaks the client's response instead of ending it. A bodiless response (HEAD,
/// 204, 304) keeps the length it declares for the representation.
pub(crate) fn strip_upstream_framing(headers: &mut HeaderMap, bodiless: bool, present: Present) {
    if present.content_length && (!bodiless || present.transfer_encoding) {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Turns a client's request headers into the upstream's.
///
/// `Host` becomes `upstream_host` where the proxy writes it itself, and is dropped elsewhere
/// so the client sets it from the upstream URL (and HTTP/2 uses `:authority`);
/// `X-Forwarded-Host` becomes the host the client addressed (`Host`, which the
/// caller sets from `:authority` on HTTP/2); `X-Forwarded-For` gains the client's address,
/// `X-Forwarded-Proto` says how the client reached us, and a client's `Forwarded` is dropped
/// (like Envoy, which overwrites what it does not trust: the proxy speaks `X-Forwarded-*` only,
/// and an upstream must not read a client's own `Forwarded` as the proxy's). The upstream is
/// always asked for an uncompressed body (`Accept-Encoding: identity`): on every route the proxy
/// may have to read the response (event streams, error bodies, translations), and coded bytes
/// cannot be read.
pub(crate) fn prepare_upstream_request(
    headers: &mut HeaderMap,
    present: Present,
    upstream_host: Option<&HeaderValue>,
    authority: Option<&str>,
    client_ip: Option<IpAddr>,
    client_proto: &'static str,
) {
    remove_hop_by_hop(headers, present);
    // The client's Host makes way for the upstream's in one lookup, where the proxy writes
    // that itself. HTTP/2 names the host in `:authority` (`authority`) rather than in Host.
    let sent_host = match upstream_host {
        Some(upstream) => headers.insert(header::HOST, upstream.clone()),
        None if present.host => headers.remove(header::HOST),
        None => None,
    };
    let host = sent_host.or_else(|| HeaderValue::from_str(authority?).ok());
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None if present.x_forwarded_host => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
    if present.forwarded {
        headers.remove(header::FORWARDED);
    }
    // A Unix-socket client has no address: X-Forwarded-For is left as the client sent it.
    if let Some(client_ip) = client_ip {
        append_forwarded_for(headers, client_ip);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client_proto));
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// `X-Forwarded-For`: every list the client sent (several fields are one list, RFC 9110 §5.3),
/// then the client's address, as one field — what nginx's `$proxy_add_x_forwarded_for` sends.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: IpAddr) {
    // One lookup of the name for reading the client's fields and replacing them.
    let entry = headers.entry(X_FORWARDED_FOR);
    let mut ip = [0; IP_TEXT];
    let ip = ip_text(client_ip, &mut ip);
    // Allocated at its exact length: `Bytes` then takes the buffer as it is, where spare room
    // would cost it an allocation of its own.
    let length = sent_lists(&entry).map(|list| list.len() + 2).sum::<usize>() + ip.len();
    let mut list = String::with_capacity(length);
    for value in sent_lists(&entry) {
        list.push_str(value);
        list.push_str(", ");
    }
    list.push_str(ip);
    // Always a valid value: visible ASCII the client sent, and an address.
    let Ok(value) = HeaderValue::try_from(list) else {
        if let Entry::Occupied(fields) = entry {
            fields.remove_entry_mult();
        }
        return;
    };
    match entry {
        // Replaces every field the client sent.
        Entry::Occupied(mut fields) => {
            fields.insert(value);
        }
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
    }
}

/// The lists of the client's `X-Forwarded-For` fields, trimmed; a field that is not visible
/// ASCII cannot be a list of addresses, and is left out.
fn sent_lists<'a>(entry: &'a Entry<'_, HeaderValue>) -> impl Iterator<Item = &'a str> {
    let fields = match entry {
        Entry::Occupied(fields) => Some(fields.iter()),
        Entry::Vacant(_) => None,
    };
    fields.into_iter().flatten().filter_map(|value| {
        let value = value.to_str().ok()?.trim().trim_matches(',').trim();
        (!value.is_empty()).then_some(value)
    })
}

/// Room for any textual address: a full IPv6 address with an IPv4 tail (RFC 4291 §2.2) is 45
/// bytes; Rust's `Display` writes at most 39 (eight groups of four hex digits).
const IP_TEXT: usize = 45;

/// `ip` as `Display` writes it, in `out`; an IPv4 address (the common case) without the
/// formatting machinery, which cost more than the rest of this header's work.
fn ip_text(ip: IpAddr, out: &mut [u8; IP_TEXT]) -> &str {
    use std::io::Write as _;
    let mut at = 0;
    match ip {
        IpAddr::V4(v4) => {
            // At most 15 bytes: always room.
            let mut put = |byte: u8| {
                if let Some(slot) = out.get_mut(at) {
                    *slot = byte;
                    at += 1;
                }
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + octet / 10 % 10);
                }
                put(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            let mut room = &mut out[..];
            // Fits: `IP_TEXT` is the longest form.
            let _ = write!(room, "{ip}");
            at = IP_TEXT - room.len();
        }
    }
    // Only ASCII digits, dots, colons and hex digits were written.
    std::str::from_utf8(out.get(..at).unwrap_or_default()).unwrap_or_default()
}

/// The media type of a `Content-Type` header, lower-cased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    // A byte search: `split(';')` set up a searcher per call, on every response.
    let end = value.bytes().position(|b| b == b';').unwrap_or(value.len());
    let media = value.get(..end)?.trim();
    if media.is_empty() {
        return None;
    }
    // Borrowed in the usual case: this runs on every response.
    Some(if media.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(media.to_ascii_lowercase())
    } else {
        Cow::Borrowed(media)
    })
}

/// What a body's `Content-Type` says it is, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentKind {
    /// `application/json`, `application/*+json`, or no content type at all (many model
    /// servers omit it on JSON bodies).
    Json,
    EventStream,
    Other,
}

/// The body's [`ContentKind`]: one header lookup for the questions the response path asks.
/// The media type as [`media_type`] reads it (a value that is not visible ASCII counts as
/// none), compared without building it: this runs on every response.
pub(crate) fn content_kind(headers: &HeaderMap) -> ContentKind {
    kind_of(headers.get(header::CONTENT_TYPE))
}

/// [`content_kind`] of a `Content-Type` value.
fn kind_of(content_type: Option<&HeaderValue>) -> ContentKind {
    let Some(value) = content_type else {
        return ContentKind::Json;
    };
    let value = value.as_bytes();
    // The usual values, whole: visible ASCII, so exactly what the general reading says.
    match value {
        b"application/json" => return ContentKind::Json,
        b"text/event-stream" => return ContentKind::EventStream,
        _ => {}
    }
    // `HeaderValue::to_str`'s test.
    if !value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        return ContentKind::Json;
    }
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let media = value[..end].trim_ascii();
    let is = |word: &[u8]| media.eq_ignore_ascii_case(word);
    let starts = |word: &[u8]| {
        media
            .get(..word.len())
            .is_some_and(|m| m.eq_ignore_ascii_case(word))
    };
    let ends = |word: &[u8]| {
        media
            .len()
            .checked_sub(word.len())
            .is_some_and(|at| media[at..].eq_ignore_ascii_case(word))
    };
    if media.is_empty() || is(b"application/json") || (starts(b"application/") && ends(b"+json")) {
        ContentKind::Json
    } else if is(b"text/event-stream") {
        ContentKind::EventStream
    } else {
        ContentKind::Other
    }
}

/// True for `application/json`, `application/*+json` and a missing content type.
pub(crate) fn is_json_or_unspecified(headers: &HeaderMap) -> bool {
    content_kind(headers) == ContentKind::Json
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    content_kind(headers) == ContentKind::EventStream
}

/// True when the body carries a content coding other than identity.
pub(crate) fn is_content_encoded(headers: &HeaderMap) -> bool {
    is_coding(headers.get(header::CONTENT_ENCODING))
}

fn is_coding(content_encoding: Option<&HeaderValue>) -> bool {
    content_encoding
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every field [`Present`] reports by a flag, by name, and whether it says the field is
    /// there (the hop-by-hop bits are compared one by one).
    fn reported(present: Present) -> Vec<(&'static str, bool)> {
        let Present {
            authorization,
            content_encoding,
            content_length,
            content_type,
            etag,
            forwarded,
            host,
            traceparent,
            transfer_encoding,
            x_forwarded_host,
            x_request_id,
            hop_by_hop: _,
        } = present;
        vec![
            ("authorization", authorization),
            ("content-encoding", content_encoding),
            ("content-length", content_length),
            ("content-type", content_type),
            ("etag", etag),
            ("forwarded", forwarded),
            ("host", host),
            ("traceparent", traceparent),
            ("transfer-encoding", transfer_encoding),
            ("x-forwarded-host", x_forwarded_host),
            ("x-request-id", x_request_id),
        ]
    }

    proptest::proptest! {
        /// One pass over the names says what a lookup of each field would: on maps of any of
        /// the fields it knows, hop-by-hop ones and others, some sent twice.
        #[test]
        fn present_says_what_lookups_say(picks in proptest::collection::vec(0..24usize, 0..12)) {
            const NAMES: [&str; 24] = [
                "authorization", "content-encoding", "content-length", "content-type", "etag",
                "forwarded", "host", "traceparent", "transfer-encoding", "x-forwarded-host",
                "x-request-id", "connection", "keep-alive", "proxy-connection",
                "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade",
                "x-forwarded-for", "accept", "user-agent", "x-request-ids", "traceparent2",
            ];
            let mut headers = HeaderMap::new();
            for pick in picks {
                headers.append(NAMES[pick], HeaderValue::from_static("v"));
            }
            let present = Present::of(&headers);
            for (name, said) in reported(present) {
                proptest::prop_assert_eq!(said, headers.contains_key(name), "{}", name);
            }
            for (index, name) in HOP_BY_HOP.iter().enumerate() {
                let said = present.hop_by_hop & hop(index) != 0;
                proptest::prop_assert_eq!(said, headers.contains_key(name), "{}", name);
            }
        }
    }

    /// [`prepare_upstream_request`] as the request path calls it.
    fn prepare(
        headers: &mut HeaderMap,
        authority: Option<&str>,
        client_ip: Option<IpAddr>,
        client_proto: &'static str,
    ) {
        let present = Present::of(headers);
        prepare_upstream_request(headers, present, None, authority, client_ip, client_proto);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("retry-after", "2"),
            ("x-request-id", "req_1"),
        ]);
        let present = Present::of(&headers);
        remove_hop_by_hop(&mut headers, present);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["retry-after", "x-request-id"]);
    }

    #[test]
    fn every_connection_line_names_fields_to_remove_in_any_case() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Private-One"),
            ("connection", " x-private-two ,,TE"),
            ("x-private-one", "1"),
            ("x-private-two", "2"),
            ("close", "a field named like the token"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "4"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let present = Present::of(&headers);
        remove_hop_by_hop(&mut headers, present);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);

        // A value that is not text names nothing; the line itself still goes.
        let mut headers = HeaderMap::new();
        headers.append("connection", HeaderValue::from_bytes(b"x-a\xff").unwrap());
        headers.append("x-a", HeaderValue::from_static("1"));
        let present = Present::of(&headers);
        remove_hop_by_hop(&mut headers, present);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-a"]);
    }

    #[test]
    fn only_the_hop_by_hop_fields_there_are_removed_and_the_rest_is_untouched() {
        // `Connection: keep-alive` as the SDKs send it, with no `Keep-Alive` field.
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ]);
        let present = Present::of(&headers);
        assert_eq!(present.hop_by_hop, CONNECTION_BIT | TRANSFER_ENCODING_BIT);
        remove_hop_by_hop(&mut headers, present);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1:2:3:4:5:6:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut [0; IP_TEXT]), ip.to_string());
        }
    }

    #[test]
    fn forwarding_headers_are_added() {
        let mut headers = map(&[
            ("host", "proxy.local"),
            ("x-forwarded-for", "203.0.113.9"),
            ("accept-encoding", "gzip"),
        ]);
        prepare(
            &mut headers,
            None,
            Some("127.0.0.1".parse().unwrap()),
            "http",
        );
        assert_eq!(headers.get("host"), None);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["accept-encoding"], "identity");
    }

    #[test]
    fn every_forwarded_for_line_is_kept_and_client_forwarded_headers_are_replaced() {
        let mut headers = map(&[
            ("host", "api.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7, 192.0.2.1"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
        ]);
        prepare(
            &mut headers,
            None,
            Some("10.0.0.5".parse().unwrap()),
            "https",
        );
        assert_eq!(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.7, 192.0.2.1, 10.0.0.5"]
        );
        assert_eq!(
            headers
                .get_all("x-forwarded-host")
                .iter()
                .collect::<Vec<_>>(),
            ["api.example"]
        );
        assert_eq!(headers.get("forwarded"), None);
        assert_eq!(headers.get("host"), None);

        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        prepare(&mut headers, None, None, "http");
        assert_eq!(headers.get("x-forwarded-host"), None);
    }

    #[test]
    fn the_forwarded_host_is_the_host_field_else_the_http2_authority() {
        let forwarded_host = |pairs: &[(&str, &str)], authority| {
            let mut headers = map(pairs);
            prepare(&mut headers, authority, None, "https");
            assert_eq!(headers.get("host"), None);
            let hosts: Vec<_> = headers
                .get_all("x-forwarded-host")
                .iter()
                .cloned()
                .collect();
            hosts
        };
        // HTTP/2: no Host field, the `:authority`.
        assert_eq!(
            forwarded_host(
                &[("x-forwarded-host", "evil.example")],
                Some("api.example:8443")
            ),
            ["api.example:8443"]
        );
        // A Host field is what the client addressed, whatever else it says.
        assert_eq!(
            forwarded_host(&[("host", "api.example")], Some("other.example")),
            ["api.example"]
        );
        // A Host the client itself marked hop-by-hop is not forwarded.
        assert_eq!(
            forwarded_host(&[("host", "api.example"), ("connection", "host")], None),
            Vec::<HeaderValue>::new()
        );
    }

    #[test]
    fn where_the_proxy_writes_the_host_the_clients_becomes_the_forwarded_host() {
        let upstream = HeaderValue::from_static("upstream.local:8000");
        let prepared = |pairs: &[(&str, &str)]| {
            let mut headers = map(pairs);
            let present = Present::of(&headers);
            prepare_upstream_request(&mut headers, present, Some(&upstream), None, None, "http");
            let all = |name: &str| -> Vec<HeaderValue> {
                headers.get_all(name).iter().cloned().collect()
            };
            (all("host"), all("x-forwarded-host"))
        };
        assert_eq!(
            prepared(&[
                ("host", "api.example"),
                ("x-forwarded-host", "evil.example")
            ]),
            (
                vec![upstream.clone()],
                vec![HeaderValue::from_static("api.example")]
            )
        );
        // No Host sent, or one the client marked hop-by-hop: the upstream's, and no forwarded one.
        for pairs in [
            &[("x-forwarded-host", "evil.example")][..],
            &[("host", "api.example"), ("connection", "host")],
        ] {
            assert_eq!(prepared(pairs), (vec![upstream.clone()], vec![]));
        }
    }

    #[test]
    fn no_forwarded_for_field_gets_one_with_the_client_address() {
        let mut headers = map(&[("host", "api.example")]);
        prepare(
            &mut headers,
            None,
            Some("192.0.2.7".parse().unwrap()),
            "http",
        );
        let fields: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(fields, ["192.0.2.7"]);
    }

    #[test]
    fn upstream_framing_is_never_relayed_with_a_body() {
        let with_te = || map(&[("transfer-encoding", "chunked"), ("content-length", "10")]);
        let with_cl = || map(&[("content-length", "10")]);
        for (mut headers, bodiless, kept) in [
            (with_te(), false, false),
            (with_te(), true, false),
            (with_cl(), false, false),
            // HEAD, 204, 304: the length describes the representation; there is no body.
            (with_cl(), true, true),
        ] {
            let present = Present::of(&headers);
            strip_upstream_framing(&mut headers, bodiless, present);
            assert_eq!(headers.contains_key("content-length"), kept);
        }
    }

    #[test]
    fn content_type_checks() {
        assert!(is_json_or_unspecified(&map(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(is_json_or_unspecified(&map(&[(
            "content-type",
            "application/problem+json"
        )])));
        assert!(is_json_or_unspecified(&HeaderMap::new()));
        assert!(!is_json_or_unspecified(&map(&[(
            "content-type",
            "audio/mpeg"
        )])));
        assert!(is_event_stream(&map(&[(
            "content-type",
            "Text/Event-Stream; charset=utf-8"
        )])));
        // The same verdicts as reading the media type whole (`media_type`), on every case.
        let by_media_type = |headers: &HeaderMap| match media_type(headers) {
            None => ContentKind::Json,
            Some(m) if m == "application/json" => ContentKind::Json,
            Some(m) if m.starts_with("application/") && m.ends_with("+json") => ContentKind::Json,
            Some(m) if m == "text/event-stream" => ContentKind::EventStream,
            Some(_) => ContentKind::Other,
        };
        for value in [
            &b""[..],
            b" ",
            b";",
            b" ; charset=utf-8",
            b"application/json",
            b"APPLICATION/JSON",
            b"\tapplication/json\t;x",
            b"application/jsonx",
            b"application/+json",
            b"application/vnd.api+JSON; q=1",
            b"application+json",
            b"+json",
            b"text/event-stream",
            b" TEXT/EVENT-STREAM ;charset=utf-8",
            b"text/event-stream2",
            b"text/plain",
            b"application/json\xc3\xa9",
            b"\xfftext/event-stream",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_bytes(value).unwrap(),
            );
            assert_eq!(
                content_kind(&headers),
                by_media_type(&headers),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(is_content_encoded(&map(&[("content-encoding", "gzip")])));
        assert!(!is_content_encoded(&map(&[(
            "content-encoding",
            "identity"
        )])));
    }
}
