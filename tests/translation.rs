//! Non-streaming translation, end to end: a real proxy in front of a real mock upstream.
//!
//! Each test names the direction it covers: `bare→envelope` means a bare upstream answering an
//! envelope client (`/api/v1/…`), and so on.

use test_support::{harness, mock_upstream};

use harness::{fixture, fixture_json, pct, start, wrapped};
use http::{Method, StatusCode};
use mock_upstream::Shape;
use serde_json::{json, Value};

// === Success bodies ===

#[tokio::test]
async fn bare_to_envelope_wraps_the_payload_bytes_unchanged() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        &reply.body[..],
        &wrapped(&fixture("bare/chat_completion.json"))[..]
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn envelope_to_bare_slices_out_the_data_member() {
    let h = start(Shape::Envelope, &[]).await;
    let reply = h.chat("/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    let upstream = fixture("envelope/chat_completion.json");
    assert_eq!(
        reply.json(),
        fixture_json("envelope/chat_completion.json")["data"]
    );
    assert_eq!(reply.json(), fixture_json("bare/chat_completion.json"));
    // Not re-serialised: the bytes are exactly the data member as the upstream wrote it.
    let text = String::from_utf8(upstream.to_vec()).unwrap();
    let data_start = text.find(r#""data":"#).unwrap() + r#""data":"#.len();
    assert_eq!(&reply.body[..], &upstream[data_start..upstream.len() - 1]);
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn same_dialect_passes_through_byte_for_byte() {
    for (shape, path, file) in [
        (
            Shape::Bare,
            "/v1/chat/completions",
            "bare/chat_completion.json",
        ),
        (
            Shape::Envelope,
            "/api/v1/chat/completions",
            "envelope/chat_completion.json",
        ),
    ] {
        let h = start(shape, &[]).await;
        let reply = h
            .chat(path, false)
            .header("x-mock-header", "x-request-id: req_abc123")
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{file}");
        assert_eq!(reply.body, fixture(file), "{file}");
        assert_eq!(reply.header("x-request-id"), Some("req_abc123"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn other_json_endpoints_translate_both_ways() {
    let bare = start(Shape::Bare, &[]).await;
    let reply = bare.get("/api/v1/models").send().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], &wrapped(&fixture("bare/models.json"))[..]);

    let envelope = start(Shape::Envelope, &[]).await;
    let reply = envelope.get("/v1/models").send().await;
    assert_eq!(reply.json(), fixture_json("bare/models.json"));
    let reply = envelope
        .call(Method::POST, "/v1/embeddings")
        .json(r#"{"model":"text-embedding-3-small","input":"hi"}"#)
        .send()
        .await;
    assert_eq!(reply.json(), fixture_json("bare/embeddings.json"));
}

#[tokio::test]
async fn non_json_success_bodies_pass_through_untouched() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .call(Method::POST, "/api/v1/audio/speech")
        .fixture("errors/cloudflare_502.html", 200)
        .header("x-mock-content-type", "audio/mpeg")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("audio/mpeg"));
    assert_eq!(reply.body, fixture("errors/cloudflare_502.html"));
}

#[tokio::test]
async fn an_already_bare_body_from_an_envelope_upstream_passes_as_it_is() {
    let h = start(Shape::Envelope, &[]).await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .fixture("bare/chat_completion.json", 200)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, fixture("bare/chat_completion.json"));
}

// === Errors, every upstream shape, into each client dialect ===

/// The bare error object for the given fields.
fn bare_error(message: &str, kind: &str, param: Value, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// The envelope error the proxy writes for `status` around the same fields.
fn envelope_error(status: u16, message: &str, kind: &str, param: Value, code: Value) -> Value {
    json!({"success": false, "code": status.to_string(), "message": message, "data": null,
           "error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// (fixture, upstream status, expected message, type, param, code)
fn bare_upstream_error_cases() -> Vec<(&'static str, u16, String, &'static str, Value, Value)> {
    let message_of = |file: &str| {
        fixture_json(file)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    vec![
        ("errors/openai_400_invalid_request.json", 400, message_of("errors/openai_400_invalid_request.json"), "invalid_request_error", json!("temperature"), json!("decimal_above_max_value")),
        ("errors/openai_401_invalid_api_key.json", 401, message_of("errors/openai_401_invalid_api_key.json"), "invalid_request_error", Value::Null, json!("invalid_api_key")),
        ("errors/openai_403_region.json", 403, "Country, region, or territory not supported".into(), "request_forbidden", Value::Null, json!("unsupported_country_region_territory")),
        ("errors/openai_404_model.json", 404, message_of("errors/openai_404_model.json"), "invalid_request_error", Value::Null, json!("model_not_found")),
        ("errors/openai_429_rate_limit.json", 429, message_of("errors/openai_429_rate_limit.json"), "requests", Value::Null, json!("rate_limit_exceeded")),
        ("errors/openai_500_server.json", 500, message_of("errors/openai_500_server.json"), "server_error", Value::Null, Value::Null),
        ("errors/openai_503_overloaded.json", 503, message_of("errors/openai_503_overloaded.json"), "server_error", Value::Null, Value::Null),
        ("errors/vllm_400.json", 400, fixture_json("errors/vllm_400.json")["message"].as_str().unwrap().into(), "BadRequestError", Value::Null, json!(400)),
        ("errors/llamacpp_500.json", 500, "Input prompt is too big compared to KV size. Please try increasing KV size.".into(), "server_error", Value::Null, json!(500)),
        ("errors/fastapi_detail_string.json", 401, "Not authenticated".into(), "authentication_error", Value::Null, Value::Null),
        ("errors/fastapi_detail_list.json", 422, "body.messages: Field required".into(), "invalid_request_error", Value::Null, Value::Null),
        ("errors/tgi_error.json", 422, fixture_json("errors/tgi_error.json")["error"].as_str().unwrap().into(), "validation", Value::Null, Value::Null),
        ("errors/cloudflare_502.html", 502, "upstream returned HTTP 502 Bad Gateway with a text/html body: api.example-llm.com | 502: Bad gateway".into(), "server_error", Value::Null, Value::Null),
        ("errors/nginx_502.html", 502, "upstream returned HTTP 502 Bad Gateway with a text/html body: 502 Bad Gateway".into(), "server_error", Value::Null, Value::Null),
        ("errors/plain_503.txt", 503, "upstream returned HTTP 503 Service Unavailable with a text/plain body: upstream connect error or disconnect/reset before headers. reset reason: connection failure".into(), "server_error", Value::Null, Value::Null),
        ("errors/empty.txt", 503, "upstream returned HTTP 503 Service Unavailable with an empty body".into(), "server_error", Value::Null, Value::Null),
    ]
}

#[tokio::test]
async fn every_error_shape_reaches_an_envelope_client_as_an_envelope_error() {
    let h = start(Shape::Bare, &[]).await;
    for (file, status, message, kind, param, code) in bare_upstream_error_cases() {
        let reply = h
            .chat("/api/v1/chat/completions", false)
            .fixture(file, status)
            .header("x-mock-header", "retry-after: 7")
            .send()
            .await;
        assert_eq!(reply.status.as_u16(), status, "{file}");
        assert_eq!(
            reply.json(),
            envelope_error(status, &message, kind, param, code),
            "{file}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{file}"
        );
        assert_eq!(reply.header("retry-after"), Some("7"), "{file}");
        // The upstream's length was of the original body; this one is of the rewritten body.
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str()),
            "{file}"
        );
    }
}

#[tokio::test]
async fn every_error_shape_reaches_a_bare_client_from_an_envelope_upstream_as_a_bare_error() {
    let h = start(Shape::Envelope, &[]).await;
    for (file, status, message, kind, param, code) in bare_upstream_error_cases() {
        let reply = h
            .chat("/v1/chat/completions", false)
            .fixture(file, status)
            .send()
            .await;
        assert_eq!(reply.status.as_u16(), status, "{file}");
        assert_eq!(
            reply.json(),
            bare_error(&message, kind, param, code),
            "{file}"
        );
    }
}

#[tokio::test]
async fn same_dialect_json_errors_pass_through_and_non_json_errors_are_normalised() {
    let h = start(Shape::Bare, &[]).await;
    for file in [
        "errors/openai_429_rate_limit.json",
        "errors/vllm_400.json",
        "errors/tgi_error.json",
    ] {
        let reply = h
            .chat("/v1/chat/completions", false)
            .fixture(file, 429)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{file}");
        assert_eq!(reply.body, fixture(file), "{file}");
    }
    let reply = h
        .chat("/v1/chat/completions", false)
        .fixture("errors/nginx_502.html", 502)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        bare_error(
            "upstream returned HTTP 502 Bad Gateway with a text/html body: 502 Bad Gateway",
            "server_error",
            Value::Null,
            Value::Null
        )
    );

    let e = start(Shape::Envelope, &[]).await;
    let reply = e
        .chat("/api/v1/chat/completions", false)
        .fixture("errors/empty.txt", 504)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        envelope_error(
            504,
            "upstream returned HTTP 504 Gateway Timeout with an empty body",
            "server_error",
            Value::Null,
            Value::Null
        )
    );
    let reply = e
        .chat("/api/v1/chat/completions", false)
        .fixture("errors/envelope_401.json", 401)
        .send()
        .await;
    assert_eq!(reply.body, fixture("errors/envelope_401.json"));
}

#[tokio::test]
async fn envelope_errors_reach_bare_clients_with_the_envelope_code_as_status() {
    let h = start(Shape::Envelope, &[]).await;
    let cases = [
        // (fixture, HTTP status the upstream used, expected status, message, type, code)
        (
            "errors/envelope_401.json",
            200,
            401,
            "Invalid API key",
            "authentication_error",
            json!("401"),
        ),
        (
            "errors/envelope_401.json",
            401,
            401,
            "Invalid API key",
            "authentication_error",
            json!("401"),
        ),
        (
            "errors/envelope_429_int_code.json",
            200,
            429,
            "Too many requests, please retry later",
            "rate_limit_error",
            json!("429"),
        ),
        (
            "errors/envelope_code_only.json",
            200,
            500,
            "internal error",
            "server_error",
            json!("500"),
        ),
    ];
    for (file, http_status, status, message, kind, code) in cases {
        let reply = h
            .chat("/v1/chat/completions", false)
            .fixture(file, http_status)
            .header("x-mock-header", "retry-after-ms: 250")
            .header("x-mock-header", "x-should-retry: true")
            .send()
            .await;
        assert_eq!(reply.status.as_u16(), status, "{file} under {http_status}");
        assert_eq!(
            reply.json(),
            bare_error(message, kind, Value::Null, code),
            "{file}"
        );
        assert_eq!(reply.header("retry-after-ms"), Some("250"));
        assert_eq!(reply.header("x-should-retry"), Some("true"));
    }
}

#[tokio::test]
async fn malformed_envelopes_are_a_502_in_the_bare_dialect() {
    let h = start(Shape::Envelope, &[]).await;
    for (body, why) in [
        (
            r#"{"success":"yes","code":"200","message":"ok","data":{}}"#,
            "`success` is not a boolean",
        ),
        (
            r#"{"success":true,"code":{},"message":"ok","data":{}}"#,
            "`code` is neither a string nor an integer",
        ),
        (
            r#"{"success":true,"code":"200","message":"ok"}"#,
            "it reported success but carried no `data`",
        ),
    ] {
        let reply = h
            .chat("/v1/chat/completions", false)
            .header("x-mock-body", body)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(
            reply.json(),
            bare_error(
                &format!("upstream sent a malformed envelope: {why}"),
                "upstream_error",
                Value::Null,
                json!("invalid_envelope")
            )
        );
    }
}

#[tokio::test]
async fn invalid_or_cut_short_json_under_200_is_a_502_never_a_partial_success() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-body", r#"{"id":"chatcmpl-1","choices":[{"#)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        envelope_error(
            502,
            "upstream sent a body that is not valid JSON under HTTP 200",
            "upstream_error",
            Value::Null,
            json!("upstream_invalid_body")
        )
    );

    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-behaviour", "truncate-content-length:100")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    assert_eq!(body["code"], "502");
    assert_eq!(body["error"]["code"], "upstream_truncated");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("upstream response was cut short: "));
}

#[tokio::test]
async fn a_bare_body_read_in_pieces_is_wrapped_exactly_or_refused() {
    let h = start(Shape::Bare, &[]).await;
    let text = "lorem ipsum dolor sit amet, \\\"quoted\\\" \\u00e9 ".repeat(120);
    let body = format!(
        r#"{{"id":"c","model":"piece-model","choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}}}"#
    );
    // Frames of 1,000 bytes 2 ms apart (cuts in the text), of 97 bytes 1 ms apart (cuts in
    // names, numbers and the usage too), of 7 bytes back to back (read as they arrive).
    for split in ["split:1000:2", "split:97:1", "split:7:0"] {
        let reply = h
            .chat("/api/v1/chat/completions", false)
            .header("x-mock-body", &body)
            .header("x-mock-behaviour", split)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{split}");
        assert_eq!(reply.body, wrapped(body.as_bytes()), "{split}");
        assert_eq!(
            reply.headers["content-length"],
            wrapped(body.as_bytes()).len().to_string()
        );
    }
    // The usage is read from the pieces as from the whole body: three times 5 and 7 tokens.
    let expected = [
        r#"envelope_proxy_tokens_total{model="piece-model",kind="completion"} 21"#,
        r#"envelope_proxy_tokens_total{model="piece-model",kind="prompt"} 15"#,
    ];
    assert_eq!(harness::token_series(&h, &expected).await, expected);
    // A control character in the text, in a piece of its own: not JSON, whatever the cuts.
    let broken = body.replacen("dolor", "dol\x01r", 3);
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-body-pct", &pct(broken.as_bytes()))
        .header("x-mock-behaviour", "split:1000:2")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["code"], "upstream_invalid_body");
}

// === Request forwarding ===

#[tokio::test]
async fn a_bare_route_forwards_the_clients_own_path_and_query() {
    // The proxy's `/v1/` is the upstream's `/v1/`: the client's path and query go as they are.
    let h = start(Shape::Bare, &[]).await;
    for (target, path, query) in [
        (
            "/v1/chat/completions?api-version=2024-10-21&x=a%20b",
            "/v1/chat/completions",
            json!("api-version=2024-10-21&x=a%20b"),
        ),
        ("/v1/chat/completions?", "/v1/chat/completions", json!("")),
        ("/v1/models", "/v1/models", Value::Null),
    ] {
        let reply = h
            .call(Method::POST, target)
            .json(r#"{"model":"m"}"#)
            .header("x-mock-behaviour", "echo")
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{target}");
        let echo = reply.json();
        assert_eq!(echo["path"], path, "{target}");
        assert_eq!(echo["query"], query, "{target}");
    }
}

#[tokio::test]
async fn requests_are_forwarded_with_path_query_and_end_to_end_headers() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .call(
            Method::POST,
            "/api/v1/chat/completions?api-version=2024-10-21&x=a%20b",
        )
        .json(r#"{"model":"m"}"#)
        .header("x-mock-behaviour", "echo")
        .header("authorization", "Bearer sk-client")
        .header("connection", "x-hop")
        .header("x-hop", "private")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.7")
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.json()["data"].clone();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/chat/completions");
    assert_eq!(echo["query"], "api-version=2024-10-21&x=a%20b");
    assert_eq!(echo["body"], r#"{"model":"m"}"#);
    let headers = &echo["headers"];
    assert_eq!(headers["authorization"], "Bearer sk-client");
    assert_eq!(headers["host"], h.mock.addr.to_string());
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    // Translating: the upstream is asked for an uncompressed body.
    assert_eq!(headers["accept-encoding"], "identity");
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert_eq!(headers.get(hop), None, "{hop} must not be forwarded");
    }
}

/// Issue 13 point 4: the proxy reads event streams and error bodies on every route, so the
/// upstream is asked for `identity` on same-dialect routes too.
#[tokio::test]
async fn same_dialect_asks_the_upstream_for_identity_too() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .get("/v1/models")
        .header("x-mock-behaviour", "echo")
        .header("accept-encoding", "gzip, br")
        .send()
        .await;
    assert_eq!(reply.json()["headers"]["accept-encoding"], "identity");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_dropped_and_retry_headers_kept() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-header", "keep-alive: timeout=99")
        .header("x-mock-header", "proxy-authenticate: Basic")
        .header("x-mock-header", "x-ratelimit-remaining-requests: 499")
        .header("x-mock-header", "x-request-id: req_42")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("keep-alive"), None);
    assert_eq!(reply.header("proxy-authenticate"), None);
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("499"));
    assert_eq!(reply.header("x-request-id"), Some("req_42"));
}

// === The proxy's own errors ===

#[tokio::test]
async fn unknown_paths_are_a_bare_404() {
    let h = start(Shape::Bare, &[]).await;
    for path in ["/", "/v2/models", "/v1", "/api/v1/"] {
        let reply = h.get(path).send().await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            reply.json(),
            bare_error(
                &format!("Unknown path: GET {path}. envelope-proxy serves /v1/… (bare dialect) and /api/v1/… (envelope dialect)."),
                "invalid_request_error",
                Value::Null,
                json!("unknown_route")
            )
        );
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn healthz_answers_once_serving() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h.get("/healthz").send().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok\n");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_in_each_dialect() {
    // A port held by a socket that never listens: connecting is refused, and no other test
    // can take the port meanwhile (a port that was merely free once could be another test's
    // listener by the time the proxy connects).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let proxy = harness::start_proxy(&format!("http://127.0.0.1:{port}/v1"), "bare", &[]).await;
    let client = harness::client();
    for (path, dialect) in [("/v1/models", "bare"), ("/api/v1/models", "envelope")] {
        let response = client
            .get(format!("http://{}{path}", proxy.addr).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        // Both dialects carry the error object under `error`.
        let inner = &body["error"];
        assert_eq!(inner["type"], "upstream_error");
        assert_eq!(inner["code"], "upstream_unreachable");
        assert!(
            inner["message"]
                .as_str()
                .unwrap()
                .starts_with("upstream unreachable: "),
            "{body}"
        );
        if dialect == "envelope" {
            assert_eq!(body["success"], false);
            assert_eq!(body["code"], "502");
        }
    }
}

#[tokio::test]
async fn slow_upstream_headers_are_a_504() {
    let h = start(Shape::Bare, &["--response-timeout", "0.2"]).await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-behaviour", "slow-headers:3000")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        bare_error(
            "upstream did not send response headers within 0.2s",
            "upstream_error",
            Value::Null,
            json!("upstream_timeout")
        )
    );
}

#[tokio::test]
async fn slow_upstream_headers_within_the_response_timeout_hit_the_request_deadline() {
    // Both limits bound the wait for the head; the sooner one names the error.
    let h = start(
        Shape::Bare,
        &["--response-timeout", "30", "--request-timeout", "0.2"],
    )
    .await;
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-behaviour", "slow-headers:3000")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        bare_error(
            "the request did not complete within 0.2s (--request-timeout)",
            "upstream_error",
            Value::Null,
            json!("request_timeout")
        )
    );
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_a_413_before_the_upstream_sees_them() {
    let h = start(Shape::Bare, &["--max-request-body", "64"]).await;
    let reply = h
        .call(Method::POST, "/api/v1/chat/completions")
        .json(vec![b'x'; 65])
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.json(),
        envelope_error(
            413,
            "request body exceeds the limit of 64 bytes",
            "invalid_request_error",
            Value::Null,
            json!("request_too_large")
        )
    );
    assert!(h.mock.state.requests().is_empty());
}

#[tokio::test]
async fn upstream_that_answers_nothing_is_a_502() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-behaviour", "no-response")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "upstream_error");
    // The proxy keeps serving afterwards.
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::OK);
}
