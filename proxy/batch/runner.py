"""`BatchRunner`: runs batch lines through the sidecar's own request path, on idle capacity.

Each line is a request like any other (validation, caches, routing, admission,
accounting), sent in the `batch` admission lane: admitted after every interactive lane
and shed first. The runner starts a line only while no interactive request is queued in
admission, and keeps at most `AimdLimit` lines in flight (up to `concurrency`): the limit
grows while interactive requests are fast and halves when they slow down or queue
(`pacing.py`), so a batch fills the troughs of interactive traffic instead of competing
with it. A line shed for capacity (429/503 from admission)
goes back to pending and is retried after a pause; any other answer is its result.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from thrifty.proxy.balance.lanes import BATCH
from thrifty.proxy.batch.pacing import AimdLimit, InteractivePressure
from thrifty.proxy.batch.store import BatchStore, PendingLine
from thrifty.proxy.http.messages import FrontRequest, Handler, Reply

log = logging.getLogger(__name__)
ENDPOINT_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"}
_ACTIVE_POLL_S = 0.05  # between rounds while a batch has lines left or in flight
_IDLE_POLL_S = 1.0  # with nothing to run: a new or cancelled batch wakes the runner at once (`wake`)
_BUSY_PAUSE_S = 0.5  # after a line was shed for capacity


class _NoStream:
    """The connection of an internal request: batch lines never stream."""

    async def start_stream(self, status: int, headers: dict[str, str]) -> None:
        raise RuntimeError("batch lines do not stream")

    async def write_chunk(self, data: bytes) -> None:
        raise RuntimeError("batch lines do not stream")

    async def end_stream(self) -> None:
        return None

    async def read_body(self) -> bytes:
        return b""


class BatchRunner:
    def __init__(self, store: BatchStore, handle: Handler, *, queued: Callable[[], int], concurrency: int,
                 pressure: InteractivePressure | None = None, on_line: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.handle = handle
        self.queued = queued  # interactive requests waiting in admission, over all tiers
        self.pressure = pressure or InteractivePressure(float("inf"))
        self.limit = AimdLimit(concurrency)
        self.on_line = on_line or (lambda result: None)
        self.backlog = 0  # lines left in active batches (refreshed each round; a gauge)
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._pause_until = 0.0
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """A batch was created or cancelled: run a round now rather than at the next idle poll."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="thrifty-batch-runner")

    async def stop(self) -> None:
        """Stop starting lines; lines in flight are cancelled and stay `running` in the store,
        which puts them back to pending on the next start (nothing lost, no result twice)."""
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _loop(self) -> None:
        await self.store.open()
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()  # a wake-up from here on brings the next round forward
            try:
                await self.store.settle()
                self.backlog = await self.store.backlog()
                queued = self.queued() > 0
                free = self.limit.update(self.pressure, queued=queued) - len(self._inflight)
                if free > 0 and not queued and loop.time() >= self._pause_until:
                    for line in await self.store.claim(free):
                        task = loop.create_task(self._run_line(line))
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch runner round failed; retrying")
                await asyncio.sleep(1.0)
            idle = self.backlog == 0 and not self._inflight
            try:
                await asyncio.wait_for(self._wakeup.wait(), _IDLE_POLL_S if idle else _ACTIVE_POLL_S)
            except TimeoutError:
                pass

    async def _run_line(self, line: PendingLine) -> None:
        body = {**line.body, "stream": False}
        body.pop("stream_options", None)
        raw = json.dumps(body).encode()
        request = FrontRequest("POST", line.endpoint, {"content-type": "application/json"}, len(raw), raw, _NoStream(),
                               tenant=line.tenant, lane=BATCH)
        try:
            reply = await self.handle(request)
        except Exception as exc:  # a bug in the request path: the line fails, the batch goes on
            log.exception("batch line failed in the request path")
            await self.store.finish_line(line.batch_id, line.line, "failed",
                                         {"response": None, "error": {"code": "internal_error", "message": repr(exc)[:200]}})
            self.on_line("failed")
            return
        assert isinstance(reply, Reply)
        if reply.status in (429, 503):  # shed for capacity: not this line's fault; later
            await self.store.release_line(line.batch_id, line.line)
            self._pause_until = asyncio.get_running_loop().time() + _BUSY_PAUSE_S
            self.on_line("deferred")
            return
        try:
            answer = json.loads(reply.body)
        except ValueError:
            answer = {"raw": reply.body.decode("utf-8", "replace")[:2000]}
        result = {"response": {"status_code": reply.status, "request_id": reply.headers.get("X-Request-Id", ""),
                               "body": answer}, "error": None}
        state = "done" if reply.status < 400 else "failed"
        await self.store.finish_line(line.batch_id, line.line, state, result)
        self.on_line(state)
