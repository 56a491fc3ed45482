"""The whole OpenAI surface through `thrifty up --engine sim` (the demo fleet, every replica
simulated), with the official SDK, each answer checked against the OpenAI schema
(tests/unit/openai_schema.py): chat (plain, stream, include_usage, n, logprobs, tools,
json_schema), completions, responses (plain, stream, previous_response_id, retrieve), models
list/retrieve, embeddings (no pooling tier: a clear 404), files + batches end to end,
service_tier, and 400/404 errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from tests.realparts import free_port_block, wait_http
from tests.unit import openai_schema as schema

MSG = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    logs = tmp_path_factory.mktemp("up-surface")
    base = free_port_block(500)
    proc = subprocess.Popen([sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--no-controller",
                             "--port-base", str(base), "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        wait_http(f"http://127.0.0.1:{base}/healthz", 120, proc)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{base}/v1", api_key="sk-surface", max_retries=0, timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert "Traceback" not in out, out


def dump(obj) -> dict:  # type: ignore[no-untyped-def]
    return obj.model_dump(exclude_unset=True)


def test_chat_variants(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8)
    schema.check_chat_completion(dump(plain), model="gpt-4o")
    several = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=4, n=2, logprobs=True,
                                             top_logprobs=2)
    schema.check_chat_completion(dump(several), model="gpt-4o-mini")
    assert len(several.choices) == 2 and several.choices[0].logprobs is not None
    called = client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8, tools=TOOLS)
    schema.check_chat_completion(dump(called), model="gpt-4o")
    structured = client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8, response_format={
        "type": "json_schema", "json_schema": {"name": "greeting", "schema": {"type": "object"}}})
    schema.check_chat_completion(dump(structured), model="gpt-4o")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    for chunk in chunks:
        schema.check_chunk(dump(chunk), chat=True, model="gpt-4o", usage_allowed=True)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    quiet = list(client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8, stream=True))
    for chunk in quiet:
        schema.check_chunk(chunk.model_dump(exclude_unset=True), chat=True, model="gpt-4o")


def test_completions_models_embeddings(client: openai.OpenAI) -> None:
    done = client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=8)
    schema.check_completion(dump(done), model="gpt-4o-mini")
    listed = client.models.list()
    for model in listed.data:
        schema.check_model(dump(model))
    assert {"gpt-4o", "gpt-4o-mini"} <= {m.id for m in listed.data}
    schema.check_model(dump(client.models.retrieve("gpt-4o")))
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    schema.check_error({"error": missing.value.body})
    with pytest.raises(openai.NotFoundError) as no_pooling:
        client.embeddings.create(model="gpt-4o", input="hello")
    assert no_pooling.value.body["code"] == "model_not_found"


def test_responses(client: openai.OpenAI) -> None:
    first = client.responses.create(model="gpt-4o", input="Remember 7.", max_output_tokens=16)
    schema.check_response(dump(first), model="gpt-4o")
    follow = client.responses.create(model="gpt-4o", input="What number?", max_output_tokens=16,
                                     previous_response_id=first.id)
    schema.check_response(dump(follow), model="gpt-4o")
    assert follow.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(first.id).id == first.id
    events = list(client.responses.create(model="gpt-4o-mini", input="Stream.", max_output_tokens=8, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    schema.check_response(dump(events[-1].response), model="gpt-4o-mini")


def test_service_tier_and_errors(client: openai.OpenAI) -> None:
    for tier in ("priority", "flex", "auto", "default"):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG, max_tokens=4, service_tier=tier)
        if tier == "priority":
            assert raw.headers["x-thrifty-tier"] == "large"  # never routed down
        schema.check_chat_completion(json.loads(raw.http_response.content), model="gpt-4o")
    with pytest.raises(openai.BadRequestError) as bad_tier:
        client.chat.completions.create(model="gpt-4o", messages=MSG, service_tier="gold")  # type: ignore[arg-type]
    assert bad_tier.value.body["param"] == "service_tier"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o", messages=[])
    schema.check_error({"error": bad.value.body})
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-5-ultra", messages=MSG)
    schema.check_error({"error": unknown.value.body})


def test_files_and_batches(client: openai.OpenAI) -> None:
    lines = b"".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "gpt-4o-mini", "max_tokens": 4, "messages": MSG}}).encode() + b"\n"
                     for i in range(8))
    uploaded = client.files.create(file=("jobs.jsonl", io.BytesIO(lines)), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == len(lines)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in out) == [f"c{i}" for i in range(8)]
    for line in out:
        schema.check_chat_completion(line["response"]["body"], model="gpt-4o-mini")
    assert batch.id in {b.id for b in client.batches.list().data}
