"""The envelope client (envelope_client.py) through the proxy's /api/v1.

Upstreams: `bare` (proxy `bare`, and proxy `wrap` = the same upstream with --stream-envelope wrap)
and `envelope` (proxy `envelope`, same dialect: passes through).
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

import ct
from envelope_client import EnvelopeClient, EnvelopeError, IncompleteStream

PROXY_OF = {"bare": "bare", "envelope": "envelope"}


def client(proxy: str) -> EnvelopeClient:
    return EnvelopeClient(ct.proxy(proxy), api_key="sk-test", timeout=ct.TIMEOUT)


def chat(c: EnvelopeClient, headers=None, **kw):
    return c.chat(model=ct.MODEL, messages=ct.MESSAGES, headers=headers, **kw)


def stream(c: EnvelopeClient, headers=None, **kw) -> list[dict]:
    """All chunks; on an exception, the chunks so far are on it as `.chunks_before`."""
    got = []
    try:
        for chunk in c.chat_stream(model=ct.MODEL, messages=ct.MESSAGES, headers=headers, **kw):
            got.append(chunk)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        e.chunks_before = got  # type: ignore[attr-defined]
        raise
    return got


def raw_stream_events(proxy: str, headers: dict | None = None, **body) -> list[str]:
    """The data of every SSE event of POST /api/v1/chat/completions, as sent on the wire."""
    origin = urlsplit(ct.proxy(proxy))
    conn = http.client.HTTPConnection(origin.hostname, origin.port, timeout=ct.TIMEOUT)
    try:
        payload = json.dumps({"model": ct.MODEL, "messages": ct.MESSAGES, "stream": True, **body})
        conn.request("POST", "/api/v1/chat/completions", body=payload,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        assert resp.status == 200
        return ct.sse_data(resp.read())
    finally:
        conn.close()


ENVELOPE_PREFIX = '{"success":true,"code":"200","message":"successful","data":'


# === Success ===


@pytest.mark.parametrize("upstream", ["bare", "envelope"])
def test_chat_returns_the_completion_as_data(upstream):
    data = chat(client(PROXY_OF[upstream]))
    assert data == ct.fixture_json("bare/chat_completion.json")
    assert data["choices"][0]["message"]["content"] == ct.completion_content()


@pytest.mark.parametrize("upstream", ["bare", "envelope"])
def test_models_and_embeddings_return_data(upstream):
    c = client(PROXY_OF[upstream])
    assert c.models() == ct.fixture_json("bare/models.json")
    assert c.embeddings(model="text-embedding-3-small", input=["hi", "there"]) == ct.fixture_json(
        "bare/embeddings.json"
    )


# === Errors ===

BARE_UPSTREAM_CASES = [pytest.param(case, id=case["id"]) for case in ct.CASES if "bare" in case["shapes"]]


@pytest.mark.parametrize("case", BARE_UPSTREAM_CASES)
def test_bare_upstream_error_reaches_the_client_as_code_and_message(case):
    """Every upstream error shape becomes {"success":false,"code":"<status>","message",…,"error":{…}}."""
    with pytest.raises(EnvelopeError) as info:
        chat(client("bare"), ct.directives(fixture=case["fixture"], status=case["upstream_status"]))
    e = info.value
    assert e.status == case["status"]
    assert e.code == str(case["status"])
    assert e.message == case["error"]["message"]
    assert e.error == case["error"]


# An envelope upstream's own error envelopes pass through unchanged: the client reads their code and
# message, whatever the HTTP status (these have no `error` detail object).
ENVELOPE_NATIVE = [
    pytest.param("errors/envelope_401.json", 401, 401, "401", "Invalid API key", id="envelope_401"),
    pytest.param("errors/envelope_401.json", 200, 200, "401", "Invalid API key", id="envelope_401_under_http_200"),
    pytest.param("errors/envelope_429_int_code.json", 200, 200, "429", "Too many requests, please retry later",
                 id="envelope_429_int_code_under_http_200"),
    pytest.param("errors/envelope_code_only.json", 200, 200, "500", "internal error",
                 id="envelope_code_only_under_http_200"),
]


@pytest.mark.parametrize("fixture,upstream_status,status,code,message", ENVELOPE_NATIVE)
def test_envelope_upstream_error_envelopes_reach_the_client(fixture, upstream_status, status, code, message):
    with pytest.raises(EnvelopeError) as info:
        chat(client("envelope"), ct.directives(fixture=fixture, status=upstream_status))
    e = info.value
    assert (e.status, e.code, e.message, e.error) == (status, code, message, None)


NON_JSON = [pytest.param(case, id=case["id"]) for case in ct.CASES if case["bare_passthrough"] == "normalised"]


@pytest.mark.parametrize("case", NON_JSON)
def test_envelope_upstream_html_text_and_empty_errors_are_normalised(case):
    with pytest.raises(EnvelopeError) as info:
        chat(client("envelope"), ct.directives(fixture=case["fixture"], status=case["upstream_status"]))
    e = info.value
    assert (e.status, e.code, e.message, e.error) == (
        case["status"], str(case["status"]), case["error"]["message"], case["error"]
    )


OPENAI_SHAPED = [pytest.param(case, id=case["id"]) for case in ct.CASES if case["bare_passthrough"] == "openai"]


@pytest.mark.parametrize("case", OPENAI_SHAPED)
def test_envelope_upstream_bare_json_errors_pass_through_and_the_client_reads_them(case):
    """Same dialect: JSON error bodies pass byte for byte, also the bare {"error":{…}} ones an envelope
    upstream may relay from its backend; this client falls back to the HTTP status as the code."""
    upstream_error = ct.fixture_json(case["fixture"])["error"]
    with pytest.raises(EnvelopeError) as info:
        chat(client("envelope"), ct.directives(fixture=case["fixture"], status=case["upstream_status"]))
    e = info.value
    assert (e.status, e.code, e.message, e.error) == (
        case["status"], str(case["status"]), upstream_error["message"], upstream_error
    )


@pytest.mark.parametrize(
    "proxy,fixture,status,code", [("bare", "errors/openai_429_rate_limit.json", 429, "429"),
                                  ("envelope", "errors/envelope_401.json", 200, "401")]
)
def test_request_id_reaches_the_error(proxy, fixture, status, code):
    with pytest.raises(EnvelopeError) as info:
        chat(client(proxy), ct.directives(fixture=fixture, status=status, header="x-request-id: req_env_err"))
    assert info.value.code == code
    assert info.value.request_id == "req_env_err"


# === Streaming ===


def test_wrap_stream_every_chunk_is_an_envelope():
    events = raw_stream_events("wrap")
    chunks = ct.fixture_chunks(ct.BARE_STREAM)
    assert events[-1] == "[DONE]"
    assert len(events) == len(chunks) + 1
    for event, chunk in zip(events, chunks):
        assert event.startswith(ENVELOPE_PREFIX) and event.endswith("}"), event
        assert json.loads(event) == {"success": True, "code": "200", "message": "successful", "data": chunk}


@pytest.mark.parametrize(
    "proxy,fixture,expected",
    [
        pytest.param("wrap", None, ct.BARE_STREAM, id="bare-upstream-wrap"),
        pytest.param("bare", None, ct.BARE_STREAM, id="bare-upstream-default-bare-chunks"),
        pytest.param("envelope", None, ct.BARE_STREAM, id="envelope-upstream"),
        pytest.param("envelope", "envelope/chat_completion_stream_mixed.sse", ct.BARE_STREAM,
                     id="envelope-upstream-mixed"),
        pytest.param("wrap", "bare/chat_completion_stream_azure.sse", "bare/chat_completion_stream_azure.sse",
                     id="bare-upstream-wrap-azure"),
    ],
)
def test_stream_yields_the_upstream_chunks(proxy, fixture, expected):
    headers = ct.directives(fixture=fixture) if fixture else None
    chunks = stream(client(proxy), headers)
    assert chunks == ct.fixture_chunks(expected)


def test_default_mode_leaves_chunks_bare():
    events = raw_stream_events("bare")
    assert events == ct.sse_data(ct.fixture_bytes(ct.BARE_STREAM))


@pytest.mark.parametrize("proxy,fixture", [("wrap", None), ("envelope", ct.ENVELOPE_USAGE_STREAM)])
def test_stream_with_include_usage_ends_with_the_usage_chunk(proxy, fixture):
    headers = ct.directives(fixture=fixture) if fixture else None
    chunks = stream(client(proxy), headers, stream_options={"include_usage": True})
    assert chunks == ct.fixture_chunks(ct.BARE_USAGE_STREAM)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 29


SERVER_ERROR = {"message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error", "param": None, "code": None}


@pytest.mark.parametrize(
    "proxy,fixture,code,message,error",
    [
        pytest.param("wrap", "bare/chat_completion_stream_mid_error.sse", "500", SERVER_ERROR["message"],
                     SERVER_ERROR, id="bare-upstream-wrap"),
        pytest.param("bare", "bare/chat_completion_stream_mid_error.sse", None, SERVER_ERROR["message"],
                     SERVER_ERROR, id="bare-upstream-default"),
        pytest.param("envelope", "envelope/chat_completion_stream_mid_error.sse", "500", "model backend error",
                     None, id="envelope-upstream"),
    ],
)
def test_mid_stream_error_is_reported_with_code_and_message(proxy, fixture, code, message, error):
    with pytest.raises(EnvelopeError) as info:
        stream(client(proxy), ct.directives(fixture=fixture))
    e = info.value
    assert ct.content_of(e.chunks_before) == "Hello!"
    assert (e.status, e.code, e.message, e.error) == (200, code, message, error)


@pytest.mark.parametrize(
    "proxy,fixture,code",
    [
        pytest.param("wrap", "bare/chat_completion_stream_no_done.sse", "502", id="bare-upstream-wrap"),
        pytest.param("wrap", "bare/chat_completion_stream_cut_mid_answer.sse", "502", id="bare-upstream-wrap-mid"),
        pytest.param("bare", "bare/chat_completion_stream_no_done.sse", None, id="bare-upstream-default"),
        pytest.param("envelope", "envelope/chat_completion_stream_no_done.sse", "502", id="envelope-upstream"),
    ],
)
def test_stream_cut_short_is_reported_not_returned(proxy, fixture, code):
    with pytest.raises(EnvelopeError) as info:
        stream(client(proxy), ct.directives(fixture=fixture))
    e = info.value
    assert e.chunks_before == ct.fixture_chunks(fixture)
    assert (e.status, e.code, e.message, e.error) == (200, code, ct.TRUNCATED_MESSAGE, ct.truncated_error())


@pytest.mark.parametrize("proxy,fixture", [("wrap", ct.BARE_STREAM), ("envelope", ct.ENVELOPE_STREAM)])
def test_broken_upstream_stream_is_reported(proxy, fixture):
    with pytest.raises(EnvelopeError) as info:
        stream(client(proxy), ct.directives(behaviour=f"reset-mid-body:{ct.cut_in_third_event(fixture)}"))
    e = info.value
    assert e.chunks_before == ct.fixture_chunks(ct.BARE_STREAM)[:2]
    assert (e.status, e.code) == (200, "502")
    assert e.error["code"] == "upstream_broken" and e.error["type"] == "upstream_error"
    assert e.message == e.error["message"]
    assert e.message.startswith(ct.BROKEN_PREFIX) and e.message.endswith(ct.BROKEN_SUFFIX), e.message


@pytest.mark.parametrize(
    "proxy,fixture,upstream_status,status,code",
    [("wrap", "errors/openai_429_rate_limit.json", 429, 429, "429"),
     ("envelope", "errors/envelope_401.json", 401, 401, "401")],
)
def test_stream_request_answered_with_an_error(proxy, fixture, upstream_status, status, code):
    with pytest.raises(EnvelopeError) as info:
        stream(client(proxy), ct.directives(fixture=fixture, status=upstream_status))
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.chunks_before == []


def test_control_without_the_proxy_the_client_itself_detects_a_missing_done():
    """Straight from an envelope upstream, only the client's own [DONE] check notices the cut."""
    c = EnvelopeClient(ct.mock("envelope"), api_key="sk-test", timeout=ct.TIMEOUT)
    with pytest.raises(IncompleteStream) as info:
        stream(c, ct.directives(fixture="envelope/chat_completion_stream_no_done.sse"))
    assert info.value.chunks_before == ct.fixture_chunks(ct.BARE_STREAM)
