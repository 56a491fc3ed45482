"""In-process replica simulator: vLLM's continuous batching on a virtual clock.

What it models, following vLLM V1's scheduler:
- one unified step per iteration: running requests first (decodes, then unfinished prefill
  chunks), then waiting requests FCFS, all within `max_num_batched_tokens` and
  `max_num_seqs`; long prompts are prefilled in chunks;
- the KV cache in blocks of 16 tokens, allocated as tokens are computed; a waiting request
  is admitted only when its first chunk fits, and a running one that cannot grow preempts
  the most recently admitted request (recompute, as vLLM does);
- prefix caching by block hash: finished prompts leave their blocks in the cache, reused by
  later requests with the same leading hashes and evicted LRU when blocks run out;
- speculative decoding: each verify step yields the expected accepted tokens
  (1 - a^(k+1)) / (1 - a) per sequence, at the cost of verifying k+1 tokens.

Speed: when a step is decode-only and nothing can change the batch (no arrival, no
admission, no finish, no new block shortage), it jumps over all those identical steps at
once in closed form, so an hour of a production trace takes seconds, not one Python
iteration per token.

Time semantics: `advance(until)` completes every step that ends by `until`; a step
that would end later stays in flight (its scheduling is decided, its tokens are not out
yet), exactly as a real engine mid-step.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from thrifty.profiles import GpuProfile, speculative_tokens_per_step

_EPS = 1e-9


class KvEventSink(Protocol):
    """Receives the prefix cache's changes, as vLLM's KV-cache events report them (sim/kv_events.py)."""

    def stored(self, block_hash: int, parent: int | None) -> None: ...
    def removed(self, block_hash: int) -> None: ...


@dataclass(frozen=True, slots=True)
class SimRequest:
    id: int
    arrival: float  # virtual seconds
    prompt_tokens: int
    output_tokens: int
    block_hashes: tuple[int, ...] = ()  # prefix blocks (e.g. Mooncake hash_ids); () = derive none


@dataclass(slots=True)
class SimCompletion:
    id: int
    arrival: float
    first_token_time: float
    finish_time: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache
    # Beyond the contract (defaults keep it compatible): what vLLM's per-request histograms need.
    scheduled_time: float = 0.0  # first time the scheduler gave it tokens (queue time ends)
    decode_steps: int = 0  # engine steps after the first token (inter-token latency samples)
    preemptions: int = 0


@dataclass(frozen=True, slots=True)
class SpeculativeSim:
    """Speculative decoding: `num_tokens` drafted per step, each accepted with `acceptance_rate`."""

    num_tokens: int
    acceptance_rate: float

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError("speculative num_tokens must be >= 1")
        if not 0.0 <= self.acceptance_rate <= 1.0:
            raise ValueError("speculative acceptance_rate must be within [0, 1]")

    def tokens_per_step(self, acceptance_rate: float | None = None) -> float:
        """Expected tokens emitted per verify step (accepted drafts + the bonus token)."""
        return speculative_tokens_per_step(self.num_tokens, self.acceptance_rate if acceptance_rate is None else acceptance_rate)


@dataclass(slots=True)
class SimStats:
    """Cumulative engine counters (the server turns them into vllm: metrics)."""

    steps: int = 0
    prompt_tokens: int = 0  # prompt tokens computed (prefill, excluding cache hits)
    generation_tokens: float = 0.0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0
    preemptions: int = 0
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: float = 0.0


class _Seq:
    """One request inside the engine."""

    __slots__ = (
        "req", "ready", "target", "computed", "generated", "output", "rate", "first_token_time",
        "blocks", "shared", "refs", "span", "scheduled_time", "inserted", "decode_steps",
        "cached_tokens", "preemptions", "acceptance",
    )

    def __init__(self, req: SimRequest, ready: float, output: int, span: int, rate: float, acceptance: float) -> None:
        self.req = req
        self.ready = ready
        self.target = req.prompt_tokens  # tokens to (re)compute before sampling
        self.computed = 0.0  # tokens in the KV cache
        self.generated = 0.0
        self.output = output
        self.rate = rate  # tokens per decode step
        self.acceptance = acceptance
        self.first_token_time: float | None = None
        self.blocks = 0  # KV blocks this sequence holds (shared + private)
        self.shared = 0  # of which in prefix-cache entries it references
        self.refs: list[int] = []
        self.span = span  # prompt tokens per block hash
        self.scheduled_time = -1.0
        self.inserted = False
        self.decode_steps = 0
        self.cached_tokens = 0
        self.preemptions = 0

    def copy(self) -> _Seq:
        twin = _Seq.__new__(_Seq)
        for name in _Seq.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.refs = list(self.refs)
        return twin


@dataclass(slots=True)
class _Step:
    start: float
    end: float
    chunks: list[tuple[_Seq, int]] = field(default_factory=list)
    decoders: list[_Seq] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    """k identical decode-only steps from `start`; step j (0-based) costs base + c * (ctx0 + j * growth).

    So j steps take T(j) = j * base + c * (j * ctx0 + growth * j (j - 1) / 2), inverted in
    closed form: the run is evaluated lazily, costing nothing per step or per `advance` call.
    """

    start: float
    decoders: list[_Seq]
    base: float
    c: float
    ctx0: float
    growth: float
    k: int

    def total(self, j: int) -> float:
        return j * self.base + self.c * (j * self.ctx0 + self.growth * j * (j - 1) / 2)

    @property
    def end(self) -> float:
        return self.start + self.total(self.k)

    def steps_within(self, t: float) -> int:
        """Most steps that end by absolute time t."""
        budget = t - self.start
        if budget == math.inf:
            return 1 << 40
        a2 = self.c * self.growth / 2
        a1 = self.base + self.c * self.ctx0 - a2
        if a2 <= 0:
            j = int(budget / a1) if a1 > 0 else 1 << 40
        else:
            j = int((-a1 + math.sqrt(max(0.0, a1 * a1 + 4 * a2 * budget))) / (2 * a2))
        j = max(0, j)
        while j > 0 and self.total(j) > budget + 1e-12:
            j -= 1
        while self.total(j + 1) <= budget + 1e-12:
            j += 1
        return j

    def steps_spanning(self, t: float) -> int:
        """Steps up to and including the one running at absolute time t (at least 1)."""
        j = self.steps_within(t)
        if self.start + self.total(j) < t:
            j += 1
        return max(1, j)


class SimReplica:
    """One simulated vLLM replica on a virtual clock (see the module docstring).

    `hash_block_tokens` (beyond the contract, optional) says how many prompt tokens each
    entry of `SimRequest.block_hashes` stands for: 512 for Mooncake's hash_ids, the profile's
    block size for hashes made per KV block. Left as None, each hash covers an equal share of
    the prompt rounded up to whole KV blocks (close to right for Mooncake traces).
    """

    def __init__(self, profile: GpuProfile, *, kv_blocks: int | None = None,
                 speculative: SpeculativeSim | None = None, seed: int = 0,
                 hash_block_tokens: int | None = None) -> None:
        self.profile = profile
        self.kv_blocks = kv_blocks if kv_blocks is not None else profile.kv_blocks
        if self.kv_blocks < 1:
            raise ValueError("kv_blocks must be >= 1")
        self.speculative = speculative
        # Tokens each block hash stands for; None = prompt_tokens / len(hashes) rounded up to a block.
        self.hash_block_tokens = hash_block_tokens
        self.stats = SimStats()
        self.record_steps = False  # when True, `step_log` collects (batched tokens, steps) pairs
        self.step_log: list[tuple[int, int]] = []
        self._rng = random.Random(seed)
        self._clock = 0.0
        self._pending: list[tuple[float, int, _Seq]] = []  # heap by arrival
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._by_id: dict[int, _Seq] = {}
        self._inflight: _Step | None = None
        self._run: _Run | None = None
        self._horizon = 0.0  # latest `until` seen
        self._counter = 0
        self._free = self.kv_blocks  # blocks neither in use nor holding cached prefixes
        self._evictable: OrderedDict[int, int] = OrderedDict()  # hash -> blocks, unreferenced, LRU first
        self._evictable_blocks = 0
        self._pinned_blocks: dict[int, int] = {}  # hash -> blocks, referenced by running sequences
        self._pinned_refs: dict[int, int] = {}
        self._pinned_total = 0
        self._spec_step_factor = 1.0 + (profile.spec_overhead_frac if speculative else 0.0)
        self._decode_width = 1 + (speculative.num_tokens if speculative else 0)
        self.kv_events: KvEventSink | None = None  # set to publish prefix-cache changes

    # ----------------------------------------------------------------- public API
    @property
    def now(self) -> float:
        """The virtual time the replica has reached (start of the step in flight, if any)."""
        run = self._run
        if run is not None:
            return run.start + run.total(self._run_steps_done(run))
        return self._clock

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._pending)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks held by running requests (cached-but-free blocks don't count, as in vLLM)."""
        used = self.kv_blocks - self._free - self._evictable_blocks
        run = self._run
        if run is not None:
            j = self._run_steps_done(run)
            if j > 0:
                bt = self.profile.block_tokens
                used += sum(max(0, math.ceil((s.computed + j * s.rate) / bt - _EPS) - s.blocks) for s in run.decoders)
        return min(1.0, used / self.kv_blocks)

    @property
    def cached_blocks(self) -> int:
        return self._evictable_blocks + self._pinned_total

    def submit(self, req: SimRequest, now: float) -> None:
        """Hand a request to the engine at virtual time `now` (it joins the queue then)."""
        prompt = max(1, req.prompt_tokens)
        if prompt != req.prompt_tokens:
            req = SimRequest(req.id, req.arrival, prompt, req.output_tokens, req.block_hashes)
        capacity = self.kv_blocks * self.profile.block_tokens
        if prompt + 1 + self._decode_width > capacity:
            raise ValueError(f"request {req.id}: {prompt} prompt tokens exceed the KV cache ({capacity} tokens)")
        output = max(1, min(req.output_tokens, capacity - prompt - self._decode_width))
        span = self._span(req)
        acceptance = 0.0
        rate = 1.0
        if self.speculative is not None:
            jitter = self._rng.uniform(0.8, 1.2)  # per-request predictability varies
            acceptance = min(0.99, self.speculative.acceptance_rate * jitter)
            rate = self.speculative.tokens_per_step(acceptance)
        seq = _Seq(req, now, output, span, rate, acceptance)
        self._counter += 1
        heapq.heappush(self._pending, (now, self._counter, seq))
        self._by_id[req.id] = seq
        run = self._run
        if run is not None:  # the arrival ends the run after the step it lands in
            run.k = min(run.k, run.steps_spanning(now))

    def next_step_end(self) -> float | None:
        """When the next engine step ends (tokens come out), or None when idle."""
        run = self._run
        if run is not None:
            return run.start + run.total(self._run_steps_done(run) + 1)
        if self._inflight is not None:
            return self._inflight.end
        if self._pending:
            return self._pending[0][0]
        return None

    def cached_tokens_of(self, req_id: int) -> int:
        """Prompt tokens an unfinished request got from the prefix cache (0 before it is scheduled)."""
        seq = self._by_id.get(req_id)
        return seq.cached_tokens if seq is not None else 0

    def progress(self, req_id: int) -> tuple[int, float | None] | None:
        """(tokens generated so far, first-token time) of an unfinished request, else None."""
        seq = self._by_id.get(req_id)
        if seq is None:
            return None
        generated = seq.generated
        run = self._run
        if run is not None and seq.first_token_time is not None and seq.computed >= seq.target:
            generated += self._run_steps_done(run) * seq.rate  # every decoding sequence is in the run
        return int(min(generated, seq.output) + _EPS), seq.first_token_time

    def cancel(self, req_id: int) -> bool:
        """Abort a request (client went away): it leaves the queue or the batch and frees its blocks."""
        seq = self._by_id.pop(req_id, None)
        if seq is None:
            return False
        for i, (_, _, queued) in enumerate(self._pending):
            if queued is seq:
                self._pending.pop(i)
                heapq.heapify(self._pending)
                return True
        if seq in self._waiting:
            self._waiting.remove(seq)
            return True
        run = self._run
        if run is not None and any(s is seq for s in run.decoders):
            self._cut_run()
        step = self._inflight
        if step is not None:
            step.chunks = [(s, n) for s, n in step.chunks if s is not seq]
            step.decoders = [s for s in step.decoders if s is not seq]
        self._running.remove(seq)
        self._release(seq)
        return True

    def _cut_run(self) -> None:
        """End the current run at the steps already done (the batch is about to change)."""
        run = self._run
        assert run is not None
        self._run = None
        done_steps = self._run_steps_done(run)  # < run.k: a finished run is applied by advance
        if done_steps == 0:
            self._clock = run.start  # the first step is re-planned; its blocks stay held
            return
        run.k = done_steps
        self._finish_run(run, [])

    def advance(self, until: float) -> list[SimCompletion]:
        """Run the batch loop until virtual time `until`; returns the requests finished by then."""
        done: list[SimCompletion] = []
        self._horizon = max(self._horizon, until)
        while True:
            run = self._run
            if run is not None:
                if run.end > until:
                    break
                self._run = None
                self._finish_run(run, done)
            step = self._inflight
            if step is not None:
                if step.end > until:
                    break
                self._inflight = None
                self._clock = step.end
                self._complete(step, done)
            self._take_arrivals()
            if not self._running and not self._waiting:
                if self._pending and self._pending[0][0] <= until:
                    self._clock = max(self._clock, self._pending[0][0])
                    continue
                break
            step = self._schedule()
            if not step.chunks and not step.decoders:
                raise RuntimeError("simulator stalled: nothing schedulable")  # capacity checks make this unreachable
            if not step.chunks and len(step.decoders) == len(self._running):
                self._start_run(step)
            else:
                self._inflight = step
        return done

    def drain_time(self) -> float:
        """Virtual time at which all work submitted so far would be finished (no new arrivals)."""
        if not self._running and not self._waiting and not self._pending and self._inflight is None and self._run is None:
            return self._clock
        twin = self._clone()
        twin.advance(math.inf)
        return twin._clock

    # ----------------------------------------------------------------- scheduling
    def _span(self, req: SimRequest) -> int:
        bt = self.profile.block_tokens
        if self.hash_block_tokens is not None:
            return self.hash_block_tokens
        if not req.block_hashes:
            return bt
        share = -(-req.prompt_tokens // len(req.block_hashes))
        return max(bt, -(-share // bt) * bt)

    def _take_arrivals(self) -> None:
        pending = self._pending
        while pending and pending[0][0] <= self._clock:
            self._waiting.append(heapq.heappop(pending)[2])

    def _blocks_for(self, tokens: float) -> int:
        return math.ceil(tokens / self.profile.block_tokens - _EPS)

    def _reserve(self, blocks: int) -> bool:
        """Take `blocks` free blocks, evicting LRU cached prefixes if needed."""
        if blocks <= 0:
            return True
        if blocks > self._free + self._evictable_blocks:
            return False
        while self._free < blocks:
            h, freed = self._evictable.popitem(last=False)
            self._evictable_blocks -= freed
            self._free += freed
            if self.kv_events is not None:
                self.kv_events.removed(h)
        self._free -= blocks
        return True

    def _lookup(self, seq: _Seq) -> tuple[list[int], int, int, int]:
        """Leading cached hashes of the prompt: (hashes, their blocks, cached tokens, of those blocks now evictable)."""
        hashes = seq.req.block_hashes
        matched: list[int] = []
        blocks = 0
        evictable = 0
        for h in hashes:
            if h in self._pinned_blocks:
                blocks += self._pinned_blocks[h]
            elif h in self._evictable:
                b = self._evictable[h]
                blocks += b
                evictable += b
            else:
                break
            matched.append(h)
        covered = len(matched) * seq.span
        cached = min(covered, seq.target - 1) if matched else 0
        return matched, blocks, max(0, cached), evictable

    def _acquire(self, h: int) -> None:
        if h in self._pinned_refs:
            self._pinned_refs[h] += 1
            return
        b = self._evictable.pop(h)
        self._evictable_blocks -= b
        self._pinned_blocks[h] = b
        self._pinned_refs[h] = 1
        self._pinned_total += b

    def _release(self, seq: _Seq) -> None:
        for h in seq.refs:
            refs = self._pinned_refs[h] - 1
            if refs:
                self._pinned_refs[h] = refs
                continue
            del self._pinned_refs[h]
            b = self._pinned_blocks.pop(h)
            self._pinned_total -= b
            self._evictable[h] = b  # most recently used end
            self._evictable_blocks += b
        self._free += seq.blocks - seq.shared
        seq.refs = []
        seq.blocks = 0
        seq.shared = 0

    def _insert_prefix(self, seq: _Seq) -> None:
        """Register the prompt's full hash blocks as cached, turning private blocks into shared ones."""
        seq.inserted = True
        hashes = seq.req.block_hashes
        if not hashes:
            return
        bt = self.profile.block_tokens
        prompt = seq.req.prompt_tokens
        for i in range(len(seq.refs), len(hashes)):
            start = i * seq.span
            if start >= prompt:
                break
            h = hashes[i]
            if h in self._pinned_blocks or h in self._evictable:
                continue  # computed concurrently by another request: keep ours private
            b = min(-(-min(seq.span, prompt - start) // bt), seq.blocks - seq.shared)
            if b <= 0:
                break
            self._pinned_blocks[h] = b
            self._pinned_refs[h] = 1
            self._pinned_total += b
            seq.shared += b
            seq.refs.append(h)
            if self.kv_events is not None:
                self.kv_events.stored(h, hashes[i - 1] if i else None)

    def _preempt(self, seq: _Seq) -> None:
        self._running.remove(seq)
        self._release(seq)
        seq.target = seq.req.prompt_tokens + int(seq.generated)
        seq.computed = 0.0
        seq.preemptions += 1
        self.stats.preemptions += 1
        self._waiting.appendleft(seq)

    def _schedule(self) -> _Step:
        """Decide the next step at the current clock (vLLM V1 order: running, then waiting)."""
        profile = self.profile
        budget = profile.max_num_batched_tokens
        width = self._decode_width
        inv_bt = 1.0 / profile.block_tokens
        step = _Step(self._clock, self._clock)
        prefill_tokens = 0
        pairs = 0.0  # prefill attention: (prompt token, token it attends to) pairs
        ctx = 0.0
        preempted = False
        running = self._running
        i = 0
        while i < len(running):
            seq = running[i]
            decoding = seq.computed >= seq.target
            if decoding:
                if budget < width:
                    i += 1
                    continue
                n = width
                need = math.ceil((seq.computed + seq.rate) * inv_bt - _EPS) - seq.blocks
            else:
                if budget <= 0:
                    i += 1
                    continue
                n = min(int(seq.target - seq.computed), budget)
                need = self._blocks_for(seq.computed + n) - seq.blocks
            if need > 0 and not self._reserve(need):
                victim = running[-1]
                self._preempt(victim)
                preempted = True
                continue  # retry this sequence (or, if it was the victim, the loop ends)
            if need > 0:
                seq.blocks += need
            if seq.scheduled_time < 0:
                seq.scheduled_time = self._clock
            budget -= n
            if decoding:
                step.decoders.append(seq)
                ctx += seq.computed
            else:
                step.chunks.append((seq, n))
                prefill_tokens += n
                pairs += n * (seq.computed + n / 2)
            i += 1

        waiting = self._waiting
        while waiting and not preempted and budget > 0 and len(running) < profile.max_num_seqs:
            seq = waiting[0]
            matched, shared, cached, shared_evictable = self._lookup(seq)
            n = min(int(seq.target - cached), budget)
            need = max(0, self._blocks_for(cached + n) - shared)
            if need > self._free + self._evictable_blocks - shared_evictable:
                break
            for h in matched:
                self._acquire(h)
            self._reserve(need)
            seq.refs = matched
            seq.shared = shared
            seq.blocks = shared + need
            seq.computed = float(cached)
            if seq.preemptions == 0:
                seq.cached_tokens = cached
                self.stats.prefix_queries += seq.req.prompt_tokens
                self.stats.prefix_hits += cached
            if seq.scheduled_time < 0:
                seq.scheduled_time = self._clock
            waiting.popleft()
            running.append(seq)
            step.chunks.append((seq, n))
            prefill_tokens += n
            pairs += n * (seq.computed + n / 2)
            budget -= n

        decode_tokens = len(step.decoders) * width
        dt = profile.step_time(prefill_tokens, decode_tokens, ctx, pairs)
        if step.decoders:
            dt += profile.fixed_step_s * (self._spec_step_factor - 1.0)  # drafting: a share of the fixed step cost
        step.end = self._clock + dt
        return step

    def _complete(self, step: _Step, done: list[SimCompletion]) -> None:
        """Apply a finished step: tokens computed, first tokens sampled, finished requests leave."""
        stats = self.stats
        stats.steps += 1
        finished: list[_Seq] = []
        batched = 0
        for seq, n in step.chunks:
            seq.computed += n
            batched += n
            stats.prompt_tokens += n
            if seq.computed >= seq.target - _EPS:
                if seq.first_token_time is None:
                    seq.first_token_time = step.end
                seq.generated += 1
                stats.generation_tokens += 1
                if not seq.inserted:
                    self._insert_prefix(seq)
                if seq.generated >= seq.output - _EPS:
                    finished.append(seq)
        if step.decoders:
            spec = self.speculative
            for seq in step.decoders:
                gain = min(seq.rate, seq.output - seq.generated)
                seq.computed += seq.rate
                seq.generated += gain
                seq.decode_steps += 1
                stats.generation_tokens += gain
                if seq.generated >= seq.output - _EPS:
                    finished.append(seq)
            batched += len(step.decoders) * self._decode_width
            if spec is not None:
                self._count_spec(step.decoders, 1)
        if self.record_steps:
            self.step_log.append((batched, 1))
        self._finish(finished, step.end, done)

    def _count_spec(self, decoders: list[_Seq], steps: int) -> None:
        spec = self.speculative
        assert spec is not None
        self.stats.spec_drafts += len(decoders) * steps
        self.stats.spec_draft_tokens += len(decoders) * steps * spec.num_tokens
        self.stats.spec_accepted_tokens += steps * sum(seq.rate - 1.0 for seq in decoders)

    def _finish(self, finished: list[_Seq], when: float, done: list[SimCompletion]) -> None:
        if not finished:
            return
        gone = set(map(id, finished))
        self._running = [s for s in self._running if id(s) not in gone]
        for seq in finished:
            self._release(seq)
            del self._by_id[seq.req.id]
            req = seq.req
            done.append(SimCompletion(
                id=req.id, arrival=req.arrival, first_token_time=seq.first_token_time if seq.first_token_time is not None else when,
                finish_time=when, prompt_tokens=req.prompt_tokens, output_tokens=seq.output,
                cached_tokens=seq.cached_tokens, scheduled_time=seq.scheduled_time,
                decode_steps=seq.decode_steps, preemptions=seq.preemptions,
            ))

    # ----------------------------------------------------------------- the fast path
    def _start_run(self, step: _Step) -> None:
        """Turn a decode-only step into a run of identical steps lasting until the next event."""
        decoders = step.decoders
        c = self.profile.context_token_s
        ctx0 = 0.0
        growth = 0.0
        k = 1 << 40
        for s in decoders:
            ctx0 += s.computed
            growth += s.rate
            left = math.ceil((s.output - s.generated) / s.rate - _EPS)
            if left < k:
                k = left
        run = _Run(start=step.start, decoders=decoders, base=(step.end - step.start) - c * ctx0, c=c, ctx0=ctx0,
                   growth=growth, k=1)
        if self._pending:
            k = min(k, run.steps_spanning(self._pending[0][0]))
        if k > 1:
            k = self._max_steps_with_blocks(decoders, k, growth)
        run.k = max(1, k)
        self._run = run

    def _finish_run(self, run: _Run, done: list[SimCompletion]) -> None:
        """Apply all k steps of a run: KV blocks beyond the first step's, tokens, finishes."""
        k = run.k
        inv_bt = 1.0 / self.profile.block_tokens
        extra = 0
        gained = 0.0
        finished: list[_Seq] = []
        for s in run.decoders:
            advance = k * s.rate
            blocks = math.ceil((s.computed + advance) * inv_bt - _EPS)
            if blocks > s.blocks:
                extra += blocks - s.blocks
                s.blocks = blocks
            gain = min(advance, s.output - s.generated)
            s.computed += advance
            s.generated += gain
            s.decode_steps += k
            gained += gain
            if s.generated >= s.output - _EPS:
                finished.append(s)
        if extra > 0:
            reserved = self._reserve(extra)
            assert reserved, "run planned beyond the KV cache"
        stats = self.stats
        stats.generation_tokens += gained
        stats.steps += k
        if self.speculative is not None:
            self._count_spec(run.decoders, k)
        if self.record_steps:
            self.step_log.append((len(run.decoders) * self._decode_width, k))
        self._clock = run.end
        self._finish(finished, self._clock, done)

    def _run_steps_done(self, run: _Run) -> int:
        """Steps of the current run already complete at the latest `advance` horizon."""
        return min(run.k, run.steps_within(self._horizon))

    def _max_steps_with_blocks(self, decoders: list[_Seq], k: int, growth: float) -> int:
        """Largest j <= k whose extra KV blocks fit (the first step's blocks are already held)."""
        bt = self.profile.block_tokens
        available = self._free + self._evictable_blocks
        if available >= k * growth / bt + len(decoders):  # each sequence rounds up by at most one block
            return k

        def extra(j: int) -> int:
            return sum(math.ceil((s.computed + j * s.rate) / bt - _EPS) - s.blocks for s in decoders)

        if extra(k) <= available:
            return k
        lo, hi = 1, k  # extra(1) <= 0 <= available holds
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if extra(mid) <= available:
                lo = mid
            else:
                hi = mid
        return lo

    # ----------------------------------------------------------------- cloning
    def _clone(self) -> SimReplica:
        twin = SimReplica.__new__(SimReplica)
        twin.profile = self.profile
        twin.kv_blocks = self.kv_blocks
        twin.speculative = self.speculative
        twin.hash_block_tokens = self.hash_block_tokens
        twin.stats = SimStats()
        twin.record_steps = False
        twin.step_log = []
        twin._rng = random.Random()
        twin._rng.setstate(self._rng.getstate())
        twin._clock = self._clock
        copies: dict[int, _Seq] = {}

        def cp(seq: _Seq) -> _Seq:
            twin_seq = copies.get(id(seq))
            if twin_seq is None:
                twin_seq = copies[id(seq)] = seq.copy()
            return twin_seq

        twin._pending = [(t, n, cp(s)) for t, n, s in self._pending]
        twin._waiting = deque(cp(s) for s in self._waiting)
        twin._running = [cp(s) for s in self._running]
        twin._by_id = {rid: cp(s) for rid, s in self._by_id.items()}
        inflight = self._inflight
        twin._inflight = None if inflight is None else _Step(
            inflight.start, inflight.end, [(cp(s), n) for s, n in inflight.chunks], [cp(s) for s in inflight.decoders])
        run = self._run
        twin._run = None if run is None else _Run(
            run.start, [cp(s) for s in run.decoders], run.base, run.c, run.ctx0, run.growth, run.k)
        twin._horizon = self._horizon
        twin._counter = self._counter
        twin._free = self._free
        twin._evictable = OrderedDict(self._evictable)
        twin._evictable_blocks = self._evictable_blocks
        twin._pinned_blocks = dict(self._pinned_blocks)
        twin._pinned_refs = dict(self._pinned_refs)
        twin._pinned_total = self._pinned_total
        twin._spec_step_factor = self._spec_step_factor
        twin._decode_width = self._decode_width
        twin.kv_events = None  # a what-if copy publishes nothing
        return twin
