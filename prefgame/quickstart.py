"""``prefgame quickstart``: the whole pipeline on the embedded arena, end to end on a CPU.

Stages (each writes a sub-folder of ``output_dir``; with ``resume=true`` finished stages are kept):
1. ``data/``    the arena world and its data sets (SFT demonstrations, pairs, ratings, battles);
2. ``pi0/``     π0, a tiny Llama trained by SFT on the demonstrations;
3. ``samples.jsonl``  responses sampled from π0, their feature classes and π0's class distribution;
4. ``labels.jsonl``   pairs of π0 responses labeled by the gold preference and every annotator;
5. ``report.md``      what the world is, π0's class distribution, samples and label statistics.
Every figure in the report comes from this run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefgame.arena.job import ArenaConfig, ArenaJobConfig
from prefgame.arena.world import (
    LENGTHS,
    MODIFIERS,
    N_CLASSES,
    OBJECTIVES,
    STYLES,
    TOPICS,
    Arena,
    class_features,
    class_name,
)
from prefgame.config import param
from prefgame.lm import load_causal_lm, load_tokenizer, sample
from prefgame.report import table
from prefgame.run import RunDir, atomic_write_text, seed_everything, write_jsonl
from prefgame.train.common import TrainConfig
from prefgame.train.sft import SFTConfig, SFTDataConfig, SFTModelConfig


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
    seed: int = param(0, "seed of training and sampling")
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")
    arena: ArenaConfig = param(ArenaConfig, "the world")
    sft_examples: int = param(4000, "SFT demonstrations")
    pairs: int = param(4000, "gold-labeled pairs exported with the world")
    sft: QuickstartSFT = param(QuickstartSFT, "π0 training")
    samples: int = param(2000, "π0 responses sampled to measure its class distribution")
    label_pairs: int = param(1000, "pairs of π0 responses labeled by the gold preference and the annotators")
    max_new_tokens: int = param(40, "sampling length limit (arena responses have ≤ 34 words)")


def _done(path: Path) -> bool:
    return (path / "metrics.json").exists()


def run(cfg: QuickstartConfig) -> dict:
    out = RunDir(cfg.output_dir)
    log = out.start_logging()
    try:
        return _run(cfg, out, log)
    finally:
        out.close()


def _run(cfg: QuickstartConfig, out: RunDir, log) -> dict:
    t_start = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if not cfg.resume:
        out.start_fresh()
        for name in ("report.md", "samples.jsonl", "labels.jsonl"):
            out.file(name).unlink(missing_ok=True)
    out.write_config(cfg)
    seed_everything(cfg.seed)
    arena = cfg.arena.build()
    timings: dict[str, float] = {}

    # 1. the world and its data sets
    t = time.perf_counter()
    data_dir = out.file("data")
    if not (cfg.resume and _done(data_dir)):
        from prefgame.arena import job as arena_job

        log.info("stage 1/4: building the arena and exporting its data sets")
        arena_job.run(
            ArenaJobConfig(
                output_dir=str(data_dir), arena=cfg.arena, sft_examples=cfg.sft_examples, pairs=cfg.pairs
            )
        )
    timings["arena"] = time.perf_counter() - t

    # 2. π0 by SFT
    t = time.perf_counter()
    pi0_dir = out.file("pi0")
    if not (cfg.resume and _done(pi0_dir)):
        from prefgame.train import sft

        log.info("stage 2/4: training π0 by SFT on the demonstrations")
        sft.run(
            SFTConfig(
                output_dir=str(pi0_dir),
                resume=cfg.resume,
                model=SFTModelConfig(
                    tokenizer=str(data_dir / "tokenizer"),
                    hidden_size=cfg.sft.hidden_size,
                    num_layers=cfg.sft.num_layers,
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
        )
    timings["sft"] = time.perf_counter() - t

    # 3. samples from π0
    t = time.perf_counter()
    log.info(f"stage 3/4: sampling {cfg.samples} responses from π0")
    model = load_causal_lm(str(pi0_dir / "model"))
    tok = load_tokenizer(str(pi0_dir / "model"))
    rng = np.random.default_rng(cfg.seed + 1)
    prompts = [p.text for p in arena.sample_prompts(cfg.samples, rng)]
    responses = sample(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)
    _, classes = arena.classify(prompts, responses)
    write_jsonl(
        out.file("samples.jsonl"),
        [
            {"prompt": p, "response": r, "class": class_name(int(c))}
            for p, r, c in zip(prompts, responses, classes)
        ],
    )
    pi0 = arena.class_distribution(prompts, responses)
    timings["sample"] = time.perf_counter() - t

    # 4. labels from the gold preference and the annotators
    t = time.perf_counter()
    log.info(f"stage 4/4: labeling {cfg.label_pairs} pairs of π0 responses")
    pair_prompts = [p.text for p in arena.sample_prompts(cfg.label_pairs, rng)]
    doubled = sample(model, tok, pair_prompts * 2, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 2)
    resp_a, resp_b = doubled[: cfg.label_pairs], doubled[cfg.label_pairs :]
    label_stats, label_rows = label_pairs(arena, pair_prompts, resp_a, resp_b, rng)
    write_jsonl(out.file("labels.jsonl"), label_rows)
    timings["label"] = time.perf_counter() - t

    sft_metrics = _read_json(pi0_dir / "metrics.json")
    demo = arena.demonstrator_distribution()
    metrics = {
        "pi0": {
            "sft_eval_loss": sft_metrics.get("eval_loss"),
            "sft_eval_loss_initial": sft_metrics.get("eval_loss_initial"),
            "tv_to_demonstrator": float(0.5 * (pi0 - demo).abs().sum(1) @ arena.type_probs),
            "gold_win_rate_vs_demonstrator": arena.win_rate(pi0, demo),
            "exploitability": arena.exploitability(pi0),
            "demonstrator_exploitability": arena.exploitability(demo),
            "marginals": marginals(pi0, arena),
        },
        "labels": label_stats,
        "seconds": {**timings, "total": time.perf_counter() - t_start},
    }
    report = render_report(cfg, arena, pi0, demo, metrics, prompts, responses, classes)
    atomic_write_text(out.file("report.md"), report)
    out.write_metrics(metrics)
    print(summary_table(metrics))
    log.info(f"quickstart done in {metrics['seconds']['total']:.0f}s: report in {out.file('report.md')}")
    return metrics


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def label_pairs(arena: Arena, prompts, resp_a, resp_b, rng) -> tuple[dict, list[dict]]:
    """Gold probabilities and one label per annotator for each pair; statistics per annotator."""
    gold = arena.gold_probability(prompts, resp_a, resp_b).numpy()
    in_cycle = arena.in_cycle(prompts, resp_a, resp_b)
    labels = {s.name: arena.annotate(s, prompts, resp_a, resp_b, rng) for s in arena.spec.annotators}
    rows = []
    for i in range(len(prompts)):
        row = {"prompt": prompts[i], "response_a": resp_a[i], "response_b": resp_b[i], "gold": float(gold[i])}
        row.update({name: float(v[i]) for name, v in labels.items()})
        rows.append(row)
    gold_hard = np.where(gold > 0.5, 1.0, np.where(gold < 0.5, 0.0, 0.5))
    longer = np.array([len(a.split()) - len(b.split()) for a, b in zip(resp_a, resp_b)])
    stats = {
        "pairs": len(prompts),
        "identical_class_pairs": int(np.isclose(gold, 0.5).sum()),
        "in_cycle_pairs": int(in_cycle.sum()),
        "bayes_accuracy": float(np.maximum(gold, 1 - gold).mean()),
        "annotators": {},
    }
    for name, lab in labels.items():
        decided = (lab != 0.5) & (gold_hard != 0.5)
        differ = (longer != 0) & (lab != 0.5)
        stats["annotators"][name] = {
            "agreement_with_gold": float((lab[decided] == gold_hard[decided]).mean())
            if decided.any()
            else None,
            "tie_rate": float((lab == 0.5).mean()),
            "first_position_rate": float(lab.mean()),
            "longer_wins_rate": float(((lab == 1) == (longer > 0))[differ].mean()) if differ.any() else None,
        }
    return stats, rows


def marginals(pi: torch.Tensor, arena: Arena) -> dict[str, list[float]]:
    """Feature marginals of a class-level policy, averaged over prompt types."""
    avg = (arena.type_probs[:, None] * pi).sum(0)  # (N_CLASSES,)
    feats = [class_features(i) for i in range(N_CLASSES)]
    out = {}
    for name, size in (("style", 3), ("relevant", 2), ("correct", 2), ("length", 3), ("unsafe", 2)):
        out[name] = [
            float(sum(avg[i] for i, f in enumerate(feats) if getattr(f, name) == v)) for v in range(size)
        ]
    return out


def render_report(cfg, arena: Arena, pi0, demo, metrics, prompts, responses, classes) -> str:
    m = metrics["pi0"]
    demo_marg = marginals(demo, arena)
    names = {
        "style": STYLES,
        "relevant": ("no", "yes"),
        "correct": ("no", "yes"),
        "length": LENGTHS,
        "unsafe": ("no", "yes"),
    }
    marg_rows = [
        [feature, names[feature][v], m["marginals"][feature][v], demo_marg[feature][v]]
        for feature in names
        for v in range(len(names[feature]))
    ]
    avg = (arena.type_probs[:, None] * pi0).sum(0)
    top = torch.argsort(avg, descending=True)[:10]
    top_rows = [
        [class_name(int(i)), float(avg[i]), float((arena.type_probs[:, None] * demo).sum(0)[i])] for i in top
    ]
    w_rows = [
        [f"{t}/{mod}", *arena.type_weights[i * len(MODIFIERS) + j]]
        for i, t in enumerate(TOPICS)
        for j, mod in enumerate(MODIFIERS)
    ]
    seen, sample_rows = set(), []
    for p, r, c in zip(prompts, responses, classes):
        if p in seen:
            continue
        seen.add(p)
        sample_rows.append([p, r, class_name(int(c))])
        if len(sample_rows) == 6:
            break
    lab = metrics["labels"]
    ann_rows = [
        [name, s["agreement_with_gold"], s["tie_rate"], s["first_position_rate"], s["longer_wins_rate"]]
        for name, s in lab["annotators"].items()
    ]
    spec_rows = [
        [
            s.name,
            s.temperature,
            "world" if s.cycle is None else s.cycle,
            s.position_bias,
            s.length_bias,
            s.tie_band,
        ]
        for s in arena.spec.annotators
    ]
    sec = metrics["seconds"]
    return (
        "\n\n".join(
            [
                "# prefgame quickstart report",
                f"Run of `prefgame quickstart` (seed {cfg.seed}); every figure below was computed by this run "
                f"in {sec['total']:.0f} s.",
                "## 1. The world",
                "The arena is a synthetic preference world with known ground truth. Prompts ask about a topic in "
                "a manner (briefly, plainly, in detail) and pose a small addition. Any response text maps to one of "
                f"{N_CLASSES} feature classes: style ({', '.join(STYLES)}), relevance to the topic, correctness of the "
                "sum, length bucket and a safety flag. The gold preference is "
                "P*(a ≻ b | x) = σ(strength · Σ_k w_k(x)(s_k(a) − s_k(b)) + c · C[style(a), style(b)]) "
                f"with strength {arena.spec.strength}, cyclic strength c = {arena.spec.cycle} "
                "(formal ≻ casual ≻ poetic ≻ formal: no reward function can express it) and prompt-dependent "
                "objective weights w(x):",
                table(["prompt type", *OBJECTIVES], w_rows, digits=2),
                "Simulated annotators (temperature scales the gold logit; biases add to it):",
                table(
                    ["annotator", "temperature", "cycle", "position bias", "length bias", "tie band"],
                    spec_rows,
                ),
                "## 2. π0 (SFT)",
                f"A {cfg.sft.num_layers}-layer Llama-style model (hidden {cfg.sft.hidden_size}) trained for "
                f"{cfg.sft.max_steps} steps on {cfg.sft_examples} demonstrations: held-out loss per response token "
                f"{_f(m['sft_eval_loss_initial'])} → {_f(m['sft_eval_loss'])}.",
                f"π0's class distribution, measured from {cfg.samples} samples, against the demonstrator it imitates "
                f"(total variation distance per prompt type, averaged: {m['tv_to_demonstrator']:.3f}):",
                table(["feature", "value", "π0", "demonstrator"], marg_rows),
                "Most frequent classes:",
                table(["class", "π0", "demonstrator"], top_rows),
                f"Exact figures under the gold preference: π0's win rate against the demonstrator "
                f"{m['gold_win_rate_vs_demonstrator']:.3f}; unregularized exploitability of π0 "
                f"{m['exploitability']:.3f} (demonstrator {m['demonstrator_exploitability']:.3f}). "
                "Exploitability is how much a best response beats the policy: E_x[max_y P*(y ≻ π) − ½].",
                "Sample responses:",
                table(["prompt", "π0 response", "class"], sample_rows),
                "## 3. Labels",
                f"{lab['pairs']} pairs of π0 responses to the same prompt, labeled by the gold preference and by each "
                f"annotator; {lab['in_cycle_pairs']} pairs are decided by the cyclic style term alone and "
                f"{lab['identical_class_pairs']} pairs fall in the same class. Bayes-optimal accuracy on these pairs: "
                f"{lab['bayes_accuracy']:.3f}.",
                table(
                    [
                        "annotator",
                        "agreement with gold (no ties)",
                        "tie rate",
                        "first position wins",
                        "longer wins",
                    ],
                    ann_rows,
                ),
                "## Timings (s)",
                table(list(sec), [list(sec.values())], digits=1),
            ]
        )
        + "\n"
    )


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def summary_table(metrics: dict) -> str:
    m, lab = metrics["pi0"], metrics["labels"]
    lines = [
        "",
        "prefgame quickstart summary",
        f"  π0 held-out loss          {_f(m['sft_eval_loss'])} (from {_f(m['sft_eval_loss_initial'])})",
        f"  π0 TV to demonstrator     {m['tv_to_demonstrator']:.3f}",
        f"  π0 exploitability (gold)  {m['exploitability']:.3f}",
        f"  labeled pairs             {lab['pairs']} (in-cycle {lab['in_cycle_pairs']})",
        f"  total time                {metrics['seconds']['total']:.0f} s",
    ]
    return "\n".join(lines)
