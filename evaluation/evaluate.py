"""``prefgame evaluate winrate|agreement|report``: the command-line face of :mod:`evaluation.report`.

All three read one :class:`EvaluateConfig` (``--config FILE`` and ``key=value`` overrides):

- ``winrate`` uses ``winrate.*``: battles from a file (``winrate.battles``), or outputs of
  ``prefgame generate`` (``winrate.samples``) judged now by ``winrate.judge`` (arena gold or annotator,
  a trained preference model, an LLM judge over an OpenAI-compatible API, or any oracle factory);
  the judged battles are kept in ``battles.jsonl``;
- ``agreement`` uses ``agreement.*``: a labels file with one column per label source;
- ``report`` runs both parts whose inputs are given, into one report.

Each writes to ``output_dir``: report.md, a self-contained report.html, figures/*.png, tables/*.csv and
tables/*.json, metrics.json (headline figures, judge usage) and config.yaml. The prefgame CLI imports
this module only when ``evaluate`` is asked for.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from evaluation.report import (
    ReportSection,
    agreement_section,
    policy_battles,
    read_table,
    winrate_section,
    write_report,
)
from prefgame.arena.job import ArenaConfig
from prefgame.config import check_output_paths, config_help, load_config, param
from prefgame.errors import ConfigError, DataError
from prefgame.judges import JudgeConfig
from prefgame.run import RunDir, overwrite_param, run_job, write_jsonl

PARTS = {
    "winrate": "win rates vs a baseline (± SE, bootstrap CI, LC), BT ratings, pairwise win-rate matrix",
    "agreement": "agreement, kappa, position and length bias of every label source; preference-model accuracy",
    "report": "both parts whose inputs are given, in one report",
}


@dataclass
class JudgeChoice:
    kind: Literal["gold", "annotator", "pm", "llm", "factory"] = param(
        "gold",
        "gold / annotator: the arena's gold preference or a simulated annotator; pm: a trained preference "
        "model or a sequence-classification reward model (path); llm: an LLM judge over an OpenAI-compatible "
        "API (llm.*); factory: any PreferenceOracle",
    )
    annotator: str = param("careful", "kind=annotator: the annotator's name")
    path: str = param(
        "",
        "kind=pm: the train-pm output_dir (or its model/ folder), or a reward model folder or hub name; "
        "kind=factory: its first argument",
    )
    factory: str = param("", "kind=factory: 'module:function' called as function(path, **options)")
    options: dict[str, Any] = param({}, "kind=factory: keyword arguments of the factory")
    llm: JudgeConfig = param(JudgeConfig, "kind=llm: the LLM judge (model, base_url, cache_dir, ...)")
    arena: ArenaConfig = param(ArenaConfig, "kind=gold/annotator: the arena world")


@dataclass
class WinrateConfig:
    battles: str = param("", "battles file (model_a, model_b, winner or outcome), e.g. runs/arena/battles.jsonl")
    samples: list[str] = param([], "instead of battles: output files of `prefgame generate` to judge, one per model")
    baseline: str = param("", "the model win rates are reported against (empty: ratings anchored at the mean)")
    pairs: Literal["baseline", "all"] = param("baseline", "samples: judge every model vs baseline, or every two")
    judge: JudgeChoice = param(JudgeChoice, "samples: who judges the battles")
    judges: list[str] = param([], "battles: keep only rows whose 'judge' column is one of these (empty: all)")
    length_controlled: bool = param(True, "also report the length-controlled win rate (needs responses or lengths)")


@dataclass
class AgreementConfig:
    labels: str = param("", "labels file: one row per pair, one column per source (P(a ≻ b)), e.g. labels.jsonl")
    arena_pairs: int = param(
        0, "instead of labels: label N arena pairs by gold, every annotator and a biased judge (both orders)"
    )
    sources: list[str] = param([], "label columns to compare (empty: every numeric column)")
    reference: str = param("", "source the biases are measured against (e.g. gold); empty: none")
    models: list[str] = param([], "sources that are preference models: accuracy against every other source")
    subset_field: str = param("subset", "column naming each pair's subset (accuracy per subset)")
    sections: dict[str, list[str]] = param({}, "section name -> its subsets (RewardBench-style section accuracy)")
    z: float = param(3.0, "a bias is flagged at |z| ≥ this many standard errors ...")
    min_logodds: float = param(0.25, "... and |log-odds| ≥ this")


@dataclass
class EvaluateConfig:
    output_dir: str = param("runs/eval", "where the report, tables, figures and metrics are written")
    overwrite: bool = overwrite_param()
    title: str = param("prefgame evaluation report", "report title")
    n_bootstrap: int = param(200, "bootstrap resamples for every confidence interval")
    ci: float = param(0.95, "confidence level of the intervals")
    seed: int = param(0, "seed of bootstraps and of the shown-first order of judged battles")
    winrate: WinrateConfig = param(WinrateConfig, "inputs of the win-rate part")
    agreement: AgreementConfig = param(AgreementConfig, "inputs of the agreement part")

    def __post_init__(self) -> None:
        if self.n_bootstrap < 0 or not 0 < self.ci < 1:
            raise ValueError("n_bootstrap must be >= 0 and ci in (0, 1)")


# ---------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------


def build_judge(choice: JudgeChoice):
    """The PreferenceOracle ``choice`` names."""
    if choice.kind == "llm":
        from prefgame.judges import LLMJudge

        return LLMJudge(choice.llm)
    if choice.kind == "pm":
        if not choice.path:
            raise ConfigError("winrate.judge.kind=pm needs winrate.judge.path=<train-pm output_dir or reward model>")
        from prefgame.models.load import load_model

        return load_model(choice.path)
    from prefgame.oracle import OracleConfig, build_oracle

    oracle_cfg = OracleConfig(
        kind=choice.kind, annotator=choice.annotator, factory=choice.factory, path=choice.path, options=choice.options
    )
    return build_oracle(oracle_cfg, choice.arena.build())


def load_battles(cfg: EvaluateConfig, out: RunDir) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The battles to rate: read from ``winrate.battles`` or judged from ``winrate.samples``."""
    w = cfg.winrate
    if bool(w.battles) == bool(w.samples):
        raise ConfigError("give either winrate.battles=FILE or winrate.samples=[FILE, ...] (one of the two)")
    if w.battles:
        battles = read_table(w.battles)
        if w.judges:
            if "judge" not in battles.columns:
                raise DataError(f"{w.battles} has no 'judge' column to filter by winrate.judges")
            battles = battles[battles["judge"].isin(w.judges)].reset_index(drop=True)
            if battles.empty:
                raise DataError(f"no battle in {w.battles} was judged by {w.judges}")
        return battles, {"battles": len(battles), "source": w.battles}
    samples = pd.concat([read_table(p) for p in w.samples], ignore_index=True)
    judge = build_judge(w.judge)
    try:
        battles = policy_battles(samples, judge, pairs=w.pairs, baseline=w.baseline or None, seed=cfg.seed)
    finally:
        if hasattr(judge, "close"):
            judge.close()
    write_jsonl(out.file("battles.jsonl"), battles.to_dict(orient="records"))
    info = {"battles": len(battles), "judge": battles.attrs["judge"], "failed_pairs": battles.attrs["failed"]}
    if hasattr(judge, "stats"):
        info["judge_usage"] = judge.stats  # requests, cache hits, tokens, cost
    return battles, info


def winrate_part(cfg: EvaluateConfig, out: RunDir) -> tuple[ReportSection, dict[str, Any]]:
    battles, info = load_battles(cfg, out)
    section = winrate_section(
        battles,
        baseline=cfg.winrate.baseline or None,
        length_controlled=cfg.winrate.length_controlled,
        n_bootstrap=cfg.n_bootstrap,
        ci=cfg.ci,
        seed=cfg.seed,
    )
    if info.get("failed_pairs"):
        section.text(f"{info['failed_pairs']} pairs could not be judged and are left out (see the judge's cache).")
    return section, info


def agreement_part(cfg: EvaluateConfig, out: RunDir) -> ReportSection:
    a = cfg.agreement
    if bool(a.labels) == bool(a.arena_pairs):
        raise ConfigError("agreement needs either agreement.labels=FILE or agreement.arena_pairs=N (one of the two)")
    if a.labels:
        labels = read_table(a.labels)
    else:  # the arena: demonstrator response pairs, labeled now; kept as labels.jsonl
        from evaluation.arena import arena_label_table
        from prefgame.arena.export import response_pairs

        arena = ArenaConfig(seed=cfg.seed).build()
        prompts, ra, rb = response_pairs(arena, a.arena_pairs, np.random.default_rng(cfg.seed), minimal_pair_fraction=0)
        labels = arena_label_table(arena, prompts, ra, rb, seed=cfg.seed)
        write_jsonl(out.file("labels.jsonl"), labels.to_dict(orient="records"))
    return agreement_section(
        labels,
        sources=a.sources or None,
        reference=a.reference or None,
        models=a.models,
        subset_column=a.subset_field,
        sections=a.sections or None,
        z=a.z,
        min_logodds=a.min_logodds,
    )


def run(cfg: EvaluateConfig, part: str = "report") -> dict[str, Any]:
    """Run ``part`` ("winrate", "agreement" or "report") and write the report; returns metrics.json."""
    if part not in PARTS:
        raise ConfigError(f"unknown evaluate part '{part}': use one of {', '.join(PARTS)}")
    want_winrate = part == "winrate" or (part == "report" and (cfg.winrate.battles or cfg.winrate.samples))
    want_agreement = part == "agreement" or (part == "report" and (cfg.agreement.labels or cfg.agreement.arena_pairs))
    if not (want_winrate or want_agreement):
        raise ConfigError(
            "evaluate report needs winrate.battles, winrate.samples, agreement.labels or agreement.arena_pairs"
        )

    def body(out: RunDir, log) -> dict[str, Any]:
        out.start(cfg)
        sections, metrics = [], {"part": part}
        if want_winrate:
            section, metrics["winrate_inputs"] = winrate_part(cfg, out)
            sections.append(section)
        if want_agreement:
            sections.append(agreement_part(cfg, out))
        for section in sections:
            metrics.update(section.metrics)
        paths = write_report(out.path, sections, title=cfg.title)
        out.write_metrics(metrics)
        log.info(f"evaluate {part}: report in {paths['markdown']} and {paths['html']}")
        return metrics

    return run_job(cfg.output_dir, body)


# ---------------------------------------------------------------------------------------------------
# The prefgame CLI's tool interface
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="part", metavar="{winrate,agreement,report}", required=True)
    examples = {
        "winrate": "prefgame evaluate winrate winrate.battles=runs/arena/battles.jsonl winrate.baseline=demonstrator",
        "agreement": "prefgame evaluate agreement agreement.arena_pairs=1000 agreement.reference=gold",
        "report": "prefgame evaluate report winrate.battles=runs/arena/battles.jsonl "
        "agreement.labels=runs/quickstart/labels.jsonl agreement.reference=gold",
    }
    for part, help_text in PARTS.items():
        p = sub.add_parser(
            part,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {examples[part]}\n\nconfig keys:\n{config_help(EvaluateConfig)}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", metavar="FILE", help="YAML config file (keys listed below)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. n_bootstrap=500")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(EvaluateConfig, args.config, args.overrides)
    check_output_paths(cfg)
    metrics = run(cfg, args.part)
    print(f"prefgame evaluate {args.part}: report in {Path(cfg.output_dir) / 'report.md'}")
    flagged = metrics.get("flagged")
    if flagged:
        print(f"  position bias: {', '.join(flagged['position_bias']) or 'none'}")
        print(f"  length bias:   {', '.join(flagged['length_bias']) or 'none'}")
    for model, wr in (metrics.get("win_rate_vs_baseline") or {}).items():
        print(f"  {model:<24} win rate vs baseline {wr:.3f}")
    return 0
