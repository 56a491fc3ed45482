"""Labelled routing data: RouteLLM (`prompt,<weak>,<strong>`) and RouterBench (`|total_cost`) CSVs.

The router's training, its cross-validation and the routing/cost benches all read these
files; one reader keeps their validation identical. Bad input raises `DataFormatError`
with a one-line message naming the file (and line), never a traceback.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Per-call prices for files without `|total_cost` columns (RouteLLM's paper prices, $/1M
# tokens, equal tokens assumed): the margin cross-validation and `thrifty bench routing` use them.
REFERENCE_PRICES = {"gpt-4-1106-preview": 24.7, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.24}


@dataclass(slots=True)
class LabelledSet:
    """Prompts with a score per model (NaN = missing) and, where known, dollars per call."""

    source: str
    prompts: list[str]
    models: list[str]
    scores: np.ndarray  # (n, m) in [0, 1]
    costs: np.ndarray | None  # (n, m) dollars, or None (RouteLLM format)
    groups: list[str] = field(default_factory=list)  # subject / eval_name

    def subset(self, rows: np.ndarray) -> "LabelledSet":
        return LabelledSet(
            source=self.source,
            prompts=[self.prompts[i] for i in rows],
            models=self.models,
            scores=self.scores[rows],
            costs=None if self.costs is None else self.costs[rows],
            groups=[self.groups[i] for i in rows] if self.groups else [],
        )


class DataFormatError(ValueError):
    """A routing data file in neither the RouteLLM nor the RouterBench format."""


_NON_MODEL = {"", "sample_id", "prompt", "eval_name", "subject", "oracle_model_to_route_to", "index", "unnamed: 0"}


def _score(value: str) -> float:
    value = value.strip()
    if value.lower() in ("true", "false"):
        return 1.0 if value.lower() == "true" else 0.0
    if value == "":
        return math.nan
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise DataFormatError(f"score {value!r} is outside [0, 1]")
    return number


def load_labelled(path: str | Path) -> LabelledSet:
    """Read a RouteLLM (`prompt,<weak>,<strong>`) or RouterBench (`|total_cost`) CSV."""
    path = Path(path)
    csv.field_size_limit(1 << 30)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{path}: cannot read as CSV: {exc}") from None
    if "prompt" not in header:
        raise DataFormatError(f"{path}: no 'prompt' column")
    p = header.index("prompt")
    cost_cols = {h.split("|")[0]: i for i, h in enumerate(header) if h.endswith("|total_cost")}
    models = [h for h in header if "|" not in h and h.strip().lower() not in _NON_MODEL]
    if len(models) < 2:
        raise DataFormatError(f"{path}: needs at least two model score columns, found {models}")
    model_cols = [header.index(m) for m in models]
    group_col = header.index("eval_name") if "eval_name" in header else header.index("subject") if "subject" in header else None
    prompts, scores, costs, groups = [], [], [], []
    try:
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise DataFormatError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            prompts.append(row[p])
            scores.append([_score(row[i]) for i in model_cols])
            if cost_cols:
                costs.append([float(row[cost_cols[m]]) if m in cost_cols and row[cost_cols[m]].strip() else math.nan for m in models])
            if group_col is not None:
                groups.append(row[group_col])
    except ValueError as exc:
        raise DataFormatError(f"{path}: {exc}") from None
    if not prompts:
        raise DataFormatError(f"{path}: no rows")
    return LabelledSet(
        source=path.name,
        prompts=prompts,
        models=models,
        scores=np.array(scores, dtype=np.float64),
        costs=np.array(costs, dtype=np.float64) if cost_cols else None,
        groups=groups,
    )


def strongest(data: LabelledSet) -> int:
    """The label-best model: only where no prices say which model is the operator's baseline."""
    return int(np.nanargmax(np.nanmean(data.scores, axis=0)))


def reference_model(data: LabelledSet, mean_costs: np.ndarray | None = None) -> int:
    """The reference quality is measured against: the operator's baseline, i.e. the priciest
    model (the file's `|total_cost`, else `mean_costs`, else REFERENCE_PRICES when they cover
    every model), not whichever model the labels favour. Why: on a small RouterBench file
    gpt-3.5 beat GPT-4, and taking it as the reference scored routing to GPT-4 as a loss.
    Without any prices the label-best model is the only guess."""
    if mean_costs is None and data.costs is not None:
        mean_costs = np.nanmean(data.costs, axis=0)
    if mean_costs is None and all(m in REFERENCE_PRICES for m in data.models):
        mean_costs = np.array([REFERENCE_PRICES[m] for m in data.models])
    if mean_costs is None or np.isnan(mean_costs).all():
        return strongest(data)
    return int(np.nanargmax(mean_costs))


def default_weak(data: LabelledSet, mean_costs: np.ndarray | None) -> int:
    """The pair the ease score learns from: the best model costing <= 20% of the reference."""
    s = reference_model(data, mean_costs)
    means = np.nanmean(data.scores, axis=0)
    if mean_costs is None or len(data.models) == 2:
        return min((i for i in range(len(data.models)) if i != s), key=lambda i: -means[i])
    cheap = [i for i in range(len(data.models)) if i != s and mean_costs[i] <= 0.2 * mean_costs[s]]
    pool = cheap or [i for i in range(len(data.models)) if i != s]
    return max(pool, key=lambda i: means[i])

