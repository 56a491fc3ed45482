"""A corpus of bad requests: each gets a 4xx OpenAI-style JSON error, and the process stays lean.

The memory check runs the real `thrifty proxy` CLI in a subprocess and reads its RSS.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.unit.proxy_harness import bare_sidecar_process, rss_kb, stack
from thrifty.sim.stub_backend import StubBehaviour

CHAT = {"model": "small-model", "messages": [{"role": "user", "content": "hi"}]}
JSON_CT = {"Content-Type": "application/json"}


def _corpus() -> list[tuple[str, bytes, dict[str, str], int]]:
    """(name, body, headers, expected status)."""
    def j(obj: object) -> bytes:
        return json.dumps(obj).encode()

    return [
        ("malformed json", b'{"model": "small-model", "messages": [', JSON_CT, 400),
        ("not an object", j([1, 2]), JSON_CT, 400),
        ("empty body", b"", JSON_CT, 400),
        ("model wrong type", j({**CHAT, "model": 5}), JSON_CT, 400),
        ("messages wrong type", j({**CHAT, "messages": "hi"}), JSON_CT, 400),
        ("message without role", j({**CHAT, "messages": [{"content": "x"}]}), JSON_CT, 400),
        ("missing messages", j({"model": "small-model"}), JSON_CT, 400),
        ("unknown model", j({**CHAT, "model": "gpt-9"}), JSON_CT, 404),
        ("negative max_tokens", j({**CHAT, "max_tokens": -1}), JSON_CT, 400),
        ("huge max_tokens", j({**CHAT, "max_tokens": 10**12}), JSON_CT, 400),
        ("max_tokens as a non-numeric string", j({**CHAT, "max_tokens": "ten"}), JSON_CT, 400),
        ("stream not bool", j({**CHAT, "stream": "maybe"}), JSON_CT, 400),
        ("temperature out of range", j({**CHAT, "temperature": -1}), JSON_CT, 400),
        ("invalid utf-8", b'{"model": "small-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON_CT, 400),
        ("wrong content type", j(CHAT), {"Content-Type": "text/plain"}, 415),
        ("form content type", b"model=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ]


async def test_each_bad_request_gets_a_4xx_json_error() -> None:
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        cases = [*_corpus(), ("10 MB body", b'{"model": "small-model", "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}', JSON_CT, 413)]
        for name, body, headers, status in cases:
            async with http.post(s.url + "/v1/chat/completions", data=body, headers=headers) as resp:
                assert resp.status == status, name
                err = await resp.json()
                assert isinstance(err["error"]["message"], str) and err["error"]["message"], name
        async with http.get(s.url + "/v1/chat/completions") as resp:
            assert resp.status == 405 and (await resp.json())["error"]
        assert s.backends[0].stats.requests == 0  # none of it reached the replica
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200  # still serving


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RSS")
async def test_memory_flat_across_10000_bad_requests(tmp_path: Path) -> None:
    async with bare_sidecar_process(tmp_path, start_timeout_s=20) as (proc, port):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        corpus = _corpus()
        async with aiohttp.ClientSession() as http:
            async def send(n: int) -> None:
                async def worker(k: int) -> None:
                    for i in range(k, n, 16):
                        name, body, headers, status = corpus[i % len(corpus)]
                        async with http.post(url, data=body, headers=headers) as resp:
                            assert resp.status == status, name
                            await resp.read()
                await asyncio.gather(*(worker(k) for k in range(16)))

            await send(2000)  # warm-up: caches, pools, arenas settle
            before = rss_kb(proc.pid)
            await send(8000)
            after = rss_kb(proc.pid)
        assert proc.poll() is None, "the sidecar died"
        assert after - before < 4096, f"RSS grew {after - before} kB over 8,000 bad requests"
