"""The streamed answer the relay assembles for the shadow judge."""

from __future__ import annotations

import json

from thrifty.proxy.http.stream_answer import StreamAnswer
from thrifty.proxy.quality.judges import answer_text


def _events(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_chat_deltas_of_the_first_choice_only_are_joined() -> None:
    a = StreamAnswer("chat")
    a.feed(_events({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                   {"choices": [{"index": 0, "delta": {"content": "Paris"}}, {"index": 1, "delta": {"content": "Rome"}}]}))
    assert a.body() is None  # not finished: no verdict on a cut-off answer
    a.feed(_events({"choices": [{"index": 0, "delta": {"content": " it is."}, "finish_reason": "stop"}]},
                   {"choices": [], "usage": {"prompt_tokens": 3}}))
    assert answer_text(a.body()) == "Paris it is."


def test_completions_text_is_bounded_and_garbage_is_skipped() -> None:
    a = StreamAnswer("completions", max_chars=5)
    a.feed(b"data: {not json\n\n: comment\n\n" + _events({"choices": [{"index": 0, "text": "abc"}]},
                                                         {"choices": [{"index": 0, "text": "defgh", "finish_reason": "length"}]}))
    assert answer_text(a.body()) == "abcde"
