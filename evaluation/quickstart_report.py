"""The report of ``prefgame quickstart`` (the job is :mod:`evaluation.quickstart`): every stage's figures
as report sections, written with :func:`evaluation.report.write_report` (report.md, self-contained
report.html, figures/, tables/).

Nothing here is stored: each table is computed from the run's own results (:class:`QuickstartResults`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from evaluation.plots import convergence_png, marginals_png
from evaluation.report import ReportSection, agreement_section, policy_battles, winrate_section, write_report
from prefgame.arena.world import MODIFIERS, N_CLASSES, OBJECTIVES, STYLES, TOPICS, Arena, class_features, class_name

FEATURE_VALUES = {
    "style": STYLES,
    "relevant": ("no", "yes"),
    "correct": ("no", "yes"),
    "length": ("short", "medium", "long"),
    "unsafe": ("no", "yes"),
}
EXACT_COLUMNS = {
    "gold_win_rate_vs_ref": "gold win rate vs π0",
    "exploitability": "exploitability",
    "exploitability_transitive": "exploitability without the cycle",
    "gap": "duality gap",
    "tv_to_equilibrium": "TV to π*",
    "class_kl": "class KL to π0",
}


@dataclass
class QuickstartResults:
    cfg: Any  # QuickstartConfig
    arena: Arena
    pi0_raw: torch.Tensor  # (T, C) π0's class distribution from samples
    sft_metrics: dict
    samples: tuple[list[str], list[str], Any]  # π0's prompts, responses, classes
    pm_rows: list[dict]  # prefgame.train.pm_arena.ArenaPMRow as dicts
    labels: pd.DataFrame  # evaluation.arena.arena_label_table of π0 pairs
    selfplay: dict[str, dict]  # algorithm -> run_selfplay metrics (with "history")
    exact: dict[str, dict]  # policy -> prefgame.game.lm_selfplay.class_figures
    policy_samples: pd.DataFrame  # prompt, output, generator
    biased_judge: Any  # PreferenceOracle
    gold: Any  # PreferenceOracle
    llm_judge: Any = None  # prefgame.judges.LLMJudge when the run was given an endpoint
    worlds: dict[str, dict] | None = None  # world -> {"exact", "selfplay", "cycle"}: the two-world comparison
    hacking: Any = None  # evaluation.reward_hacking.HackingResult (None: the stage was off)


def type_average(pi: torch.Tensor, arena: Arena) -> torch.Tensor:
    """A class-level policy (T, C) averaged over prompt types with their probabilities, (C,)."""
    return (arena.type_probs[:, None] * pi).sum(0)


def marginals(pi: torch.Tensor, arena: Arena) -> dict[str, list[float]]:
    """Feature marginals of a class-level policy (T, C), averaged over prompt types."""
    avg = type_average(pi, arena)  # (C,)
    feats = [class_features(i) for i in range(N_CLASSES)]
    return {
        name: [float(sum(avg[i] for i, f in enumerate(feats) if getattr(f, name) == v)) for v in range(len(values))]
        for name, values in FEATURE_VALUES.items()
    }


def world_section(r: QuickstartResults) -> ReportSection:
    arena, spec = r.arena, r.arena.spec
    s = ReportSection("1. The world")
    s.text(
        "The arena is a synthetic preference world with known ground truth. Prompts ask about a topic in a manner "
        "(briefly, plainly, in detail) and pose a small addition. Any response text maps to one of "
        f"{N_CLASSES} feature classes: style ({', '.join(STYLES)}), relevance to the topic, correctness of the sum, "
        "length bucket and a safety flag. The gold preference is P*(a ≻ b | x) = σ(strength · Σ_k w_k(x)(s_k(a) − "
        f"s_k(b)) + c · C[style(a), style(b)]) with strength {spec.strength}, cyclic strength c = {spec.cycle} "
        "(formal ≻ casual ≻ poetic ≻ formal: no reward function can express it) and prompt-dependent objective "
        "weights w(x). Because P* depends on a response only through its class, every policy's exact win rates, "
        "exploitability and distance to the regularized equilibrium π* can be computed. The demonstrations (π0's "
        "SFT data) and the exported pairs draw their style as "
        + ", ".join(f"{name} {q:.2f}" for name, q in zip(STYLES, spec.demonstrator.style))
        + " (`arena.demonstrator_style`)."
    )
    types = [f"{t}/{m}" for t in TOPICS for m in MODIFIERS]
    weights = pd.DataFrame(arena.type_weights, index=pd.Index(types, name="prompt type"), columns=list(OBJECTIVES))
    s.add_table("world_weights", weights.round(3), "Objective weights w(x) per prompt type:")
    annotators = pd.DataFrame(
        [
            {
                "annotator": a.name,
                "temperature": a.temperature,
                "cycle": "world" if a.cycle is None else a.cycle,
                "position bias": a.position_bias,
                "length bias": a.length_bias,
                "tie band": a.tie_band,
            }
            for a in spec.annotators
        ]
    ).set_index("annotator")
    s.add_table("world_annotators", annotators, "Simulated annotators (temperature scales the gold logit; biases add):")
    return s


def pi0_section(r: QuickstartResults) -> ReportSection:
    cfg, arena, m = r.cfg, r.arena, r.sft_metrics
    demo = arena.demonstrator_distribution()
    s = ReportSection("2. π0 (SFT)")
    tv = float(0.5 * (r.pi0_raw - demo).abs().sum(1) @ arena.type_probs)
    s.text(
        f"A {cfg.sft.num_layers}-layer Llama-style model (hidden {cfg.sft.hidden_size}) trained for "
        f"{cfg.sft.max_steps} steps on {cfg.sft_examples} demonstrations: held-out loss per response token "
        f"{_f(m.get('eval_loss_initial'))} → {_f(m.get('eval_loss'))}. Its class distribution, measured from "
        f"{cfg.samples} samples, against the demonstrator it imitates (total variation per prompt type, averaged: "
        f"{tv:.3f}); exact gold win rate against the demonstrator {arena.win_rate(r.pi0_raw, demo):.3f}, "
        f"unregularized exploitability {arena.exploitability(r.pi0_raw):.3f} (demonstrator "
        f"{arena.exploitability(demo):.3f})."
    )
    ours, theirs = marginals(r.pi0_raw, arena), marginals(demo, arena)
    rows = [
        {"feature": f, "value": v, "π0": ours[f][i], "demonstrator": theirs[f][i]}
        for f, values in FEATURE_VALUES.items()
        for i, v in enumerate(values)
    ]
    s.add_table(
        "pi0_marginals",
        pd.DataFrame(rows).set_index(["feature", "value"]),
        "π0's class distribution (feature marginals):",
    )
    avg, demo_avg = type_average(r.pi0_raw, arena), type_average(demo, arena)
    top = torch.argsort(avg, descending=True)[:8]
    frame = pd.DataFrame(
        [{"class": class_name(int(i)), "π0": float(avg[i]), "demonstrator": float(demo_avg[i])} for i in top]
    ).set_index("class")
    s.add_table("pi0_top_classes", frame, "π0's most frequent classes:")
    prompts, responses, classes = r.samples
    seen, rows = set(), []
    for p, y, c in zip(prompts, responses, classes):
        if p not in seen and len(rows) < 5:
            seen.add(p)
            rows.append({"prompt": p, "π0 response": y, "class": class_name(int(c))})
    s.add_table("pi0_samples", pd.DataFrame(rows).set_index("prompt"), "Sample responses:")
    return s


def pm_section(r: QuickstartResults) -> ReportSection:
    s = ReportSection("3. Preference models")
    s.text(
        "Bradley–Terry (BT), the general preference model in embedding form (GPM, exactly anti-symmetric) and the "
        "multi-objective gated reward head, trained on the exported arena pairs and ratings and scored on held-out "
        "pairs freshly sampled from the world with their gold probabilities. Expected accuracy is E[P* of the "
        "side the model picks], directly comparable with the Bayes-optimal E[max(P*, 1 − P*)]; in-cycle pairs are "
        "decided by the cyclic style term alone, which no reward model can represent."
    )
    frame = pd.DataFrame(
        [
            {
                "model": row["model"],
                "held-out accuracy": row["accuracy"],
                "expected accuracy": row["expected_accuracy"],
                "Bayes-optimal": row["bayes_accuracy"],
                "in-cycle expected": row["in_cycle_expected_accuracy"],
                "in-cycle Bayes": row["in_cycle_bayes_accuracy"],
                "gating r with w(x)": row["gating_correlation"],
                "seconds": row["seconds"],
            }
            for row in r.pm_rows
        ]
    ).set_index("model")
    s.add_table("preference_models", frame, "Preference models on held-out arena pairs:")
    return s


def selfplay_section(r: QuickstartResults) -> ReportSection:
    s = ReportSection("5. Nash self-play: convergence")
    s.text(
        f"Self-play from π0 against the trained GPM as oracle, on the KL-regularized game with τ = {r.cfg.tau}. "
        "At each measured iteration the policy's class distribution is measured from samples on held-out prompts "
        "and scored exactly: unregularized exploitability max_y P*(y ≻ π) − ½, the duality gap of the regularized "
        "game (0 only at π*), total variation to the exact equilibrium π*, and the exact gold win rate against π0."
    )
    traces, rows = {}, []
    for algo, m in r.selfplay.items():
        hist = pd.DataFrame(m.get("history", []))
        if hist.empty:
            continue
        traces[algo] = hist
        keys = ("eval/win_rate_vs_ref", "eval/kl_to_ref", *(f"eval/{k}" for k in EXACT_COLUMNS))
        rows += [{"algorithm": algo, "iteration": h["iteration"], **{k: h.get(k) for k in keys}} for h in m["history"]]
    if traces:
        cols = {
            f"eval/{key}": EXACT_COLUMNS[key] for key in ("exploitability", "tv_to_equilibrium", "gold_win_rate_vs_ref")
        }
        references = {
            col: {name: m.get(col[len("eval/") :]) for name, m in r.exact.items() if name not in r.selfplay}
            for col in cols
        }
        s.add_figure(
            "selfplay_convergence",
            convergence_png(
                traces, cols, "self-play from π0 (dashed: π*, π0 and the baselines' final values)", references
            ),
            "Convergence per algorithm, with the exact equilibrium π*, π0 and the baselines as reference lines",
        )
        s.add_table("selfplay_trace", pd.DataFrame(rows).set_index(["algorithm", "iteration"]), "Measured iterations:")
    return s


def best_selfplay(exact: dict[str, dict], selfplay) -> str | None:
    names = [a for a in selfplay if a in exact]
    return min(names, key=lambda a: exact[a]["exploitability"]) if names else None


BASELINES = ("ppo", "online_dpo", "dpo")  # the quickstart's baseline policies
FINDING_COLUMNS = ("exploitability", "exploitability_transitive", "tv_to_equilibrium", "gold_win_rate_vs_ref")


def findings_section(r: QuickstartResults) -> ReportSection | None:
    """The first screen: the two-world comparison in two sentences computed from this run, and its figure."""
    worlds = r.worlds or {}
    if not worlds:
        return None
    s = ReportSection("Finding")
    sentences, rows, bars = [], [], {}
    policies = list(next(iter(worlds.values()))["exact"])
    for name, w in worlds.items():
        exact, best, label = w["exact"], best_selfplay(w["exact"], w["selfplay"]), f"{name} (c = {w['cycle']})"
        rows += [
            {"world": label, "policy": p, **{EXACT_COLUMNS[k]: m[k] for k in FINDING_COLUMNS}} for p, m in exact.items()
        ]
        bars[label] = [exact[p]["exploitability"] if p in exact else float("nan") for p in policies]
        if best is None:
            continue
        e = {p: m["exploitability"] for p, m in exact.items()}
        others = {p: v for p, v in e.items() if p in BASELINES}
        versus = ", ".join(f"{p} {v:.3f}" for p, v in others.items())
        verdict = "lower than" if all(e[best] < v for v in others.values()) else "not lower than every baseline:"
        sentences.append(
            f"In the {name} world (c = {w['cycle']}), self-play ({best}) takes exploitability from {e['π0']:.3f} (π0) "
            f"to {e[best]:.3f} ({e[best] / e['π0']:.2f}× π0; π* {e['π* (exact)']:.3f})"
            + (f", {verdict} {versus}." if versus else ".")
        )
    s.text(" ".join(sentences))
    s.add_figure(
        "finding",
        marginals_png(bars, policies, "exploitability per policy and world (lower is better)", "exploitability"),
        "Exploitability of every policy in each world (π* is the regularized equilibrium)",
    )
    s.text(
        "Exploitability is what the best response to a policy wins against it under the gold preference, minus ½ "
        "(0: nothing beats it); its part without the cycle is what a reward function can see."
    )
    s.add_table("finding", pd.DataFrame(rows).set_index(["world", "policy"]), "Exact class-level figures per world:")
    return s


def policies_section(r: QuickstartResults) -> ReportSection:
    s = ReportSection("6. Policies against the exact equilibrium")
    s.text(
        f"Every policy answered the same {r.cfg.eval_prompts} held-out prompts; its class distribution is scored "
        "exactly under the gold preference. π* is the exact regularized equilibrium (Newton solve on the class-level "
        "game, with π0's smoothed class distribution as reference). KL here is over classes, a lower bound of the "
        "sequence-level KL. The policies: π0 (SFT); each self-play algorithm against the trained GPM; `dpo`, "
        "offline DPO on the exported arena pairs; `online_dpo`, online DPO against the trained GPM; `ppo`, PPO "
        "against the trained BT reward model (the online runs at the same budget: "
        f"{r.cfg.budget.iterations} iterations × {r.cfg.budget.prompts} prompts × "
        f"{r.cfg.budget.samples + r.cfg.budget.reference_samples} samples)."
    )
    frame = pd.DataFrame({name: {lab: m[key] for key, lab in EXACT_COLUMNS.items()} for name, m in r.exact.items()}).T
    frame.index.name = "policy"
    s.add_table("policies_exact", frame, "Exact class-level figures under the gold preference:")
    styles = {name: m["style"] for name, m in r.exact.items() if "style" in m}
    if styles:
        s.add_figure(
            "policies_style",
            marginals_png(styles, list(STYLES), "style marginal per policy", "share of responses"),
            "Style marginal of every policy against π*'s (the cyclic term's equilibrium mixes the three styles)",
        )
    rows = []
    for name, g in r.policy_samples.groupby("generator", sort=False):
        for p, y in list(zip(g["prompt"], g["output"]))[:2]:
            rows.append({"policy": name, "prompt": p, "response": y, "class": class_name(r.arena.features(p, y).index)})
    s.add_table("policies_samples", pd.DataFrame(rows).set_index(["policy", "prompt"]), "Sample responses per policy:")
    return s


def _renamed(section: ReportSection, prefix: str) -> ReportSection:
    """The same section with every table and figure name prefixed (two win-rate sections in one report)."""
    out = ReportSection(section.title, metrics=section.metrics)
    for kind, name, caption in section.blocks:
        if kind == "table":
            out.add_table(prefix + name, section.tables[name], caption)
        elif kind == "figure":
            out.add_figure(prefix + name, section.figures[name], caption)
        else:
            out.text(name)
    return out


def write_quickstart_report(
    output_dir: str | Path,
    r: QuickstartResults,
    seconds: dict[str, float],
    *,
    cpu_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Build every section, write the report files and return the run's headline metrics; ``seconds`` and
    ``cpu_seconds`` are the wall and CPU time of each stage and of the run ("total")."""
    model_names = [row["model"] for row in r.pm_rows]
    agreement = agreement_section(
        r.labels, reference="gold", models=model_names, title="4. Agreement between label sources"
    )
    win_sections, win_metrics = [], {}
    if r.policy_samples["generator"].nunique() > 1:  # win rates need two policies at least
        judges = [("gold", r.gold, ""), ("biased judge", r.biased_judge, "judge_")]
        if r.llm_judge is not None:
            judges.append((r.llm_judge.name, r.llm_judge, "llm_"))
        for judge, oracle, prefix in judges:
            battles = policy_battles(r.policy_samples, oracle, pairs="all", seed=r.cfg.seed)
            title = f"{7 + len(win_sections)}. Win rates and ratings ({judge})"
            # the arena's judges are biased per word: the LC win rate controls for words (its caption says so)
            section = winrate_section(battles, baseline="π0", length_unit="words", seed=r.cfg.seed, title=title)
            win_sections.append(_renamed(section, prefix) if prefix else section)
            win_metrics[judge] = section.metrics
    if r.llm_judge is not None:
        win_metrics["llm_judge_usage"] = dict(r.llm_judge.stats)  # requests, tokens, cost; never the key
    timing = ReportSection("Timings")
    times = pd.DataFrame({"seconds": seconds, **({"cpu_seconds": cpu_seconds} if cpu_seconds else {})})
    timing.add_table("timings", times.rename_axis("stage"), "Wall and CPU time per stage (s):")
    sections = [
        *([f] if (f := findings_section(r)) is not None else []),
        world_section(r),
        pi0_section(r),
        pm_section(r),
        agreement,
        selfplay_section(r),
        policies_section(r),
        *win_sections,
        *([r.hacking.section] if r.hacking is not None else []),
        timing,
    ]
    intro = (
        f"Run of `prefgame quickstart` (seed {r.cfg.seed}); every figure below was computed by this run in "
        f"{seconds['total']:.0f} s."
    )
    paths = write_report(output_dir, sections, title="prefgame quickstart report", intro=intro)
    return {
        "pi0": {"exploitability": float(r.arena.exploitability(r.pi0_raw)), "sft": r.sft_metrics},
        "preference_models": r.pm_rows,
        "selfplay": {a: {k: v for k, v in m.items() if k != "history"} for a, m in r.selfplay.items()},
        "policies": r.exact,
        "worlds": {name: w["exact"] for name, w in (r.worlds or {}).items()},
        "agreement": agreement.metrics,
        "win_rates": win_metrics,
        **({"reward_hacking": r.hacking.metrics} if r.hacking is not None else {}),
        "seconds": seconds,
        **({"cpu_seconds": cpu_seconds} if cpu_seconds else {}),
        "report": str(paths["html"]),
    }


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"
