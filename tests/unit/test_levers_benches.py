"""The routing and cache benches run end to end on small files (hashed encoder, no model)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from thrifty.bench import cache as cache_bench
from thrifty.bench import routing as routing_bench
from thrifty.cli import main as thrifty_main


def _routellm_csv(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "prompt", "weak", "strong"])
        for i in range(n):
            if i % 2:
                w.writerow(["arith", f"What is {rng.integers(1, 999)} plus {rng.integers(1, 999)}? #{seed}-{i}", "True", "True"])
            else:
                w.writerow(["proofs", f"Prove that every group of order {rng.integers(2, 999)} is abelian #{seed}-{i}", str(rng.random() < 0.2), "True"])


def test_router_train_calibrate_and_routing_bench(tmp_path: Path, capsys) -> None:
    train, scored, artifact = tmp_path / "train.csv", tmp_path / "scored.csv", tmp_path / "router.npz"
    _routellm_csv(train, 300, seed=1)
    _routellm_csv(scored, 120, seed=2)
    assert thrifty_main(["router", "train", "--data", str(train), "--out", str(artifact), "--encoder", "hashed-ngrams:64", "--l2", "1"]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"What is {i} plus {i}?" if i % 2 else f"Prove lemma {i} about groups" for i in range(40)))
    assert thrifty_main(["router", "calibrate", "--artifact", str(artifact), "--strong-share", "0.5", "--prompts", str(prompts)]) == 0
    assert "strong share 0.500" in capsys.readouterr().out
    assert thrifty_main(["router", "calibrate", "--artifact", str(artifact), "--target-quality", "0.9"]) == 0
    assert thrifty_main(["router", "calibrate", "--artifact", str(artifact), "--strong-share", "0.5"]) == 2  # needs --prompts
    capsys.readouterr()
    assert routing_bench.main(["--data", str(scored), "--artifact", str(artifact), "--cost", "weak=1", "--cost", "strong=10"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows_scored"] == 120 and result["scorer"] == "per-model heads"
    assert 0 <= result["strong_share"] <= 1 and result["oracle"]["cost_reduction"] >= result["random"]["cost_reduction"]
    assert result["cost_reduction"] > result["random"]["cost_reduction"]  # the easy half is learnable


def test_routing_bench_rejects_missing_prices(tmp_path: Path, capsys) -> None:
    train, scored, artifact = tmp_path / "train.csv", tmp_path / "scored.csv", tmp_path / "router.npz"
    _routellm_csv(train, 100, seed=1)
    _routellm_csv(scored, 20, seed=2)
    assert thrifty_main(["router", "train", "--data", str(train), "--out", str(artifact), "--encoder", "hashed-ngrams:64"]) == 0
    assert routing_bench.main(["--data", str(scored), "--artifact", str(artifact)]) == 2
    assert "--cost" in capsys.readouterr().err


def test_cache_bench_runs(tmp_path: Path, capsys) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = []
    for i in range(40):
        rows.append({"text_a": f"How do I learn {i} new words a day?", "text_b": f"how do i learn {i} new words a day", "label": 1})
        rows.append({"text_a": f"What is the best city number {i}?", "text_b": f"What is the worst city number {i + 1}?", "label": 0})
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert cache_bench.main(["--data", str(data), "--encoder", "hashed-ngrams:64", "--index-entries", "500"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pairs_scored"] == 80 and result["index_entries"] == 500
    assert {"precision", "recall", "false_hit_rate", "lookup_p99_ms", "embed_p50_ms"} <= result.keys()
    assert set(result["baseline"]) >= {"precision", "recall"}
    assert result["false_hit_rate"] <= result["baseline"]["false_hit_rate"] + 1e-9


def test_qqp_reader_errors_are_one_line(tmp_path: Path, capsys) -> None:
    from thrifty.bench._cost_workload import WorkloadError
    from thrifty.bench._cost_workload import load_pairs as workload_pairs

    cases = {
        "notjson.jsonl": '{"text_a": "a", "text_b": "b", "label": 1}\nnot json\n',
        "nolabel.jsonl": '{"text_a": "a", "text_b": "b"}\n',
        "badlabel.jsonl": '{"text_a": "a", "text_b": "b", "label": 2}\n',
        "empty.jsonl": "\n\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert cache_bench.main(["--data", str(path), "--encoder", "hashed-ngrams:64"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("thrifty bench cache: ") and str(path) in err and "\n" not in err
        try:
            workload_pairs(path, exclude=frozenset(), max_pairs=0, seed=0)
        except WorkloadError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError(f"{name}: accepted")
    assert cache_bench.main(["--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_qqp_readers_agree(tmp_path: Path) -> None:
    """The cache bench keeps every pair; the workload drops blank, identical and excluded ones."""
    from thrifty.bench._cost_workload import load_pairs as workload_pairs
    from thrifty.proxy.levers.verifier import pair_hash

    rows = [("How do I cook rice?", "How to cook rice?", 1), ("same", "same", 1), (" ", "x", 0), ("Is Mars red?", "Is Venus red?", 0)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"text_a": a, "text_b": b, "label": y}) for a, b, y in rows) + "\n\n")
    pairs, labels = cache_bench.load_pairs(str(path))
    assert pairs == [(a, b) for a, b, _ in rows] and labels.tolist() == [1, 1, 0, 0]
    kept = workload_pairs(path, exclude=frozenset({pair_hash("Is Mars red?", "Is Venus red?")}), max_pairs=0, seed=0)
    assert kept == [("How do I cook rice?", "How to cook rice?", 1)]
