"""Normalized preference data as aligned columns, what trainers and scorers read: pairs (prompt,
chosen, rejected, soft label, score margin, subset) and per-objective ratings, from any format
:func:`prefgame.data.load_preferences` reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefgame.errors import DataError


@dataclass
class Pairs:
    """Aligned pair columns; label = P(chosen ≻ rejected)."""

    prompts: list[str]
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
    columns = ["prompt", "chosen", "rejected", "label", "score_chosen", "score_rejected", "subset"]
    ds = data.dataset.select_columns(columns)
    cols = ds.to_dict()  # one Arrow → Python conversion (row-wise column access is ~10× slower)
    sc = np.array([np.nan if v is None else v for v in cols["score_chosen"]], dtype=float)
    sr = np.array([np.nan if v is None else v for v in cols["score_rejected"]], dtype=float)
    return Pairs(
        cols["prompt"],
        cols["chosen"],
        cols["rejected"],
        np.asarray(cols["label"], dtype=float),
        np.nan_to_num(sc - sr, nan=0.0),
        cols["subset"],
    )


@dataclass
class Ratings:
    prompts: list[str]
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
    cols = ds.select_columns(["prompt", "response", *names]).to_dict()
    values = np.stack([np.array([np.nan if v is None else v for v in cols[o]], dtype=float) for o in names], axis=1)
    return Ratings(cols["prompt"], cols["response"], values, names)


def split_eval(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = int(round(fraction * len(pairs)))
    return pairs.take(order[n_eval:]), pairs.take(order[:n_eval])
