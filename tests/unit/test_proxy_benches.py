"""The sidecar's benchmarks run end to end on small inputs and end with one JSON line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from thrifty.bench import balance, overhead


def _tiny_trace(path: Path) -> Path:
    rng = random.Random(7)
    rows, next_id, convs = [], 1, []
    for i in range(300):
        if convs and rng.random() < 0.6:
            conv = rng.choice(convs)
            conv.extend(range(next_id, next_id + 2))
            next_id += 2
        else:
            conv = [0, *range(next_id, next_id + 3)]
            next_id += 3
            convs.append(conv)
        rows.append({"timestamp": i * 200, "input_length": 512 * len(conv), "output_length": 50, "hash_ids": list(conv)})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("load", ["sim", "token-queue"])
def test_balance_bench_beats_round_robin(load: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _tiny_trace(tmp_path / "trace.jsonl")
    assert balance.main(["--trace", str(trace), "--replicas", "4", "--load", load]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["load_model"] == load
    assert result["hit_rate"] > result["round_robin_hit_rate"]
    assert result["hit_rate"] <= result["limit_hit_rate"] + 1e-9 or result["imbalance"] >= 1.0
    assert result["imbalance"] >= 1.0


def test_balance_bench_rejects_bad_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    with pytest.raises(SystemExit, match="not a Mooncake trace row"):
        balance.main(["--trace", str(bad)])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for per-process CPU time")
def test_overhead_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert overhead.main(["--requests", "20", "--requests-c32", "64", "--streams", "8", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("added_p50_ms", "plain_added_p50_ms", "ratio_vs_plain", "cpu_ms_per_req", "rps_c32"):
        assert key in result
    assert result["cpu_ms_per_req"] > 0 and result["rps_c32"] > 0
    shadow = result["shadow"]  # the shadowed sidecar really shadowed, off the client's path
    assert shadow["rate"] == 1.0 and shadow["calls"] > 0 and shadow["verdicts"] > 0
    assert shadow["p50_ratio"] > 0 and shadow["cpu_ratio"] > 0


def test_batch_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from thrifty.bench import batch

    assert batch.main(["--minutes", "0.5", "--batch-size", "12", "--time-scale", "20", "--replicas", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"interactive", "mixed", "batch", "utilisation_gain"}
    b = result["batch"]
    assert b["lines"] == 12 and b["completed"] + b["failed"] == 12  # nothing lost across the restart
    assert b["lost"] == 0 and b["duplicated"] == 0 and b["restarts"] == 1
    assert result["mixed"]["requests"] == result["interactive"]["requests"] > 0
