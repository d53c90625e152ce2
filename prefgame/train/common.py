"""Pieces every trainer shares: the training config section, the accelerator, deterministic batch
order, checkpoints with exact resume, and the non-finite step guard.

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

import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator

from prefgame.config import param
from prefgame.errors import PrefgameError
from prefgame.run import atomic_dir

log = logging.getLogger("prefgame.train")


@dataclass
class TrainConfig:
    seed: int = param(0, "random seed (batch order, initialization, sampling)")
    lr: float = param(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = param(0.0, "AdamW weight decay")
    warmup_steps: int = param(10, "linear warm-up steps")
    schedule: Literal["cosine", "linear", "constant"] = param("cosine", "learning-rate decay after warm-up")
    max_steps: int = param(200, "optimizer steps")
    batch_size: int = param(64, "examples per optimizer step, over all processes and micro-batches")
    micro_batch_size: int = param(64, "examples per forward pass on one process (gradient accumulation)")
    max_grad_norm: float = param(1.0, "gradient clipping norm (0 disables)")
    eval_every: int = param(50, "evaluate every N steps (0: only at the end)")
    save_every: int = param(100, "checkpoint every N steps (0: only the final model)")
    keep_checkpoints: int = param(2, "how many recent checkpoints to keep")
    log_every: int = param(10, "write metrics.jsonl every N steps")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = param(
        "auto", "autocast precision; auto uses bf16 on a GPU that supports it and fp32 on CPU"
    )
    gradient_checkpointing: bool = param(False, "recompute activations in backward to save memory")
    report_to: str = param("none", "trackers for accelerate (none, tensorboard, wandb, ...; comma-separated)")
    max_nonfinite_steps: int = param(3, "stop after this many consecutive steps with a non-finite loss or gradient")

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.micro_batch_size <= 0:
            raise ValueError("batch_size and micro_batch_size must be positive")
        if self.max_steps < 0:
            raise ValueError("max_steps must be ≥ 0")


def make_accelerator(cfg: TrainConfig, output_dir: str | Path) -> Accelerator:
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    trackers = [t.strip() for t in cfg.report_to.split(",") if t.strip() and t.strip() != "none"]
    # Under torchrun / accelerate launch on a machine without GPUs, accelerate only joins the process
    # group when told to use the CPU (gloo); without it every process would train alone on the full batch.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = world_size > 1 and not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=trackers or None, project_dir=str(output_dir))
    if acc.num_processes != world_size:
        raise PrefgameError(
            f"launched as {world_size} processes but accelerate joined {acc.num_processes}: "
            "use 'accelerate launch --config_file configs/accelerate/<config>.yaml -m prefgame ...' or torchrun"
        )
    if cfg.batch_size % acc.num_processes:
        raise PrefgameError(
            f"train.batch_size={cfg.batch_size} is not divisible by the {acc.num_processes} processes; "
            "choose a multiple"
        )
    return acc


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


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_optimizer(params, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


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
    """Write ``checkpoints/step-N`` atomically: modules as safetensors, optimizer state, trainer state."""
    from safetensors.torch import save_file

    target = checkpoint_dir(output_dir) / f"step-{step:08d}"
    for stale in checkpoint_dir(output_dir).glob(".step-*.tmp"):  # a write cut by a kill
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target) as tmp:
        for name, module in modules.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(_untie(tensors), str(tmp / f"{name}.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    old = sorted(checkpoint_dir(output_dir).glob("step-*"))[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return target


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): clone duplicates."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [p for p in sorted(checkpoint_dir(output_dir).glob("step-*")) if (p / "trainer_state.json").exists()]
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore modules and optimizer from a checkpoint; returns the trainer state (``step`` …).

    The optimizer file is read with ``weights_only=True``: tensors and plain containers only.
    """
    from safetensors.torch import load_file

    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    opt_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])
    return json.loads((path / "trainer_state.json").read_text())


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict (``config_to_dict``) flattened to {"a.b.c": value} with scalar values (others as
    strings): the form experiment trackers (``accelerator.init_trackers(config=...)``) accept."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
