"""What produces a fake replica's tokens: the performance model on the wall clock, or nothing at all.

Contract: an engine takes `submit(subscriber, output_tokens, block_hashes)` and puts
("tokens", key, new_count) and finally ("done", key, SimCompletion) on the subscriber's
queue; `cancel(rid)` frees an unfinished request; `output_lengths` and `text` say how long
each choice is and what its tokens read. `SimEngine` times them with a GPU profile's
performance model (`thrifty engine sim`); `InstantEngine` answers at once with a fixed count
(the stub replica of the sidecar tests and `thrifty bench overhead`). Why two engines behind
one server: every answer's shape then comes from one code path (`http_server`, `openai_api`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from thrifty.profiles import GpuProfile
from thrifty.sim.metrics import SimMetrics
from thrifty.sim.model import SimCompletion, SimReplica, SimRequest, SimStats, SpeculativeSim
from thrifty.sim.openai_api import Generation, filler_text
from thrifty.tasks import cancel_and_wait


@dataclass(slots=True)
class Subscriber:
    queue: asyncio.Queue
    key: int  # choice index within its HTTP request
    prompt_tokens: int
    n: int
    max_tokens: int
    finish_reason: str
    sent: int = 0
    arrival: float = 0.0  # virtual time it was submitted


class SimEngine:
    """Runs a SimReplica against the wall clock and streams token events to waiting requests."""

    def __init__(self, profile: GpuProfile, metrics: SimMetrics, *, kv_blocks: int | None = None,
                 speculative: SpeculativeSim | None = None, seed: int = 0, time_scale: float = 1.0,
                 tick_s: float = 0.001) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.metrics = metrics
        self.time_scale = time_scale
        self.tick_s = tick_s
        self.speculative = speculative
        self.replica = SimReplica(profile, kv_blocks=kv_blocks, speculative=speculative, seed=seed,
                                  hash_block_tokens=profile.block_tokens)
        self.replica.record_steps = True
        self._subs: dict[int, Subscriber] = {}
        self._next_id = 0
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._seen = SimStats()

    def output_lengths(self, gen: Generation, max_model_len: int) -> list[list[tuple[int, str]]]:
        return gen.output_lengths(max_model_len)

    def text(self, start: int, count: int, salt: int) -> tuple[list[str], str]:
        return filler_text(start, count, salt)

    def publish_inflight(self, inflight: int) -> None:
        """The gauges follow the modelled replica, not the HTTP requests."""

    def virtual_now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._drive(), name="sim-engine")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def submit(self, sub: Subscriber, output_tokens: int, block_hashes: tuple[int, ...]) -> int:
        now = self.virtual_now()
        self._pump(now)
        rid = self._next_id
        self._next_id += 1
        sub.arrival = now
        self.replica.submit(SimRequest(rid, now, sub.prompt_tokens, output_tokens, block_hashes), now)
        self._subs[rid] = sub
        self._publish_gauges()
        self._wake.set()
        return rid

    def cancel(self, rid: int) -> None:
        sub = self._subs.pop(rid, None)
        if sub is not None and self.replica.cancel(rid):
            self.metrics.child("vllm:request_success", "abort").inc()
            self._publish_gauges()

    async def _drive(self) -> None:
        while True:
            if not self._subs:
                self._wake.clear()
                await self._wake.wait()
            now = self.virtual_now()
            self._pump(now)
            # Sleep until the next step ends (tokens come out then), within [tick, 50 ms].
            upcoming = self.replica.next_step_end()
            delay = self.tick_s if upcoming is None else (upcoming - now) / self.time_scale
            await asyncio.sleep(min(0.05, max(self.tick_s, delay)))

    def _pump(self, now: float) -> None:
        """Advance the model to `now` and hand out the tokens generated since the last pump."""
        for completion in self.replica.advance(now):
            sub = self._subs.pop(completion.id, None)
            if sub is None:
                continue
            self._emit(sub, completion.output_tokens, completion.first_token_time, completion.cached_tokens)
            sub.queue.put_nowait(("done", sub.key, completion))
            self._observe_finished(sub, completion)
        for rid, sub in self._subs.items():
            progress = self.replica.progress(rid)
            if progress is not None and progress[1] is not None:
                self._emit(sub, progress[0], progress[1], self.replica.cached_tokens_of(rid))
        self._publish_counters()
        self._publish_gauges()

    def _emit(self, sub: Subscriber, generated: int, first_token_time: float, cached: int) -> None:
        new = generated - sub.sent
        if new <= 0:
            return
        if sub.sent == 0:
            m = self.metrics
            m.child("vllm:time_to_first_token_seconds").observe((first_token_time - sub.arrival) / self.time_scale)
            m.child("vllm:prompt_tokens").inc(sub.prompt_tokens)
            m.child("vllm:prompt_tokens_by_source", "local_compute").inc(sub.prompt_tokens - cached)
            m.child("vllm:prompt_tokens_by_source", "local_cache_hit").inc(cached)
            m.child("vllm:prompt_tokens_cached").inc(cached)
            m.child("vllm:prompt_tokens_cached_by_source", "device").inc(cached)
        sub.sent = generated
        self.metrics.child("vllm:generation_tokens").inc(new)
        sub.queue.put_nowait(("tokens", sub.key, new))

    def _observe_finished(self, sub: Subscriber, c: SimCompletion) -> None:
        m = self.metrics
        scale = self.time_scale
        m.child("vllm:request_success", sub.finish_reason).inc()
        m.child("vllm:e2e_request_latency_seconds").observe((c.finish_time - c.arrival) / scale)
        m.child("vllm:request_queue_time_seconds").observe(max(0.0, c.scheduled_time - c.arrival) / scale)
        m.child("vllm:request_inference_time_seconds").observe((c.finish_time - c.scheduled_time) / scale)
        m.child("vllm:request_prefill_time_seconds").observe((c.first_token_time - c.scheduled_time) / scale)
        m.child("vllm:request_decode_time_seconds").observe((c.finish_time - c.first_token_time) / scale)
        m.child("vllm:request_prompt_tokens").observe(c.prompt_tokens)
        m.child("vllm:request_generation_tokens").observe(c.output_tokens)
        m.child("vllm:request_params_max_tokens").observe(sub.max_tokens)
        m.child("vllm:request_max_num_generation_tokens").observe(sub.max_tokens)
        m.child("vllm:request_params_n").observe(sub.n)
        m.child("vllm:request_num_preemptions").observe(c.preemptions)
        m.child("vllm:request_prefill_kv_computed_tokens").observe(c.prompt_tokens - c.cached_tokens)
        if c.output_tokens > 1:
            m.child("vllm:request_time_per_output_token_seconds").observe(
                (c.finish_time - c.first_token_time) / (c.output_tokens - 1) / scale)
        if c.decode_steps:
            itl = m.child("vllm:inter_token_latency_seconds")
            gap = (c.finish_time - c.first_token_time) / c.decode_steps / scale
            for _ in range(min(c.decode_steps, 4096)):
                itl.observe(gap)

    def _publish_counters(self) -> None:
        m = self.metrics
        stats, seen = self.replica.stats, self._seen
        if stats.prefix_queries > seen.prefix_queries:
            m.child("vllm:prefix_cache_queries").inc(stats.prefix_queries - seen.prefix_queries)
        if stats.prefix_hits > seen.prefix_hits:
            m.child("vllm:prefix_cache_hits").inc(stats.prefix_hits - seen.prefix_hits)
        if stats.preemptions > seen.preemptions:
            m.child("vllm:num_preemptions").inc(stats.preemptions - seen.preemptions)
        spec = self.speculative
        if spec is not None and stats.spec_drafts > seen.spec_drafts:
            drafts = stats.spec_drafts - seen.spec_drafts
            m.child("vllm:spec_decode_num_drafts").inc(drafts)
            m.child("vllm:spec_decode_num_draft_tokens").inc(stats.spec_draft_tokens - seen.spec_draft_tokens)
            m.child("vllm:spec_decode_num_accepted_tokens").inc(
                max(0.0, stats.spec_accepted_tokens - seen.spec_accepted_tokens))
            for position in range(spec.num_tokens):  # position i is accepted when the first i+1 drafts are
                m.child("vllm:spec_decode_num_accepted_tokens_per_pos", str(position)).inc(
                    drafts * spec.acceptance_rate ** (position + 1))
        self._seen = SimStats(**{f: getattr(stats, f) for f in SimStats.__dataclass_fields__})
        log = self.replica.step_log
        if log:
            hist = m.child("vllm:iteration_tokens_total")
            for tokens, count in log:
                for _ in range(min(count, 4096)):
                    hist.observe(tokens)
            log.clear()

    def _publish_gauges(self) -> None:
        m = self.metrics
        m.child("vllm:num_requests_running").set(self.replica.running)
        m.child("vllm:num_requests_waiting").set(self.replica.waiting)
        m.child("vllm:num_requests_waiting_by_reason", "capacity").set(self.replica.waiting)
        m.child("vllm:kv_cache_usage_perc").set(self.replica.kv_usage)


LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


class InstantEngine:
    """Answers every choice at once with `tokens` tokens reading "w0 w1 ..." (no timing model).

    A fake for what cannot run a model (named so); its vLLM gauges follow the in-flight HTTP
    requests, so a balancer in front sees load."""

    def __init__(self, tokens: int, metrics: SimMetrics) -> None:
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        self.tokens = tokens
        self.metrics = metrics
        self._ids = itertools.count()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def output_lengths(self, gen: Generation, max_model_len: int) -> list[list[tuple[int, str]]]:
        return [[(self.tokens, "stop")] * gen.n for _ in gen.prompts]

    def text(self, start: int, count: int, salt: int) -> tuple[list[str], str]:
        tokens = [f"w{start + i} " for i in range(count)]
        return tokens, "".join(tokens)

    def submit(self, sub: Subscriber, output_tokens: int, block_hashes: tuple[int, ...]) -> int:
        rid = next(self._ids)
        for _ in range(output_tokens):
            sub.queue.put_nowait(("tokens", sub.key, 1))
        sub.queue.put_nowait(("done", sub.key, SimCompletion(rid, 0.0, 0.0, 0.0, sub.prompt_tokens, output_tokens, 0)))
        return rid

    def cancel(self, rid: int) -> None:
        pass

    def publish_inflight(self, inflight: int) -> None:
        running = min(inflight, 256)
        self.metrics.child("vllm:num_requests_running").set(running)
        self.metrics.child("vllm:num_requests_waiting").set(inflight - running)
        self.metrics.child("vllm:kv_cache_usage_perc").set(min(inflight / 256, 1.0))
