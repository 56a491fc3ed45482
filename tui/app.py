"""The Textual app: one poll loop feeding every panel, and the operator's actions.

The poll loop runs as a worker on the event loop (aiohttp, never blocking); a failed
poll shows the banner and keeps the last data on screen, the next success hides it,
so a controller restart needs no action from the operator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer

from thrifty.tui.client import ControllerClient, ControllerError, FleetSnapshot
from thrifty.tui.modals import ConfirmScreen, HelpScreen, PinRequest, PinScreen, ThresholdScreen
from thrifty.tui.widgets import AlertsPanel, ConnectionBanner, CostPanel, DecisionsPanel, LeversPanel, QualityLine, StatusLine, TiersTable


class ThriftyApp(App[None]):
    """Live console over the controller's HTTP API."""

    CSS_PATH = "app.tcss"
    TITLE = "thrifty"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "toggle_autoscaling", "Pause/resume"),
        Binding("m", "pin", "Pin tier"),
        Binding("t", "threshold", "Threshold"),
        Binding("r", "refresh", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: ControllerClient, *, interval_s: float = 1.0) -> None:
        super().__init__()
        self.client = client
        self.interval_s = interval_s
        self.snapshot: FleetSnapshot | None = None
        self.connected = False
        self.failures = 0
        self.last_ok: float | None = None
        self.polls = 0

    def compose(self) -> ComposeResult:
        # Held directly: queries go to the active screen, which is a modal during actions.
        self.status_line = StatusLine("thrifty  connecting…", id="status")
        self.banner = ConnectionBanner(id="banner")
        self.quality = QualityLine(id="quality")
        self.cost = CostPanel(id="cost")
        self.levers = LeversPanel(id="levers")
        self.tiers = TiersTable(id="tiers")
        self.alerts = AlertsPanel(id="alerts")
        self.decisions = DecisionsPanel(id="decisions")
        yield self.status_line
        yield self.quality
        yield self.banner
        with Horizontal(id="top"):
            yield self.cost
            yield self.levers
        yield self.tiers
        with Horizontal(id="bottom"):
            yield self.alerts
            yield self.decisions
        yield Footer()

    def on_ready(self) -> None:
        """Poll only once every panel is composed and mounted (Ready follows the first paint)."""
        self.tiers.table.focus()
        self.run_worker(self._poll_forever(), name="poll", group="poll", exclusive=True)

    async def on_unmount(self) -> None:
        await self.client.close()

    async def _poll_forever(self) -> None:
        while True:
            started = time.monotonic()
            await self.refresh_now()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def refresh_now(self) -> None:
        """One poll: fetch everything, then update every panel in place."""
        try:
            snap = await self.client.snapshot()
        except ControllerError as exc:
            self.failures += 1
            self.connected = False
            self.banner.show_error(str(exc), self.failures, self.last_ok, exc.status)
            return
        was_down = self.failures > 0
        self.snapshot, self.connected, self.failures, self.last_ok = snap, True, 0, time.time()
        self.polls += 1
        self.banner.clear_error()
        self.status_line.show(snap, self.client.base_url)
        self.quality.show(snap)
        for panel in (self.cost, self.levers, self.tiers, self.alerts, self.decisions):
            panel.show(snap)
        if was_down:
            self.notify("controller reachable again", timeout=3)

    # --- actions -----------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_refresh(self) -> None:
        await self.refresh_now()

    def _tier(self, name: str) -> dict[str, Any] | None:
        tiers = (self.snapshot.fleet.get("tiers") if self.snapshot else None) or []
        return next((t for t in tiers if t.get("name") == name), None)

    async def _change(self, question: str, call: Callable[[], Awaitable[Any]], done: str) -> None:
        """Confirm, call the controller, report, refresh: the path every action takes."""
        if not await self.push_screen_wait(ConfirmScreen(question)):
            self.notify("cancelled", timeout=2)
            return
        try:
            await call()
        except ControllerError as exc:
            self.notify(str(exc), title="controller refused", severity="error", timeout=6)
            return
        self.notify(done, timeout=3)
        await self.refresh_now()

    @work(group="actions")
    async def action_toggle_autoscaling(self) -> None:
        if not self.connected or self.snapshot is None:
            self.notify("not connected to the controller", severity="warning")
            return
        pause = not self.snapshot.fleet.get("autoscaling_paused")
        verb = "Pause" if pause else "Resume"
        await self._change(
            f"{verb} autoscaling for the whole fleet?",
            lambda: self.client.set_autoscaling(pause),
            f"autoscaling {'paused' if pause else 'resumed'}",
        )

    @work(group="actions")
    async def action_pin(self) -> None:
        name = self.tiers.selected_tier()
        tier = self._tier(name) if name else None
        if tier is None or name is None:
            self.notify("select a tier first (↑/↓ in the tiers table)", severity="warning")
            return
        req: PinRequest | None = await self.push_screen_wait(
            PinScreen(name, tier.get("min"), tier.get("max"), bool(tier.get("pinned")))
        )
        if req is None:
            return
        if req.minimum is None:
            question, done = f"Unpin tier {name} (bounds back to its config)?", f"{name} unpinned"
        else:
            question = f"Pin tier {name} to {req.minimum}-{req.maximum} replicas?"
            done = f"{name} pinned to {req.minimum}-{req.maximum}"
        await self._change(question, lambda: self.client.pin_tier(name, req.minimum, req.maximum), done)

    @work(group="actions")
    async def action_threshold(self) -> None:
        current = self.snapshot.fleet.get("router_threshold") if self.snapshot else None
        value = await self.push_screen_wait(ThresholdScreen(current if isinstance(current, (int, float)) else None))
        if value is None:
            return
        await self._change(
            f"Set the router threshold to {value:.2f} on every sidecar?",
            lambda: self.client.set_router_threshold(value),
            f"router threshold set to {value:.2f}",
        )
