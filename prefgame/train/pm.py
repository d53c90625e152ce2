"""Preference-model training (``prefgame train-pm``) and pair scoring (``prefgame score``).

One trainer for every kind registered in :mod:`prefgame.models.kinds` (docs/design.md §3.1); what
differs between kinds (the pair loss, the views a step reads, which views standardize the head's
inputs) comes from the kind's :class:`~prefgame.models.kinds.KindSpec`. Training is a list of
*phases*, each an optimizer run over one set of examples:

- a kind trained on pairs (bt, gpm, pairwise): one phase per ensemble member, on the pairs;
- a kind trained on ratings too (``ratings=True``: gated): stage 1 fits per-objective rating heads
  (closed-form ridge on frozen vectors, or a ``stage1`` phase of gradient descent on the ratings with
  the masked regression loss); then the verbosity debiasing coefficients are computed; then one
  stage-2 phase per member trains the gate (and the reward scale) with the BT loss on the pairs,
  backbone and rating heads fixed.

Frozen backbone (``model.backbone.freeze=true``): the vectors of every view of every example are
computed once (cached) and phases train heads only. Fine-tuning: the backbone trains with the head
(one member).

Losses (from :mod:`prefgame.losses`) are sums over the step's examples divided by the global count
(pairs, or observed ratings), so micro-batching, gradient accumulation and data-parallel processes
give the same update as one full batch. The examples of a step are a function of (seed, step)
(:func:`~prefgame.train.engine.step_indices`), and checkpoints hold the heads, the backbone when it
trains (with LoRA: its adapters), and the optimizer state, so a resumed run ends with the same weights
as an uninterrupted one.
Every ``phase setup`` (caching vectors, the ridge fit, debiasing) is deterministic and is re-run on
resume.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.data.columns import Pairs, Rankings, Ratings, load_pairs_or_rankings, load_ratings, split_eval
from prefgame.errors import ConfigError, PrefgameError
from prefgame.lora import LoraConfig, apply_lora, trained_state
from prefgame.losses import plackett_luce_loss, regression_loss, ridge_fit
from prefgame.models.backbone import build_encoder
from prefgame.models.heads import debias_coefficients
from prefgame.models.kinds import kind_spec
from prefgame.models.metrics import arena_metrics, gating_correlation, preference_metrics
from prefgame.models.model import (
    ModelInfo,
    PMModelConfig,
    PreferenceModel,
    build_head,
    save_preference_model,
)
from prefgame.run import Progress, Resume, RunDir, overwrite_param, resume_param, run_job, seed_everything
from prefgame.train import sharding
from prefgame.train.engine import (
    NonFiniteGuard,
    TrainConfig,
    begin_run,
    end_run,
    load_checkpoint,
    load_modules,
    local_micro_batches,
    log_row,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    read_trainer_state,
    save_checkpoint,
    step_indices,
)
from prefgame.train.precision import Precision
from prefgame.weights import load_safetensors

# -- configs ------------------------------------------------------------------------------------


@dataclass
class PMDataConfig:
    path: str = param(
        "",
        "pairs data: .jsonl/.json/.parquet/.csv file or hub name (any pairs format); or K-way rankings "
        "(format rankings, e.g. UltraFeedback's rated completions: a reward kind trains on them with the "
        "Plackett–Luce loss)",
    )
    split: str = param("train", "split of path")
    eval_path: str = param("", "held-out pairs or rankings (empty: hold out eval_fraction of path)")
    eval_split: str = param("train", "split of eval_path")
    eval_fraction: float = param(0.1, "share of path held out for evaluation when eval_path is empty")
    max_train_rows: int = param(0, "use at most this many training pairs (0: all)")
    ratings_path: str = param("", "per-objective ratings (kind gated): file or hub name")
    ratings_split: str = param("train", "split of ratings_path")
    skip_invalid: bool = param(False, "drop invalid rows (reported) instead of failing")
    sections: dict[str, list[str]] = param(
        {}, "section → subsets for per-section accuracy (empty: the subset text before '/')"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")


@dataclass
class PMLossConfig:
    margin: Literal["none", "score_gap"] = param(
        "none", "BT margin: none, or margin_scale · (score_chosen − score_rejected) from the data"
    )
    margin_scale: float = param(1.0, "scale of the score-gap margin")
    center_coef: float = param(0.0, "reward-centering penalty coef · (r_a + r_b)² (bt, gated)")
    order_augmentation: bool = param(
        True,
        "show each pair in a random order (label 1 − p when swapped); exact-antisymmetric scores make "
        "it a no-op except for pairwise.single_pass",
    )
    pairwise_single_pass: bool = param(
        False,
        "pairwise kind: train on f(x,a,b) of one (random) order, half the passes; inference still "
        "uses the anti-symmetric ½(f(x,a,b) − f(x,b,a))",
    )


@dataclass
class PMConfig:
    output_dir: str = param("runs/pm", "where the model, checkpoints, metrics and log are written")
    resume: Resume = resume_param()
    overwrite: bool = overwrite_param()
    model: PMModelConfig = param(PMModelConfig, "model section")
    data: PMDataConfig = param(PMDataConfig, "data section")
    loss: PMLossConfig = param(PMLossConfig, "loss section")
    train: TrainConfig = param(TrainConfig, "training section")
    arena_metrics: bool = param(False, "the data are arena pairs: add gold-preference metrics")
    arena: ArenaConfig = param(ArenaConfig, "the world whose gold preference the arena metrics use")
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")
    init_from: str = param(
        "",
        "warm start: the heads (with their input standardization) start from this trained preference model of "
        "the same kind, shape and ensemble size (a train-pm output_dir or its model/) instead of a seeded "
        "initialization; frozen backbone and pair kinds only ('prefgame online' pm.refit=warm). Empty: none",
    )
    lora: LoraConfig = param(
        LoraConfig, "LoRA adapters on the fine-tuned backbone (model.backbone.freeze=false) instead of every weight"
    )


# -- the step pieces ------------------------------------------------------------------------------


class PairForward(nn.Module):
    """Backbone + one head for fine-tuning: padded sequences of all views → head outputs."""

    def __init__(self, model: PreferenceModel, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = model.encoder, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, names: list[str], sizes: list[int]):
        h = self.encoder(input_ids, attention_mask).float()  # (ΣB, H); float32 heads read low-precision backbones
        return self.head(dict(zip(names, h.split(sizes))))


class RatingsForward(nn.Module):
    """Backbone + gated head's stage-1 regression: response (and prompt) sequences → predictions (B, k).

    With ``prompt_input`` the batch holds the B response sequences, then the B prompt sequences.
    """

    def __init__(self, model: PreferenceModel, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = model.encoder, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, n: int) -> Tensor:
        h = self.encoder(input_ids, attention_mask).float()  # (B or 2B, H)
        return self.head.ratings(h[:n], h[n:] if h.shape[0] > n else None)


def swap_mask(seed: int, step: int, n: int, enabled: bool) -> np.ndarray:
    """Which of the step's n examples are shown in swapped order (deterministic in seed, step)."""
    if not enabled:
        return np.zeros(n, dtype=bool)
    return np.random.default_rng([seed, step, 0x5A]).random(n) < 0.5


_SWAPPED = {"a": "b", "b": "a", "ab": "ba", "ba": "ab", "x": "x"}


@dataclass
class Phase:
    """One optimizer run: ``steps`` steps of ``batch_size`` examples out of ``n_examples``."""

    name: str
    steps: int
    seed: int
    module: nn.Module
    n_examples: int
    setup: Callable[[], None]
    micro_loss: Callable[[nn.Module, np.ndarray, np.ndarray, float], tuple[Tensor, dict]]
    normalizer: Callable[[np.ndarray], float]
    evaluate: Callable[[], dict] | None = None
    lr: float = 0.0  # 0: train.lr
    batch_size: int = 0  # 0: train.batch_size


# -- the trainer ----------------------------------------------------------------------------------


def run(cfg: PMConfig) -> dict:
    if not cfg.data.path:
        raise PrefgameError("data.path is empty: give a pairs file, e.g. data.path=runs/arena/pairs.jsonl")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return run_job(cfg.output_dir, lambda out, log: train_preference_model(cfg, out, log))


def _validate(cfg: PMConfig) -> None:
    m = cfg.model
    if cfg.lora.enabled and m.backbone.freeze:
        raise ConfigError("lora.enabled adapts a fine-tuned backbone: set model.backbone.freeze=false")
    if not m.backbone.freeze and m.ensemble.size > 1:
        raise PrefgameError(
            "ensembles share one frozen backbone: set model.backbone.freeze=true or model.ensemble.size=1"
        )
    if cfg.init_from and (not m.backbone.freeze or kind_spec(m.kind).ratings):
        raise ConfigError(
            f"init_from (a warm start of the heads) needs a frozen backbone and a kind trained on pairs; this run "
            f"has model.backbone.freeze={str(m.backbone.freeze).lower()} and model.kind={m.kind}"
        )
    if kind_spec(m.kind).ratings:
        if not cfg.data.ratings_path:
            raise PrefgameError(f"kind {m.kind} needs per-objective ratings: set data.ratings_path")
        if not m.backbone.freeze and m.gated.stage1 == "ridge":
            raise PrefgameError(
                "gated stage-1 ridge needs a frozen backbone; set model.gated.stage1=sgd to fine-tune it"
            )


def _load_training_data(cfg: PMConfig):
    """(train pairs or rankings, held-out pairs, ratings or None, objectives, verbosity index) of a
    train-pm run. Held-out rankings are scored as their strictly ordered pairs."""
    tc, mc = cfg.train, cfg.model
    data = load_pairs_or_rankings(cfg.data.path, cfg.data.split, skip_invalid=cfg.data.skip_invalid)
    if isinstance(data, Rankings):
        spec = kind_spec(mc.kind)
        if not spec.reward or spec.ratings:
            raise PrefgameError(
                f"{cfg.data.path} holds K-way rankings, which train a reward kind with the Plackett–Luce loss "
                f"(model.kind=bt); kind {mc.kind} trains on pairs"
            )
    if cfg.data.eval_path:
        train_set = data
        eval_set = load_pairs_or_rankings(cfg.data.eval_path, cfg.data.eval_split, skip_invalid=cfg.data.skip_invalid)
    else:
        train_set, eval_set = split_eval(data, cfg.data.eval_fraction, tc.seed)
    if isinstance(eval_set, Rankings):
        eval_set = eval_set.pairs("all")
    if cfg.data.max_train_rows:
        train_set = train_set.take(range(min(cfg.data.max_train_rows, len(train_set))))
    ratings = None
    objectives: list[str] = []
    verbosity_index = -1
    if kind_spec(mc.kind).ratings:
        ratings = load_ratings(
            cfg.data.ratings_path,
            cfg.data.ratings_split,
            list(mc.gated.objectives),
            skip_invalid=cfg.data.skip_invalid,
        )
        objectives = ratings.objectives
        if mc.gated.verbosity_objective:
            if mc.gated.verbosity_objective not in objectives:
                raise PrefgameError(
                    f"gated.verbosity_objective '{mc.gated.verbosity_objective}' is not an objective ({objectives})"
                )
            verbosity_index = objectives.index(mc.gated.verbosity_objective)
    return train_set, eval_set, ratings, objectives, verbosity_index


def _build_model(
    cfg: PMConfig, acc, objectives, verbosity_index: int, log, n_train: int, n_eval: int, unit: str = "pairs"
):
    """The preference model of ``cfg.model`` on the accelerator (backbone frozen or prepared for
    fine-tuning), with its parameter counts (backbone, one head)."""
    tc, mc = cfg.train, cfg.model
    frozen = mc.backbone.freeze
    precision = Precision.of(tc, acc)
    if frozen:
        dtype = precision.frozen_dtype(mc.backbone.dtype)
    else:
        dtype = precision.trainable_dtype(mc.backbone.dtype, key="model.backbone.dtype")
    encoder = build_encoder(mc.backbone, seed=tc.seed, dtype=dtype)
    encoder.model = apply_lora(encoder.model, cfg.lora, seed=tc.seed, task="FEATURE_EXTRACTION")
    heads = []
    for i in range(mc.ensemble.size):
        torch.manual_seed(tc.seed + 1000 * (i + 1))
        heads.append(build_head(mc, encoder.hidden_size, objectives=objectives, verbosity_index=verbosity_index))
    model = PreferenceModel(encoder, heads, mc, info=ModelInfo(mc.kind, objectives, verbosity_index), batch_size=64)
    model.to(acc.device)
    if frozen:
        encoder.requires_grad_(False)
    else:
        precision.prepare_trainable(encoder.model)
    n_backbone = sum(p.numel() for p in encoder.parameters())
    n_head = sum(p.numel() for p in heads[0].parameters())
    log.info(
        f"train-pm {mc.kind}: {n_train} train {unit} / {n_eval} eval pairs, backbone "
        f"{n_backbone / 1e6:.2f}M parameters ({'frozen' if frozen else 'fine-tuned'}), head {n_head} "
        f"parameters × {mc.ensemble.size}"
    )
    return model, n_backbone, n_head


def _eval_metrics(cfg: PMConfig, model: PreferenceModel, eval_set: Pairs, cache: dict, state: dict) -> dict[str, Any]:
    """The trained model's held-out figures (and the arena's, the gated stages' fits)."""
    mc = cfg.model
    multi_objective = kind_spec(mc.kind).ratings
    metrics: dict[str, Any] = {"kind": mc.kind}
    probs = None
    if len(eval_set) and "eval" in cache:  # cached vectors: same numbers, no second backbone pass
        probs = torch.sigmoid(model.scores_from_vectors(cache["eval"]).double().cpu())
    elif len(eval_set):
        probs = model.preference(eval_set.prompts, eval_set.chosen, eval_set.rejected)
    if probs is not None:
        metrics["eval"] = preference_metrics(
            probs, eval_set.labels, subsets=eval_set.subsets, sections=cfg.data.sections or None
        )
    if cfg.arena_metrics and probs is not None:
        arena = cfg.arena.build()
        metrics["arena"] = arena_metrics(arena, eval_set.prompts, eval_set.chosen, eval_set.rejected, probs)
        if multi_objective:
            metrics["arena"]["gating"] = gating_correlation(model, arena)
    if multi_objective:
        metrics["stage1"] = state["stage1"]
        metrics["debias"] = state["debias"]
    return metrics


def _run_phases(
    cfg: PMConfig, acc, out: RunDir, run, phases: list[Phase], checkpoint_modules, guard, *, start, progress
):
    """The phases' optimizer steps from global step ``start`` on (each phase its own AdamW and schedule),
    with metrics rows, evaluations and checkpoints; returns the last step's figures."""
    tc, resume_from, total = cfg.train, run.resume_from, sum(p.steps for p in phases)
    offset = 0
    last = {}
    for phase in phases:
        end = offset + phase.steps
        if end <= start:
            offset = end
            continue
        phase.setup()
        batch = phase.batch_size or tc.batch_size
        phase_tc = dataclasses.replace(
            tc,
            max_steps=phase.steps,
            lr=phase.lr or tc.lr,
            batch_size=batch,
            micro_batch_size=min(tc.micro_batch_size, batch),
        )
        optimizer, scheduler = make_optimizer(phase.module.parameters(), phase_tc, phase.steps)
        module, optimizer = sharding.prepare(acc, phase.module, optimizer)
        local0 = max(start - offset, 0)
        if local0 > 0:
            load_checkpoint(resume_from, modules=checkpoint_modules, optimizer=optimizer, scheduler=scheduler)
        for local in range(local0, phase.steps):
            step = offset + local
            last = _train_step(phase_tc, cfg.loss, acc, phase, module, optimizer, scheduler, local, guard)
            done = step + 1
            if acc.is_main_process and ((local + 1) % tc.log_every == 0 or local + 1 == phase.steps):
                row = {"phase": phase.name, **last, "lr": scheduler.get_last_lr()[0]}
                log_row(out, acc, run, done, row)
            if phase.evaluate and tc.eval_every and (local + 1) % tc.eval_every == 0 and local + 1 != phase.steps:
                if sharding.computes_here(acc):
                    with sharding.gathered(acc):
                        row = {"phase": phase.name, **phase.evaluate()}
                    if acc.is_main_process:
                        out.log_metrics(done, row)
            if tc.save_every and done % tc.save_every == 0 and done != total:  # every process: FSDP gathers
                save_checkpoint(
                    out.path,
                    done,
                    modules=checkpoint_modules,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    state={"phase": phase.name},
                    keep=tc.keep_checkpoints,
                )
            progress.update(loss=last.get("loss", math.nan))
        offset = end
    return last


def train_preference_model(cfg: PMConfig, out: RunDir, log) -> dict:
    """Train, save ``output_dir/model`` and write metrics.json; returns the metrics."""
    _validate(cfg)
    tc, mc = cfg.train, cfg.model
    t0 = time.perf_counter()
    seed_everything(tc.seed)
    acc = make_accelerator(tc, out.path, batch_size=tc.batch_size)
    sharding.refuse_settings(
        acc,
        {"model.backbone.freeze=true": mc.backbone.freeze, f"model.kind={mc.kind}": kind_spec(mc.kind).ratings},
        "train-pm shards a fine-tuned backbone trained with one head in one phase",
    )
    run = begin_run(out, cfg, acc, job="pm", resume=cfg.resume, report_to=tc.report_to)
    resume_from = run.resume_from

    train_set, eval_set, ratings, objectives, verbosity_index = _load_training_data(cfg)
    unit = "pairs" if isinstance(train_set, Pairs) else "ranked lists (Plackett–Luce)"
    model, n_backbone, n_head = _build_model(
        cfg, acc, objectives, verbosity_index, log, len(train_set), len(eval_set), unit
    )
    encoder, frozen = model.encoder, mc.backbone.freeze
    if cfg.init_from:
        _warm_start(cfg.init_from, model)

    state: dict[str, Any] = {"stage1": None, "debias": None}
    phases, cache = _build_phases(cfg, acc, model, train_set, eval_set, ratings, state)
    checkpoint_modules = {"heads": model.heads}
    if not frozen:  # a fine-tuned backbone: whole, or with LoRA its adapters
        checkpoint_modules["encoder"] = trained_state(encoder.model)
    guard = NonFiniteGuard(tc.max_nonfinite_steps)
    total = sum(p.steps for p in phases)
    start = 0
    if resume_from is not None:
        load_modules(resume_from, checkpoint_modules)  # modules now, optimizer state when its phase is set up
        start = read_trainer_state(resume_from)["step"]
        out.commit_resume()
        out.truncate_metrics(start)
        log.info(f"resumed from {resume_from} at step {start}")
    progress = Progress(total - start, f"train-pm {mc.kind}", log)
    last = _run_phases(cfg, acc, out, run, phases, checkpoint_modules, guard, start=start, progress=progress)
    if kind_spec(mc.kind).ratings and state["stage1"] is None:
        _gated_setup(cfg, model, ratings, state, acc)  # zero stage-2 steps: still fit stage 1
    acc.wait_for_everyone()
    model.eval()

    with sharding.gathered(acc):  # every process: under FSDP the backbone's layers gather their shards
        metrics = _eval_metrics(cfg, model, eval_set, cache, state)
    if isinstance(train_set, Rankings):
        metrics["loss"] = "plackett_luce"
        metrics["train_lists"] = len(train_set)
        metrics["train_tied_pairs"] = train_set.tied_pairs
    metrics.update(
        {
            "train_loss": last.get("loss"),
            "steps": total,
            "train_pairs": len(train_set) if isinstance(train_set, Pairs) else len(train_set.pairs("all")),
            "eval_pairs": len(eval_set),
            "backbone_parameters": n_backbone,
            "head_parameters": n_head,
            "nonfinite_steps": guard.total,
            "seconds": time.perf_counter() - t0,
        }
    )
    backbone, heads = sharding.model_weights(encoder.model), sharding.model_weights(model.heads)  # FSDP: gathered
    if acc.is_main_process:
        save_backbone = not frozen or not mc.backbone.name_or_path
        save_preference_model(model, out.path / "model", save_backbone=save_backbone, weights=(backbone, heads))
        out.write_metrics(metrics)
        ev = metrics.get("eval", {})
        log.info(
            f"train-pm done: eval accuracy {ev.get('accuracy')}, log-loss {ev.get('log_loss')}; "
            f"model in {out.path / 'model'}"
        )
    end_run(acc, run)
    return metrics


def _warm_start(path: str, model: PreferenceModel) -> None:
    """Load the heads (and their input standardization) of the trained preference model at ``path``."""
    folder = Path(path)
    folder = folder / "model" if (folder / "model" / "heads.safetensors").exists() else folder
    fix = "give init_from a 'prefgame train-pm' output of the same kind and shape, or leave it empty"
    tensors = load_safetensors(folder / "heads.safetensors", fix)
    try:
        model.heads.load_state_dict(tensors)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise PrefgameError(f"init_from {folder} does not fit this model's heads ({first}): {fix}") from None


def _train_step(
    tc: TrainConfig, loss_cfg: PMLossConfig, acc, phase: Phase, module, optimizer, scheduler, local: int, guard
) -> dict:
    idx = step_indices(phase.n_examples, tc.batch_size, phase.seed, local)
    swapped = swap_mask(phase.seed, local, len(idx), loss_cfg.order_augmentation)
    normalizer = phase.normalizer(idx)
    positions = np.arange(len(idx))
    micro = list(local_micro_batches(positions, tc.micro_batch_size, acc.process_index, acc.num_processes))

    def micro_loss(mb):
        return phase.micro_loss(module, idx[mb], swapped[mb], normalizer)

    result = optimizer_step(
        acc, module, optimizer, scheduler, guard, local, micro, micro_loss, max_grad_norm=tc.max_grad_norm
    )
    return {"loss": result.loss, "grad_norm": result.grad_norm, **result.metrics}


# -- phases ---------------------------------------------------------------------------------------


def _pair_views(model: PreferenceModel, cfg: PMConfig) -> tuple[str, ...]:
    """The views a training step reads (the kind's choice, e.g. pairwise's single pass)."""
    return model.spec.views_for_training(model.views, cfg.loss)


def _label_tensors(pairs: Pairs, idx: np.ndarray, swapped: np.ndarray, device) -> tuple[Tensor, Tensor]:
    labels = np.where(swapped, 1.0 - pairs.labels[idx], pairs.labels[idx])
    margins = np.where(swapped, -pairs.margins[idx], pairs.margins[idx])
    return (
        torch.as_tensor(labels, dtype=torch.float32, device=device),
        torch.as_tensor(margins, dtype=torch.float32, device=device),
    )


def _build_phases(
    cfg, acc, model: PreferenceModel, train_set: Pairs, eval_set: Pairs, ratings, state
) -> tuple[list[Phase], dict]:
    """The phases of a run and the vector cache their setups fill (frozen backbone)."""
    if isinstance(train_set, Rankings):
        return _listwise_phases(cfg, acc, model, train_set), {}
    tc, mc = cfg.train, cfg.model
    spec = model.spec
    frozen = mc.backbone.freeze
    device = acc.device
    views = _pair_views(model, cfg)
    loss_fn = spec.loss(cfg.loss)
    cache: dict[str, dict[str, Tensor]] = {}

    def cache_pairs() -> None:
        if "train" in cache:
            return
        # every view the model has, so that swapped pairs find their vectors
        cache["train"] = model.embed(model.views, train_set.prompts, train_set.chosen, train_set.rejected)
        cache["eval"] = model.embed(model.views, eval_set.prompts, eval_set.chosen, eval_set.rejected)
        # ratings kinds: fitted on the ratings in stage 1; a warm start keeps the standardization its heads learned with
        if mc.head.standardize and not spec.ratings and not cfg.init_from:
            train = cache["train"]
            pair = spec.pair_views
            h_y = torch.cat([train[pair[0]], train[pair[1]]])
            h_x = torch.cat([train["x"], train["x"]]) if "x" in train else None
            for head in model.heads:
                fit_input_norms(head, h_y, h_x)

    def frozen_pair_loss(head):
        def micro_loss(module, idx, swapped, normalizer):
            sw = torch.as_tensor(swapped, device=device)
            emb = {}
            for v in views:
                own = cache["train"][v][idx].to(device)
                other = cache["train"][_SWAPPED[v]][idx].to(device)
                emb[v] = torch.where(sw[:, None], other, own)
            labels, margins = _label_tensors(train_set, idx, swapped, device)
            return loss_fn(module(emb), labels, margins, normalizer)

        return micro_loss

    def full_pair_loss(module, idx, swapped, normalizer):
        a = [train_set.rejected[i] if s else train_set.chosen[i] for i, s in zip(idx, swapped)]
        b = [train_set.chosen[i] if s else train_set.rejected[i] for i, s in zip(idx, swapped)]
        seqs = model.view_sequences(views, [train_set.prompts[i] for i in idx], a, b)
        batch = model.encoder.collate([s for v in views for s in seqs[v]])
        outputs = module(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            list(views),
            [len(seqs[v]) for v in views],
        )
        labels, margins = _label_tensors(train_set, idx, swapped, device)
        return loss_fn(outputs, labels, margins, normalizer)

    def evaluator(head_index: int):
        def evaluate() -> dict:
            if frozen or spec.ratings:  # stage 2 of a ratings kind: frozen backbone, cached vectors
                with torch.no_grad():
                    head = model.heads[head_index]
                    was = head.training
                    head.eval()
                    emb = {k: v.to(device) for k, v in cache["eval"].items()}
                    scores = head(emb)["score"].float().cpu()
                    head.train(was)
            else:
                scores = model.score(eval_set.prompts, eval_set.chosen, eval_set.rejected)
            m = preference_metrics(torch.sigmoid(scores.double()), eval_set.labels)
            return {"eval_accuracy": m["accuracy"], "eval_log_loss": m["log_loss"]}

        return evaluate if len(eval_set) else None

    def pair_phase(name: str, seed: int, module, setup, micro_loss, head_index: int) -> Phase:
        normalizer = lambda idx: float(len(idx))  # noqa: E731  (global pairs of the step)
        return Phase(
            name, tc.max_steps, seed, module, len(train_set), setup, micro_loss, normalizer, evaluator(head_index)
        )

    phases: list[Phase] = []
    if spec.ratings:
        if mc.gated.stage1 == "sgd":
            phases.append(_stage1_phase(cfg, acc, model, ratings, state))

        def stage2_setup() -> None:
            _gated_setup(cfg, model, ratings, state, acc)
            cache_pairs()

        for i, head in enumerate(model.heads):
            phases.append(pair_phase(f"gate-{i}", tc.seed + i, head, stage2_setup, frozen_pair_loss(head), i))
    elif frozen:
        for i, head in enumerate(model.heads):
            phases.append(pair_phase(f"member-{i}", tc.seed + i, head, cache_pairs, frozen_pair_loss(head), i))
    else:
        for head in model.heads:
            phases.append(pair_phase("member-0", tc.seed, PairForward(model, head), lambda: None, full_pair_loss, 0))
    return phases, cache


class _ListRewards(nn.Module):
    """Frozen backbone, K-way rankings: cached vectors → the head's rewards r(x, y) (N,)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, h_y: Tensor, h_x: Tensor | None) -> Tensor:
        return self.head.reward(h_y, h_x)


class _ListForward(nn.Module):
    """Fine-tuned backbone, K-way rankings: the N response sequences (then, when the head reads the
    prompt, the N prompt sequences) → rewards (N,)."""

    def __init__(self, model: PreferenceModel, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = model.encoder, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, n: int) -> Tensor:
        h = self.encoder(input_ids, attention_mask).float()  # (N or 2N, H)
        return self.head.reward(h[:n], h[n:] if h.shape[0] > n else None)


def _list_index(rankings: Rankings) -> tuple[Tensor, Tensor]:
    """(index (L, K_max) into the flattened responses, −1 padded; mask (L, K_max) of real entries)."""
    sizes = [len(ys) for ys in rankings.responses]
    k_max, starts = max(sizes), np.cumsum([0, *sizes[:-1]])
    cols = np.arange(k_max)[None, :]
    mask = cols < np.asarray(sizes)[:, None]
    index = np.where(mask, starts[:, None] + cols, -1)
    return torch.as_tensor(index), torch.as_tensor(mask)


def _listwise_phases(cfg: PMConfig, acc, model: PreferenceModel, rankings: Rankings) -> list[Phase]:
    """Plackett–Luce phases of a reward kind on K-way rankings (each list best first): one per ensemble
    member on a frozen backbone (cached vectors), one with the backbone fine-tuned otherwise. The loss
    of a step is Σ over its lists of −log P(ranking) / the step's global list count."""
    tc, mc, device = cfg.train, cfg.model, acc.device
    prompt_view = "x" in model.views
    index, mask = _list_index(rankings)
    flat_prompts = [x for x, ys in zip(rankings.prompts, rankings.responses) for _ in ys]
    flat_responses = [y for ys in rankings.responses for y in ys]
    cache: dict[str, Tensor] = {}

    def setup() -> None:
        if "a" in cache:
            return
        views = ("a", "x") if prompt_view else ("a",)
        cache.update(model.embed(views, flat_prompts, flat_responses, flat_responses))
        if mc.head.standardize:
            for head in model.heads:
                fit_input_norms(head, cache["a"], cache.get("x"))

    def rows(idx: np.ndarray) -> tuple[Tensor, Tensor]:
        ix, m = index[idx], mask[idx]  # (b, K)
        return ix.clamp(min=0).reshape(-1), m.to(device)

    def frozen_loss(module, idx, swapped, normalizer):
        flat, m = rows(idx)
        h_x = cache["x"][flat].to(device) if prompt_view else None
        rewards = module(cache["a"][flat].to(device), h_x).view(m.shape)  # (b, K)
        return plackett_luce_loss(rewards, mask=m, normalizer=normalizer)

    def full_loss(module, idx, swapped, normalizer):
        flat, m = rows(idx)
        enc = model.encoder
        seqs = [enc.response_ids(flat_prompts[i], flat_responses[i]) for i in flat.tolist()]
        if prompt_view:
            seqs += [enc.prompt_ids(flat_prompts[i]) for i in flat.tolist()]
        batch = enc.collate(seqs)
        rewards = module(batch["input_ids"].to(device), batch["attention_mask"].to(device), len(flat))
        return plackett_luce_loss(rewards.view(m.shape), mask=m, normalizer=normalizer)

    def normalizer(idx: np.ndarray) -> float:
        return float(len(idx))  # global lists of the step

    n = len(rankings)
    if mc.backbone.freeze:
        return [
            Phase(f"member-{i}", tc.max_steps, tc.seed + i, _ListRewards(head), n, setup, frozen_loss, normalizer)
            for i, head in enumerate(model.heads)
        ]
    head = model.heads[0]
    return [Phase("member-0", tc.max_steps, tc.seed, _ListForward(model, head), n, lambda: None, full_loss, normalizer)]


def _stage1_phase(cfg: PMConfig, acc, model: PreferenceModel, ratings: Ratings, state) -> Phase:
    """Gradient-descent stage 1 of the gated head: masked regression of the ratings (head 0)."""
    mc = cfg.model
    device = acc.device
    head = model.heads[0]
    values = torch.as_tensor(ratings.values, dtype=torch.float32)
    observed = ~torch.isnan(values)
    with_prompt = head.inputs.prompt_input
    cache: dict[str, Tensor | None] = {}

    def setup() -> None:
        _set_trainable(head, regression=True)
        mean = torch.nanmean(values, dim=0)
        std = torch.where(observed, values - mean, 0.0).pow(2).sum(0).div(observed.sum(0).clamp(min=1)).sqrt()
        head.set_standardization(mean, std.clamp(min=1e-6))
        if mc.backbone.freeze and "h" not in cache:
            cache["h"], cache["x"] = _rating_vectors(model, ratings, with_prompt=with_prompt)
            if mc.head.standardize:
                fit_input_norms(head, cache["h"], cache["x"], prompt=_prompt_vectors(model, ratings))

    def micro_loss(module, idx, swapped, normalizer):
        target, mask = values[idx].to(device), observed[idx].to(device)
        if mc.backbone.freeze:
            h_x = cache["x"][idx].to(device) if cache["x"] is not None else None
            pred = module(cache["h"][idx].to(device), h_x)
        else:
            seqs = [model.encoder.response_ids(ratings.prompts[i], ratings.responses[i]) for i in idx]
            if with_prompt:
                seqs += [model.encoder.prompt_ids(ratings.prompts[i]) for i in idx]
            batch = model.encoder.collate(seqs)
            pred = module(batch["input_ids"].to(device), batch["attention_mask"].to(device), len(idx))
        return regression_loss(pred, target, mask, normalizer=normalizer)

    module = _RatingsHead(head) if mc.backbone.freeze else RatingsForward(model, head)
    return Phase(
        "stage1",
        mc.gated.stage1_steps,
        cfg.train.seed,
        module,
        len(ratings.prompts),
        setup,
        micro_loss,
        lambda idx: float(observed[idx].sum().clamp(min=1)),
        lr=mc.gated.stage1_lr,
        batch_size=mc.gated.stage1_batch_size,
    )


class _RatingsHead(nn.Module):
    """Frozen-backbone stage 1: cached vectors → per-objective predictions (B, k)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, h: Tensor, h_x: Tensor | None) -> Tensor:
        return self.head.ratings(h, h_x)


def _set_trainable(head: nn.Module, *, regression: bool) -> None:
    """Stage 1 trains the rating regression only; stage 2 the gate and the reward scale only."""
    for p in head.parameters():
        p.requires_grad_(not regression)
    for p in head.regression_parameters():
        p.requires_grad_(regression)


def fit_input_norms(head: nn.Module, h_y: Tensor, h_x: Tensor | None, *, prompt: Tensor | None = None) -> None:
    """Set a head's input standardization from training vectors: the response input from h_y (and
    h_x, row-aligned, with ``prompt_input``), the prompt gate's from ``prompt`` (default h_x)."""
    u = torch.cat([h_y, h_x], dim=-1) if head.inputs.prompt_input else h_y
    head.inputs.norm.fit(u)
    prompt = h_x if prompt is None else prompt
    if hasattr(head, "prompt_norm") and prompt is not None:
        head.prompt_norm.fit(prompt)


def _rating_vectors(model: PreferenceModel, ratings: Ratings, *, with_prompt: bool) -> tuple[Tensor, Tensor | None]:
    """Vectors of the rated (prompt, response) rows, and of their prompts when the head reads them."""
    seqs = [model.encoder.response_ids(x, y) for x, y in zip(ratings.prompts, ratings.responses)]
    h_y = model.encoder.embed(seqs, batch_size=model.batch_size * 4)
    return h_y, _prompt_vectors(model, ratings) if with_prompt else None


def _prompt_vectors(model: PreferenceModel, ratings: Ratings) -> Tensor:
    seqs = [model.encoder.prompt_ids(x) for x in ratings.prompts]
    return model.encoder.embed(seqs, batch_size=model.batch_size * 4)


def _gated_setup(cfg: PMConfig, model: PreferenceModel, ratings: Ratings, state: dict, acc) -> None:
    """Stage 1 (ridge, when configured) and debiasing; copies the rating heads to every member.

    Deterministic in the backbone and (for sgd) head 0's trained regression, so re-running it on
    resume reproduces the same coefficients.
    """
    g = cfg.model.gated
    model.encoder.requires_grad_(False)
    for head in model.heads:
        _set_trainable(head, regression=False)
    head0 = model.heads[0]
    h, h_x = _rating_vectors(model, ratings, with_prompt=head0.inputs.prompt_input)  # (n, H)
    values = torch.as_tensor(ratings.values, dtype=torch.float64)
    mask = ~torch.isnan(values)
    if g.stage1 == "ridge":
        if cfg.model.head.standardize:
            fit_input_norms(head0, h, h_x, prompt=_prompt_vectors(model, ratings))
        with torch.no_grad():
            u = head0.inputs(h.double(), None if h_x is None else h_x.double())  # (n, D) the regression input
        centered = u - u.mean(0)
        l2 = g.ridge_l2 * float((centered * centered).sum(0).mean())
        weight, bias = ridge_fit(u, values, mask, l2)
        head0.set_standardization(torch.zeros_like(bias), torch.ones_like(bias))  # raw units
        head0.set_regression(weight.float(), bias.float())
    device = head0.reg_weight.device
    with torch.no_grad():
        pred = head0.ratings(h.to(device), None if h_x is None else h_x.to(device)).double().cpu()  # (n, k)
    resid = torch.where(mask, pred - values, 0.0)
    ss_res = (resid**2).sum(0)
    mean = torch.where(mask, values, 0.0).sum(0) / mask.sum(0).clamp(min=1)
    ss_tot = (torch.where(mask, values - mean, 0.0) ** 2).sum(0)
    state["stage1"] = {
        o: {"r2": float(1 - ss_res[i] / ss_tot[i]) if ss_tot[i] > 0 else None, "observed": int(mask[:, i].sum())}
        for i, o in enumerate(ratings.objectives)
    }
    lam = torch.zeros(len(ratings.objectives), dtype=torch.float64)
    vi = head0.verbosity_index
    if vi >= 0:
        names = g.debias_objectives or [o for o in ratings.objectives if o != ratings.objectives[vi]]
        unknown = [n for n in names if n not in ratings.objectives]
        if unknown:
            raise PrefgameError(f"gated.debias_objectives {unknown} are not objectives ({ratings.objectives})")
        lam = debias_coefficients(pred, vi, [ratings.objectives.index(n) for n in names], g.debias_tolerance)
        state["debias"] = {
            "verbosity_objective": ratings.objectives[vi],
            "lambda": {o: float(lam[i]) for i, o in enumerate(ratings.objectives)},
        }
    for head in model.heads:
        if head is not head0:  # every member shares stage 1 (and its input standardization)
            head.inputs.load_state_dict(head0.inputs.state_dict())
            head.prompt_norm.load_state_dict(head0.prompt_norm.state_dict())
            if head0.regressor is not None:
                head.regressor.load_state_dict(head0.regressor.state_dict())
            head.set_regression(head0.reg_weight.detach(), head0.reg_bias.detach())
            head.set_standardization(head0.rating_mean, head0.rating_std)
        head.set_debias(lam.float())
