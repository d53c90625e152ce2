"""Position and length bias of a label source, measured against a reference source.

A judge (annotator, LLM judge, preference model) labels pairs shown as (first, second). Its bias is
read from one logistic regression of its first-slot label on the reference's opinion, the length
difference and a constant::

    P(source prefers the first shown | row) = sigma(gamma + alpha * logit(r) + phi * d / s)        (1)

- r = the reference's P(first ≻ second) for the same pair and order (e.g. the arena's gold
  preference): alpha absorbs how sharp the source is relative to the reference (1 / temperature);
- d = words(first) - words(second), s = the standard deviation (ddof=0) of d over the rows: phi is
  the change in log-odds per standard deviation of length difference *beyond what the reference
  explains* — length bias;
- gamma is the log-odds bonus of the first slot — position bias.

Without a reference the alpha term is dropped; phi then measures the whole preference for longer
responses (deserved or not) and gamma the first-slot rate. When a pair was labeled in both orders
(``labels_swapped``: the first-slot label with b shown first) both rows enter, with r -> 1 - r and
d -> -d in the swapped row, so gamma is identified even if a and b are not in random order.

Fit: Newton's method on the cross-entropy with fractional targets (soft labels and ties = 0.5 are
allowed). Standard errors are cluster-robust (sandwich) with a pair as the cluster:
Cov = H^-1 (sum_pairs g_p g_p^T) H^-1, H = sum_rows p(1-p) x x^T, g_p = sum of (p - y) x over the rows
of pair p. They stay valid when the model is misspecified and when both orders of a pair are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit

from prefgame.errors import DataError

ArrayLike = Sequence[float] | np.ndarray
_EPS = 1e-9


def _fit_logistic(x: np.ndarray, y: np.ndarray, *, iterations: int = 100, ridge: float = 1e-8) -> np.ndarray:
    """argmin_w sum_i [softplus(x_i w) - y_i x_i w] + ridge/2 |w|^2 by damped Newton. x (N, P), y (N,)."""
    w = np.zeros(x.shape[1])

    def loss(v: np.ndarray) -> float:
        z = x @ v
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * v @ v)

    current = loss(w)
    for _ in range(iterations):
        p = expit(x @ w)
        grad = x.T @ (p - y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:  # backtracking keeps each step a descent step
            candidate = loss(w - t * step)
            if candidate <= current:
                break
            t /= 2
        w, previous, current = w - t * step, current, candidate
        if abs(previous - current) <= 1e-12 * max(1.0, abs(current)) or np.abs(t * step).max() < 1e-10:
            break
    return w


def judge_bias(
    labels: ArrayLike,
    len_a: ArrayLike,
    len_b: ArrayLike,
    *,
    reference: ArrayLike | None = None,
    labels_swapped: ArrayLike | None = None,
) -> dict[str, float]:
    """Fit (1) of the module docstring; rows with a NaN label (or NaN reference) are dropped.

    ``labels[i]`` is the source's P(a ≻ b) with a shown first, ``labels_swapped[i]`` its P(first ≻ second)
    with b shown first, ``reference[i]`` the reference's P(a ≻ b). Returns ``position_logodds``
    (gamma) and ``length_logodds`` (phi, per standard deviation ``length_std`` of the word-count
    difference) with their standard errors and z values, ``reference_coef`` (alpha, NaN without a
    reference), ``n_pairs`` and ``n_rows``.
    """
    y_ab = np.asarray(labels, dtype=float).reshape(-1)
    la = np.asarray(len_a, dtype=float).reshape(-1)
    lb = np.asarray(len_b, dtype=float).reshape(-1)
    n = len(y_ab)
    ref = None if reference is None else np.asarray(reference, dtype=float).reshape(-1)
    y_ba = None if labels_swapped is None else np.asarray(labels_swapped, dtype=float).reshape(-1)
    lengths = {len(v) for v in (y_ab, la, lb, ref, y_ba) if v is not None}
    if len(lengths) != 1:
        raise DataError(f"judge_bias inputs must have the same length; got {sorted(lengths)}")

    d = la - lb  # (N,) word-count difference, a minus b
    keep = ~np.isnan(y_ab) & ~np.isnan(d)
    if ref is not None:
        keep &= ~np.isnan(ref)
    rows_y, rows_d, rows_r, cluster = [y_ab], [d], [ref], [np.arange(n)]
    if y_ba is not None:  # b shown first: first-slot label, reference and length difference flip
        rows_y.append(y_ba)
        rows_d.append(-d)
        rows_r.append(None if ref is None else 1.0 - ref)
        cluster.append(np.arange(n))
    keep_rows = [keep & ~np.isnan(v) for v in rows_y]
    y = np.concatenate([v[k] for v, k in zip(rows_y, keep_rows)])
    dd = np.concatenate([v[k] for v, k in zip(rows_d, keep_rows)])
    groups = np.concatenate([c[k] for c, k in zip(cluster, keep_rows)])
    if ((y < 0) | (y > 1)).any():
        raise DataError("labels must lie in [0, 1] (P(first ≻ second)) or be NaN")
    n_pairs = len(np.unique(groups))
    if n_pairs < 3:
        raise DataError(f"judge_bias needs at least 3 labeled pairs, got {n_pairs}")

    s = float(dd.std())
    columns = [np.ones_like(y), dd / s if s > 0 else np.zeros_like(y)]
    if ref is not None:
        r = np.concatenate([v[k] for v, k in zip(rows_r, keep_rows)])
        r = np.clip(r, _EPS, 1 - _EPS)
        columns.append(np.log(r) - np.log1p(-r))  # logit of the reference
    x = np.stack(columns, axis=1)  # (rows, P): [1, d/s, logit r]
    if s == 0:
        x = np.delete(x, 1, axis=1)

    w = _fit_logistic(x, y)
    p = expit(x @ w)
    hess = (x * (p * (1 - p))[:, None]).T @ x
    scores = np.zeros((n, x.shape[1]))
    np.add.at(scores, groups, (p - y)[:, None] * x)  # per-pair summed score, (N, P)
    bread = np.linalg.pinv(hess)
    meat = scores.T @ scores * (n_pairs / max(n_pairs - 1, 1))  # small-sample factor G / (G - 1)
    cov = bread @ meat @ bread
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))

    if s == 0:  # no length variation: phi is not identified
        w = np.insert(w, 1, np.nan)
        se = np.insert(se, 1, np.nan)
    return {
        "position_logodds": float(w[0]),
        "position_se": float(se[0]),
        "position_z": float(w[0] / se[0]) if se[0] > 0 else float("nan"),
        "length_logodds": float(w[1]),
        "length_se": float(se[1]),
        "length_z": float(w[1] / se[1]) if se[1] > 0 else float("nan"),
        "length_std": s,
        "reference_coef": float(w[2]) if ref is not None else float("nan"),
        "n_pairs": n_pairs,
        "n_rows": len(y),
    }
