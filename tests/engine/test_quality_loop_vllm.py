"""The quality loop on the real vLLM CPU engine (SmolLM2-135M): a shadow request reaches the
reference tier, the verdict reaches the controller over the real gRPC stream, the threshold
moves and the sidecar's router applies it.

As in test_levers_vllm.py, two tiers point at the one engine (it serves two names), so the
cheap and reference answers at temperature 0 agree and the exact judge scores them 1: the
controller must loosen the configured all-to-reference threshold (1.0) and the sidecar must
then send requests to the cheap tier. The unit-test twin on simulator replicas (answers that
disagree, so the threshold rises instead) is tests/unit/test_quality_loop.py.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from thrifty.config import parse_config
from thrifty.controller.grpc_server import start_grpc
from thrifty.controller.service import ControlPlane
from thrifty.proxy.app import Sidecar, bound_port, serve
from thrifty.proxy.levers.cost_levers import CostLevers
from thrifty.proxy.observe.telemetry import TelemetryClient

pytestmark = pytest.mark.engine
TOKEN = b"telemetry-token-0123456789"
PROMPTS = ["Name a primary colour.", "What is 2 plus 3?", "Say hello in French.", "Name a planet.",
           "What is the opposite of hot?", "Name a fruit that is yellow.", "How many legs does a spider have?",
           "What colour is the sky?", "Name an ocean.", "What is 10 minus 4?", "Name a musical instrument.",
           "What is the capital of Italy?", "Name a farm animal.", "What is 3 times 3?", "Name a season.",
           "Spell the word cat backwards."]


async def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_shadow_verdicts_reach_the_controller_and_move_the_threshold(vllm_engine) -> None:
    fleet = {
        "tiers": [
            {"name": "small", "model": vllm_engine.model, "engine": {"kind": "external"},
             "price": {"input_per_1m": 0.1, "output_per_1m": 0.2}, "replicas": {"count": 1, "urls": [vllm_engine.url]}},
            {"name": "large", "model": "gpt-4o-mini", "engine": {"kind": "external"},
             "price": {"input_per_1m": 5, "output_per_1m": 15}, "replicas": {"count": 1, "urls": [vllm_engine.url]}},
        ],
        "router": {"threshold": 1.0},  # start with everything on the reference tier
        "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}},
        # target 0.9: 16 verdicts against the calibrator's 20-verdict prior must be able to clear it
        # one pooled threshold: 16 prompts cannot give each of the artifact's 16 topic clusters evidence
        "quality": {"target": 0.9, "cluster_thresholds": False, "shadow": {"rate": 1.0, "max_inflight": 2}, "control": {"rate": 0.0}},
    }
    config = parse_config(fleet)
    plane = ControlPlane(config)
    server, port = await start_grpc(plane, "127.0.0.1:0", token=TOKEN)
    sidecar = Sidecar(config)
    sidecar.set_levers(CostLevers(config, sidecar.metrics.registry))
    runner = await serve(sidecar, "127.0.0.1", 0)
    telemetry = TelemetryClient(f"127.0.0.1:{port}", sidecar.metrics.registry, "sidecar-engine", sidecar.apply_policy,
                                interval_s=0.5, token=TOKEN, verdicts=sidecar.quality)
    await telemetry.start()
    registry = sidecar.metrics.registry

    def served(tier: str) -> float:  # caches are off, so requests count as cache "bypass"
        return sum(registry.get_sample_value("thrifty_requests_total", {"tier": tier, "outcome": "ok", "cache": c}) or 0.0
                   for c in ("miss", "bypass"))

    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{bound_port(runner)}/v1", api_key="tenant-key",
                                    max_retries=0, timeout=120)
        await _wait(lambda: telemetry.connected, 30)
        for prompt in PROMPTS[:16]:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=8, temperature=0)
            await _wait(lambda: sidecar.quality.inflight == 0, 120)  # one shadow at a time on a CPU engine
        assert served("small") == 0  # threshold 1.0: all on the reference
        # counterfactual shadow calls reached the cheap tier; their verdicts reached the controller
        assert (registry.get_sample_value("thrifty_shadow_calls_total", {"tier": "small", "result": "ok"}) or 0) >= 12
        await _wait(lambda: plane.quality.verdicts >= 12, 30)
        await plane.tick()
        threshold = plane.policy["router_threshold"]
        assert threshold is not None and threshold < 1.0, plane.quality.to_json(threshold)
        await _wait(lambda: sidecar.levers.router_threshold == threshold, 30)  # pushed and applied
        sidecar.quality.settings.shadow.rate = 0.0
        before = served("small")
        decided: list[tuple[float, str]] = []  # (ease score, tier) of each routed request from here on
        route = sidecar.levers.route

        async def watched(ctx, tiers):  # type: ignore[no-untyped-def]
            tier = await route(ctx, tiers)
            if ctx.router_score is not None:  # scored by the router (not a hard-prompt rule)
                decided.append((ctx.router_score, tier))
            return tier

        sidecar.levers.route = watched  # type: ignore[method-assign]
        for prompt in PROMPTS[:16]:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=8, temperature=0)
        # the sidecar routes on the pushed threshold: exactly the prompts at or above it go cheap. (How many
        # that is depends on the verdicts: the engine's answers to the two names can differ at batch size 2.)
        cheap = sum(score >= threshold for score, _ in decided)
        assert [tier for _, tier in decided] == ["small" if score >= threshold else "large" for score, _ in decided]
        assert served("small") == before + cheap
    finally:
        await telemetry.stop()
        await runner.cleanup()
        await sidecar.levers.aclose()
        await server.stop(None)
