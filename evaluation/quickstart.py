"""``prefgame quickstart``: the whole toolkit on the embedded arena, end to end on a CPU.

Stages (each writes a sub-folder of ``output_dir``; with ``resume=true`` finished stages are kept):
1. ``data/``      the arena world and its data sets (SFT demonstrations, pairs, ratings, battles);
2. ``pi0/``       π0, a tiny Llama trained by SFT on the demonstrations, and its class distribution;
3. ``pm/``        BT, general (embedding) and gated preference models trained on the arena pairs;
4. ``labels.jsonl`` pairs of π0 responses labeled by the gold preference, the annotators, a biased
   judge and the trained preference models (the agreement matrix);
5. ``selfplay/<algorithm>/`` Nash self-play from π0 with the trained general preference model as oracle;
6. ``dpo/``, ``online_dpo/``, ``ppo/``  the baselines at self-play's budget: offline DPO on the arena pairs,
   online DPO against the trained GPM, PPO against the BT reward model;
7. ``policies.jsonl`` every policy's responses to the same held-out prompts, judged by the gold
   preference and by the biased judge; exact class-level figures against the equilibrium π*;
8. ``report.md`` / ``report.html`` (figures embedded; ``figures/``, ``tables/`` as PNG, CSV, JSON).
Every figure in the report comes from this run. The job lives in ``evaluation`` because it orchestrates
every layer of prefgame and ends in an evaluation report (:mod:`evaluation.quickstart_report`); the
``prefgame`` command table (:mod:`prefgame.cli`) names it by module path and imports it only when
``quickstart`` is asked for, so prefgame itself never imports ``evaluation``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from evaluation.reward_hacking import HackingConfig
from prefgame.arena.job import ArenaConfig, ArenaJobConfig
from prefgame.arena.world import AnnotatorOracle, GoldOracle, class_name
from prefgame.config import param
from prefgame.game.lm_sampling import sample_texts as sample
from prefgame.game.lm_selfplay import ClassGame, class_figures, smoothed_class_distribution
from prefgame.judges import JudgeConfig
from prefgame.lm import load_causal_lm, load_tokenizer
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
    micro_batch_size: int = param(
        16, "SFT examples per forward pass: each step's examples sorted by length and cut into these (less padding)"
    )
    hidden_size: int = param(128, "π0 hidden size")
    num_layers: int = param(4, "π0 layers")


@dataclass
class QuickstartBudget:
    """One budget for every policy-training run from π0, so that self-play and the baselines compare at equal
    cost: the same iterations (rounds), prompts per iteration and policy samples per prompt."""

    iterations: int = param(12, "iterations of self-play, rounds of online DPO, iterations of PPO", ge=1)
    prompts: int = param(32, "prompts per iteration", ge=1)
    samples: int = param(4, "policy samples per prompt per iteration (K of self-play and online DPO)", ge=2)
    reference_samples: int = param(
        4,
        "π0 samples per prompt among self-play's pairs (M, for the algorithms that take them); online DPO and PPO "
        "draw as many more policy samples instead, so every run samples prompts × (K + M) responses per iteration",
        ge=0,
    )
    steps: int = param(
        8,
        "optimizer steps per iteration of self-play and online DPO (PPO takes its rollout / mini-batch × 2 "
        "epochs: 8 at the default budget)",
        ge=1,
    )


@dataclass
class QuickstartHacking(HackingConfig):
    """The reward-hacking stage at the quickstart's size: 8 prompts × 256 samples of π0 (about 20 CPU-s)."""

    prompts: int = param(8, "prompts with a pool of π0 samples each", ge=1)
    head_steps: int = param(200, "optimizer steps of every proxy's head", ge=1)


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
    worlds: list[str] = param(
        ["cyclic", "transitive"],
        "the worlds to run the pipeline in: cyclic (the arena's cycle c) and transitive (c = 0, where Bradley–Terry "
        "is the true model: the control); the first one's preference models, labels and win rates fill the report",
    )
    selfplay: list[str] = param(
        ["inpo"],
        f"self-play algorithms to run, of {SELFPLAY_ALGORITHMS} (inpo: with π0 samples among its pairs and the tail "
        "average of its iterates as the policy, configs/selfplay/inpo-anchored.yaml at the quickstart's budget)",
    )
    budget: QuickstartBudget = param(QuickstartBudget, "the budget of every policy-training run from π0")
    selfplay_overrides: list[str] = param(
        ["game.eta=2", "train.lr=5e-4"],
        "key=value settings of every self-play run, after its algorithm's preset and the budget (default: the "
        "anchored INPO step of configs/selfplay/inpo-anchored.yaml)",
    )
    tau: float = param(0.05, "KL regularization τ of the arena game that π* and the duality gap refer to")
    baselines: bool = param(True, "train the baselines: offline DPO, online DPO against the GPM, PPO against BT")
    eval_prompts: int = param(300, "held-out prompts every policy answers for the final comparison")
    max_new_tokens: int = param(40, "sampling length limit (arena responses have ≤ 34 words)")
    llm_judge: bool = param(
        False, "add an LLM judge over an OpenAI-compatible API (settings in judge.*) to the agreement and win rates"
    )
    judge: JudgeConfig = param(JudgeConfig, "the LLM judge (key from $OPENAI_API_KEY or judge.api_key, never written)")
    reward_hacking: bool = param(
        True, "best-of-n of π0 under proxies trained on a biased annotator's labels of the label pairs (hacking.*)"
    )
    hacking: QuickstartHacking = param(QuickstartHacking, "the reward-hacking stage (evaluation/reward_hacking.py)")

    def __post_init__(self) -> None:
        if not self.worlds or any(w not in ("cyclic", "transitive") for w in self.worlds):
            raise ValueError(f"worlds must list cyclic and/or transitive, got {self.worlds}")
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
    "online_dpo",
    "ppo",
    "transitive",
    "samples.jsonl",
    "labels.jsonl",
    "hacking",
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
    """Wall and CPU time per stage, for the report's timing table. A stage's CPU time is the process's
    (every thread, user and system) since the previous stage ended: the stages run one after another, so
    they add up to the run's, and on a busy machine they are what the wall times would be on a free core."""

    def __init__(self) -> None:
        self.start, self.seconds = time.perf_counter(), {}
        self.cpu_start = self._cpu = time.process_time()
        self.cpu_seconds: dict[str, float] = {}

    def stage(self, name: str, t0: float) -> None:
        self.seconds[name] = time.perf_counter() - t0
        now = time.process_time()
        self.cpu_seconds[name], self._cpu = now - self._cpu, now

    def total(self) -> float:
        return time.perf_counter() - self.start

    def cpu_total(self) -> float:
        return time.process_time() - self.cpu_start


@dataclass
class World:
    """One world's stages: its preference models, self-play runs and baselines, and every policy's exact
    class-level figures against its equilibrium π*."""

    name: str
    arena: Any
    pm_rows: list[dict]
    pms: dict[str, Any]
    selfplay: dict[str, dict]
    policies: dict[str, str]
    exact: dict[str, dict]
    samples: pd.DataFrame


def _run(cfg: QuickstartConfig, out: RunDir, log) -> dict:
    clock = _Clock()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    earlier = out.path if out.file("config.yaml").exists() else None  # what resume=true continues
    out.start(cfg, resume="auto" if cfg.resume else False, checkpoint=earlier, outputs=OUTPUTS)
    seed_everything(cfg.seed)
    arena = cfg.arena.build()
    rng = np.random.default_rng(cfg.seed + 1)

    # 1–2. the world's data sets, and π0 by SFT with its class distribution from samples (both worlds
    # share them: the demonstrations do not depend on the gold preference)
    t = time.perf_counter()
    data_dir = _export(cfg, cfg.arena, out.file("data"), log)
    clock.stage("arena", t)
    t = time.perf_counter()
    pi0_dir = out.file("pi0")
    if not (cfg.resume and _done(pi0_dir)):
        from prefgame.train import sft

        log.info(f"stage 2/{N_STAGES}: training π0 by SFT on the demonstrations ({cfg.sft.max_steps} steps)")
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

    worlds: dict[str, World] = {}
    for name in cfg.worlds:
        world_cfg = dataclasses.replace(cfg.arena, cycle=0.0) if name == "transitive" else cfg.arena
        world_out = out.path if name == "cyclic" else out.file(name)
        world_data = data_dir if name == "cyclic" else _export(cfg, world_cfg, world_out / "data", log)
        worlds[name] = _world(cfg, name, world_cfg, world_out, world_data, (pi0_path, model, tok),
                              (pi0_raw, rho0), clock, log)  # fmt: skip
    main_world = worlds[cfg.worlds[0]]

    # 4. labels of π0 response pairs from every source (the first world's)
    t = time.perf_counter()
    from evaluation.arena import BIASED_JUDGE, arena_label_table

    log.info(f"stage 4/{N_STAGES}: labeling {cfg.label_pairs} pairs of π0 responses by every source")
    pair_prompts = [p.text for p in arena.sample_prompts(cfg.label_pairs, rng)]
    doubled = sample(model, tok, pair_prompts * 2, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 2)
    judge = None
    if cfg.llm_judge:
        from prefgame.judges import LLMJudge

        judge = LLMJudge(cfg.judge, seed=cfg.seed)
    oracles = {**main_world.pms, **({judge.name: judge} if judge else {})}
    labels = arena_label_table(
        main_world.arena, pair_prompts, doubled[: cfg.label_pairs], doubled[cfg.label_pairs :], seed=cfg.seed,
        oracles=oracles,
    )  # fmt: skip
    write_jsonl(out.file("labels.jsonl"), labels.to_dict(orient="records"))
    clock.stage("labels", t)
    t = time.perf_counter()
    hacking = _reward_hacking(cfg, main_world.arena, labels, (model, tok), out.file("hacking"), log)
    clock.stage("reward hacking", t)

    # 8. report
    from evaluation.quickstart_report import QuickstartResults, write_quickstart_report

    log.info(f"stage 8/{N_STAGES}: writing the report")
    results = QuickstartResults(
        cfg=cfg,
        arena=main_world.arena,
        pi0_raw=pi0_raw,
        sft_metrics=_read_json(pi0_dir / "metrics.json"),
        samples=(prompts, responses, classes),
        pm_rows=main_world.pm_rows,
        labels=labels,
        selfplay=main_world.selfplay,
        exact=main_world.exact,
        policy_samples=main_world.samples,
        biased_judge=AnnotatorOracle(main_world.arena, BIASED_JUDGE),
        gold=GoldOracle(main_world.arena),
        llm_judge=judge,
        hacking=hacking,
        worlds={
            name: {"exact": w.exact, "selfplay": w.selfplay, "cycle": w.arena.spec.cycle} for name, w in worlds.items()
        },
    )
    metrics = write_quickstart_report(
        out.path, results, {**clock.seconds, "total": clock.total()},
        cpu_seconds={**clock.cpu_seconds, "total": clock.cpu_total()},
    )  # fmt: skip
    out.write_metrics(metrics)
    print(summary_table(metrics))
    log.info(f"quickstart done in {metrics['seconds']['total']:.0f}s: report in {metrics['report']}")
    return metrics


N_STAGES = 8


def _export(cfg: QuickstartConfig, arena_cfg: ArenaConfig, data_dir: Path, log) -> Path:
    """Stage 1: the world's data sets in ``data_dir`` (kept on resume)."""
    if not (cfg.resume and _done(data_dir)):
        from prefgame.arena import job as arena_job

        log.info(f"stage 1/{N_STAGES}: building the arena (cycle {arena_cfg.cycle}) and exporting its data sets")
        arena_job.run(
            ArenaJobConfig(output_dir=str(data_dir), arena=arena_cfg, sft_examples=cfg.sft_examples, pairs=cfg.pairs)
        )
    return data_dir


def _world(
    cfg: QuickstartConfig, name: str, world_cfg: ArenaConfig, out: Path, data_dir: Path, pi0, pi0_classes, clock, log
) -> World:
    """Stages 3, 5, 6 and 7 in one world: preference models on its pairs, self-play against its GPM, the
    baselines (offline DPO on its pairs, PPO against its BT reward), and every policy measured exactly."""
    from prefgame.models import load_preference_model
    from prefgame.train.pm_arena import KINDS, ArenaPMConfig, rows_as_dicts, train_arena_preference_models
    from prefgame.train.selfplay import run_selfplay

    pi0_path, model, tok = pi0
    pi0_raw, rho0 = pi0_classes
    arena = world_cfg.build()
    t = time.perf_counter()
    pm_dir = out / "pm"
    if cfg.resume and _done(pm_dir):
        pm_rows = _read_json(pm_dir / "metrics.json")["models"]
    else:
        kinds = KINDS if name == cfg.worlds[0] else ("bt", "gpm")  # the report's world gets every kind
        log.info(f"stage 3/{N_STAGES} ({name} world): training the {', '.join(kinds)} preference models")
        trained = train_arena_preference_models(
            pm_dir, pairs_path=data_dir / "pairs.jsonl", ratings_path=data_dir / "ratings.jsonl",
            cfg=ArenaPMConfig(arena=world_cfg), kinds=kinds,
        )  # fmt: skip
        pm_rows = rows_as_dicts(trained)
        RunDir(pm_dir).write_metrics({"models": pm_rows})
    pms = {r["model"]: load_preference_model(r["model_dir"]) for r in pm_rows}
    by_kind = {r["kind"]: r for r in pm_rows}
    clock.stage(f"preference models ({name})", t)

    policies: dict[str, str] = {"π0": pi0_path}
    runs: dict[str, dict] = {}
    for i, algo in enumerate(cfg.selfplay):
        t = time.perf_counter()
        sp_dir = out / "selfplay" / algo
        if cfg.resume and _done(sp_dir):
            runs[algo] = _read_json(sp_dir / "metrics.json")
        else:
            log.info(f"stage 5/{N_STAGES} ({name} world): self-play {algo} ({i + 1}/{len(cfg.selfplay)}) vs the GPM")
            runs[algo] = run_selfplay(
                pi0_path, pms[by_kind["gpm"]["model"]], algorithm=algo, output_dir=sp_dir,
                overrides=[*_selfplay_overrides(cfg, algo), *_world_overrides(cfg, arena)], reference_classes=rho0,
            )  # fmt: skip
        policies[algo] = str(sp_dir / "model")
        clock.stage(f"selfplay {algo} ({name})", t)
    if cfg.baselines:
        pm_dirs = {kind: r["model_dir"] for kind, r in by_kind.items()}
        policies.update(_baselines(cfg, name, arena, out, data_dir, pi0_path, pm_dirs, clock, log))

    # 7. every policy on the same held-out prompts, measured exactly in this world
    t = time.perf_counter()
    log.info(f"stage 7/{N_STAGES} ({name} world): sampling every policy on {cfg.eval_prompts} held-out prompts")
    eval_prompts = [p.text for p in arena.sample_prompts(cfg.eval_prompts, np.random.default_rng(cfg.seed + 7))]
    rows, per_policy = [], {}
    for policy, path in policies.items():
        m = model if policy == "π0" else load_causal_lm(path)
        texts = sample(m, tok, eval_prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 3)
        rows += [{"prompt": p, "output": y, "generator": policy} for p, y in zip(eval_prompts, texts)]
        per_policy[policy] = texts
    write_jsonl(out / "policies.jsonl", rows)
    game = ClassGame(arena.gold_matrix, rho0, arena.type_probs, cfg.tau)
    exact: dict[str, dict] = {}
    for policy, texts in per_policy.items():
        pi = pi0_raw if policy == "π0" else arena.class_distribution(eval_prompts, texts)
        exact[policy] = {**class_figures(arena, pi, pi0_raw, game), "style": _style_marginal(pi, arena)}
    exact["π* (exact)"] = {
        **class_figures(arena, game.pi_star, pi0_raw, game),
        "style": _style_marginal(game.pi_star, arena),
    }
    clock.stage(f"policies ({name})", t)
    return World(name, arena, pm_rows, pms, runs, policies, exact, pd.DataFrame(rows))


def _reward_hacking(cfg: QuickstartConfig, arena, labels: pd.DataFrame, pi0, out: Path, log):
    """Stage 4b: proxies trained on the biased annotator's labels of the label pairs (π0's responses), and
    best-of-n of π0 under each on ``hacking.prompts`` prompts × ``hacking.pool`` samples; its report section."""
    if not cfg.reward_hacking:
        return None
    from evaluation.reward_hacking import reward_hacking

    model, tok = pi0
    n = cfg.hacking.pool
    log.info(
        f"stage 4b/{N_STAGES}: reward hacking: best-of-n of π0 ({cfg.hacking.prompts} prompts × {n}) under proxies"
    )

    def pools(prompts: list[str]) -> list[list[str]]:
        texts = sample(model, tok, [p for p in prompts for _ in range(n)], max_new_tokens=cfg.max_new_tokens,
                       seed=cfg.seed + 9)  # fmt: skip
        return [texts[i : i + n] for i in range(0, len(texts), n)]

    pairs = (list(labels["prompt"]), list(labels["response_a"]), list(labels["response_b"]))
    result = reward_hacking(cfg.hacking, arena, out, pools=pools, policy="the quickstart's π0", pairs=pairs)
    log.info(f"reward hacking: {result.cpu_seconds:.1f} CPU-s")
    return result


def _baselines(cfg, name: str, arena, out: Path, data_dir: Path, pi0_path: str, pm_dirs: dict, clock, log) -> dict:
    """Stage 6: offline DPO on the world's pairs, online DPO against its GPM and PPO against its BT reward
    model, from π0; the online runs at the self-play budget (:class:`QuickstartBudget`)."""
    from prefgame.train.dpo import train_dpo_arena
    from prefgame.train.ppo import train_ppo_arena

    b, world = cfg.budget, _world_overrides(cfg, arena)
    per_prompt = b.samples + b.reference_samples  # responses sampled per prompt and iteration, as self-play's
    mini = math.gcd(b.prompts * per_prompt, 64)  # PPO's sequences per optimizer step: 64 where they divide the batch
    # offline DPO and PPO: each step's sequences sorted by length and cut into micro-batches of 16 (less
    # padding, the same gradient); no measurements of their own (the report measures every policy itself)
    offline = ["train.micro_batch_size=16", "train.eval_every=0", *world]
    runs = {
        "dpo": lambda d: train_dpo_arena(pi0_path, data_dir, d, mode="offline", overrides=offline, eval_prompts=0),
        "online_dpo": lambda d: train_dpo_arena(
            pi0_path,
            data_dir,
            d,
            mode="online",
            eval_prompts=0,
            overrides=[
                "oracle.kind=model",
                f"oracle.path={pm_dirs['gpm']}",
                f"online.rounds={b.iterations}",
                f"sampling.prompts_per_iteration={b.prompts}",
                f"sampling.samples_per_prompt={per_prompt}",
                f"online.steps_per_round={b.steps}",
                "online.length_groups=4",
                "train.warmup_steps=0",
                *world,
            ],
        ),  # fmt: skip
        "ppo": lambda d: train_ppo_arena(
            pi0_path,
            pm_dirs["bt"],
            d,
            overrides=[
                f"train.iterations={b.iterations}",
                f"train.rollout_batch_size={b.prompts * per_prompt}",
                f"train.mini_batch_size={mini}",
                f"train.micro_batch_size={math.gcd(mini, 16)}",
                "eval.prompts=0",
                *world,
            ],
        ),  # fmt: skip
    }
    what = {"dpo": "offline DPO on the exported arena pairs", "online_dpo": "online DPO against the GPM",
            "ppo": "PPO against the BT reward model"}  # fmt: skip
    paths = {}
    for policy, train_it in runs.items():
        t, run_dir = time.perf_counter(), out / policy
        if not (cfg.resume and _done(run_dir)):
            log.info(f"stage 6/{N_STAGES} ({name} world): {what[policy]}, from π0")
            train_it(run_dir)
        clock.stage(f"{policy} ({name})", t)
        paths[policy] = str(run_dir / "model")
    return paths


def _world_overrides(cfg: QuickstartConfig, arena) -> list[str]:
    """The settings every policy-training run of a world shares: its seed and its arena."""
    return [
        f"train.seed={cfg.seed}",
        f"arena.cycle={arena.spec.cycle}",
        f"arena.demonstrator_style={list(cfg.arena.demonstrator_style)}",
    ]


def _selfplay_overrides(cfg: QuickstartConfig, algorithm: str) -> list[str]:
    """Self-play at the quickstart's budget: π0 samples among the pairs for the algorithms that take them (the
    others draw as many more policy samples), the average of the second half's iterates as the policy,
    measured at the middle and the end on 120 held-out prompts; then ``selfplay_overrides``."""
    from prefgame.train.selfplay import ALGORITHMS

    b = cfg.budget
    m = b.reference_samples if ALGORITHMS[algorithm].anchors else 0
    return [
        f"train.iterations={b.iterations}",
        f"sampling.prompts_per_iteration={b.prompts}",
        f"sampling.samples_per_prompt={b.samples + b.reference_samples - m}",
        f"sampling.reference_samples_per_prompt={m}",
        f"train.steps_per_iteration={b.steps}",
        "train.batch_size=128",
        "train.micro_batch_size=128",
        "train.length_groups=4",
        "train.warmup_steps=0",
        "train.schedule=constant",
        f"train.average_from={b.iterations // 2}",
        f"eval.every={max(1, b.iterations // 2)}",
        "eval.prompts=120",
        "eval.reference_samples_per_prompt=2",
        f"game.tau={cfg.tau}",
        *cfg.selfplay_overrides,
    ]


def _style_marginal(pi: torch.Tensor, arena) -> list[float]:
    """The style shares (formal, casual, poetic) of a class-level policy (T, C), averaged over prompt types."""
    avg = (pi.double() * arena.type_probs[:, None]).sum(0)  # (C,)
    return [float(avg[torch.from_numpy(arena.class_styles == s)].sum()) for s in range(3)]


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
            micro_batch_size=cfg.sft.micro_batch_size,
            eval_every=0,
            save_every=100,
            log_every=10,
        ),
    )


def summary_table(metrics: dict) -> str:
    lines = ["", "prefgame quickstart summary"]
    header = f"  {'policy':<14}{'gold win vs π0':>16}{'exploitability':>16}{'  w/o cycle':>12}{'TV to π*':>10}"
    for world, policies in (metrics.get("worlds") or {"": metrics["policies"]}).items():
        lines += [f"  {world} world" if world else "", header]
        for name, m in policies.items():
            figures = (
                m["gold_win_rate_vs_ref"],
                m["exploitability"],
                m["exploitability_transitive"],
                m["tv_to_equilibrium"],
            )
            lines.append(f"  {name:<14}" + "".join(f"{v:>{w}.3f}" for v, w in zip(figures, (16, 16, 12, 10))))
    for r in metrics["preference_models"]:
        lines.append(
            f"  PM {r['model']:<11} held-out accuracy {r['expected_accuracy']:.3f} (Bayes {r['bayes_accuracy']:.3f})"
        )
    cpu = metrics.get("cpu_seconds", {}).get("total")
    lines.append(
        f"  total time {metrics['seconds']['total']:.0f} s" + (f" (CPU {cpu:.0f} s)" if cpu is not None else "")
        + f"; report: {metrics['report']}"
    )  # fmt: skip
    return "\n".join(line for line in lines if line)
