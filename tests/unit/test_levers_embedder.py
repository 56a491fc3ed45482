"""Embedder: micro-batching off the event loop, a vector cache, failures reach the caller."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder, encode_with_disk_cache, encoder_for


class SlowEncoder(HashedNgramEncoder):
    """The hashed encoder plus a blocking sleep per batch (stands in for a forward pass)."""

    def __init__(self) -> None:
        super().__init__(32)
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return super().encode(texts)


async def test_concurrent_requests_share_batches_off_the_loop() -> None:
    enc = SlowEncoder()
    embedder = Embedder(enc, max_batch=8, max_wait_s=0.01)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    vectors = await asyncio.gather(*(embedder.embed(f"question {i}") for i in range(16)))
    tick_task.cancel()
    assert len(vectors) == 16 and all(v.shape == (32,) for v in vectors)
    assert len(enc.batches) <= 4 and max(enc.batches) > 1  # batched
    assert ticks >= 5  # the loop kept running while the encoder slept
    assert all(name.startswith("thrifty-embed") for name in enc.threads)
    before = len(enc.batches)
    again = await embedder.embed("question 3")
    assert len(enc.batches) == before and np.array_equal(again, vectors[3])  # served from the cache
    await embedder.aclose()


class BrokenEncoder(HashedNgramEncoder):
    """An encoder that always fails."""

    def encode(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("no model")


async def test_encoder_failure_reaches_the_caller_and_loop_survives() -> None:
    embedder = Embedder(BrokenEncoder(16))
    with pytest.raises(RuntimeError, match="no model"):
        await embedder.embed("x")
    with pytest.raises(RuntimeError, match="no model"):
        await embedder.embed("y")
    await embedder.aclose()


def test_disk_cache_reuses_vectors(tmp_path: Path) -> None:
    enc = SlowEncoder()
    path = tmp_path / "e.npz"
    first = encode_with_disk_cache(enc, ["a", "b", "a"], str(path))
    calls = len(enc.batches)
    second = encode_with_disk_cache(enc, ["b", "a"], str(path))
    assert len(enc.batches) == calls and np.array_equal(first[1], second[0])


def test_encoder_by_name() -> None:
    assert encoder_for("hashed-ngrams:48").dim == 48
    with pytest.raises(ValueError, match="unknown embedder"):
        encoder_for("nope")
