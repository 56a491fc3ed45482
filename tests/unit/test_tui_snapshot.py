"""Screenshot regression for the console at 80x24.

The fleet is the real controller fed the pilot tests' scenario on a virtual clock, so
every figure (and the clock on screen) is the same on every run.
Refresh the stored SVGs with `THRIFTY_SNAPSHOT_UPDATE=1 pytest tests/unit/test_tui_snapshot.py`
(that also rewrites docs/tui.svg).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_tui_pilot import RunningController, console, start_controller

SNAPSHOTS = Path(__file__).parent / "snapshots"
DOCS_SHOT = Path(__file__).parents[2] / "docs" / "tui.svg"
UPDATE = os.environ.get("THRIFTY_SNAPSHOT_UPDATE") == "1"



@pytest.fixture
async def fixed_controller() -> AsyncIterator[RunningController]:
    ctl = await start_controller()
    yield ctl
    await ctl.stop_http()


def _normalise(svg: str, url: str) -> str:
    """The loopback port differs per run (and so does the SVG's id, a hash of the
    content); everything else must match byte for byte."""
    port = url.rsplit(":", 1)[1]
    svg = re.sub(r"terminal-\d+", "terminal-0", svg)
    return svg.replace(f"127.0.0.1:{port}", "127.0.0.1:PORT")


async def _screenshot(ctl: RunningController) -> str:
    # One poll, then a long quiet spell: the screenshot sees a settled layout.
    app = console(ctl, interval_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.polls < 1:
            await pilot.pause(0.02)
        # Column widths settle on each table's idle pass: wait until two renders agree.
        shot = ""
        for _ in range(200):
            await pilot.pause(0.05)
            previous, shot = shot, app.export_screenshot()
            if shot == previous:
                return shot
        pytest.fail("the console's layout did not settle within 10 s")


def _compare(name: str, svg: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"no stored snapshot {path.name}; run with THRIFTY_SNAPSHOT_UPDATE=1 to create it")
        path.write_text(svg)
        return
    stored = path.read_text()
    if stored != svg:
        Path(os.environ.get("TMPDIR", "/tmp"), "thrifty-" + name).write_text(svg)
        diff = "".join(list(difflib.unified_diff(stored.splitlines(True), svg.splitlines(True), "stored", "now", n=0))[:40])
        pytest.fail(f"{path.name} changed (THRIFTY_SNAPSHOT_UPDATE=1 to accept):\n{diff}")


async def test_console_at_80x24_matches_snapshot(fixed_controller: RunningController) -> None:
    url = fixed_controller.url
    svg = _normalise(await _screenshot(fixed_controller), url)
    assert "Tiers &amp; replicas" in svg or "Tiers&#160;&amp;&#160;replicas" in svg
    _compare("tui_fleet_80x24.svg", svg)
    if UPDATE:
        DOCS_SHOT.write_text(svg)


async def test_paused_and_pinned_fleet_matches_snapshot(fixed_controller: RunningController) -> None:
    url = fixed_controller.url
    fixed_controller.plane.pause(True)
    fixed_controller.plane.pin("small", 1, 2)
    svg = _normalise(await _screenshot(fixed_controller), url)
    assert re.search(r"PAUSED", svg)
    _compare("tui_paused_80x24.svg", svg)


async def test_snapshot_is_stable_across_runs(fixed_controller: RunningController) -> None:
    """Guards the comparison itself: two renders of the same fleet are identical."""
    url = fixed_controller.url
    assert _normalise(await _screenshot(fixed_controller), url) == _normalise(await _screenshot(fixed_controller), url)
