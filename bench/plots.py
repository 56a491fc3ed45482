"""`thrifty bench NAME --plot FILE.png`: one small figure per bench, written headless.

Each function takes what its bench already computed (its JSON report, or the inputs of its
replays) and writes one PNG of fixed pixel size (SIZE_PX), so the README and the tests can
rely on it. matplotlib (the `bench` extra) is imported only here and only when a plot is
asked for, with the Agg backend: no display needed, and the benches stay importable without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FIG_IN = (8.0, 4.5)
DPI = 100
SIZE_PX = (int(FIG_IN[0] * DPI), int(FIG_IN[1] * DPI))  # (width, height) of every PNG


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'thrifty[bench]'") from None
    matplotlib.use("Agg")  # headless: never opens a window, works without $DISPLAY
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox "tight": the pixel size stays SIZE_PX
    _pyplot().close(fig)
    print(f"plot: {path}")
    return path


def _figure(rows: int = 1, cols: int = 1, **kw: Any):  # type: ignore[no-untyped-def]
    return _pyplot().subplots(rows, cols, figsize=FIG_IN, dpi=DPI, layout="constrained", **kw)


def _num(v: Any) -> float:
    """A figure from a bench report as a float; None (nothing to measure) plots as a gap."""
    return float("nan") if v is None else float(v)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def routing(result: dict[str, Any], path: str | Path) -> Path:
    """Quality kept vs cost saved: the router's curve, the chosen point and the baselines."""
    fig, ax = _figure()
    curve = sorted(result.get("curve") or [], key=lambda p: p["cost_reduction"])
    if curve:
        ax.plot([p["cost_reduction"] for p in curve], [p["quality_retained"] for p in curve], "-o", ms=3,
                color="tab:blue", label="router (labelled curve)")
    marks = [("random", "random routing at the goal", "s", "tab:gray"), ("oracle", "oracle", "^", "tab:green"),
             ("read_off_labelled_curve", "read off the curve", "D", "tab:purple")]
    for key, label, marker, color in marks:
        p = result.get(key) or {}
        if p.get("cost_reduction") is not None:
            ax.plot(p["cost_reduction"], p["quality_retained"], marker, color=color, ms=8, label=label)
    ax.plot(0.0, 1.0, "x", color="black", ms=8, label="all to the strongest model")
    if result.get("cost_reduction") is not None:
        ax.plot(result["cost_reduction"], result["quality_retained"], "*", color="tab:red", ms=16,
                label=f"chosen (label-free): {result['cost_reduction']:.0%} cheaper")
    ax.axhline(result.get("target_quality", 0.95), ls="--", lw=1, color="tab:red", alpha=0.6, label="quality target")
    ax.set(xlabel="cost reduction vs the strongest model", ylabel="quality retained",
           title=f"routing: {Path(str(result.get('data', ''))).name} ({result.get('rows_scored', '?')} held-out rows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def cache(result: dict[str, Any], path: str | Path) -> Path:
    """Precision and recall of the semantic cache against the verifier threshold."""
    fig, ax = _figure()
    curve = result.get("pr_curve") or []
    thresholds = [p["threshold"] for p in curve]
    ax.plot(thresholds, [_num(p["precision"]) for p in curve], "-o", ms=3, label="precision")
    ax.plot(thresholds, [_num(p["recall"]) for p in curve], "-o", ms=3, label="recall")
    chosen = (result.get("threshold") or {}).get("verifier")
    if chosen is not None:
        ax.axvline(chosen, ls="--", color="tab:red", lw=1,
                   label=f"shipped threshold {chosen:.2f}: P {_fmt(result.get('precision'))}, R {_fmt(result.get('recall'))}")
    base = result.get("baseline") or {}
    if base.get("precision") is not None:
        ax.axhline(base["precision"], ls=":", color="tab:gray", lw=1, label=f"{base['name']}: P {_fmt(base['precision'])}")
    ax.set(xlabel="verifier threshold", ylabel="share", ylim=(0, 1.02),
           title=f"semantic cache: {result.get('pairs_scored', '?')} unseen pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def cost(report: dict[str, Any], path: str | Path) -> Path:
    """Dollars lever by lever: each bar starts where the previous step ended."""
    fig, ax = _figure()
    steps = report.get("breakdown") or []
    names = [s["step"] for s in steps]
    dollars = [s["dollars"] for s in steps]
    money = lambda d: f"${d:,.2f}" if d < 100 else f"${d:,.0f}"  # noqa: E731
    for i, d in enumerate(dollars):
        if i == 0:
            ax.bar(i, d, color="tab:gray")
        else:
            prev = dollars[i - 1]
            ax.bar(i, d - prev, bottom=prev, color="tab:green" if d <= prev else "tab:red")
            ax.hlines(d, i - 0.4, i + 0.4, color="black", lw=0.8)  # a step that changed nothing still shows
        ax.text(i, max(d, dollars[i - 1] if i else d), money(d), ha="center", va="bottom", fontsize=7)
    if dollars:
        ax.bar(len(dollars), dollars[-1], color="tab:blue")
        ax.text(len(dollars), dollars[-1], f"{report.get('cost_reduction', 0):.0%} saved", ha="center", va="bottom", fontsize=8)
    ax.margins(y=0.12)
    ax.set_xticks(range(len(names) + 1), [*names, "thrifty"], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="dollars for the workload", title="cost: lever by lever (green: the step saved)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def autoscale(path: str | Path, timelines: dict[str, list[tuple[float, float, int, int, int]]], slo_ttft_s: float,
              bucket_s: float | None = None) -> Path:
    """Load, replicas and SLO attainment over time for each policy.

    `timelines[policy]` holds one (time_s, token_rate, replicas, finished, missed) per tick,
    as `autoscale_timelines` records them.
    """
    fig, (ax_load, ax_rep, ax_slo) = _figure(3, 1, sharex=True)
    first = next(iter(timelines.values()), [])
    if bucket_s is None:  # about 40 points of SLO attainment whatever the trace's length
        bucket_s = max(60.0, (first[-1][0] if first else 0.0) / 40)
    ax_load.plot([t / 60 for t, *_ in first], [r for _, r, *_ in first], color="tab:gray", lw=0.8)
    ax_load.set(ylabel="tokens/s")
    for name, ticks in timelines.items():
        ax_rep.step([t / 60 for t, *_ in ticks], [n for _, _, n, _, _ in ticks], where="post", label=name, lw=1.2)
        buckets: dict[int, list[int]] = {}
        for t, _, _, done, missed in ticks:
            b = buckets.setdefault(int(t // bucket_s), [0, 0])
            b[0], b[1] = b[0] + done, b[1] + missed
        xs = [(k + 0.5) * bucket_s / 60 for k in sorted(buckets) if buckets[k][0]]
        ys = [1 - buckets[k][1] / buckets[k][0] for k in sorted(buckets) if buckets[k][0]]
        ax_slo.plot(xs, ys, "-o", ms=2, lw=1, label=name)
    ax_rep.set(ylabel="replicas")
    ax_rep.legend(fontsize=7, loc="upper left", ncols=3)
    ax_slo.set(ylabel=f"TTFT ≤ {slo_ttft_s:g} s", xlabel="minutes", ylim=(None, 1.01))
    for ax in (ax_load, ax_rep, ax_slo):
        ax.grid(alpha=0.3)
    fig.suptitle("autoscale: load, replicas and SLO attainment per policy", fontsize=10)
    return _save(fig, path)


def autoscale_timelines(args: Any, trace: Sequence[Any], profile: Any, initial: int, static_n: int,
                        common: dict[str, Any]) -> dict[str, list[tuple[float, float, int, int, int]]]:
    """Replay each policy of `thrifty bench autoscale` once more, fresh, recording every tick.

    The same `run_policy`, policies and arguments as the bench's table, so the timeline is
    the run the table reports (the replay is deterministic).
    """
    from thrifty.bench.autoscale import KedaHpa, run_policy, thrifty_policy

    keda = KedaHpa(max_r=args.max_replicas)
    thrifty = thrifty_policy(profile, args.startup_s, args.slo_ttft_s, args.max_replicas,
                             getattr(args, "target_utilization", None))
    policies: dict[str, tuple[Callable[..., int], int]] = {
        "static_peak": (lambda now, obs, cur: static_n, static_n),
        "keda_threshold": (lambda now, obs, cur: keda.decide(now, obs, cur), initial),
        "thrifty": (thrifty, initial),
    }
    out: dict[str, list[tuple[float, float, int, int, int]]] = {}
    for name, (decide, start) in policies.items():
        ticks: list[tuple[float, float, int, int, int]] = []

        def recording(now: float, obs: Any, current: int, decide: Callable[..., int] = decide,
                      ticks: list = ticks) -> int:
            ticks.append((now, obs.token_rate, obs.ready + obs.starting, obs.ttft_finished, obs.ttft_missed))
            return decide(now, obs, current)

        run_policy(list(trace), profile, recording, start, plane=thrifty.plane if decide is thrifty else None, **common)
        out[name] = ticks
    return out


def autoscale_from_bench(path: str | Path, args: Any, trace: Sequence[Any], profile: Any, initial: int, static_n: int,
                         common: dict[str, Any]) -> Path:
    """The autoscale bench's plot from its own inputs (one call at the end of the bench)."""
    return autoscale(path, autoscale_timelines(args, trace, profile, initial, static_n, common), args.slo_ttft_s)


def drift(path: str | Path, series: dict[str, tuple[list[float], list[float]]], inject_at: float,
          detected: dict[str, list[float]], labels: dict[str, str]) -> Path:
    """Each injected drift: the signal that should catch it, the injection and the detections.

    `series[drift] = (times_s, values)`; `detected[drift]` = alert times (s) on that signal.
    """
    fig, axes = _figure(2, 2, sharex=True)
    for ax, (name, (times, values)) in zip(axes.flat, series.items()):
        ax.plot([t / 60 for t in times], values, lw=0.9, color="tab:blue")
        ax.axvline(inject_at / 60, color="tab:orange", ls="--", lw=1.2, label="injected")
        for i, t in enumerate(detected.get(name, [])):
            ax.axvline(t / 60, color="tab:red", lw=1.2, label="detected" if i == 0 else None)
        ax.set_title(f"{name}: {labels.get(name, '')}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("drift: injected changes and when the detector raised them", fontsize=10)
    return _save(fig, path)


def drift_from_bench(path: str | Path, drifts: dict[str, tuple[Any, Any]], period: float, inject_at: float,
                     method: str) -> Path:
    """The drift bench's plot from its simulated drifts (one call at the end of the bench)."""
    from thrifty.bench.drift import CATCHES

    series, detected, labels = drift_series(drifts, period, CATCHES, method)
    return drift(path, series, inject_at, detected, labels)


def drift_series(drifts: dict[str, tuple[Any, Any]], period: float, catches: dict[str, set[tuple[str, str]]],
                 method: str) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, list[float]], dict[str, str]]:
    """One replay per drift (the bench's first seed) through its detectors, keeping the caught signal's values."""
    from thrifty.bench import drift as bench
    from thrifty.controller.drift import bucket_signals

    series: dict[str, tuple[list[float], list[float]]] = {}
    detected: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for name, (records, inject) in drifts.items():
        signals = {s for s, _ in catches[name]}
        det = bench.Detectors()
        times: list[float] = []
        values: list[float] = []
        key: tuple[str, str | None] | None = None
        for w in bench.windows(bench.bootstrap(records, 0), 0.0, inject, period):
            det.fleet.ingest("sim-sidecar", w)
            while w.window_end >= det.next_bucket - 1e-9:
                now = det.next_bucket
                got = bucket_signals(det.fleet, now, bench.BUCKET_S)
                for mon in det.monitors.values():
                    mon.observe(now, got)
                if key is None:
                    key = next((k for k in sorted(got, key=str) if k[0] in signals and got[k] is not None), None)
                if key is not None and got.get(key) is not None:
                    times.append(now)
                    values.append(float(got[key]))
                det.next_bucket += bench.BUCKET_S
        series[name] = (times, values)
        labels[name] = f"{key[0]}[{key[1] or 'fleet'}]" if key else "no signal"
        detected[name] = [a.detected_time for a in det.monitors[method].alerts if (a.signal, a.direction) in catches[name]]
    return series, detected, labels
