"""`thrifty tui`: the operator's live console over the controller's HTTP API."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        default=os.environ.get("THRIFTY_CONTROLLER_URL", "http://127.0.0.1:8090"),
        help="controller HTTP URL (default $THRIFTY_CONTROLLER_URL or http://127.0.0.1:8090)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("THRIFTY_CONTROLLER_TOKEN"),
        help="bearer token for the controller API (default $THRIFTY_CONTROLLER_TOKEN)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="read the bearer token from this file (as `thrifty up` writes it, readable by you only)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1, at most 1)")


def run(args: argparse.Namespace) -> int:
    from thrifty.tui.app import ThriftyApp
    from thrifty.tui.client import ControllerClient

    if not 0.05 <= args.interval <= 1.0:
        print(f"thrifty tui: --interval must be between 0.05 and 1 second, got {args.interval}", file=sys.stderr)
        return 2
    token = args.token
    if args.token_file:
        try:
            token = open(args.token_file, encoding="utf-8").read().strip()
        except OSError as exc:
            print(f"thrifty tui: --token-file: {exc.strerror}: {args.token_file}", file=sys.stderr)
            return 2
    try:
        client = ControllerClient(args.controller, token)
    except ValueError as exc:
        print(f"thrifty tui: {exc}", file=sys.stderr)
        return 2
    ThriftyApp(client, interval_s=args.interval).run()
    return 0
