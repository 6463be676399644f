"""A small envelope-dialect client, in the style of an enterprise integration.

Plain HTTP and JSON (the standard library only, no SDK): it posts to `<base>/api/v1/…`, checks
`success`, returns `data`, and reports `code` and `message` as an `EnvelopeError` otherwise. Streams
are read as Server-Sent Events; each event is an envelope (or, from a bare upstream without
`--stream-envelope wrap`, a bare chunk), and the stream is complete only with `data: [DONE]`.

    client = EnvelopeClient("http://127.0.0.1:8080", api_key="sk-…")
    data = client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    for chunk in client.chat_stream(model="gpt-4o-mini", messages=[…]):
        ...
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Iterator
from urllib.parse import urlsplit

SUCCESS_CODES = ("200", "0")


class EnvelopeError(Exception):
    """The service reported a failure: `code` and `message` from the envelope, `error` the detail
    object when there is one, `status` the HTTP status it came with (200 for an error in a stream)."""

    def __init__(self, status: int, code: str | None, message: str | None, error: Any = None,
                 request_id: str | None = None):
        super().__init__(f"[{code}] {message}")
        self.status = status
        self.code = code
        self.message = message
        self.error = error
        self.request_id = request_id


class IncompleteStream(Exception):
    """The stream ended without `data: [DONE]`: the answer may be cut short."""


def _is_success(body: dict) -> bool:
    return body.get("success") is True and str(body.get("code")) in SUCCESS_CODES


def _error_from(status: int, body: Any, request_id: str | None, code_if_bare: str | None) -> EnvelopeError:
    if isinstance(body, dict) and "success" in body:
        code = body.get("code")
        return EnvelopeError(status, None if code is None else str(code), body.get("message"), body.get("error"),
                             request_id)
    # Not an envelope (a bare error passed through): report what there is.
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return EnvelopeError(status, code_if_bare, message, error, request_id)


class EnvelopeClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 10, headers: dict[str, str] | None = None):
        url = urlsplit(base_url)
        assert url.scheme == "http", "this sketch speaks plain HTTP only"
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/") + "/api/v1"
        self.api_key = api_key
        self.timeout = timeout
        self.headers = dict(headers or {})

    # --- calls ---

    def chat(self, headers: dict[str, str] | None = None, **params) -> dict:
        return self._call("POST", "/chat/completions", params, headers)

    def models(self, headers: dict[str, str] | None = None) -> dict:
        return self._call("GET", "/models", None, headers)

    def embeddings(self, headers: dict[str, str] | None = None, **params) -> dict:
        return self._call("POST", "/embeddings", params, headers)

    def chat_stream(self, headers: dict[str, str] | None = None, **params) -> Iterator[dict]:
        """Yields the chunks; raises EnvelopeError for an error (before or in the stream) and
        IncompleteStream if the stream ends without [DONE]."""
        conn, resp = self._send("POST", "/chat/completions", {**params, "stream": True}, headers)
        try:
            request_id = resp.getheader("x-request-id")
            if not resp.getheader("content-type", "").startswith("text/event-stream"):
                yield self._unwrap(resp.status, resp.read(), request_id)  # raises for errors
                return
            for data in self._events(resp):
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if isinstance(event, dict) and "success" in event:
                    if not _is_success(event):
                        raise _error_from(resp.status, event, request_id, None)
                    yield event["data"]
                elif isinstance(event, dict) and "error" in event:  # a bare error event: no envelope code
                    raise _error_from(resp.status, event, request_id, None)
                else:  # a bare chunk (bare upstream, --stream-envelope bare)
                    yield event
            raise IncompleteStream("the stream ended without data: [DONE]")
        finally:
            conn.close()

    # --- plumbing ---

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str] | None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        h = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json", **self.headers,
             **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            h["Content-Type"] = "application/json"
        conn.request(method, self.prefix + path, body=payload, headers=h)
        return conn, conn.getresponse()

    def _call(self, method: str, path: str, body: Any, headers: dict[str, str] | None) -> dict:
        conn, resp = self._send(method, path, body, headers)
        try:
            return self._unwrap(resp.status, resp.read(), resp.getheader("x-request-id"))
        finally:
            conn.close()

    @staticmethod
    def _unwrap(status: int, raw: bytes, request_id: str | None) -> Any:
        try:
            body = json.loads(raw)
        except ValueError:
            raise EnvelopeError(status, str(status), f"not a JSON response ({len(raw)} bytes)", None,
                                request_id) from None
        if isinstance(body, dict) and _is_success(body) and 200 <= status < 300:
            return body["data"]
        raise _error_from(status, body, request_id, str(status))  # a bare error body: its HTTP status

    @staticmethod
    def _events(resp) -> Iterator[str]:
        """The data of each SSE event (data lines joined by \\n), as events complete."""
        data: list[str] = []
        while True:
            line = resp.readline()
            if not line:
                return  # end of body; a partial event is dropped
            line = line.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield "\n".join(data)
                data = []
            elif line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
            # comments (": keep-alive") and other fields are ignored
