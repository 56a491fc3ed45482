"""Pure formatting for the console's cells: short, fixed-width, and tolerant of missing
values (the controller may not know a figure yet), which all render as an em dash."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

MISSING = "—"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def pct(value: Any, digits: int = 0) -> str:
    """0.4213 -> '42%' (ratios in [0, 1] as the API sends them)."""
    v = _num(value)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def money(value: Any) -> str:
    v = _num(value)
    if v is None:
        return MISSING
    return f"${v:,.2f}" if abs(v) < 1000 else f"${v:,.0f}"


def seconds(value_ms: Any) -> str:
    """Milliseconds as seconds, one unit for a whole column: 850 -> '0.85', 49600 -> '49.6'."""
    v = _num(value_ms)
    if v is None:
        return MISSING
    s = v / 1000
    return f"{s:.2f}" if s < 10 else f"{s:.1f}" if s < 100 else f"{s:.0f}"


def count(value: Any) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.0f}"


def rate(value: Any) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.1f}"


def clock(unix_s: Any) -> str:
    """Wall time as HH:MM:SS UTC (UTC keeps screenshots identical across machines)."""
    v = _num(unix_s)
    return MISSING if v is None else time.strftime("%H:%M:%S", time.gmtime(v))


def change(direction: Any, size: Any) -> str:
    """A drift's direction and size: ('up', 0.45) -> '↑0.45'."""
    arrow = {"up": "↑", "down": "↓"}.get(str(direction), str(direction or "")[:4])
    v = _num(size)
    return f"{arrow}{abs(v):.2f}" if v is not None else arrow or MISSING


def latency_vs_slo(value_ms: Any, slo_ms: Any) -> Text:
    """'0.85/2.00' (seconds, as the column header says) in green within the SLO, bold red over it."""
    v, slo = _num(value_ms), _num(slo_ms)
    label = f"{seconds(v)}/{seconds(slo)}"
    if v is None or slo is None:
        return Text(label, style="dim")
    return Text(label, style="bold red" if v > slo else "green")


def lag(value_ms: Any) -> str:
    """A short delay: 4.2 -> '4.2ms', 40 -> '40ms', 1500 -> '1.5s'."""
    v = _num(value_ms)
    if v is None:
        return MISSING
    return f"{v:.1f}ms" if v < 10 else f"{v:.0f}ms" if v < 1000 else f"{v / 1000:.1f}s"


def shared_cache(sc: Any) -> Text | None:
    """`fleet.shared_cache` as one short line, '12%  p99 40ms  0 err  2/2 up' (hit rate, mirror
    lag p99, sync errors, pods using Redis), that fits the levers panel at 80 columns; None
    when the fleet has no shared tier. Errors and pods off Redis show in red."""
    if not isinstance(sc, dict):
        return None
    errors, pods, up = _num(sc.get("sync_errors")), _num(sc.get("pods")), _num(sc.get("pods_up"))
    text = Text.assemble((pct(sc.get("hit_rate")), "bold"), f"  p99 {lag(sc.get('mirror_lag_p99_ms'))}  ")
    text.append(f"{count(errors)} err", style="bold red" if errors else "")
    text.append("  ")
    text.append(f"{count(up)}/{count(pods)} up", style="bold red" if up is not None and pods is not None and up < pods else "")
    return text


def replica_label(url: str, width: int = 18) -> str:
    """'http://10.0.0.7:8001' -> '└ 10.0.0.7:8001', cut from the left to fit."""
    host = url.split("://", 1)[-1].rstrip("/")
    if len(host) > width - 2:
        host = "…" + host[-(width - 3):]
    return "└ " + host


def truncate(text: Any, width: int) -> str:
    s = MISSING if text is None else str(text)
    return s if len(s) <= width else s[: width - 1] + "…"
