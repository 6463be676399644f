"""README "Envelope clients": every example is what the running proxy returns for its fixture.

Each example is a fenced block preceded by a marker naming the request:

    <!-- checked: POST /api/v1/chat/completions proxy=wrap fixture=bare/… upstream-status=502 stream=true status=200 -->

`proxy` is bare, envelope or wrap (see run.sh); `fixture` and `upstream-status` become x-mock-*
headers; `stream=true` sets "stream": true in the body; `status` is the HTTP status expected.
```json blocks are compared with the response as JSON values. ```text blocks are SSE events (one
`data:` line each, blank lines between): they must be the response's events, where a line `…`
stands for any number of events left out.
"""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit

import pytest

import ct

SECTION = "### Envelope clients"
MARKER = re.compile(r"<!-- checked: (?P<method>[A-Z]+) (?P<path>\S+)(?P<args>(?: [a-z-]+=\S+)*) -->")
BODY = {"model": ct.MODEL, "messages": ct.MESSAGES}


def examples() -> list[tuple[dict, str, str]]:
    """(request, language, block) for every marker of the section."""
    lines = ct.readme_section(SECTION).split("\n")
    out = []
    for i, line in enumerate(lines):
        m = MARKER.fullmatch(line.strip())
        if not m:
            assert "checked:" not in line, f"malformed marker: {line}"
            continue
        fence = lines[i + 1].strip()
        assert fence.startswith("```"), f"marker not followed by a fenced block: {line}"
        end = lines.index("```", i + 2)
        request = dict(arg.split("=", 1) for arg in m["args"].split())
        request.update(method=m["method"], path=m["path"])
        out.append((request, fence[3:], "\n".join(lines[i + 2 : end])))
    return out


def send(request: dict) -> tuple[int, bytes]:
    origin = urlsplit(ct.proxy(request["proxy"]))
    headers = {"Content-Type": "application/json"}
    if "fixture" in request:
        headers["x-mock-fixture"] = request["fixture"]
    if "upstream-status" in request:
        headers["x-mock-status"] = request["upstream-status"]
    body = dict(BODY, stream=True) if request.get("stream") == "true" else BODY
    conn = http.client.HTTPConnection(origin.hostname, origin.port, timeout=ct.TIMEOUT)
    try:
        conn.request(request["method"], request["path"], body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def events_match(documented: str, actual: list[str]) -> bool:
    """Documented SSE events, `…` lines being gaps, against the actual events in order."""
    segments: list[list[str]] = [[]]
    for line in documented.split("\n"):
        if line.strip() == "…":
            segments.append([])
        elif line.startswith("data: "):
            segments[-1].append(line[len("data: ") :])
        else:
            assert line.strip() == "", f"unexpected line in an SSE example: {line!r}"
    leading_gap, trailing_gap = not segments[0], not segments[-1]
    segments = [s for s in segments if s]
    if not segments:
        return True
    pos = 0
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if i == 0 and not leading_gap:
            if actual[: len(seg)] != seg:
                return False
            pos = len(seg)
            if last and not trailing_gap and pos != len(actual):
                return False
            continue
        if last and not trailing_gap:
            return len(actual) - len(seg) >= pos and actual[len(actual) - len(seg) :] == seg
        found = next((j for j in range(pos, len(actual) - len(seg) + 1) if actual[j : j + len(seg)] == seg), None)
        if found is None:
            return False
        pos = found + len(seg)
    return True


def test_the_section_has_its_examples():
    kinds = [(r["proxy"], r.get("fixture"), lang) for r, lang, _ in examples()]
    assert len(kinds) >= 6, kinds
    assert {lang for _, _, lang in kinds} == {"json", "text"}


def _example_id(request: dict, lang: str) -> str:
    fixture = request.get("fixture", "default").rsplit("/", 1)[-1]
    return f"{request['proxy']}-{fixture}{'-stream' if request.get('stream') == 'true' else ''}"


@pytest.mark.parametrize(
    "request_,lang,block", [pytest.param(r, lang, b, id=_example_id(r, lang)) for r, lang, b in examples()]
)
def test_readme_example_is_what_the_proxy_returns(request_, lang, block):
    status, body = send(request_)
    assert status == int(request_["status"])
    if lang == "json":
        assert json.loads(block) == json.loads(body)
    else:
        assert lang == "text"
        assert events_match(block, ct.sse_data(body)), body.decode("utf-8")


def test_events_match_understands_gaps():
    actual = ["a", "b", "c", "d"]
    assert events_match("data: a\n\n…\n\ndata: d", actual)
    assert events_match("…\n\ndata: c\n\ndata: d", actual)
    assert events_match("data: a\n\ndata: b\n\ndata: c\n\ndata: d", actual)
    assert events_match("data: a\n\n…\n\ndata: c\n\n…", actual)
    assert not events_match("data: a\n\ndata: d", actual)
    assert not events_match("…\n\ndata: c", actual)
    assert not events_match("data: b\n\n…", actual)
