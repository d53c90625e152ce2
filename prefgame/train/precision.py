"""The precision of a training run, decided in one place for every trainer.

Three things are decided here, from the ``train`` section (``mixed_precision``,
``low_precision_weights``, ``gradient_checkpointing``) and the dtype a model section asks for
(``policy.dtype``, ``model.backbone.dtype``):

- **compute**: ``train.mixed_precision`` is accelerate's autocast precision. ``auto`` is bf16 on a
  CUDA GPU that supports it and float32 elsewhere (a CPU included); ``bf16`` autocasts on a CPU too;
  ``fp16`` needs a CUDA GPU (accelerate adds the gradient scaler there).
- **trained weights** are float32 master weights whatever dtype the model section asks for: the
  optimizer updates float32 copies and autocast rounds them to the compute dtype for each matmul, so
  an update far smaller than a weight still moves it. With ``train.low_precision_weights=true`` the
  trained weights are stored and updated in the dtype the model section asks for, with no float32
  copy: half the memory of the weights and of AdamW's two moments, but an update smaller than half the
  spacing of that dtype at the weight's magnitude is rounded away (a warning says so). That is never
  the default.
- **frozen weights** (the reference policy, a frozen preference-model backbone, a reward model) carry
  no gradient or optimizer state, so they are stored in the lower of the dtype asked for and the
  compute dtype: under bf16 autocast a frozen copy is bf16 and costs half the memory of a float32 one.

:func:`load_trainable_lm` and :func:`load_frozen_lm` load a causal LM by these rules; the
preference-model trainer applies the same dtypes to its backbone (:func:`prefgame.models.backbone.build_encoder`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from prefgame.errors import ConfigError

log = logging.getLogger("prefgame.train")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_mixed_precision(setting: str) -> str:
    """``train.mixed_precision`` as accelerate's setting (no, bf16, fp16): ``auto`` is bf16 on a CUDA GPU
    that supports it and no (float32) elsewhere; fp16 without a CUDA GPU is refused (accelerate would
    silently compute in float32)."""
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; on a CPU use bf16 (autocast) or no")
    return setting


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def _low(dtype: torch.dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    """How a run stores and computes its models: accelerate's ``mixed_precision`` (no, bf16, fp16, as the
    run's accelerator resolved it), ``train.low_precision_weights`` and ``train.gradient_checkpointing``."""

    mixed_precision: str = "no"
    low_precision_weights: bool = False
    gradient_checkpointing: bool = False

    @classmethod
    def of(cls, tc, acc) -> Precision:
        """The precision of a run with ``train`` section ``tc`` and accelerator ``acc``."""
        return cls(acc.mixed_precision, tc.low_precision_weights, tc.gradient_checkpointing)

    @property
    def compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES.get(self.mixed_precision, torch.float32)

    def trainable_dtype(self, requested: str | torch.dtype, *, key: str) -> torch.dtype:
        """The dtype of weights the optimizer updates, for a model section that asks for ``requested``
        (its config key ``key``, for the messages): float32 master weights, or ``requested`` itself with
        ``low_precision_weights`` (a warning says what that costs)."""
        requested = as_dtype(requested)
        if not self.low_precision_weights:
            return torch.float32
        if not _low(requested):
            log.warning(f"train.low_precision_weights=true has no effect: {key}={dtype_name(requested)}")
            return torch.float32
        if requested == torch.float16 and self.mixed_precision == "fp16":
            raise ConfigError(
                f"train.low_precision_weights=true with {key}=float16 and fp16 autocast cannot train: the "
                "gradient scaler needs float32 weights; use bfloat16 or drop train.low_precision_weights"
            )
        half_spacing = torch.finfo(requested).eps / 2
        log.warning(
            f"train.low_precision_weights=true: the weights of {key}={dtype_name(requested)} and their AdamW "
            f"state are stored and updated in {dtype_name(requested)} with no float32 master copy; an update "
            f"smaller than about {100 * half_spacing:.2g}% of a weight's magnitude is rounded away, so at a small "
            "learning rate most weights do not change (drop the option to keep float32 master weights)"
        )
        return requested

    def frozen_dtype(self, requested: str | torch.dtype) -> torch.dtype:
        """The dtype of weights that do not train: the lower of ``requested`` and the compute dtype
        (a low-precision request is kept as it is)."""
        requested = as_dtype(requested)
        return requested if _low(requested) else self.compute_dtype

    def prepare_trainable(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (a transformers model about to train) in training mode, with gradient checkpointing
        when the run asks for it. A loaded checkpoint comes in eval mode, and checkpointing (like dropout)
        acts only in training mode."""
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model.train()


def enable_gradient_checkpointing(model) -> None:
    """Recompute each transformer layer's activations in the backward pass instead of keeping them
    (non-reentrant checkpoints: inputs that need no gradient, e.g. frozen embeddings, are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without gradients, in eval mode."""
    return model.requires_grad_(False).eval()


def load_trainable_lm(name_or_path: str, requested: str | torch.dtype, precision: Precision, *, key: str):
    """A causal LM that trains: weights in :meth:`Precision.trainable_dtype`, gradient checkpointing as
    the run asks."""
    from prefgame.lm import load_causal_lm

    model = load_causal_lm(name_or_path, dtype=precision.trainable_dtype(requested, key=key))
    return precision.prepare_trainable(model)


def load_frozen_lm(name_or_path: str, requested: str | torch.dtype, precision: Precision, device):
    """A causal LM that does not train (a reference policy): :meth:`Precision.frozen_dtype`, no
    gradients, eval mode, on ``device``."""
    from prefgame.lm import load_causal_lm

    return freeze(load_causal_lm(name_or_path, dtype=precision.frozen_dtype(requested)).to(device))
