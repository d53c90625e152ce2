"""AlpacaEval 2: its files and its statistics, as alpaca_eval 0.6.6 defines them.

Files (JSON lists of records, as AlpacaEval reads and writes them):

- *model outputs* (``model_outputs.json``): ``instruction``, ``output``, ``generator``;
- *annotations* (``annotations.json``): ``instruction``, ``output_1`` / ``generator_1`` (the baseline),
  ``output_2`` / ``generator_2`` (the model), ``preference`` in [1, 2] (1: the baseline's output is
  preferred, 2: the model's, soft values in between; 1.5 or the legacy 0 a draw; empty: not annotated),
  optionally ``annotator``. Row i is instruction i of the evaluation set: AlpacaEval looks the
  instruction difficulty up by that position.

Statistics (every figure in percent, as AlpacaEval reports it), for one model's annotations:

- ``win_rate`` = 100 · mean(preference − 1) over annotated rows, ``standard_error`` = 100 · its s.e.m.
  (ddof 1); ``discrete_win_rate`` rounds each preference to a win, loss or draw (½) first;
- ``length_controlled_winrate``: AlpacaEval's GLM (:func:`glm_win_rate`): a logistic regression of
  y = preference − 1 on tanh(Δ/s) (Δ = characters of the baseline's output − characters of the model's,
  s their standard deviation, ddof 1), the instruction difficulty (v1 and noreg) and a per-model
  intercept ``not_gamed_baseline``, without a separate intercept; fitted with an L1 penalty whose
  strength is chosen by 5-fold cross-validation; v1 also fits the annotations of the verbose and concise
  variants of the baseline ("gamed" baselines, weight 0.2 / their number) with the intercept off, which
  pulls the length and difficulty slopes towards the baseline's own. The LC win rate is 100 · the mean
  over instructions of the fitted P(model ≻ baseline) at Δ = 0; ``lc_standard_error`` is 100 · the
  s.e.m. of those per-instruction predictions (what AlpacaEval reports: it does not include the
  uncertainty of the fit, and it is 0 for the minimal GLM, whose predictions are all equal).

Which GLM is used follows from the inputs: ``length_controlled_v1`` (the leaderboard's) needs the
instruction-difficulty table and the gamed baselines' annotations, ``length_controlled_noreg`` the
table alone, ``length_controlled_minimal`` neither. docs/evaluation.md lists what matches alpaca_eval
and what does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from evaluation.report import ReportSection, read_table
from evaluation.winrate import bootstrap_counts, percentile_ci, single_threaded_blas
from prefgame.errors import DataError
from prefgame.run import atomic_write_text

ALPACAEVAL_VERSION = "0.6.6"
GLM_V1, GLM_NOREG, GLM_MINIMAL = "length_controlled_v1", "length_controlled_noreg", "length_controlled_minimal"
GLM_NAMES = (GLM_V1, GLM_NOREG, GLM_MINIMAL)
# The GLM's design columns, named as AlpacaEval's formula names them (its weights files use these names).
LENGTH, DIFFICULTY, INTERCEPT = "np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"
DEFAULT_CS = tuple(np.logspace(-4, 4, 10))  # LogisticRegressionCV's default grid of inverse penalties C
N_SPLITS = 5
REGULARIZE_TO_BASELINE = 0.2  # total weight of the gamed baselines' rows, shared among them (v1)
ANNOTATION_COLUMNS = ("instruction", "output_1", "generator_1", "output_2", "generator_2", "preference")


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def _require_text(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; it has {list(frame.columns)}")
    for col in columns:
        bad = ~frame[col].map(lambda v: isinstance(v, str))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = frame[col].iloc[row]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise DataError(f"{where}: row {row}: '{col}' is missing")
            raise DataError(f"{where}: row {row}: '{col}' must be text, got {_shown(value)}"[:300])


def read_model_outputs(path: str | Path) -> pd.DataFrame:
    """An AlpacaEval ``model_outputs.json`` (``instruction``, ``output``, ``generator``), or the jsonl of
    ``prefgame generate`` (its ``prompt`` is the instruction). Returns those three columns, in file order."""
    frame = read_table(path)
    if "instruction" not in frame.columns and "prompt" in frame.columns:
        frame = frame.rename(columns={"prompt": "instruction"})
    _require_text(frame, ("instruction", "output", "generator"), str(path))
    return frame[["instruction", "output", "generator"]].reset_index(drop=True)


def write_model_outputs(path: str | Path, outputs: pd.DataFrame) -> None:
    """Write ``instruction``, ``output``, ``generator`` records as AlpacaEval reads them."""
    _require_text(outputs, ("instruction", "output", "generator"), "model outputs")
    records = outputs[["instruction", "output", "generator"]].to_dict(orient="records")
    atomic_write_text(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")


def read_annotations(path: str | Path) -> pd.DataFrame:
    """An AlpacaEval ``annotations.json``; checks the fields and that every preference is in [1, 2], 0
    (a legacy draw) or empty. Rows stay in file order (row i = instruction i)."""
    frame = read_table(path)
    _require_text(frame, ANNOTATION_COLUMNS[:-1], str(path))
    if "preference" not in frame.columns:
        raise DataError(f"{path}: missing field 'preference' (in [1, 2]: 1 the baseline's output wins, 2 the model's)")
    pref = pd.to_numeric(frame["preference"], errors="coerce")
    bad = frame["preference"].notna() & (pref.isna() | ~(pref.between(1, 2) | (pref == 0)))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: row {row}: preference {_shown(frame['preference'].iloc[row])} is not in [1, 2] "
            "(1: output_1 wins, 2: output_2 wins, 1.5 or 0: draw, empty: not annotated)"
        )
    frame = frame.copy()
    frame["preference"] = pref.astype(float)
    return frame.reset_index(drop=True)


def _shown(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def write_annotations(path: str | Path, annotations: pd.DataFrame) -> None:
    """Write annotations as AlpacaEval writes them (a JSON list of records; a missing preference is null)."""
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in annotations.to_dict(orient="records")
    ]
    atomic_write_text(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")


def check_answered(reference: pd.DataFrame, outputs: pd.DataFrame, model: str) -> None:
    """The reference names each instruction once and ``model``'s ``outputs`` answer every one of them."""
    repeated = reference["instruction"][reference["instruction"].duplicated()]
    if len(repeated):
        raise DataError(f"the reference outputs repeat instruction {repeated.iloc[0][:60]!r}; each must appear once")
    answered = set(outputs["instruction"])
    missing = [q for q in reference["instruction"] if q not in answered]
    if missing:
        raise DataError(
            f"{model}: no output for {len(missing)} of {len(reference)} reference instructions (first: "
            f"{missing[0][:60]!r}); AlpacaEval needs every instruction answered"
        )


def annotations_from_battles(
    battles: pd.DataFrame,
    reference: pd.DataFrame,
    outputs: pd.DataFrame,
    *,
    model: str,
    baseline: str,
    annotator: str,
) -> pd.DataFrame:
    """AlpacaEval annotations of ``model`` against ``baseline`` from judged battles (``prompt``,
    ``model_a``/``model_b``, ``outcome`` = P(model_a ≻ model_b)): one row per instruction of ``reference``
    (the baseline's model outputs, in their order, which fixes each instruction's index), with the model's
    output from ``outputs`` and preference = 1 + P(model ≻ baseline); empty where the judge gave no
    verdict (AlpacaEval fits without that row and still averages its prediction). The model must have
    answered every reference instruction."""
    check_answered(reference, outputs, model)
    answers = dict(zip(outputs["instruction"], outputs["output"]))
    mine = battles[
        ((battles["model_a"] == model) & (battles["model_b"] == baseline))
        | ((battles["model_a"] == baseline) & (battles["model_b"] == model))
    ]
    p_model = {
        str(row.prompt): float(row.outcome) if row.model_a == model else 1.0 - float(row.outcome)
        for row in mine.itertuples(index=False)
    }
    return pd.DataFrame(
        {
            "instruction": reference["instruction"].to_numpy(),
            "output_1": reference["output"].to_numpy(),
            "generator_1": baseline,
            "output_2": [answers[q] for q in reference["instruction"]],
            "generator_2": model,
            "annotator": annotator,
            "preference": [1.0 + p_model[q] if q in p_model else np.nan for q in reference["instruction"]],
        }
    )


def split_by_model(annotations: pd.DataFrame, where: str) -> dict[str, pd.DataFrame]:
    """Annotations per model (``generator_2``); one baseline (``generator_1``) for all of them."""
    baselines = sorted(set(annotations["generator_1"]))
    if len(baselines) != 1:
        raise DataError(f"{where}: annotations against several baselines {baselines}; give one baseline")
    return {str(m): g.reset_index(drop=True) for m, g in annotations.groupby("generator_2", sort=False)}


def read_instruction_difficulty(path: str | Path) -> pd.Series:
    """Instruction difficulty by instruction index: AlpacaEval's ``instruction_difficulty.csv`` (the index in
    the first column), or a table with ``index`` and ``instruction_difficulty`` columns (such as its
    ``df_gamed.csv``, whose first row per index is used, as AlpacaEval does)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"instruction difficulty file not found: {p} (AlpacaEval's instruction_difficulty.csv)")
    try:
        frame = pd.read_csv(p)
    except (ValueError, OSError) as exc:
        raise DataError(f"{p}: could not read ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    if "instruction_difficulty" not in frame.columns:
        raise DataError(f"{p}: needs an 'instruction_difficulty' column; it has {list(frame.columns)}")
    key = "index" if "index" in frame.columns else frame.columns[0]
    if key == "instruction_difficulty":
        raise DataError(f"{p}: needs the instruction index as its first column or an 'index' column")
    frame = frame.drop_duplicates(key)
    index = pd.to_numeric(frame[key], errors="coerce")
    values = pd.to_numeric(frame["instruction_difficulty"], errors="coerce")
    if index.isna().any() or values.isna().any() or (index % 1 != 0).any():
        raise DataError(f"{p}: instruction indices must be integers and difficulties numbers")
    return pd.Series(values.to_numpy(float), index=index.astype(int).to_numpy(), name="instruction_difficulty")


# ---------------------------------------------------------------------------------------------------
# Plain win rates (alpaca_eval.metrics.get_winrate)
# ---------------------------------------------------------------------------------------------------


def model_preference(preference: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """AlpacaEval preferences in [1, 2] (0 = a legacy draw, NaN = not annotated) as P(model ≻ baseline)."""
    p = np.asarray(preference, dtype=float)
    return np.where(p == 0, 1.5, p) - 1.0


def win_rates(annotations: pd.DataFrame) -> dict[str, Any]:
    """``win_rate``, ``standard_error``, ``n_wins``, ``n_wins_base``, ``n_draws``, ``n_total`` and
    ``discrete_win_rate`` of one model's annotations, as alpaca_eval's ``get_winrate`` computes them."""
    y = model_preference(annotations["preference"])
    y = y[~np.isnan(y)]
    if y.size == 0:
        raise DataError("no annotated instruction (every preference is empty)")
    discrete = np.where(y == 0.5, 0.5, np.round(y))  # a draw is ½; anything else rounds to a win or a loss
    return {
        "win_rate": 100 * float(y.mean()),
        "standard_error": 100 * float(y.std(ddof=1) / np.sqrt(y.size)) if y.size > 1 else float("nan"),
        "n_wins": int((y > 0.5).sum()),
        "n_wins_base": int((y < 0.5).sum()),
        "n_draws": int((y == 0.5).sum()),
        "n_total": int(y.size),
        "discrete_win_rate": 100 * float(discrete.mean()),
    }


# ---------------------------------------------------------------------------------------------------
# The length-controlled GLM (alpaca_eval.metrics.glm_winrate)
# ---------------------------------------------------------------------------------------------------


def fit_l1_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float) -> np.ndarray:
    """argmin_β C · Σ_i w_i [softplus(x_i·β) − y_i x_i·β] + Σ_j |β_j|: the L1-penalized logistic regression
    without intercept that liblinear solves (sample weights scale C per row; y may be fractional, which
    is AlpacaEval's duplicate-each-row-with-weights-y-and-1−y device written out). Solved exactly by
    L-BFGS-B on β = u − v, u, v ≥ 0 (liblinear stops at a tolerance of 1e-4)."""
    n_features = x.shape[1]

    def loss_and_grad(uv: np.ndarray) -> tuple[float, np.ndarray]:
        beta = uv[:n_features] - uv[n_features:]
        z = x @ beta
        loss = c * (w @ (np.logaddexp(0.0, z) - y * z)) + uv.sum()
        g = c * (x.T @ (w * (expit(z) - y)))
        return float(loss), np.concatenate([g + 1.0, 1.0 - g])

    res = minimize(
        loss_and_grad,
        np.zeros(2 * n_features),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * (2 * n_features),
        options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-11},
    )
    return res.x[:n_features] - res.x[n_features:]


def cv_folds(n_rows: int, n_splits: int = N_SPLITS) -> np.ndarray:
    """The fold of each training row in AlpacaEval's cross-validation (scikit-learn's GroupKFold over one
    group per row, each row duplicated: equal groups go round-robin from the last row): (n − 1 − i) mod k."""
    return (n_rows - 1 - np.arange(n_rows)) % n_splits


def fit_l1_logistic_cv(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, *, cs: Sequence[float] = DEFAULT_CS, n_splits: int = N_SPLITS
) -> tuple[np.ndarray, float]:
    """(β, C): C chosen among ``cs`` by ``n_splits``-fold cross-validation of the weighted cross-entropy
    mean_i w_i [y_i log q_i + (1 − y_i) log(1 − q_i)] (q clipped to [1e-15, 1 − 1e-15]), summed over folds,
    the first best C on ties; then β refitted on every row at that C (LogisticRegressionCV's procedure)."""
    if len(y) < n_splits:
        raise DataError(f"the length-controlled GLM needs at least {n_splits} annotated instructions, got {len(y)}")
    cs = list(cs)
    if len(cs) == 1:
        return fit_l1_logistic(x, y, w, cs[0]), float(cs[0])
    folds = cv_folds(len(y), n_splits)
    scores = np.zeros((n_splits, len(cs)))
    for f in range(n_splits):
        train, test = folds != f, folds == f
        for j, c in enumerate(cs):
            beta = fit_l1_logistic(x[train], y[train], w[train], c)
            q = np.clip(expit(x[test] @ beta), 1e-15, 1 - 1e-15)
            scores[f, j] = np.mean(w[test] * (y[test] * np.log(q) + (1 - y[test]) * np.log(1 - q)))
    best = int(np.argmax(scores.sum(axis=0)))
    return fit_l1_logistic(x, y, w, cs[best]), float(cs[best])


def std_delta_len(len_baseline: np.ndarray, len_model: np.ndarray) -> np.ndarray:
    """(len_baseline − len_model) / s.d. (ddof 1): AlpacaEval's ``std_delta_len``; 0 where the s.d. is 0
    or undefined (alpaca_eval would divide by zero there)."""
    delta = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    sd = float(delta.std(ddof=1)) if delta.size > 1 else 0.0
    return delta / sd if sd > 0 else np.zeros_like(delta)


@dataclass(frozen=True)
class GamedRows:
    """The rows of AlpacaEval's "gamed" baselines (verbose and concise variants of the baseline judged
    against it): P(variant ≻ baseline), their ``std_delta_len`` (within each variant), their instructions'
    difficulty and each row's weight (0.2 / the number of variants)."""

    y: np.ndarray
    std_delta_len: np.ndarray
    difficulty: np.ndarray
    weight: np.ndarray


def gamed_rows(
    sources: Sequence[pd.DataFrame], difficulty: pd.Series, *, regularize: float = REGULARIZE_TO_BASELINE
) -> GamedRows:
    """Gamed rows from each variant's annotations (std_delta_len computed within a variant, as AlpacaEval's
    ``df_gamed`` was built), or from a ``df_gamed.csv`` table (columns ``preference`` in [0, 1], ``index``,
    ``std_delta_len``, ``instruction_difficulty``) used as it is. Unannotated rows are left out."""
    ys, ts, ds = [], [], []
    for frame in sources:
        if "std_delta_len" in frame.columns:  # AlpacaEval's precomputed df_gamed.csv
            for col in ("preference", "std_delta_len", "instruction_difficulty"):
                if col not in frame.columns:
                    raise DataError(f"gamed-baseline table needs a '{col}' column; it has {list(frame.columns)}")
            y = pd.to_numeric(frame["preference"], errors="coerce").to_numpy(float)
            if ((y < 0) | (y > 1)).any():
                raise DataError("gamed-baseline table: 'preference' must be P(variant ≻ baseline) in [0, 1]")
            t = frame["std_delta_len"].to_numpy(float)
            d = frame["instruction_difficulty"].to_numpy(float)
        else:
            y = model_preference(frame["preference"])
            t = std_delta_len(frame["output_1"].str.len(), frame["output_2"].str.len())
            d = instruction_difficulty(difficulty, len(frame))
        keep = ~np.isnan(y)
        ys.append(y[keep])
        ts.append(t[keep])
        ds.append(d[keep])
    y = np.concatenate(ys)
    return GamedRows(y, np.concatenate(ts), np.concatenate(ds), np.full(y.size, regularize / len(sources)))


def instruction_difficulty(table: pd.Series, n_rows: int) -> np.ndarray:
    """Difficulty of instructions 0 … n_rows − 1 (row i of an annotations file is instruction i)."""
    missing = [i for i in range(n_rows) if i not in table.index]
    if missing:
        raise DataError(
            f"the instruction-difficulty table has no value for instruction index {missing[0]} "
            f"({len(missing)} of {n_rows} missing): annotations must follow the evaluation set's order"
        )
    return table.loc[list(range(n_rows))].to_numpy(float)


@dataclass(frozen=True)
class GLMWinRate:
    glm: str  # length_controlled_v1 / _noreg / _minimal
    lc_win_rate: float  # 100 · mean of the per-instruction predictions at Δ = 0
    lc_standard_error: float  # 100 · their s.e.m. (ddof 1)
    weights: dict[str, float]  # fitted coefficients, named as AlpacaEval names them
    c: float  # the inverse L1 penalty chosen by cross-validation
    predictions: np.ndarray  # per instruction, P(model ≻ baseline) at Δ = 0
    n_fit: int  # rows fitted (annotated model rows + gamed rows)
    bootstrap: dict[str, float] = field(default_factory=dict)  # ci_low, ci_high (percent), when asked for


def glm_win_rate(
    y: np.ndarray,
    len_baseline: np.ndarray,
    len_model: np.ndarray,
    *,
    difficulty: np.ndarray | None = None,
    gamed: GamedRows | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    n_splits: int = N_SPLITS,
    n_bootstrap: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> GLMWinRate:
    """AlpacaEval's length-controlled win rate of one model from y = P(model ≻ baseline) per instruction
    (NaN: not annotated, predicted but not fitted) and the two outputs' lengths.

    Design: [tanh(std_delta_len), instruction_difficulty (with ``difficulty``), not_gamed_baseline], no
    intercept; model rows have not_gamed_baseline = 1 and weight 1, ``gamed`` rows (v1) 0 and their
    weight. β = :func:`fit_l1_logistic_cv`. Prediction for instruction i: σ(β_intercept + β_difficulty d_i).
    ``n_bootstrap`` > 0 adds a percentile interval (prefgame's, not AlpacaEval's): the model rows are
    resampled and refitted at the C chosen on all of them, the gamed rows kept."""
    y = np.asarray(y, dtype=float)
    if gamed is not None and difficulty is None:
        raise DataError("the gamed baselines regularize length_controlled_v1, which needs the instruction difficulty")
    use_d = difficulty is not None
    d = np.asarray(difficulty, dtype=float) if use_d else np.zeros_like(y)
    t = np.tanh(std_delta_len(len_baseline, len_model))  # s over every row, annotated or not, as AlpacaEval
    x, yy, w = _glm_rows(y, t, d, gamed, use_d)
    with single_threaded_blas():
        beta, c = fit_l1_logistic_cv(x, yy, w, cs=cs, n_splits=n_splits)
    pred = _predict(beta, d, use_d)
    boot: dict[str, float] = {}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        len_b, len_m = np.asarray(len_baseline, dtype=float), np.asarray(len_model, dtype=float)
        annotated = np.flatnonzero(~np.isnan(y))
        lcs = np.empty(n_bootstrap)
        with single_threaded_blas():
            for k in range(n_bootstrap):
                i = annotated[np.repeat(np.arange(annotated.size), bootstrap_counts(rng, annotated.size))]
                t_k = np.tanh(std_delta_len(len_b[i], len_m[i]))
                lcs[k] = 100 * float(
                    _predict(fit_l1_logistic(*_glm_rows(y[i], t_k, d[i], gamed, use_d), c), d, use_d).mean()
                )
        boot = dict(zip(("ci_low", "ci_high"), percentile_ci(lcs, ci)))
    return GLMWinRate(
        glm=_glm_name(difficulty, gamed),
        lc_win_rate=100 * float(pred.mean()),
        lc_standard_error=100 * float(pred.std(ddof=1) / np.sqrt(pred.size)) if pred.size > 1 else float("nan"),
        weights=dict(zip([LENGTH, *([DIFFICULTY] if use_d else []), INTERCEPT], beta.tolist())),
        c=c,
        predictions=pred,
        n_fit=int(yy.size),
        bootstrap=boot,
    )


def _design(t: np.ndarray, d: np.ndarray, intercept: np.ndarray, use_d: bool) -> np.ndarray:
    return np.column_stack([t, *([d] if use_d else []), intercept])


def _glm_rows(y, t, d, gamed: GamedRows | None, use_d: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, w) fitted: the gamed rows first (AlpacaEval's order, which fixes the folds), then the model's
    annotated rows (intercept 1, weight 1)."""
    keep = ~np.isnan(y)
    x, yy, w = _design(t[keep], d[keep], np.ones(int(keep.sum())), use_d), y[keep], np.ones(int(keep.sum()))
    if gamed is None:
        return x, yy, w
    xg = _design(np.tanh(gamed.std_delta_len), gamed.difficulty, np.zeros(gamed.y.size), use_d)
    return np.vstack([xg, x]), np.concatenate([gamed.y, yy]), np.concatenate([gamed.weight, w])


def _predict(beta: np.ndarray, d: np.ndarray, use_d: bool) -> np.ndarray:
    """P(model ≻ baseline) per instruction at Δ = 0."""
    return expit(_design(np.zeros_like(d), d, np.ones_like(d), use_d) @ beta)


# ---------------------------------------------------------------------------------------------------
# One model, many models
# ---------------------------------------------------------------------------------------------------


def alpacaeval_metrics(
    annotations: pd.DataFrame,
    *,
    difficulty: pd.Series | None = None,
    gamed: GamedRows | None = None,
    cs: Sequence[float] = DEFAULT_CS,
) -> dict[str, Any]:
    """Every leaderboard figure of one model's annotations (one ``generator_2``): :func:`win_rates`, the
    length-controlled win rate and its standard error, the GLM's name, weights and chosen C, and
    ``avg_length`` (mean characters of the model's outputs, truncated to an integer as AlpacaEval does)."""
    models = set(annotations["generator_2"])
    if len(models) != 1:
        raise DataError(f"alpacaeval_metrics takes one model's annotations; got {sorted(models)}")
    out = win_rates(annotations)
    out["avg_length"] = int(annotations["output_2"].str.len().mean())
    model, baseline = annotations["generator_2"].iloc[0], annotations["generator_1"].iloc[0]
    if model == baseline:  # AlpacaEval: the baseline against itself is 50 by construction
        out.update(length_controlled_winrate=50.0, lc_standard_error=0.0, glm=_glm_name(difficulty, gamed))
        return out
    d = instruction_difficulty(difficulty, len(annotations)) if difficulty is not None else None
    fit = glm_win_rate(
        model_preference(annotations["preference"]),
        annotations["output_1"].str.len().to_numpy(float),
        annotations["output_2"].str.len().to_numpy(float),
        difficulty=d,
        gamed=gamed,
        cs=cs,
    )
    out.update(
        length_controlled_winrate=fit.lc_win_rate,
        lc_standard_error=fit.lc_standard_error,
        glm=fit.glm,
        glm_c=fit.c,
        **{f"weight[{k}]": v for k, v in fit.weights.items()},
    )
    return out


def _glm_name(difficulty, gamed) -> str:
    return GLM_V1 if gamed is not None else (GLM_NOREG if difficulty is not None else GLM_MINIMAL)


def leaderboard(
    annotations: dict[str, pd.DataFrame],
    *,
    difficulty: pd.Series | None = None,
    gamed: GamedRows | None = None,
    cs: Sequence[float] = DEFAULT_CS,
) -> pd.DataFrame:
    """One row per model (its annotations against the common baseline), AlpacaEval's columns, sorted by the
    length-controlled win rate (best first), as its ``leaderboard.csv``."""
    rows = {m: alpacaeval_metrics(a, difficulty=difficulty, gamed=gamed, cs=cs) for m, a in annotations.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table.sort_values("length_controlled_winrate", ascending=False)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def glm_description(glm: str, unit: str = "characters") -> str:
    """What the named GLM is, in one sentence (for captions)."""
    terms = {
        GLM_V1: "tanh(Δ/s), the instruction difficulty and a per-model intercept, regularized towards the "
        "baseline's verbose and concise variants (weight 0.2)",
        GLM_NOREG: "tanh(Δ/s), the instruction difficulty and a per-model intercept",
        GLM_MINIMAL: "tanh(Δ/s) and a per-model intercept",
    }[glm]
    return (
        f"AlpacaEval 2 `{glm}` (alpaca_eval {ALPACAEVAL_VERSION}): a logistic regression on {terms}, L1 penalty "
        f"chosen by {N_SPLITS}-fold cross-validation, averaged over instructions at Δ = 0; Δ = length difference "
        f"in {unit}, s = its standard deviation"
    )


def alpacaeval_section(
    annotations: dict[str, pd.DataFrame],
    *,
    difficulty: pd.Series | None = None,
    gamed: GamedRows | None = None,
    cs: Sequence[float] = DEFAULT_CS,
) -> ReportSection:
    """AlpacaEval 2's leaderboard of ``annotations`` (model -> its annotations) as a report section."""
    board = leaderboard(annotations, difficulty=difficulty, gamed=gamed, cs=cs)
    glm = _glm_name(difficulty, gamed)
    baseline = next(iter(annotations.values()))["generator_1"].iloc[0]
    section = ReportSection("AlpacaEval 2")
    note = {
        GLM_V1: "This is the leaderboard's definition.",
        GLM_NOREG: "Without the gamed baselines' annotations this is not the leaderboard's LC (v1): "
        "the length and difficulty slopes are not pulled towards the baseline's.",
        GLM_MINIMAL: "Without the instruction-difficulty table this is not the leaderboard's LC (v1): give "
        "alpacaeval.instruction_difficulty and alpacaeval.gamed for it.",
    }[glm]
    section.text(
        f"{len(board)} model(s) against `{baseline}`, {len(next(iter(annotations.values())))} instructions. "
        f"**LC win rate: {glm_description(glm)}.** {note} Every figure in percent; `lc_standard_error` is "
        "AlpacaEval's: the s.e.m. of the per-instruction predictions, not a sampling error of the fit; "
        "`standard_error` is the s.e.m. of the preferences. Lengths count characters, as AlpacaEval does."
    )
    section.add_table("alpacaeval_leaderboard", board, "**AlpacaEval 2 leaderboard** (sorted by LC win rate):")
    section.metrics["alpacaeval"] = {
        "glm": glm,
        "alpaca_eval_version": ALPACAEVAL_VERSION,
        "length_unit": "characters",
        "baseline": str(baseline),
        "length_controlled_winrate": {m: float(v) for m, v in board["length_controlled_winrate"].items()},
        "win_rate": {m: float(v) for m, v in board["win_rate"].items()},
    }
    return section
