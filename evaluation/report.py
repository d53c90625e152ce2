"""Win-rate and agreement reports: tables, figures, markdown and self-contained HTML.

A report is a list of :class:`ReportSection`; each holds its tables (DataFrames), figures (PNG bytes)
and an ordered list of blocks (text, table, figure) that render to markdown (:meth:`ReportSection.markdown`)
or to an HTML fragment with the figures embedded as base64 (:meth:`ReportSection.html`).
:func:`write_report` writes ``report.md``, a self-contained ``report.html``, ``figures/*.png`` and every
table as ``tables/<name>.csv`` and ``tables/<name>.json``, all atomically.

Data model (one row per pair, same as ``prefgame quickstart``'s labels.jsonl):

*labels table* — ``prompt``, ``response_a``, ``response_b`` (optional), ``subset`` (optional),
``len_a`` / ``len_b`` (optional; word counts of the responses otherwise), and one column per label
source holding its P(a ≻ b) in [0, 1] (1 a wins, 0 b wins, 0.5 tie, soft values allowed, NaN unlabeled).
Two optional companions per source ``s`` feed the position diagnostics: ``s:swapped`` is the source's
P(first ≻ second) when b was shown first, and ``s:first`` its P(first ≻ second) with a shown first when
``s`` itself combines both orders (as the LLM judge does).

*battles table* — ``model_a``, ``model_b``, ``outcome`` (P(model_a ≻ model_b)) or ``winner``, and
optionally ``prompt``, ``response_a`` / ``response_b`` or ``len_a`` / ``len_b`` for the length-controlled
win rate (see :mod:`evaluation.winrate`).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from evaluation import plots
from evaluation.agreement import (
    accuracy_by_subset,
    agreement_matrix,
    longer_response_win_rate,
    position_consistency,
)
from evaluation.bias import judge_bias
from evaluation.ratings import bt_ratings
from evaluation.winrate import battle_outcomes, length_controlled_win_rate, win_rate, win_rate_matrix
from prefgame.errors import DataError
from prefgame.markdown import table as markdown_table
from prefgame.run import atomic_write_bytes, atomic_write_json, atomic_write_text

# What winrate_section's LC column is (prefgame's fit; evaluation.alpacaeval has AlpacaEval's exact ones).
LC_DEFINITION = (
    "σ(θ) of P(win) = σ(θ + φ·tanh(Δ/s)), s = s.d. of Δ (ddof 0): the model of AlpacaEval 2's "
    "`length_controlled_minimal` GLM fitted without its cross-validated L1 penalty (prefgame's fit; "
    "`prefgame evaluate alpacaeval` computes AlpacaEval's own, in characters), the win rate predicted at "
    "equal length, with a bootstrap interval"
)
PAIR_COLUMNS = ("prompt", "response_a", "response_b", "subset", "len_a", "len_b", "model_a", "model_b")
SWAPPED, FIRST = ":swapped", ":first"
MT_BENCH_REFERENCE = (
    "Reference points (MT-Bench, Zheng et al. 2023): GPT-4 vs humans agree 66% with ties and 85% without; "
    "humans among themselves 63–67% / 81–82%."
)


# ---------------------------------------------------------------------------------------------------
# Sections and rendering
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReportSection:
    """One part of a report: its tables, its figures and the blocks that lay them out."""

    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    metrics: dict[str, Any] = field(default_factory=dict)  # headline figures (JSON-able)
    blocks: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, text or name, caption)

    def text(self, paragraph: str) -> None:
        self.blocks.append(("text", paragraph, ""))

    def add_table(self, name: str, frame: pd.DataFrame, caption: str) -> None:
        self.tables[name] = frame
        self.blocks.append(("table", name, caption))

    def add_figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.blocks.append(("figure", name, caption))

    def markdown(self, *, figure_dir: str = "figures", heading: str = "##") -> str:
        """Markdown; figures are linked as ``{figure_dir}/{name}.png`` (write them there)."""
        out = [f"{heading} {self.title}"]
        for kind, name, caption in self.blocks:
            if kind == "text":
                out.append(name)
            elif kind == "table":
                out += [caption, _markdown_table(self.tables[name])]
            else:
                out.append(f"![{caption}]({figure_dir}/{name}.png)")
        return "\n\n".join(out) + "\n"

    def html(self, *, heading: str = "h2") -> str:
        """An HTML fragment with every figure embedded as a base64 PNG."""
        out = [f"<{heading}>{html.escape(self.title)}</{heading}>"]
        for kind, name, caption in self.blocks:
            if kind == "text":
                out.append(f"<p>{_inline_html(name)}</p>")
            elif kind == "table":
                frame = self.tables[name].to_html(float_format=lambda v: f"{v:.3f}", na_rep="–", border=0)
                out.append(f"<p>{_inline_html(caption)}</p>\n{frame}")
            else:
                data = base64.b64encode(self.figures[name]).decode("ascii")
                out.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
                )
        return "\n".join(out) + "\n"


def _markdown_table(frame: pd.DataFrame) -> str:
    index_names = [n or "" for n in frame.index.names]
    keys = frame.index if isinstance(frame.index, pd.MultiIndex) else [(k,) for k in frame.index]
    rows = [[*key, *(_plain(v) for v in row)] for key, row in zip(keys, frame.itertuples(index=False))]
    return markdown_table([*index_names, *map(str, frame.columns)], rows)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return value


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{padding:.25em .6em;text-align:right}
thead th{border-bottom:1px solid #888}tbody tr:nth-child(even){background:#f4f4f4}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}code{background:#eee;padding:0 .2em}"""


def render_markdown(sections: Sequence[ReportSection], *, title: str, intro: str = "") -> str:
    parts = [f"# {title}"] + ([intro] if intro else []) + [s.markdown() for s in sections]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def render_html(sections: Sequence[ReportSection], *, title: str, intro: str = "") -> str:
    body = "\n".join(s.html() for s in sections)
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{HTML_STYLE}</style>'
    intro_html = f"<p>{_inline_html(intro)}</p>" if intro else ""
    page = f"<h1>{html.escape(title)}</h1>\n{intro_html}\n{body}"
    return f"<!doctype html>\n<html><head>{head}</head><body>\n{page}</body></html>\n"


def write_report(
    output_dir: str | Path, sections: Sequence[ReportSection], *, title: str, intro: str = ""
) -> dict[str, Path]:
    """Write report.md, report.html, figures/*.png, tables/*.csv and tables/*.json (each atomically)."""
    out = Path(output_dir)
    names = [n for s in sections for n in s.tables]
    if len(names) != len(set(names)):
        raise ValueError(f"table names repeat across sections: {names}")
    for section in sections:
        for name, png in section.figures.items():
            atomic_write_bytes(out / "figures" / f"{name}.png", png)
        for name, frame in section.tables.items():
            atomic_write_text(out / "tables" / f"{name}.csv", frame.to_csv())
            records = frame.reset_index().to_dict(orient="records")
            atomic_write_json(out / "tables" / f"{name}.json", [{k: _plain(v) for k, v in r.items()} for r in records])
    written = {f"{n}.png" for s in sections for n in s.figures} | {
        f"{n}.{ext}" for s in sections for n in s.tables for ext in ("csv", "json")
    }
    for folder, pattern in (("figures", "*.png"), ("tables", "*.[cj]s*")):  # drop leftovers of earlier reports
        for stale in (out / folder).glob(pattern):
            if stale.name not in written:
                stale.unlink()
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["markdown"], render_markdown(sections, title=title, intro=intro))
    atomic_write_text(paths["html"], render_html(sections, title=title, intro=intro))
    return paths


# ---------------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A .jsonl/.json/.csv/.parquet file as a DataFrame (one row per line/record)."""
    from prefgame.data.load import check_json_file, check_text_file

    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {p} (give a .jsonl, .json, .csv or .parquet file)")
    suffix = p.suffix.lower()
    readers = {
        ".jsonl": lambda: pd.read_json(p, lines=True, dtype=False),
        ".json": lambda: pd.read_json(p, dtype=False),
        ".csv": lambda: pd.read_csv(p),
        ".parquet": lambda: pd.read_parquet(p),
    }
    if suffix not in readers:
        raise DataError(f"{p}: unknown file type '{suffix}' (use .jsonl, .json, .csv or .parquet)")
    if suffix != ".parquet":
        check_text_file(p, str(p), header=suffix == ".csv")
    if suffix in (".json", ".jsonl"):
        check_json_file(p, str(p))  # malformed lines, with their numbers
    try:
        return readers[suffix]()
    except (ValueError, OSError, ImportError) as exc:  # pandas' parser errors are ValueErrors
        reason = " ".join(str(exc).split())[:160]
        raise DataError(f"{p}: could not read ({type(exc).__name__}: {reason})") from None


LengthUnit = Literal["words", "characters"]


def word_count(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(str(t).split()) for t in texts], dtype=float)


def char_count(texts: Sequence[str]) -> np.ndarray:
    """Characters (Unicode code points), as AlpacaEval counts an output's length (``str.len()``)."""
    return np.array([len(str(t)) for t in texts], dtype=float)


def pair_lengths(frame: pd.DataFrame, unit: LengthUnit | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(len_a, len_b). Without ``unit``: the ``len_a``/``len_b`` columns, else word counts of
    ``response_a``/``response_b``. With ``unit``: the responses counted in that unit when the table has them,
    else the ``len_a``/``len_b`` columns as they are (see :func:`length_unit_label`)."""
    texts = {"response_a", "response_b"} <= set(frame.columns)
    if unit is not None and texts:
        count = char_count if unit == "characters" else word_count
        return count(frame["response_a"]), count(frame["response_b"])
    if {"len_a", "len_b"} <= set(frame.columns):
        return frame["len_a"].to_numpy(dtype=float), frame["len_b"].to_numpy(dtype=float)
    if texts:
        return word_count(frame["response_a"]), word_count(frame["response_b"])
    return None


def length_unit_label(frame: pd.DataFrame, unit: LengthUnit) -> str:
    """The unit :func:`pair_lengths` measured ``frame``'s lengths in, for captions."""
    if {"response_a", "response_b"} <= set(frame.columns):
        return unit
    return "the units of the len_a/len_b columns"


def label_sources(labels: pd.DataFrame) -> list[str]:
    """Numeric columns that are label sources (not pair columns, not ``:swapped``/``:first`` companions)."""
    out = []
    for col in labels.columns:
        if col in PAIR_COLUMNS or str(col).endswith((SWAPPED, FIRST)):
            continue
        if pd.api.types.is_numeric_dtype(labels[col]) and not pd.api.types.is_bool_dtype(labels[col]):
            out.append(str(col))
    return out


# ---------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------


def agreement_section(
    labels: pd.DataFrame,
    *,
    sources: Sequence[str] | None = None,
    reference: str | None = None,
    models: Sequence[str] = (),
    subset_column: str = "subset",
    sections: Mapping[str, Sequence[str]] | None = None,
    z: float = 3.0,
    min_logodds: float = 0.25,
    title: str = "Agreement between label sources",
) -> ReportSection:
    """Agreement tables, per-source judge diagnostics and preference-model accuracy.

    - every pair of ``sources`` (default: :func:`label_sources`): agreement with and without ties,
      Cohen's kappa and counts (:func:`~evaluation.agreement.agreement_matrix`);
    - per source: tie rate, first-slot win rate, longer-response win rate, position consistency
      (when ``s:swapped`` exists) and the bias regression of :func:`~evaluation.bias.judge_bias`
      against ``reference``. A bias is flagged when its log-odds is at least ``min_logodds`` in size
      and ``z`` standard errors from zero;
    - per model in ``models`` and every other source: accuracy overall, per subset (``subset_column``)
      and per section (``sections``: section -> subsets, pooled).
    """
    sources = list(sources) if sources is not None else label_sources(labels)
    missing = [s for s in [*sources, *models, *([reference] if reference else [])] if s not in labels.columns]
    if missing:
        raise DataError(f"labels have no column(s) {missing}; label sources are {label_sources(labels)}")
    if len(sources) < 2:
        raise DataError(f"agreement needs at least two label sources, got {sources}")
    section = ReportSection(title)
    n = len(labels)
    section.text(
        f"{n} pairs, {len(sources)} label sources. A label is P(a ≻ b): a verdict is a win above ½, a tie at "
        "exactly ½, a loss below. *With ties* compares the three verdicts; *without ties* drops a pair when "
        "either side is a tie. Cohen's kappa = (p_o − p_e)/(1 − p_e) over the verdict categories. " + MT_BENCH_REFERENCE
    )
    matrices = agreement_matrix(labels[sources])
    names = {
        "agreement_with_ties": ("agreement_with_ties", "Agreement with ties"),
        "agreement_without_ties": ("agreement_without_ties", "Agreement without ties"),
        "kappa": ("kappa", "Cohen's kappa"),
        "counts": ("pair_counts", "Pairs labeled by both"),
    }
    for key, (name, caption) in names.items():
        section.add_table(name, _named(matrices[key], "source"), f"**{caption}**:")
    section.add_figure(
        "agreement_heatmap",
        plots.heatmap_png(matrices["agreement_without_ties"], "Agreement without ties", vmin=0.0, vmax=1.0),
        "Agreement without ties between every pair of sources.",
    )
    judges = judge_table(labels, sources, reference=reference, z=z, min_logodds=min_logodds)
    section.add_table("judges", judges, _judges_caption(reference, z, min_logodds))
    if judges["position_se"].notna().any() or judges["length_se"].notna().any():
        shown = judges[judges["position_se"].notna() | judges["length_se"].notna()]
        section.add_figure(
            "length_bias",
            plots.bias_png(shown, f"Position and length bias (± {z:g} SE)", z=z),
            f"Position and length bias of each source in log-odds, ± {z:g} standard errors"
            + (f", beyond what `{reference}` explains." if reference else "."),
        )
    section.metrics["flagged"] = {
        "position_bias": [s for s in judges.index if judges.loc[s, "position_bias"] == "yes"],
        "length_bias": [s for s in judges.index if judges.loc[s, "length_bias"] == "yes"],
    }
    if models:
        overall, by_subset = model_accuracy(labels, models, sources, subset_column, sections)
        section.add_table(
            "model_accuracy",
            overall,
            "**Preference-model accuracy** against each source (pairs the source calls a tie are left out; "
            "a prediction of exactly ½ counts ½):",
        )
        against = reference if reference and reference not in models else None
        wide = by_subset["accuracy"].unstack(["model", "against"])
        if against is not None:  # one column per model: its accuracy against the reference
            wide = wide.xs(against, axis=1, level="against")
        wide.columns = [" vs ".join(c) if isinstance(c, tuple) else f"{c} vs {against}" for c in wide.columns]
        section.add_table(
            "model_accuracy_by_subset",
            wide,
            "Accuracy per subset (counts in the CSV/JSON of `model_accuracy_by_subset_long`):",
        )
        section.tables["model_accuracy_by_subset_long"] = by_subset
    return section


def _named(frame: pd.DataFrame, index_name: str) -> pd.DataFrame:
    frame = frame.copy()
    frame.index.name = index_name
    return frame


def _judges_caption(reference: str | None, z: float, min_logodds: float) -> str:
    against = f"against `{reference}`" if reference else "without a reference (length bias = any preference for length)"
    return (
        "**Per source**: tie rate; first-slot win rate (mean label, a shown first); longer-response win rate "
        "(ties ½); position consistency (both orders name the same winner) and the inconsistent shares favouring "
        "the first / second slot, when the source labeled both orders; and the bias regression "
        f"P(first wins) = σ(γ + α·logit(ref) + φ·Δwords/s) {against}: γ = position_logodds, "
        f"φ = length_logodds, α = reference_coef, cluster-robust SEs. Flagged: |log-odds| ≥ {min_logodds:g} and "
        f"|z| ≥ {z:g}."
    )


def judge_table(
    labels: pd.DataFrame,
    sources: Sequence[str],
    *,
    reference: str | None = None,
    z: float = 3.0,
    min_logodds: float = 0.25,
) -> pd.DataFrame:
    """One row per source with the diagnostics listed in :func:`agreement_section`."""
    lengths = pair_lengths(labels)
    ref = labels[reference].to_numpy(dtype=float) if reference else None
    rows = {}
    for s in sources:
        first = labels[s + FIRST] if s + FIRST in labels.columns else labels[s]
        first = first.to_numpy(dtype=float)
        label = labels[s].to_numpy(dtype=float)
        swapped = labels[s + SWAPPED].to_numpy(dtype=float) if s + SWAPPED in labels.columns else None
        row: dict[str, Any] = {
            "n": int(np.isfinite(label).sum()),
            "tie_rate": float(np.mean(label[np.isfinite(label)] == 0.5)) if np.isfinite(label).any() else np.nan,
            "first_slot_rate": float(np.nanmean(first)) if np.isfinite(first).any() else np.nan,
        }
        row["longer_wins"] = longer_response_win_rate(label, *lengths) if lengths is not None else np.nan
        pc = position_consistency(first, swapped) if swapped is not None else {}
        for key in ("consistency", "biased_first", "biased_second"):
            row[key] = pc.get(key, np.nan)
        row.update(_bias_row(first, swapped, lengths, None if s == reference else ref, skip=s == reference))
        for name in ("position", "length"):
            effect, se = row[f"{name}_logodds"], row[f"{name}_se"]
            zval = effect / se if se > 0 else np.nan  # NaN compares False: no SE, no flag
            if s == reference or not np.isfinite(zval):
                row[f"{name}_bias"] = "–"
            else:
                row[f"{name}_bias"] = "yes" if abs(effect) >= min_logodds and abs(zval) >= z else "no"
        rows[s] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "source"
    return out


def _bias_row(first, swapped, lengths, ref, *, skip: bool) -> dict[str, float]:
    keys = ("position_logodds", "position_se", "length_logodds", "length_se", "reference_coef")
    if skip or lengths is None:
        return dict.fromkeys(keys, np.nan)
    fit = judge_bias(first, *lengths, reference=ref, labels_swapped=swapped)
    return {k: fit[k] for k in keys}


def model_accuracy(
    labels: pd.DataFrame,
    models: Sequence[str],
    sources: Sequence[str],
    subset_column: str = "subset",
    sections: Mapping[str, Sequence[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(overall accuracy of each model against each other source, accuracy per model, source and subset)."""
    subsets = labels[subset_column].astype(str) if subset_column in labels.columns else pd.Series("all", labels.index)
    overall, per_subset = [], []
    for m in models:
        for r in sources:
            if r == m:
                continue
            both = labels[m].notna() & labels[r].notna()
            if not both.any():
                continue
            known = set(subsets[both])
            sec = {k: [v for v in vs if v in known] for k, vs in sections.items()} if sections else None
            acc = accuracy_by_subset(labels.loc[both, m], labels.loc[both, r], subsets[both], sections=sec)
            section_mean = np.nan if acc.section_mean is None else acc.section_mean
            overall.append(
                {"model": m, "against": r, "accuracy": acc.overall, "n": acc.n, "section_mean": section_mean}
            )
            for subset, srow in acc.subsets.iterrows():
                per_subset.append(
                    {"model": m, "against": r, "subset": subset, "accuracy": srow["accuracy"], "n": int(srow["n"])}
                )
    return (
        pd.DataFrame(overall).set_index(["model", "against"]),
        pd.DataFrame(per_subset).set_index(["model", "against", "subset"]),
    )


# ---------------------------------------------------------------------------------------------------
# Win rates
# ---------------------------------------------------------------------------------------------------


def winrate_section(
    battles: pd.DataFrame,
    *,
    baseline: str | None = None,
    length_controlled: bool = True,
    length_unit: LengthUnit = "words",
    n_bootstrap: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    title: str = "Win rates and ratings",
) -> ReportSection:
    """Win rate of every model against ``baseline`` (direct battles: mean ± SE, bootstrap CI, ties ½, and
    the length-controlled win rate when lengths are known: :data:`LC_DEFINITION`, on lengths in
    ``length_unit``), BT ratings with bootstrap CIs converted to win rates against ``baseline``, and the
    pairwise win-rate matrix, with their figures."""
    outcomes = battle_outcomes(battles)
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    if baseline is not None and baseline not in models:
        raise DataError(f"baseline '{baseline}' fought no battle; models are {models}")
    section = ReportSection(title)
    section.text(
        f"{len(battles)} battles between {len(models)} models"
        + (f"; baseline `{baseline}`" if baseline else "")
        + ". An outcome is P(model ≻ opponent) with ties counted ½; intervals are "
        f"{ci:.0%} bootstrap percentile intervals ({n_bootstrap} resamples, seed {seed})."
    )
    if baseline is not None:
        direct = direct_win_rates(battles, outcomes, baseline, length_controlled, n_bootstrap, ci, seed, length_unit)
        caption = f"**Win rate against `{baseline}`** from direct battles (SE = sample s.d./√n)."
        if "lc_win_rate" in direct.columns:
            unit = length_unit_label(battles, length_unit)
            caption += (
                f" **LC win rate**: {LC_DEFINITION}; Δ in {unit}. `mean_len_diff`: mean length difference in {unit}."
            )
            section.metrics["lc_definition"] = {"glm": "length_controlled_minimal, unpenalized", "length_unit": unit}
        section.add_table("winrate_vs_baseline", direct, caption)
        section.metrics["win_rate_vs_baseline"] = {m: _plain(direct.loc[m, "win_rate"]) for m in direct.index}
    ratings = bt_ratings(battles, baseline=baseline, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    ratings.index.name = "model"
    section.add_table(
        "ratings",
        ratings,
        "**Bradley–Terry ratings** (maximum likelihood, Elo scale: 400 points = 10:1 odds"
        + (f", `{baseline}` = 1000" if baseline else ", mean 1000")
        + ") with bootstrap CIs; `win_rate_vs_baseline` = σ((R − R_baseline)·ln 10/400).",
    )
    section.metrics["ratings"] = {m: _plain(ratings.loc[m, "rating"]) for m in ratings.index}
    matrix = _named(win_rate_matrix(battles, models=list(ratings.index)), "model")
    section.add_table("winrate_matrix", matrix, "**Pairwise win rates** (row beats column; NaN: never met):")
    section.add_figure(
        "winrate_matrix",
        plots.heatmap_png(matrix, "P(row ≻ column)", colorbar_label="win rate"),
        "Pairwise win-rate matrix, models ordered by rating.",
    )
    section.add_figure(
        "ratings",
        plots.intervals_png(
            ratings,
            "Bradley–Terry ratings",
            value="rating",
            low="ci_low",
            high="ci_high",
            xlabel="rating (Elo scale)",
            reference=ratings.attrs["init_rating"] if baseline else None,
        ),
        f"Ratings with {ci:.0%} bootstrap intervals.",
    )
    return section


def direct_win_rates(
    battles: pd.DataFrame,
    outcomes: np.ndarray,
    baseline: str,
    length_controlled: bool,
    n_bootstrap: int,
    ci: float,
    seed: int,
    length_unit: LengthUnit = "words",
) -> pd.DataFrame:
    """One row per model that met ``baseline``: raw win rate and, with lengths, the LC win rate."""
    a, b = battles["model_a"].to_numpy(), battles["model_b"].to_numpy()
    lengths = pair_lengths(battles, length_unit) if length_controlled else None
    rows = {}
    for m in sorted((set(a) | set(b)) - {baseline}):
        as_a, as_b = (a == m) & (b == baseline), (a == baseline) & (b == m)
        if not (as_a | as_b).any():
            continue
        o = np.concatenate([outcomes[as_a], 1.0 - outcomes[as_b]])
        wr = win_rate(o, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
        row = {
            "win_rate": wr.mean,
            "se": wr.standard_error,
            "ci_low": wr.ci_low,
            "ci_high": wr.ci_high,
            "n": wr.n,
            "wins": wr.n_wins,
            "ties": wr.n_ties,
            "losses": wr.n_losses,
        }
        if lengths is not None:
            len_m = np.concatenate([lengths[0][as_a], lengths[1][as_b]])
            len_base = np.concatenate([lengths[1][as_a], lengths[0][as_b]])
            lc = length_controlled_win_rate(o, len_m, len_base, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
            row.update(
                lc_win_rate=lc.lc_win_rate,
                lc_ci_low=lc.ci_low,
                lc_ci_high=lc.ci_high,
                mean_len_diff=float(np.mean(len_m - len_base)),
            )
        rows[m] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "model"
    return out


def policy_battles(
    samples: pd.DataFrame,
    oracle,
    *,
    pairs: Literal["all", "baseline"] = "all",
    baseline: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Battles between generators judged by ``oracle`` (any :class:`~prefgame.oracle.PreferenceOracle`).

    ``samples`` has ``prompt`` (and optionally ``prompt_messages``), ``output`` and ``generator`` (the
    jsonl of ``prefgame generate``). Two generators meet on every prompt both answered: their k-th
    outputs for that prompt are paired.
    ``pairs="all"`` pits every two generators, ``"baseline"`` every generator against ``baseline``.
    Which one is shown first (model_a) is drawn at random per battle (``seed``). A judge with
    ``judge_pairs`` (the LLM judge) keeps the pairs it judged and drops failures; their count is in
    ``.attrs["failed"]``. Returns the battles table with ``outcome`` = P(model_a ≻ model_b).
    """
    for col in ("prompt", "output", "generator"):
        if col not in samples.columns:
            raise DataError(f"samples need a '{col}' column; they have {list(samples.columns)}")
    generators = sorted(samples["generator"].astype(str).unique())
    if pairs == "baseline":
        if baseline not in generators:
            raise DataError(f"baseline '{baseline}' is not a generator; generators are {generators}")
        matchups = [(g, baseline) for g in generators if g != baseline]
    else:
        matchups = list(combinations(generators, 2))
    if not matchups:
        raise DataError(f"need at least two generators to compare; got {generators}")
    by_gen = {g: _outputs_by_prompt(samples[samples["generator"].astype(str) == g]) for g in generators}
    rng = np.random.default_rng(seed)
    rows, asked = [], []  # asked: the prompts as the judge reads them (a table keeps only their text)
    for g, h in matchups:
        for prompt, outs_g in by_gen[g].items():
            for out_g, out_h in zip(outs_g, by_gen[h].get(prompt, [])):
                first_g = bool(rng.random() < 0.5)
                asked.append(prompt)
                rows.append(
                    {
                        "prompt": prompt,
                        "model_a": g if first_g else h,
                        "model_b": h if first_g else g,
                        "response_a": out_g if first_g else out_h,
                        "response_b": out_h if first_g else out_g,
                    }
                )
    if not rows:
        raise DataError("no two generators answered a common prompt: generate from the same prompts")
    battles = pd.DataFrame(rows)
    battles["len_a"], battles["len_b"] = word_count(battles["response_a"]), word_count(battles["response_b"])
    prompts, ra, rb = asked, list(battles["response_a"]), list(battles["response_b"])
    failed = 0
    if hasattr(oracle, "judge_pairs"):
        from prefgame.judges.llm import require_some_judged

        records = oracle.judge_pairs(prompts, ra, rb)
        require_some_judged(records)
        ok = np.array([r.status == "ok" for r in records])
        battles["outcome"] = [r.preference if r.status == "ok" else np.nan for r in records]
        failed = int((~ok).sum())
        battles = battles[ok].reset_index(drop=True)
    else:
        battles["outcome"] = oracle.preference(prompts, ra, rb).double().cpu().numpy()
    battles.attrs["failed"] = failed
    battles.attrs["judge"] = getattr(oracle, "name", type(oracle).__name__)
    return battles


def _outputs_by_prompt(frame: pd.DataFrame) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for prompt, output in zip(_sample_prompts(frame), frame["output"].astype(str)):
        out.setdefault(prompt, []).append(output)
    return out


def _sample_prompts(frame: pd.DataFrame) -> list[str]:
    """The prompt of each sample: its ``prompt_messages`` (written by ``prefgame generate``) as a prompt
    (a multi-turn one is a :class:`~prefgame.data.chat.Conversation`, equal to its ``prompt`` text, so
    that a preference-model judge reads the whole conversation), else the ``prompt`` text."""
    from prefgame.data.chat import as_prompt

    texts = frame["prompt"].astype(str)
    if "prompt_messages" not in frame.columns:
        return list(texts)
    return [
        as_prompt(list(m)) if isinstance(m, (list, tuple, np.ndarray)) and len(m) else text
        for text, m in zip(texts, frame["prompt_messages"])
    ]
