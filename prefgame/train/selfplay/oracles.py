"""The preference oracle of a self-play run: the arena's gold preference or an annotator, or any oracle
that a factory builds (a trained preference model, an LLM judge)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

from prefgame.errors import ConfigError
from prefgame.lm import load_causal_lm, load_tokenizer
from prefgame.oracle import PreferenceOracle

if TYPE_CHECKING:
    from prefgame.train.selfplay.config import OracleConfig


def build_oracle(cfg: OracleConfig, arena) -> PreferenceOracle:
    """The oracle of ``cfg``: the arena's gold preference or an annotator, or a factory's oracle."""
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
    with ``oracle.factory: prefgame.train.selfplay:local_judge_oracle`` and ``oracle.path`` the judge model;
    ``oracle.options`` go to LocalLMJudge (batch_size, template, verdict_tokens, ...)."""
    from prefgame.judges import LocalLMJudge

    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_causal_lm(path, dtype=getattr(torch, dtype)).to(target)
    return LocalLMJudge(model, load_tokenizer(path), **judge_options)
