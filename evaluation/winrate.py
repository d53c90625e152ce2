"""Win rates of a model against a baseline: raw, length-controlled, and pairwise between many models.

An outcome is a float in [0, 1] equal to P(first ≻ second): 1 = the first response (the model) wins,
0 = the second (the baseline) wins, 0.5 = tie; soft judge probabilities are allowed anywhere. A battle
table has columns ``model_a``, ``model_b`` and either ``outcome`` (P(model_a ≻ model_b)) or ``winner``
in {"model_a", "model_b", "tie", "tie (bothbad)"} (mapped to 1 / 0 / 0.5 / 0.5).

Bootstrap CIs are percentile intervals over ``n_bootstrap`` resamples of the rows (with replacement),
drawn from ``numpy.random.default_rng(seed)`` so that a seed gives the same interval every time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from prefgame.errors import DataError

WINNER_TO_OUTCOME = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


# ---------------------------------------------------------------------------------------------------
# Shared helpers (also used by ratings.py)
# ---------------------------------------------------------------------------------------------------


def as_outcomes(values: Sequence[float] | np.ndarray | pd.Series, name: str = "outcomes") -> np.ndarray:
    """A 1-D float array of outcomes in [0, 1]; raises DataError on NaN or values out of range."""
    out = np.asarray(values, dtype=float).reshape(-1)
    if np.isnan(out).any():
        raise DataError(f"{name} contains NaN; drop unlabeled rows before computing statistics")
    if ((out < 0) | (out > 1)).any():
        raise DataError(f"{name} must lie in [0, 1] (P(first ≻ second)); got [{out.min()}, {out.max()}]")
    return out


def battle_outcomes(battles: pd.DataFrame) -> np.ndarray:
    """P(model_a ≻ model_b) per battle: the ``outcome`` column if present, else ``winner`` mapped by
    :data:`WINNER_TO_OUTCOME`."""
    for col in ("model_a", "model_b"):
        if col not in battles.columns:
            raise DataError(f"battles table needs a {col!r} column; it has {list(battles.columns)}")
        names = battles[col].map(lambda v: isinstance(v, str) and bool(v.strip()))
        if not names.all():
            row = int(np.flatnonzero(~names.to_numpy())[0])
            raise DataError(f"battle row {row}: {col!r} must name a model, got {battles[col].iloc[row]!r}")
    if "outcome" in battles.columns:
        return as_outcomes(battles["outcome"].to_numpy(), "battles['outcome']")
    if "winner" not in battles.columns:
        raise DataError("battles table needs an 'outcome' or a 'winner' column")
    mapped = battles["winner"].map(WINNER_TO_OUTCOME)
    bad = battles["winner"][mapped.isna()]
    if len(bad):
        raise DataError(f"unknown winner {bad.iloc[0]!r}; expected one of {sorted(WINNER_TO_OUTCOME)}")
    return mapped.to_numpy(dtype=float)


def bootstrap_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each of ``n`` rows is drawn in one bootstrap resample of size ``n``. (n,) int."""
    return np.bincount(rng.integers(0, n, size=n), minlength=n)


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while fitting (a no-op without ``threadpoolctl``).

    scipy's L-BFGS-B calls LAPACK on tiny matrices every iteration; a multi-threaded OpenBLAS on a
    busy machine then spends milliseconds per call waking threads (bootstraps measured 20x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored; NaN if none)."""
    samples = samples[~np.isnan(samples)]
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - ci) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------
# Raw win rate
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinRate:
    mean: float  # mean outcome; ties count 1/2
    standard_error: float  # sample std (ddof=1) / sqrt(n); NaN when n < 2
    ci_low: float  # bootstrap percentile CI; NaN when n_bootstrap = 0
    ci_high: float
    n: int
    n_wins: int  # outcome > 0.5
    n_ties: int  # outcome == 0.5
    n_losses: int  # outcome < 0.5


def win_rate(
    outcomes: Sequence[float] | np.ndarray | pd.Series,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Mean preference for the model over the baseline, with standard error and a bootstrap CI."""
    o = as_outcomes(outcomes)
    n = o.size
    if n == 0:
        raise DataError("win_rate needs at least one outcome")
    mean = float(o.mean())
    se = float(o.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    rng = np.random.default_rng(seed)
    boot = np.array([bootstrap_counts(rng, n) @ o / n for _ in range(n_bootstrap)])
    low, high = percentile_ci(boot, ci)
    return WinRate(
        mean=mean,
        standard_error=se,
        ci_low=low,
        ci_high=high,
        n=n,
        n_wins=int((o > 0.5).sum()),
        n_ties=int((o == 0.5).sum()),
        n_losses=int((o < 0.5).sum()),
    )


# ---------------------------------------------------------------------------------------------------
# Length-controlled win rate (the model of AlpacaEval 2's length_controlled_minimal, unpenalized)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthControlledWinRate:
    lc_win_rate: float  # sigma(theta): predicted win rate at zero length difference
    win_rate: float  # raw mean outcome
    intercept: float  # theta (logit scale)
    length_coef: float  # phi, coefficient of tanh(delta_len / length_std)
    length_std: float  # std (ddof=0) of len_model - len_baseline used to standardize
    standard_error: float  # std of the bootstrap LC win rates; NaN when n_bootstrap < 2
    ci_low: float  # bootstrap percentile CI of lc_win_rate
    ci_high: float
    n: int
    instruction_difficulty: pd.Series | None  # delta_x per instruction id (logit scale), if fitted


def _lc_design(delta_len: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """t_i = tanh(delta_i / s), s = weighted std (ddof=0) of delta; t = 0 when s = 0."""
    mean = weights @ delta_len / weights.sum()
    s = float(np.sqrt(weights @ (delta_len - mean) ** 2 / weights.sum()))
    t = np.tanh(delta_len / s) if s > 0 else np.zeros_like(delta_len)
    return t, s


def _fit_lc(
    y: np.ndarray,
    t: np.ndarray,
    group: np.ndarray | None,
    n_groups: int,
    weights: np.ndarray,
    l2: float,
    x0: np.ndarray,
) -> np.ndarray:
    """Minimize the penalized cross-entropy over params [theta, phi, delta_1..delta_G]; see docstring of
    :func:`length_controlled_win_rate`."""

    def loss_and_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        theta, phi, delta = p[0], p[1], p[2:]
        z = theta + phi * t + (delta[group] if group is not None else 0.0)
        # -[y log s(z) + (1-y) log s(-z)] = softplus(z) - y z
        loss = weights @ (np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (delta @ delta)
        r = weights * (expit(z) - y)  # d loss / d z_i
        grad = np.empty_like(p)
        grad[0] = r.sum()
        grad[1] = r @ t
        if group is not None:
            grad[2:] = np.bincount(group, weights=r, minlength=n_groups) + l2 * delta
        return float(loss), grad

    res = minimize(
        loss_and_grad,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )
    return res.x


def length_controlled_win_rate(
    outcomes: Sequence[float] | np.ndarray | pd.Series,
    len_model: Sequence[float] | np.ndarray | pd.Series,
    len_baseline: Sequence[float] | np.ndarray | pd.Series,
    *,
    instruction_ids: Sequence | np.ndarray | pd.Series | None = None,
    difficulty_l2: float = 1.0,
    n_bootstrap: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> LengthControlledWinRate:
    """Win rate with the judge's preference for longer answers regressed out: the model of AlpacaEval 2's
    ``length_controlled_minimal`` GLM (plus optional difficulty terms), fitted without its cross-validated L1
    penalty and with s in ddof 0. Not alpaca_eval's number: :mod:`evaluation.alpacaeval` computes that
    (``length_controlled_v1``, ``_noreg``, ``_minimal``); docs/evaluation.md lists the differences.

    Model, for row i with (soft) outcome y_i = P(model ≻ baseline) and instruction x(i)::

        z_i = theta + phi * tanh((len_model_i - len_baseline_i) / s) + delta_{x(i)}
        P(model ≻ baseline | i) = sigma(z_i)

    where s is the standard deviation (ddof=0) of the length differences over the rows, and the
    difficulty terms delta_x are present only when ``instruction_ids`` is given. Parameters minimize
    the exact cross-entropy with fractional targets plus an L2 penalty on the difficulties::

        L = sum_i [softplus(z_i) - y_i z_i] + (difficulty_l2 / 2) * sum_x delta_x^2

    (softplus(z) - y z = -[y log sigma(z) + (1 - y) log sigma(-z)]), by L-BFGS. theta and phi are not
    penalized.

    The LC win rate is sigma(theta): the predicted win rate at zero length difference for an
    instruction with delta = 0. Because theta is unpenalized, its stationarity condition
    sum_i r_i = 0 (r_i = sigma(z_i) - y_i) and the difficulty conditions sum_{i in x} r_i
    + difficulty_l2 * delta_x = 0 together give sum_x delta_x = 0 at the optimum: delta = 0 is the
    mean instruction difficulty on the logit scale, so sigma(theta) averages the difficulties out on
    that scale (it is not the mean over instructions of sigma(theta + delta_x)).

    Without length variation (s = 0) the length term is dropped (phi = 0). Bootstrap: rows are
    resampled with replacement and the whole fit (including s) is redone, warm-started at the full
    fit. When the outcomes are all 0 or all 1, theta has no finite optimum and the fit stops at a
    large |theta|.
    """
    y = as_outcomes(outcomes)
    len_m = np.asarray(len_model, dtype=float).reshape(-1)
    len_b = np.asarray(len_baseline, dtype=float).reshape(-1)
    if not (len(y) == len(len_m) == len(len_b)):
        raise DataError(
            f"outcomes, len_model and len_baseline must have the same length; got {len(y)}, {len(len_m)}, {len(len_b)}"
        )
    if len(y) == 0:
        raise DataError("length_controlled_win_rate needs at least one outcome")
    if np.isnan(len_m).any() or np.isnan(len_b).any():
        raise DataError("response lengths contain NaN")
    delta_len = len_m - len_b  # (N,)

    group, ids, n_groups = None, None, 0
    if instruction_ids is not None:
        ids_arr = np.asarray(instruction_ids).reshape(-1)
        if len(ids_arr) != len(y):
            raise DataError(f"instruction_ids has length {len(ids_arr)}, expected {len(y)}")
        ids, group = np.unique(ids_arr, return_inverse=True)
        n_groups = len(ids)

    ones = np.ones_like(y)
    t, s = _lc_design(delta_len, ones)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_bootstrap)
    with single_threaded_blas():
        p = _fit_lc(y, t, group, n_groups, ones, difficulty_l2, np.zeros(2 + n_groups))
        for k in range(n_bootstrap):
            w = bootstrap_counts(rng, len(y)).astype(float)
            t_k, _ = _lc_design(delta_len, w)
            boot[k] = expit(_fit_lc(y, t_k, group, n_groups, w, difficulty_l2, p)[0])
    low, high = percentile_ci(boot, ci)

    return LengthControlledWinRate(
        lc_win_rate=float(expit(p[0])),
        win_rate=float(y.mean()),
        intercept=float(p[0]),
        length_coef=float(p[1]),
        length_std=s,
        standard_error=float(boot.std(ddof=1)) if n_bootstrap > 1 else float("nan"),
        ci_low=low,
        ci_high=high,
        n=len(y),
        instruction_difficulty=None if ids is None else pd.Series(p[2:], index=ids, name="difficulty"),
    )


# ---------------------------------------------------------------------------------------------------
# Pairwise win-rate matrix
# ---------------------------------------------------------------------------------------------------


def win_rate_matrix(battles: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """M[i, j] = mean P(i ≻ j) over all battles between i and j, in either orientation (a battle with
    outcome o for (a, b) counts as o for (a, b) and 1 - o for (b, a)). NaN where i and j never met;
    diagonal 0.5. Rows and columns are ``models`` (default: every model in the table, sorted).
    Self-battles (model_a == model_b) carry no information and are ignored."""
    o = battle_outcomes(battles)
    a = battles["model_a"].to_numpy()
    b = battles["model_b"].to_numpy()
    both = pd.DataFrame(
        {
            "row": np.concatenate([a, b]),
            "col": np.concatenate([b, a]),
            "outcome": np.concatenate([o, 1.0 - o]),
        }
    )
    both = both[both["row"] != both["col"]]
    if models is None:
        models = sorted(set(a) | set(b))
    models = list(models)
    means = both.groupby(["row", "col"])["outcome"].mean().unstack()
    values = means.reindex(index=models, columns=models).to_numpy(dtype=float, copy=True)
    np.fill_diagonal(values, 0.5)
    return pd.DataFrame(values, index=models, columns=models)
