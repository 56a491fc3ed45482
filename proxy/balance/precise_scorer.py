"""Prefix affinity from what each engine reports it holds (vLLM KV-cache events).

A replica whose feed is live scores by the share of the request's full blocks, in the
engine's own block size, that its index holds from the first block on. A replica that
publishes no events scores with the approximate `PrefixAffinityScorer`, which also keeps
learning from every pick, so a tier can mix both kinds of replica.
"""

from __future__ import annotations

from collections.abc import Mapping

from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.kv_events import ReplicaKvFeed
from thrifty.proxy.balance.kv_index import chain_keys
from thrifty.proxy.balance.pool import ReplicaState
from thrifty.proxy.balance.scorers import PrefixAffinityScorer


class PrecisePrefixScorer:
    """Scores `req.token_ids` against each replica's KV index; approximate where there is none."""

    name = "prefix"
    pick_reason: str | None = "prefix"

    def __init__(self, feeds: Mapping[str, ReplicaKvFeed], fallback: PrefixAffinityScorer | None = None) -> None:
        self.feeds = feeds  # replica url -> feed (live view: replicas may come and go)
        self.fallback = fallback or PrefixAffinityScorer()

    def matched_blocks(self, replica: ReplicaState, token_ids: tuple[int, ...] | list[int]) -> tuple[int, int] | None:
        """(held leading blocks, full blocks of the request) on a live replica, else None."""
        feed = self.feeds.get(replica.url)
        if feed is None or not feed.live or feed.index.block_size is None:
            return None
        keys = chain_keys(token_ids, feed.index.block_size)
        return feed.index.match(keys), len(keys)

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]:
        scores: list[float] = []
        approximate: list[float] | None = None
        keys_by_size: dict[int, list[int]] = {}
        for i, r in enumerate(replicas):
            feed = self.feeds.get(r.url)
            size = feed.index.block_size if feed is not None and feed.live else None
            if size is None or not req.token_ids:
                if approximate is None:
                    approximate = self.fallback.score(req, replicas)
                scores.append(approximate[i])
                continue
            keys = keys_by_size.get(size)
            if keys is None:
                keys = keys_by_size[size] = chain_keys(req.token_ids, size)
            scores.append(feed.index.match(keys) / len(keys) if keys else 0.0)  # type: ignore[union-attr]
        return scores

    def picked(self, req: PickRequest, replica: ReplicaState) -> None:
        self.fallback.picked(req, replica)

    def forget(self, url: str) -> None:
        """The replica went down or left: its cache is gone, and so is what we knew of it."""
        self.fallback.forget(url)
        feed = self.feeds.get(url)
        if feed is not None:
            feed.forget("down")
