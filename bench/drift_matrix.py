"""`python -m thrifty.bench.drift_matrix --trace A --trace B ...`: the drift bench on every trace x variant.

Runs `thrifty bench drift` once per trace and per variant (plus the trace as is), each in its
own process (`--jobs` at a time), and prints a markdown table with one row per run against the
issue's goals (every injected drift detected, median delay <= 300 s, <= 1 false alarm a day):
detected/injected per drift kind, median delay, false alarms (count over the clean days
replayed, per day, and per signal). One false alarm in the default 0.97-day replay already
reads 1.03 a day, so pass e.g. `-- --hours 72` for a rate resolved to 0.35 a day. Arguments
after `--` go to every run. `--json FILE` keeps every run's JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

from thrifty.bench._matrix import run_matrix
from thrifty.bench.drift import DRIFTS

MAX_DELAY_S = 300.0
MAX_FALSE_PER_DAY = 1.0


def goals_met(out: dict) -> bool:
    """Every injected drift detected, median delay <= 300 s, false alarms <= 1 a day."""
    delay = out["median_delay_s"]
    return (out["detected"] == out["injected"] and delay is not None and delay <= MAX_DELAY_S
            and out["false_alarms_per_day"] <= MAX_FALSE_PER_DAY)


def row(name: str, variant: str, out: dict) -> str:
    if "error" in out:
        return f"| {name} | {variant} | error: {out['error']} |" + " |" * (len(DRIFTS) + 4)
    cells = []
    for d in DRIFTS:
        b = out["by_drift"][d]
        delay = b["median_delay_s"]
        cells.append(f"{b['detected']}/{b['injected']}" + (f" {delay:.0f}s" if delay is not None else ""))
    delay = "-" if out["median_delay_s"] is None else f"{out['median_delay_s']:.0f}"
    by = ", ".join(f"{k} {v:.2f}" for k, v in out["false_alarms_by_signal"].items()) or "-"
    false = f"{out['false_alarms']} / {out['clean_days']:.2f} d = {out['false_alarms_per_day']:.2f}"
    return (f"| {name} | {variant} | " + " | ".join(cells) + f" | {out['detected']}/{out['injected']} | {delay} | "
            f"{false} | {by} | {'Y' if goals_met(out) else 'n'} |")


def main(argv: list[str] | None = None) -> int:
    run = run_matrix("thrifty.bench.drift_matrix", "thrifty.bench.drift", __doc__, argv)
    if isinstance(run, int):
        return run
    print("| trace | variant | " + " | ".join(DRIFTS) + " | detected | median delay s | false alarms (n / days = per day)"
          " | per signal (per day) | goals |")
    print("|" + "---|" * (len(DRIFTS) + 7))
    met, total_false, total_days = 0, 0, 0.0
    for (t, v), out in zip(run.combos, run.outs):
        name = Path(t).stem
        print(row(name, v or "none", out))
        if "error" not in out:
            met += goals_met(out)
            total_false += out["false_alarms"]
            total_days += out["clean_days"]
    print(f"\ngoals met on {met} of {len(run.combos)} runs (every drift detected, median delay <= {MAX_DELAY_S:.0f} s, "
          f"<= {MAX_FALSE_PER_DAY:g} false alarm a day); false alarms over all runs: {total_false} in "
          f"{total_days:.1f} days = {total_false / total_days if total_days else 0:.2f} a day")
    run.keep(lambda trace, variant: f"{Path(trace).stem}:{variant or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
