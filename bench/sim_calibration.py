"""`thrifty bench sim-calibration`: the simulator's step model against real engines.

With `--gpu FILE` (a ../shared/tools/gpu/step_time.py result, e.g.
../shared/data/gpu/h200_step_time.json) it replays every measured step (lone prefill, decode
batch at a context, mixed prefill+decode) through the profile's step-time function and
prints sim / measured per point; goal: every point within 15%. Nothing runs; seconds.

Without it, the CPU profile against the real vLLM CPU engine on this machine: both get the same ShareGPT first prompts at concurrency 1, 2 and 4 (closed loop: each
worker sends its next prompt when the previous answer ends), streamed through the chat
API with a fixed answer length (`ignore_eos`), so TTFT and output tokens/s compare like
for like. The real engine is measured first, then the simulator, never both at once (the
simulator would steal the real engine's cores). Ratios are sim / real; the goal is
within 2x at every point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from thrifty.profiles import CPU_PROFILE, PROFILES, get_profile
from thrifty.sim.server import running_sim_server
from thrifty.sim.step_fit import fit_step_model, load_step_time_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = REPO.parent / "shared" / "data" / "prompts" / "sharegpt_500.json"
MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True, slots=True)
class LevelResult:
    concurrency: int
    requests: int
    ttft_s: float  # mean time to first token
    tokens_per_s: float  # output tokens / wall seconds of the level
    prompt_tokens: float  # mean, as the engine counted them


def load_prompts(path: Path, count: int, max_chars: int) -> list[str]:
    """First human turns of ShareGPT conversations, in file order, trimmed to `max_chars`."""
    with open(path) as f:
        conversations = json.load(f)
    prompts = []
    for conv in conversations:
        turns = conv.get("conversations") or []
        if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip():
            prompts.append(turns[0]["value"].strip()[:max_chars])
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"{path}: only {len(prompts)} usable prompts, need {count}")
    return prompts


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> tuple[float, int, int]:
    """(TTFT seconds, completion tokens, prompt tokens) of one streamed chat request."""
    started = time.perf_counter()
    ttft = None
    usage = None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
        if chunk.usage is not None:
            usage = chunk.usage
    if ttft is None or usage is None:
        raise RuntimeError("stream ended without tokens or usage")
    return ttft, usage.completion_tokens, usage.prompt_tokens


async def run_level(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> LevelResult:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=300)
    queue = list(prompts)
    results: list[tuple[float, int, int]] = []

    async def worker() -> None:
        while queue:
            results.append(await one_request(client, model, queue.pop(0), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await client.close()
    return LevelResult(
        concurrency=concurrency, requests=len(results), ttft_s=statistics.mean(r[0] for r in results),
        tokens_per_s=sum(r[1] for r in results) / wall, prompt_tokens=statistics.mean(r[2] for r in results),
    )


async def measure(base_url: str, model: str, prompts: list[str], levels: list[int], per_level: int,
                  max_tokens: int) -> list[LevelResult]:
    await one_request(openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none"), model, prompts[-1], 4)  # warm up
    out = []
    for c in levels:
        out.append(await run_level(base_url, model, prompts[: per_level * c], c, max_tokens))
    return out


def start_real_engine(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start vLLM's CPU build with SmolLM2 the way the test fixture does; returns (process, url)."""
    from thrifty.engine.launcher import cpu_engine_venv

    venv = cpu_engine_venv()
    if venv is None or not (venv / "models" / MODEL).is_dir():
        raise RuntimeError("no real engine installed: run `thrifty engine setup-cpu` or pass --engine-url")
    from thrifty.engine.cpu_profile import start_cpu_engine

    return start_cpu_engine(venv, log_dir / "vllm.log")


def print_table(real: list[LevelResult], sim: list[LevelResult]) -> tuple[list[float], list[float]]:
    print(f"{'conc':>4} {'reqs':>4} {'prompt tok':>10} | {'TTFT real ms':>12} {'TTFT sim ms':>11} {'ratio':>6} | "
          f"{'tok/s real':>10} {'tok/s sim':>9} {'ratio':>6}")
    ttft_ratio, tps_ratio = [], []
    for r, s in zip(real, sim, strict=True):
        tr, pr = s.ttft_s / r.ttft_s, s.tokens_per_s / r.tokens_per_s
        ttft_ratio.append(round(tr, 3))
        tps_ratio.append(round(pr, 3))
        print(f"{r.concurrency:>4} {r.requests:>4} {r.prompt_tokens:>5.0f}/{s.prompt_tokens:<4.0f} | "
              f"{r.ttft_s * 1000:>12.1f} {s.ttft_s * 1000:>11.1f} {tr:>6.2f} | "
              f"{r.tokens_per_s:>10.1f} {s.tokens_per_s:>9.1f} {pr:>6.2f}")
    return ttft_ratio, tps_ratio


GPU_PROFILE = "h200-llama3-8b"
GPU_GOAL = 0.15  # every measured step within 15%


def replay_gpu(path: Path, profile_name: str) -> dict[str, object]:
    """Every measured step through the profile's step_time: per point sim/measured, worst, RMS, and a refit."""
    points = load_step_time_json(str(path))
    profile = get_profile(profile_name)
    rows = []
    for p in points:
        sim = profile.step_time(p.prefill_tokens, p.decode_tokens, p.context_tokens, p.prefill_pairs)
        rows.append({"point": p.label, "measured_ms": round(p.seconds * 1e3, 3), "sim_ms": round(sim * 1e3, 3),
                     "ratio": round(sim / p.seconds, 4), "rel_error": sim / p.seconds - 1})
    worst = max(rows, key=lambda r: abs(r["rel_error"]))
    rms = (sum(r["rel_error"] ** 2 for r in rows) / len(rows)) ** 0.5
    refit = fit_step_model(points)
    for r in rows:
        r["rel_error"] = round(r["rel_error"], 4)
    return {
        "bench": "sim-calibration", "mode": "gpu", "file": str(path), "profile": profile_name,
        "max_rel_error": round(abs(worst["rel_error"]), 4), "worst_point": worst["point"],
        "rms_rel_error": round(rms, 4), "within_15pct": abs(worst["rel_error"]) <= GPU_GOAL, "points": rows,
        "refit": {"step_overhead_s": refit.step_overhead_s, "weight_read_s": refit.weight_read_s,
                  "prefill_token_s": refit.prefill_token_s, "decode_token_s": refit.decode_token_s,
                  "context_token_s": refit.context_token_s, "prefill_pair_s": refit.prefill_pair_s,
                  "rms_rel_error": round(refit.rms_rel_error, 4),
                  "max_rel_error": round(refit.max_rel_error, 4)},
    }


def print_gpu(result: dict[str, object]) -> None:
    print(f"simulator profile {result['profile']} vs the steps measured in {result['file']}")
    print(f"{'step':<26} {'measured ms':>11} {'sim ms':>9} {'sim/meas':>8}")
    for r in result["points"]:  # type: ignore[union-attr]
        print(f"{r['point']:<26} {r['measured_ms']:>11.2f} {r['sim_ms']:>9.2f} {r['ratio']:>8.3f}")
    refit = result["refit"]
    print(f"worst {result['worst_point']}: {result['max_rel_error']:.1%}; RMS {result['rms_rel_error']:.1%} "
          f"(a fresh least-squares refit on this file: RMS {refit['rms_rel_error']:.1%}, worst {refit['max_rel_error']:.1%})")  # type: ignore[index]


def profile_source(name: str) -> str:
    """Where the simulator's profile comes from: the file measured on this machine, or 'shipped'."""
    from thrifty.profile_cache import profile_path

    path = profile_path(name)
    return str(path) if get_profile(name) is not PROFILES[name] else "shipped"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thrifty bench sim-calibration", description=__doc__.splitlines()[0])
    p.add_argument("--engine-url", default=None, help="a running real vLLM CPU engine serving SmolLM2 (default: start one)")
    p.add_argument("--model", default=MODEL, help="served model name on both")
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="ShareGPT JSON (default ../shared/data/prompts/sharegpt_500.json)")
    p.add_argument("--concurrency", default="1,2,4", help="comma-separated levels (default 1,2,4)")
    p.add_argument("--per-level", type=int, default=2, help="requests per worker at each level (default 2)")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length, forced with ignore_eos (default 16)")
    p.add_argument("--max-prompt-chars", type=int, default=600, help="trim prompts to this many characters (default 600; the CPU engine prefills ~40 tokens/s)")
    p.add_argument("--profile", default=None,
                   help=f"simulator profile (default {CPU_PROFILE}; with --gpu, {GPU_PROFILE})")
    p.add_argument("--gpu", type=Path, default=None, metavar="FILE",
                   help="replay the steps measured in a step_time.py JSON (../shared/data/gpu/h200_step_time.json) instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    if args.gpu is not None:
        try:
            result = replay_gpu(args.gpu, args.profile or GPU_PROFILE)
        except ValueError as exc:
            print(f"sim-calibration: {exc}", file=sys.stderr)
            return 2
        print_gpu(result)
        print(json.dumps(result))
        return 0 if result["within_15pct"] else 1
    args.profile = args.profile or CPU_PROFILE
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
        if not levels or min(levels) < 1 or args.per_level < 1 or args.max_tokens < 2:
            raise ValueError("--concurrency levels, --per-level must be >= 1 and --max-tokens >= 2")
        if not args.prompts.exists():
            raise ValueError(f"prompts file {args.prompts} not found")
        prompts = load_prompts(args.prompts, args.per_level * max(levels), args.max_prompt_chars)
    except ValueError as exc:
        print(f"sim-calibration: {exc}", file=sys.stderr)
        return 2

    proc = None
    url = args.engine_url
    with tempfile.TemporaryDirectory(prefix="sim-calibration-") as tmp:
        try:
            if url is None:
                proc, url = start_real_engine(Path(tmp))
            real = asyncio.run(measure(url.rstrip("/"), args.model, prompts, levels, args.per_level, args.max_tokens))
        except (RuntimeError, openai.APIError) as exc:
            print(f"sim-calibration: real engine: {exc}", file=sys.stderr)
            return 1
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    async def simulate() -> list[LevelResult]:
        async with running_sim_server(args.profile, served_model_names=[args.model]) as sim_url:
            return await measure(sim_url, args.model, prompts, levels, args.per_level, args.max_tokens)

    sim = asyncio.run(simulate())
    print(f"simulator profile {args.profile} ({profile_source(args.profile)}) vs real vLLM CPU ({url}); "
          f"{args.max_tokens} output tokens per request")
    ttft_ratio, tps_ratio = print_table(real, sim)
    within = all(0.5 <= r <= 2.0 for r in ttft_ratio + tps_ratio)
    print(json.dumps({
        "bench": "sim-calibration", "profile": args.profile, "profile_source": profile_source(args.profile),
        "concurrency": levels,
        "ttft_ratio": ttft_ratio, "tps_ratio": tps_ratio, "within_2x": within,
        "real": {"ttft_ms": [round(r.ttft_s * 1000, 1) for r in real], "tokens_per_s": [round(r.tokens_per_s, 1) for r in real]},
        "sim": {"ttft_ms": [round(s.ttft_s * 1000, 1) for s in sim], "tokens_per_s": [round(s.tokens_per_s, 1) for s in sim]},
    }))
    return 0
