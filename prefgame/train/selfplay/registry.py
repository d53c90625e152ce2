"""The registry of self-play algorithms: one :class:`AlgorithmSpec` per algorithm, registered by the
algorithm's own file in :mod:`prefgame.train.selfplay.algorithms`.

Adding an algorithm is one file there that calls :func:`register`, plus its YAML under
``configs/selfplay/``: the config's choices and ``--help``, the arena presets, the quickstart's list
and the job itself all read :data:`ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefgame import registry

if TYPE_CHECKING:
    from prefgame.game.lm_selfplay import PreferenceCache
    from prefgame.train.selfplay.runtime import SelfPlay


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str  # the config value `algorithm: <name>`; the tabular rule's name where there is one
    iterate: Callable[[SelfPlay, int, PreferenceCache], dict[str, float]]  # one iteration: sample, ask, optimize
    summary: str  # its update in one line (--help, docs)
    preset: tuple[str, ...]  # the arena settings (configs/selfplay/<name>.yaml holds the same values)
    # the update rule of prefgame.game.solvers this is the LM version of (solvers.rule(name) resolves to it)
    tabular: str | None = None
    anchors: bool = False  # takes sampling.reference_samples_per_prompt (π0's samples among its pairs)
    needs_small_step: bool = False  # its target update needs game.eta · game.tau ≤ 1
    # called once when the runtime is built, before a resume restores the checkpoint: may add modules
    # to sp.extras (checkpointed with the policy, so resume stays exact)
    setup: Callable[[SelfPlay], None] | None = None


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    return registry.register(ALGORITHMS, spec, "self-play algorithm")


def load_algorithms() -> dict[str, AlgorithmSpec]:
    """Import every module of :mod:`prefgame.train.selfplay.algorithms` (each registers itself)."""
    from prefgame.train.selfplay import algorithms

    return registry.load_package(algorithms, ALGORITHMS, order=lambda item: item[0])  # by name


def validate(cfg: Any) -> None:
    """What a :class:`~prefgame.train.selfplay.config.SelfPlayConfig` needs of its algorithm (ValueError)."""
    spec = ALGORITHMS[cfg.algorithm]
    if spec.needs_small_step and cfg.game.eta * cfg.game.tau > 1:
        raise ValueError(f"{spec.name} needs game.eta·game.tau ≤ 1, got {cfg.game.eta * cfg.game.tau}")
    if cfg.sampling.reference_samples_per_prompt and not spec.anchors:
        with_anchors = ", ".join(n for n, s in ALGORITHMS.items() if s.anchors)
        raise ValueError(f"sampling.reference_samples_per_prompt is for {with_anchors}, not {spec.name}; set it to 0")
