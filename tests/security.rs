//! Access control and the open-proxy guard, end to end.

use test_support::{harness, mock_upstream, raw};

use harness::{fixture, fixture_json, start};
use http::StatusCode;
use mock_upstream::Shape;
use serde_json::{json, Value};

/// A file in the temp dir, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("envelope-proxy-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const UNAUTHORIZED: &str =
    "Missing or invalid API key: send `Authorization: Bearer <key>` with a key this proxy accepts.";

#[tokio::test]
async fn inbound_keys_are_required_on_proxied_paths_in_each_dialect() {
    let keys = TempFile::new(
        "inbound-keys",
        "# ops team\nsk-proxy-alpha\n\nsk-proxy-beta\n",
    );
    let h = start(Shape::Bare, &["--api-keys-file", keys.path()]).await;
    for key in [
        None,
        Some("Bearer sk-wrong"),
        Some("Bearer sk-proxy-alph"),
        Some("Basic sk-proxy-alpha"),
    ] {
        let mut call = h.chat("/v1/chat/completions", false);
        if let Some(key) = key {
            call = call.header("authorization", key);
        }
        let reply = call.send().await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            reply.json(),
            json!({"error":{"message":UNAUTHORIZED,"type":"authentication_error","param":null,"code":"invalid_api_key"}})
        );
    }
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["success"], false);
    assert_eq!(reply.json()["code"], "401");
    assert!(
        h.mock.state.requests().is_empty(),
        "nothing reached the upstream"
    );

    for key in ["Bearer sk-proxy-alpha", "bearer sk-proxy-beta"] {
        let reply = h
            .chat("/v1/chat/completions", false)
            .header("authorization", key)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{key}");
        assert_eq!(reply.body, fixture("bare/chat_completion.json"));
    }
    // Health stays open; metrics on the public listener need a key.
    assert_eq!(h.get("/healthz").send().await.status, StatusCode::OK);
    let reply = h.get("/metrics").send().await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    let reply = h
        .get("/metrics")
        .header("authorization", "Bearer sk-proxy-beta")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.text().contains("envelope_proxy_requests_total"));
}

#[tokio::test]
async fn key_files_reload_and_a_bad_reload_keeps_the_old_keys() {
    let keys = TempFile::new("reload-keys", "sk-first\n");
    let h = start(Shape::Bare, &["--api-keys-file", keys.path()]).await;
    let status = |key: &'static str| {
        let call = h.get("/v1/models").header("authorization", key);
        async move { call.send().await.status }
    };
    assert_eq!(status("Bearer sk-first").await, StatusCode::OK);

    std::fs::write(&keys.0, "sk-second\n").unwrap();
    assert!(h.proxy.proxy.reload_keys().is_empty());
    assert_eq!(status("Bearer sk-second").await, StatusCode::OK);
    assert_eq!(status("Bearer sk-first").await, StatusCode::UNAUTHORIZED);

    std::fs::remove_file(&keys.0).unwrap();
    let errors = h.proxy.proxy.reload_keys();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .to_string()
        .starts_with(&format!("cannot read {}", keys.path())));
    assert_eq!(status("Bearer sk-second").await, StatusCode::OK);
}

#[tokio::test]
async fn the_upstream_key_replaces_the_clients_and_is_never_echoed() {
    let upstream_key = TempFile::new("upstream-key", "sk-upstream-SECRET\n");
    let h = start(
        Shape::Bare,
        &["--upstream-api-key-file", upstream_key.path()],
    )
    .await;
    let reply = h
        .get("/v1/models")
        .header("authorization", "Bearer sk-client-key")
        .header("x-mock-behaviour", "echo")
        .send()
        .await;
    assert_eq!(
        reply.json()["headers"]["authorization"],
        "Bearer sk-upstream-SECRET"
    );
    let seen = h.mock.state.last_request().unwrap();
    assert!(!format!("{:?}", seen.headers).contains("sk-client-key"));

    // The upstream refuses the key: the client gets the upstream's 401 in its own dialect, the
    // upstream's words and nothing added; the upstream saw the upstream key alone.
    h.mock.state.clear();
    let reply = h
        .chat("/api/v1/chat/completions", false)
        .header("authorization", "Bearer sk-client-key")
        .fixture("errors/openai_401_invalid_api_key.json", 401)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let upstream_error = fixture_json("errors/openai_401_invalid_api_key.json")["error"].clone();
    assert_eq!(
        reply.json(),
        json!({"success":false,"code":"401","message":upstream_error["message"],"data":null,"error":upstream_error})
    );
    let seen = h.mock.state.requests();
    assert_eq!(seen.len(), 1, "one request reached the upstream");
    let keys: Vec<&str> = seen[0]
        .headers
        .get_all("authorization")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(keys, ["Bearer sk-upstream-SECRET"]);
    for (name, value) in &reply.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains("SECRET") && !value.contains("sk-client-key"),
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn the_proxy_refuses_to_be_an_open_proxy() {
    let h = start(Shape::Bare, &[]).await;
    let cases = [
        (
            "GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\n",
            "absolute-form request targets are not proxied",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n",
            "CONNECT is not supported: envelope-proxy is not a forward proxy",
        ),
        (
            "GET /v1/../admin HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain `.` or `..` segments",
        ),
        (
            "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain `.` or `..` segments",
        ),
        (
            "GET /v1/.%2E/admin HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain `.` or `..` segments",
        ),
        (
            "GET /v1//models HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain empty segments",
        ),
        (
            "GET /v1/models\\..\\x HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain backslashes",
        ),
        (
            "GET /v1/..%2Fadmin HTTP/1.1\r\nHost: p\r\n",
            "the path must not contain encoded `/` or `\\`",
        ),
    ];
    for (head, reason) in cases {
        let response =
            raw::exchange(h.proxy.addr, &format!("{head}Connection: close\r\n\r\n")).await;
        assert_eq!(response.status, 400, "{head:?}: {}", response.text);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(
            body,
            json!({"error":{"message":format!("request refused: {reason}"),"type":"invalid_request_error","param":null,"code":"invalid_request_target"}}),
            "{head:?}"
        );
    }
    // The envelope prefix gets the envelope form.
    let response = raw::exchange(
        h.proxy.addr,
        "GET /api/v1/%2e%2e/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&response.body).unwrap()["code"],
        "400"
    );
    assert!(
        h.mock.state.requests().is_empty(),
        "nothing reached the upstream"
    );
}
