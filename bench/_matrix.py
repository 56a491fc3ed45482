"""The part every `*_matrix` bench shares: parse `--trace/--variants/--jobs/--json [-- bench args]`,
run one bench module per trace x variant in its own process (`--jobs` at a time), and keep the JSON.

Why a process per run: each bench is single-threaded numpy/asyncio work on a virtual clock,
so separate processes are what lets `--jobs 2` use two cores; a run that fails is reported
as `{"error": its last stderr line}` and the others still print.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from thrifty.sim.traces import VARIANTS


@dataclass(frozen=True, slots=True)
class MatrixRun:
    combos: list[tuple[str, str | None]]  # (trace path, variant or None for the trace as is)
    outs: list[dict]  # each run's JSON (the bench's last stdout line), in combos' order
    json_path: str | None

    def keep(self, key: Callable[[str, str | None], str] | None = None) -> None:
        """Write every run's JSON to `--json FILE`, if given, keyed `trace-file-name:variant` unless `key`."""
        if self.json_path:
            key = key or (lambda trace, variant: f"{Path(trace).name}:{variant or 'none'}")
            rows = {key(t, v): out for (t, v), out in zip(self.combos, self.outs)}
            Path(self.json_path).write_text(json.dumps(rows, indent=1))


def run_one(module: str, trace: str, variant: str | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", module, "--trace", trace, *extra]
    if variant:
        cmd += ["--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def run_matrix(prog: str, module: str, doc: str, argv: list[str] | None) -> MatrixRun | int:
    """Every trace x variant through `module`; an exit code (2) after a one-line error for bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n")[0])
    p.add_argument("--trace", action="append", required=True, help="a trace file (repeat for several)")
    p.add_argument("--variants", default="none," + ",".join(VARIANTS),
                   help="comma-separated variants; 'none' = the trace as is (default: none and all)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--json", help="write every run's JSON here")
    args = p.parse_args(argv)
    variants = [None if v == "none" else v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v is not None and v not in VARIANTS]
    if bad:
        print(f"{prog.rsplit('.', 1)[-1]}: unknown variant(s) {', '.join(bad)}; known: none, {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    combos = [(t, v) for t in args.trace for v in variants]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outs = list(pool.map(lambda c: run_one(module, c[0], c[1], extra), combos))
    return MatrixRun(combos, outs, args.json)
