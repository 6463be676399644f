"""openai-python through the proxy's /v1, in front of a bare and an envelope upstream.

Every test talks to a real proxy (target/release/envelope-proxy) in front of the mock upstream
(examples/mock-upstream.rs); the mock's behaviour is chosen per request by x-mock-* headers, which
the SDK sends as `extra_headers` and the proxy forwards. Expected values come from the fixtures and
from cases.json; nothing is timed.
"""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest
from openai import OpenAI

import ct

SHAPES = ["bare", "envelope"]


def client(shape: str, **kw) -> OpenAI:
    """An SDK client on the proxy in front of the `shape` upstream. Retries off unless a test counts them."""
    kw.setdefault("max_retries", 0)
    return OpenAI(base_url=f"{ct.proxy(shape)}/v1", api_key="sk-test", timeout=ct.TIMEOUT, **kw)


def create(c: OpenAI, headers: dict | None = None, **kw):
    return c.chat.completions.create(model=ct.MODEL, messages=ct.MESSAGES, extra_headers=headers or {}, **kw)


def collect(stream) -> list[dict]:
    """Iterates a stream to its end, returning the chunks as dicts; on an exception, the chunks so far
    are on the exception as `.chunks_before`."""
    got = []
    try:
        for chunk in stream:
            got.append(chunk.to_dict())
    except Exception as e:  # noqa: BLE001 - re-raised with context
        e.chunks_before = got  # type: ignore[attr-defined]
        raise
    return got


@pytest.fixture
def fast_backoff(monkeypatch):
    """The SDK's own exponential backoff (0.5 s, 1 s, …) shortened to 10 ms. Only the delay changes:
    which responses are retried, and how often, is still the SDK's own rule."""
    import openai._base_client as base

    assert base.INITIAL_RETRY_DELAY == 0.5, "openai-python changed its backoff constant"
    monkeypatch.setattr(base, "INITIAL_RETRY_DELAY", 0.01)


# === Completions ===


@pytest.mark.parametrize("shape", SHAPES)
def test_completion_is_the_upstream_completion(shape):
    completion = create(client(shape))
    assert completion.choices[0].message.content == ct.completion_content()
    assert completion.to_dict() == ct.fixture_json("bare/chat_completion.json")


@pytest.mark.parametrize("shape", SHAPES)
def test_models_and_embeddings_are_the_upstream_ones(shape):
    c = client(shape)
    models = c.models.list()
    assert [m.to_dict() for m in models.data] == ct.fixture_json("bare/models.json")["data"]
    embeddings = c.embeddings.create(model="text-embedding-3-small", input=["hi", "there"])
    assert embeddings.to_dict() == ct.fixture_json("bare/embeddings.json")


@pytest.mark.parametrize("shape", SHAPES)
def test_stream_has_the_upstream_chunks(shape):
    chunks = collect(create(client(shape), stream=True))
    assert chunks == ct.fixture_chunks(ct.BARE_STREAM)
    assert ct.content_of(chunks) == "Hello! 👋 How can I help you today?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("shape", SHAPES)
def test_stream_with_include_usage_ends_with_the_usage_chunk(shape):
    headers = {} if shape == "bare" else ct.directives(fixture=ct.ENVELOPE_USAGE_STREAM)
    chunks = collect(create(client(shape), headers, stream=True, stream_options={"include_usage": True}))
    expected = ct.fixture_chunks(ct.BARE_USAGE_STREAM)
    assert chunks == expected
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == expected[-1]["usage"]
    assert chunks[-1]["usage"]["total_tokens"] == 29
    assert ct.content_of(chunks) == "Hello! 👋 How can I help you today?"


@pytest.mark.parametrize(
    "shape,fixture,expected",
    [
        # Azure: a first chunk with "choices":[] and content_filter_results on every chunk.
        ("bare", "bare/chat_completion_stream_azure.sse", "bare/chat_completion_stream_azure.sse"),
        # An envelope platform that wraps only some chunks.
        ("envelope", "envelope/chat_completion_stream_mixed.sse", ct.BARE_STREAM),
    ],
)
def test_stream_variants_reach_the_sdk_unchanged(shape, fixture, expected):
    chunks = collect(create(client(shape), ct.directives(fixture=fixture), stream=True))
    assert chunks == ct.fixture_chunks(expected)


# === Errors ===

# What openai-python exposes for a bare upstream's non-OpenAI JSON error bodies, which reach it byte
# for byte (README: bare → bare JSON errors pass unchanged). The SDK reads `body.get("error", body)`.
PY_RAW = {
    "vllm_400": lambda: dict(
        body=ct.fixture_json("errors/vllm_400.json"),
        message="Error code: 400 - " + ct.fixture_json("errors/vllm_400.json")["message"],
        code="400",
        type="BadRequestError",
        param=None,
    ),
    "fastapi_detail_string_401": lambda: dict(
        body={"detail": "Not authenticated"}, message="Error code: 401", code=None, type=None, param=None
    ),
    "fastapi_detail_list_422": lambda: dict(
        body=ct.fixture_json("errors/fastapi_detail_list.json"),
        message="Error code: 422",
        code=None,
        type=None,
        param=None,
    ),
    # {"error":"<string>","error_type":…}: the SDK takes the string as the body; no type, no code.
    "tgi_422": lambda: dict(
        body=ct.fixture_json("errors/tgi_error.json")["error"],
        message="Error code: 422",
        code=None,
        type=None,
        param=None,
    ),
}


def expected_error(shape: str, case: dict) -> dict:
    """body, message, code, type and param of the SDK exception for an error case."""
    if shape == "bare" and case["bare_passthrough"] == "raw":
        return PY_RAW[case["id"]]()
    if shape == "bare" and case["bare_passthrough"] == "openai":
        body = ct.fixture_json(case["fixture"])["error"]  # the upstream's own object, as it wrote it
    else:
        body = case["error"]
    code = body.get("code")
    return dict(
        body=body,
        message=f"Error code: {case['status']} - {body['message']}",
        code=None if code is None else str(code),
        type=body.get("type"),
        param=body.get("param"),
    )


ERROR_CASES = [pytest.param(shape, case, id=f"{shape}-{case['id']}") for case in ct.CASES for shape in case["shapes"]]


@pytest.mark.parametrize("shape,case", ERROR_CASES)
def test_upstream_error_raises_the_sdk_exception_for_its_status(shape, case):
    with pytest.raises(openai.APIStatusError) as info:
        create(client(shape), ct.directives(fixture=case["fixture"], status=case["upstream_status"]))
    e = info.value
    assert type(e) is getattr(openai, case["class"])
    assert e.status_code == case["status"]
    want = expected_error(shape, case)
    assert e.body == want["body"]
    assert e.message == want["message"]
    assert e.code == want["code"]
    assert e.type == want["type"]
    assert e.param == want["param"]


@pytest.mark.parametrize(
    "shape,fixture,upstream_status,cls,status",
    [
        ("bare", "errors/openai_429_rate_limit.json", 429, openai.RateLimitError, 429),
        ("envelope", "errors/envelope_401.json", 200, openai.AuthenticationError, 401),
    ],
)
def test_a_stream_request_answered_with_an_error_raises_at_create(shape, fixture, upstream_status, cls, status):
    with pytest.raises(openai.APIStatusError) as info:
        create(client(shape), ct.directives(fixture=fixture, status=upstream_status), stream=True)
    assert type(info.value) is cls
    assert info.value.status_code == status


# === Retries: the mock counts attempts; the SDK's own rules give the count ===


def count(shape: str, c: OpenAI, stream: bool = False, **directives):
    """(result or exception, attempts the upstream saw) for one SDK call."""
    key = ct.new_key("py-retry")
    try:
        result = create(c, ct.directives(key=key, **directives), stream=stream)
        if stream:
            result = collect(result)
    except openai.APIError as e:
        result = e
    return result, ct.attempts(shape, key)


@pytest.mark.parametrize("shape", SHAPES)
def test_429_with_retry_after_ms_is_retried_max_retries_times(shape):
    # Default max_retries (2): 3 attempts. retry-after-ms: 10 is honoured, so no backoff patch.
    result, n = count(
        shape, client(shape, max_retries=2), fixture="errors/openai_429_rate_limit.json", status=429,
        header="retry-after-ms: 10",
    )
    assert type(result) is openai.RateLimitError
    assert n == 3


@pytest.mark.parametrize("shape", SHAPES)
def test_429_then_success_returns_the_completion(shape):
    result, n = count(
        shape, client(shape, max_retries=2), fixture="errors/openai_429_rate_limit.json", status=429,
        header="retry-after-ms: 10", fail_first=1,
    )
    assert result.choices[0].message.content == ct.completion_content()
    assert n == 2


@pytest.mark.parametrize("shape", SHAPES)
def test_429_then_success_on_a_stream_request(shape):
    result, n = count(
        shape, client(shape, max_retries=2), stream=True, fixture="errors/openai_429_rate_limit.json",
        status=429, header="retry-after-ms: 10", fail_first=1,
    )
    assert result == ct.fixture_chunks(ct.BARE_STREAM)
    assert n == 2


@pytest.mark.parametrize("shape", SHAPES)
def test_503_is_retried_with_the_sdks_backoff(shape, fast_backoff):
    result, n = count(shape, client(shape, max_retries=2), fixture="errors/openai_503_overloaded.json", status=503)
    assert type(result) is openai.InternalServerError
    assert n == 3


@pytest.mark.parametrize("shape", SHAPES)
def test_x_should_retry_false_stops_retries(shape, fast_backoff):
    result, n = count(
        shape, client(shape, max_retries=2), fixture="errors/openai_503_overloaded.json", status=503,
        header="x-should-retry: false",
    )
    assert type(result) is openai.InternalServerError
    assert n == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_400_is_not_retried(shape, fast_backoff):
    result, n = count(shape, client(shape, max_retries=2), fixture="errors/openai_400_invalid_request.json", status=400)
    assert type(result) is openai.BadRequestError
    assert n == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_x_should_retry_true_makes_even_a_400_retried(shape, fast_backoff):
    result, n = count(
        shape, client(shape, max_retries=2), fixture="errors/openai_400_invalid_request.json", status=400,
        header="x-should-retry: true",
    )
    assert type(result) is openai.BadRequestError
    assert n == 3


def test_envelope_429_under_http_200_is_retried_like_a_429():
    # Without the proxy the SDK would see a 200 and never retry.
    result, n = count(
        "envelope", client("envelope", max_retries=2), fixture="errors/envelope_429_int_code.json", status=200,
        header="retry-after-ms: 10",
    )
    assert type(result) is openai.RateLimitError
    assert result.body == {
        "message": "Too many requests, please retry later", "type": "rate_limit_error", "param": None, "code": "429",
    }
    assert n == 3


def test_envelope_401_under_http_200_is_not_retried():
    result, n = count(
        "envelope", client("envelope", max_retries=2), fixture="errors/envelope_401.json", status=200,
    )
    assert type(result) is openai.AuthenticationError
    assert n == 1


# === Streams that go wrong ===

MID_ERRORS = [
    pytest.param(
        "bare", "bare/chat_completion_stream_mid_error.sse",
        {"message": "The server had an error while processing your request. Sorry about that!",
         "type": "server_error", "param": None, "code": None},
        id="bare",
    ),
    pytest.param(
        "envelope", "envelope/chat_completion_stream_mid_error.sse",
        {"message": "model backend error", "type": "server_error", "param": None, "code": "500"},
        id="envelope",
    ),
]


@pytest.mark.parametrize("shape,fixture,error", MID_ERRORS)
def test_mid_stream_error_event_raises_api_error(shape, fixture, error):
    with pytest.raises(openai.APIError) as info:
        collect(create(client(shape), ct.directives(fixture=fixture), stream=True))
    e = info.value
    assert type(e) is openai.APIError
    assert ct.content_of(e.chunks_before) == "Hello!"
    assert e.body == error
    assert e.message == error["message"]
    assert e.code == error["code"]
    assert e.type == error["type"]


TRUNCATED = [
    pytest.param("bare", "bare/chat_completion_stream_no_done.sse", id="bare-no_done"),
    pytest.param("bare", "bare/chat_completion_stream_cut_mid_answer.sse", id="bare-cut_mid_answer"),
    pytest.param("bare", "bare/chat_completion_stream_one_chunk_no_done.sse", id="bare-one_chunk_no_done"),
    pytest.param("envelope", "envelope/chat_completion_stream_no_done.sse", id="envelope-no_done"),
]


@pytest.mark.parametrize("shape,fixture", TRUNCATED)
def test_stream_ending_without_done_raises_api_error(shape, fixture):
    """Issue 8: the SDK raises instead of returning a short answer."""
    with pytest.raises(openai.APIError) as info:
        collect(create(client(shape), ct.directives(fixture=fixture), stream=True))
    e = info.value
    assert type(e) is openai.APIError
    assert e.chunks_before == ct.fixture_chunks(fixture)  # everything the upstream sent, then the error
    assert e.body == ct.truncated_error()
    assert e.message == ct.TRUNCATED_MESSAGE
    assert e.code == "stream_truncated"
    assert e.type == "upstream_error"


@pytest.mark.parametrize("shape,fixture", [("bare", ct.BARE_STREAM), ("envelope", ct.ENVELOPE_STREAM)])
def test_the_client_keeps_working_after_failed_streams(shape, fixture):
    """The error events end the HTTP response cleanly: the same client (and its pooled connection)
    goes on serving requests."""
    c = client(shape)
    no_done = f"{shape}/chat_completion_stream_no_done.sse"
    for headers in (ct.directives(fixture=no_done),
                    ct.directives(behaviour=f"reset-mid-body:{ct.cut_in_third_event(fixture)}")):
        with pytest.raises(openai.APIError):
            collect(create(c, headers, stream=True))
    assert collect(create(c, stream=True)) == ct.fixture_chunks(ct.BARE_STREAM)
    assert create(c).choices[0].message.content == ct.completion_content()


def test_control_without_the_proxy_the_sdk_returns_the_short_answer():
    """Why the proxy's truncation event matters: straight from the upstream, the SDK ends quietly."""
    c = OpenAI(base_url=f"{ct.mock('bare')}/v1", api_key="sk-test", timeout=ct.TIMEOUT, max_retries=0)
    fixture = "bare/chat_completion_stream_cut_mid_answer.sse"
    chunks = collect(create(c, ct.directives(fixture=fixture), stream=True))
    assert chunks == ct.fixture_chunks(fixture)
    assert ct.content_of(chunks) == "Hello! 👋 How"


@pytest.mark.parametrize("shape,fixture", [("bare", ct.BARE_STREAM), ("envelope", ct.ENVELOPE_STREAM)])
def test_broken_upstream_stream_raises_api_error(shape, fixture):
    with pytest.raises(openai.APIError) as info:
        collect(
            create(client(shape), ct.directives(behaviour=f"reset-mid-body:{ct.cut_in_third_event(fixture)}"), stream=True)
        )
    e = info.value
    assert type(e) is openai.APIError
    assert e.chunks_before == ct.fixture_chunks(ct.BARE_STREAM)[:2]  # whole events only
    assert ct.content_of(e.chunks_before) == "Hello"
    assert e.code == "upstream_broken"
    assert e.type == "upstream_error"
    assert e.message.startswith(ct.BROKEN_PREFIX) and e.message.endswith(ct.BROKEN_SUFFIX), e.message


# === x-request-id ===


@pytest.mark.parametrize("shape", SHAPES)
def test_request_id_reaches_the_completion(shape):
    completion = create(client(shape), ct.directives(header="x-request-id: req_py_ok"))
    assert completion._request_id == "req_py_ok"


@pytest.mark.parametrize("shape", SHAPES)
def test_request_id_reaches_the_stream_response(shape):
    raw = client(shape).chat.completions.with_raw_response.create(
        model=ct.MODEL, messages=ct.MESSAGES, stream=True, extra_headers=ct.directives(header="x-request-id: req_py_stream")
    )
    assert raw.request_id == "req_py_stream"
    assert collect(raw.parse()) == ct.fixture_chunks(ct.BARE_STREAM)


@pytest.mark.parametrize(
    "shape,fixture,status,cls",
    [
        ("bare", "errors/openai_429_rate_limit.json", 429, openai.RateLimitError),
        ("bare", "errors/nginx_502.html", 502, openai.InternalServerError),  # normalised by the proxy
        ("envelope", "errors/envelope_401.json", 200, openai.AuthenticationError),  # translated from a 200
    ],
)
def test_request_id_reaches_the_exception(shape, fixture, status, cls):
    with pytest.raises(openai.APIStatusError) as info:
        create(client(shape), ct.directives(fixture=fixture, status=status, header="x-request-id: req_py_err"))
    assert type(info.value) is cls
    assert info.value.request_id == "req_py_err"


# === README ===


@pytest.mark.parametrize("shape", SHAPES)
def test_readme_python_snippet_prints_the_completion(shape):
    """README "With the OpenAI SDK": the Python lines, run as written against the proxy."""
    blocks = ct.fenced_blocks(ct.readme_section("### With the OpenAI SDK"), "python")
    assert len(blocks) == 1, blocks
    code = blocks[0]
    assert len(code.strip().split("\n")) == 3, code
    assert "http://127.0.0.1:8080/v1" in code
    # Run as written, but for the address and the key placeholder (`sk-…` is not a valid header).
    code = code.replace("http://127.0.0.1:8080/v1", f"{ct.proxy(shape)}/v1").replace('"sk-…"', '"sk-test"')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, text=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ct.completion_content() + "\n"


def test_tested_sdk_version_is_the_pinned_one():
    pinned = [
        line.split("==")[1].strip()
        for line in (ct.HERE / "requirements.txt").read_text().split("\n")
        if line.startswith("openai==")
    ]
    assert pinned == [openai.__version__]
    assert f"openai-python {openai.__version__}" in ct.readme_section("### With the OpenAI SDK")
