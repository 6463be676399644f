"""Builds the fixture directory the suite's mock upstreams serve ($MOCK_FIXTURES_DIR).

It is the repository's fixtures/ (bare/, envelope/, errors/ linked, not copied) plus clients/, files
generated here from the repository's fixtures by the rules fixtures/README.md states:

- clients/envelope_chat_completion_stream_usage.sse: every chunk of bare/chat_completion_stream_usage.sse
  wrapped in the success envelope, `data: [DONE]` as it is: the envelope upstream's answer to a
  `stream_options.include_usage` request, which fixtures/ has no file for.

The wrapping is checked first: applied to bare/chat_completion_stream.sse it must give
envelope/chat_completion_stream.sse byte for byte, so the generated file follows the same convention.

usage: prepare_fixtures.py REPO_FIXTURES_DIR OUT_DIR
"""

import os
import sys

PREFIX = b'{"success":true,"code":"200","message":"successful","data":'


def wrap_stream(bare: bytes) -> bytes:
    out = []
    for event in bare.split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: "), event[:40]
        data = event[len(b"data: "):]
        out.append(b"data: " + (data if data == b"[DONE]" else PREFIX + data + b"}") + b"\n\n")
    return b"".join(out)


def main() -> int:
    src, out = (os.path.abspath(p) for p in sys.argv[1:3])
    read = lambda rel: open(os.path.join(src, rel), "rb").read()  # noqa: E731
    if wrap_stream(read("bare/chat_completion_stream.sse")) != read("envelope/chat_completion_stream.sse"):
        print("prepare_fixtures: wrapping bare/chat_completion_stream.sse does not give "
              "envelope/chat_completion_stream.sse; the fixture convention changed", file=sys.stderr)
        return 1
    os.makedirs(os.path.join(out, "clients"), exist_ok=True)
    for sub in ("bare", "envelope", "errors"):
        link = os.path.join(out, sub)
        if os.path.islink(link) or os.path.exists(link):
            os.remove(link)
        os.symlink(os.path.join(src, sub), link)
    with open(os.path.join(out, "clients", "envelope_chat_completion_stream_usage.sse"), "wb") as f:
        f.write(wrap_stream(read("bare/chat_completion_stream_usage.sse")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
