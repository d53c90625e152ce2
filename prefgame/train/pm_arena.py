"""BT, GPM and gated preference models on the arena, end to end in well under a CPU minute.

:func:`train_arena_preference_models` is what the quickstart calls. It

1. takes training pairs and per-objective ratings (the quickstart's ``data/pairs.jsonl`` and
   ``data/ratings.jsonl``, or samples them from the world when no path is given) and samples a
   separate held-out set from the world (labels: the gold soft label P*(chosen ≻ rejected));
2. trains a **BT** reward model, a **GPM** (general preference, embedding form) and a **gated**
   (ArmoRM-style) model — the kinds registered with ``arena=True`` (:mod:`prefgame.models.kinds`) —
   with ``prefgame.train.pm``, all on one frozen backbone, so they differ only in what their heads
   can represent;
3. returns one :class:`ArenaPMRow` per model: held-out accuracy, expected accuracy under the gold
   preference (overall and on in-cycle pairs) next to the Bayes-optimal figures, the gated model's
   gating-weight correlation with the true w(x), and the folder ``load_preference_model`` restores.

The backbone is the arena tiny Llama's (randomly initialized, frozen) token-embedding layer with sum
pooling: a fixed linear map of the word counts of the prompt and of prompt + response, which every
head reads side by side (``head.prompt_input``). Every arena feature is a simple function of those
counts (style: the largest word family; relevance: the topic word in both; correctness: the sum of
the prompt's digits equals the response's number; length: the word count; safety: an unsafe word),
so an MLP head can read them all, and the comparison isolates the heads: BT cannot represent the
cyclic style term, GPM can. A small transformer learning these features from text needs far more
CPU time (see docs/preference_models.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prefgame.arena import export
from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.models.backbone import BackboneConfig
from prefgame.models.kinds import kind_names, kind_spec
from prefgame.models.model import GatedConfig, GPMConfig, HeadConfig, PMModelConfig
from prefgame.run import RunDir, write_jsonl
from prefgame.train.engine import TrainConfig
from prefgame.train.pm import PMConfig, PMDataConfig, train_preference_model

log = logging.getLogger("prefgame.pm_arena")

KINDS = tuple(kind_names(arena=True))  # the kinds the quickstart compares: bt, gpm, gated


@dataclass
class ArenaPMConfig:
    arena: ArenaConfig = param(ArenaConfig, "the world (its cycle strength decides what BT can reach)")
    seed: int = param(0, "seed of sampled data and of training")
    train_pairs: int = param(4000, "training pairs sampled from the world when no pairs file is given")
    ratings: int = param(2000, "rated responses sampled from the world when no ratings file is given")
    eval_pairs: int = param(3000, "held-out pairs sampled from the world (gold soft labels)")
    minimal_pair_fraction: float = param(0.5, "share of sampled pairs that differ in one feature")
    backbone_hidden_size: int = param(128, "width of the token embeddings (≥ the 95-word vocabulary)")
    head_hidden_size: int = param(256, "MLP width of every head (and of the gated stage-1 regression)")
    head_steps: int = param(600, "optimizer steps of the BT and GPM heads and of the gated stage 2")
    head_lr: float = param(3e-3, "peak learning rate of the heads")
    batch_size: int = param(128, "pairs (or ratings) per optimizer step")
    stage1_steps: int = param(600, "gated stage 1: optimizer steps of the rating regression")
    gpm_blocks: int = param(4, "k of the GPM (2k-dimensional preference vectors)")


@dataclass
class ArenaPMRow:
    """One model's figures on the held-out arena pairs."""

    model: str  # display name (the kind's title)
    kind: str  # one of KINDS
    accuracy: float  # held-out accuracy against the side of the gold label
    expected_accuracy: float  # E[P* if the model picks a else 1 − P*]: comparable to bayes_accuracy
    bayes_accuracy: float  # E[max(P*, 1 − P*)]: the best any model can reach
    in_cycle_expected_accuracy: float | None  # the same on pairs decided by the cyclic term alone
    in_cycle_bayes_accuracy: float | None
    in_cycle_pairs: int
    gating_correlation: float | None  # gated: Pearson r of mean gating weights vs true w(x)
    seconds: float
    model_dir: str  # load_preference_model(model_dir) restores the model


def _sampled_data(cfg: ArenaPMConfig, folder: Path, pairs_path: str, ratings_path: str) -> dict[str, str]:
    arena = cfg.arena.build()
    rng = np.random.default_rng([cfg.seed, 0xA7])
    frac = cfg.minimal_pair_fraction
    paths = {"train": pairs_path, "ratings": ratings_path}
    sets = {"eval": lambda: export.labeled_pairs(arena, cfg.eval_pairs, rng, minimal_pair_fraction=frac)}
    if not pairs_path:
        sets["train"] = lambda: export.labeled_pairs(arena, cfg.train_pairs, rng, minimal_pair_fraction=frac)
    if not ratings_path:
        sets["ratings"] = lambda: export.ratings(arena, cfg.ratings, rng)
    for name, sample in sets.items():
        rows = sample()
        if name != "ratings":  # a pair of identical texts carries no preference
            rows = [r for r in rows if r["chosen"] != r["rejected"]]
        paths[name] = str(folder / f"{name}.jsonl")
        write_jsonl(paths[name], rows)
    return paths


def arena_pm_config(cfg: ArenaPMConfig, kind: str, output_dir: str | Path, data: PMDataConfig) -> PMConfig:
    """The train-pm config of one kind (what configs/pm/{bt,gpm,gated}.yaml spell out)."""
    backbone = BackboneConfig(
        name_or_path="",
        pooling="sum",
        layers=[0],
        max_length=96,
        freeze=True,
        hidden_size=cfg.backbone_hidden_size,
        num_layers=1,
        num_heads=4,
        intermediate_size=4 * cfg.backbone_hidden_size,
    )
    head = HeadConfig(hidden_size=cfg.head_hidden_size, num_layers=1, prompt_input=True, standardize=True)
    gated = GatedConfig(
        verbosity_objective="detail",
        debias_objectives=["relevance", "correctness", "safety"],
        stage1="sgd",
        stage1_steps=cfg.stage1_steps,
        regression_hidden=cfg.head_hidden_size,
    )
    train = TrainConfig(
        seed=cfg.seed,
        lr=cfg.head_lr,
        warmup_steps=20,
        max_steps=cfg.head_steps,
        batch_size=cfg.batch_size,
        micro_batch_size=cfg.batch_size,
        eval_every=0,
        save_every=0,
        log_every=100,
        mixed_precision="no",
    )
    model = PMModelConfig(kind=kind, backbone=backbone, head=head, gpm=GPMConfig(blocks=cfg.gpm_blocks), gated=gated)
    return PMConfig(
        output_dir=str(output_dir), model=model, data=data, train=train, arena_metrics=True, arena=cfg.arena
    )


def train_arena_preference_models(
    output_dir: str | Path,
    *,
    pairs_path: str | Path = "",
    ratings_path: str | Path = "",
    cfg: ArenaPMConfig | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> list[ArenaPMRow]:
    """Train BT, GPM and gated models on arena data; one folder each under ``output_dir``.

    pairs_path: arena pairs with gold soft labels (e.g. the quickstart's ``data/pairs.jsonl``);
    ratings_path: per-objective ratings (``data/ratings.jsonl``); either empty: sampled from the
    world. Held-out pairs are always sampled from the world (``output_dir/data/eval.jsonl``).
    ``kinds``: the kinds to train (default :data:`KINDS`: bt, gpm, gated). Returns the rows in that
    order. About 30 CPU seconds on one thread at 4000 pairs for the three models.
    """
    cfg = cfg or ArenaPMConfig()
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    paths = _sampled_data(cfg, output_dir / "data", str(pairs_path), str(ratings_path))
    # skip_invalid: exported arena pairs may hold a few pairs of identical texts (no preference)
    data = PMDataConfig(path=paths["train"], eval_path=paths["eval"], ratings_path=paths["ratings"], skip_invalid=True)
    rows = []
    for kind in kinds:
        # this call (re)trains the kinds: it replaces their earlier runs under output_dir
        pm = dataclasses.replace(arena_pm_config(cfg, kind, output_dir / kind, data), overwrite=True)
        out = RunDir(pm.output_dir)
        try:
            m = train_preference_model(pm, out, logging.getLogger("prefgame.train.pm"))
        finally:
            out.close()
        a = m["arena"]
        rows.append(
            ArenaPMRow(
                model=kind_spec(kind).title or kind,
                kind=kind,
                accuracy=m["eval"]["accuracy"],
                expected_accuracy=a["expected_accuracy"],
                bayes_accuracy=a["bayes_accuracy"],
                in_cycle_expected_accuracy=a["in_cycle"]["expected_accuracy"],
                in_cycle_bayes_accuracy=a["in_cycle"]["bayes_accuracy"],
                in_cycle_pairs=a["in_cycle"]["n"],
                gating_correlation=a.get("gating", {}).get("pearson"),
                seconds=m["seconds"],
                model_dir=str(output_dir / kind / "model"),
            )
        )
    log.info(f"arena preference models trained in {time.perf_counter() - t0:.0f}s")
    return rows


def rows_as_dicts(rows: list[ArenaPMRow]) -> list[dict]:
    return [asdict(r) for r in rows]
