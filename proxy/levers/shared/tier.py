"""`SharedTier`: the sidecar's connection to the shared cache's Redis, guarded.

Every request-path call has a short timeout, no retries, and goes through a circuit
breaker; a failure raises `SharedUnavailable`, which callers turn into a local-only
answer, so a down or slow Redis never fails a client request and costs at most one
timeout before the breaker opens. Writes run as bounded background tasks (a store never
waits on Redis). The stream consumer gets its own client, whose read timeout covers its
blocking XREAD.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry

from thrifty.config import SharedCacheSettings
from thrifty.proxy.levers.shared.breaker import CircuitBreaker
from thrifty.proxy.levers.shared.metrics import SharedMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
MAX_PENDING_WRITES = 1024  # writes in flight beyond this are dropped (counted), never queued without bound


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    """Retrieve an abandoned call's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class SharedUnavailable(Exception):
    """Redis failed, timed out, or the breaker is open: answer from the local tier."""


class SharedTier:
    def __init__(self, settings: SharedCacheSettings, metrics: SharedMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.prefix = settings.key_prefix
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self._client: aioredis.Redis | None = None
        self._stream_client: aioredis.Redis | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    def _make(self, read_timeout_s: float) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.settings.url,
            socket_timeout=read_timeout_s,
            socket_connect_timeout=self.settings.connect_timeout_ms / 1000,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = self._make(self.settings.timeout_ms / 1000)
        return self._client

    @property
    def stream_client(self) -> aioredis.Redis:
        if self._stream_client is None:
            self._stream_client = self._make(self.settings.block_ms / 1000 + 2.0)
        return self._stream_client

    async def call(self, op: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run one request-path Redis call under the timeout and the breaker."""
        if not self.breaker.allow():
            raise SharedUnavailable("breaker open")
        # The call runs as its own task and the caller waits at most the timeout: unlike
        # wait_for, a client call slow to honour its cancellation cannot hold the request.
        task = asyncio.get_running_loop().create_task(fn(self.client))
        done, _ = await asyncio.wait({task}, timeout=self.settings.timeout_ms / 1000)
        if not done:
            task.cancel()
            task.add_done_callback(_consume_outcome)
            self.failed(op)
            raise SharedUnavailable(f"{op}: timed out")
        try:
            result = task.result()
        except REDIS_ERRORS as exc:
            self.failed(op)
            raise SharedUnavailable(f"{op}: {exc!r}") from None
        self.breaker.success()
        self.metrics.up.set(1)
        return result

    def failed(self, op: str) -> None:
        self.breaker.failure()
        self.metrics.sync_errors.labels(op).inc()
        self.metrics.up.set(1 if self.breaker.closed else 0)

    def spawn(self, kind: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a write in the background; drop it (counted) when too many are in flight or
        no event loop runs (a store outside the sidecar's loop)."""
        if len(self._pending) >= MAX_PENDING_WRITES or not self.breaker.allow():
            coro.close()
            self.metrics.writes.labels(kind, "dropped").inc()
            return
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            self.metrics.writes.labels(kind, "dropped").inc()
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the writes in flight (tests, benches, shutdown); writes still running
        after `timeout_s` are cancelled, so a shutdown never hangs on Redis."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._pending:
            left = deadline - loop.time()
            if left <= 0:
                for task in list(self._pending):
                    task.cancel()
                await asyncio.wait(list(self._pending), timeout=1.0)
                self._pending.clear()
                return
            await asyncio.wait(list(self._pending), timeout=left)

    async def aclose(self) -> None:
        await self.drain()
        for client in (self._client, self._stream_client):
            if client is not None:
                try:
                    await client.aclose()
                except REDIS_ERRORS:
                    pass  # closing a client whose server is gone: nothing left to release
        self._client = self._stream_client = None
