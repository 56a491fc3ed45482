"""`thrifty bench drift` runs on a short slice and prints its JSON last."""

from __future__ import annotations

import json

import pytest

from tests.realparts import data_file
from thrifty.bench import drift


def test_drift_bench_runs_on_a_short_slice(capsys) -> None:
    trace = data_file("traces/azure_conv_2023.csv")
    rc = drift.main(["--trace", str(trace), "--limit", "1500", "--hours", "2", "--repeats", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"injected", "detected", "median_delay_s", "false_alarms_per_day", "false_alarms_by_signal"} <= set(out)
    assert sum(out["false_alarms_by_signal"].values()) == pytest.approx(out["false_alarms_per_day"], abs=0.05)
    assert out["injected"] == 4 and 0 <= out["detected"] <= 4
    assert set(out["methods"]) == {"cusum", "page_hinkley", "ewma"}


def test_drift_bench_bad_trace_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert drift.main(["--trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "TIMESTAMP" in err and "\n" not in err
