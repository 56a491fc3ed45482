"""`thrifty bench cache --sidecars N` on a small file: per-pod vs one pod, and --shared with one process per sidecar on a real redis-server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thrifty.bench import cache as bench_cache
from thrifty.bench.cache_fleet import _stream
from thrifty.proxy.levers.shared.local_server import redis_server_binary


def test_stream_puts_each_b_after_its_a() -> None:
    events = _stream(50, 10, np.random.default_rng(0))
    where = {e: n for n, e in enumerate(events)}
    assert len(events) == 100 and all(where[(i, 1)] > where[(i, 0)] for i in range(50))


def test_fleet_bench_reports_per_pod_and_single_pod(tmp_path, capsys) -> None:
    rows = [{"text_a": f"how do i learn topic {i} quickly?", "text_b": f"How do I learn topic {i} quickly?", "label": 1} for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_cache.main(["--data", str(data), "--sidecars", "4", "--encoder", "hashed-ngrams:64", "--gap", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sidecars"] == 4 and result["requests"] == 80
    assert result["single_pod_hit_rate"] > result["per_pod_hit_rate"]
    assert "hit_rate" not in result  # no --shared: no shared run


def test_fleet_bench_rejects_bad_sidecars(tmp_path, capsys) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"text_a": "a?", "text_b": "b?", "label": 1}) + "\n")
    assert bench_cache.main(["--data", str(data), "--sidecars", "-1"]) == 2
    assert "--sidecars" in capsys.readouterr().err


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed (Debian package redis-server)")
def test_shared_fleet_runs_one_process_per_sidecar_on_real_redis(tmp_path, capsys) -> None:
    rows = [{"text_a": f"how do i learn topic {i} quickly?", "text_b": f"How do I learn topic {i} quickly?", "label": 1} for i in range(60)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_cache.main(["--data", str(data), "--sidecars", "3", "--shared", "--encoder", "hashed-ngrams:64", "--gap", "8",
                             "--rate", "200", "--restart-entries", "1500", "--restart-partitions", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["hit_rate"] > result["per_pod_hit_rate"]  # other pods' inserts reached the mirrors
    assert result["precision"] == 1.0 and result["visible_p99_ms"] is not None and result["lookup_p99_ms"] > 0
    assert result["restart_mirror_entries"] >= 1500 and result["restart_recover_s"] < 30
