"""The simulated tier the benches use: start-up delay, draining scale-down, admission queue."""

from __future__ import annotations

from thrifty.sim.fleet import SimTier
from thrifty.profiles import get_profile


def test_scale_down_drains_and_start_up_takes_time() -> None:
    tier = SimTier("t", get_profile("a100-llama3-8b"), startup_s=60, max_wait_s=1000)
    tier.start(2, 0.0)
    for i in range(40):
        tier.submit(0.0, 500, 200, 0.0, tag=i)
    tier.scale_to(1, 0.1)  # one pod drains: it keeps its requests, takes no new ones
    draining = [p for p in tier.pods if p.draining]
    assert len(draining) == 1 and draining[0].inflight > 0 and draining[0].stopped is None
    tier.scale_to(0, 0.2)
    tier.submit(0.3, 100, 10, 0.3, tag=99)  # nobody ready: waits in admission
    assert tier.queue_depth() >= 1  # (plus any held back by admission control when pods saturated)
    tier.scale_to(1, 0.4)
    t = 0.4
    while t < 200:
        t += 5
        tier.advance(t)
    assert sorted(s.tag for s in tier.served) == [*range(40), 99]
    assert all(s.ttft is not None for s in tier.served)
    late = next(s for s in tier.served if s.tag == 99)
    assert late.ttft >= 60  # waited for the new replica to start
    assert all(p.stopped is not None for p in tier.pods if p.draining)


def test_dispatch_is_the_sidecars_balancer_with_its_admission_control() -> None:
    """Requests reach pods through `thrifty.proxy.balance`'s Balancer: it spreads load over
    the ready pods and, once every pod's engine queue is at the saturation limit, holds the
    rest in the sidecar's admission queue instead of piling them onto an engine."""
    from thrifty.proxy.balance.balancer import Balancer

    tier = SimTier("t", get_profile("a100-llama3-8b"), max_wait_s=1000, saturation_waiting=2)
    assert isinstance(tier.balancer, Balancer)
    tier.start(2, 0.0)
    for i in range(2000):
        tier.submit(0.0, 4000, 200, 0.0, tag=i)
    picks = [p.state.picks for p in tier.pods]
    assert min(picks) > 0 and abs(picks[0] - picks[1]) <= max(picks) // 2
    assert all(p.replica.waiting <= 2 for p in tier.pods)
    assert tier.queue_depth() > 0  # held by admission control, not sent
    round_robin = SimTier("rr", get_profile("a100-llama3-8b"), max_wait_s=1000, policy="round_robin",
                          saturation_waiting=1 << 30, saturation_kv=1.01)
    round_robin.start(2, 0.0)
    for i in range(2000):
        round_robin.submit(0.0, 4000, 200, 0.0, tag=i)
    assert round_robin.queue_depth() == 0 and [p.state.picks for p in round_robin.pods] == [1000, 1000]
