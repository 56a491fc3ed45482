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


def tokens_rate(value: Any) -> str:
    """A throughput in tokens/s, short: 850 -> '850', 1234 -> '1.2k', 12345 -> '12k'."""
    v = _num(value)
    if v is None:
        return MISSING
    return f"{v:.0f}" if v < 1000 else f"{v / 1000:.1f}k" if v < 10_000 else f"{v / 1000:.0f}k"


def _quality_pair(q: dict[str, Any]) -> dict[str, Any] | None:
    """The pair the quality line reports: the calibrator's chosen router pair, else the router
    pair (then any pair) with the most verdicts."""
    pairs = [p for p in q.get("pairs") or [] if isinstance(p, dict)]
    chosen = [p for p in pairs if p.get("kind") == "router" and p.get("cheap_tier") == q.get("chosen_cheap_tier")
              and p.get("reference_tier") == q.get("reference_tier")]
    routers = [p for p in pairs if p.get("kind") == "router"]
    pool = chosen or routers or pairs
    return max(pool, key=lambda p: _num(p.get("verdicts")) or 0) if pool else None


def quality_line(q: Any) -> Text:
    """`quality` of GET /api/v1/fleet as one line that fits 80 columns:
    '⚠ DROP small  quality small 96.1% lb 95.3%≥95%  saved 41% [35–47] model 44%'.
    Quality is the calibrated operating point of the chosen tier pair (the threshold in force)
    with its one-sided bound against `target` (red when under); saved is the ledger's measured
    savings with its interval beside the modelled figure. A marker leads while a quality_drop
    alert is active."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if not isinstance(q, dict):
        return text.append("quality loop off", style="dim")
    drops = [a for a in q.get("alerts") or [] if isinstance(a, dict)]
    if drops:
        tiers = ",".join(sorted({str(a.get("tier") or "?") for a in drops}))
        text.append(f"⚠ DROP {truncate(tiers, 12)}", style="bold white on red")
        text.append("  ")
    target = _num(q.get("target"))
    text.append("quality ", style="dim")
    pair = _quality_pair(q)
    if pair is None:
        text.append(f"{MISSING} no verdicts yet (target {pct(target)})")
    else:
        cal = pair.get("calibrated") if isinstance(pair.get("calibrated"), dict) else {}
        mean = cal.get("quality_retained", pair.get("quality"))
        lower = _num(cal.get("lower_bound", pair.get("lower_bound")))
        ok = lower is not None and target is not None and lower >= target
        text.append(f"{truncate(pair.get('cheap_tier'), 8)} ")
        text.append(pct(mean, 1), style="bold")
        text.append(f" lb {pct(lower, 1)}{'≥' if ok else '<'}{pct(target)}", style="green" if ok else "bold red")
    ledger = q.get("ledger") if isinstance(q.get("ledger"), dict) else {}
    savings = ledger.get("savings") if isinstance(ledger.get("savings"), dict) else {}
    text.append("  saved ", style="dim")
    measured = _num(savings.get("measured"))
    if measured is None:
        control = (ledger.get("control") or {}).get("requests") if isinstance(ledger.get("control"), dict) else None
        text.append(f"{MISSING} ({count(control)} control)")
    else:
        lo, hi = _num(savings.get("measured_lower")), _num(savings.get("measured_upper"))
        text.append(pct(measured), style="bold green" if lo is not None and lo > 0 else "bold")
        if lo is not None and hi is not None:
            text.append(f" [{lo * 100:.0f}–{hi * 100:.0f}]")
    text.append(f" model {pct(savings.get('modelled'))}", style="dim")
    return text
