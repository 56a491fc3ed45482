"""The Batch API with the official SDK: files and batches end to end through the sidecar's own
request path, durable across a sidecar restart (no line lost, none answered twice), scoped to
the caller's tenant, cancellable, with OpenAI-shaped errors; and the runner yields to
interactive traffic. Engine: the instant simulated replica (`StubBackend`, a fake)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest

from tests.unit import openai_schema as schema
from tests.unit.proxy_harness import config_for
from thrifty.proxy.app import Sidecar, bound_port, serve
from thrifty.proxy.batch.runner import BatchRunner
from thrifty.proxy.batch.store import BatchStore
from thrifty.sim.stub_backend import StubBackend, StubBehaviour


def batch_file(n: int, *, model: str = "alias-small", url: str = "/v1/chat/completions") -> bytes:
    return b"".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": {
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": f"question {i}"}]}}).encode() + b"\n"
        for i in range(n))


@asynccontextmanager
async def sidecar(urls: list[str], store: Path | None, *, concurrency: int = 4) -> AsyncIterator[tuple[Sidecar, str]]:
    batch = {"store": str(store), "concurrency": concurrency} if store else {}
    sc = Sidecar(config_for({"small": urls}, batch=batch), scrape_interval_s=0.1)
    listener = await serve(sc, "127.0.0.1", 0)
    try:
        yield sc, f"http://127.0.0.1:{bound_port(listener)}/v1"
    finally:
        await listener.cleanup()


@asynccontextmanager
async def backends(*behaviours: StubBehaviour) -> AsyncIterator[list[StubBackend]]:
    started = [StubBackend(b, name=f"b{i}") for i, b in enumerate(behaviours)]
    for b in started:
        await b.start()
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


async def wait_for(client: openai.AsyncOpenAI, batch_id: str, statuses: set[str], timeout_s: float = 30):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert asyncio.get_running_loop().time() < deadline, batch
        await asyncio.sleep(0.05)


async def output_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines() if line]


async def test_batch_end_to_end_with_the_sdk(tmp_path: Path) -> None:
    async with backends(StubBehaviour(), StubBehaviour()) as bs, sidecar([b.url for b in bs], tmp_path / "b.sqlite") as (sc, url):
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-a")
        uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(batch_file(20))), purpose="batch")
        assert uploaded.bytes == len(batch_file(20)) and uploaded.purpose == "batch"
        created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h", metadata={"job": "nightly"})
        assert created.request_counts.total == 20 and created.metadata == {"job": "nightly"}
        done = await wait_for(client, created.id, {"completed"})
        assert done.request_counts.completed == 20 and done.request_counts.failed == 0 and done.error_file_id is None
        lines = await output_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(20))
        for line in lines:
            assert line["response"]["status_code"] == 200 and line["error"] is None
            schema.check_chat_completion(line["response"]["body"], model="alias-small")
        assert sum(b.stats.requests for b in bs) == 20
        listed = await client.batches.list()
        assert [b.id for b in listed.data] == [created.id]
        reg = sc.metrics.registry
        assert reg.get_sample_value("thrifty_batch_lines_total", {"result": "done"}) == 20
        assert reg.get_sample_value("thrifty_lane_requests_total", {"lane": "batch", "outcome": "ok"}) == 20
        # deferrable work: not in the interactive request counts or latency the SLO and autoscaler read
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "miss"}) is None
        assert reg.get_sample_value("thrifty_ttft_seconds_count", {"tier": "small"}) in (None, 0)
        assert reg.get_sample_value("thrifty_tokens_total", {"tier": "small", "kind": "output"}) > 0  # but its work is
        # another tenant sees none of it
        other = openai.AsyncOpenAI(base_url=url, api_key="sk-b")
        with pytest.raises(openai.NotFoundError):
            await other.batches.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.content(done.output_file_id)
        assert (await other.batches.list()).data == []


async def test_restart_loses_nothing_and_answers_nothing_twice(tmp_path: Path) -> None:
    store = tmp_path / "b.sqlite"
    async with backends(StubBehaviour(delay_s=0.05)) as bs:
        async with sidecar([bs[0].url], store, concurrency=2) as (sc, url):
            client = openai.AsyncOpenAI(base_url=url, api_key="sk-a")
            uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(batch_file(30))), purpose="batch")
            created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h")
            while (await client.batches.retrieve(created.id)).request_counts.completed < 6:
                await asyncio.sleep(0.02)
        # the sidecar went away mid-batch (lines in flight were cut off); a new one takes over the same store
        before = bs[0].stats.requests
        assert before < 30
        async with sidecar([bs[0].url], store, concurrency=2) as (sc, url):
            client = openai.AsyncOpenAI(base_url=url, api_key="sk-a")
            done = await wait_for(client, created.id, {"completed"})
            lines = await output_lines(client, done.output_file_id)
        ids = [line["custom_id"] for line in lines]
        assert len(ids) == len(set(ids)) == 30 and done.request_counts.completed == 30
        assert bs[0].stats.requests <= 30 + 2  # at most the lines cut off in flight ran again


async def test_cancel_ends_the_batch_with_the_rest_in_the_error_file(tmp_path: Path) -> None:
    async with backends(StubBehaviour(delay_s=0.05)) as bs, sidecar([bs[0].url], tmp_path / "b.sqlite", concurrency=1) as (_, url):
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-a")
        uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(batch_file(40))), purpose="batch")
        created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")
        cancelling = await client.batches.cancel(created.id)
        assert cancelling.status in ("cancelling", "cancelled")
        ended = await wait_for(client, created.id, {"cancelled"})
        ok, failed = await output_lines(client, ended.output_file_id), await output_lines(client, ended.error_file_id)
        assert len(ok) + len(failed) == 40 and len(failed) >= 30
        assert {line["error"]["code"] for line in failed} == {"batch_cancelled"}


async def test_errors_are_openai_shaped(tmp_path: Path) -> None:
    async with backends(StubBehaviour()) as bs:
        async with sidecar([bs[0].url], None) as (_, url):
            with pytest.raises(openai.NotFoundError) as off:
                await openai.AsyncOpenAI(base_url=url, api_key="k").batches.list()
            assert off.value.body["code"] == "batch_api_disabled"
        async with sidecar([bs[0].url], tmp_path / "b.sqlite") as (_, url):
            client = openai.AsyncOpenAI(base_url=url, api_key="k")
            bad = await client.files.create(file=("in.jsonl", io.BytesIO(batch_file(2) + b"{not json\n")), purpose="batch")
            with pytest.raises(openai.BadRequestError) as exc:
                await client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
            assert "line 3" in exc.value.message
            good = await client.files.create(file=("in.jsonl", io.BytesIO(batch_file(2))), purpose="batch")
            with pytest.raises(openai.BadRequestError) as window:
                await client.batches.create(input_file_id=good.id, endpoint="/v1/chat/completions",
                                            completion_window="1h")  # type: ignore[arg-type]
            assert window.value.body["param"] == "completion_window"
            with pytest.raises(openai.BadRequestError) as url_mismatch:
                await client.batches.create(input_file_id=good.id, endpoint="/v1/completions", completion_window="24h")
            assert "url" in url_mismatch.value.message
            with pytest.raises(openai.NotFoundError):
                await client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")


class _Never:
    async def __call__(self, request):  # type: ignore[no-untyped-def]
        raise AssertionError("the runner must not start a line while interactive requests queue")


async def test_runner_waits_while_interactive_requests_queue(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "b.sqlite")
    await store.open()
    await store.add_file("t", "batch", "in.jsonl", batch_file(3))
    await store.create_batch("t", "/v1/chat/completions", "file-x", 3600, "24h", None,
                             [(f"r{i}", {"model": "m"}) for i in range(3)])
    runner = BatchRunner(store, _Never(), queued=lambda: 1, concurrency=4)
    runner.start()
    await asyncio.sleep(0.3)
    assert runner.backlog == 3
    await runner.stop()
    store.close()


def test_aimd_limit_grows_when_calm_and_halves_under_pressure() -> None:
    from thrifty.proxy.batch.pacing import AimdLimit, InteractivePressure

    pressure, limit = InteractivePressure(ttft_slo_s=2.0), AimdLimit(16, window_s=0.0)
    for _ in range(20):
        pressure.observe(0.2, queued=False)  # fast interactive answers
        limit.update(pressure, queued=False)
    assert limit.value == 16  # grew one per window, capped at the maximum
    pressure.observe(1.5, queued=False)  # over half the SLO: slow
    assert limit.update(pressure, queued=False) == 8
    assert limit.update(pressure, queued=True) == 4  # a request waits for a replica: at once
    assert limit.update(pressure, queued=False) == 5
