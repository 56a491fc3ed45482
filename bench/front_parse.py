"""Parse cost per request of the front door and the upstream client, with no sockets.

Feeds `HttpConnection` one whole request (an aiohttp client's 7-header head and a
2-byte body) and `UpstreamResponse` a JSON answer and a chunked 5-event SSE answer,
50,000 times each, and prints the best of 5 in microseconds. `--front`/`--upstream`
load another version of those modules from a file, to compare against, e.g.:
`git show 9f94ffb:proxy/http/front.py > /tmp/front_old.py` then
`python -m thrifty.bench.front_parse --front /tmp/front_old.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from types import ModuleType

from thrifty.config import TimeoutSettings

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
           b"User-Agent: Python/3.11 aiohttp/3.14.5\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
           b"Content-Length: 2\r\n\r\n{}")
BODY = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"a b c d"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":4,"total_tokens":34}}')
JSON_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
               b"Date: Fri, 04 Dec 2026 19:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n" % len(BODY)) + BODY
_EVENTS = [b'data: {"id":"x","choices":[{"delta":{"content":"w%d"}}]}\n\n' % i for i in range(4)] + [b"data: [DONE]\n\n"]
SSE_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nDate: x\r\nServer: y\r\n\r\n"
              + b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in _EVENTS) + b"0\r\n\r\n")


def _load(path: str | None, default: str) -> ModuleType:
    if path is None:
        return importlib.import_module(default)
    spec = importlib.util.spec_from_file_location(f"_bench_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _best_us(step, n: int = 50_000, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return round(best, 2)


class _Front:
    """Stands in for `FrontServer`: the attributes a connection reads, no socket."""

    hot_paths = frozenset({"/v1/chat/completions"})
    max_body_bytes = 8 << 20
    head_timeout_s = body_timeout_s = 10.0
    min_body_bytes_per_s = 65536.0

    def __init__(self) -> None:
        self.connections: set[object] = set()


class _Transport:
    """Stands in for a transport: flow control calls are no-ops."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool:
        return False


async def run(front_path: str | None, upstream_path: str | None) -> dict[str, float]:
    front = _load(front_path, "thrifty.proxy.http.front")
    upstream = _load(upstream_path, "thrifty.proxy.http.upstream")
    conn = front.HttpConnection(_Front())
    got: list[object] = []
    conn._dispatch = got.append

    def request() -> None:
        conn._task = None
        conn.data_received(REQUEST)

    out = {"request_us": _best_us(request)}
    assert got and got[-1].body == b"{}", "the request was not parsed"  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    timeouts = TimeoutSettings(connect_s=1, first_byte_s=5, total_s=10)
    up = upstream._Connection()
    up.transport = _Transport()
    for name, data in (("json_answer_us", JSON_ANSWER), ("sse_answer_us", SSE_ANSWER)):
        def answer(data: bytes = data) -> None:
            resp = upstream.UpstreamResponse(up, loop, timeouts)
            up.response = resp
            up.data_received(data)
            assert resp.complete
            resp.release(None)
            up.closed = False

        out[name] = _best_us(answer)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m thrifty.bench.front_parse", description=__doc__.splitlines()[0])
    p.add_argument("--front", default=None, help="a front.py to load instead of thrifty.proxy.http.front")
    p.add_argument("--upstream", default=None, help="an upstream.py to load instead of thrifty.proxy.http.upstream")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.front, args.upstream))
    for key, value in result.items():
        print(f"{key:<18}{value:>8.2f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
