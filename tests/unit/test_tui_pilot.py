"""The console driven by Textual's pilot against the real controller (`ControlPlane` +
its aiohttp API on loopback): every panel shows what the controller reports, every
action reaches the controller, and a vanished controller gives a banner, then a
reconnect. The fleet is fed through the controller's own ingest path on a virtual
clock, so the controller computes every figure the console shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from rich.text import Text

from thrifty.config import parse_config
from thrifty.controller.http_api import build_app
from thrifty.controller.service import ControlPlane
from thrifty.wire.stats import Histogram, ReplicaStats, SharedCacheStats, StatsWindow, TierStats
from thrifty.tui import formatting as fmt
from thrifty.tui.app import ThriftyApp
from thrifty.tui.client import ControllerClient
from thrifty.tui.modals import ConfirmScreen, HelpScreen, PinScreen, ThresholdScreen

TOKEN = "tui-test-token"
T0 = 1_700_000_000.0
CONFIG = {
    "tiers": [
        {"name": "small", "model": "s", "price": {"gpu_hour": 0.5}, "replicas": {"count": 1, "min": 1, "max": 3}},
        {"name": "large", "model": "l", "price": {"gpu_hour": 2.5}, "replicas": {"count": 2, "min": 1, "max": 6},
         "engine": {"speculative": {"method": "ngram", "num_speculative_tokens": 4}, "max_num_seqs": 64}},
    ],
    "router": {"threshold": 0.5},
    "slo": {"ttft_p95_ms": 2000},
}


@dataclass
class RunningController:
    """The real control plane on a virtual clock, its HTTP API on a loopback port."""

    plane: ControlPlane
    clock: list[float]
    url: str
    runner: web.AppRunner
    port: int
    spec_draft: float = 0.0
    spec_accepted: float = 0.0
    seq: int = 0

    async def feed(self, minutes: int, *, large_kv: float = 0.9, large_waiting: int = 160) -> None:
        """Sidecar telemetry in 10 s windows (two tiers, three replicas, one down), a
        control round every virtual minute: the controller scales `large` up (TTFT over
        the SLO) and flags speculative decoding as a net loss (4% acceptance)."""
        for _ in range(minutes * 6):
            start = self.clock[0]
            self.clock[0] += 10
            self.spec_draft += 1000
            self.spec_accepted += 40
            ttft = Histogram()
            ttft.observe(0.4, 50)
            ttft.observe(2.6, 5)
            small = TierStats("small", requests=70, input_tokens=7000, output_tokens=1400, dollars=0.01,
                              baseline_dollars=0.06 + 0.03 * (self.seq % 12) / 12, cache_exact_hits=8, cache_semantic_hits=4, routed=70,
                              replicas=[ReplicaStats("http://10.0.1.7:8001", waiting=0, running=3, kv_cache_usage=0.3,
                                                     prompt_tokens=7000, generation_tokens=1400)])
            large = TierStats("large", requests=30, input_tokens=30000, output_tokens=6000, dollars=0.05,
                              baseline_dollars=0.05, ttft=ttft, routed=30, queue_depth=2,
                              replicas=[ReplicaStats("http://10.0.2.11:8001", waiting=large_waiting, running=64,
                                                     kv_cache_usage=large_kv, spec_draft_tokens=self.spec_draft,
                                                     spec_accepted_tokens=self.spec_accepted,
                                                     prompt_tokens=30000, generation_tokens=6000),
                                        ReplicaStats("http://10.0.2.12:8001", healthy=False)])
            self.seq += 1
            self.plane.ingest("sidecar-a", StatsWindow(start, self.clock[0], [small, large], seq=self.seq))
            if self.seq % 6 == 0:
                await self.plane.tick()

    async def stop_http(self) -> None:
        await self.runner.cleanup()

    async def start_http(self) -> None:
        """(Re)start the API on the same port, as a restarted controller would."""
        self.runner = web.AppRunner(build_app(self.plane, TOKEN))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def start_controller(minutes: int = 8) -> RunningController:
    clock = [T0]
    plane = ControlPlane(parse_config(CONFIG), clock=lambda: clock[0])
    plane.connect("sidecar-a")
    runner = web.AppRunner(build_app(plane, TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ctl = RunningController(plane, clock, f"http://127.0.0.1:{port}", runner, port)
    await ctl.feed(minutes)
    return ctl


@pytest.fixture
async def controller() -> AsyncIterator[RunningController]:
    ctl = await start_controller()
    yield ctl
    await ctl.stop_http()


def console(ctl: RunningController, interval_s: float = 0.5, token: str = TOKEN) -> ThriftyApp:
    return ThriftyApp(ControllerClient(ctl.url, token), interval_s=interval_s)


async def until(pilot: Any, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.03)


def cell(app: ThriftyApp, table_id: str, row: str, column: str) -> str:
    value = app.query_one(f"#{table_id}").get_cell(row, column)
    return value.plain if isinstance(value, Text) else str(value)


def plain(widget: Any) -> str:
    return str(widget.render())


async def test_every_panel_shows_the_controllers_fleet(controller: RunningController) -> None:
    view = controller.plane.fleet_json()
    alerts = controller.plane.alerts_json()["alerts"]
    decisions = controller.plane.decisions_json()["decisions"]
    assert alerts and decisions, "the scenario must give the controller an alert and decisions to report"
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.pause(0.1)
        f = view["fleet"]
        status = plain(app.status_line)
        assert "autoscaling on" in status and f"threshold {view['router_threshold']:.2f}" in status
        assert f"{view['sidecars']} sidecar" in status

        cost = plain(app.cost.figures)
        assert fmt.money(f["dollars_per_hour"]) in cost and fmt.money(f["baseline_dollars_per_hour"]) in cost
        assert fmt.pct(f["savings_ratio"], 1) in cost
        assert list(app.cost.spark.data or []) == pytest.approx(f["savings_history"])

        levers = plain(app.levers)
        assert f"exact {fmt.pct(f['cache_hit_rate']['exact'], 1)}" in levers
        assert f"semantic {fmt.pct(f['cache_hit_rate']['semantic'], 1)}" in levers
        for t in view["tiers"]:
            assert f"{t['name']} {fmt.pct(t['routing_share'])}" in levers
        large = next(t for t in view["tiers"] if t["name"] == "large")
        assert f"large {fmt.pct(large['spec_acceptance'])}" in levers
        assert f["shared_cache"] is None and "shared" not in levers  # no shared tier: no line for it

        rows = [r.key.value for r in app.tiers.table.ordered_rows]
        assert rows == [f"tier:{t['name']}" for t in view["tiers"]]  # replicas stay folded until Enter
        await pilot.press("enter", "down", "enter")  # open small, move to large, open it
        await until(pilot, lambda: app.tiers.table.row_count > len(view["tiers"]) + 1)
        rows = [r.key.value for r in app.tiers.table.ordered_rows]
        expected = [k for t in view["tiers"] for k in [f"tier:{t['name']}", *(f"rep:{t['name']}:{r['url']}" for r in t["replicas"])]]
        assert rows == expected
        assert cell(app, "tiers-table", "tier:large", "ready") == f"{large['replicas_ready']}/{large['replicas_desired']}"
        assert cell(app, "tiers-table", "tier:large", "kv") == fmt.pct(large["kv_cache_usage"])
        assert cell(app, "tiers-table", "tier:large", "queue") == fmt.count(large["queue"])
        ttft = app.tiers.table.get_cell("tier:large", "ttft")
        assert ttft.plain == f"{fmt.seconds(large['ttft_p95_ms'])}/{fmt.seconds(large['slo_ttft_p95_ms'])}"
        assert cell(app, "tiers-table", "tier:large", "cost") == fmt.money(2.5 * large["replicas_ready"])
        for t in view["tiers"]:  # learned capacity (the scenario's served-token counters) and spec acceptance
            assert cell(app, "tiers-table", f"tier:{t['name']}", "capacity") == fmt.tokens_rate(t["capacity_tokens_s"])
            assert cell(app, "tiers-table", f"tier:{t['name']}", "spec") == fmt.pct(t["spec_acceptance"])
        assert large["capacity_tokens_s"] is not None and fmt.pct(large["spec_acceptance"]) == "4%"
        quality = plain(app.quality)  # no shadow verdicts in this scenario: the line says so
        assert "no verdicts yet" in quality and f"target {fmt.pct(view['quality']['target'])}" in quality
        assert not app.quality.has_class("-alerting")
        assert ("red" in str(ttft.style)) == (large["ttft_p95_ms"] > large["slo_ttft_p95_ms"])
        down = next(r for r in large["replicas"] if not r["healthy"])
        assert cell(app, "tiers-table", f"rep:large:{down['url']}", "ready") == "DOWN"

        assert app.alerts.border_title == f"Drift alerts ({sum(a['active'] for a in alerts)} active)"
        assert cell(app, "alerts-table", str(alerts[0]["id"]), "signal") == alerts[0]["signal"]

        decision_rows = app.decisions.table.ordered_rows
        assert len(decision_rows) == len(decisions)
        newest = max(decisions, key=lambda d: d["time"])
        last_key = decision_rows[-1].key.value
        assert cell(app, "decisions-table", last_key, "change") == f"{newest['from']}→{newest['to']}"
        assert not app.banner.has_class("-visible")


async def test_levers_panel_shows_the_shared_cache_tier(controller: RunningController) -> None:
    """Two sidecars with a shared (Redis) tier, one of them off Redis with sync errors: the
    levers panel gets one line with the fleet's figures, whole at 80 columns."""
    lag = Histogram(bounds=(0.01, 0.05, 0.1))
    lag.observe(0.02, 98)
    lag.observe(0.09, 2)
    end = controller.clock[0]
    for sid, shared in (("sidecar-a", SharedCacheStats(up=True, exact_hits=90, semantic_hits=30, mirror_lag=lag)),
                        ("sidecar-b", SharedCacheStats(up=False, sync_errors=5))):
        controller.plane.ingest(sid, StatsWindow(end - 10, end - 1, [], shared_cache=shared))
    sc = controller.plane.fleet_json()["fleet"]["shared_cache"]
    assert (sc["pods"], sc["pods_up"], sc["sync_errors"]) == (2, 1, 5) and sc["mirror_lag_p99_ms"] == pytest.approx(75)
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.pause(0.1)
        line = next(ln for ln in plain(app.levers).splitlines() if ln.startswith("shared"))
        assert line == f"shared {fmt.pct(sc['hit_rate'])}  p99 75ms  5 err  1/2 up"
        width, height = app.levers.content_region.width, app.levers.content_region.height
        assert len(line) <= width and height >= 4, "the shared line must fit the panel unwrapped"


async def test_refreshes_every_second_in_place(controller: RunningController) -> None:
    """At the default 1 s interval a change shows up within ~1 s, by updating the same
    rows (no rebuild: row objects survive, the cursor stays put)."""
    app = console(controller, interval_s=1.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        table = app.tiers.table
        await pilot.press("down", "down")  # the last tier: the cursor stops there
        assert app.tiers.selected_tier() == "large"
        cursor = table.cursor_row
        rows_before = dict(table.rows)
        kv_before = cell(app, "tiers-table", "tier:large", "kv")
        await controller.feed(1, large_kv=0.55, large_waiting=3)
        new_kv = fmt.pct(controller.plane.tier_json("large")["kv_cache_usage"])
        assert new_kv != kv_before
        loop = asyncio.get_running_loop()
        started = loop.time()
        await until(pilot, lambda: cell(app, "tiers-table", "tier:large", "kv") == new_kv, timeout=3)
        assert loop.time() - started <= 2.5  # one 1 s interval plus slack for a loaded machine
        assert all(table.rows[k] is rows_before[k] for k in rows_before)
        assert table.cursor_row == cursor


async def test_pause_and_resume_reach_the_controller_after_confirmation(controller: RunningController) -> None:
    plane = controller.plane
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # declined: nothing changes
        await pilot.pause(0.1)
        assert plane.autoscaler.paused is False
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: plane.autoscaler.paused is True)
        await until(pilot, lambda: "PAUSED" in plain(app.status_line))
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#confirm")
        await until(pilot, lambda: plane.autoscaler.paused is False)


async def test_pin_and_unpin_a_tier(controller: RunningController) -> None:
    plane = controller.plane
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.press("down")  # from small to large: arrows move between tiers
        assert app.tiers.selected_tier() == "large"
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, PinScreen))
        await pilot.press("2", "enter", "4", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "large to 2-4" in str(app.screen.question)
        await pilot.press("y")
        await until(pilot, lambda: plane.autoscaler.pinned("large"))
        assert plane.autoscaler.bounds("large") == (2, 4)
        await until(pilot, lambda: cell(app, "tiers-table", "tier:large", "bounds") == "2-4 pin")

        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, PinScreen))
        await pilot.click("#unpin")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not plane.autoscaler.pinned("large"))


async def test_bad_pin_is_refused_in_the_form(controller: RunningController) -> None:
    plane = controller.plane
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, PinScreen))
        await pilot.press("5", "enter", "2", "enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, PinScreen)
        assert "min <= max" in plain(app.screen.query_one("#form-error"))
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not plane.autoscaler.pinned("small")


async def test_router_threshold_is_pushed_as_policy(controller: RunningController) -> None:
    plane = controller.plane
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdScreen))
        await pilot.press("1", ".", "5", "enter")  # out of range: stays in the form
        await pilot.pause(0.05)
        assert isinstance(app.screen, ThresholdScreen)
        assert "between 0 and 1" in plain(app.screen.query_one("#form-error"))
        await pilot.press("ctrl+shift+a", "0", ".", "3", "5", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: plane.policy["router_threshold"] == pytest.approx(0.35))
        await until(pilot, lambda: "threshold 0.35" in plain(app.status_line))


async def test_help_lists_the_keys(controller: RunningController) -> None:
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = plain(app.screen.query_one("#help-text"))
        for key in ("p ", "m ", "t ", "r ", "q "):
            assert key in text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_wrong_token_shows_the_banner_not_a_crash(controller: RunningController) -> None:
    app = console(controller, token="wrong")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.failures >= 1)
        assert app.banner.has_class("-visible")
        assert "token rejected: pass --token or set THRIFTY_CONTROLLER_TOKEN" in plain(app.banner)
        await pilot.press("p")  # no data yet: the action says so instead of guessing
        await pilot.pause(0.05)
        assert not isinstance(app.screen, ConfirmScreen)


async def test_banner_when_the_controller_goes_away_then_reconnects(controller: RunningController) -> None:
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        assert not app.banner.has_class("-visible")
        await controller.stop_http()
        await until(pilot, lambda: app.banner.has_class("-visible"))
        assert "unreachable" in plain(app.banner)
        rows = app.tiers.table.row_count
        assert rows > 0  # the last fleet stays on screen
        polls = app.polls
        await controller.start_http()
        await until(pilot, lambda: not app.banner.has_class("-visible") and app.polls > polls)
        assert app.connected


async def test_arrows_skip_replica_rows_and_enter_opens_a_tier(controller: RunningController) -> None:
    """With small's replicas open, ↓ goes to large (not onto small's replica), so ↓ then m pins large."""
    app = console(controller)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.polls >= 1)
        table = app.tiers.table
        assert app.tiers.selected_tier() == "small"
        await pilot.press("enter")
        await until(pilot, lambda: any(str(r.key.value).startswith("rep:small:") for r in table.ordered_rows))
        assert cell(app, "tiers-table", "tier:small", "name").startswith("▾")
        await pilot.press("down")
        assert table.ordered_rows[table.cursor_row].key.value == "tier:large"
        await pilot.press("up")
        assert table.ordered_rows[table.cursor_row].key.value == "tier:small"
        await pilot.press("down", "m")
        await until(pilot, lambda: isinstance(app.screen, PinScreen))
        assert app.screen.tier == "large"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, PinScreen))
        await pilot.press("up", "enter")  # Enter again folds small's replicas
        await until(pilot, lambda: not any(str(r.key.value).startswith("rep:small:") for r in table.ordered_rows))


async def test_auth_error_is_one_line_that_fits_100_columns(controller: RunningController) -> None:
    app = console(controller, token="wrong")
    async with app.run_test(size=(100, 24)) as pilot:
        await until(pilot, lambda: app.failures >= 1)
        await pilot.pause(0.05)
        text = plain(app.banner)
        assert "\n" not in text and len(text) <= 98
        assert text.startswith("⚠ token rejected: pass --token or set THRIFTY_CONTROLLER_TOKEN")


async def test_empty_panels_say_what_will_appear_and_when() -> None:
    ctl = await start_controller(minutes=0)  # a fresh controller: no traffic, no history yet
    try:
        app = console(ctl)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.polls >= 1)
            await pilot.pause(0.1)
            assert not app.cost.spark.display and app.cost.hint.display
            assert "after the first minute of traffic" in plain(app.cost.hint)
            assert app.alerts.hint.display and not app.alerts.table.display
            assert "~10 min of traffic" in plain(app.alerts.hint)
            assert app.decisions.hint.display and "every change of replicas" in plain(app.decisions.hint)
            await ctl.feed(8)  # traffic: the hints give way to the data
            await until(pilot, lambda: app.alerts.table.display and app.decisions.table.display and app.cost.spark.display,
                        timeout=5)
            assert not app.alerts.hint.display and not app.cost.hint.display
    finally:
        await ctl.stop_http()


def test_latency_column_has_one_unit() -> None:
    assert fmt.latency_vs_slo(49_600, 2000).plain == "49.6/2.00"
    assert fmt.latency_vs_slo(23, 2000).plain == "0.02/2.00"
    assert fmt.latency_vs_slo(None, 2000).plain == f"{fmt.MISSING}/2.00"


def test_capacity_is_short_tokens_per_second() -> None:
    assert [fmt.tokens_rate(v) for v in (None, 840, 3600, 12_345)] == [fmt.MISSING, "840", "3.6k", "12k"]


QUALITY = {  # `quality` of GET /api/v1/fleet (docs/contracts.md), after verdicts and control requests
    "target": 0.95, "confidence": 0.9, "reference_tier": "large", "threshold_in_force": 0.62,
    "chosen_cheap_tier": "small", "cluster_thresholds": {}, "verdicts": 400,
    "pairs": [
        {"kind": "cache", "cheap_tier": "small", "reference_tier": "large", "verdicts": 900, "quality": 0.5, "lower_bound": 0.4},
        {"kind": "router", "cheap_tier": "small", "reference_tier": "large", "verdicts": 300, "quality": 0.9,
         "lower_bound": 0.88, "calibrated": {"threshold": 0.62, "cheap_share": 0.6, "quality_retained": 0.961,
                                             "lower_bound": 0.953}},
    ],
    "alerts": [],
    "ledger": {"control": {"requests": 40}, "treated": {"requests": 4000},
               "savings": {"measured": 0.41, "measured_lower": 0.35, "measured_upper": 0.47, "modelled": 0.44}},
}


def test_quality_line_reports_the_operating_point_and_the_ledger() -> None:
    line = fmt.quality_line(QUALITY)
    # the calibrated point of the chosen router pair, not the pooled mean or the cache pair
    assert line.plain == "quality small 96.1% lb 95.3%≥95%  saved 41% [35–47] model 44%"
    assert len(line.plain) <= 78
    bound = next(s for s in line.spans if line.plain[s.start:s.end].startswith(" lb"))
    assert "green" in str(bound.style)


def test_quality_line_marks_a_quality_drop_in_red() -> None:
    q = {**QUALITY, "alerts": [{"signal": "quality_drop", "tier": "small", "active": True}],
         "pairs": [{**QUALITY["pairs"][1], "calibrated": {**QUALITY["pairs"][1]["calibrated"], "lower_bound": 0.91}}]}
    line = fmt.quality_line(q)
    assert line.plain.startswith("⚠ DROP small  quality small 96.1% lb 91.0%<95%")
    assert len(line.plain) <= 78
    marker = next(s for s in line.spans if line.plain[s.start:s.end].startswith("⚠"))
    bound = next(s for s in line.spans if line.plain[s.start:s.end].startswith(" lb"))
    assert "red" in str(marker.style) and "red" in str(bound.style)


def test_quality_line_before_any_evidence() -> None:
    q = {**QUALITY, "pairs": [], "chosen_cheap_tier": None,
         "ledger": {"control": {"requests": 1}, "savings": {"measured": None, "modelled": None}}}
    assert fmt.quality_line(q).plain == "quality — no verdicts yet (target 95%)  saved — (1 control) model —"
    assert fmt.quality_line(None).plain == "quality loop off"


async def test_quality_line_follows_the_controllers_verdicts_and_marks_a_drop() -> None:
    """Shadow verdicts and ledger deltas reach the real controller as telemetry: the line shows its
    calibrated operating point and measured savings, then a red DROP marker once quality falls."""
    from thrifty.wire.quality import LedgerGroup, ShadowVerdict

    def judged(n: int, lo: float, hi: float, score: float) -> list[ShadowVerdict]:
        return [ShadowVerdict("router", "small", "large", 0, lo + (hi - lo) * i / (n - 1), score) for i in range(n)]

    ctl = await start_controller(minutes=2)
    try:
        ledger = [LedgerGroup("control", 50, 50 * 0.01, 50 * 0.0001, 50 * 0.01),
                  LedgerGroup("treated", 500, 500 * 0.004, 500 * 0.00002, 500 * 0.01)]
        ctl.clock[0] += 10
        ctl.plane.ingest("sidecar-a", StatsWindow(ctl.clock[0] - 10, ctl.clock[0], [], seq=10_000,
                                                   verdicts=judged(200, 0.5, 1.0, 1.0) + judged(200, 0.0, 0.49, 0.0),
                                                   ledger=ledger))
        await ctl.plane.tick()
        app = console(ctl, interval_s=60)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.polls >= 1)
            q = ctl.plane.fleet_json()["quality"]
            assert q["chosen_cheap_tier"] == "small" and q["ledger"]["savings"]["measured"] is not None
            line = plain(app.quality)
            assert line == fmt.quality_line(q).plain and line.startswith("quality small ")
            assert f"saved {fmt.pct(q['ledger']['savings']['measured'])} [" in line and "DROP" not in line
            assert not app.quality.has_class("-alerting")
            # the cheap tier gets worse on easy prompts too: the controller raises quality_drop
            ctl.clock[0] += 10
            ctl.plane.ingest("sidecar-a", StatsWindow(ctl.clock[0] - 10, ctl.clock[0], [], seq=10_001,
                                                       verdicts=judged(600, 0.5, 1.0, 0.0)))
            await ctl.plane.tick()
            await app.refresh_now()
            await pilot.pause(0.05)
            # the alert judged the threshold that was in force; the line's figures are the
            # calibrator's new operating point (a higher threshold), pushed in the same round
            q = ctl.plane.fleet_json()["quality"]
            assert [a["tier"] for a in q["alerts"]] == ["small"] and q["threshold_in_force"] > 0.5
            line = plain(app.quality)
            assert line == fmt.quality_line(q).plain and line.startswith("⚠ DROP small  quality small")
            assert app.quality.has_class("-alerting")
    finally:
        await ctl.stop_http()
