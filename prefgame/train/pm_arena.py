"""BT, GPM and gated preference models on the arena, end to end in a few CPU minutes.

:func:`train_arena_preference_models` is what the quickstart calls. It

1. samples its data from the world: per-objective ratings, training pairs and held-out pairs, every
   pair labeled with the gold soft label P*(chosen ≻ rejected) (noise-free targets; no annotator);
2. trains the **gated** model first, with a new tiny Llama backbone fine-tuned by stage 1 (masked
   rating regression, gradient descent), then its gate on frozen vectors (stage 2, BT loss);
3. trains **BT** and **GPM** heads on that same backbone, frozen: each model is a head on cached
   vectors, so the three differ only in what their heads can represent;
4. returns one table row per model: held-out accuracy, expected accuracy under the gold preference
   (overall and on in-cycle pairs) next to the Bayes-optimal figures, and for the gated model the
   correlation of its gating weights with the true w(x).

Why this backbone: the arena's features must be read from text, and correctness relates the
response's number to the prompt's a + b. A frozen π0 (the SFT policy) does not expose it (a probe on
its vectors is at chance), while a small encoder fine-tuned on the ratings learns it in about a
thousand steps; mean pooling of the token embeddings next to the last layer (``layers=[0, -1]``)
keeps the word identities that style (the cyclic term) and the prompt type need. See
docs/preference_models.md for the measurements.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefgame.arena import export
from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.models.backbone import BackboneConfig
from prefgame.models.model import EnsembleConfig, GatedConfig, GPMConfig, HeadConfig, PMModelConfig
from prefgame.run import RunDir, write_jsonl
from prefgame.train.common import TrainConfig
from prefgame.train.pm import PMConfig, PMDataConfig, PMLossConfig, train_preference_model

log = logging.getLogger("prefgame.pm_arena")


@dataclass
class ArenaPMConfig:
    arena: ArenaConfig = param(ArenaConfig, "the world (its cycle strength decides what BT can reach)")
    seed: int = param(0, "seed of the data and of training")
    train_pairs: int = param(6000, "training pairs (gold soft labels)")
    eval_pairs: int = param(3000, "held-out pairs")
    minimal_pair_fraction: float = param(0.5, "share of pairs that differ in one feature")
    ratings: int = param(6000, "responses with per-objective ratings (gated stage 1 and the backbone)")
    backbone_hidden_size: int = param(64, "hidden size of the new backbone")
    backbone_layers: int = param(1, "transformer layers of the new backbone")
    stage1_steps: int = param(1400, "backbone + rating-head fine-tuning steps (batch 32)")
    stage1_lr: float = param(1e-2, "learning rate of stage 1")
    head_steps: int = param(600, "optimizer steps of each head (gate, BT, GPM)")
    head_lr: float = param(3e-3, "learning rate of the heads")
    head_hidden_size: int = param(256, "MLP width of the BT and GPM heads")
    gpm_blocks: int = param(4, "k of the GPM (2k-dimensional preference vectors)")


def _data(cfg: ArenaPMConfig, folder: Path) -> dict[str, Path]:
    arena = cfg.arena.build()
    rng = np.random.default_rng([cfg.seed, 0xA7])
    frac = cfg.minimal_pair_fraction
    sets = {
        "ratings": export.ratings(arena, cfg.ratings, rng),
        "train": export.labeled_pairs(arena, cfg.train_pairs, rng, minimal_pair_fraction=frac),
        "eval": export.labeled_pairs(arena, cfg.eval_pairs, rng, minimal_pair_fraction=frac),
    }
    paths = {}
    for name, rows in sets.items():
        if name != "ratings":  # a pair of identical texts carries no preference
            rows = [r for r in rows if r["chosen"] != r["rejected"]]
        paths[name] = folder / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths


def _head_train(cfg: ArenaPMConfig, steps: int) -> TrainConfig:
    return TrainConfig(
        seed=cfg.seed,
        lr=cfg.head_lr,
        warmup_steps=20,
        max_steps=steps,
        batch_size=128,
        micro_batch_size=128,
        eval_every=0,
        save_every=0,
        log_every=50,
        mixed_precision="no",
    )


def _fit(pm: PMConfig) -> dict:
    out = RunDir(pm.output_dir)
    try:
        out.start_fresh()
        return train_preference_model(pm, out, logging.getLogger("prefgame.train.pm"))
    finally:
        out.close()


def train_arena_preference_models(cfg: ArenaPMConfig, output_dir: str | Path) -> list[dict[str, Any]]:
    """Train gated, BT and GPM models on arena data under ``output_dir``; return the table rows.

    Each row: model, accuracy (held-out, vs the gold label's side), expected_accuracy and
    bayes_accuracy (overall), in_cycle_expected_accuracy and in_cycle_bayes_accuracy, in_cycle_pairs,
    gating_correlation (gated only; None otherwise), seconds.
    """
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    paths = _data(cfg, output_dir / "data")
    data = PMDataConfig(
        path=str(paths["train"]), eval_path=str(paths["eval"]), ratings_path=str(paths["ratings"])
    )
    backbone = BackboneConfig(
        name_or_path="",
        pooling="mean",
        layers=[0, -1],
        max_length=96,
        freeze=False,
        hidden_size=cfg.backbone_hidden_size,
        num_layers=cfg.backbone_layers,
        num_heads=4,
        intermediate_size=4 * cfg.backbone_hidden_size,
    )
    gated = PMConfig(
        output_dir=str(output_dir / "gated"),
        model=PMModelConfig(
            kind="gated",
            backbone=backbone,
            head=HeadConfig(hidden_size=0),
            gated=GatedConfig(
                verbosity_objective="detail",
                debias_objectives=["relevance", "correctness", "safety"],
                stage1="sgd",
                stage1_steps=cfg.stage1_steps,
                stage1_lr=cfg.stage1_lr,
                stage1_batch_size=32,
            ),
        ),
        data=data,
        train=_head_train(cfg, cfg.head_steps),
        arena_metrics=True,
        arena=cfg.arena,
    )
    results = {"gated": _fit(gated)}
    frozen = BackboneConfig(
        name_or_path=str(output_dir / "gated" / "model" / "backbone"),
        pooling="mean",
        layers=[0, -1],
        max_length=96,
        freeze=True,
    )
    head = HeadConfig(hidden_size=cfg.head_hidden_size, num_layers=1)
    for kind in ("bt", "gpm"):
        pm = PMConfig(
            output_dir=str(output_dir / kind),
            model=PMModelConfig(
                kind=kind,
                backbone=frozen,
                head=head,
                gpm=GPMConfig(blocks=cfg.gpm_blocks),
                ensemble=EnsembleConfig(size=1),
            ),
            data=data,
            loss=PMLossConfig(),
            train=_head_train(cfg, cfg.head_steps),
            arena_metrics=True,
            arena=cfg.arena,
        )
        results[kind] = _fit(pm)
    rows = []
    for name, kind in (("BT reward", "bt"), ("GPM (general preference)", "gpm"), ("gated (ArmoRM-style)", "gated")):
        m = results[kind]
        a = m["arena"]
        rows.append(
            {
                "model": name,
                "kind": kind,
                "accuracy": m["eval"]["accuracy"],
                "expected_accuracy": a["expected_accuracy"],
                "bayes_accuracy": a["bayes_accuracy"],
                "in_cycle_expected_accuracy": a["in_cycle"]["expected_accuracy"],
                "in_cycle_bayes_accuracy": a["in_cycle"]["bayes_accuracy"],
                "in_cycle_pairs": a["in_cycle"]["n"],
                "gating_correlation": a.get("gating", {}).get("pearson"),
                "seconds": m["seconds"],
            }
        )
    log.info(f"arena preference models trained in {time.perf_counter() - t0:.0f}s")
    return rows

