"""One reader for QQP-format pair files (JSON lines `{text_a, text_b, label}`).

The verifier's training command, the cache bench and the cost bench's workload all read
these files; one reader keeps their validation identical. Bad input raises the caller's
error type with a one-line message naming the file and line, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np


class LabelledPair(NamedTuple):
    text_a: str
    text_b: str
    label: int  # 1: the same question reworded, 0: a different question


def read_pairs(path: str | Path, *, error: type[Exception] = ValueError) -> list[LabelledPair]:
    """Every pair in the file, in file order; blank lines skipped.

    Raises `error` (one line) when the file cannot be read, a line is not a JSON object
    with text_a, text_b and a 0/1 label, or the file holds no pairs.
    """
    pairs: list[LabelledPair] = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    pair = LabelledPair(str(row["text_a"]), str(row["text_b"]), int(row["label"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise error(f"{path}:{n}: expected a JSON object with text_a, text_b, label") from None
                if pair.label not in (0, 1):
                    raise error(f"{path}:{n}: label must be 0 or 1, got {pair.label}")
                pairs.append(pair)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    if not pairs:
        raise error(f"{path}: no pairs")
    return pairs


def pairs_and_labels(path: str | Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Every pair as (text_a, text_b), and the labels as an array (errors: one-line ValueError)."""
    rows = read_pairs(path)
    return [(r.text_a, r.text_b) for r in rows], np.array([r.label for r in rows])
