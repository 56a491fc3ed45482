"""The savings ledger: a randomized control group served by the baseline path, beside the treated rest.

Who is in it: chat and completions requests for the baseline tier (the tier every request
would use without thrifty), so control and treated differ only by the draw. A control
request skips both caches and the router and is answered by the tier it asked for (the
baseline); it is tagged `X-Thrifty-Group: control` on the reply and `group` in the
access log. Measured savings = 1 - (cost per treated request) / (cost per control request),
with shadow spend charged to the treated group; modelled savings (the same tokens priced on
the baseline tier) stand beside it. Quality per group is the mean judged score of its
shadow-sampled requests; an answer from the reference tier itself scores 1 (it is the
reference), and feedback posted for a request scores it for real.
"""

from __future__ import annotations

import random

from thrifty.proxy.quality.metrics import QualityMetrics
from thrifty.proxy.request.context import RequestContext
from thrifty.wire.quality import GROUPS, LedgerGroup, measured_savings

GROUP_HEADER = "X-Thrifty-Group"


class Ledger:
    def __init__(self, metrics: QualityMetrics, *, rate: float, baseline_tier: str, confidence: float,
                 rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.rate = rate
        self.baseline_tier = baseline_tier
        self.confidence = confidence
        self.rng = rng or random.Random()
        m = metrics
        self._children = {g: (m.ledger_requests.labels(g), m.ledger_dollars.labels(g), m.ledger_dollars_sq.labels(g),
                              m.ledger_baseline.labels(g), m.ledger_judged.labels(g), m.ledger_quality.labels(g))
                          for g in GROUPS}

    def draw(self, ctx: RequestContext) -> bool:
        """Tags an eligible request `control` or `treated`; True for control."""
        if ctx.endpoint not in ("chat", "completions") or ctx.requested_tier != self.baseline_tier:
            return False
        control = self.rate > 0 and self.rng.random() < self.rate
        ctx.group = "control" if control else "treated"
        return control

    def finished(self, ctx: RequestContext, dollars: float, baseline_dollars: float) -> None:
        if ctx.group not in self._children or ctx.outcome != "ok":
            return
        n, d, d2, b, _, _ = self._children[ctx.group]
        n.inc()
        d.inc(dollars)
        d2.inc(dollars * dollars)
        b.inc(baseline_dollars)

    def spend(self, group: str, dollars: float) -> None:
        """Shadow spend on behalf of a request of `group`."""
        if group in self._children:
            self._children[group][1].inc(dollars)

    def judged(self, group: str, score: float) -> None:
        if group in self._children:
            self._children[group][4].inc()
            self._children[group][5].inc(score)

    def group(self, name: str) -> LedgerGroup:
        n, d, d2, b, j, q = self._children[name]
        return LedgerGroup(name, int(n.value), d.value, d2.value, b.value, int(j.value), q.value)

    def savings(self) -> dict[str, float | None]:
        return measured_savings(self.group("control"), self.group("treated"), self.confidence)
