"""Sharded training (FSDP2) for every trainer that goes through the engine: the launcher checks, the
preparation of the trained module, full state dicts for the saved model and checkpoints, and the forward
passes every process must make together.

**Launcher.** An ``accelerate launch`` config with ``distributed_type: FSDP`` and ``fsdp_version: 2``
shards the trained module with accelerate's FSDP plugin (``fully_shard`` per transformer layer, the rest
of the module in one root group). accelerate turns FSDP on only on accelerators: on a CPU launch (gloo)
it would train plain data parallel. :func:`enable_fsdp` switches accelerate's state to its FSDP plugin
there too, so the CPU tests run the same preparation as GPUs. :func:`check_launcher` refuses with one
line FSDP1 (``fsdp_version: 1``), loading the weights on the main process only
(``fsdp_cpu_ram_efficient_loading``: the trainers use the models they load on every process before
sharding them) and DeepSpeed (its engine steps inside ``backward``, which prefgame's optimizer step and
checkpoints do not follow); :func:`prepare` refuses LoRA adapters and :func:`refuse_settings` a trainer's
settings that FSDP does not shard.

**Full state dicts.** Parameters under FSDP are ``DTensor`` shards. :func:`full_state_dict` gathers each
tensor (a collective: every process calls it) and keeps the whole CPU copy on the main process only, so
``model/`` and every checkpoint hold complete tensors in the format of an unsharded run;
:func:`load_state_dict` cuts each complete tensor back to this process's shard. The optimizer state is
handled the same way (:func:`full_optimizer_state`, :func:`load_optimizer_state`): one ``optimizer.pt``
in ``torch.optim``'s own layout, read without unpickling. A checkpoint therefore does not depend on the
launcher; resume is exact for the same number of processes.

**Passes in step.** Every forward pass of a sharded layer gathers its shards from all processes, so every
process must make the same passes in the same order. Evaluation, sampling and reference log-probs call
the trained model directly rather than the prepared module's forward: they run on every process
(:func:`computes_here`), inside :func:`gathered`, which all-gathers the root group's parameters
(embeddings, final norm, output layer, heads) for their duration while each layer gathers its own. An
optimizer step runs as many micro-batches on every process (:func:`micro_batch_rounds`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType

from prefgame.errors import PrefgameError


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launcher() -> None:
    """Refuse, each in one line, the launcher settings prefgame does not support (read from the
    environment ``accelerate launch`` sets, before accelerate acts on them)."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        if importlib.util.find_spec("deepspeed") is None:
            raise PrefgameError(
                "the launcher config asks for DeepSpeed but deepspeed is not installed; prefgame does not run under "
                "DeepSpeed either (docs/scaling.md): shard with configs/accelerate/fsdp.yaml (FSDP2)"
            )
        raise PrefgameError(
            "DeepSpeed is not supported: its engine applies the update inside backward, where prefgame's optimizer "
            "step (accumulation, clipping, skipped non-finite steps) and checkpoints cannot follow it; shard with "
            "configs/accelerate/fsdp.yaml (FSDP2)"
        )
    if not _flag("ACCELERATE_USE_FSDP"):
        return
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2":
        raise PrefgameError(
            f"fsdp_version: {version} is not supported: set fsdp_version: 2 in the launcher config "
            "(FSDP2, as configs/accelerate/fsdp.yaml)"
        )
    if _flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        raise PrefgameError(
            "fsdp_cpu_ram_efficient_loading: true is not supported: the trainers use the models they load on "
            "every process before sharding them; set it to false in the launcher config"
        )


def enable_fsdp(acc: Accelerator) -> None:
    """After the accelerator exists: under an FSDP launch of several processes on CPU, turn accelerate's
    FSDP plugin on (see the module docstring); fail with one line if FSDP was asked for and is not on."""
    if not _flag("ACCELERATE_USE_FSDP") or acc.num_processes < 2:
        return  # one process: nothing to shard, and accelerate does not use the plugin
    if acc.distributed_type == DistributedType.MULTI_CPU:
        _fsdp_on_cpu(acc)
    if acc.distributed_type != DistributedType.FSDP:
        raise PrefgameError(f"the launcher config asks for FSDP but accelerate runs {acc.distributed_type.value}")


def refuse_settings(acc: Accelerator, settings: dict[str, bool], why: str) -> None:
    """One line when a job runs under FSDP with settings (name → in use) it does not support there; ``why``
    says what they need that sharding does not give."""
    used = [name for name, on in settings.items() if on]
    if is_fsdp(acc) and used:
        raise PrefgameError(
            f"{', '.join(used)} is not supported under FSDP ({why}); change it, or train with "
            "configs/accelerate/ddp.yaml"
        )


def _fsdp_on_cpu(acc: Accelerator) -> None:
    """accelerate's FSDP plugin on a CPU launch: accelerate picked plain data parallelism (MULTI_CPU) because
    it turns FSDP on only for accelerators; switch its shared state (both the process state and the
    accelerator state, which copies the former) to FSDP with the plugin the launcher's settings describe."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # its mixed precision: set by prepare()
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def is_fsdp(acc: Accelerator) -> bool:
    return acc.distributed_type == DistributedType.FSDP


def prepare(acc: Accelerator, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """``acc.prepare(module, optimizer)``; under FSDP each transformer layer of the models inside ``module``
    is its own FSDP unit (the layer classes their ``_no_split_modules`` name, unless the launcher config
    lists ``fsdp_transformer_layer_cls_to_wrap``), and ``module`` is made the root of every forward pass
    at once, so that the models inside it may also be called directly (:func:`gathered`).

    Under bf16 or fp16 autocast the layers gather their weights in the compute dtype and reduce gradients
    in float32 (accelerate's default would reduce and accumulate them in the compute dtype), so the float32
    master weights of :mod:`prefgame.train.precision` get the gradients a DDP run gets. A module with LoRA
    adapters fails with one line: FSDP does not combine with LoRA (docs/scaling.md)."""
    if not is_fsdp(acc):
        return acc.prepare(module, optimizer)
    from prefgame.lora import adapters_of

    if any(adapters_of(m) is not None for m in module.modules()):
        raise PrefgameError(
            "lora.enabled=true is not supported under FSDP (the LoRA export and the adapter-disabled reference "
            "read whole layers): set lora.enabled=false, or train the adapters with configs/accelerate/ddp.yaml"
        )
    plugin = acc.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        present = {type(m).__name__ for m in module.modules()}
        names = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or ()) if n in present}
        plugin.transformer_cls_names_to_wrap = sorted(names)
    if acc.mixed_precision in ("bf16", "fp16"):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        compute = torch.bfloat16 if acc.mixed_precision == "bf16" else torch.float16
        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    module, optimizer = acc.prepare(module, optimizer)
    # FSDP2 makes the first module that runs forward the root; a layer called directly (an evaluation before
    # the first step) would become one and the next training forward would fail. Settle the root now.
    module._get_fsdp_state()._lazy_init()
    return module, optimizer


def micro_batch_rounds(acc: Accelerator, n: int) -> int:
    """How many forward and backward passes this process runs for an optimizer step over its ``n``
    micro-batches: ``n``, or under FSDP the most any process has (a step whose examples do not divide
    evenly over the processes), since every pass gathers the layers' shards on every process. Fails with
    one line, on every process, when a process has none."""
    if not is_fsdp(acc):
        return n
    extremes = torch.tensor([n, -n], device=acc.device)
    torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)  # (most, −fewest)
    most, fewest = int(extremes[0]), -int(extremes[1])
    if fewest == 0:
        raise PrefgameError(
            f"an optimizer step has fewer examples than the {acc.num_processes} processes, which FSDP cannot "
            "share out; raise the batch size (or the samples per iteration) or use fewer processes"
        )
    return most


def computes_here(acc: Accelerator) -> bool:
    """Whether this process runs a forward pass of the trained model outside the training step that only
    the main process needs (a held-out loss, a final measurement): under FSDP every process must take part
    in it (inside :func:`gathered`), otherwise only the main one does."""
    return acc.is_main_process or is_fsdp(acc)


@contextlib.contextmanager
def gathered(acc: Accelerator) -> Iterator[None]:
    """Forward passes that call the trained models directly (evaluation, sampling, reference log-probs):
    under FSDP the parameters of the prepared modules' root groups are gathered for the duration; every
    process must enter and make the same calls. Nested contexts are one. Does nothing without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    global _gathered_depth
    roots = [m for m in acc._models if isinstance(m, FSDPModule)] if is_fsdp(acc) and not _gathered_depth else []
    for root in roots:
        root.unshard()
    _gathered_depth += 1
    try:
        yield
    finally:
        _gathered_depth -= 1
        for root in roots:
            root.reshard()


_gathered_depth = 0  # open gathered() contexts: only the outermost gathers and releases


# -- full state dicts ---------------------------------------------------------------------------------


def _is_dtensor(value: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def is_sharded(module: torch.nn.Module) -> bool:
    """True when ``module`` holds FSDP-sharded parameters."""
    return any(_is_dtensor(p) for p in module.parameters())


def _main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _full(value: Any, cache: dict[int, torch.Tensor], keep: bool) -> Any:
    """A complete CPU copy of a tensor or shard (a collective for a shard), computed once per tensor;
    None for a shard on a process that does not ``keep`` it."""
    if id(value) in cache:
        return cache[id(value)]
    full = value.full_tensor() if _is_dtensor(value) else value
    full = full.detach().cpu() if keep else None
    cache[id(value)] = full
    return full


@torch.no_grad()
def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as complete CPU tensors. Under FSDP every process must call it (each shard
    is gathered); the main process gets the tensors, the others an empty dict. Tensors shared by several
    names (tied embeddings) stay shared."""
    keep = _main()
    if not keep and not is_sharded(module):
        return {}  # nothing to gather
    cache: dict[int, torch.Tensor] = {}
    tensors = {k: _full(v, cache, keep) for k, v in module.state_dict(keep_vars=True).items()}
    return tensors if keep else {}


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """What :func:`prefgame.train.sft.save_model` writes for ``model``: under FSDP its gathered complete
    tensors (every process must call this; see :func:`full_state_dict`), otherwise None (the model's
    own state dict)."""
    return full_state_dict(model) if is_sharded(model) else None


@torch.no_grad()
def load_state_dict(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(tensors)`` from complete tensors; under FSDP each is cut to this process's
    shard first. Missing, unexpected or misshapen tensors raise torch's RuntimeError."""
    from torch.distributed.tensor import distribute_tensor

    current = module.state_dict()
    local = {}
    for key, value in tensors.items():
        target = current.get(key)
        if _is_dtensor(target) and tuple(value.shape) == tuple(target.shape):
            value = distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None)
        local[key] = value
    module.load_state_dict(local)


def _optimizer(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def _params(optimizer) -> list[torch.Tensor]:
    return [p for group in _optimizer(optimizer).param_groups for p in group["params"]]


@torch.no_grad()
def full_optimizer_state(optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with complete CPU tensors (the layout of an unsharded run). Under FSDP
    every process must call it; the main process gets the state, the others an empty dict."""
    keep = _main()
    if not keep and not any(_is_dtensor(p) for p in _params(optimizer)):
        return {}  # nothing to gather
    state = _optimizer(optimizer).state_dict()
    cache: dict[int, torch.Tensor] = {}
    out = {
        "state": {
            index: {k: _full(v, cache, keep) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
            for index, values in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }
    return out if keep else {}


def load_optimizer_state(optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` from complete tensors; under FSDP each state tensor of a
    sharded parameter is cut to this process's shard."""
    from torch.distributed.tensor import distribute_tensor

    params = _params(optimizer)
    local = {}
    for index, values in state["state"].items():
        param = params[int(index)] if int(index) < len(params) else None
        if _is_dtensor(param):
            values = {
                k: distribute_tensor(v, param.device_mesh, param.placements, src_data_rank=None)
                if k != "step" and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(param.shape) else v
                for k, v in values.items()
            }  # fmt: skip
        local[index] = values
    _optimizer(optimizer).load_state_dict({"state": local, "param_groups": state["param_groups"]})
