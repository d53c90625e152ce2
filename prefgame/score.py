"""``prefgame score``: P(chosen ≻ rejected) of a preference model (a ``prefgame train-pm`` output or a
sequence-classification reward model) for every pair of a file, and the preference metrics of those
pairs (with the arena's gold figures on arena pairs). A model with a scalar reward adds each side's
reward to the rows, and its probability is σ(r_chosen − r_rejected)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.errors import PrefgameError
from prefgame.run import atomic_write_json, write_jsonl


@dataclass
class ScoreConfig:
    model: str = param(
        "",
        "a preference model: the train-pm output_dir (or its model/ folder), or a sequence-classification "
        "reward model (folder or hub name, one output)",
    )
    data: str = param("", "pairs to score: file or hub name (any pairs format)")
    split: str = param("train", "split of data")
    out: str = param("", "output jsonl: every input row with 'probability' = P(chosen ≻ rejected) added", output="file")
    batch_size: int = param(64, "pairs (a sequence classifier: sequences) per forward pass", ge=1)
    arena_metrics: bool = param(False, "the data are arena pairs: add gold-preference metrics")
    arena: ArenaConfig = param(ArenaConfig, "the world for arena metrics")
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")


def score(cfg: ScoreConfig) -> dict:
    """Score a pairs file; write rows + probabilities to ``cfg.out`` and metrics next to it."""
    from prefgame.data.columns import load_pairs
    from prefgame.data.load import iter_rows, load_raw
    from prefgame.models.load import load_model
    from prefgame.models.metrics import arena_metrics, preference_metrics

    for key in ("model", "data", "out"):
        if not getattr(cfg, key):
            raise PrefgameError(f"score needs {key}=...: e.g. model=runs/pm-gpm data=pairs.jsonl out=scored.jsonl")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    model = load_model(cfg.model, batch_size=cfg.batch_size)
    pairs = load_pairs(cfg.data, cfg.split, skip_invalid=False)
    raw = list(iter_rows(load_raw(cfg.data, split=cfg.split)))
    if model.has_reward:  # both sides in one call: each distinct (prompt, response) is scored once
        n = len(pairs.prompts)
        rewards = model.reward([*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected])
        probs = torch.sigmoid(rewards[:n].double() - rewards[n:].double())
        extra = [{"reward_chosen": float(c), "reward_rejected": float(r)} for c, r in zip(rewards[:n], rewards[n:])]
    else:
        probs = model.preference(pairs.prompts, pairs.chosen, pairs.rejected)
        extra = [{}] * len(probs)
    rows = [{**row, "probability": float(p), **e} for row, p, e in zip(raw, probs, extra)]
    write_jsonl(cfg.out, rows)
    metrics: dict[str, Any] = {
        "model": cfg.model,
        "data": cfg.data,
        **preference_metrics(probs, pairs.labels, subsets=pairs.subsets),
    }
    if cfg.arena_metrics:
        metrics["arena"] = arena_metrics(cfg.arena.build(), pairs.prompts, pairs.chosen, pairs.rejected, probs)
    out = Path(cfg.out)
    atomic_write_json(out.with_name(out.stem + ".metrics.json"), metrics)
    return metrics
