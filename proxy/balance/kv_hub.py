"""The sidecar's KV-event subscriptions: one feed per replica that publishes, and their metrics.

`KvEventHub.feeds` (url -> `ReplicaKvFeed`) is what `PrecisePrefixScorer` reads. The hub
subscribes to each replica's endpoint, resets a replica's index when the pool sees it go
down (its engine is restarting or gone) and drops it when it leaves the pool. Metrics
(documented in docs/metrics.md, labels bounded by tiers and reasons):
`thrifty_kv_index_lag_seconds{tier}`, `thrifty_kv_index_resets_total{tier,reason}`,
`thrifty_kv_index_blocks{tier,replica}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from thrifty.config import Config, Tier
from thrifty.proxy.balance.kv_events import RESET_REASONS, KvEventSubscriber, ReplicaKvFeed
from thrifty.proxy.balance.kv_index import DEFAULT_MAX_BLOCKS, ReplicaKvIndex
from thrifty.proxy.balance.pool import ReplicaPool
from thrifty.proxy.request.tokenize import PromptTokenizer, TokenizerError

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Lag:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(LAG_BUCKETS) and seconds > LAG_BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.sum += seconds


class KvEventHub:
    """Feeds and subscribers for every replica with a KV-event endpoint."""

    def __init__(self, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self.feeds: dict[str, ReplicaKvFeed] = {}
        self.tier_of: dict[str, str] = {}
        self.lag: dict[str, _Lag] = {}
        self.resets: dict[tuple[str, str], int] = {}
        self._subscribers: dict[str, KvEventSubscriber] = {}
        self._pool: ReplicaPool | None = None

    def add(self, tier: str, url: str, endpoint: str | None = None, *, replay_endpoint: str | None = None,
            topic: str = "") -> ReplicaKvFeed:
        """Track `url`'s events; with an endpoint, subscribe to it when the hub starts."""
        lag = self.lag.setdefault(tier, _Lag())

        def on_reset(reason: str) -> None:
            self.resets[(tier, reason)] = self.resets.get((tier, reason), 0) + 1

        feed = ReplicaKvFeed(ReplicaKvIndex(self.max_blocks), on_lag=lag.observe, on_reset=on_reset)
        self.feeds[url] = feed
        self.tier_of[url] = tier
        if endpoint:
            self._subscribers[url] = KvEventSubscriber(endpoint, feed, topic=topic, replay_endpoint=replay_endpoint)
        return feed

    def remove(self, url: str) -> None:
        """A replica left the pool: its entry goes at once."""
        feed = self.feeds.pop(url, None)
        if feed is not None:
            feed.forget("removed")
        self.tier_of.pop(url, None)
        sub = self._subscribers.pop(url, None)
        if sub is not None:
            asyncio.ensure_future(sub.close())

    def attach_pool(self, pool: ReplicaPool) -> None:
        """Reset a replica's index when the pool marks it down (a restart empties its cache)."""
        self._pool = pool
        pool.on_change(self._tier_changed)

    def _tier_changed(self, tier: str) -> None:
        assert self._pool is not None
        for r in self._pool.tiers.get(tier, ()):
            feed = self.feeds.get(r.url)
            if feed is not None and not r.healthy and (feed.last_seq is not None or len(feed.index)):
                feed.forget("down")

    def start(self) -> None:
        for sub in self._subscribers.values():
            sub.start()

    async def close(self) -> None:
        for sub in self._subscribers.values():
            await sub.close()

    def collector(self) -> Collector:
        return _HubCollector(self)


class _HubCollector(Collector):
    def __init__(self, hub: KvEventHub) -> None:
        self.hub = hub

    def collect(self) -> Iterable[Metric]:
        hub = self.hub
        lag = HistogramMetricFamily("thrifty_kv_index_lag_seconds",
                                    "delay from an engine's KV-event batch to the sidecar's index", labels=["tier"])
        for tier, h in hub.lag.items():
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, LAG_BUCKETS), "+Inf"), h.counts):
                cumulative += n
                buckets.append((bound, cumulative))
            lag.add_metric([tier], buckets, h.sum)
        resets = CounterMetricFamily("thrifty_kv_index_resets_total", "a replica's KV index was emptied, by reason",
                                     labels=["tier", "reason"])
        for tier in sorted(set(hub.tier_of.values())):
            for reason in RESET_REASONS:
                resets.add_metric([tier, reason], hub.resets.get((tier, reason), 0))
        blocks = GaugeMetricFamily("thrifty_kv_index_blocks", "blocks a replica's engine reports it holds",
                                   labels=["tier", "replica"])
        for url, feed in hub.feeds.items():
            blocks.add_metric([hub.tier_of[url], url], len(feed.index))
        yield lag
        yield resets
        yield blocks


def kv_event_sources(config: Config, urls: dict[str, list[str]],
                     overridden: set[str]) -> dict[str, dict[str, tuple[str, str | None]]]:
    """tier -> {replica url: (events endpoint, replay endpoint)} for every replica that publishes KV events.

    Local vLLM replicas publish on the launcher's ipc endpoint for their port; external
    ones on `replicas.kv_events`. Replicas given by `--replica` overrides publish nothing known.
    """
    from thrifty.engine.launcher import kv_events_endpoints

    out: dict[str, dict[str, tuple[str, str | None]]] = {}
    for tier in config.tiers:
        if tier.name in overridden:
            continue
        if tier.replicas.urls:
            pairs: dict[str, tuple[str, str | None]] = {
                u.rstrip("/"): (e, None) for u, e in zip(tier.replicas.urls, tier.replicas.kv_events) if e}
        elif tier.engine.kind == "vllm" and tier.engine.kv_events:
            pairs = {u: kv_events_endpoints(tier.name, int(u.rsplit(":", 1)[1])) for u in urls.get(tier.name, [])}
        else:
            pairs = {}
        if pairs:
            out[tier.name] = pairs
    return out


def tier_tokenizer(tier: Tier) -> PromptTokenizer | None:
    """The tier model's own tokenizer (`engine.tokenizer` or the local model folder), if one is on disk."""
    from thrifty.engine.launcher import local_model_path

    folder = tier.engine.tokenizer or local_model_path(tier)
    if folder is None or not (Path(folder) / "tokenizer.json").is_file():
        if tier.engine.tokenizer:
            raise TokenizerError(f"tiers.{tier.name}.engine.tokenizer: {folder}/tokenizer.json not found")
        return None
    return PromptTokenizer.from_model_dir(folder)
