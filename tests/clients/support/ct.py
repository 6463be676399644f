"""Shared helpers of the Python suites: where run.sh started things, fixtures, mock directives.

run.sh exports the addresses of what it started:
  CT_PROXY_BARE      proxy, --upstream-shape bare, in front of CT_MOCK_BARE
  CT_PROXY_ENVELOPE  proxy, --upstream-shape envelope, in front of CT_MOCK_ENVELOPE
  CT_PROXY_WRAP      proxy, --upstream-shape bare --stream-envelope wrap, in front of CT_MOCK_BARE
  CT_MOCK_BARE, CT_MOCK_ENVELOPE   the mock upstreams (examples/mock-upstream.rs)
  CT_FIXTURES        the directory the mocks serve (support/prepare_fixtures.py)
  CT_ROOT, CT_WORK   the repository, and tests/clients/.work
All are origins (http://127.0.0.1:PORT) or absolute paths.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # tests/clients
CASES = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))["errors"]
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello!"}]
TIMEOUT = 10  # seconds, every request of every suite

BARE_STREAM = "bare/chat_completion_stream.sse"
ENVELOPE_STREAM = "envelope/chat_completion_stream.sse"
BARE_USAGE_STREAM = "bare/chat_completion_stream_usage.sse"
ENVELOPE_USAGE_STREAM = "clients/envelope_chat_completion_stream_usage.sse"  # generated


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the suite through tests/clients/run.sh")
    return value


def proxy(name: str) -> str:
    """Origin of the proxy `bare`, `envelope` or `wrap`."""
    return env(f"CT_PROXY_{name.upper()}")


def mock(shape: str) -> str:
    return env(f"CT_MOCK_{shape.upper()}")


def fixture_bytes(rel: str) -> bytes:
    return (Path(env("CT_FIXTURES")) / rel).read_bytes()


def fixture_json(rel: str):
    return json.loads(fixture_bytes(rel))


def sse_data(raw: bytes) -> list[str]:
    """The `data:` payload of every event of an SSE body (fixtures use one data line per event)."""
    out = []
    for event in raw.decode("utf-8").split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
    return out


def unwrap(obj):
    """A chunk from an envelope stream fixture: the `data` of a success envelope, else itself."""
    if isinstance(obj, dict) and "success" in obj and "data" in obj:
        return obj["data"]
    return obj


def fixture_chunks(rel: str) -> list[dict]:
    """The chat.completion.chunk objects a stream fixture carries (unwrapped), [DONE] and errors left out."""
    chunks = []
    for data in sse_data(fixture_bytes(rel)):
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        if isinstance(obj, dict) and (obj.get("success") is False or "error" in obj):
            continue
        chunks.append(unwrap(obj))
    return chunks


def content_of(chunks: list[dict]) -> str:
    """Concatenated delta content of chunk dicts."""
    return "".join(
        (choice.get("delta") or {}).get("content") or "" for chunk in chunks for choice in chunk.get("choices", [])
    )


def completion_content(rel: str = "bare/chat_completion.json") -> str:
    return fixture_json(rel)["choices"][0]["message"]["content"]


def new_key(label: str) -> str:
    """A fresh x-mock-key, so attempt counts never mix between tests or runs."""
    return f"{label}-{uuid.uuid4().hex}"


def attempts(shape: str, key: str) -> int:
    """How many requests with x-mock-key: key the mock upstream of `shape` received."""
    with urllib.request.urlopen(f"{mock(shape)}/__mock/attempts?key={key}", timeout=TIMEOUT) as r:
        return json.loads(r.read())["attempts"]


def directives(
    fixture: str | None = None,
    status: int | None = None,
    header: str | None = None,
    behaviour: str | None = None,
    key: str | None = None,
    fail_first: int | None = None,
    content_type: str | None = None,
) -> dict[str, str]:
    """x-mock-* request headers for the mock upstream (the proxy forwards them)."""
    h = {}
    if fixture is not None:
        h["x-mock-fixture"] = fixture
    if status is not None:
        h["x-mock-status"] = str(status)
    if header is not None:
        h["x-mock-header"] = header
    if behaviour is not None:
        h["x-mock-behaviour"] = behaviour
    if key is not None:
        h["x-mock-key"] = key
    if fail_first is not None:
        h["x-mock-fail-first"] = str(fail_first)
    if content_type is not None:
        h["x-mock-content-type"] = content_type
    return h


def cut_in_third_event(rel: str) -> int:
    """A byte offset in the middle of the third event of a stream fixture (for reset-mid-body)."""
    events = fixture_bytes(rel).split(b"\n\n")
    return len(events[0]) + 2 + len(events[1]) + 2 + 40


TRUNCATED_MESSAGE = (
    "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete"
)


def truncated_error() -> dict:
    return {"message": TRUNCATED_MESSAGE, "type": "upstream_error", "param": None, "code": "stream_truncated"}


BROKEN_PREFIX = "the upstream stream broke before it finished ("
BROKEN_SUFFIX = "); the answer is incomplete"


def readme() -> str:
    return (Path(env("CT_ROOT")) / "README.md").read_text(encoding="utf-8")


def readme_section(heading: str) -> str:
    """The text of the README section under `heading` (a full heading line), up to the next heading
    of the same or a higher level."""
    lines = readme().split("\n")
    level = len(heading) - len(heading.lstrip("#"))
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"README.md has no heading {heading!r}") from None
    out, in_fence = [], False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            in_fence = not in_fence
        stripped = line.lstrip("#")
        if not in_fence and line.startswith("#") and stripped.startswith(" ") and len(line) - len(stripped) <= level:
            break
        out.append(line)
    return "\n".join(out)


def fenced_blocks(text: str, lang: str) -> list[str]:
    """Contents of the ```lang fenced blocks in text."""
    blocks, current = [], None
    for line in text.split("\n"):
        if current is None and line.strip() == f"```{lang}":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks
