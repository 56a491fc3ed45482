"""`thrifty proxy`: run the sidecar in front of the configured tiers' replicas."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the fleet YAML (tiers, prices, admission, timeouts)")
    parser.add_argument("--host", default=None, help="listen address (default: config listen.host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: config listen.port; 0 picks a free one)")
    parser.add_argument("--controller", default=None, metavar="HOST:PORT", help="stream telemetry to this controller (gRPC)")
    parser.add_argument("--replica", action="append", default=[], metavar="TIER=URL",
                        help="a replica URL for a tier (repeat; replaces the config's replicas of that tier)")
    parser.add_argument("--sidecar-id", default=None, help="name reported to the controller, unique per pod (default: $POD_NAME, else hostname:port)")
    parser.add_argument("--telemetry-token-file", default=None, metavar="PATH",
                        help="shared telemetry token (default: $THRIFTY_TELEMETRY_TOKEN; required with --controller)")
    parser.add_argument("--insecure-telemetry", action="store_true",
                        help="development only: talk to the controller without the token handshake")
    parser.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted (default 8 MiB)")
    parser.add_argument("--nominal-tokens-per-s", type=float, default=None,
                        help="self-hosted throughput per replica assumed until measured (prices GPU tiers per token)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-access-log", action="store_true", help="do not write one JSON line per request")


def parse_replicas(specs: list[str]) -> dict[str, list[str]]:
    from thrifty.config import ConfigError

    out: dict[str, list[str]] = {}
    for spec in specs:
        tier, sep, url = spec.partition("=")
        if not sep or not tier or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--replica {spec!r}: expected TIER=http://host:port")
        out.setdefault(tier, []).append(url)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the sidecar on uvloop: the same asyncio API at roughly half the event-loop CPU per request."""
    import asyncio
    import os

    # numpy's BLAS (the verifier's network) on one thread: the calls are tiny and run on the
    # event loop, where a thread pool only adds waits (measured: verifier p99 47 -> 4.8 ms on
    # a busy machine, docs/design/shared-cache.md). Before anything imports numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    import uvloop

    from thrifty.config import load_config
    from thrifty.proxy.main import run_sidecar

    config = load_config(args.config)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_sidecar(config, args, parse_replicas(args.replica)))


def main(argv: list[str] | None = None) -> int:
    """`python -m thrifty.proxy.cli ...`: the same as `thrifty proxy ...`, without the other parts' CLIs."""
    import sys

    from thrifty.config import ConfigError

    parser = argparse.ArgumentParser(prog="thrifty proxy")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ConfigError as exc:
        print(f"thrifty: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
