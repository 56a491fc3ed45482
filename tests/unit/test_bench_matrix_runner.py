"""The matrix runner the autoscale and drift matrices share (bench/_matrix.py)."""

from __future__ import annotations

import json
from pathlib import Path

from thrifty.bench import _matrix


def test_bad_variant_is_a_one_line_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert _matrix.run_matrix("thrifty.bench.x_matrix", "thrifty.bench.x", "doc", ["--trace", "t", "--variants", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "rate2x" in err[0]


def test_each_combination_runs_in_its_own_process_and_a_failure_is_reported(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bench = tmp_path / "echo_bench.py"
    bench.write_text("import json, sys\nargs = sys.argv[1:]\n"
                     "if 'bursty' in args: sys.exit('boom: bursty')\n"
                     "print('progress'); print(json.dumps({'args': args}))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the runs are child processes
    out = tmp_path / "runs.json"
    run = _matrix.run_matrix("thrifty.bench.x_matrix", "echo_bench", "doc",
                             ["--trace", "a.csv", "--trace", "b.jsonl", "--variants", "none,bursty", "--jobs", "2",
                              "--json", str(out), "--", "--hours", "3"])
    assert not isinstance(run, int)
    assert run.combos == [("a.csv", None), ("a.csv", "bursty"), ("b.jsonl", None), ("b.jsonl", "bursty")]
    assert run.outs[0] == {"args": ["--trace", "a.csv", "--hours", "3"]}
    assert run.outs[1] == {"error": "boom: bursty"}
    run.keep()
    assert set(json.loads(out.read_text())) == {"a.csv:none", "a.csv:bursty", "b.jsonl:none", "b.jsonl:bursty"}
