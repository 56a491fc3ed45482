"""The replicas of every tier, and what the sidecar knows about each of them.

Two sources keep `ReplicaState` current: a scrape loop that reads each replica's
vLLM `/metrics` on a short interval (queue, running, KV-cache use, prefix-cache hits)
and the relay, which marks a replica down the moment a connection to it fails. A
down replica leaves the candidate set at once and returns when a scrape succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from thrifty.config import Config, TimeoutSettings
from thrifty.proxy.http.upstream import UpstreamPool, UpstreamUnavailable
from thrifty.tasks import cancel_and_wait

SCRAPE_INTERVAL_S = 0.25
SCRAPE_TIMEOUT_S = 0.5


@dataclass(slots=True, eq=False)
class ReplicaState:
    """One upstream replica as the balancer sees it (also driven by the balance bench)."""

    url: str
    tier: str
    healthy: bool = True
    waiting: float = 0.0  # vllm:num_requests_waiting
    running: float = 0.0  # vllm:num_requests_running
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc, 0-1
    prefix_hits: float = 0.0  # vllm:prefix_cache_hits_total (tokens)
    prefix_queries: float = 0.0  # vllm:prefix_cache_queries_total (tokens)
    # Engine counters the controller needs (served throughput, spec-decode acceptance);
    # None until a scrape finds them (an engine without speculative decoding has no spec_*).
    prompt_tokens: float | None = None  # vllm:prompt_tokens_total
    generation_tokens: float | None = None  # vllm:generation_tokens_total
    spec_draft_tokens: float | None = None  # vllm:spec_decode_num_draft_tokens_total
    spec_accepted_tokens: float | None = None  # vllm:spec_decode_num_accepted_tokens_total
    inflight: int = 0  # requests this sidecar has open to it
    inflight_tokens: int = 0  # estimated prompt+output tokens of those requests
    ttfb_ewma_s: float = 0.0  # smoothed time to first byte, 0 until measured
    last_scrape: float = 0.0
    down_since: float | None = None
    picks: int = 0
    max_inflight: int = 1 << 30  # beyond this it counts as saturated

    @property
    def load(self) -> float:
        """Outstanding work: what this sidecar has open plus what the engine reports queued."""
        return self.inflight_tokens + self.waiting * 512.0

    def observe_ttfb(self, seconds: float) -> None:
        self.ttfb_ewma_s = seconds if self.ttfb_ewma_s == 0.0 else 0.8 * self.ttfb_ewma_s + 0.2 * seconds

    def mark_down(self) -> None:
        if self.healthy:
            self.healthy = False
            self.down_since = time.monotonic()

    def mark_up(self) -> None:
        if not self.healthy:
            self.healthy = True
            self.down_since = None


_GAUGES = {
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:num_requests_running": "running",
    b"vllm:kv_cache_usage_perc": "kv_usage",
    b"vllm:gpu_cache_usage_perc": "kv_usage",  # older vLLM name
    b"vllm:prefix_cache_hits_total": "prefix_hits",
    b"vllm:prefix_cache_queries_total": "prefix_queries",
    b"vllm:prompt_tokens_total": "prompt_tokens",
    b"vllm:generation_tokens_total": "generation_tokens",
    b"vllm:spec_decode_num_draft_tokens_total": "spec_draft_tokens",
    b"vllm:spec_decode_num_accepted_tokens_total": "spec_accepted_tokens",
}


def parse_vllm_metrics(text: bytes) -> dict[str, float]:
    """Sum the vLLM gauges and counters we use over their label sets (one engine may report several)."""
    out: dict[str, float] = {}
    for line in text.split(b"\n"):
        if not line.startswith(b"vllm:"):
            continue
        name_end = line.find(b"{")
        space = line.rfind(b" ")
        name = line[: name_end if name_end != -1 else line.find(b" ")]
        attr = _GAUGES.get(name)
        if attr is None or space == -1:
            continue
        try:
            value = float(line[space + 1 :])
        except ValueError:
            continue
        out[attr] = out.get(attr, 0.0) + value
    return out


def replica_urls(config: Config, overrides: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each tier's replica base URLs: `--replica` overrides, the tier's `urls`, or local engine ports."""
    urls: dict[str, list[str]] = {}
    for tier in config.tiers:
        if overrides and tier.name in overrides:
            urls[tier.name] = list(overrides[tier.name])
        elif tier.replicas.urls:
            urls[tier.name] = list(tier.replicas.urls)
        else:
            urls[tier.name] = [f"http://127.0.0.1:{tier.engine.base_port + i}" for i in range(tier.replicas.count)]
        urls[tier.name] = [u.rstrip("/") for u in urls[tier.name]]
    return urls


class ReplicaPool:
    """Replica states per tier plus the scrape loop that keeps them true."""

    def __init__(self, urls_by_tier: dict[str, list[str]], *, max_inflight: dict[str, int] | None = None,
                 scrape_interval_s: float = SCRAPE_INTERVAL_S) -> None:
        self.tiers: dict[str, list[ReplicaState]] = {
            tier: [ReplicaState(url=u, tier=tier, max_inflight=(max_inflight or {}).get(tier, 1 << 30)) for u in urls]
            for tier, urls in urls_by_tier.items()
        }
        self.scrape_interval_s = scrape_interval_s
        # The same lean keep-alive client as the request path: four scrapes a second per
        # replica are a steady CPU cost, several times higher through aiohttp's client.
        self._http: UpstreamPool | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str], None]] = []

    def all(self) -> list[ReplicaState]:
        return [r for reps in self.tiers.values() for r in reps]

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call `callback(tier)` whenever a tier may have gained capacity (admission wakes waiters)."""
        self._listeners.append(callback)

    def changed(self, tier: str) -> None:
        for cb in self._listeners:
            cb(tier)

    async def start(self) -> None:
        t = SCRAPE_TIMEOUT_S
        self._http = UpstreamPool(TimeoutSettings(connect_s=t, first_byte_s=t, total_s=t))
        await self.scrape_all()
        self._task = asyncio.create_task(self._loop(), name="thrifty-replica-scrape")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._http:
            self._http.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.scrape_interval_s)
            await self.scrape_all()

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(r) for r in self.all()))

    async def scrape(self, replica: ReplicaState) -> None:
        assert self._http is not None
        ok = False
        try:
            status, body = await self._http.get(replica.url, "/metrics")
            if status == 200:
                for attr, value in parse_vllm_metrics(body).items():
                    setattr(replica, attr, value)
                ok = True
            else:  # a replica without /metrics is still up if /health answers
                status, _ = await self._http.get(replica.url, "/health")
                ok = status == 200
        except (UpstreamUnavailable, OSError, ValueError):  # OSError: broken connections, timeouts
            ok = False
        replica.last_scrape = time.monotonic()
        was_healthy = replica.healthy
        if ok:
            replica.mark_up()
            self.changed(replica.tier)
        else:
            replica.mark_down()
        if was_healthy != replica.healthy:
            self.changed(replica.tier)
