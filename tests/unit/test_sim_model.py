"""The in-process replica simulator: continuous batching, KV capacity, prefix cache, speculative decoding."""

from __future__ import annotations

import csv
import math
import statistics
import time
from datetime import datetime

import pytest

from tests.realparts import data_file
from thrifty.profiles import PROFILES, GpuProfile, get_profile
from thrifty.sim.model import SimCompletion, SimReplica, SimRequest, SpeculativeSim

A100 = PROFILES["a100-llama3-8b"]
CPU = PROFILES["cpu-smollm2-135m"]


def run_all(replica: SimReplica, requests: list[SimRequest]) -> dict[int, SimCompletion]:
    """Submit in arrival order (advancing the clock between), then drain."""
    done: list[SimCompletion] = []
    for req in sorted(requests, key=lambda r: r.arrival):
        done += replica.advance(req.arrival)
        replica.submit(req, req.arrival)
    done += replica.advance(math.inf)
    return {c.id: c for c in done}


def burst(n: int, prompt: int = 512, output: int = 64) -> list[SimRequest]:
    return [SimRequest(i, 0.0, prompt, output) for i in range(n)]


def mean_ttft(done: dict[int, SimCompletion]) -> float:
    return statistics.mean(c.first_token_time - c.arrival for c in done.values())


def mean_itl(done: dict[int, SimCompletion]) -> float:
    return statistics.mean((c.finish_time - c.first_token_time) / (c.output_tokens - 1) for c in done.values())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_latency_grows_with_concurrency(profile: str) -> None:
    p = PROFILES[profile]
    by_concurrency = {n: run_all(SimReplica(p), burst(n, prompt=256)) for n in (1, 4, 8)}
    assert all(len(done) == n for n, done in by_concurrency.items())
    ttfts = [mean_ttft(by_concurrency[n]) for n in (1, 4, 8)]
    itls = [mean_itl(by_concurrency[n]) for n in (1, 4, 8)]
    assert ttfts[0] < ttfts[1] < ttfts[2]
    assert itls[0] < itls[1] < itls[2]
    # batching: 8 requests together finish sooner than 8 one after another, far sooner where
    # decode is memory bound (GPUs) rather than compute bound (the CPU engine)
    alone = max(c.finish_time for c in by_concurrency[1].values())
    together = max(c.finish_time for c in by_concurrency[8].values())
    memory_bound = p.decode_token_s < 0.1 * p.step_overhead_s
    assert together < 8 * alone * (0.6 if memory_bound else 0.9)


def test_single_request_matches_the_profile() -> None:
    done = run_all(SimReplica(A100), [SimRequest(1, 2.0, 1000, 100)])[1]
    assert done.first_token_time - done.arrival == pytest.approx(A100.prefill_time(1000), rel=1e-6)
    itl = (done.finish_time - done.first_token_time) / 99
    assert A100.decode_step_time(1, 1000) <= itl <= A100.decode_step_time(1, 1100)
    assert done.cached_tokens == 0 and done.decode_steps == 99


def test_prefix_hits_cut_ttft_and_only_with_hashes() -> None:
    shared = tuple(range(100, 160))  # 60 blocks of 16 tokens = 960 tokens
    first = SimRequest(1, 0.0, 1000, 8, shared)
    same_prefix = SimRequest(2, 5.0, 1000, 8, shared + (999,))
    other_prefix = SimRequest(3, 10.0, 1000, 8, tuple(range(500, 561)))
    no_hashes = SimRequest(4, 15.0, 1000, 8)
    replica = SimReplica(A100, hash_block_tokens=16)
    done = run_all(replica, [first, same_prefix, other_prefix, no_hashes])
    ttft = {i: c.first_token_time - c.arrival for i, c in done.items()}
    assert done[1].cached_tokens == 0
    assert done[2].cached_tokens == 960
    assert done[3].cached_tokens == 0 and done[4].cached_tokens == 0
    assert ttft[2] < 0.2 * ttft[3]
    assert ttft[4] == pytest.approx(ttft[3])
    assert replica.stats.prefix_hits == 960 and replica.stats.prefix_queries == 4000


def test_prefix_cache_evicts_least_recently_used() -> None:
    # 100 blocks in all: two 40-block prefixes fit as cache, a third evicts the oldest.
    replica = SimReplica(A100, kv_blocks=100, hash_block_tokens=16)
    a, b, c = (tuple(range(k * 1000, k * 1000 + 40)) for k in (1, 2, 3))
    requests = [
        SimRequest(1, 0.0, 640, 2, a), SimRequest(2, 1.0, 640, 2, b),
        SimRequest(3, 2.0, 640, 2, a),  # touches a: b is now the oldest
        SimRequest(4, 3.0, 640, 2, c),  # needs 40 free blocks: evicts b
        SimRequest(5, 4.0, 640, 2, a), SimRequest(6, 5.0, 640, 2, b),
    ]
    done = run_all(replica, requests)
    assert done[3].cached_tokens > 600
    assert done[5].cached_tokens > 600
    assert done[6].cached_tokens == 0


def test_kv_capacity_makes_requests_wait() -> None:
    # Each request needs ~40 blocks; 100 blocks hold two at a time.
    replica = SimReplica(A100, kv_blocks=100)
    for i in range(4):
        replica.submit(SimRequest(i, 0.0, 600, 40), 0.0)
    replica.advance(0.05)
    assert replica.running == 2 and replica.waiting == 2
    assert 0.7 < replica.kv_usage <= 1.0
    done = {c.id: c for c in replica.advance(math.inf)}
    assert len(done) == 4
    first_two_done = max(done[0].finish_time, done[1].finish_time)
    assert min(done[2].first_token_time, done[3].first_token_time) >= min(done[0].finish_time, done[1].finish_time)
    assert max(done[2].first_token_time, done[3].first_token_time) <= first_two_done + 1.0
    roomy = run_all(SimReplica(A100), burst(4, prompt=600, output=40))
    assert mean_ttft(done) > 1.5 * mean_ttft(roomy)
    assert replica.kv_usage == 0.0


def test_running_out_of_blocks_mid_decode_preempts_and_still_finishes() -> None:
    replica = SimReplica(A100, kv_blocks=60)
    done = run_all(replica, [SimRequest(i, 0.0, 160, 400) for i in range(3)])
    assert len(done) == 3
    assert replica.stats.preemptions > 0
    assert all(c.output_tokens == 400 for c in done.values())


def decode_seconds(speculative: SpeculativeSim | None) -> float:
    done = run_all(SimReplica(A100, speculative=speculative), burst(4, prompt=200, output=300))
    return statistics.mean(c.finish_time - c.first_token_time for c in done.values())


def test_speculative_decoding_helps_at_high_acceptance_and_hurts_near_zero() -> None:
    plain = decode_seconds(None)
    assert decode_seconds(SpeculativeSim(4, 0.8)) < 0.6 * plain
    assert decode_seconds(SpeculativeSim(4, 0.0)) > 1.05 * plain
    assert SpeculativeSim(4, 0.0).tokens_per_step() == 1.0
    assert SpeculativeSim(3, 1.0).tokens_per_step() == 4.0


def test_speculative_stats_count_drafts_and_acceptance() -> None:
    replica = SimReplica(A100, speculative=SpeculativeSim(3, 0.6))
    run_all(replica, burst(2, prompt=100, output=200))
    s = replica.stats
    assert s.spec_drafts > 0 and s.spec_draft_tokens == 3 * s.spec_drafts
    assert 0.3 < s.spec_accepted_tokens / s.spec_draft_tokens < 0.6


def test_advancing_in_small_steps_gives_the_same_result_as_one_jump() -> None:
    requests = [SimRequest(i, i * 0.37, 300 + 41 * (i % 7), 20 + 13 * (i % 5), tuple(range(i % 3, i % 3 + 10)))
                for i in range(40)]
    one = run_all(SimReplica(A100, hash_block_tokens=16), requests)
    fine = SimReplica(A100, hash_block_tokens=16)
    done: list[SimCompletion] = []
    pending = sorted(requests, key=lambda r: r.arrival)
    t = 0.0
    while pending or fine.running or fine.waiting:
        t += 0.007
        done += fine.advance(t)
        assert all(c.finish_time <= t for c in done)
        while pending and pending[0].arrival <= t:
            req = pending.pop(0)
            fine.submit(req, req.arrival)
    done += fine.advance(math.inf)
    assert len(done) == len(one)
    for c in done:
        ref = one[c.id]
        assert c.first_token_time == pytest.approx(ref.first_token_time, abs=1e-6)
        assert c.finish_time == pytest.approx(ref.finish_time, abs=1e-6)
        assert c.cached_tokens == ref.cached_tokens


def test_drain_time_predicts_the_last_finish_without_changing_state() -> None:
    replica = SimReplica(A100)
    for req in burst(6, prompt=700, output=90):
        replica.submit(req, 0.0)
    replica.advance(0.3)
    predicted = replica.drain_time()
    running, waiting = replica.running, replica.waiting
    assert (replica.running, replica.waiting) == (running, waiting)
    done = replica.advance(math.inf)
    assert max(c.finish_time for c in done) == pytest.approx(predicted)


def test_cancel_frees_the_slot() -> None:
    replica = SimReplica(A100, kv_blocks=100)
    for i in range(3):
        replica.submit(SimRequest(i, 0.0, 600, 200), 0.0)
    replica.advance(0.5)
    assert replica.running == 2 and replica.waiting == 1
    assert replica.cancel(0)
    assert not replica.cancel(0)
    done = {c.id: c for c in replica.advance(math.inf)}
    assert set(done) == {1, 2}
    assert replica.kv_usage == 0.0


def test_progress_reports_tokens_while_running() -> None:
    replica = SimReplica(A100)
    replica.submit(SimRequest(7, 0.0, 100, 50), 0.0)
    replica.advance(0.2)
    generated, first = replica.progress(7)
    assert first is not None and 0 < generated < 50
    replica.advance(0.3)
    assert replica.progress(7)[0] > generated
    assert [c.id for c in replica.advance(10.0)] == [7] and replica.progress(7) is None


def test_bad_inputs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown simulator profile"):
        get_profile("nope")
    with pytest.raises(ValueError, match="exceed the KV cache"):
        SimReplica(A100, kv_blocks=2).submit(SimRequest(1, 0.0, 100, 1), 0.0)
    with pytest.raises(ValueError):
        SpeculativeSim(2, 1.5)
    with pytest.raises(ValueError):
        GpuProfile(name="x", model="m", hardware="h", step_overhead_s=-1, prefill_token_s=0, decode_token_s=0,
                   context_token_s=0, kv_blocks=10)


def load_azure(path) -> list[SimRequest]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    start = datetime.fromisoformat(rows[0]["TIMESTAMP"][:26])
    return [
        SimRequest(i, (datetime.fromisoformat(r["TIMESTAMP"][:26]) - start).total_seconds(),
                   int(r["ContextTokens"]), int(r["GeneratedTokens"]))
        for i, r in enumerate(rows)
    ]


@pytest.mark.timeout(120)
def test_an_hour_of_the_azure_trace_simulates_in_seconds() -> None:
    requests = load_azure(data_file("traces/azure_conv_2023.csv"))
    replicas = [SimReplica(A100, seed=i) for i in range(4)]
    started = time.process_time()
    done: list[SimCompletion] = []
    for req in requests:
        for r in replicas:
            done += r.advance(req.arrival)
        min(replicas, key=lambda r: r.waiting + r.running).submit(req, req.arrival)
    for r in replicas:
        done += r.advance(math.inf)
    cpu_seconds = time.process_time() - started
    assert len(done) == len(requests)
    span = requests[-1].arrival - requests[0].arrival
    assert span > 3000  # about an hour of traffic
    assert cpu_seconds < 15, f"simulating {span:.0f} s of trace took {cpu_seconds:.1f} CPU s"
    ttft = sorted(c.first_token_time - c.arrival for c in done)
    assert ttft[len(ttft) // 2] < 1.0  # four A100s carry this load comfortably
