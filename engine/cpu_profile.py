"""Measure the real vLLM CPU engine on this machine and fit the simulator's step model to it.

`thrifty engine setup-cpu` runs this once (about two minutes on 2 cores) and stores the
result in the user cache (thrifty/profile_cache.py), so the simulator's CPU profile matches
the machine it runs on instead of the one it was first measured on.

What it measures, through the OpenAI API as clients see it (so HTTP and tokenizer costs
land in the fixed step cost, as they do in `thrifty bench sim-calibration`):
- lone prefills of a few prompt lengths: the time of a 1-token completion;
- decode steps at batch 1-8 and two context lengths: the interval between streamed tokens
  while B requests decode together.
Each point is measured REPEATS times, rounds interleaved so a burst of other work on a shared
machine hits one round of every point rather than every round of one, and the median kept.
Prompts are random token ids, different per request, so the prefix cache never helps.
Then `fit_step_model` (sim/step_fit.py) fits the same roofline as the GPU profiles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from thrifty.profiles import CPU_PROFILE, PROFILES, GpuProfile
from thrifty.sim.step_fit import StepFit, StepPoint, fit_step_model

MODEL = "SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 8
PREFILL_TOKENS = (32, 128, 384, 1024)
REPEATS = 3  # each point measured this many times (interleaved), the median kept: the machine may be shared
# (batch, prompt tokens); each streams DECODE_TOKENS tokens
DECODE_POINTS = ((1, 64), (2, 64), (4, 64), (8, 64), (1, 1024), (4, 768))
DECODE_TOKENS = 24
_VOCAB = (1000, 40000)  # ordinary SmolLM2 token ids


def start_cpu_engine(venv: Path, log_path: Path, timeout_s: float = 400) -> tuple[subprocess.Popen, str]:
    """Start vLLM's CPU build with SmolLM2 the way the test fixture does; returns (process, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(venv / "models" / MODEL),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS), "--enable-prefix-caching",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    print(f"starting the real engine on {url} (about a minute) ...", file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(1)
    stop_engine(proc)
    raise RuntimeError(f"vLLM did not become ready in {timeout_s:.0f} s; see {log_path}")


def stop_engine(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cache_config(url: str) -> dict[str, int]:
    """num_gpu_blocks and block_size from the engine's vllm:cache_config_info metric ({} if absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next((ln for ln in text.splitlines() if ln.startswith("vllm:cache_config_info{")), "")
    out = {}
    for key in ("num_gpu_blocks", "block_size"):
        m = re.search(rf'{key}="(\d+)"', line)
        if m:
            out[key] = int(m.group(1))
    return out


class _Prompts:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def make(self, n: int) -> list[int]:
        return [self._rng.randint(*_VOCAB) for _ in range(n)]


async def _complete(session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int) -> list[float]:
    """Stream one completion; returns the arrival time of every chunk that carries a token."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    stamps = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"engine answered {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("choices"):
                    stamps.append(time.perf_counter())
    return stamps


async def measure_points(url: str, seed: int = 0) -> list[StepPoint]:
    """The lone-prefill and decode steps (see the module docstring)."""
    prompts = _Prompts(seed)
    points = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _complete(session, url, prompts.make(16), 4)  # warm up
        prefill: dict[int, list[float]] = {n: [] for n in PREFILL_TOKENS}
        decode: dict[tuple[int, int], list[float]] = {p: [] for p in DECODE_POINTS}
        for _ in range(REPEATS):
            for n in PREFILL_TOKENS:
                started = time.perf_counter()
                await _complete(session, url, prompts.make(n), 1)
                prefill[n].append(time.perf_counter() - started)
            for batch, prompt in DECODE_POINTS:
                streams = await asyncio.gather(*(_complete(session, url, prompts.make(prompt), DECODE_TOKENS)
                                                 for _ in range(batch)))
                # intervals while all `batch` decode together: after the last first token, before the first last one
                start, end = max(s[0] for s in streams), min(s[-1] for s in streams)
                gaps = [b - a for s in streams for a, b in zip(s, s[1:], strict=False) if a >= start and b <= end]
                if not gaps:
                    raise RuntimeError(f"decode batch {batch}: the streams never decoded together")
                decode[(batch, prompt)].append(statistics.median(gaps))
    points = [StepPoint(f"prefill P={n}", n, 0, 0, statistics.median(t), n * n / 2) for n, t in prefill.items()]
    points += [StepPoint(f"decode B={b} L={p}", 0, b, b * (p + DECODE_TOKENS / 2), statistics.median(t))
               for (b, p), t in decode.items()]
    return points


def profile_from_fit(fit: StepFit, cache: dict[str, int], shipped: GpuProfile) -> GpuProfile:
    cpus = os.cpu_count() or 0
    return dataclasses.replace(
        shipped,
        hardware=f"{cpus} CPU cores ({platform.processor() or platform.machine()}), measured here",
        step_overhead_s=fit.step_overhead_s, weight_read_s=fit.weight_read_s, prefill_token_s=fit.prefill_token_s,
        decode_token_s=fit.decode_token_s, context_token_s=fit.context_token_s, prefill_pair_s=fit.prefill_pair_s,
        kv_blocks=cache.get("num_gpu_blocks", shipped.kv_blocks), block_tokens=cache.get("block_size", shipped.block_tokens),
    )


def measure_cpu_profile(venv: Path, log_dir: Path) -> tuple[GpuProfile, dict[str, object]]:
    """Start the engine, measure, stop it; (fitted profile, measurement record for the cache file)."""
    proc, url = start_cpu_engine(venv, log_dir / "vllm-measure.log")
    try:
        print("measuring prefill and decode steps (a minute or two) ...", file=sys.stderr, flush=True)
        points = asyncio.run(measure_points(url))
        cache = cache_config(url)
    finally:
        stop_engine(proc)
    fit = fit_step_model(points)
    profile = profile_from_fit(fit, cache, PROFILES[CPU_PROFILE])
    record = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "engine": str(venv),
        "rms_rel_error": round(fit.rms_rel_error, 4), "max_rel_error": round(fit.max_rel_error, 4),
        "points": [{"point": p.label, "prefill_tokens": p.prefill_tokens, "decode_tokens": p.decode_tokens,
                    "context_tokens": p.context_tokens, "prefill_pairs": p.prefill_pairs, "measured_s": round(p.seconds, 5),
                    "fit_s": round(fit.predict(p), 5)} for p in points],
    }
    return profile, record
