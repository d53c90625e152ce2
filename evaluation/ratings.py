"""Bradley–Terry ratings of many models from pairwise battles, on an Elo-like scale.

Model: P(a ≻ b) = sigma(beta_a - beta_b) with natural-scale strengths beta. A battle with outcome
o = P(a ≻ b) (ties o = 1/2, i.e. half a win each way) contributes o log sigma(beta_a - beta_b)
+ (1 - o) log sigma(beta_b - beta_a) to the log-likelihood. Ratings are
R_m = init_rating + (scale / ln base) * (beta_m - beta_anchor), so that
P(a ≻ b) = sigma((R_a - R_b) ln(base) / scale) = 1 / (1 + base^(-(R_a - R_b) / scale)).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from evaluation.winrate import battle_outcomes, bootstrap_counts, percentile_ci, single_threaded_blas
from prefgame.errors import DataError


def _fit_bt(
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    wins: np.ndarray,
    counts: np.ndarray,
    n_models: int,
    l2: float,
    x0: np.ndarray,
) -> np.ndarray:
    """Natural-scale strengths beta (n_models,) minimizing the BT negative log-likelihood over
    aggregated pairs (a, b) with ``counts`` battles and ``wins`` = summed P(a ≻ b), plus
    (l2 / 2) * |beta|^2."""

    def loss_and_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        d = beta[pair_a] - beta[pair_b]  # (P,)
        # -[W log s(d) + (n - W) log s(-d)] = n softplus(d) - W d
        loss = counts @ np.logaddexp(0.0, d) - wins @ d + 0.5 * l2 * (beta @ beta)
        g = counts * expit(d) - wins  # d loss / d d_p
        grad = (
            np.bincount(pair_a, weights=g, minlength=n_models)
            - np.bincount(pair_b, weights=g, minlength=n_models)
            + l2 * beta
        )
        return float(loss), grad

    res = minimize(
        loss_and_grad,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-10},
    )
    return res.x


def bt_ratings(
    battles: pd.DataFrame,
    *,
    baseline: str | None = None,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    l2: float = 1e-6,
    n_bootstrap: int = 100,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Bradley–Terry maximum-likelihood ratings with bootstrap CIs.

    ``battles`` has ``model_a``, ``model_b`` and ``outcome`` or ``winner`` (see
    :mod:`evaluation.winrate`); self-battles carry no information and are ignored. The negative
    log-likelihood plus (l2 / 2) * sum_m beta_m^2 is minimized by L-BFGS. The tiny default ``l2``
    keeps strengths finite when a model never loses (or never wins) and otherwise moves them
    negligibly; ``l2=0`` gives the unregularized MLE. Ratings are anchored so that ``baseline`` has
    ``init_rating`` (default: the mean rating is ``init_rating``).

    Bootstrap: battles are resampled with replacement ``n_bootstrap`` times and refit (warm-started);
    a model without battles in a resample gets no replicate there. ``ci_low``/``ci_high`` are
    percentile intervals of the anchored ratings.

    Returns a DataFrame indexed by model, sorted by rating (best first), with columns ``rating``,
    ``ci_low``, ``ci_high``, ``n_battles`` and ``win_rate_vs_baseline`` = predicted
    P(model ≻ baseline) = sigma((R_m - R_baseline) ln(base) / scale) (against a model rated
    ``init_rating``, i.e. the average, when no baseline is given). ``scale`` and ``base`` are kept
    in ``.attrs`` for :func:`predicted_win_rate`.
    """
    o = battle_outcomes(battles)
    keep = (battles["model_a"] != battles["model_b"]).to_numpy()
    a_names = battles["model_a"].to_numpy()[keep]
    b_names = battles["model_b"].to_numpy()[keep]
    o = o[keep]
    if o.size == 0:
        raise DataError("bt_ratings needs at least one battle between two different models")
    models = sorted(set(a_names) | set(b_names))
    if baseline is not None and baseline not in models:
        raise DataError(f"baseline {baseline!r} has no battles; models are {models}")
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    ia = np.array([index[m] for m in a_names])
    ib = np.array([index[m] for m in b_names])

    # Aggregate battles into ordered pairs: battle i belongs to pair pair_of[i].
    pair_keys, pair_of = np.unique(ia * k + ib, return_inverse=True)
    pair_a, pair_b = pair_keys // k, pair_keys % k
    n_pairs = len(pair_keys)

    def anchored(beta: np.ndarray, present: np.ndarray) -> np.ndarray:
        ref = beta[index[baseline]] if baseline is not None else beta[present].mean()
        return init_rating + scale / np.log(base) * (beta - ref)

    def fit(weights: np.ndarray, x0: np.ndarray) -> np.ndarray:
        wins = np.bincount(pair_of, weights=weights * o, minlength=n_pairs)
        counts = np.bincount(pair_of, weights=weights, minlength=n_pairs)
        return _fit_bt(pair_a, pair_b, wins, counts, k, l2, x0)

    rng = np.random.default_rng(seed)
    boot = np.full((n_bootstrap, k), np.nan)
    with single_threaded_blas():
        beta = fit(np.ones_like(o), np.zeros(k))
        rating = anchored(beta, np.ones(k, dtype=bool))
        for r in range(n_bootstrap):
            w = bootstrap_counts(rng, o.size).astype(float)
            per_model = np.bincount(ia, weights=w, minlength=k) + np.bincount(ib, weights=w, minlength=k)
            present = per_model > 0
            if baseline is not None and not present[index[baseline]]:
                continue
            boot[r, present] = anchored(fit(w, beta), present)[present]
    bounds = np.array([percentile_ci(boot[:, m], ci) for m in range(k)]).reshape(k, 2)

    ref_rating = rating[index[baseline]] if baseline is not None else init_rating
    table = pd.DataFrame(
        {
            "rating": rating,
            "ci_low": bounds[:, 0],
            "ci_high": bounds[:, 1],
            "n_battles": np.bincount(ia, minlength=k) + np.bincount(ib, minlength=k),
            "win_rate_vs_baseline": expit((rating - ref_rating) * np.log(base) / scale),
        },
        index=pd.Index(models, name="model"),
    )
    table = table.sort_values("rating", ascending=False)
    table.attrs.update({"scale": scale, "base": base, "baseline": baseline, "init_rating": init_rating})
    return table


def predicted_win_rate(
    ratings: pd.DataFrame | pd.Series | Mapping[str, float],
    a: str,
    b: str,
    *,
    scale: float | None = None,
    base: float | None = None,
) -> float:
    """P(a ≻ b) = 1 / (1 + base^(-(R_a - R_b) / scale)) from a :func:`bt_ratings` table (its
    ``rating`` column, and ``scale``/``base`` from its ``.attrs``) or a model -> rating mapping.
    Explicit ``scale``/``base`` win; otherwise 400 and 10."""
    attrs = getattr(ratings, "attrs", {}) or {}
    scale = scale if scale is not None else attrs.get("scale", 400.0)
    base = base if base is not None else attrs.get("base", 10.0)
    column = ratings["rating"] if isinstance(ratings, pd.DataFrame) else ratings
    for m in (a, b):
        if m not in column:
            raise DataError(f"no rating for model {m!r}")
    return float(expit((float(column[a]) - float(column[b])) * np.log(base) / scale))
