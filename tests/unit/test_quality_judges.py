"""Judges, the cache watch and the verdict buffer, without a network."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.config import CacheWatchSettings
from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder
from thrifty.proxy.quality.cache_watch import CacheWatch
from thrifty.proxy.quality.judges import EmbeddingJudge, ExactJudge, LlmJudge, answer_text, final_answer


@pytest.mark.parametrize("a, b, same", [
    ("The answer is (B).", "B", True),
    ("Let me think... so 6*7 = 42.\n#### 42", "The final answer is 42.", True),
    ("We get \\boxed{1,000}", "#### 1000", True),
    ("#### 41", "#### 42", False),
    ('{"city": "Paris", "n": 1}', '{"n": 1, "city": "Paris"}', True),
    ('{"city": "Paris"}', '{"city": "Lyon"}', False),
    ("  Paris. ", "paris", True),
    ("Paris", "Lyon", False),
    ("C", "answer: D", False),
])
async def test_exact_judge_compares_final_answers(a: str, b: str, same: bool) -> None:
    assert (final_answer(a) == final_answer(b)) is same
    assert await ExactJudge().score("q", a, b) == (1.0 if same else 0.0)


def test_answer_text_reads_chat_and_completions() -> None:
    assert answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert answer_text({"choices": [{"text": "yo"}]}) == "yo"
    assert answer_text({"choices": []}) is None and answer_text(None) is None


async def test_embedding_judge_uses_the_embedder() -> None:
    embedder = Embedder(HashedNgramEncoder(64))
    judge = EmbeddingJudge(embedder.embed, agree=0.9)
    try:
        assert await judge.score("q", "The capital of France is Paris.", "The capital of France is Paris.") == 1.0
        assert await judge.score("q", "The capital of France is Paris.", "zzz qqq 123 xyzzy plugh") == 0.0
        assert await judge.score("q", "", "x") is None
    finally:
        await embedder.aclose()


async def test_llm_judge_swaps_positions_and_cancels_position_bias() -> None:
    prompts: list[str] = []

    async def always_first(prompt: str) -> str:  # a judge that always prefers the first position
        prompts.append(prompt)
        return "1"

    score = await LlmJudge(always_first).score("Q?", "cheap answer", "reference answer")
    assert score == 0.5  # one win, one loss: position bias alone says nothing
    assert prompts[0].index("cheap answer") < prompts[0].index("reference answer")
    assert prompts[1].index("reference answer") < prompts[1].index("cheap answer")

    async def fair(prompt: str) -> str:
        return "TIE"

    assert await LlmJudge(fair).score("Q?", "a", "b") == 1.0

    async def broken(prompt: str) -> str | None:
        return None

    assert await LlmJudge(broken).score("Q?", "a", "b") is None


class _Cache:
    similarity_floor = 0.8


def test_cache_watch_raises_the_floor_only_on_evidence() -> None:
    cache = _Cache()
    watch = CacheWatch(CacheWatchSettings(precision_target=0.95, min_samples=20, step=0.01), cache)
    for _ in range(100):
        watch.observe("large", 1.0)  # all hits good: never raised
    assert cache.similarity_floor == 0.8 and watch.raised == 0
    for i in range(40):
        watch.observe("large", 0.0 if i % 3 == 0 else 1.0)  # a third false: confidently below 0.95
    assert watch.raised >= 1 and cache.similarity_floor == pytest.approx(0.8 + 0.01 * watch.raised)
    lo, hi = watch.bounds("large")
    assert 0 <= lo <= hi <= 1


def test_cache_watch_stops_at_the_cap() -> None:
    cache = _Cache()
    cache.similarity_floor = 0.985
    watch = CacheWatch(CacheWatchSettings(min_samples=5, step=0.01, max_floor=0.99), cache)
    for _ in range(50):
        watch.observe("r", 0.0)
    assert cache.similarity_floor == 0.99


def test_verdict_buffer_requeues_a_lost_window_in_order() -> None:
    from tests.unit.proxy_harness import config_for
    from thrifty.proxy.app import Sidecar
    from thrifty.wire.quality import ShadowVerdict

    sidecar = Sidecar(config_for({"small": ["http://127.0.0.1:9"], "large": ["http://127.0.0.1:9"]},
                                 quality={"enabled": True, "shadow": {"max_verdicts": 5}}))
    q = sidecar.quality
    assert q is not None
    vs = [ShadowVerdict("router", "small", "large", -1, i / 10, 1.0) for i in range(5)]
    q.verdicts.extend(vs)
    sent = q.drain(3)
    assert sent == vs[:3] and list(q.verdicts) == vs[3:]
    q.requeue(sent)  # the window was never acknowledged
    assert list(q.verdicts) == vs
    assert np.isclose(q.drain(10)[0].ease, 0.0)
