"""`thrifty bench NAME --plot FILE.png` on the development data (../shared/data): each bench
writes a non-empty PNG of the documented pixel size, and still ends with its JSON line.
Small slices of the data keep this fast; skipped with the reason when the data is absent."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib not installed (the `bench` extra)")

from tests.realparts import data_file  # noqa: E402
from thrifty.bench import autoscale, cache, cost, drift, plots, routing  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


CASES: dict[str, tuple[Callable[[list[str]], int], Callable[[], list[str]]]] = {
    "autoscale": (autoscale.main, lambda: ["--trace", str(data_file("traces/azure_conv_2023.csv")), "--limit", "600",
                                           "--copies", "1", "--max-replicas", "4"]),
    "drift": (drift.main, lambda: ["--trace", str(data_file("traces/azure_conv_2023.csv")), "--limit", "1500",
                                   "--hours", "1", "--repeats", "1"]),
    "cache": (cache.main, lambda: ["--data", str(data_file("cache/qqp_pairs_dev.jsonl")), "--max-pairs", "200",
                                   "--index-entries", "500", "--encoder", "hashed-ngrams:64"]),
    "routing": (routing.main, lambda: ["--data", str(data_file("routing/routellm_mmlu.csv")), "--max-rows", "40"]),
    "cost": (cost.main, lambda: ["--trace", str(data_file("traces/azure_conv_2023.csv")),
                                 "--routing", str(data_file("routing/routellm_mmlu.csv")),
                                 "--cache-pairs", str(data_file("cache/qqp_pairs_dev.jsonl")), "--encoder", "hashed-ngrams:64",
                                 "--limit", "400", "--copies", "1", "--max-rows", "40", "--max-pairs", "40"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bench_writes_its_plot(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main, argv = CASES[name]
    out = tmp_path / f"{name}.png"
    assert main([*argv(), "--plot", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    json.loads(lines[-1])  # the JSON line stays last
    assert f"plot: {out}" in lines
    assert out.stat().st_size > 10_000  # axes, lines and text, not a blank canvas
    assert png_size(out) == plots.SIZE_PX


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(SystemExit, match=r"thrifty\[bench\]"):
        plots.cache({"pr_curve": []}, "/nonexistent/x.png")
