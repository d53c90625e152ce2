"""LoRA adapters (peft) for every trainer: the ``lora`` config section, adding adapters to a model, the
reference π0 as the base with its adapters disabled, what a checkpoint holds, and the export.

With ``lora.enabled`` a trainer freezes the model's weights and trains low-rank adapters added to the
layers ``lora.target_modules`` names (:func:`apply_lora`): W x becomes W x + (α/r)·B A x, with B zero at
the start, so the adapted model starts as the base model exactly. What changes with it:

- **The reference π0** of the policy trainers is the same weights with the adapters disabled (peft's
  ``disable_adapter``), not a second copy: :class:`Reference` stands where the frozen copy stood, and
  :func:`active_model` gives the model that computes either (``with active_model(ref) as net``).
- **Checkpoints** hold what trains, not the frozen base: :func:`trained_state` is the view of a module
  (the policy, PPO's policy with its value head, a preference model's encoder) that the engine saves and
  restores.
- **The export** (:func:`save_pretrained`): the merged weights W + (α/r)·B A, which
  ``from_pretrained`` loads like any checkpoint of the architecture, and the adapters alone in its
  ``adapter/`` folder (peft's format) for loading onto the base model.

Without ``lora.enabled`` none of this applies and every function here returns what it was given.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prefgame.config import param
from prefgame.errors import ConfigError, PrefgameError

log = logging.getLogger("prefgame.train")

ADAPTER_DIR = "adapter"  # the adapters' folder inside an exported model folder
_HANDLE = "_prefgame_lora"  # the attribute of an adapted model that holds its Adapters


@dataclass
class LoraConfig:
    """The ``lora`` section of every trainer."""

    enabled: bool = param(
        False, "train low-rank adapters (peft LoRA) on frozen weights instead of every weight; π0 is the base"
    )
    r: int = param(16, "adapter rank r")
    alpha: float = param(32.0, "α: the adapters' update is (α / r)·B A")
    dropout: float = param(
        0.0, "dropout on the adapters' input (draws from torch's global RNG: resume is bit-identical only at 0)"
    )
    target_modules: list[str] = param(
        ["all-linear"],
        "layers that get adapters: module names (e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
        "down_proj]) or [all-linear], every linear layer but the output projection",
    )

    def __post_init__(self) -> None:
        if self.r < 1 or not self.alpha > 0:
            raise ValueError("lora.r must be ≥ 1 and lora.alpha > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or [all-linear])")


class Adapters:
    """The LoRA adapters peft added to a model: its ``PeftModel`` (which holds the adapted model, changed in
    place) and the names of the adapter parameters in the adapted model's ``state_dict``."""

    def __init__(self, peft_model: nn.Module, names: frozenset[str]) -> None:
        self.peft_model, self.names = peft_model, names

    def disabled(self) -> contextlib.AbstractContextManager:
        """Within the block the adapted model computes the base model (peft's ``disable_adapter``)."""
        return self.peft_model.disable_adapter()


def adapters_of(model: nn.Module) -> Adapters | None:
    """The adapters :func:`apply_lora` added to ``model``, or None."""
    return model.__dict__.get(_HANDLE)


def apply_lora(
    model: nn.Module, cfg: LoraConfig, *, seed: int, task: Literal["CAUSAL_LM", "FEATURE_EXTRACTION"] = "CAUSAL_LM"
) -> nn.Module:
    """``model`` with LoRA adapters on ``cfg.target_modules`` and every other weight frozen (changed in
    place and returned), or ``model`` untouched when ``cfg.enabled`` is false.

    The adapters' random half (A) is drawn from a generator seeded with ``seed`` alone, so a run's adapters
    do not depend on what drew random numbers before; call it while the model is on the CPU. ``task`` is
    what the saved ``adapter_config.json`` records (a causal LM, or a base model such as a preference
    model's backbone).
    """
    if not cfg.enabled:
        return model
    try:
        import peft
    except ImportError:
        raise PrefgameError("lora.enabled=true needs peft: pip install 'prefgame[peft]'") from None
    if adapters_of(model) is not None:
        raise PrefgameError("the model has LoRA adapters already")
    targets: Any = "all-linear" if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type=task
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.default_generator.manual_seed(seed)
        # peft reads the model's is_gradient_checkpointing, which transformers deprecates for
        # is_activation_checkpointing: a deprecation inside peft, not in what prefgame calls
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        try:
            peft_model = peft.get_peft_model(model, config)
        except ValueError as exc:  # e.g. a target module the model does not have
            raise ConfigError(f"lora.target_modules={list(cfg.target_modules)}: {str(exc).splitlines()[0]}") from None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, peft.tuners.lora.LoraLayer):
        raise ConfigError(
            "lora.target_modules adapts the output projection, which prefgame reads as a plain weight when it "
            "computes log-probabilities; leave it out (all-linear does)"
        )
    names = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
    object.__setattr__(model, _HANDLE, Adapters(peft_model, names))  # not a submodule: no state, no parameters
    n_total = sum(p.numel() for p in model.parameters())
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if n in names)
    log.info(
        f"lora: r={cfg.r}, α={cfg.alpha} on {sum(1 for n in names if '.lora_A.' in n)} layers; "
        f"{n_adapter / 1e6:.3f}M adapter parameters train ({100 * n_adapter / n_total:.2f}% of {n_total / 1e6:.2f}M)"
    )
    return model


# ---------------------------------------------------------------------------------------------- reference


class Reference:
    """π0 as the policy's own weights with its adapters disabled: what stands for the frozen copy of π0
    in a LoRA run (no second copy of the weights). Pass it wherever π0 is evaluated; the code that runs
    it enters :func:`active_model`, within which ``model`` computes π0."""

    def __init__(self, model: nn.Module, disabled: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.model, self._disabled = model, disabled

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        with self._disabled():
            yield self.model


def reference(model: nn.Module) -> Reference | None:
    """π0 of a policy that carries adapters (:class:`Reference`), or None for a model without them."""
    adapters = adapters_of(model)
    return None if adapters is None else Reference(model, adapters.disabled)


def active_model(model) -> contextlib.AbstractContextManager:
    """``with active_model(m) as net``: ``net`` is the model that computes ``m`` within the block: ``m``
    itself, or for a :class:`Reference` the policy's model with its adapters disabled."""
    return model.active() if isinstance(model, Reference) else contextlib.nullcontext(model)


def base_of(model) -> nn.Module:
    """The module that :func:`active_model` yields for ``model`` (for its device and train/eval mode)."""
    return model.model if isinstance(model, Reference) else model


def base_weights(model: nn.Module) -> contextlib.AbstractContextManager:
    """Within the block ``model`` computes its base weights: its adapters disabled (nothing without)."""
    adapters = adapters_of(model)
    return contextlib.nullcontext() if adapters is None else adapters.disabled()


# ---------------------------------------------------------------------------------------------- checkpoints


class TrainedState(nn.Module):
    """What a checkpoint holds of a module with an adapted model inside: its ``state_dict`` without the
    adapted model's frozen base weights (the adapters, and what lies outside the adapted model, such as
    PPO's value head). ``load_state_dict`` restores exactly those entries; a checkpoint with other keys
    or shapes fails as ``nn.Module.load_state_dict`` does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "module", module)  # not a submodule: this view owns no state
        frozen: set[int] = set()
        for sub in module.modules():
            adapters = adapters_of(sub)
            if adapters is not None:
                frozen |= {id(t) for n, t in sub.state_dict(keep_vars=True).items() if n not in adapters.names}
        self.keys = [k for k, t in module.state_dict(keep_vars=True).items() if id(t) not in frozen]

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # type: ignore[override]
        full = self.module.state_dict()
        return {k: full[k] for k in self.keys}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        missing = [k for k in self.keys if k not in state_dict]
        unexpected = [k for k in state_dict if k not in set(self.keys)]
        if missing or unexpected:
            problems = [f"Missing key(s) in state_dict: {', '.join(missing)}."] if missing else []
            problems += [f"Unexpected key(s) in state_dict: {', '.join(unexpected)}."] if unexpected else []
            lines = "\n\t".join(problems)
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self.module).__name__}:\n\t{lines}")
        return self.module.load_state_dict(state_dict, strict=False, assign=assign)


def trained_state(module: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` a checkpoint holds for ``module``: ``module`` itself, or with an
    adapted model inside a :class:`TrainedState` view (no frozen base weights)."""
    if not any(adapters_of(sub) is not None for sub in module.modules()):
        return module
    return TrainedState(module)


# ---------------------------------------------------------------------------------------------- export


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapted model's weights with each adapter merged into its layer (W + (α/r)·B A, as peft's
    merge computes it), under the names of the model without adapters, on the CPU."""
    from peft.tuners.lora import LoraLayer

    adapters = adapters_of(model)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name not in adapters.names:
                out[name.replace(".base_layer.", ".")] = tensor.detach().cpu()
        for name, layer in model.named_modules():
            if isinstance(layer, LoraLayer):
                base = layer.get_base_layer().weight
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                # in the base's dtype, as peft's in-place merge rounds it (bf16 base, float32 adapters)
                out[f"{name}.weight" if name else "weight"] = (base + delta).to(base.dtype).detach().cpu()
    return {k: v.contiguous() for k, v in out.items()}


def save_pretrained(model: nn.Module, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``model`` to the folder ``path`` as ``from_pretrained`` reads it (safetensors). A model with
    adapters is written merged (:func:`merged_state_dict`), and its adapters alone go to
    ``path/adapter`` (``adapter_config.json``, ``adapter_model.safetensors``) for peft's
    ``PeftModel.from_pretrained(base, path/adapter)``. ``state_dict``: the complete tensors to write for a
    model without adapters whose own are shards (FSDP gathers them first; sharding refuses adapters)."""
    adapters = adapters_of(model)
    if adapters is None:
        model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
        return
    if state_dict is not None:
        raise PrefgameError("a model with LoRA adapters is exported from its own weights, not a given state dict")
    model.save_pretrained(str(path), state_dict=merged_state_dict(model), safe_serialization=True)
    adapter_dir = Path(path) / ADAPTER_DIR
    adapters.peft_model.save_pretrained(str(adapter_dir))
    card = adapter_dir / "README.md"  # peft's empty model-card template; docs/scaling.md describes the folder
    if card.exists():
        card.unlink()
