"""MT-Bench agreement: its pairwise judgment format and the agreement tables of Zheng et al. (2023).

File (FastChat's ``llm_judge`` format, e.g. ``human_judgments.json`` and ``gpt4_pair_judgments.json``; a JSON
list, JSON lines, CSV or parquet): one vote per row with ``question_id``, ``turn`` (1 or 2), ``model_a``,
``model_b``, ``winner`` (``model_a``, ``model_b``, ``tie``, ``tie (bothbad)``; ``inconsistent``, a judge
whose two orders disagree, is a tie as the paper counts it) and ``judge``.

Judges are grouped as FastChat's ``compute_agreement.py`` groups them: a judge ``["gpt-4", "pair-…"]`` is
``gpt4-pair``, ``expert_*`` is ``human``, ``author_*`` is ``author``; any other judge is its own group (a
list joined with ``/``).

Agreement between two groups on one turn, as ``compute_agreement.py`` computes it: votes are keyed by
(question, the two models in sorted order, the winner mirrored to match); on every key both groups voted
on, every vote of the first group is paired with every vote of the second (two votes of the same group:
every two of its votes, each pair once). A pair agrees when both name the same winner, the two kinds of
tie being equal. *With ties* counts every pair; *without ties* drops a pair in which either vote is a
tie. No majority is taken: each vote counts. (FastChat requires exactly one GPT-4 vote per key; with one
vote per key the pairing above is the same.) Cohen's kappa is over the same pairs with categories
model_a / model_b / tie; for pairs within one group each pair enters in both orders, so the kappa does
not depend on which vote is called first.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.agreement import cohen_kappa
from evaluation.report import ReportSection, read_table
from prefgame.errors import DataError

WINNERS = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie", "inconsistent": "tie"}
MIRROR = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
FIELDS = ("question_id", "turn", "model_a", "model_b", "winner", "judge")
DEFAULT_PAIRS = (("gpt4-pair", "human"), ("human", "human"))
REFERENCE = (
    "Published (MT-Bench paper, Table 2, turn 1): GPT-4 (pairwise) vs humans 66% with ties and 85% without; "
    "humans among themselves 63% and 81%."
)


def judge_group(judge) -> str:
    """The group of a judge: FastChat's names (gpt4-pair, human, author), else the judge's name."""
    if isinstance(judge, (list, tuple, np.ndarray)):
        parts = [str(p) for p in judge]
        if len(parts) >= 2 and parts[0] == "gpt-4" and parts[1].startswith("pair"):
            return "gpt4-pair"
        return "/".join(parts)
    name = str(judge)
    if name.startswith("expert"):
        return "human"
    if name.startswith("author"):
        return "author"
    return name


def read_votes(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every vote of the judgment files, keyed: ``question_id``, ``turn``, ``model_1`` < ``model_2`` (sorted),
    ``vote`` (model_1 / model_2 / tie, from that order), ``group`` and ``judge``."""
    frames = []
    for path in paths:
        frame = read_table(path)
        missing = [f for f in FIELDS if f not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing field(s) {missing} of MT-Bench's pairwise judgment format")
        unknown = sorted(set(frame["winner"].astype(str)) - set(WINNERS))
        if unknown:
            raise DataError(f"{path}: unknown winner {unknown[0]!r}; expected one of {sorted(WINNERS)}")
        turn = pd.to_numeric(frame["turn"], errors="coerce")
        if turn.isna().any() or not turn.isin([1, 2]).all():
            raise DataError(f"{path}: 'turn' must be 1 or 2")
        winner = frame["winner"].astype(str).map(WINNERS)
        a, b = frame["model_a"].astype(str), frame["model_b"].astype(str)
        swap = (a > b).to_numpy()
        vote = np.where(swap, winner.map(MIRROR), winner)
        frames.append(
            pd.DataFrame(
                {
                    "question_id": frame["question_id"].astype(str),
                    "turn": turn.astype(int),
                    "model_1": np.where(swap, b, a),
                    "model_2": np.where(swap, a, b),
                    "vote": pd.Series(vote).map({"model_a": "model_1", "model_b": "model_2", "tie": "tie"}).to_numpy(),
                    "group": frame["judge"].map(judge_group),
                    "judge": frame["judge"].map(
                        lambda j: "/".join(map(str, j)) if isinstance(j, (list, tuple, np.ndarray)) else str(j)
                    ),
                }
            )
        )
    if not frames:
        raise DataError("no MT-Bench judgment files given")
    return pd.concat(frames, ignore_index=True)


def vote_pairs(votes: pd.DataFrame, first: str, second: str, turn: int | None = None) -> list[tuple[str, str]]:
    """The (first-group vote, second-group vote) pairs compared on the keys both groups voted on."""
    sel = votes if turn is None else votes[votes["turn"] == turn]
    pairs: list[tuple[str, str]] = []
    for _, g in sel.groupby(["turn", "question_id", "model_1", "model_2"], sort=True):
        v1 = g.loc[g["group"] == first, "vote"].tolist()
        if first == second:
            pairs += list(combinations(v1, 2))
            continue
        v2 = g.loc[g["group"] == second, "vote"].tolist()
        pairs += [(x, y) for x in v1 for y in v2]
    return pairs


def agreement_counts(pairs: Sequence[tuple[str, str]], *, ties: bool, symmetric: bool) -> dict[str, float]:
    """agree, total, their ratio and Cohen's kappa over ``pairs`` (without ties: pairs with a tie dropped)."""
    kept = [(x, y) for x, y in pairs if ties or (x != "tie" and y != "tie")]
    total = len(kept)
    agree = sum(x == y for x, y in kept)
    xs, ys = [x for x, _ in kept], [y for _, y in kept]
    if symmetric:
        xs, ys = xs + ys, ys + xs
    return {
        "agree": agree,
        "total": total,
        "agreement": agree / total if total else float("nan"),
        "kappa": cohen_kappa(np.array(xs, dtype=object), np.array(ys, dtype=object)) if total else float("nan"),
    }


def agreement_table(
    votes: pd.DataFrame, pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS, turns: Sequence[int] = (1, 2)
) -> pd.DataFrame:
    """One row per (first group, second group, turn, setup): ``agree``, ``total``, ``agreement``, ``kappa``.
    Turn ``all`` pools both turns (prefgame's addition; the paper reports turns separately)."""
    groups = sorted(set(votes["group"]))
    rows = []
    for first, second in pairs:
        for g in (first, second):
            if g not in groups:
                raise DataError(f"no votes by judge group '{g}'; the files hold {groups}")
        for turn in [*turns, "all"]:
            p = vote_pairs(votes, first, second, None if turn == "all" else int(turn))
            for setup, ties in (("with ties", True), ("without ties", False)):
                counts = agreement_counts(p, ties=ties, symmetric=first == second)
                rows.append({"judges": f"{first} vs {second}", "turn": str(turn), "setup": setup, **counts})
    return pd.DataFrame(rows).set_index(["judges", "turn", "setup"])


def mtbench_section(votes: pd.DataFrame, pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS) -> ReportSection:
    table = agreement_table(votes, pairs)
    section = ReportSection("MT-Bench agreement")
    counts = votes.groupby("group").size()
    section.text(
        f"{len(votes)} pairwise votes ("
        + ", ".join(f"{g}: {n}" for g, n in counts.items())
        + "). Agreement as FastChat's `compute_agreement.py` computes it for the MT-Bench paper: on every "
        "question, model pair and turn both judges voted on, each vote of one is compared with each vote of the "
        "other (no majority vote); the two kinds of tie are equal; *without ties* drops a pair in which either "
        "vote is a tie. " + REFERENCE
    )
    section.add_table(
        "mtbench_agreement", table, "**Agreement** per turn (`all`: both turns pooled) and Cohen's kappa:"
    )
    section.metrics["mtbench_agreement"] = {
        f"{j} / turn {t} / {s}": float(row["agreement"]) for (j, t, s), row in table.iterrows()
    }
    return section


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """'first:second' strings (e.g. ``gpt4-pair:human``) as pairs of judge groups."""
    out = []
    for spec in specs:
        first, sep, second = str(spec).partition(":")
        if not sep or not first or not second:
            raise DataError(f"judge pair {spec!r} must be 'first:second', e.g. gpt4-pair:human")
        out.append((first, second))
    return out
