"""The ``prefgame selfplay`` job: start-up, the iteration loop, checkpoints, the summary, the library
entry and the arena presets (each algorithm's, from the registry)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prefgame.errors import ConfigError
from prefgame.lora import trained_state
from prefgame.oracle import PreferenceOracle
from prefgame.run import RunDir, run_job, seed_everything
from prefgame.train import sharding
from prefgame.train.engine import end_run, save_checkpoint
from prefgame.train.policy import PolicyEvaluator, measured_rows, run_iterations, summary_text
from prefgame.train.selfplay.config import Algorithm, SelfPlayConfig
from prefgame.train.selfplay.registry import ALGORITHMS
from prefgame.train.selfplay.runtime import SelfPlay
from prefgame.train.sft import save_model


def run(cfg: SelfPlayConfig) -> dict:
    return run_job(cfg.output_dir, lambda out, log: train(cfg, out, log), name="prefgame.selfplay")


def train(
    cfg: SelfPlayConfig,
    out: RunDir,
    log,
    *,
    oracle: PreferenceOracle | None = None,
    reference_classes: torch.Tensor | None = None,
) -> dict:
    t_start = time.perf_counter()
    tc = cfg.train
    seed_everything(tc.seed)
    sp = SelfPlay(cfg, out, log, oracle=oracle)
    run, state = sp.start(
        out, "selfplay", modules=_checkpointed(sp), optimizer=sp.optimizer, scheduler=sp.scheduler, unit="iteration"
    )
    start = state["step"]
    sp.version = state.get("version", 0)
    sp.averaged = state.get("averaged", 0)
    sp.guard.total = state.get("nonfinite_steps", 0)
    n_params = sum(p.numel() for p in sp.policy.parameters())
    log.info(
        f"selfplay {cfg.algorithm}: {tc.iterations} iterations × {cfg.sampling.prompts_per_iteration} prompts × "
        f"K={cfg.sampling.samples_per_prompt}, policy {n_params / 1e6:.2f}M parameters, oracle {sp.oracle.name}"
    )
    evaluator = None
    if cfg.eval.prompts:
        evaluator = PolicyEvaluator(
            sp, preferences=sp.preferences, tau=cfg.game.tau, reference_prior=cfg.eval.reference_prior,
            reference_classes=reference_classes,
        )  # fmt: skip
    if evaluator is not None and evaluator.game is not None:
        eq = evaluator.game.summary()["equilibrium"]
        log.info(f"class-level equilibrium (τ={cfg.game.tau}): exploitability {eq['exploitability']:.4f}")
    algorithm = ALGORITHMS[cfg.algorithm].iterate

    def iterate(t: int) -> dict[str, Any]:
        prefs = sp.preferences()
        info = algorithm(sp, t, prefs)
        if sp.average is not None and t + 1 > tc.average_from:
            sp.update_average()
        return {**info, **prefs.stats()}

    def checkpoint(done: int) -> None:
        extra = evaluator.state() if evaluator is not None else {}
        save_checkpoint(
            out.path, done, modules=_checkpointed(sp), optimizer=sp.optimizer, scheduler=sp.scheduler,
            state={"version": sp.version, "nonfinite_steps": sp.guard.total, "averaged": sp.averaged, **extra},
            keep=tc.keep_checkpoints,
        )  # fmt: skip

    train_seconds = run_iterations(
        sp, out, run, name=f"selfplay {cfg.algorithm}", unit="iteration", total=tc.iterations, start=start,
        state=state, iterate=iterate, evaluator=evaluator, checkpoint=checkpoint, log=log,
        show=("loss", "eval/exploitability", "eval/win_rate_vs_ref"),
    )  # fmt: skip
    metrics: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "iterations": tc.iterations,
        "parameters": n_params,
        "oracle": sp.oracle.name,
        **measured_rows(out),
        "nonfinite_steps": sp.guard.total,
    }
    if evaluator is not None and evaluator.game is not None:
        metrics["equilibrium"] = evaluator.game.summary()
    metrics["seconds"] = {
        "total": time.perf_counter() - t_start,
        "iterations": train_seconds,
        "measurements": evaluator.seconds if evaluator is not None else 0.0,
    }
    final = sp.average if sp.averaged else sp.policy
    weights = sharding.model_weights(final)  # gathered on every process under FSDP
    if sp.acc.is_main_process:
        save_model(final, sp.tok, out.path / "model", state_dict=weights)
        out.write_metrics(metrics)
        log.info(summary_text(f"selfplay {cfg.algorithm} done", metrics))
    end_run(sp.acc, run)
    return metrics


def _checkpointed(sp: SelfPlay) -> dict[str, torch.nn.Module]:
    """The modules an iteration checkpoint holds: the policy, the weight average when there is one, and
    what the algorithm keeps across iterations (``sp.extras``); of an adapted model only its adapters."""
    modules = {"policy": sp.policy} if sp.average is None else {"policy": sp.policy, "average": sp.average}
    return {name: trained_state(module) for name, module in {**modules, **sp.extras}.items()}


# ---------------------------------------------------------------------------------------------- library entry


def run_selfplay(
    pi0: str | Path,
    oracle: PreferenceOracle | None = None,
    *,
    algorithm: Algorithm = "nash_md",
    output_dir: str | Path = "runs/selfplay",
    overrides: Sequence[str] = (),
    config_file: str | Path | None = None,
    reference_classes: torch.Tensor | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Self-play from the π0 checkpoint folder ``pi0`` against ``oracle``; returns the final metrics.

    Settings: ``config_file`` when given (a complete config such as configs/selfplay/sppo.yaml),
    otherwise the arena preset of ``algorithm`` (:data:`ARENA_PRESETS`, the values of
    configs/selfplay/<algorithm>.yaml); then ``overrides`` (``key=value`` strings). ``oracle`` None
    builds the configured one (the arena's gold preference by default). ``reference_classes`` (T, C)
    replaces the π0 class distribution estimated from samples in the arena's class-level figures
    (e.g. one measured from more samples); it must be strictly positive.
    """
    paths = [f"policy.name_or_path={pi0}", f"output_dir={output_dir}"]
    cfg = selfplay_config(None if config_file else algorithm, config_file, [*paths, *overrides])
    return run_job(
        cfg.output_dir,
        lambda out, log: train(cfg, out, log, oracle=oracle, reference_classes=reference_classes),
        name="prefgame.selfplay",
        quiet=quiet,
    )


# The arena settings of each algorithm (configs/selfplay/<algorithm>.yaml holds the same values).
ARENA_PRESETS: dict[str, list[str]] = {name: list(spec.preset) for name, spec in ALGORITHMS.items()}


def selfplay_config(
    algorithm: Algorithm | None, config_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> SelfPlayConfig:
    """The arena preset of ``algorithm`` (None: no preset), then ``config_file``, then ``overrides``."""
    from prefgame.config import load_config

    if algorithm is not None and algorithm not in ARENA_PRESETS:
        raise ConfigError(f"unknown algorithm '{algorithm}' (choose from {', '.join(ARENA_PRESETS)})")
    preset = [] if algorithm is None else [f"algorithm={algorithm}", *ARENA_PRESETS[algorithm]]
    return load_config(SelfPlayConfig, config_file, [*preset, *overrides])
