"""Summary statistics of a normalized data set (what ``prefgame data validate`` prints).

``summarize(data)`` returns a JSON-ready dict:

- ``source``, ``kind``, ``format``, ``rows`` (valid rows kept), ``invalid_rows`` (dropped);
- ``labels`` (pairs): share of rows with label 1 (``chosen_wins``), 0 (``rejected_wins``),
  0.5 (``tie``) and any other value (``soft``), plus the ``mean`` label;
- ``winners`` (battles): share of each winner value;
- ``rankings`` (rankings): list sizes K, the share of lists whose scores all tie, of tied pairs;
- ``attributes`` (ratings): mean (NaN ignored) and number of missing ratings per attribute;
- ``lengths``: for the prompt and each response column, ``chars`` and ``words`` each with
  ``mean`` / ``median`` / ``max`` (empty responses of battles without responses are left out);
- ``problems``: number of dropped rows per reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from prefgame.data.load import NormalizedData
from prefgame.data.schema import WINNERS, count_reasons

_TEXT_COLUMNS = {
    "pairs": ("prompt", "chosen", "rejected"),
    "ratings": ("prompt", "response"),
    "battles": ("prompt", "response_a", "response_b"),
    "rankings": ("prompt", "responses"),
}
_NOT_ATTRIBUTES = {"prompt", "prompt_messages", "response", "subset"}


def summarize(data: NormalizedData) -> dict[str, Any]:
    """Rows, kind, format, label balance, length statistics and problem counts of ``data``."""
    ds = data.dataset
    out: dict[str, Any] = {
        "source": data.source,
        "kind": data.kind,
        "format": data.format,
        "rows": len(ds),
        "invalid_rows": len(data.problems),
    }
    if data.kind == "pairs":
        out["labels"] = label_balance(ds["label"])
    elif data.kind == "rankings":
        out["rankings"] = ranking_stats(ds["scores"])
    elif data.kind == "battles":
        out["winners"] = {w: _share(sum(v == w for v in ds["winner"]), len(ds)) for w in WINNERS}
    else:
        out["attributes"] = {
            name: _attribute_stats(ds[name]) for name in ds.column_names if name not in _NOT_ATTRIBUTES
        }
    columns = {name: ds[name] for name in _TEXT_COLUMNS[data.kind]}
    if data.kind == "rankings":  # every response of every list
        columns["responses"] = [r for rs in columns["responses"] for r in rs]
    out["lengths"] = {name: length_stats([t for t in texts if t]) for name, texts in columns.items()}
    out["problems"] = count_reasons(data.problems)
    return out


def ranking_stats(scores: Sequence[Sequence[float]]) -> dict[str, Any]:
    """List sizes (K: min, mean, max), the share of lists whose scores all tie (no ranking) and the share
    of response pairs within a list whose scores tie."""
    sizes = [len(s) for s in scores]
    pairs = sum(k * (k - 1) // 2 for k in sizes)
    tied = sum(a == b for s in scores for i, a in enumerate(s) for b in s[i + 1 :])
    return {
        "k_min": min(sizes, default=0),
        "k_mean": float(np.mean(sizes)) if sizes else math.nan,
        "k_max": max(sizes, default=0),
        "all_tied": _share(sum(len(set(s)) == 1 for s in scores), len(scores)),
        "tied_pairs": _share(tied, pairs),
    }


def label_balance(labels: Sequence[float]) -> dict[str, float]:
    """Shares of hard labels (1 and 0), ties (0.5) and soft labels, and the mean label."""
    n = len(labels)
    hard_1 = sum(x == 1.0 for x in labels)
    hard_0 = sum(x == 0.0 for x in labels)
    ties = sum(x == 0.5 for x in labels)
    return {
        "chosen_wins": _share(hard_1, n),
        "rejected_wins": _share(hard_0, n),
        "tie": _share(ties, n),
        "soft": _share(n - hard_1 - hard_0 - ties, n),
        "mean": float(np.mean(labels)) if n else math.nan,
    }


def length_stats(texts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean / median / max length in characters and in whitespace-separated words."""
    chars = [len(t) for t in texts]
    words = [len(t.split()) for t in texts]
    return {"chars": _stats(chars), "words": _stats(words)}


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "max": float(max(values))}


def _attribute_stats(values: Sequence[float]) -> dict[str, float]:
    present = [v for v in values if not math.isnan(v)]
    return {"mean": float(np.mean(present)) if present else math.nan, "missing": len(values) - len(present)}


def _share(count: int, total: int) -> float:
    return count / total if total else math.nan
