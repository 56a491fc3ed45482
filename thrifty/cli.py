"""The one console script, `thrifty`, dispatching to each part's own CLI module.

Each subcommand lives in a module exposing `add_arguments(parser)` (cheap: argparse
only) and `run(args) -> int` (imports the heavy parts lazily), so `thrifty --help`
stays fast and each part owns its flags.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from thrifty import __version__
from thrifty.config import ConfigError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("thrifty.up", "bring up engines, sidecar and controller on localhost (the embedded default)"),
    "proxy": ("thrifty.proxy.cli", "run the sidecar proxy in front of a tier's replicas"),
    "controller": ("thrifty.controller.cli", "run the control plane: telemetry, drift detection, autoscaling"),
    "tui": ("thrifty.tui.cli", "the operator's live console"),
    "engine": ("thrifty.engine.cli", "start/supervise vLLM engines, print their arguments, or run the simulator"),
    "router": ("thrifty.training.cli", "train and calibrate the learned router"),
}


def bench_names() -> list[str]:
    import thrifty.bench as bench_pkg

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_"))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    names = bench_names()
    p = sub.add_parser(
        "bench",
        help="run a benchmark (prints a table, then one JSON line)",
        description="Benchmarks: " + ", ".join(names) + ". `thrifty bench NAME --help` for each.",
    )
    p.add_argument("name", choices=names, metavar="NAME", help="one of: " + ", ".join(names))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty", description="Thrifty: cut LLM serving cost with routing, caching, balancing and autoscaling.")
    parser.add_argument("--version", action="version", version=f"thrifty {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            module = importlib.import_module("thrifty.bench." + args.name.replace("-", "_"))
            return int(module.main(args.bench_args) or 0)
        return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as exc:
        print(f"thrifty: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
