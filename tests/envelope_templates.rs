//! Envelope shapes as templates (issue 18), end to end: `--envelope`, `--upstream-envelope`
//! and the template flags, for each preset and a custom template, both directions, success
//! and errors, streamed and not; and bad templates refused at startup by the real binary.

use test_support::{harness, mock_upstream, process};

use harness::{fixture, pct, start, Harness};
use http::StatusCode;
use mock_upstream::Shape;
use process::{field, served_tcp_addr, Notify, ProxyProcess, TempDir};

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

const CUSTOM_SUCCESS: &str = r#"{"ok":true,"retCode":"0000","result":$data}"#;
const CUSTOM_ERROR: &str = r#"{"ok":false,"retCode":"$status","retMsg":$message,"err":$error}"#;

/// The envelopes under test: their flags for the client side and the upstream side, and
/// what a success holds around its payload.
struct Case {
    name: &'static str,
    client: Vec<String>,
    upstream: Vec<String>,
    prefix: &'static str,
    suffix: &'static str,
}

fn cases() -> Vec<Case> {
    let preset = |name: &'static str, prefix: &'static str| Case {
        name,
        client: vec![format!("--envelope={name}")],
        upstream: vec![format!("--upstream-envelope={name}")],
        prefix,
        suffix: "}",
    };
    vec![
        preset(
            "standard",
            r#"{"success":true,"code":"200","message":"successful","data":"#,
        ),
        preset("code-msg-data", r#"{"code":0,"msg":"success","data":"#),
        preset("jsend", r#"{"status":"success","data":"#),
        Case {
            name: "custom",
            client: vec![
                format!("--envelope-success={CUSTOM_SUCCESS}"),
                format!("--envelope-error={CUSTOM_ERROR}"),
            ],
            upstream: vec![
                format!("--upstream-envelope-success={CUSTOM_SUCCESS}"),
                format!("--upstream-envelope-error={CUSTOM_ERROR}"),
            ],
            prefix: r#"{"ok":true,"retCode":"0000","result":"#,
            suffix: "}",
        },
    ]
}

async fn proxy(shape: Shape, flags: &[String]) -> Harness {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start(shape, &flags).await
}

fn text(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

const RATE: &str = "Rate limit reached for gpt-4o-mini in organization org-Qx3LbN8vTz1Kd7RmYw5sHp2c on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit https://platform.openai.com/account/rate-limits to learn more.";
const SERVER: &str = "The server had an error processing your request. Sorry about that! You can retry your request, or contact us through our help center at help.openai.com if you keep seeing this error. (Please include the request ID req_7f3c9a1e5b2d4068a9c1e3f5b7d9a2c4 in your email.)";

fn rate_inner() -> String {
    format!(r#"{{"message":"{RATE}","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#)
}

fn server_inner() -> String {
    format!(r#"{{"message":"{SERVER}","type":"server_error","param":null,"code":null}}"#)
}

// === Non-streamed successes ===

#[tokio::test]
async fn bare_to_each_envelope_wraps_the_payload_bytes_unchanged() {
    let payload = fixture("bare/chat_completion.json");
    for case in cases() {
        let h = proxy(Shape::Bare, &case.client).await;
        let reply = h.chat("/api/v1/chat/completions", false).send().await;
        assert_eq!(reply.status, StatusCode::OK, "{}", case.name);
        assert_eq!(
            text(&reply.body),
            format!("{}{}{}", case.prefix, text(&payload), case.suffix),
            "{}",
            case.name
        );
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn each_envelope_upstream_unwraps_to_the_payload_bytes() {
    let payload = fixture("bare/chat_completion.json");
    for case in cases() {
        let h = proxy(Shape::Envelope, &case.upstream).await;
        let body = format!("{}{}{}", case.prefix, text(&payload), case.suffix);
        let reply = h
            .chat("/v1/chat/completions", false)
            .header("x-mock-body-pct", &pct(body.as_bytes()))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", case.name);
        // The payload's bytes exactly (the fixture's final line break is outside the value).
        assert_eq!(reply.body, payload.trim_ascii_end(), "{}", case.name);
    }
}

#[tokio::test]
async fn an_envelope_upstream_of_one_preset_serves_envelope_clients_of_another() {
    let payload = r#"{"id":"c1","n":1.50,"s":"\u00e9"}"#;
    let h = start(
        Shape::Envelope,
        &["--upstream-envelope=code-msg-data", "--envelope=jsend"],
    )
    .await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header(
            "x-mock-body",
            &format!(r#"{{"msg":"success","code":"0","data":{payload}}}"#),
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        text(&reply.body),
        format!(r#"{{"status":"success","data":{payload}}}"#)
    );
    // Lark's error under HTTP 200: a JSend error with status 502.
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header(
            "x-mock-body",
            r#"{"code":99991663,"msg":"token invalid","data":{}}"#,
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        text(&reply.body),
        r#"{"status":"error","message":"token invalid","code":502,"data":{"message":"token invalid","type":"upstream_error","param":null,"code":"99991663"}}"#
    );
    // A 4xx error envelope: JSend's fail, with the upstream's status.
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-body", r#"{"code":401,"msg":"bad key","data":null}"#)
        .header("x-mock-status", "401")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        text(&reply.body),
        r#"{"status":"fail","data":{"message":"bad key","type":"upstream_error","param":null,"code":"401"}}"#
    );
    // And the other way round: a JSend upstream, code-msg-data clients.
    let h = start(
        Shape::Envelope,
        &["--upstream-envelope=jsend", "--envelope=code-msg-data"],
    )
    .await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header(
            "x-mock-body",
            &format!(r#"{{"status":"success","data":{payload}}}"#),
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        text(&reply.body),
        format!(r#"{{"code":0,"msg":"success","data":{payload}}}"#)
    );
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header(
            "x-mock-body",
            r#"{"status":"fail","data":{"title":"required"}}"#,
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text(&reply.body),
        r#"{"code":400,"msg":"upstream returned HTTP 400 Bad Request","data":null,"error":{"message":"upstream returned HTTP 400 Bad Request","type":"invalid_request_error","param":null,"code":null}}"#
    );
}

#[tokio::test]
async fn the_same_envelope_on_both_sides_passes_byte_for_byte() {
    let body = r#"{"status":"success", "data":{"a":1}}"#;
    let h = start(Shape::Envelope, &["--envelope=jsend"]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-body", body)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(text(&reply.body), body);
}

#[tokio::test]
async fn usage_passing_through_is_read_inside_the_envelopes_payload_member() {
    let h = proxy(Shape::Envelope, &cases()[3].client).await;
    let payload = harness::fixture("bare/chat_completion.json");
    // A decoy under `data`, which is no member of this envelope.
    let body = [
        br#"{"ok":true,"retCode":"0000","data":{"model":"decoy","usage":{"prompt_tokens":5}},"result":"#,
        &payload[..],
        b"}",
    ]
    .concat();
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-body-pct", &pct(&body))
        .header("x-mock-behaviour", "split:7")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, body);
    let expected = [
        r#"envelope_proxy_tokens_total{model="gpt-4o-mini-2024-07-18",kind="cached_prompt"} 0"#,
        r#"envelope_proxy_tokens_total{model="gpt-4o-mini-2024-07-18",kind="completion"} 86"#,
        r#"envelope_proxy_tokens_total{model="gpt-4o-mini-2024-07-18",kind="prompt"} 27"#,
        r#"envelope_proxy_tokens_total{model="gpt-4o-mini-2024-07-18",kind="reasoning"} 0"#,
    ];
    // The scan's report is counted once the body is done, which may follow the reply's end.
    assert_eq!(harness::token_series(&h, &expected).await, expected);
}

// === Errors ===

#[tokio::test]
async fn upstream_errors_reach_envelope_clients_in_their_error_templates() {
    for case in cases() {
        let h = proxy(Shape::Bare, &case.client).await;
        let reply = h
            .chat("/api/v1/chat/completions", false)
            .fixture("errors/openai_429_rate_limit.json", 429)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", case.name);
        let inner = rate_inner();
        let expected = match case.name {
            "standard" => format!(
                r#"{{"success":false,"code":"429","message":"{RATE}","data":null,"error":{inner}}}"#
            ),
            "code-msg-data" => {
                format!(r#"{{"code":429,"msg":"{RATE}","data":null,"error":{inner}}}"#)
            }
            "jsend" => format!(r#"{{"status":"fail","data":{inner}}}"#),
            _ => format!(r#"{{"ok":false,"retCode":"429","retMsg":"{RATE}","err":{inner}}}"#),
        };
        assert_eq!(text(&reply.body), expected, "{}", case.name);

        let reply = h
            .chat("/api/v1/chat/completions", false)
            .fixture("errors/openai_500_server.json", 500)
            .send()
            .await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            case.name
        );
        let inner = server_inner();
        let expected = match case.name {
            "standard" => format!(
                r#"{{"success":false,"code":"500","message":"{SERVER}","data":null,"error":{inner}}}"#
            ),
            "code-msg-data" => {
                format!(r#"{{"code":500,"msg":"{SERVER}","data":null,"error":{inner}}}"#)
            }
            // JSend: `error` (not `fail`) for a server error.
            "jsend" => {
                format!(r#"{{"status":"error","message":"{SERVER}","code":500,"data":{inner}}}"#)
            }
            _ => format!(r#"{{"ok":false,"retCode":"500","retMsg":"{SERVER}","err":{inner}}}"#),
        };
        assert_eq!(text(&reply.body), expected, "{}", case.name);
    }
}

#[tokio::test]
async fn the_proxys_own_errors_use_the_client_templates() {
    let h = start(Shape::Bare, &["--envelope=jsend", "--max-request-body=8"]).await;
    // 413 from the request path (a client error: JSend's fail).
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        text(&reply.body),
        r#"{"status":"fail","data":{"message":"request body exceeds the limit of 8 bytes","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#
    );
    // 502 from the response path: a body that is not JSON.
    let reply = h
        .get("/api/v1/models")
        .header("x-mock-body", "not json")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        text(&reply.body),
        r#"{"status":"error","message":"upstream sent a body that is not valid JSON under HTTP 200","code":502,"data":{"message":"upstream sent a body that is not valid JSON under HTTP 200","type":"upstream_error","param":null,"code":"upstream_invalid_body"}}"#
    );
    // A refused request target, before routing (`/api/…`: the envelope client's).
    let reply = h.get("/api/v1//models").send().await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["status"], "fail");
    assert_eq!(reply.json()["data"]["code"], "invalid_request_target");
    // Bare clients keep OpenAI's shape.
    let reply = h.chat("/v1/chat/completions", false).send().await;
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"request body exceeds the limit of 8 bytes","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#
    );
}

#[tokio::test]
async fn envelope_errors_under_http_200_become_bare_errors_with_a_real_status() {
    // Lark: code-msg-data with a platform code under HTTP 200 is a 502 with that code.
    let h = start(Shape::Envelope, &["--upstream-envelope=code-msg-data"]).await;
    let lark = r#"{"code":99991663,"msg":"token invalid","data":{}}"#;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-body", lark)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"token invalid","type":"upstream_error","param":null,"code":"99991663"}}"#
    );
    // The same body under the upstream's 403 keeps the 403.
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-body", lark)
        .header("x-mock-status", "403")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"token invalid","type":"upstream_error","param":null,"code":"99991663"}}"#
    );
    // No discriminator: not an envelope of this shape.
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-body", r#"{"id":"c1","choices":[]}"#)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"upstream sent a body that is not a valid envelope under HTTP 200: it has no member `code`","type":"upstream_error","param":null,"code":"upstream_invalid_body"}}"#
    );

    // JSend: fail under 200 is a 400, error carries its own code.
    let h = start(Shape::Envelope, &["--upstream-envelope=jsend"]).await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header(
            "x-mock-body",
            r#"{"status":"fail","data":{"message":"model is required"}}"#,
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"model is required","type":"invalid_request_error","param":null,"code":null}}"#
    );
    let reply = h
        .chat("/v1/chat/completions", false)
        .header(
            "x-mock-body",
            r#"{"status":"error","message":"overloaded","code":"503"}"#,
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"overloaded","type":"upstream_error","param":null,"code":"503"}}"#
    );

    // The custom template, under an HTTP error status.
    let h = proxy(Shape::Envelope, &cases()[3].upstream).await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header(
            "x-mock-body",
            r#"{"ok":false,"retCode":"E42","retMsg":"quota exceeded"}"#,
        )
        .header("x-mock-status", "429")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        text(&reply.body),
        r#"{"error":{"message":"quota exceeded","type":"upstream_error","param":null,"code":"E42"}}"#
    );
}

// === The environment twins ===

#[tokio::test]
async fn the_envelope_flags_read_their_environment_variables() {
    let mock = mock_upstream::start(Shape::Envelope).await;
    let dir = TempDir::new("templates-env");
    let notify = Notify::bind(&dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    let upstream = mock.base_url();
    let _proxy = ProxyProcess::spawn(
        &dir,
        BIN,
        &["--listen", "127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", &socket),
            ("ENVELOPE_PROXY_UPSTREAM", &upstream),
            ("ENVELOPE_PROXY_UPSTREAM_SHAPE", "envelope"),
            ("ENVELOPE_PROXY_ENVELOPE", "jsend"),
            ("ENVELOPE_PROXY_UPSTREAM_ENVELOPE", "code-msg-data"),
            (
                "ENVELOPE_PROXY_ENVELOPE_SUCCESS",
                r#"{"ok":true,"result":$data}"#,
            ),
        ],
    );
    let ready = notify.until("READY=1").await;
    let addr = served_tcp_addr(field(&ready, "STATUS").expect("STATUS"));
    let client = harness::client();
    let request = http::Request::get(format!("http://{addr}/api/v1/models"))
        .header("x-mock-body", r#"{"code":"0","msg":"success","data":[1]}"#)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(harness::WAIT, client.request(request))
        .await
        .expect("an answer within the wait bound")
        .expect("the proxy answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("a whole body")
        .to_bytes();
    // The custom success template, from code-msg-data.
    assert_eq!(text(&body), r#"{"ok":true,"result":[1]}"#);
    let request = http::Request::get(format!("http://{addr}/api/v1/models"))
        .header("x-mock-body", r#"{"code":403,"msg":"denied","data":null}"#)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(harness::WAIT, client.request(request))
        .await
        .expect("an answer within the wait bound")
        .expect("the proxy answers");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("a whole body")
        .to_bytes();
    // JSend's fail (the preset's client-error template).
    assert_eq!(
        text(&body),
        r#"{"status":"fail","data":{"message":"denied","type":"upstream_error","param":null,"code":"403"}}"#
    );
    // An invalid preset in a variable is refused like the flag.
    let (code, stderr) = refused(&[], &[("ENVELOPE_PROXY_ENVELOPE", "nope")]).await;
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "envelope-proxy: invalid value 'nope' for '--envelope <ENVELOPE>' [possible values: standard, code-msg-data, jsend]\n"
    );
}

// === Bad templates at startup ===

/// Runs the binary with `args`; it must refuse to start: its exit code and stderr.
async fn refused(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new("templates-refused");
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut proxy = ProxyProcess::spawn(&dir, BIN, &all, envs);
    let status = proxy.wait().await;
    (status.code().expect("an exit code"), proxy.stderr())
}

#[tokio::test]
async fn bad_templates_stop_startup_with_one_clear_line() {
    let placeholder_in_string = "the string \"failed: $message\" holds a placeholder; placeholders are whole values without quotes (only \"$status\" is written as a string, as a member's whole value)";
    for (flag, template, why) in [
        (
            "--envelope-success",
            r#"{"ok":true,"data":$data"#,
            "not valid JSON: EOF while parsing an object at line 1 column 23",
        ),
        (
            "--envelope-success",
            r#"[$data]"#,
            "not a JSON object; a template is an object such as {\"data\":$data}",
        ),
        (
            "--upstream-envelope-success",
            r#"{"ok":true}"#,
            "a success template needs `$data` (where the payload goes)",
        ),
        (
            "--envelope-success",
            r#"{"a":$data,"b":$data}"#,
            "`$data` appears more than once; a success template holds it exactly once",
        ),
        (
            "--envelope-error",
            r#"{"ok":false,"msg":"failed: $message"}"#,
            placeholder_in_string,
        ),
        (
            "--envelope-client-error",
            r#"{"ok":false,"why":$foo}"#,
            "unknown placeholder `$foo`; the placeholders are $data, $status, \"$status\", $message and $error",
        ),
    ] {
        let (code, stderr) = refused(&[&format!("{flag}={template}")], &[]).await;
        assert_eq!(code, 2, "{flag} {template}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "envelope-proxy: invalid value '{template}' for '{flag} <TEMPLATE>': {why}\n"
            ),
            "{flag} {template}"
        );
    }
    // The environment twin is checked the same way.
    let (code, stderr) = refused(
        &[],
        &[("ENVELOPE_PROXY_UPSTREAM_ENVELOPE_ERROR", r#"{"x":"$data"}"#)],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr,
        "envelope-proxy: invalid value '{\"x\":\"$data\"}' for '--upstream-envelope-error <TEMPLATE>': the string \"$data\" holds a placeholder; placeholders are whole values without quotes (only \"$status\" is written as a string, as a member's whole value)\n"
    );
    // An envelope upstream whose templates cannot be told apart.
    let (code, stderr) = refused(
        &[
            "--upstream-shape=envelope",
            r#"--upstream-envelope-success={"data":$data}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with("envelope-proxy: the upstream envelope cannot be read: the success template has no member with a constant value (a discriminator) to tell success from error\n"),
        "{stderr}"
    );
}

// === Streams ===

/// The events of an SSE text (`data: …` lines only, one per event).
fn events(sse: &[u8]) -> Vec<String> {
    text(sse)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").expect("a data event").to_string())
        .collect()
}

fn sse(events: &[String]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

/// A stream served by the mock upstream: `body` as `text/event-stream`.
async fn stream_reply(h: &Harness, path: &str, body: &str) -> harness::Reply {
    h.chat(path, true)
        .header("x-mock-body-pct", &pct(body.as_bytes()))
        .header("x-mock-content-type", "text/event-stream")
        .send()
        .await
}

const TRUNCATED: &str =
    "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete";

#[tokio::test]
async fn a_bare_stream_is_wrapped_in_each_envelope_event_by_event() {
    let upstream = fixture("bare/chat_completion_stream.sse");
    let chunks = events(&upstream);
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    for case in cases() {
        let mut flags = case.client.clone();
        flags.push("--stream-envelope=wrap".into());
        let h = proxy(Shape::Bare, &flags).await;
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .fixture("bare/chat_completion_stream.sse", 200)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", case.name);
        let expected: Vec<String> = chunks
            .iter()
            .map(|c| match c.as_str() {
                "[DONE]" => c.clone(),
                _ => format!("{}{c}{}", case.prefix, case.suffix),
            })
            .collect();
        assert_eq!(text(&reply.body), sse(&expected), "{}", case.name);
    }
}

#[tokio::test]
async fn stream_errors_are_events_in_the_client_error_templates() {
    let mid = "The server had an error while processing your request. Sorry about that!";
    let inner = format!(r#"{{"message":"{mid}","type":"server_error","param":null,"code":null}}"#);
    let cut = format!(
        r#"{{"message":"{TRUNCATED}","type":"upstream_error","param":null,"code":"stream_truncated"}}"#
    );
    for case in cases() {
        let mut flags = case.client.clone();
        flags.push("--stream-envelope=wrap".into());
        let h = proxy(Shape::Bare, &flags).await;
        // The upstream's own error event (a 500).
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .fixture("bare/chat_completion_stream_mid_error.sse", 200)
            .send()
            .await;
        let last = events(&reply.body).pop().expect("events");
        let expected = match case.name {
            "standard" => format!(
                r#"{{"success":false,"code":"500","message":"{mid}","data":null,"error":{inner}}}"#
            ),
            "code-msg-data" => {
                format!(r#"{{"code":500,"msg":"{mid}","data":null,"error":{inner}}}"#)
            }
            "jsend" => {
                format!(r#"{{"status":"error","message":"{mid}","code":500,"data":{inner}}}"#)
            }
            _ => format!(r#"{{"ok":false,"retCode":"500","retMsg":"{mid}","err":{inner}}}"#),
        };
        assert_eq!(last, expected, "{}", case.name);
        // The proxy's own error event: a stream without `[DONE]` (a 502).
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .fixture("bare/chat_completion_stream_no_done.sse", 200)
            .send()
            .await;
        let last = events(&reply.body).pop().expect("events");
        let expected = match case.name {
            "standard" => format!(
                r#"{{"success":false,"code":"502","message":"{TRUNCATED}","data":null,"error":{cut}}}"#
            ),
            "code-msg-data" => {
                format!(r#"{{"code":502,"msg":"{TRUNCATED}","data":null,"error":{cut}}}"#)
            }
            "jsend" => {
                format!(r#"{{"status":"error","message":"{TRUNCATED}","code":502,"data":{cut}}}"#)
            }
            _ => format!(r#"{{"ok":false,"retCode":"502","retMsg":"{TRUNCATED}","err":{cut}}}"#),
        };
        assert_eq!(last, expected, "{}", case.name);
    }
}

#[tokio::test]
async fn each_envelope_upstreams_stream_is_unwrapped_for_bare_clients() {
    let chunks = [
        r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
        r#"{"id":"c1", "choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    ];
    for case in cases() {
        let h = proxy(Shape::Envelope, &case.upstream).await;
        let mut upstream: Vec<String> = chunks
            .iter()
            .map(|c| format!("{}{c}{}", case.prefix, case.suffix))
            .collect();
        upstream.push("[DONE]".into());
        let reply = stream_reply(&h, "/v1/chat/completions", &sse(&upstream)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", case.name);
        let mut expected: Vec<String> = chunks.iter().map(|c| c.to_string()).collect();
        expected.push("[DONE]".into());
        assert_eq!(text(&reply.body), sse(&expected), "{}", case.name);
    }
}

#[tokio::test]
async fn envelope_error_events_become_bare_error_events() {
    let chunk = r#"{"id":"c1","choices":[]}"#;
    let h = start(Shape::Envelope, &["--upstream-envelope=code-msg-data"]).await;
    let upstream = sse(&[
        format!(r#"{{"code":0,"msg":"success","data":{chunk}}}"#),
        r#"{"code":99991663,"msg":"token invalid","data":{}}"#.to_string(),
    ]);
    let reply = stream_reply(&h, "/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        sse(&[
            chunk.to_string(),
            r#"{"error":{"message":"token invalid","type":"upstream_error","param":null,"code":"99991663"}}"#.to_string(),
        ])
    );
    let h = start(Shape::Envelope, &["--upstream-envelope=jsend"]).await;
    let upstream = sse(&[r#"{"status":"fail","data":{"message":"bad model"}}"#.to_string()]);
    let reply = stream_reply(&h, "/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        sse(&[
            r#"{"error":{"message":"bad model","type":"invalid_request_error","param":null,"code":null}}"#.to_string()
        ])
    );
    // An event whose discriminator has another value is invalid; one without the
    // discriminator goes on as it came (as bare events of the standard envelope do).
    let upstream = sse(&[
        chunk.to_string(),
        r#"{"status":"maybe","data":{}}"#.to_string(),
    ]);
    let reply = stream_reply(&h, "/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        sse(&[
            chunk.to_string(),
            r#"{"error":{"message":"upstream sent a body that is not a valid envelope under HTTP 200: `status` is \"maybe\", neither success nor error","type":"upstream_error","param":null,"code":"upstream_invalid_body"}}"#.to_string(),
        ])
    );
}

#[tokio::test]
async fn a_stream_from_an_envelope_upstream_of_another_preset_is_rewrapped() {
    let chunk = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
    let h = start(
        Shape::Envelope,
        &["--upstream-envelope=code-msg-data", "--envelope=jsend"],
    )
    .await;
    let upstream = format!(
        "event: chunk\ndata: {{\"code\":0,\"msg\":\"success\",\"data\":{chunk}}}\nid: 1\n\ndata: [DONE]\n\n"
    );
    let reply = stream_reply(&h, "/api/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        format!("event: chunk\ndata: {{\"status\":\"success\",\"data\":{chunk}}}\nid: 1\n\ndata: [DONE]\n\n")
    );
    let upstream = sse(&[
        format!(r#"{{"code":"0","data":{chunk}}}"#),
        r#"{"code":99991663,"msg":"token invalid","data":{}}"#.to_string(),
    ]);
    let reply = stream_reply(&h, "/api/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        sse(&[
            format!(r#"{{"status":"success","data":{chunk}}}"#),
            r#"{"status":"error","message":"token invalid","code":502,"data":{"message":"token invalid","type":"upstream_error","param":null,"code":"99991663"}}"#.to_string(),
        ])
    );
    // The same envelope on both sides: the stream passes as it came.
    let h = start(Shape::Envelope, &["--envelope=jsend"]).await;
    let upstream = sse(&[
        format!(r#"{{"status":"success", "data":{chunk}}}"#),
        "[DONE]".into(),
    ]);
    let reply = stream_reply(&h, "/api/v1/chat/completions", &upstream).await;
    assert_eq!(text(&reply.body), upstream);
    // Its error events are read by that envelope: the stream failed visibly, so no
    // truncation event follows although `[DONE]` never came.
    let upstream = sse(&[
        format!(r#"{{"status":"success","data":{chunk}}}"#),
        r#"{"status":"error","message":"model crashed","code":500}"#.to_string(),
    ]);
    let reply = stream_reply(&h, "/api/v1/chat/completions", &upstream).await;
    assert_eq!(text(&reply.body), upstream);
    // Without the error event, the missing `[DONE]` ends it with one (in JSend).
    let upstream = sse(&[format!(r#"{{"status":"success","data":{chunk}}}"#)]);
    let reply = stream_reply(&h, "/api/v1/chat/completions", &upstream).await;
    assert_eq!(
        text(&reply.body),
        format!(
            "{upstream}{}",
            sse(&[format!(
                r#"{{"status":"error","message":"{TRUNCATED}","code":502,"data":{{"message":"{TRUNCATED}","type":"upstream_error","param":null,"code":"stream_truncated"}}}}"#
            )])
        )
    );
}
