"""Agreement between preference label sources (annotators, judges, preference models) and related
judge diagnostics.

Labels are floats in [0, 1] = P(first ≻ second). Where a verdict is needed, a label maps to a
category: > 0.5 win (+1), == 0.5 tie (0), < 0.5 loss (-1). Ties are exact: a soft label of 0.5001
is a win. NaN means "not labeled".

Reference points (docs/design.md §3.5): GPT-4 vs humans 66% with ties / 85% without (MT-Bench); human–human
63–67% / 81–82%; AlpacaEval judge–human agreement about 65–69%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np
import pandas as pd

from prefgame.errors import DataError

ArrayLike = Sequence[float] | np.ndarray | pd.Series


def _as_labels(values: ArrayLike, name: str) -> np.ndarray:
    """1-D float array; NaN allowed (unlabeled), other values must lie in [0, 1]."""
    out = np.asarray(values, dtype=float).reshape(-1)
    finite = out[~np.isnan(out)]
    if ((finite < 0) | (finite > 1)).any():
        raise DataError(f"{name} must lie in [0, 1] (P(first ≻ second)) or be NaN")
    return out


def _same_length(*arrays: np.ndarray) -> None:
    if len({len(x) for x in arrays}) > 1:
        raise DataError(f"inputs must have the same length; got {[len(x) for x in arrays]}")


def verdict(labels: np.ndarray) -> np.ndarray:
    """Category per label: +1 win (> 0.5), 0 tie (== 0.5), -1 loss (< 0.5). NaN -> 0; mask first."""
    return np.sign(np.nan_to_num(labels - 0.5)).astype(int)


def cohen_kappa(a: Sequence | np.ndarray | pd.Series, b: Sequence | np.ndarray | pd.Series) -> float:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) over the categories observed in either input.

    p_o = trace(C) / n and p_e = sum_k rowsum_k * colsum_k / n^2 for the confusion matrix C. When
    p_e = 1 (both sources always give the same single category) kappa is 0/0; we return NaN."""
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    _same_length(a, b)
    n = len(a)
    if n == 0:
        return float("nan")
    categories, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    k = len(categories)
    confusion = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k)  # (k, k)
    p_o = np.trace(confusion) / n
    p_e = confusion.sum(axis=1) @ confusion.sum(axis=0) / n**2
    if np.isclose(p_e, 1.0):
        return float("nan")
    return float((p_o - p_e) / (1 - p_e))


def agreement(labels_x: ArrayLike, labels_y: ArrayLike) -> dict[str, float]:
    """Agreement between two sources on the same pairs (pairs where either label is NaN dropped).

    Returns ``agreement_with_ties`` (share of pairs with the same verdict in {win, tie, loss}),
    ``agreement_without_ties`` (the same over pairs where neither verdict is a tie; NaN if none),
    ``n``, ``n_without_ties`` and ``kappa`` (Cohen's kappa over the observed verdict categories)."""
    x = _as_labels(labels_x, "labels_x")
    y = _as_labels(labels_y, "labels_y")
    _same_length(x, y)
    both = ~np.isnan(x) & ~np.isnan(y)
    vx, vy = verdict(x[both]), verdict(y[both])
    no_tie = (vx != 0) & (vy != 0)
    n, n_no_tie = int(both.sum()), int(no_tie.sum())
    return {
        "agreement_with_ties": float((vx == vy).mean()) if n else float("nan"),
        "agreement_without_ties": float((vx[no_tie] == vy[no_tie]).mean()) if n_no_tie else float("nan"),
        "n": n,
        "n_without_ties": n_no_tie,
        "kappa": cohen_kappa(vx, vy),
    }


def agreement_matrix(label_table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`agreement` for every pair of sources (columns of ``label_table``; rows are the same
    pairs, NaN = not labeled by that source), each over the rows labeled by both.

    Returns symmetric source x source DataFrames under ``agreement_with_ties``,
    ``agreement_without_ties``, ``kappa``, ``counts`` (rows labeled by both) and
    ``counts_without_ties``."""
    sources = list(label_table.columns)
    keys = {
        "agreement_with_ties": "agreement_with_ties",
        "agreement_without_ties": "agreement_without_ties",
        "kappa": "kappa",
        "counts": "n",
        "counts_without_ties": "n_without_ties",
    }
    out = {name: pd.DataFrame(np.nan, index=sources, columns=sources) for name in keys}
    for s, t in combinations_with_replacement(sources, 2):
        stats = agreement(label_table[s].to_numpy(), label_table[t].to_numpy())
        for name, key in keys.items():
            out[name].loc[s, t] = out[name].loc[t, s] = stats[key]
    out["counts"] = out["counts"].astype(int)
    out["counts_without_ties"] = out["counts_without_ties"].astype(int)
    return out


def position_consistency(label_ab: ArrayLike, label_ba: ArrayLike) -> dict[str, float]:
    """Position bias of a judge that judged every pair in both orders.

    ``label_ab[i]`` is the judge's P(first ≻ second) with response A shown first, ``label_ba[i]`` with
    B shown first. With first-slot verdicts v_ab, v_ba in {+1, 0, -1}, the pair is consistent when
    v_ab = -v_ba (for hard labels: label_ab == 1 - label_ba). Otherwise v_ab + v_ba != 0 and its sign
    says which slot the judge favored. Pairs with a NaN label are dropped.

    Returns ``consistency`` (share consistent), ``biased_first`` / ``biased_second`` (share
    inconsistent in favor of the first / second slot; the three shares sum to 1),
    ``first_position_rate`` (mean P(first ≻ second) over both orders: 0.5 for a judge without
    position bias, since each pair appears once in each slot) and ``n``."""
    ab = _as_labels(label_ab, "label_ab")
    ba = _as_labels(label_ba, "label_ba")
    _same_length(ab, ba)
    both = ~np.isnan(ab) & ~np.isnan(ba)
    ab, ba = ab[both], ba[both]
    n = int(both.sum())
    if n == 0:
        names = ("consistency", "biased_first", "biased_second", "first_position_rate")
        return {**dict.fromkeys(names, float("nan")), "n": 0}
    slot_sum = verdict(ab) + verdict(ba)
    return {
        "consistency": float((slot_sum == 0).mean()),
        "biased_first": float((slot_sum > 0).mean()),
        "biased_second": float((slot_sum < 0).mean()),
        "first_position_rate": float((ab.mean() + ba.mean()) / 2),
        "n": n,
    }


def longer_response_win_rate(outcomes: ArrayLike, len_a: ArrayLike, len_b: ArrayLike) -> float:
    """Mean preference for the longer response: outcome (P(a ≻ b)) where a is longer, 1 - outcome where
    b is longer; ties count 1/2, pairs of equal length and NaN outcomes are dropped. NaN if none left."""
    o = _as_labels(outcomes, "outcomes")
    la = np.asarray(len_a, dtype=float).reshape(-1)
    lb = np.asarray(len_b, dtype=float).reshape(-1)
    _same_length(o, la, lb)
    keep = (la != lb) & ~np.isnan(o)
    if not keep.any():
        return float("nan")
    longer_wins = np.where(la[keep] > lb[keep], o[keep], 1.0 - o[keep])
    return float(longer_wins.mean())


@dataclass(frozen=True)
class SubsetAccuracy:
    overall: float  # pooled accuracy over all non-tie examples
    n: int
    subsets: pd.DataFrame  # index subset; columns accuracy, n
    sections: pd.DataFrame | None  # index section; columns accuracy, n (pooled over its subsets)
    section_mean: float | None  # unweighted mean of the section accuracies


def accuracy_by_subset(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    subsets: Sequence[str] | np.ndarray | pd.Series,
    sections: Mapping[str, Sequence[str]] | None = None,
) -> SubsetAccuracy:
    """Accuracy of a preference model, overall, per subset and per section (pooled; RewardBench's own
    weighting and tie rule are in :mod:`evaluation.rewardbench`).

    An example is correct when the predicted P(first ≻ second) falls on the same side of 0.5 as the
    label; a prediction of exactly 0.5 counts 1/2 (a coin flip). Examples whose label is a tie (0.5)
    or NaN are excluded everywhere. ``sections`` maps a section name to its subsets; a section's
    accuracy weights its subsets' accuracies by their example counts,
    sum_s n_s acc_s / sum_s n_s, which is the pooled accuracy over the section's examples.
    ``section_mean`` is the unweighted mean over sections."""
    p = _as_labels(pred_probs, "pred_probs")
    y = _as_labels(labels, "labels")
    groups = np.asarray(subsets).reshape(-1)
    _same_length(p, y, groups)
    keep = (y != 0.5) & ~np.isnan(y)
    if np.isnan(p[keep]).any():
        raise DataError("pred_probs contains NaN for a labeled example")
    correct = np.where(p[keep] == 0.5, 0.5, (verdict(p[keep]) == verdict(y[keep])).astype(float))
    frame = pd.DataFrame({"subset": groups[keep], "correct": correct})
    per_subset = frame.groupby("subset")["correct"].agg(accuracy="mean", n="size")

    section_table, section_mean = None, None
    if sections is not None:
        rows = {}
        known = set(groups.tolist())
        for name, members in sections.items():
            unknown = [m for m in members if m not in known]
            if unknown:
                raise DataError(f"section {name!r} names subsets with no examples: {unknown}")
            members = [m for m in members if m in per_subset.index]  # all-tie subsets drop out
            n_s = per_subset.loc[members, "n"]
            total = int(n_s.sum())
            acc = float((per_subset.loc[members, "accuracy"] * n_s).sum() / total) if total else float("nan")
            rows[name] = {"accuracy": acc, "n": total}
        section_table = pd.DataFrame.from_dict(rows, orient="index", columns=["accuracy", "n"])
        section_mean = float(section_table["accuracy"].mean())

    return SubsetAccuracy(
        overall=float(correct.mean()) if correct.size else float("nan"),
        n=int(correct.size),
        subsets=per_subset,
        sections=section_table,
        section_mean=section_mean,
    )
