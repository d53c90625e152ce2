"""Label tables and evaluation sections on the embedded arena, for ``prefgame quickstart`` and tests.

:func:`arena_label_table` labels pairs of responses with the gold preference, every simulated
annotator (in both orders, so position bias is measurable), a simulated biased LLM-style judge (both
orders judged, an inconsistent pair counted as a tie, like :class:`~prefgame.judges.LLMJudge`) and any
extra oracles (trained preference models, an LLM judge). :func:`arena_evaluation` turns the labels and
per-policy samples into the agreement and win-rate sections with their markdown, HTML and figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.report import (
    FIRST,
    SWAPPED,
    ReportSection,
    agreement_section,
    policy_battles,
    winrate_section,
    word_count,
)
from prefgame.arena.world import AnnotatorSpec, Arena, GoldOracle, prompt_type_name
from prefgame.judges.llm import require_some_judged
from prefgame.judges.verdicts import VERDICT_VALUE, combine_orders
from prefgame.oracle import PreferenceOracle

# A judge with the two classic LLM-judge biases, planted at known strengths: a first-slot bonus of 0.7
# log-odds and 0.12 log-odds per extra word, on a slightly blurred gold preference, with a tie band.
BIASED_JUDGE = AnnotatorSpec("biased-judge", temperature=1.2, position_bias=0.7, length_bias=0.12, tie_band=0.05)


def arena_label_table(
    arena: Arena,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    seed: int = 0,
    annotators: Sequence[AnnotatorSpec] | None = None,
    judges: Sequence[AnnotatorSpec] = (BIASED_JUDGE,),
    oracles: Mapping[str, PreferenceOracle] | None = None,
) -> pd.DataFrame:
    """The labels table (see :mod:`evaluation.report`) of arena pairs.

    Columns: ``prompt``, ``response_a``, ``response_b``, ``subset`` (prompt type), ``len_a``/``len_b``
    (words), ``gold`` = P*(a ≻ b); per annotator (default: the arena's) its label with a shown first and
    ``<name>:swapped`` with b shown first; per judge its both-orders label ``<name>`` with ``<name>:first``
    and ``<name>:swapped``; per extra oracle its P(a ≻ b) (and, for an LLM judge, its two single-order
    verdicts). Deterministic in ``seed``.
    """
    prompts, a, b = list(prompts), list(responses_a), list(responses_b)
    rng = np.random.default_rng(seed)
    types, _ = arena.classify(prompts, a)
    table = pd.DataFrame({"prompt": prompts, "response_a": a, "response_b": b})
    table["subset"] = [prompt_type_name(int(t)) for t in types]
    table["len_a"], table["len_b"] = word_count(a), word_count(b)
    table["gold"] = GoldOracle(arena).preference(prompts, a, b).numpy()
    for spec in arena.spec.annotators if annotators is None else annotators:
        table[spec.name] = arena.annotate(spec, prompts, a, b, rng)
        table[spec.name + SWAPPED] = arena.annotate(spec, prompts, b, a, rng)
    for spec in judges:
        first = arena.annotate(spec, prompts, a, b, rng)
        swapped = arena.annotate(spec, prompts, b, a, rng)
        table[spec.name] = [combine_orders(_verdict(f), _verdict(s))[0] for f, s in zip(first, swapped)]
        table[spec.name + FIRST], table[spec.name + SWAPPED] = first, swapped
    for name, oracle in (oracles or {}).items():
        if hasattr(oracle, "judge_pairs"):  # an LLM judge: keep its single-order verdicts too
            records = oracle.judge_pairs(prompts, a, b)
            require_some_judged(records)
            table[name] = [r.preference if r.status == "ok" else np.nan for r in records]
            table[name + FIRST] = [_single(r.ab) if r.status == "ok" else np.nan for r in records]
            table[name + SWAPPED] = [_single(r.ba) if r.status == "ok" else np.nan for r in records]
        else:
            table[name] = oracle.preference(prompts, a, b).double().cpu().numpy()
    return table


def _verdict(label: float) -> str:
    return "A" if label > 0.5 else ("B" if label < 0.5 else "C")


def _single(judgment) -> float:
    return judgment.p_first if judgment.p_first is not None else VERDICT_VALUE[judgment.verdict]


@dataclass
class ArenaEvaluation:
    """What :func:`arena_evaluation` returns: the sections and their rendered forms."""

    sections: list[ReportSection]
    markdown: str  # figures linked as figures/<name>.png (write ``figures`` there)
    html: str  # self-contained fragment, figures embedded
    figures: dict[str, bytes]  # name -> PNG
    metrics: dict  # headline figures: flagged biases, win rates, ratings


def arena_evaluation(
    labels: pd.DataFrame | None = None,
    samples: pd.DataFrame | None = None,
    oracle: PreferenceOracle | None = None,
    *,
    baseline: str | None = None,
    models: Sequence[str] = (),
    reference: str = "gold",
    n_bootstrap: int = 100,
    seed: int = 0,
    figure_dir: str = "figures",
) -> ArenaEvaluation:
    """Agreement section from ``labels`` (a table from :func:`arena_label_table`; ``models`` are the
    preference-model columns scored for accuracy) and win-rate section from ``samples`` (``prompt``,
    ``output``, ``generator``) judged by ``oracle`` (default: the gold preference of a default
    :class:`Arena`), every generator against every other."""
    sections = []
    if labels is not None:
        sections.append(agreement_section(labels, reference=reference, models=models))
    if samples is not None:
        battles = policy_battles(samples, oracle or GoldOracle(Arena()), pairs="all", seed=seed)
        sections.append(winrate_section(battles, baseline=baseline, n_bootstrap=n_bootstrap, seed=seed))
    figures = {name: png for s in sections for name, png in s.figures.items()}
    metrics = {k: v for s in sections for k, v in s.metrics.items()}
    return ArenaEvaluation(
        sections=sections,
        markdown="\n".join(s.markdown(figure_dir=figure_dir) for s in sections),
        html="\n".join(s.html() for s in sections),
        figures=figures,
        metrics=metrics,
    )
