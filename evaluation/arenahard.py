"""Arena-Hard-Auto: battles from its judgment files, its score, and style control.

Files (JSON lines, as Arena-Hard-Auto v0.1 writes them under ``data/<bench>/``):

- *judgments* (``model_judgment/<judge>/<model>.jsonl``): ``question_id`` (v2.0: ``uid``), ``model``,
  ``judge`` and ``games``: two games, each with a ``score`` verdict among ``A>>B``, ``A>B``, ``A=B``,
  ``B>A``, ``B>>A`` (and the mirrored spellings ``A<B``, ``A<<B``, ``B<A``, ``B<<A``, ``B=A``). In game 1
  the baseline is A and the model B; in game 2 the model is A;
- *answers* (``model_answer/<model>.jsonl``): ``question_id`` and ``model_id`` (v2.0: ``uid``, ``model``),
  the answer text (``choices[0].turns[0].content``; v2.0 ``messages[-1].content.answer``) and the style
  metadata ``conv_metadata`` (v2.0 ``metadata``): ``token_len`` and the markdown counts ``header_count``,
  ``list_count``, ``bold_count`` (each a number or a dict of numbers that are summed).

Statistics, as Arena-Hard-Auto v0.1 computes them (``show_result.py``):

- every game is a battle baseline (model_a) vs model (model_b); a decisive verdict (``>>``) counts
  ``weight`` = 3 times, a missing or unknown verdict drops its game;
- the **score** is the Bradley–Terry win rate against the baseline, 100 · σ((R_model − R_baseline) ln 10 /
  400), with a 95% percentile interval from 100 bootstrap resamples of the battles (with every battle
  against the baseline this equals the mean outcome, ties ½, decisive verdicts weighted);
- **style control** adds covariates to the BT model, as Chatbot Arena and Arena-Hard-Auto v0.1 do: per
  element k (length = ``token_len``; markdown = headers, lists, bold) the normalized difference
  f_k = (a_k − b_k) / (a_k + b_k + 1) between the two answers, standardized over the battles (mean 0,
  s.d. 1, ddof 0); P(a ≻ b) = σ(ln 10 · (r_a − r_b) + Σ_k γ_k f_k), fitted with an L2 penalty
  (reg / 2) · (|r|² + |γ|²), reg = 0.5; the style-controlled score is 100 · σ(ln 10 · (r_model −
  r_baseline)), the win rate at equal style. γ_k > 0: the judge prefers the answer with more of k.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from evaluation.ratings import bt_ratings
from evaluation.report import ReportSection, read_table
from evaluation.winrate import bootstrap_counts, percentile_ci, single_threaded_blas
from prefgame.errors import DataError

# verdict -> (which side it favours: "A", "B" or "tie"; decisive?)
VERDICTS = {
    "A>>B": ("A", True), "A>B": ("A", False), "A=B": ("tie", False), "B>A": ("B", False), "B>>A": ("B", True),
    "A<<B": ("B", True), "A<B": ("B", False), "B=A": ("tie", False), "B<A": ("A", False), "B<<A": ("A", True),
}  # fmt: skip
MARKDOWN = ("header_count", "list_count", "bold_count")
STYLE_ELEMENTS = {"length": ("token_len",), "markdown": MARKDOWN}
LN10 = float(np.log(10.0))


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def _jsonl_files(paths: Sequence[str | Path], what: str) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: no *.jsonl {what} files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{what} file or folder not found: {p}")
    if not files:
        raise DataError(f"no {what} files given")
    return files


def _question_id(frame: pd.DataFrame, where: str) -> pd.Series:
    for col in ("question_id", "uid"):
        if col in frame.columns:
            return frame[col].astype(str)
    raise DataError(f"{where}: needs a 'question_id' (v0.1) or 'uid' (v2.0) field; it has {list(frame.columns)}")


def read_judgments(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Judgment records from Arena-Hard judgment files or folders: ``question_id``, ``model``, ``judge``
    and the two games' verdicts ``score_1``, ``score_2`` (None where a game has no verdict)."""
    rows = []
    for path in _jsonl_files(paths, "judgment"):
        frame = read_table(path)
        qid = _question_id(frame, str(path))
        for col in ("model", "games"):
            if col not in frame.columns:
                raise DataError(f"{path}: needs a '{col}' field; it has {list(frame.columns)}")
        for i, (q, model, games) in enumerate(zip(qid, frame["model"], frame["games"])):
            if not isinstance(games, (list, tuple)) or len(games) != 2:
                raise DataError(f"{path}: line {i + 1}: 'games' must hold the two games, got {games!r}"[:200])
            scores = [g.get("score") if isinstance(g, dict) else None for g in games]
            judge = frame["judge"].iloc[i] if "judge" in frame.columns else path.parent.name
            rows.append({"question_id": q, "model": str(model), "judge": str(judge),
                         "score_1": scores[0], "score_2": scores[1]})  # fmt: skip
    return pd.DataFrame(rows)


def judgment_battles(
    judgments: pd.DataFrame, baseline: str, *, weight: int = 3, first_game_only: bool = False
) -> tuple[pd.DataFrame, int]:
    """(battles, games dropped): one battle per game, ``model_a`` = the baseline, ``model_b`` = the model,
    ``winner`` in model_a / model_b / tie, repeated ``weight`` times for a decisive verdict; game 2's verdict
    is read with the model as A. A game without a known verdict is dropped and counted."""
    if weight < 1:
        raise DataError(f"weight must be >= 1, got {weight}")
    rows, dropped = [], 0
    for r in judgments.itertuples(index=False):
        if r.model == baseline:
            continue
        for game, score in ((1, r.score_1), (2, r.score_2))[: 1 if first_game_only else 2]:
            if score not in VERDICTS:
                dropped += 1
                continue
            side, decisive = VERDICTS[score]
            model_side = "B" if game == 1 else "A"  # game 1 shows the baseline as A
            winner = "tie" if side == "tie" else ("model_b" if side == model_side else "model_a")
            row = {"question_id": r.question_id, "model_a": baseline, "model_b": r.model, "winner": winner,
                   "game": game, "judge": r.judge}  # fmt: skip
            rows += [row] * (weight if decisive else 1)
    if not rows:
        raise DataError(f"no judged game against baseline '{baseline}' ({dropped} games without a verdict)")
    return pd.DataFrame(rows), dropped


def count_markdown(text: str) -> dict[str, int]:
    """Arena-Hard's markdown counts of an answer: headers (``#`` … ``######`` at a line start), list items
    (``1.`` or ``-``/``*``/``+`` at a line start) and bold spans (``**x**``, ``__x__``), after removing what
    lies between each pair of triple backticks (as its ``add_markdown_info.py`` does)."""
    for block in re.findall(r"```([^`]*)```", text):
        text = text.replace(block, "")
    headers = sum(len(re.findall(rf"^#{{{k}}}\s", text, re.MULTILINE)) for k in range(1, 7))
    lists = len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)) + len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE))
    bold = len(re.findall(r"\*\*[^*\n]+\*\*", text)) + len(re.findall(r"__[^_\n]+__", text))
    return {"header_count": headers, "list_count": lists, "bold_count": bold}


def _count(value: Any, where: str) -> float:
    if isinstance(value, dict):
        return float(sum(value.values()))
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    raise DataError(f"{where}: a style count must be a number or a dict of numbers, got {value!r}"[:200])


def _answer_text(row: pd.Series) -> str | None:
    choices = row.get("choices")
    if isinstance(choices, (list, tuple)) and choices:
        turns = choices[0].get("turns") if isinstance(choices[0], dict) else None
        if turns:
            return "".join(str(t.get("content", "")) if isinstance(t, dict) else str(t) for t in turns)
    messages = row.get("messages")
    if isinstance(messages, (list, tuple)) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        return str(content.get("answer", "")) if isinstance(content, dict) else str(content)
    return None


def read_answers(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, str]:
    """(style table, length unit): one row per (model, question_id) with ``token_len``, ``header_count``,
    ``list_count`` and ``bold_count`` from the answers' ``conv_metadata`` / ``metadata``; where an answer has
    none, counted from its text (:func:`count_markdown`), its length then in words (no tokenizer here), and
    the unit says so."""
    rows, counted = [], False
    for path in _jsonl_files(paths, "answer"):
        frame = read_table(path)
        qid = _question_id(frame, str(path))
        model_col = "model_id" if "model_id" in frame.columns else ("model" if "model" in frame.columns else None)
        if model_col is None:
            raise DataError(f"{path}: needs a 'model_id' (v0.1) or 'model' (v2.0) field")
        for i in range(len(frame)):
            row = frame.iloc[i]
            where = f"{path}: line {i + 1}"
            meta = next(
                (row[c] for c in ("conv_metadata", "metadata") if c in frame.columns and isinstance(row[c], dict)), None
            )
            if meta is not None and all(k in meta for k in ("token_len", *MARKDOWN)):
                values = {k: _count(meta[k], where) for k in ("token_len", *MARKDOWN)}
            else:
                text = _answer_text(row)
                if text is None:
                    raise DataError(f"{where}: no style metadata and no answer text to count it from")
                counted = True
                values = {
                    "token_len": float(len(text.split())),
                    **{k: float(v) for k, v in count_markdown(text).items()},
                }
            rows.append({"model": str(row[model_col]), "question_id": qid.iloc[i], **values})
    unit = (
        "words (counted here: no token_len in some answer files)"
        if counted
        else "tokens (token_len of the answer files)"
    )
    return pd.DataFrame(rows).drop_duplicates(["model", "question_id"], keep="last"), unit


# ---------------------------------------------------------------------------------------------------
# Style control
# ---------------------------------------------------------------------------------------------------


def style_features(battles: pd.DataFrame, style: pd.DataFrame, elements: Sequence[str]) -> np.ndarray:
    """(n, k) standardized style differences of ``battles`` (``question_id``, ``model_a``, ``model_b``):
    f = (a − b)/(a + b + 1) per element, then (f − mean)/s.d. (ddof 0) over the battles; an element
    without variation stays 0."""
    table = style.set_index(["model", "question_id"])
    keys_a = pd.MultiIndex.from_arrays([battles["model_a"], battles["question_id"].astype(str)])
    keys_b = pd.MultiIndex.from_arrays([battles["model_b"], battles["question_id"].astype(str)])
    for keys in (keys_a, keys_b):
        missing = keys.difference(table.index)
        if len(missing):
            model, q = missing[0]
            raise DataError(f"no answer of model '{model}' to question {q} for style control ({len(missing)} missing)")
    a = table.loc[keys_a, list(elements)].to_numpy(float)
    b = table.loc[keys_b, list(elements)].to_numpy(float)
    f = (a - b) / (a + b + 1.0)
    sd = f.std(axis=0)
    return np.where(sd > 0, (f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)


def fit_contextual_bt(
    ia: np.ndarray, ib: np.ndarray, outcomes: np.ndarray, features: np.ndarray, n_models: int, reg: float,
    weights: np.ndarray | None = None, x0: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """[r (n_models), γ (k)] minimizing Σ_i w_i CE(o_i, σ(ln 10 (r_a − r_b) + f_i·γ)) + (reg/2)(|r|² + |γ|²)."""
    w = np.ones_like(outcomes) if weights is None else weights

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        r, g = params[:n_models], params[n_models:]
        z = LN10 * (r[ia] - r[ib]) + features @ g
        loss = w @ (np.logaddexp(0.0, z) - outcomes * z) + 0.5 * reg * (params @ params)
        e = w * (expit(z) - outcomes)
        grad = reg * params
        grad[:n_models] += LN10 * (
            np.bincount(ia, weights=e, minlength=n_models) - np.bincount(ib, weights=e, minlength=n_models)
        )
        grad[n_models:] += features.T @ e
        return float(loss), grad

    start = np.zeros(n_models + features.shape[1]) if x0 is None else x0
    res = minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-10}
    )
    return res.x


def arena_hard_scores(
    battles: pd.DataFrame,
    baseline: str,
    *,
    style: pd.DataFrame | None = None,
    elements: Sequence[str] = (),
    reg: float = 0.5,
    n_bootstrap: int = 100,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """(scores, style coefficients): per model ``score`` (percent) with its bootstrap interval ``ci_low`` /
    ``ci_high``, ``rating`` (Elo scale, the baseline at 1000) and ``n_battles``. Without ``elements`` the plain
    BT fit (:func:`~evaluation.ratings.bt_ratings`); with them the style-controlled fit, whose γ (log-odds per
    s.d. of each element's normalized difference, for answer a) is returned."""
    if not elements:
        ratings = bt_ratings(battles, baseline=baseline, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
        table = pd.DataFrame(
            {
                "score": 100 * ratings["win_rate_vs_baseline"],
                "ci_low": 100 * expit((ratings["ci_low"] - 1000.0) * LN10 / 400),
                "ci_high": 100 * expit((ratings["ci_high"] - 1000.0) * LN10 / 400),
                "rating": ratings["rating"],
                "n_battles": ratings["n_battles"],
            }
        )
        return table.sort_values("score", ascending=False), {}
    if style is None:
        raise DataError("style control needs the models' answers (their style metadata)")
    f = style_features(battles, style, elements)
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    if baseline not in models:
        raise DataError(f"baseline '{baseline}' has no battles; models are {models}")
    index = {m: i for i, m in enumerate(models)}
    ia = battles["model_a"].map(index).to_numpy()
    ib = battles["model_b"].map(index).to_numpy()
    o = battles["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy(float)
    k, n = len(models), len(battles)
    rng = np.random.default_rng(seed)
    boot = np.full((n_bootstrap, k), np.nan)
    with single_threaded_blas():
        params = fit_contextual_bt(ia, ib, o, f, k, reg)
        for b in range(n_bootstrap):
            w = bootstrap_counts(rng, n).astype(float)
            present = (np.bincount(ia, weights=w, minlength=k) + np.bincount(ib, weights=w, minlength=k)) > 0
            r = fit_contextual_bt(ia, ib, o, f, k, reg, weights=w, x0=params)[:k]
            boot[b, present] = r[present] - r[index[baseline]]
    r = params[:k] - params[index[baseline]]
    bounds = np.array([percentile_ci(boot[:, m], ci) for m in range(k)])
    table = pd.DataFrame(
        {
            "score": 100 * expit(LN10 * r),
            "ci_low": 100 * expit(LN10 * bounds[:, 0]),
            "ci_high": 100 * expit(LN10 * bounds[:, 1]),
            "rating": 1000.0 + 400.0 * r,
            "n_battles": np.bincount(ia, minlength=k) + np.bincount(ib, minlength=k),
        },
        index=pd.Index(models, name="model"),
    )
    coef = dict(zip(elements, params[k:].tolist()))
    return table.sort_values("score", ascending=False), coef


def style_elements(control: Sequence[str]) -> tuple[str, ...]:
    """The covariates of ``control`` ⊆ {length, markdown} (both: Arena-Hard's full style control)."""
    unknown = sorted(set(control) - set(STYLE_ELEMENTS))
    if unknown:
        raise DataError(f"unknown style control {unknown}: use length, markdown or both")
    return tuple(e for name in ("length", "markdown") if name in control for e in STYLE_ELEMENTS[name])


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def arenahard_section(
    judgments: pd.DataFrame,
    baseline: str,
    *,
    answers: tuple[pd.DataFrame, str] | None = None,
    control: Sequence[str] = (),
    weight: int = 3,
    first_game_only: bool = False,
    reg: float = 0.5,
    n_bootstrap: int = 100,
    ci: float = 0.95,
    seed: int = 0,
) -> ReportSection:
    """The Arena-Hard scores (and, with ``control``, the style-controlled ones) as a report section."""
    battles, dropped = judgment_battles(judgments, baseline, weight=weight, first_game_only=first_game_only)
    section = ReportSection("Arena-Hard-Auto")
    section.text(
        f"{len(judgments)} judgment records of {battles['model_b'].nunique()} models against `{baseline}`: "
        f"{len(battles)} battles (a decisive verdict counts {weight}×"
        + (", game 1 only" if first_game_only else ", both games")
        + f"; {dropped} games without a verdict dropped). Definitions of Arena-Hard-Auto v0.1 "
        "(`show_result.py`); docs/evaluation.md lists where prefgame differs."
    )
    scores, _ = arena_hard_scores(battles, baseline, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    section.add_table(
        "arenahard_scores",
        scores,
        f"**Score** = 100 · BT win rate against `{baseline}` (Elo rating, baseline 1000), {ci:.0%} bootstrap "
        f"interval ({n_bootstrap} resamples of the battles).",
    )
    section.metrics["arenahard"] = {"baseline": baseline, "score": {m: float(v) for m, v in scores["score"].items()}}
    elements = style_elements(control)
    if elements:
        if answers is None:
            raise DataError("arenahard.style_control needs arenahard.answers (the model_answer files)")
        style, unit = answers
        controlled, coef = arena_hard_scores(
            battles, baseline, style=style, elements=elements, reg=reg, n_bootstrap=n_bootstrap, ci=ci, seed=seed
        )
        section.add_table(
            "arenahard_style_controlled",
            controlled,
            f"**Style-controlled score** ({' + '.join(control)}; length in {unit}): 100 · σ(ln 10 · (r_model − "
            f"r_baseline)) of the BT model with covariates f = (a − b)/(a + b + 1) per element, standardized, "
            f"L2 penalty {reg:g} (Chatbot Arena / Arena-Hard-Auto v0.1 style control).",
        )
        coefs = pd.DataFrame({"coefficient": coef}).rename_axis("element")
        section.add_table(
            "arenahard_style_coefficients",
            coefs,
            "**Style coefficients** γ: log-odds per s.d. of the element's normalized difference (> 0: the judge "
            "prefers the answer with more of it).",
        )
        section.metrics["arenahard"].update(
            style_controlled={m: float(v) for m, v in controlled["score"].items()}, style_coefficients=coef
        )
    return section
