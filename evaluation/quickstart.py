"""``prefgame quickstart``: the whole toolkit on the embedded arena, end to end on a CPU.

Stages (each writes a sub-folder of ``output_dir``; with ``resume=true`` finished stages are kept):
1. ``data/``      the arena world and its data sets (SFT demonstrations, pairs, ratings, battles);
2. ``pi0/``       π0, a tiny Llama trained by SFT on the demonstrations, and its class distribution;
3. ``pm/``        BT, general (embedding) and gated preference models trained on the arena pairs;
4. ``labels.jsonl`` pairs of π0 responses labeled by the gold preference, the annotators, a biased
   judge and the trained preference models (the agreement matrix);
5. ``selfplay/<algorithm>/`` Nash self-play from π0 with the trained general preference model as oracle;
6. ``dpo/``, ``ppo/``  the baselines: offline DPO on the arena pairs, PPO against the BT reward model;
7. ``policies.jsonl`` every policy's responses to the same held-out prompts, judged by the gold
   preference and by the biased judge; exact class-level figures against the equilibrium π*;
8. ``report.md`` / ``report.html`` (figures embedded; ``figures/``, ``tables/`` as PNG, CSV, JSON).
Every figure in the report comes from this run. The job lives in ``evaluation`` because it orchestrates
every layer of prefgame and ends in an evaluation report (:mod:`evaluation.quickstart_report`); the
``prefgame`` command table (:mod:`prefgame.cli`) names it by module path and imports it only when
``quickstart`` is asked for, so prefgame itself never imports ``evaluation``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefgame.arena.job import ArenaConfig, ArenaJobConfig
from prefgame.arena.world import AnnotatorOracle, GoldOracle, class_name
from prefgame.config import param
from prefgame.game.lm_selfplay import ClassGame, class_figures, smoothed_class_distribution
from prefgame.judges import JudgeConfig
from prefgame.lm import load_causal_lm, load_tokenizer, sample
from prefgame.run import RunDir, overwrite_param, run_job, seed_everything, write_jsonl
from prefgame.train.engine import TrainConfig
from prefgame.train.selfplay.registry import load_algorithms
from prefgame.train.sft import SFTConfig, SFTDataConfig, SFTModelConfig

SELFPLAY_ALGORITHMS = tuple(load_algorithms())  # every registered self-play algorithm


@dataclass
class QuickstartSFT:
    max_steps: int = param(300, "SFT optimizer steps for π0")
    lr: float = param(3e-3, "SFT peak learning rate")
    batch_size: int = param(64, "SFT examples per step")
    hidden_size: int = param(128, "π0 hidden size")
    num_layers: int = param(4, "π0 layers")


@dataclass
class QuickstartConfig:
    output_dir: str = param("runs/quickstart", "where every stage and the report are written")
    resume: bool = param(False, "keep stages that already finished in output_dir and run the rest")
    overwrite: bool = overwrite_param()
    seed: int = param(0, "seed of training and sampling")
    num_threads: int = param(
        1,
        "CPU threads for PyTorch (0: PyTorch's default). One thread: the tiny models gain little from more, "
        "and on a machine shared with other work several threads run several times slower",
    )
    arena: ArenaConfig = param(ArenaConfig, "the world")
    sft_examples: int = param(4000, "SFT demonstrations")
    pairs: int = param(4000, "gold-labeled pairs exported with the world (preference-model and DPO data)")
    sft: QuickstartSFT = param(QuickstartSFT, "π0 training")
    samples: int = param(2000, "π0 responses sampled to measure its class distribution")
    label_pairs: int = param(1000, "pairs of π0 responses labeled by every source (the agreement matrix)")
    selfplay: list[str] = param(["nash_md", "sppo", "inpo"], f"self-play algorithms to run, of {SELFPLAY_ALGORITHMS}")
    tau: float = param(0.05, "KL regularization τ of the arena game that π* and the duality gap refer to")
    baselines: bool = param(True, "train the DPO and PPO baselines")
    eval_prompts: int = param(300, "held-out prompts every policy answers for the final comparison")
    max_new_tokens: int = param(40, "sampling length limit (arena responses have ≤ 34 words)")
    llm_judge: bool = param(
        False, "add an LLM judge over an OpenAI-compatible API (settings in judge.*) to the agreement and win rates"
    )
    judge: JudgeConfig = param(JudgeConfig, "the LLM judge (key from $OPENAI_API_KEY or judge.api_key, never written)")

    def __post_init__(self) -> None:
        unknown = [a for a in self.selfplay if a not in SELFPLAY_ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown self-play algorithm {unknown}; choose from {list(SELFPLAY_ALGORITHMS)}")


# the stage folders and files of a run: a fresh start removes them, and a finished stage among them is a
# finished run that only overwrite=true replaces
OUTPUTS = (
    "data",
    "pi0",
    "pm",
    "selfplay",
    "dpo",
    "ppo",
    "samples.jsonl",
    "labels.jsonl",
    "policies.jsonl",
    "report.md",
    "report.html",
)


def _done(path: Path) -> bool:
    return (path / "metrics.json").exists()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run(cfg: QuickstartConfig) -> dict:
    return run_job(cfg.output_dir, lambda out, log: _run(cfg, out, log))


class _Clock:
    """Wall time per stage, for the report's timing table."""

    def __init__(self) -> None:
        self.start, self.seconds = time.perf_counter(), {}

    def stage(self, name: str, t0: float) -> None:
        self.seconds[name] = time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start


def _run(cfg: QuickstartConfig, out: RunDir, log) -> dict:
    clock = _Clock()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    earlier = out.path if out.file("config.yaml").exists() else None  # what resume=true continues
    out.start(cfg, resume="auto" if cfg.resume else False, checkpoint=earlier, outputs=OUTPUTS)
    seed_everything(cfg.seed)
    arena = cfg.arena.build()
    n_stages = 8
    rng = np.random.default_rng(cfg.seed + 1)

    # 1. the world and its data sets
    t = time.perf_counter()
    data_dir = out.file("data")
    if not (cfg.resume and _done(data_dir)):
        from prefgame.arena import job as arena_job

        log.info(f"stage 1/{n_stages}: building the arena and exporting its data sets")
        arena_job.run(
            ArenaJobConfig(output_dir=str(data_dir), arena=cfg.arena, sft_examples=cfg.sft_examples, pairs=cfg.pairs)
        )
    clock.stage("arena", t)

    # 2. π0 by SFT, and its class distribution from samples
    t = time.perf_counter()
    pi0_dir = out.file("pi0")
    if not (cfg.resume and _done(pi0_dir)):
        from prefgame.train import sft

        log.info(f"stage 2/{n_stages}: training π0 by SFT on the demonstrations ({cfg.sft.max_steps} steps)")
        sft.run(_sft_config(cfg, data_dir, pi0_dir))
    pi0_path = str(pi0_dir / "model")
    model, tok = load_causal_lm(pi0_path), load_tokenizer(pi0_path)
    prompts = [p.text for p in arena.sample_prompts(cfg.samples, rng)]
    responses = sample(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)
    _, classes = arena.classify(prompts, responses)
    write_jsonl(
        out.file("samples.jsonl"),
        [{"prompt": p, "response": r, "class": class_name(int(c))} for p, r, c in zip(prompts, responses, classes)],
    )
    pi0_raw = arena.class_distribution(prompts, responses)
    rho0 = smoothed_class_distribution(arena, prompts, responses, prior=2.0)
    clock.stage("sft", t)

    # 3. preference models
    t = time.perf_counter()
    from prefgame.models import load_preference_model
    from prefgame.train.pm_arena import rows_as_dicts, train_arena_preference_models

    pm_dir = out.file("pm")
    if cfg.resume and _done(pm_dir):
        pm_rows = _read_json(pm_dir / "metrics.json")["models"]
    else:
        log.info(f"stage 3/{n_stages}: training BT, general (GPM) and gated preference models")
        pm_rows = rows_as_dicts(
            train_arena_preference_models(
                pm_dir, pairs_path=data_dir / "pairs.jsonl", ratings_path=data_dir / "ratings.jsonl"
            )
        )
        RunDir(pm_dir).write_metrics({"models": pm_rows})
    pms = {r["model"]: load_preference_model(r["model_dir"]) for r in pm_rows}
    by_kind = {r["kind"]: r for r in pm_rows}
    clock.stage("preference models", t)

    # 4. labels of π0 response pairs from every source
    t = time.perf_counter()
    from evaluation.arena import BIASED_JUDGE, arena_label_table

    log.info(f"stage 4/{n_stages}: labeling {cfg.label_pairs} pairs of π0 responses by every source")
    pair_prompts = [p.text for p in arena.sample_prompts(cfg.label_pairs, rng)]
    doubled = sample(model, tok, pair_prompts * 2, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 2)
    judge = None
    if cfg.llm_judge:
        from prefgame.judges import LLMJudge

        judge = LLMJudge(cfg.judge, seed=cfg.seed)
    oracles = {**pms, **({judge.name: judge} if judge else {})}
    labels = arena_label_table(
        arena, pair_prompts, doubled[: cfg.label_pairs], doubled[cfg.label_pairs :], seed=cfg.seed, oracles=oracles
    )
    write_jsonl(out.file("labels.jsonl"), labels.to_dict(orient="records"))
    clock.stage("labels", t)

    # 5. Nash self-play with the general preference model as oracle
    from prefgame.train.selfplay import QUICKSTART_OVERRIDES, run_selfplay

    policies: dict[str, str] = {"π0": pi0_path}
    runs: dict[str, dict] = {}
    gpm = pms[by_kind["gpm"]["model"]]
    for i, algo in enumerate(cfg.selfplay):
        t = time.perf_counter()
        sp_dir = out.file("selfplay") / algo
        if cfg.resume and _done(sp_dir):
            runs[algo] = _read_json(sp_dir / "metrics.json")
        else:
            log.info(f"stage 5/{n_stages}: self-play {algo} ({i + 1}/{len(cfg.selfplay)}) from π0 against the GPM")
            runs[algo] = run_selfplay(
                pi0_path,
                gpm,
                algorithm=algo,
                output_dir=sp_dir,
                overrides=[*QUICKSTART_OVERRIDES, f"train.seed={cfg.seed}", f"game.tau={cfg.tau}"],
                reference_classes=rho0,
            )
        policies[algo] = str(sp_dir / "model")
        clock.stage(f"selfplay {algo}", t)

    # 6. baselines
    if cfg.baselines:
        from prefgame.train.dpo import train_dpo_arena
        from prefgame.train.ppo import train_ppo_arena

        t = time.perf_counter()
        dpo_dir = out.file("dpo")
        if not (cfg.resume and _done(dpo_dir)):
            log.info(f"stage 6/{n_stages}: offline DPO from π0 on the exported arena pairs")
            train_dpo_arena(
                pi0_path, data_dir, dpo_dir, mode="offline", overrides=[f"train.seed={cfg.seed}"], eval_prompts=0
            )
        policies["dpo"] = str(dpo_dir / "model")
        clock.stage("dpo", t)
        t = time.perf_counter()
        ppo_dir = out.file("ppo")
        if not (cfg.resume and _done(ppo_dir)):
            log.info(f"stage 6/{n_stages}: PPO from π0 against the BT reward model")
            train_ppo_arena(pi0_path, by_kind["bt"]["model_dir"], ppo_dir, overrides=[f"train.seed={cfg.seed}"])
        policies["ppo"] = str(ppo_dir / "model")
        clock.stage("ppo", t)

    # 7. every policy on the same held-out prompts
    t = time.perf_counter()
    log.info(f"stage 7/{n_stages}: sampling every policy on {cfg.eval_prompts} held-out prompts and judging them")
    eval_prompts = [p.text for p in arena.sample_prompts(cfg.eval_prompts, np.random.default_rng(cfg.seed + 7))]
    rows, per_policy = [], {}
    for name, path in policies.items():
        m = model if name == "π0" else load_causal_lm(path)
        texts = sample(m, tok, eval_prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 3)
        rows += [{"prompt": p, "output": y, "generator": name} for p, y in zip(eval_prompts, texts)]
        per_policy[name] = texts
    write_jsonl(out.file("policies.jsonl"), rows)
    samples_frame = pd.DataFrame(rows)

    game = ClassGame(arena.gold_matrix, rho0, arena.type_probs, cfg.tau)
    exact: dict[str, dict] = {}
    for name, texts in per_policy.items():
        pi = pi0_raw if name == "π0" else arena.class_distribution(eval_prompts, texts)
        exact[name] = class_figures(arena, pi, pi0_raw, game)
    exact["π* (exact)"] = class_figures(arena, game.pi_star, pi0_raw, game)
    clock.stage("policies", t)

    # 8. report
    from evaluation.quickstart_report import QuickstartResults, write_quickstart_report

    log.info(f"stage 8/{n_stages}: writing the report")
    results = QuickstartResults(
        cfg=cfg,
        arena=arena,
        pi0_raw=pi0_raw,
        sft_metrics=_read_json(pi0_dir / "metrics.json"),
        samples=(prompts, responses, classes),
        pm_rows=pm_rows,
        labels=labels,
        selfplay=runs,
        exact=exact,
        policy_samples=samples_frame,
        biased_judge=AnnotatorOracle(arena, BIASED_JUDGE),
        gold=GoldOracle(arena),
        llm_judge=judge,
    )
    metrics = write_quickstart_report(out.path, results, {**clock.seconds, "total": clock.total()})
    out.write_metrics(metrics)
    print(summary_table(metrics))
    log.info(f"quickstart done in {metrics['seconds']['total']:.0f}s: report in {metrics['report']}")
    return metrics


def _sft_config(cfg: QuickstartConfig, data_dir: Path, pi0_dir: Path) -> SFTConfig:
    return SFTConfig(
        output_dir=str(pi0_dir),
        resume="auto" if cfg.resume else False,  # an unfinished π0 continues from its checkpoint if it has one
        model=SFTModelConfig(
            tokenizer=str(data_dir / "tokenizer"), hidden_size=cfg.sft.hidden_size, num_layers=cfg.sft.num_layers
        ),
        data=SFTDataConfig(path=str(data_dir / "sft.jsonl"), max_length=64),
        train=TrainConfig(
            seed=cfg.seed,
            lr=cfg.sft.lr,
            max_steps=cfg.sft.max_steps,
            batch_size=cfg.sft.batch_size,
            micro_batch_size=cfg.sft.batch_size,
            eval_every=0,
            save_every=100,
            log_every=10,
        ),
    )


def summary_table(metrics: dict) -> str:
    lines = [
        "",
        "prefgame quickstart summary",
        f"  {'policy':<14}{'gold win vs π0':>16}{'exploitability':>16}{'gap':>10}{'TV to π*':>10}",
    ]
    for name, m in metrics["policies"].items():
        figures = (m["gold_win_rate_vs_ref"], m["exploitability"], m["gap"], m["tv_to_equilibrium"])
        lines.append(f"  {name:<14}" + "".join(f"{v:>{w}.3f}" for v, w in zip(figures, (16, 16, 10, 10))))
    for r in metrics["preference_models"]:
        lines.append(
            f"  PM {r['model']:<11} held-out accuracy {r['expected_accuracy']:.3f} (Bayes {r['bayes_accuracy']:.3f})"
        )
    lines.append(f"  total time {metrics['seconds']['total']:.0f} s; report: {metrics['report']}")
    return "\n".join(lines)
