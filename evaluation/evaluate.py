"""``prefgame evaluate winrate|agreement|alpacaeval|arenahard|mtbench|rewardbench|report``: the command-line
face of :mod:`evaluation.report` and of the benchmark modules (:mod:`evaluation.alpacaeval`,
:mod:`evaluation.arenahard`, :mod:`evaluation.mtbench`, :mod:`evaluation.rewardbench`).

Every part reads one :class:`EvaluateConfig` (``--config FILE`` and ``key=value`` overrides):

- ``winrate`` uses ``winrate.*``: battles from a file (``winrate.battles``), or outputs of
  ``prefgame generate`` (``winrate.samples``) judged now by ``winrate.judge`` (arena gold or annotator,
  a trained preference model, an LLM judge over an OpenAI-compatible API, or any oracle factory);
  the judged battles are kept in ``battles.jsonl``;
- ``agreement`` uses ``agreement.*``: a labels file with one column per label source;
- ``alpacaeval``, ``arenahard``, ``mtbench``, ``rewardbench`` use their sections: the standard benchmarks'
  files and their exact statistics (docs/evaluation.md says, statistic by statistic, what matches);
- ``hacking`` uses ``hacking.*``: the reward-hacking picture on the arena (:mod:`evaluation.reward_hacking`),
  best-of-n of ``hacking.pi0`` (the arena's demonstrator or a causal LM) under proxies trained on a biased
  annotator;
- ``report`` runs every part whose inputs are given, into one report.

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
from evaluation.reward_hacking import HackingConfig
from prefgame.arena.job import ArenaConfig
from prefgame.config import check_output_paths, config_help, load_config, param
from prefgame.errors import ConfigError, DataError
from prefgame.judges import JudgeConfig
from prefgame.run import RunDir, overwrite_param, run_job, write_jsonl

PARTS = {
    "winrate": "win rates vs a baseline (± SE, bootstrap CI, LC), BT ratings, pairwise win-rate matrix",
    "agreement": "agreement, kappa, position and length bias of every label source; preference-model accuracy",
    "alpacaeval": "AlpacaEval 2: its files, win rate and length-controlled win rate (v1 / noreg / minimal)",
    "arenahard": "Arena-Hard-Auto: battles from its judgment files, scores with CIs, style control",
    "mtbench": "MT-Bench agreement: judge vs human and human vs human, per turn, with and without ties",
    "rewardbench": "RewardBench: per-subset accuracy, section scores and the final score of a preference model",
    "hacking": "reward hacking on the arena: best-of-n of π0 under proxies of a biased annotator, proxy and gold "
    "win rate vs KL",
    "report": "every part whose inputs are given, in one report",
}
BENCHMARKS = ("alpacaeval", "arenahard", "mtbench", "rewardbench")


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
    length_unit: Literal["words", "characters"] = param(
        "words", "unit of the lengths the LC win rate controls for (AlpacaEval counts characters)"
    )


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
    sections: dict[str, list[str]] = param({}, "section name -> its subsets (section accuracy pools them)")
    z: float = param(3.0, "a bias is flagged at |z| ≥ this many standard errors ...")
    min_logodds: float = param(0.25, "... and |log-odds| ≥ this")


@dataclass
class AlpacaEvalConfig:
    annotations: list[str] = param([], "AlpacaEval annotations.json files (each: models vs one baseline)")
    model_outputs: list[str] = param(
        [], "instead: model_outputs.json files (or `prefgame generate` jsonl) judged now against reference_outputs"
    )
    reference_outputs: str = param("", "model_outputs: the baseline's outputs (their order is the instruction index)")
    judge: JudgeChoice = param(JudgeChoice, "model_outputs: who judges")
    instruction_difficulty: str = param(
        "", "AlpacaEval's instruction_difficulty.csv: LC v1 (with gamed) or noreg; empty: the minimal GLM"
    )
    gamed: list[str] = param(
        [], "annotations of the baseline's verbose and concise variants (or AlpacaEval's df_gamed.csv): LC v1"
    )


@dataclass
class ArenaHardConfig:
    judgments: list[str] = param([], "Arena-Hard judgment files or folders (model_judgment/<judge>/*.jsonl)")
    answers: list[str] = param([], "model answer files or folders (model_answer/*.jsonl), for style control")
    baseline: str = param("gpt-4-0314", "the model every judgment compares against (A in game 1)")
    weight: int = param(3, "times a decisive verdict (A>>B, B>>A) counts", ge=1)
    first_game_only: bool = param(False, "use game 1 only")
    style_control: list[str] = param([], "covariates: length, markdown, or both (Arena-Hard's style control)")
    reg: float = param(0.5, "L2 penalty of the style-controlled fit (Chatbot Arena's)", ge=0)


@dataclass
class MTBenchConfig:
    judgments: list[str] = param(
        [], "MT-Bench pairwise judgment files (question_id, turn, model_a, model_b, winner, judge)"
    )
    pairs: list[str] = param(["gpt4-pair:human", "human:human"], "judge groups to compare, as first:second")


@dataclass
class RewardBenchConfig:
    data: str = param("", "RewardBench pairs (prompt, chosen, rejected, subset): a file or a hub data set")
    split: str = param("train", "split of data (allenai/reward-bench: filtered)")
    prior_sets: str = param("", "prior-set pairs (subsets anthropic_helpful, anthropic_hhh, shp, summarize)")
    prior_sets_split: str = param("train", "split of prior_sets")
    model: str = param(
        "",
        "the preference model: a train-pm output_dir (bt, gpm, pairwise, gated) or a sequence-classification "
        "reward model",
    )
    results: str = param(
        "", "instead of data and model: scored rows (subset with results, scores_chosen/scores_rejected or probability)"
    )
    batch_size: int = param(64, "pairs (a sequence classifier: sequences) per forward pass", ge=1)


@dataclass
class EvalHackingConfig(HackingConfig):
    pi0: str = param(
        "", "π0 whose best-of-n is measured: 'demonstrator' (the arena's) or a causal LM folder; empty: no hacking part"
    )
    max_new_tokens: int = param(40, "π0 = a causal LM: sampling length limit", ge=1)
    arena: ArenaConfig = param(ArenaConfig, "the arena world (its gold preference and annotators)")


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
    alpacaeval: AlpacaEvalConfig = param(AlpacaEvalConfig, "inputs of the AlpacaEval part")
    arenahard: ArenaHardConfig = param(ArenaHardConfig, "inputs of the Arena-Hard part")
    mtbench: MTBenchConfig = param(MTBenchConfig, "inputs of the MT-Bench agreement part")
    rewardbench: RewardBenchConfig = param(RewardBenchConfig, "inputs of the RewardBench part")
    hacking: EvalHackingConfig = param(
        EvalHackingConfig, "inputs of the reward-hacking part (evaluation/reward_hacking.py)"
    )

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
        length_unit=cfg.winrate.length_unit,
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


def alpacaeval_part(cfg: EvaluateConfig, out: RunDir) -> ReportSection:
    from evaluation import alpacaeval as ae

    a = cfg.alpacaeval
    if a.annotations:
        per_model: dict[str, pd.DataFrame] = {}
        for path in a.annotations:
            for model, frame in ae.split_by_model(ae.read_annotations(path), path).items():
                if model in per_model:
                    raise DataError(f"{path}: model '{model}' has annotations in two files; give each once")
                per_model[model] = frame
    else:
        per_model = judge_alpacaeval(cfg, out)
    baselines = sorted({str(f["generator_1"].iloc[0]) for f in per_model.values()})
    if len(baselines) != 1:
        raise DataError(f"the annotations compare against several baselines {baselines}; give one")
    difficulty = ae.read_instruction_difficulty(a.instruction_difficulty) if a.instruction_difficulty else None
    gamed = None
    if a.gamed:
        tables = [pd.read_csv(p) if str(p).endswith(".csv") else ae.read_annotations(p) for p in a.gamed]
        gamed = ae.gamed_rows(tables, difficulty)
    return ae.alpacaeval_section(per_model, difficulty=difficulty, gamed=gamed)


def judge_alpacaeval(cfg: EvaluateConfig, out: RunDir) -> dict[str, pd.DataFrame]:
    """Judge every model's outputs against the reference outputs; write AlpacaEval's files for each."""
    from evaluation import alpacaeval as ae

    a = cfg.alpacaeval
    reference = ae.read_model_outputs(a.reference_outputs)
    baseline = str(reference["generator"].iloc[0])
    outputs = pd.concat([ae.read_model_outputs(p) for p in a.model_outputs], ignore_index=True)
    models = sorted(set(outputs["generator"]) - {baseline})
    if not models:
        raise DataError(f"alpacaeval.model_outputs hold only the baseline '{baseline}'")
    by_model = {m: outputs[outputs["generator"] == m] for m in models}
    for model, mine in by_model.items():  # before any judging: every model answered every instruction
        ae.check_answered(reference, mine, model)
    samples = pd.concat([reference, outputs[outputs["generator"] != baseline]], ignore_index=True)
    judge = build_judge(a.judge)
    try:
        battles = policy_battles(
            samples.rename(columns={"instruction": "prompt"}), judge, pairs="baseline", baseline=baseline, seed=cfg.seed
        )
    finally:
        if hasattr(judge, "close"):
            judge.close()
    annotator = str(battles.attrs.get("judge", "prefgame"))
    per_model = {}
    for model in models:
        per_model[model] = ae.annotations_from_battles(
            battles, reference, by_model[model], model=model, baseline=baseline, annotator=annotator
        )
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
        ae.write_annotations(out.file(f"alpacaeval/{safe}/annotations.json"), per_model[model])
        ae.write_model_outputs(out.file(f"alpacaeval/{safe}/model_outputs.json"), by_model[model])
    return per_model


def arenahard_part(cfg: EvaluateConfig) -> ReportSection:
    from evaluation import arenahard as ah

    h = cfg.arenahard
    answers = ah.read_answers(h.answers) if h.answers else None
    return ah.arenahard_section(
        ah.read_judgments(h.judgments),
        h.baseline,
        answers=answers,
        control=h.style_control,
        weight=h.weight,
        first_game_only=h.first_game_only,
        reg=h.reg,
        n_bootstrap=cfg.n_bootstrap,
        ci=cfg.ci,
        seed=cfg.seed,
    )


def mtbench_part(cfg: EvaluateConfig) -> ReportSection:
    from evaluation import mtbench as mt

    return mt.mtbench_section(mt.read_votes(cfg.mtbench.judgments), mt.parse_pairs(cfg.mtbench.pairs))


def rewardbench_part(cfg: EvaluateConfig, out: RunDir) -> ReportSection:
    from evaluation import rewardbench as rb

    r = cfg.rewardbench
    if r.results:
        frame = read_table(r.results)
        if "subset" not in frame.columns:
            raise DataError(f"{r.results}: needs a 'subset' column")
        return rb.rewardbench_section(rb.rewardbench_scores(rb.correctness(frame), frame["subset"]))
    from prefgame.data.columns import load_pairs
    from prefgame.models.load import load_model

    sets = [load_pairs(r.data, r.split, skip_invalid=False)]
    if r.prior_sets:
        sets.append(load_pairs(r.prior_sets, r.prior_sets_split, skip_invalid=False))
    model = load_model(r.model, batch_size=r.batch_size)
    rows, correct, subsets = [], [], []
    for pairs in sets:
        c = rb.model_correctness(model, pairs.prompts, pairs.chosen, pairs.rejected)
        correct.append(c)
        subsets += list(pairs.subsets)
        rows += [{"subset": s, "results": int(v)} for s, v in zip(pairs.subsets, c)]
    write_jsonl(out.file("rewardbench_results.jsonl"), rows)
    return rb.rewardbench_section(rb.rewardbench_scores(np.concatenate(correct), subsets), model=r.model)


def hacking_part(cfg: EvaluateConfig, out: RunDir) -> ReportSection:
    """Best-of-n of ``hacking.pi0`` under proxies of a biased annotator
    (:func:`evaluation.reward_hacking.reward_hacking`)."""
    from evaluation.reward_hacking import reward_hacking

    h = cfg.hacking
    pools = None
    if h.pi0 != "demonstrator":
        from prefgame.game.lm_sampling import sample_texts
        from prefgame.lm import load_causal_lm, load_tokenizer

        model, tok = load_causal_lm(h.pi0), load_tokenizer(h.pi0)

        def pools(prompts: list[str]) -> list[list[str]]:
            repeated = [p for p in prompts for _ in range(h.pool)]
            texts = sample_texts(model, tok, repeated, max_new_tokens=h.max_new_tokens, seed=h.seed)
            return [texts[i : i + h.pool] for i in range(0, len(texts), h.pool)]

    policy = "the arena's demonstrator" if pools is None else f"`{h.pi0}`"
    return reward_hacking(h, h.arena.build(), out.path / "hacking", pools=pools, policy=policy).section


def _has_inputs(cfg: EvaluateConfig, part: str) -> bool:
    return {
        "winrate": bool(cfg.winrate.battles or cfg.winrate.samples),
        "agreement": bool(cfg.agreement.labels or cfg.agreement.arena_pairs),
        "alpacaeval": bool(cfg.alpacaeval.annotations or cfg.alpacaeval.model_outputs),
        "arenahard": bool(cfg.arenahard.judgments),
        "mtbench": bool(cfg.mtbench.judgments),
        "rewardbench": bool(cfg.rewardbench.data or cfg.rewardbench.model or cfg.rewardbench.results),
        "hacking": bool(cfg.hacking.pi0),
    }[part]


def check_inputs(cfg: EvaluateConfig, part: str) -> None:
    """Config mistakes of the benchmark part ``part``, before the job starts (one line each)."""
    if part == "alpacaeval":
        a = cfg.alpacaeval
        if bool(a.annotations) == bool(a.model_outputs):
            raise ConfigError(
                "alpacaeval needs alpacaeval.annotations=[FILE, ...] or alpacaeval.model_outputs=[FILE, ...]"
            )
        if a.model_outputs and not a.reference_outputs:
            raise ConfigError(
                "alpacaeval.model_outputs needs alpacaeval.reference_outputs=FILE (the baseline's outputs)"
            )
        if a.gamed and not a.instruction_difficulty:
            raise ConfigError("alpacaeval.gamed (LC v1) needs alpacaeval.instruction_difficulty=FILE as well")
    elif part == "arenahard":
        h = cfg.arenahard
        if not h.judgments:
            raise ConfigError(
                "arenahard needs arenahard.judgments=[FILE or FOLDER, ...] (model_judgment/<judge>/*.jsonl)"
            )
        from evaluation.arenahard import style_elements

        if style_elements(h.style_control) and not h.answers:
            raise ConfigError("arenahard.style_control needs arenahard.answers=[FILE or FOLDER, ...] (model_answer/)")
    elif part == "mtbench":
        if not cfg.mtbench.judgments:
            raise ConfigError("mtbench needs mtbench.judgments=[FILE, ...] (MT-Bench pairwise judgments)")
        from evaluation.mtbench import parse_pairs

        parse_pairs(cfg.mtbench.pairs)
    elif part == "hacking":
        pi0 = cfg.hacking.pi0
        if not pi0 or (pi0 != "demonstrator" and not Path(pi0).exists()):
            raise ConfigError(
                f"hacking needs hacking.pi0=demonstrator or a causal LM folder (e.g. runs/quickstart/pi0/model), "
                f"got '{pi0}'"
            )
    elif part == "rewardbench":
        r = cfg.rewardbench
        if r.results and (r.data or r.model):
            raise ConfigError(
                "give rewardbench.results=FILE, or rewardbench.data=... with rewardbench.model=..., not both"
            )
        if not r.results and not (r.data and r.model):
            raise ConfigError(
                "rewardbench needs rewardbench.data=PAIRS and rewardbench.model=PM (or rewardbench.results=FILE)"
            )


def run(cfg: EvaluateConfig, part: str = "report") -> dict[str, Any]:
    """Run ``part`` ("winrate", "agreement" or "report") and write the report; returns metrics.json."""
    if part not in PARTS:
        raise ConfigError(f"unknown evaluate part '{part}': use one of {', '.join(PARTS)}")
    wanted = [p for p in PARTS if p != "report" and (p == part or (part == "report" and _has_inputs(cfg, p)))]
    if not wanted:
        raise ConfigError(
            "evaluate report needs winrate.battles, winrate.samples, agreement.labels, agreement.arena_pairs, "
            "alpacaeval.annotations, arenahard.judgments, mtbench.judgments, rewardbench inputs or hacking.pi0"
        )
    for name in wanted:
        check_inputs(cfg, name)

    def body(out: RunDir, log) -> dict[str, Any]:
        out.start(cfg)
        sections, metrics = [], {"part": part}
        for name in wanted:
            if name == "winrate":
                section, metrics["winrate_inputs"] = winrate_part(cfg, out)
            elif name == "agreement":
                section = agreement_part(cfg, out)
            elif name == "alpacaeval":
                section = alpacaeval_part(cfg, out)
            elif name == "arenahard":
                section = arenahard_part(cfg)
            elif name == "mtbench":
                section = mtbench_part(cfg)
            elif name == "hacking":
                section = hacking_part(cfg, out)
            else:
                section = rewardbench_part(cfg, out)
            sections.append(section)
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
    sub = parser.add_subparsers(dest="part", metavar="{" + ",".join(PARTS) + "}", required=True)
    examples = {
        "winrate": "prefgame evaluate winrate winrate.battles=runs/arena/battles.jsonl winrate.baseline=demonstrator",
        "agreement": "prefgame evaluate agreement agreement.arena_pairs=1000 agreement.reference=gold",
        "alpacaeval": "prefgame evaluate alpacaeval 'alpacaeval.annotations=[results/my_model/annotations.json]' "
        "alpacaeval.instruction_difficulty=instruction_difficulty.csv "
        "'alpacaeval.gamed=[gpt4_1106_preview_verbose.json,gpt4_1106_preview_concise.json]'",
        "arenahard": "prefgame evaluate arenahard "
        "'arenahard.judgments=[data/arena-hard-v0.1/model_judgment/gpt-4-1106-preview]' "
        "'arenahard.answers=[data/arena-hard-v0.1/model_answer]' 'arenahard.style_control=[length,markdown]'",
        "mtbench": "prefgame evaluate mtbench 'mtbench.judgments=[human_judgments.json,gpt4_pair_judgments.json]'",
        "rewardbench": "prefgame evaluate rewardbench --model runs/pm-gpm rewardbench.data=reward-bench.jsonl",
        "hacking": "prefgame evaluate hacking hacking.pi0=runs/quickstart/pi0/model hacking.prompts=32",
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
        if part == "rewardbench":
            p.add_argument("--model", metavar="PM", help="the preference model (same as rewardbench.model=PM)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. n_bootstrap=500")


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if getattr(args, "model", None):
        overrides.append(f"rewardbench.model={args.model}")
    cfg = load_config(EvaluateConfig, args.config, overrides)
    check_output_paths(cfg)
    metrics = run(cfg, args.part)
    print(f"prefgame evaluate {args.part}: report in {Path(cfg.output_dir) / 'report.md'}")
    flagged = metrics.get("flagged")
    if flagged:
        print(f"  position bias: {', '.join(flagged['position_bias']) or 'none'}")
        print(f"  length bias:   {', '.join(flagged['length_bias']) or 'none'}")
    for model, wr in (metrics.get("win_rate_vs_baseline") or {}).items():
        print(f"  {model:<24} win rate vs baseline {wr:.3f}")
    if "alpacaeval" in metrics:
        ae = metrics["alpacaeval"]
        for model, lc in ae["length_controlled_winrate"].items():
            print(f"  {model:<24} AlpacaEval LC {lc:.1f} ({ae['glm']}), win rate {ae['win_rate'][model]:.1f}")
    if "arenahard" in metrics:
        ah = metrics["arenahard"]
        controlled = ah.get("style_controlled", {})
        for model, score in ah["score"].items():
            extra = f", style-controlled {controlled[model]:.1f}" if model in controlled else ""
            print(f"  {model:<24} Arena-Hard score {score:.1f}{extra}")
    for key, value in (metrics.get("mtbench_agreement") or {}).items():
        print(f"  {key:<44} agreement {value:.3f}")
    if "rewardbench" in metrics and metrics["rewardbench"]["score"] is not None:
        print(f"  RewardBench score {metrics['rewardbench']['score']:.1f}")
    return 0
