"""``prefgame arena``: build the world and export its data sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefgame.arena import export
from prefgame.arena.lm import save_tokenizer
from prefgame.arena.world import Arena, ArenaSpec, DemonstratorProbs
from prefgame.config import param
from prefgame.run import RunDir, overwrite_param, run_job, write_jsonl


@dataclass
class ArenaConfig:
    strength: float = param(6.0, "scale of the objective term of the gold preference")
    cycle: float = param(2.5, "strength c of the cyclic (intransitive) style term; 0 gives a Bradley–Terry world")
    seed: int = param(0, "seed of every sampled data set")
    demonstrator_style: list[float] = param(
        [1 / 3, 1 / 3, 1 / 3],
        "style marginal (formal, casual, poetic) of the demonstrations and of the exported pairs' responses; "
        "skewed, as real demonstrators are, it makes the cyclic term decide part of what improves on π0",
    )

    def __post_init__(self) -> None:
        q = self.demonstrator_style
        if len(q) != 3 or min(q) < 0 or abs(sum(q) - 1.0) > 1e-3:
            raise ValueError(f"arena.demonstrator_style must be 3 probabilities summing to 1, got {q}")

    def build(self) -> Arena:
        style = tuple(float(v) / sum(self.demonstrator_style) for v in self.demonstrator_style)
        demonstrator = DemonstratorProbs(style=style)
        return Arena(ArenaSpec(strength=self.strength, cycle=self.cycle, seed=self.seed, demonstrator=demonstrator))


@dataclass
class ArenaJobConfig:
    output_dir: str = param("runs/arena", "where the data sets and the tokenizer are written")
    overwrite: bool = overwrite_param()
    arena: ArenaConfig = param(ArenaConfig, "the world")
    sft_examples: int = param(4000, "SFT demonstrations", ge=0)
    pairs: int = param(4000, "pairs labeled with the gold preference", ge=0)
    minimal_pair_fraction: float = param(0.3, "share of pairs that differ in exactly one feature")
    ratings: int = param(2000, "responses with per-objective ratings", ge=0)
    battles: int = param(2000, "battles between arena systems judged by the annotators", ge=0)
    rankings: int = param(0, "K-way rankings labeled by the gold preference (rankings.jsonl; 0: none)", ge=0)
    rankings_k: int = param(4, "responses per ranked list", ge=2)

    def __post_init__(self) -> None:
        if not 0.0 <= self.minimal_pair_fraction <= 1.0:
            raise ValueError("minimal_pair_fraction must be in [0, 1]")


def export_all(cfg: ArenaJobConfig, out: RunDir) -> dict[str, int]:
    arena = cfg.arena.build()
    rng = np.random.default_rng(cfg.arena.seed)
    sets = {
        "sft.jsonl": export.sft_corpus(arena, cfg.sft_examples, rng),
        "pairs.jsonl": export.labeled_pairs(arena, cfg.pairs, rng, minimal_pair_fraction=cfg.minimal_pair_fraction),
        "ratings.jsonl": export.ratings(arena, cfg.ratings, rng),
        "battles.jsonl": export.battles(arena, cfg.battles, rng),
    }
    if cfg.rankings:  # drawn after the others: their files do not depend on it
        sets["rankings.jsonl"] = export.rankings(arena, cfg.rankings, rng, k=cfg.rankings_k)
    for name, rows in sets.items():
        write_jsonl(out.file(name), rows)
    save_tokenizer(out.file("tokenizer"))
    return {name: len(rows) for name, rows in sets.items()}


def run(cfg: ArenaJobConfig) -> dict:
    return run_job(cfg.output_dir, lambda out, log: _export(cfg, out, log))


def _export(cfg: ArenaJobConfig, out: RunDir, log) -> dict[str, int]:
    out.start(cfg)
    counts = export_all(cfg, out)
    out.write_metrics({"rows": counts})
    log.info(f"arena data written to {out.path}: " + ", ".join(f"{k} ({v} rows)" for k, v in counts.items()))
    return counts
