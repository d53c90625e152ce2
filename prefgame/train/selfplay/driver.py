"""The ``prefgame selfplay`` job: start-up, the iteration loop, checkpoints, the summary, the library
entry and the arena presets (each algorithm's, from the registry)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prefgame.errors import ConfigError
from prefgame.oracle import PreferenceOracle
from prefgame.run import Progress, RunDir, read_jsonl, run_job, seed_everything
from prefgame.train.engine import (
    begin_run,
    end_run,
    log_row,
    resume_state,
    save_checkpoint,
)
from prefgame.train.selfplay.config import Algorithm, SelfPlayConfig
from prefgame.train.selfplay.evaluator import Evaluator
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
    run = begin_run(out, cfg, sp.acc, job="selfplay", resume=cfg.resume, report_to=tc.report_to)
    state = resume_state(
        run, out, modules=_checkpointed(sp), optimizer=sp.optimizer, scheduler=sp.scheduler, unit="iteration"
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
    evaluator = Evaluator.build(sp, reference_classes)
    if evaluator.game is not None:
        eq = evaluator.game.summary()["equilibrium"]
        log.info(f"class-level equilibrium (τ={cfg.game.tau}): exploitability {eq['exploitability']:.4f}")
    # figures of π0 (also the opponent of the next win_rate_vs_previous); a resumed run takes that
    # opponent from the checkpoint instead, as the uninterrupted run holds it at this point
    if start == 0 or not evaluator.load_state(state):
        first = evaluator.measure(start)
        if start == 0:
            log_row(out, sp.acc, run, 0, {"iteration": 0, **first})
    iterate = ALGORITHMS[cfg.algorithm].iterate
    progress = Progress(tc.iterations - start, f"selfplay {cfg.algorithm}", log, every_s=5.0)
    train_seconds = 0.0
    for t in range(start, tc.iterations):
        t0 = time.perf_counter()
        prefs = sp.preferences()
        info = iterate(sp, t, prefs)
        train_seconds += time.perf_counter() - t0
        done = t + 1
        if sp.average is not None and done > tc.average_from:
            sp.update_average()
        row = {"iteration": done, **info, **prefs.stats(), "seconds": time.perf_counter() - t0}
        if (cfg.eval.every and done % cfg.eval.every == 0) or done == tc.iterations:
            row.update(evaluator.measure(done))
        log_row(out, sp.acc, run, done, row)
        if sp.acc.is_main_process:
            save_checkpoint(
                out.path,
                done,
                modules=_checkpointed(sp),
                optimizer=sp.optimizer,
                scheduler=sp.scheduler,
                state={
                    "version": sp.version,
                    "nonfinite_steps": sp.guard.total,
                    "averaged": sp.averaged,
                    **evaluator.state(),
                },
                keep=tc.keep_checkpoints,
            )
        progress.update(**{k: v for k, v in row.items() if k in ("loss", "class/exploitability", "win_rate_vs_ref")})
    sp.acc.wait_for_everyone()
    metrics = summarize(cfg, out, evaluator, n_params)
    metrics["seconds"] = {
        "total": time.perf_counter() - t_start,
        "iterations": train_seconds,
        "measurements": evaluator.seconds,
    }
    if sp.acc.is_main_process:
        final = sp.average if sp.averaged else sp.acc.unwrap_model(sp.wrapper).model
        save_model(final, sp.tok, out.path / "model")
        out.write_metrics(metrics)
        log.info(summary_line(metrics))
    end_run(sp.acc, run)
    return metrics


def _checkpointed(sp: SelfPlay) -> dict[str, torch.nn.Module]:
    """The modules an iteration checkpoint holds: the policy, the weight average when there is one, and
    what the algorithm keeps across iterations (``sp.extras``)."""
    modules = {"policy": sp.policy} if sp.average is None else {"policy": sp.policy, "average": sp.average}
    return {**modules, **sp.extras}


# The figures of each measured iteration that summarize() copies into metrics["history"]: oracle win
# rates and Monte Carlo KL on held-out prompts, and on the arena the exact class-level figures
# (class/win_rate_vs_ref is the exact gold win rate of the class distribution against π0's).
HISTORY_KEYS = (
    "iteration",
    "win_rate_vs_ref",
    "win_rate_vs_previous",
    "kl_to_ref",
    "class/exploitability",
    "class/gap",
    "class/tv_to_equilibrium",
    "class/class_kl",
    "class/win_rate_vs_ref",
    "averaged_iterates",
)


def summarize(cfg: SelfPlayConfig, out: RunDir, evaluator: Evaluator, n_params: int) -> dict[str, Any]:
    """Final figures from metrics.jsonl: the first and last measured rows and their changes."""
    rows = read_jsonl(out.file("metrics.jsonl")) if out.file("metrics.jsonl").exists() else []
    # wall times stay out of the figures (they are in metrics["seconds"]), so that a resumed run's
    # summary equals an uninterrupted run's
    measured = [{k: v for k, v in r.items() if k != "seconds"} for r in rows if "win_rate_vs_ref" in r]
    initial, final = (measured[0], measured[-1]) if measured else ({}, {})
    metrics: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "iterations": cfg.train.iterations,
        "parameters": n_params,
        "oracle": evaluator.sp.oracle.name,
        "initial": initial,
        "final": final,
        "nonfinite_steps": evaluator.sp.guard.total,
    }
    metrics["history"] = [{k: r[k] for k in HISTORY_KEYS if k in r} for r in measured]  # convergence trace
    if evaluator.game is not None and initial.get("class/exploitability") is not None:
        metrics["equilibrium"] = evaluator.game.summary()
        metrics["exploitability_ratio"] = final["class/exploitability"] / initial["class/exploitability"]
        metrics["tv_to_equilibrium"] = [initial["class/tv_to_equilibrium"], final["class/tv_to_equilibrium"]]
        metrics["gap_ratio"] = final["class/gap"] / initial["class/gap"]
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    f = m.get("final", {})
    text = (
        f"selfplay {m['algorithm']} done: win rate vs π0 {f.get('win_rate_vs_ref', math.nan):.3f}, "
        f"KL {f.get('kl_to_ref', math.nan):.3f}"
    )
    if "exploitability_ratio" in m:
        i = m["initial"]
        text += (
            f", exploitability {i['class/exploitability']:.3f} → {f['class/exploitability']:.3f}, "
            f"TV to π* {m['tv_to_equilibrium'][0]:.3f} → {m['tv_to_equilibrium'][1]:.3f}"
        )
    return text


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


# A short run for the quickstart's budget (applied on top of an ARENA_PRESETS entry): 10 iterations ×
# 16 prompts × K = 4, 2 optimizer steps each at a constant lr, measured before, at iteration 5 and after
# the last on 120 held-out prompts. Its cost and why longer runs at this lr are not kept: docs/selfplay.md
# ("Quickstart preset (measured)").
QUICKSTART_OVERRIDES: tuple[str, ...] = (
    "train.iterations=10",
    "sampling.prompts_per_iteration=16",
    "train.steps_per_iteration=2",
    "train.batch_size=64",
    "train.micro_batch_size=64",
    "train.warmup_steps=0",
    "train.schedule=constant",
    "train.lr=5e-4",
    "eval.every=5",
    "eval.prompts=120",
    "eval.reference_samples_per_prompt=2",
)


def selfplay_config(
    algorithm: Algorithm | None, config_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> SelfPlayConfig:
    """The arena preset of ``algorithm`` (None: no preset), then ``config_file``, then ``overrides``."""
    from prefgame.config import load_config

    if algorithm is not None and algorithm not in ARENA_PRESETS:
        raise ConfigError(f"unknown algorithm '{algorithm}' (choose from {', '.join(ARENA_PRESETS)})")
    preset = [] if algorithm is None else [f"algorithm={algorithm}", *ARENA_PRESETS[algorithm]]
    return load_config(SelfPlayConfig, config_file, [*preset, *overrides])
