"""`thrifty tui` argument handling: bad input is one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse

import pytest

from thrifty.tui import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty tui")
    cli.add_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    return cli.run(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv,needle", [
    (["--controller", "ftp://somewhere"], "http://HOST:PORT"),
    (["--controller", "not a url"], "http://HOST:PORT"),
    (["--interval", "5"], "--interval"),
])
def test_bad_arguments_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_CONTROLLER_URL", "http://ctl.example:9000")
    monkeypatch.setenv("THRIFTY_CONTROLLER_TOKEN", "abc")
    args = build_parser().parse_args([])
    assert (args.controller, args.token, args.interval) == ("http://ctl.example:9000", "abc", 1.0)
