"""The training engine every trainer shares: the training config section, the run start-up, the
accelerator, deterministic batch order, one optimizer step (accumulate → clip → non-finite guard →
step), one way to average logged metrics, and checkpoints with exact resume.

Exact resume: the examples of optimizer step s are a function of (seed, s) only (a fresh permutation
per epoch), models have no dropout randomness that matters, and a checkpoint holds the model, the
optimizer and scheduler state and the step. A resumed run therefore replays exactly the steps an
uninterrupted run would have taken.

Global batch: ``batch_size`` examples per optimizer step, summed over processes and micro-batches.
Each process takes a strided share of the step's examples and splits it into micro-batches of
``micro_batch_size``; losses are sums over the step's examples (or tokens) divided by the global
count, so micro-batch × accumulation and 1 × N processes give the same gradient as one full batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator

from prefgame.config import config_to_dict, flat_config, param
from prefgame.errors import DataError, PrefgameError
from prefgame.run import Resume, RunDir, atomic_dir, untie_shared
from prefgame.train import sharding
from prefgame.train.precision import resolve_mixed_precision
from prefgame.weights import load_safetensors, load_torch_state, read_json

log = logging.getLogger("prefgame.train")


@dataclass
class OptimConfig:
    """The optimization settings of every trainer's ``train`` section: AdamW and its schedule, precision,
    accumulation, clipping, the non-finite guard, checkpoints kept and trackers. Each trainer's section
    extends it with how its optimizer steps are organized (steps, iterations, rollouts), and may change
    a default."""

    seed: int = param(0, "random seed of everything the run draws (batch order, initialization, sampling)")
    lr: float = param(1e-3, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    warmup_steps: int = param(10, "linear learning-rate warm-up, in optimizer steps", ge=0)
    schedule: Literal["cosine", "linear", "constant"] = param(
        "cosine", "learning-rate decay after warm-up, over all the run's optimizer steps"
    )
    micro_batch_size: int = param(64, "examples per forward pass on one process (gradient accumulation)", ge=1)
    max_grad_norm: float = param(1.0, "gradient clipping norm (0 disables)", ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = param(
        "auto",
        "compute precision (autocast; trained weights stay float32 master weights): auto is bf16 on a CUDA GPU "
        "that supports it and float32 elsewhere; bf16 also autocasts on a CPU; fp16 needs a CUDA GPU",
    )
    low_precision_weights: bool = param(
        False,
        "store and update the trained weights in the dtype their model section asks for (policy.dtype, "
        "model.backbone.dtype = bfloat16) with no float32 master copy: half the memory of weights and AdamW "
        "state, but an update below bf16's resolution (about 0.4% of a weight) is rounded away",
    )
    gradient_checkpointing: bool = param(False, "recompute activations in backward to save memory")
    report_to: str = param("none", "trackers for accelerate (none, tensorboard, wandb, ...; comma-separated)")
    max_nonfinite_steps: int = param(
        3, "stop after this many consecutive steps with a non-finite loss or gradient", ge=1
    )
    keep_checkpoints: int = param(2, "how many recent checkpoints to keep (0: all)", ge=0)

    def __post_init__(self) -> None:
        if self.micro_batch_size <= 0:
            raise ValueError("micro_batch_size must be positive")


@dataclass
class TrainConfig(OptimConfig):
    """``train`` of the step-based trainers (sft, train-pm, dpo)."""

    max_steps: int = param(200, "optimizer steps", ge=0)
    batch_size: int = param(64, "examples per optimizer step, over all processes and micro-batches", ge=1)
    eval_every: int = param(50, "evaluate every N steps (0: only at the end)", ge=0)
    save_every: int = param(100, "checkpoint every N steps (0: only the final model)", ge=0)
    log_every: int = param(10, "write metrics.jsonl every N steps", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size <= 0:
            raise ValueError("batch_size and micro_batch_size must be positive")
        if self.max_steps < 0:
            raise ValueError("max_steps must be ≥ 0")


def tracker_names(report_to: str) -> list[str]:
    """``train.report_to`` as a list of accelerate trackers ("none" and blanks dropped)."""
    return [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]


def make_accelerator(
    cfg: OptimConfig, output_dir: str | Path, *, batch_size: int, batch_key: str = "train.batch_size"
) -> Accelerator:
    """The run's accelerator; ``batch_size`` (the config key ``batch_key``) is the global number of
    examples per optimizer step, which the processes share equally."""
    precision = resolve_mixed_precision(cfg.mixed_precision)
    _allow_precision(precision)
    trackers = tracker_names(cfg.report_to)
    # Under torchrun / accelerate launch on a machine without GPUs, accelerate only joins the process
    # group when told to use the CPU (gloo); without it every process would train alone on the full batch.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = world_size > 1 and not torch.cuda.is_available()
    sharding.check_launcher()  # one line for the launcher settings prefgame does not support
    acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=trackers or None, project_dir=str(output_dir))
    sharding.enable_fsdp(acc)  # FSDP2 also on CPU (gloo)
    if acc.num_processes != world_size:
        raise PrefgameError(
            f"launched as {world_size} processes but accelerate joined {acc.num_processes}: "
            "use 'accelerate launch --config_file configs/accelerate/<config>.yaml -m prefgame ...' or torchrun"
        )
    if batch_size % acc.num_processes:
        raise PrefgameError(
            f"{batch_key}={batch_size} is not divisible by the {acc.num_processes} processes; choose a multiple"
        )
    return acc


def _allow_precision(precision: str) -> None:
    """Let this process's accelerator take ``precision`` although an earlier run in the same process
    (a notebook, a test session) made one at another: accelerate keeps one process-wide state and
    refuses a change of mixed precision. The process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state()


@dataclass
class RunStart:
    resume_from: Path | None  # the checkpoint this run continues from; None: a fresh start
    trackers: list[str]  # accelerate trackers the run logs to (acc.log; acc.end_training at the end)


def begin_run(
    out: RunDir, cfg: Any, acc: Accelerator, *, job: str, resume: Resume, report_to: str = "none"
) -> RunStart:
    """The start-up every training job shares, once its accelerator exists: the folder's rules
    (:meth:`RunDir.start`: its lock; a finished run replaced only with ``overwrite``; ``resume`` only
    from a checkpoint and with the recorded configuration; a fresh start clears the earlier run's outputs
    and writes ``config.yaml``), then the experiment trackers with the flattened config. A resumed run
    loads its checkpoint with :func:`resume_state`, which then records the accepted ``config.yaml``."""
    checkpoint = latest_checkpoint(out.path)
    resuming = out.start(cfg, resume=resume, checkpoint=checkpoint, main=acc.is_main_process, defer=True)
    trackers = tracker_names(report_to)
    if trackers:
        acc.init_trackers(f"prefgame-{job}", config=flat_config(config_to_dict(cfg)))
    return RunStart(checkpoint if resuming else None, trackers)


def log_row(out: RunDir, acc: Accelerator, run: RunStart, step: int, row: dict[str, Any]) -> None:
    """One line of ``metrics.jsonl`` (main process) and its numeric figures to the run's trackers."""
    if not acc.is_main_process:
        return
    out.log_metrics(step, row)
    if run.trackers:
        acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)


def end_run(acc: Accelerator, run: RunStart) -> None:
    """Close the run's trackers (they flush their files)."""
    if run.trackers:
        acc.end_training()


def resume_state(
    start: RunStart,
    out: RunDir,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    unit: str = "step",
) -> dict[str, Any]:
    """Restore a resumed run's modules, optimizer and scheduler, then (:meth:`RunDir.commit_resume`) remove
    the finished run's ``metrics.json``, record the accepted ``config.yaml`` and drop the ``metrics.jsonl``
    lines after the checkpoint; the trainer state (``step`` …), or {"step": 0} on a fresh start."""
    if start.resume_from is None:
        return {"step": 0}
    state = load_checkpoint(start.resume_from, modules=modules, optimizer=optimizer, scheduler=scheduler)
    out.commit_resume()
    out.truncate_metrics(state["step"])
    out.logger.info(f"resumed from {start.resume_from} at {unit} {state['step']}")
    return state


def step_indices(n_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of optimizer step ``step`` (0-based): a fresh permutation per epoch.

    Deterministic in (n_examples, batch_size, seed, step) alone, which makes resume exact.
    """
    if n_examples == 0:
        raise PrefgameError("no training examples")
    out = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start, n_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
        take = min(batch_size - len(out), n_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
        start += take
    return np.asarray(out)


def local_micro_batches(indices: np.ndarray, micro_batch_size: int, rank: int, world_size: int) -> Iterator[np.ndarray]:
    """This process's strided share of a step's indices, cut into micro-batches."""
    mine = indices[rank::world_size]
    for start in range(0, len(mine), micro_batch_size):
        yield mine[start : start + micro_batch_size]


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Warm-up then the schedule's decay over ``total_steps`` optimizer steps, as a factor of ``cfg.lr``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_optimizer(
    params, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on the parameters that require gradients, and its learning-rate schedule."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))


class NonFiniteGuard:
    """Counts consecutive non-finite steps and stops the run when there are too many."""

    def __init__(self, limit: int) -> None:
        self.limit, self.consecutive, self.total = limit, 0, 0

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float) -> bool:
        """True when the step is finite and may be applied."""
        finite = bool(torch.isfinite(torch.as_tensor(loss)).all()) and math.isfinite(float(grad_norm))
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        log.warning(f"step {step}: non-finite loss or gradient (loss={float(loss):.4g}); update skipped")
        if self.consecutive >= self.limit:
            raise PrefgameError(
                f"{self.consecutive} consecutive non-finite steps at step {step}: training diverged; "
                "lower train.lr or check the data (no model was saved from this state)"
            )
        return False


# -- the optimizer step ------------------------------------------------------------------------


class MetricMeter:
    """Means of logged metrics over micro-batches (and steps), each weighted by its examples.

    Non-finite means are left out: a NaN carries no figure, and the non-finite guard reports the step.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for key, value in metrics.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
        self.weight += weight

    def mean(self) -> dict[str, float]:
        if self.weight <= 0:
            return {}
        means = {k: v / self.weight for k, v in self.sums.items()}
        return {k: v for k, v in means.items() if math.isfinite(v)}


@dataclass
class StepResult:
    loss: float  # the step's loss, summed over micro-batches and processes
    grad_norm: float  # before clipping
    applied: bool  # False when the non-finite guard skipped the update
    metrics: dict[str, float]  # the micro-batches' metrics, weighted by their examples (this process)


def optimizer_step(
    acc: Accelerator,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    guard: NonFiniteGuard,
    step: int,
    micro_batches: Sequence[Sized],
    micro_loss: Callable[[Any], tuple[torch.Tensor, dict[str, Any]]],
    *,
    max_grad_norm: float,
) -> StepResult:
    """One optimizer step over this process's micro-batches: the one step loop of every trainer.

    ``micro_loss(mb)`` runs the forward pass of micro-batch ``mb`` and returns its loss, a sum over the
    micro-batch divided by the step's global count (examples or tokens over all processes), so that the
    gradients of all micro-batches and processes add up to the full batch's; and the micro-batch's
    metrics to log. Gradients are synchronized across processes only on the last micro-batch; they are
    clipped to ``max_grad_norm`` (0: no clipping); a step with a non-finite loss or gradient is skipped
    (``guard``); the learning-rate schedule advances either way. Under FSDP a process with fewer
    micro-batches than another repeats its last one with a zero loss, so that every process runs as many
    forward and backward passes (:func:`prefgame.train.sharding.micro_batch_rounds`).
    """
    step_loss = torch.zeros((), device=acc.device)
    meter = MetricMeter()
    n = len(micro_batches)
    rounds = sharding.micro_batch_rounds(acc, n)
    for k in range(rounds):
        mb = micro_batches[min(k, n - 1)]
        ctx = acc.no_sync(module) if k < rounds - 1 else contextlib.nullcontext()
        with ctx, acc.autocast():
            loss, metrics = micro_loss(mb)
            if k >= n:  # a pass that only keeps this process in step with the others
                loss = loss * 0.0
            acc.backward(loss * acc.num_processes)  # DDP averages gradients over processes
        if k < n:
            step_loss += loss.detach()
            meter.add(metrics, len(mb))
    grad_norm = acc.clip_grad_norm_(module.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    step_loss = acc.reduce(step_loss, reduction="sum")
    applied = guard.check(step, step_loss, grad_norm)
    if applied:
        optimizer.step()
        scheduler.step()
    else:  # the schedule counts skipped steps too; torch warns when that happens before any update
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(step_loss), float(grad_norm), applied, meter.mean())


def train_steps(
    acc: Accelerator,
    out: RunDir,
    run: RunStart,
    tc: TrainConfig,
    modules: tuple[torch.nn.Module, torch.optim.Optimizer, Any, NonFiniteGuard],
    step_batches: Callable[[int], tuple[Sequence[Sized], Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]]],
    *,
    start_step: int,
    evaluate: Callable[[], dict[str, Any]] | None,
    checkpoint: Callable[[int], None],
    progress: Any,
) -> dict[str, float]:
    """The loop of the step-based trainers (sft, dpo) over steps ``start_step`` … ``max_steps`` − 1.

    ``modules`` is (the prepared module, optimizer, scheduler, guard); ``step_batches(step)`` gives the
    step's micro-batches on this process and their loss (see :func:`optimizer_step`). Every
    ``log_every`` steps and at the last one a ``metrics.jsonl`` row (loss, the micro-batches' metrics,
    grad_norm, lr); every ``eval_every`` steps but the last, ``evaluate()`` joins the row (the caller
    measures the end); every ``save_every`` steps but the last, ``checkpoint(step)`` on every process
    (:func:`save_checkpoint` gathers sharded state on all of them and writes on the main one).
    Returns the last step's loss and metrics.
    """
    module, optimizer, scheduler, guard = modules
    last: dict[str, float] = {"loss": math.nan}
    for step in range(start_step, tc.max_steps):
        micro, micro_loss = step_batches(step)
        result = optimizer_step(
            acc, module, optimizer, scheduler, guard, step, micro, micro_loss, max_grad_norm=tc.max_grad_norm
        )
        done = step + 1
        last = {"loss": result.loss, **result.metrics}
        row: dict[str, Any] = {}
        if done % tc.log_every == 0 or done == tc.max_steps:
            row.update(last, grad_norm=result.grad_norm, lr=scheduler.get_last_lr()[0])
        if evaluate is not None and tc.eval_every and done % tc.eval_every == 0 and done != tc.max_steps:
            row.update(evaluate())
        if row:
            log_row(out, acc, run, done, row)
        if tc.save_every and done % tc.save_every == 0 and done != tc.max_steps:
            checkpoint(done)
        progress.update(loss=last["loss"])
    return last


# -- checkpoints ------------------------------------------------------------------------------


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-N`` atomically: modules as safetensors, optimizer state, trainer state.

    Every tensor is complete, whatever the launcher: under FSDP the shards are gathered first
    (:func:`prefgame.train.sharding.full_state_dict`), so every process must call this and the main one
    writes; without sharding the other processes may call it too (they write nothing) or not at all.
    """
    from safetensors.torch import save_file

    weights = {name: sharding.full_state_dict(module) for name, module in modules.items()}
    optim_state = sharding.full_optimizer_state(optimizer)
    target = checkpoint_dir(output_dir) / f"step-{step:08d}"
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return target
    for stale in checkpoint_dir(output_dir).glob(".step-*"):  # a write or a removal cut by a kill
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target) as tmp:
        for name, tensors in weights.items():
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            save_file(untie_shared(tensors), str(tmp / f"{name}.safetensors"))
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    old = sorted(checkpoint_dir(output_dir).glob("step-*"))[:-keep] if keep > 0 else []
    for path in old:  # out of sight in one rename first: a kill during the removal leaves no half checkpoint
        hidden = path.with_name(f".{path.name}.removed")
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return target


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [p for p in sorted(checkpoint_dir(output_dir).glob("step-*")) if (p / "trainer_state.json").exists()]
    return ckpts[-1] if ckpts else None


def load_modules(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Restore ``modules`` from the checkpoint ``path`` (``<name>.safetensors`` each, complete tensors; a
    sharded module takes its shards of them); a model whose shape differs from the checkpoint's fails
    with one line."""
    for name, module in modules.items():
        tensors = load_safetensors(path / f"{name}.safetensors", checkpoint_fix(path))
        try:
            sharding.load_state_dict(module, tensors)
        except RuntimeError as exc:  # size mismatch, missing or unexpected keys: one line per problem
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [str(exc)]
            first = lines[min(1, len(lines) - 1)]  # the first problem (the line before it names the model class)
            more = f" and {len(lines) - 2} more" if len(lines) > 2 else ""
            raise PrefgameError(
                f"checkpoint {path} does not fit the {name} of this run ({first}{more}); resume "
                "with the models the run started from, or start a new run (overwrite=true or another output_dir)"
            ) from None


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore modules and optimizer from a checkpoint; returns the trainer state (``step`` …).

    The optimizer file is read with ``weights_only=True``: tensors and plain containers only. A damaged
    or foreign file stops the run with one line naming it.
    """
    load_modules(path, modules)
    opt_state = load_torch_state(path / "optimizer.pt", checkpoint_fix(path))
    if not isinstance(opt_state, dict) or not {"optimizer", "scheduler"} <= set(opt_state):
        raise DataError(f"{path / 'optimizer.pt'} is not an optimizer state saved by prefgame: {checkpoint_fix(path)}")
    sharding.load_optimizer_state(optimizer, opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])
    return read_trainer_state(path)


def checkpoint_fix(path: Path) -> str:
    """How to get past a damaged checkpoint: remove it (a resume then continues from the one before)."""
    return f"remove the checkpoint folder {path} to resume from an earlier one, or start without resume=true"


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path`` (its ``step`` at least)."""
    state = read_json(path / "trainer_state.json", checkpoint_fix(path))
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DataError(f"{path / 'trainer_state.json'} has no step: {checkpoint_fix(path)}")
    return state
