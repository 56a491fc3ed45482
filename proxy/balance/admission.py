"""Admission: when every replica of a tier is saturated, wait in a bounded queue, then shed.

A request that finds no replica with room waits until the pool reports freed capacity,
at most its lane's wait; past `max_queue` waiters it is refused at once with 429, and a
wait that runs out ends in 503. Both carry `Retry-After`, so a client is never left
hanging and nothing is dropped silently.

Waiters queue by lane (OpenAI's `service_tier`, see `lanes.py`): freed capacity goes to
`priority` first, then `default`, then `flex`. Within a lane, tenants take turns (one
waiter per tenant per round, oldest first within a tenant), so one tenant's flood
cannot starve the others. A full queue sheds its newest `flex` waiter to make room for
a better lane before it refuses anyone, and `flex` waits `flex_max_wait_s` (longer).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from thrifty.proxy.balance.lanes import BATCH, DEFAULT_LANE, FLEX, LANES
from thrifty.proxy.http.errors import ApiError

T = TypeVar("T")
_SHEDDABLE = (FLEX, BATCH)  # lanes whose waiters make room for better ones


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    lane: str
    tenant: str
    queued_at: float  # monotonic seconds when it first queued (shed order: newest first)


@dataclass(slots=True)
class _TierQueue:
    """One tier's waiters: per lane, an insertion-ordered map tenant -> that tenant's waiters.
    The map's order is the turn order; a served tenant moves to the back."""

    lanes: dict[str, OrderedDict[str, deque[_Waiter]]] = field(
        default_factory=lambda: {lane: OrderedDict() for lane in LANES})
    size: int = 0

    def push(self, waiter: _Waiter, *, front: bool = False) -> None:
        tenants = self.lanes[waiter.lane]
        q = tenants.get(waiter.tenant)
        if q is None:
            q = tenants[waiter.tenant] = deque()
            if front:  # back after a lost race: its tenant keeps the turn it had
                tenants.move_to_end(waiter.tenant, last=False)
        q.appendleft(waiter) if front else q.append(waiter)
        self.size += 1

    def remove(self, waiter: _Waiter) -> None:
        tenants = self.lanes[waiter.lane]
        q = tenants.get(waiter.tenant)
        if q is None:
            return
        try:
            q.remove(waiter)
        except ValueError:
            return
        self.size -= 1
        if not q:
            del tenants[waiter.tenant]

    def pop_next(self) -> _Waiter | None:
        """The waiter whose turn it is: best lane first, tenants in turn within it."""
        for lane in LANES:
            tenants = self.lanes[lane]
            if not tenants:
                continue
            tenant, q = next(iter(tenants.items()))
            waiter = q.popleft()
            self.size -= 1
            if q:
                tenants.move_to_end(tenant)
            else:
                del tenants[tenant]
            return waiter
        return None

    def newest(self, lane: str) -> _Waiter | None:
        """The most recently queued waiter of `lane` (the first to shed)."""
        last = [q[-1] for q in self.lanes[lane].values() if q]
        return max(last, key=lambda w: w.queued_at) if last else None

    def depth(self, lane: str) -> int:
        return sum(len(q) for q in self.lanes[lane].values())


class Admission:
    def __init__(self, tiers: list[str], *, max_queue: int, max_wait_s: float, flex_max_wait_s: float | None = None) -> None:
        self.max_queue = max_queue
        self.max_wait_s = {lane: max_wait_s for lane in LANES}
        self.max_wait_s[FLEX] = self.max_wait_s[BATCH] = flex_max_wait_s if flex_max_wait_s is not None else max_wait_s
        self._queues: dict[str, _TierQueue] = {t: _TierQueue() for t in tiers}
        self.shed_for_room: dict[str, int] = {lane: 0 for lane in LANES}  # flex waiters shed to admit a better lane

    def depths(self) -> dict[str, int]:
        return {t: q.size for t, q in self._queues.items()}

    def lane_depths(self) -> dict[tuple[str, str], int]:
        return {(t, lane): q.depth(lane) for t, q in self._queues.items() for lane in LANES}

    def wake(self, tier: str) -> None:
        """Capacity may have freed on `tier`: let the waiter whose turn it is try again."""
        q = self._queues.get(tier)
        while q is not None and q.size:
            waiter = q.pop_next()
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(None)
                return

    def _make_room(self, tier: str, q: _TierQueue, lane: str) -> bool:
        """Shed the newest waiter of the worst lane below `lane` (batch, then flex) to queue a request
        of a better lane; False when there is none."""
        for worse in reversed(LANES):
            if worse == lane or worse not in _SHEDDABLE:
                return False
            victim = q.newest(worse)
            if victim is None:
                continue
            q.remove(victim)
            if not victim.future.done():
                victim.future.set_exception(ApiError(
                    429, f"tier {tier!r} is saturated and its admission queue is full; a {worse} request is shed first; "
                         "retry later", retry_after_s=max(1.0, self.max_wait_s[worse] / 4), outcome="shed"))
            self.shed_for_room[lane] += 1
            return True
        return False

    async def admit(self, tier: str, try_pick: Callable[[], T | None], *, why_not: Callable[[], str],
                    lane: str = DEFAULT_LANE, tenant: str = "") -> tuple[T, float]:
        """`try_pick()` until it returns a replica; returns it with the seconds spent waiting."""
        picked = try_pick()
        if picked is not None:
            return picked, 0.0
        q = self._queues[tier]
        if q.size >= self.max_queue and not self._make_room(tier, q, lane):
            raise ApiError(429, f"tier {tier!r} is saturated ({why_not()}) and its admission queue is full; retry later",
                           retry_after_s=1, outcome="shed")
        max_wait_s = self.max_wait_s[lane]
        start = time.monotonic()
        deadline = start + max_wait_s
        loop = asyncio.get_running_loop()
        first = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(503, f"no replica of tier {tier!r} could take the request within {max_wait_s:g} s "
                                    f"({why_not()}); retry later", retry_after_s=max(1.0, max_wait_s / 4), outcome="shed")
            fut: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(fut, lane, tenant, start)
            q.push(waiter, front=not first)  # keep its place at the front after a lost race
            first = False
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()
                q.remove(waiter)
            picked = try_pick()
            if picked is not None:
                if q.size:  # more capacity may remain: pass the wake-up on
                    self.wake(tier)
                return picked, time.monotonic() - start
