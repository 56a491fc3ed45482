"""The official `openai` SDK, unchanged, with only `base_url` pointed at the sidecar (stub replica)."""

from __future__ import annotations

import openai
import pytest

from tests.unit.proxy_harness import stack
from thrifty.sim.stub_backend import StubBehaviour

MSG = [{"role": "user", "content": "hi"}]


async def test_sdk_chat_stream_completions_tools_n_logprobs_errors() -> None:
    async with stack([StubBehaviour(chunks=3)]) as s:
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
        chat = await client.chat.completions.create(model="alias-small", messages=MSG, max_tokens=5, n=2, logprobs=True,
                                                    top_logprobs=1)
        assert len(chat.choices) == 2 and chat.choices[1].message.content
        assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
        assert chat.usage is not None and chat.usage.completion_tokens == 6

        pieces = []
        stream = await client.chat.completions.create(model="small-model", messages=MSG, stream=True)
        async for chunk in stream:
            assert chunk.usage is None
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        assert "".join(pieces) == "w0 w1 w2 "

        stream = await client.chat.completions.create(model="small-model", messages=MSG, stream=True,
                                                      stream_options={"include_usage": True})
        last = None
        async for chunk in stream:
            last = chunk
        assert last is not None and last.usage is not None and last.usage.completion_tokens == 3

        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
        tool_answer = await client.chat.completions.create(model="small-model", messages=MSG, tools=tools)
        assert tool_answer.choices[0].message.tool_calls[0].function.name == "get_weather"

        completion = await client.completions.create(model="small-model", prompt="Say", max_tokens=4, logprobs=1)
        assert completion.choices[0].text == "w0 w1 w2 " and completion.choices[0].logprobs is not None
        text_stream = await client.completions.create(model="small-model", prompt="Say", stream=True)
        assert "".join([c.choices[0].text async for c in text_stream if c.choices]) == "w0 w1 w2 "

        emb = await client.embeddings.create(model="small-model", input=["a", "b"])
        assert len(emb.data) == 2

        models = await client.models.list()
        assert "alias-small" in {m.id for m in models.data}

        with pytest.raises(openai.NotFoundError) as nf:
            await client.chat.completions.create(model="gpt-nope", messages=MSG)
        assert "does not exist" in str(nf.value)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="small-model", messages=MSG, max_tokens=-3)
        assert "max_tokens" in str(bad.value)
        await client.close()
