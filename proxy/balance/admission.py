"""Admission: when every replica of a tier is saturated, wait in a bounded queue, then shed.

A request that finds no replica with room waits (FIFO, per tier) until the pool
reports freed capacity, at most `max_wait_s`; past `max_queue` waiters it is refused at
once with 429, and a wait that runs out ends in 503. Both carry `Retry-After`, so a
client is never left hanging and nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from thrifty.proxy.http.errors import ApiError

T = TypeVar("T")


class Admission:
    def __init__(self, tiers: list[str], *, max_queue: int, max_wait_s: float) -> None:
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {t: deque() for t in tiers}

    def depths(self) -> dict[str, int]:
        return {t: len(q) for t, q in self._waiters.items()}

    def wake(self, tier: str) -> None:
        """Capacity may have freed on `tier`: let the oldest waiter try again."""
        q = self._waiters.get(tier)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def admit(self, tier: str, try_pick: Callable[[], T | None], *, why_not: Callable[[], str]) -> tuple[T, float]:
        """`try_pick()` until it returns a replica; returns it with the seconds spent waiting."""
        picked = try_pick()
        if picked is not None:
            return picked, 0.0
        q = self._waiters[tier]
        if len(q) >= self.max_queue:
            raise ApiError(429, f"tier {tier!r} is saturated ({why_not()}) and its admission queue is full; retry later",
                           retry_after_s=1, outcome="shed")
        start = time.monotonic()
        deadline = start + self.max_wait_s
        loop = asyncio.get_running_loop()
        first = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(503, f"no replica of tier {tier!r} could take the request within {self.max_wait_s:g} s "
                                    f"({why_not()}); retry later", retry_after_s=max(1.0, self.max_wait_s / 4), outcome="shed")
            fut: asyncio.Future[None] = loop.create_future()
            if first:
                q.append(fut)
            else:
                q.appendleft(fut)  # keep its place at the front after a lost race
            first = False
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()
                try:
                    q.remove(fut)
                except ValueError:
                    pass
            picked = try_pick()
            if picked is not None:
                if q:  # more capacity may remain: pass the wake-up on
                    self.wake(tier)
                return picked, time.monotonic() - start
