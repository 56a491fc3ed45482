"""`python -m thrifty.bench.autoscale_matrix --trace A --trace B ...`: the autoscale bench on every trace x variant.

Runs `thrifty bench autoscale` once per trace and per variant (plus the trace as is), each in
its own process (`--jobs` at a time), and prints one table row per run against the issue's
goals: thrifty's SLO attainment (>= 0.99), GPU-hours over static_slo's (<= 0.8), scale actions
over KEDA's (<= 0.67), dropped (0), and GPU-hours over the oracle bound. Arguments after `--`
go to every run (e.g. `-- --limit 4000 --max-replicas 48`). `--json FILE` keeps every run's JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

from thrifty.bench._matrix import run_matrix


def main(argv: list[str] | None = None) -> int:
    run = run_matrix("thrifty.bench.autoscale_matrix", "thrifty.bench.autoscale", __doc__, argv)
    if isinstance(run, int):
        return run
    head = (f"{'trace':<30}{'variant':<15}{'slo':>7}{'slo_la':>7}{'gpu_h':>7}{'static_slo':>11}{'/static_slo':>12}"
            f"{'act':>5}{'keda_act':>9}{'/keda':>6}{'drop':>6}{'/oracle':>8}{'oracle/ss':>10}{'rej_long':>9}  goals")
    print(head)
    for (t, v), out in zip(run.combos, run.outs):
        name = Path(t).name
        if "error" in out:
            print(f"{name:<30}{v or 'none':<15}  error: {out['error']}")
            continue
        th, ss, k, r = out["thrifty"], out["static_slo"], out["keda_threshold"], out["ratios"]
        goals = [th["slo_attainment"] >= 0.99, r["gpu_hours_vs_static_slo"] <= 0.8, r["actions_vs_keda"] <= 0.67,
                 th["dropped"] == 0]
        print(f"{name:<30}{v or 'none':<15}{th['slo_attainment']:>7.4f}{th['slo_attainment_length_aware']:>7.4f}"
              f"{th['gpu_hours']:>7.2f}{ss['gpu_hours']:>11.2f}{r['gpu_hours_vs_static_slo']:>12.2f}"
              f"{th['scale_actions']:>5}{k['scale_actions']:>9}{r['actions_vs_keda']:>6.2f}{th['dropped']:>6}"
              f"{r['gpu_hours_vs_oracle']:>8.2f}{r['oracle_vs_static_slo']:>10.2f}{out['trace']['rejected_too_long']:>9}"
              f"  {''.join('Y' if g else 'n' for g in goals)}")
    print("goals (Y/n): SLO >= 0.99, gpu_h <= 0.8x static_slo, actions <= 0.67x KEDA's, 0 dropped")
    run.keep()
    return 0


if __name__ == "__main__":
    sys.exit(main())
