"""Normalized preference data as aligned columns, what trainers and scorers read: pairs (prompt,
chosen, rejected, soft label, score margin, subset), K-way rankings and per-objective ratings, from any format
:func:`prefgame.data.load_preferences` reads; and prompt lists (:func:`load_prompts`) for the jobs
that generate.

Every prompt here is the whole conversation before the response (``prompt_messages`` of the
normalized data): plain text for one user turn, a :class:`~prefgame.data.chat.Conversation` for more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefgame.data.chat import as_prompt
from prefgame.data.schema import Problem
from prefgame.errors import DataError


@dataclass
class Pairs:
    """Aligned pair columns; label = P(chosen ≻ rejected)."""

    prompts: list[str]  # text, or a Conversation
    chosen: list[str]
    rejected: list[str]
    labels: np.ndarray
    margins: np.ndarray  # score_chosen − score_rejected, 0 where unknown
    subsets: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, idx) -> Pairs:
        idx = list(idx)
        return Pairs(
            [self.prompts[i] for i in idx],
            [self.chosen[i] for i in idx],
            [self.rejected[i] for i in idx],
            self.labels[idx],
            self.margins[idx],
            [self.subsets[i] for i in idx],
        )


def load_pairs(path: str, split: str, *, skip_invalid: bool) -> Pairs:
    from prefgame.data import load_preferences

    data = load_preferences(path, split=split, skip_invalid=skip_invalid)
    if data.kind != "pairs":
        raise DataError(f"{path}: expected preference pairs (prompt/chosen/rejected), got {data.kind} data")
    return _pairs_of(data)


def load_pairs_or_rankings(path: str, split: str, *, skip_invalid: bool) -> Pairs | Rankings:
    """Pairs, or K-way rankings (each list sorted best first), whichever the data at ``path`` hold."""
    from prefgame.data import load_preferences

    data = load_preferences(path, split=split, skip_invalid=skip_invalid)
    if data.kind == "rankings":
        return rankings_of(data)
    if data.kind != "pairs":
        raise DataError(f"{path}: expected preference pairs or K-way rankings, got {data.kind} data")
    return _pairs_of(data)


def _pairs_of(data) -> Pairs:
    columns = ["prompt_messages", "chosen", "rejected", "label", "score_chosen", "score_rejected", "subset"]
    ds = data.dataset.select_columns(columns)
    cols = ds.to_dict()  # one Arrow → Python conversion (row-wise column access is ~10× slower)
    sc = np.array([np.nan if v is None else v for v in cols["score_chosen"]], dtype=float)
    sr = np.array([np.nan if v is None else v for v in cols["score_rejected"]], dtype=float)
    return Pairs(
        [as_prompt(m) for m in cols["prompt_messages"]],
        cols["chosen"],
        cols["rejected"],
        np.asarray(cols["label"], dtype=float),
        np.nan_to_num(sc - sr, nan=0.0),
        cols["subset"],
    )


@dataclass
class Rankings:
    """K-way rankings: for each prompt its responses **sorted best first** and their scores (higher is
    better). Equal scores keep their input order (the Plackett–Luce loss needs a strict order: such ties
    are broken by position; :attr:`tied_pairs` counts them)."""

    prompts: list[str]  # text, or a Conversation
    responses: list[list[str]]  # each best first
    scores: list[np.ndarray]  # each (K,) non-increasing
    subsets: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, idx) -> Rankings:
        idx = list(idx)
        return Rankings(
            [self.prompts[i] for i in idx],
            [self.responses[i] for i in idx],
            [self.scores[i] for i in idx],
            [self.subsets[i] for i in idx],
        )

    @property
    def tied_pairs(self) -> int:
        """Response pairs within a list whose scores are equal (ordered by input position)."""
        return int(sum((s[:, None] == s[None, :]).sum() - len(s) for s in self.scores) // 2)

    def pairs(self, which: str = "all") -> Pairs:
        """The strictly ordered pairs of each list as preference pairs (label 1: chosen scored higher):
        ``all`` every pair i < j with s_i > s_j; ``best_worst`` the first against the last (lists whose
        scores all tie give none)."""
        prompts, chosen, rejected, margins, subsets = [], [], [], [], []
        for x, ys, s, sub in zip(self.prompts, self.responses, self.scores, self.subsets):
            k = len(ys)
            ij = [(0, k - 1)] if which == "best_worst" else [(i, j) for i in range(k) for j in range(i + 1, k)]
            for i, j in ij:
                if s[i] > s[j]:
                    prompts.append(x)
                    chosen.append(ys[i])
                    rejected.append(ys[j])
                    margins.append(s[i] - s[j])
                    subsets.append(sub)
        return Pairs(prompts, chosen, rejected, np.ones(len(prompts)), np.asarray(margins, dtype=float), subsets)


def load_rankings(path: str, split: str, *, skip_invalid: bool) -> Rankings:
    """The K-way rankings of ``path`` (format ``rankings``), each list sorted best first (stable)."""
    from prefgame.data import load_preferences

    data = load_preferences(path, split=split, skip_invalid=skip_invalid)
    if data.kind != "rankings":
        raise DataError(f"{path}: expected K-way rankings (prompt/completions with scores), got {data.kind} data")
    return rankings_of(data)


def rankings_of(data) -> Rankings:
    cols = data.dataset.select_columns(["prompt_messages", "responses", "scores", "subset"]).to_dict()
    responses, scores = [], []
    for ys, ss in zip(cols["responses"], cols["scores"]):
        s = np.asarray(ss, dtype=float)
        order = np.argsort(-s, kind="stable")
        responses.append([ys[i] for i in order])
        scores.append(s[order])
    return Rankings([as_prompt(m) for m in cols["prompt_messages"]], responses, scores, cols["subset"])


@dataclass
class Ratings:
    prompts: list[str]  # text, or a Conversation
    responses: list[str]
    values: np.ndarray  # (n, k), NaN where missing
    objectives: list[str]


def load_ratings(path: str, split: str, objectives: list[str], *, skip_invalid: bool) -> Ratings:
    from prefgame.data import load_preferences

    data = load_preferences(path, split=split, skip_invalid=skip_invalid)
    if data.kind != "ratings":
        raise DataError(f"{path}: expected per-objective ratings (prompt/response/attributes), got {data.kind}")
    ds = data.dataset
    available = [c for c in ds.column_names if c not in ("prompt", "prompt_messages", "response", "subset")]
    names = objectives or available
    missing = [o for o in names if o not in available]
    if missing:
        raise DataError(f"{path}: no rating column(s) {missing} (rating columns: {available})")
    cols = ds.select_columns(["prompt_messages", "response", *names]).to_dict()
    values = np.stack([np.array([np.nan if v is None else v for v in cols[o]], dtype=float) for o in names], axis=1)
    return Ratings([as_prompt(m) for m in cols["prompt_messages"]], cols["response"], values, names)


def split_eval(pairs, fraction: float, seed: int):
    """(train, held-out) parts of ``pairs`` (Pairs or Rankings): a seeded ``fraction`` of rows held out."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = int(round(fraction * len(pairs)))
    return pairs.take(order[n_eval:]), pairs.take(order[:n_eval])


def read_prompts(values: Sequence[Any], field: str, source: str) -> list[str | None]:
    """The prompt of each value of a prompt field (text, an HH transcript or a message list:
    :func:`~prefgame.data.formats.prompt_turns`), None where the value is missing (None, NaN) or
    blank; a value that is no prompt raises DataError naming its row and the field."""
    from prefgame.data.formats import RowError, _missing, prompt_turns

    out: list[str | None] = []
    for row, value in enumerate(values):
        if _missing(value) or (isinstance(value, str) and not value.strip()):
            out.append(None)
            continue
        try:
            out.append(as_prompt(prompt_turns(value, field)))
        except RowError as exc:
            raise DataError(f"{source}: {Problem(source, row, exc.field, exc.reason, exc.detail).describe()}") from None
    return out


def load_prompts(path: str, split: str, field: str) -> list[str]:
    """The distinct prompts of a data set in file order: the ``field`` column's when the data have it
    (:func:`read_prompts`; blank rows are skipped), otherwise the normalized prompts of preference data
    in any supported format (pairs, ratings or battles: the whole conversation before the responses)."""
    from prefgame.data.load import load_preferences, load_raw

    raw = load_raw(path, split=split)
    if field in raw.column_names:
        prompts = [p for p in read_prompts(raw[field], field, path) if p is not None]
    else:
        try:
            data = load_preferences(path, split=split)
        except DataError as exc:
            raise DataError(
                f"{path}: no column '{field}' (columns: {', '.join(raw.column_names)}) and not preference data ({exc})"
            ) from None
        prompts = [as_prompt(m) for m in data.dataset["prompt_messages"]]
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise DataError(f"{path}: no prompts found (column '{field}' is empty)")
    return prompts
