"""The preference-oracle protocol, and the oracle a job's ``oracle`` config section builds.

Anything that answers "how likely is response ``a`` preferred to response ``b`` for prompt ``x``"
implements :class:`PreferenceOracle`: the arena's gold preference and its simulated annotators,
trained preference models, and judges. Self-play, DPO labeling and evaluation consume only this
protocol.

Contract: ``preference(prompts, responses_a, responses_b)`` returns a float tensor of shape (N,)
with P(a_i ≻ b_i | x_i) in [0, 1]. Implementations that can be exactly anti-symmetric
(P(a≻b) + P(b≻a) = 1, P(a≻a) = ½) are.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from prefgame.config import param
from prefgame.errors import ConfigError
from prefgame.pessimism import PessimismConfig


@runtime_checkable
class PreferenceOracle(Protocol):
    """Batched pairwise preference probabilities."""

    name: str

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """Return P(a_i ≻ b_i | x_i) for every i, shape (N,), dtype float32/float64."""
        ...


def preference_matrices(
    ask: Callable[[list[str], list[str], list[str]], torch.Tensor],
    prompts: Sequence[str],
    responses: Sequence[str],
    n: int,
) -> torch.Tensor:
    """(M, n, n) M[m, i, j] = P(y_{m,i} ≻ y_{m,j} | x_m) for M prompts with n responses each, from one call
    of ``ask`` (an oracle's ``preference``, or a cache's ``query``) on the strict upper triangles.

    ``prompts`` holds the M prompts, ``responses`` their n responses each, prompt-major (y_{m,i} =
    responses[m·n + i]). The rest follows from anti-symmetry (M[j, i] = 1 − M[i, j], M[i, i] = ½), so
    every matrix is exactly anti-symmetric. The one K×K matrix of every kind of oracle and of the
    self-play estimators (:func:`~prefgame.game.lm_selfplay.group_matrices`).
    """
    m_prompts = len(prompts)
    rows, cols = torch.triu_indices(n, n, offset=1)
    qx, qa, qb = [], [], []
    for m in range(m_prompts):
        base = m * n
        qx += [prompts[m]] * len(rows)
        qa += [responses[base + int(i)] for i in rows]
        qb += [responses[base + int(j)] for j in cols]
    probs = ask(qx, qa, qb).double().reshape(m_prompts, len(rows))  # (M, n(n−1)/2)
    mats = torch.full((m_prompts, n, n), 0.5, dtype=torch.float64)
    mats[:, rows, cols] = probs
    mats[:, cols, rows] = 1.0 - probs
    return mats


def preference_matrix(oracle: PreferenceOracle, prompt: str, responses: Sequence[str]) -> torch.Tensor:
    """The K×K matrix M[i, j] = P(responses[i] ≻ responses[j] | prompt) from K(K−1)/2 batched queries.

    Only the strict upper triangle is queried; the rest follows from anti-symmetry
    (M[j, i] = 1 − M[i, j], M[i, i] = ½), so the result is exactly anti-symmetric
    (:func:`preference_matrices` with one prompt).
    """
    return preference_matrices(oracle.preference, [prompt], list(responses), len(responses))[0]


# ---------------------------------------------------------------------------------------------- config


@dataclass
class OracleConfig:
    kind: Literal["gold", "annotator", "model", "factory"] = param(
        "gold",
        "gold: the arena's gold preference; annotator: a simulated arena annotator; model: the model at `path` "
        "(a sequence-classification reward model, P = σ(r_a − r_b), or a 'prefgame train-pm' output); "
        "factory: any PreferenceOracle built by `factory` (e.g. a judge)",
    )
    annotator: str = param("careful", "kind=annotator: the annotator's name (arena.world.DEFAULT_ANNOTATORS)")
    factory: str = param("", "kind=factory: 'module:function' called as function(path, **options) → PreferenceOracle")
    path: str = param(
        "",
        "kind=model: a reward model folder or hub name, or a train-pm output_dir; "
        "kind=factory: the first argument of the factory",
    )
    options: dict[str, Any] = param(
        {},
        "kind=model: device (auto), batch_size (64) and, for a sequence classifier, dtype (auto: bfloat16 on "
        "CUDA, float32 on CPU) and max_length (0: the model's); kind=factory: keyword arguments of the factory",
    )
    pessimism: PessimismConfig = param(
        PessimismConfig, "kind=model: a pessimistic view of the model (linear LCB); none: the model as trained"
    )


def build_oracle(cfg: OracleConfig, arena) -> PreferenceOracle:
    """The oracle of ``cfg``: the arena's gold preference or an annotator, a model
    (:func:`prefgame.models.load.load_model`, under ``cfg.pessimism``), or a factory's oracle."""
    if cfg.kind != "model" and cfg.pessimism.kind != "none":
        raise ConfigError(f"oracle.pessimism applies to oracle.kind=model only, not kind={cfg.kind}")
    if cfg.kind == "model":
        from prefgame.models.load import load_model
        from prefgame.models.pessimistic import apply_pessimism

        if not cfg.path:
            raise ConfigError(
                "oracle.kind=model needs oracle.path: a reward model folder or hub name, or a train-pm output_dir"
            )
        return apply_pessimism(load_model(cfg.path, **cfg.options), cfg.pessimism)
    if cfg.kind == "factory":
        if ":" not in cfg.factory:
            raise ConfigError("oracle.factory must be 'module:function' (e.g. mypkg.pm:load_oracle)")
        module, attr = cfg.factory.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"oracle.factory '{cfg.factory}' cannot be imported: {exc}") from None
        oracle = fn(cfg.path, **cfg.options)
        if not isinstance(oracle, PreferenceOracle):
            raise ConfigError(
                f"oracle.factory '{cfg.factory}' returned {type(oracle).__name__}, not a PreferenceOracle"
            )
        return oracle
    from prefgame.arena.world import AnnotatorOracle, GoldOracle

    if cfg.kind == "gold":
        return GoldOracle(arena)
    specs = {s.name: s for s in arena.spec.annotators}
    if cfg.annotator not in specs:
        raise ConfigError(f"oracle.annotator '{cfg.annotator}' is not one of {', '.join(specs)}")
    return AnnotatorOracle(arena, specs[cfg.annotator])


def local_judge_oracle(
    path: str, *, dtype: str = "bfloat16", device: str = "auto", **judge_options: Any
) -> PreferenceOracle:
    """A causal LM read as a pairwise judge (:class:`~prefgame.judges.LocalLMJudge`), for ``oracle.kind=factory``
    with ``oracle.factory: prefgame.oracle:local_judge_oracle`` and ``oracle.path`` the judge model;
    ``oracle.options`` go to LocalLMJudge (batch_size, template, verdict_tokens, ...)."""
    from prefgame.judges import LocalLMJudge
    from prefgame.lm import load_causal_lm, load_tokenizer
    from prefgame.models.load import resolve_device

    model = load_causal_lm(path, dtype=getattr(torch, dtype)).to(resolve_device(device))
    return LocalLMJudge(model, load_tokenizer(path), **judge_options)
