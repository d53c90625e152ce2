"""The reward-hacking picture on the arena: best-of-n under proxies trained on a biased annotator.

Proxies (BT, BT under the linear LCB, a pessimistic BT ensemble, a GPM) are trained on pairs of π0-like
responses labeled by a biased annotator (default ``verbose-lover``: it adds ``length_bias`` log-odds per
extra word), so that a proxy can be *hacked*: pushed towards what the annotator likes and the gold
preference does not. For each prompt one pool of N samples of π0 is drawn once; best-of-n for every
n ≤ N is then evaluated without resampling by the order-statistics estimator
(:func:`prefgame.pessimism.best_of_n_expectation`: the average over every n-subset of the pool), against

- the proxy's own win rate of the chosen response against π0 (mean_j P_proxy(y ≻ y_j) over the pool);
- the gold win rate against π0 (mean_j P*(y ≻ y_j) over the pool, exact per pair: the arena's gold);

and the KL of best-of-n to π0, log n − (n − 1)/n. Best-of-n under a general preference model ranks
candidates by their mean win probability against the pool (a fixed score per candidate, so the estimator
applies: best-of-n under P̂(y ≻ π0 | x)). With the order-statistics weights, n = 1 gives a gold win rate of
exactly ½.

:func:`hacking_curves` and :func:`peak_table` are pure functions of those per-sample arrays;
:func:`reward_hacking` trains the proxies, draws the pools and builds the report section (used by
``prefgame evaluate report``'s ``hacking`` part, the quickstart and ``benchmarks/reward_hacking.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from evaluation.report import ReportSection
from prefgame.arena import export
from prefgame.arena.world import AnnotatorSpec, Arena, compose_response
from prefgame.config import param
from prefgame.errors import ConfigError
from prefgame.pessimism import PessimismConfig, best_of_n_expectation, best_of_n_kl
from prefgame.run import write_jsonl

log = logging.getLogger("prefgame.reward_hacking")

PROXIES = ("bt", "bt_lcb", "bt_ensemble", "gpm")
PROXY_TITLES = {
    "bt": "BT",
    "bt_lcb": "BT + linear LCB",
    "bt_ensemble": "BT ensemble (pessimistic)",
    "gpm": "GPM",
}


@dataclass
class HackingConfig:
    annotator: str = param("verbose-lover", "the biased annotator that labels the proxies' training pairs")
    length_bias: float = param(
        0.5, "the annotator's length bias in log-odds per extra word, instead of its own (< 0: its own, 0.25)"
    )
    train_pairs: int = param(2000, "pairs of π0-like responses the annotator labels for the proxies", ge=10)
    minimal_pair_fraction: float = param(0.3, "share of the training pairs that differ in one feature", ge=0, le=1)
    prompts: int = param(32, "prompts with a pool of π0 samples each", ge=1)
    pool: int = param(256, "π0 samples per prompt (N): best-of-n for every n ≤ N from this one pass", ge=2)
    ns: list[int] = param([1, 2, 4, 8, 16, 32, 64, 128, 256], "the n of best-of-n (each ≤ pool)")
    proxies: list[str] = param(list(PROXIES), f"proxies to train and compare, of {PROXIES}")
    lcb_c: list[float] = param([16.0, 64.0, 256.0], "bt_lcb: widths c of the linear LCB (one curve each)")
    lcb_lam: float = param(1.0, "bt_lcb: ridge λ of Σ_off", gt=0)
    ensemble_size: int = param(4, "bt_ensemble: heads", ge=2)
    ensemble_mode: str = param("mean_std", "bt_ensemble: min or mean_std (mean − c·std of the members' rewards)")
    ensemble_c: float = param(1.0, "bt_ensemble: c of mean − c·std", ge=0)
    head_steps: int = param(300, "optimizer steps of every proxy's head", ge=1)
    seed: int = param(0, "seed of the pairs, their labels, the pools and training", ge=0)

    def __post_init__(self) -> None:
        if any(p not in PROXIES for p in self.proxies) or not self.proxies:
            raise ValueError(f"hacking.proxies must list some of {list(PROXIES)}, got {self.proxies}")
        if any(not 1 <= n <= self.pool for n in self.ns) or not self.ns:
            raise ValueError(f"every hacking.ns must be in [1, pool={self.pool}], got {self.ns}")
        if any(c < 0 for c in self.lcb_c) or ("bt_lcb" in self.proxies and not self.lcb_c):
            raise ValueError(f"hacking.lcb_c must list widths c ≥ 0, got {self.lcb_c}")
        if self.ensemble_mode not in ("min", "mean_std"):
            raise ValueError(f"hacking.ensemble_mode must be min or mean_std, got {self.ensemble_mode}")


# ----------------------------------------------------------------------------------------- pure part


def hacking_curves(
    proxy_scores: dict[str, np.ndarray], proxy_wins: dict[str, np.ndarray], gold_wins: np.ndarray, ns: Sequence[int]
) -> pd.DataFrame:
    """Best-of-n curves per proxy from pools of N samples for M prompts.

    ``proxy_scores[name]`` (M, N): what best-of-n under that proxy maximizes; ``proxy_wins[name]`` (M, N): the
    proxy's win probability of each sample against the pool; ``gold_wins`` (M, N): the gold one. Returns one
    row per (proxy, n): ``kl`` = log n − (n − 1)/n, ``proxy_win_rate`` and ``gold_win_rate`` (means over prompts
    of the order-statistics estimate), ``gold_se`` (standard error over prompts).
    """
    rows = []
    gold = torch.as_tensor(np.asarray(gold_wins, dtype=np.float64))
    for name, scores in proxy_scores.items():
        s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        wins = torch.as_tensor(np.asarray(proxy_wins[name], dtype=np.float64))
        for n in ns:
            g = best_of_n_expectation(s, gold, n).numpy()  # (M,)
            rows.append(
                {
                    "proxy": name,
                    "n": int(n),
                    "kl": best_of_n_kl(int(n)),
                    "proxy_win_rate": float(best_of_n_expectation(s, wins, n).mean()),
                    "gold_win_rate": float(g.mean()),
                    "gold_se": float(g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def peak_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per proxy: the n (and KL) of the highest gold win rate, that rate, the rate at the largest n, the
    fall from the peak to it, and whether the fall exceeds twice its standard error (the two SEs combined as
    if independent: they are positively correlated, so this overstates the SE and the test is conservative)."""
    rows = []
    for name, c in curves.groupby("proxy", sort=False):
        c = c.sort_values("n")
        peak, last = c.loc[c["gold_win_rate"].idxmax()], c.iloc[-1]
        fall = float(peak["gold_win_rate"] - last["gold_win_rate"])
        se = math.sqrt(float(peak["gold_se"]) ** 2 + float(last["gold_se"]) ** 2)
        rows.append(
            {
                "proxy": name,
                "peak n": int(peak["n"]),
                "peak KL": float(peak["kl"]),
                "peak gold win rate": float(peak["gold_win_rate"]),
                f"gold win rate at n={int(last['n'])}": float(last["gold_win_rate"]),
                f"proxy win rate at n={int(last['n'])}": float(last["proxy_win_rate"]),
                "fall after peak": fall,
                "falls (> 2 SE)": bool(fall > 2 * se) if se == se else False,
            }
        )
    return pd.DataFrame(rows).set_index("proxy")


def picked_features(
    arena: Arena, prompts: Sequence[str], pools: Sequence[Sequence[str]], scores: dict[str, np.ndarray]
) -> pd.DataFrame:
    """What the samples are like: the pool's shares of relevant, correct, long and unsafe responses and its
    mean word count, and the same for each proxy's best of the whole pool (n = N; ties: the first)."""

    def row(pairs: list[tuple[str, str]]) -> dict[str, float]:
        f = [(arena.features(x, y), len(y.split())) for x, y in pairs]
        return {
            "relevant": float(np.mean([a.relevant for a, _ in f])),
            "correct": float(np.mean([a.correct for a, _ in f])),
            "long": float(np.mean([a.length == 2 for a, _ in f])),
            "unsafe": float(np.mean([a.unsafe for a, _ in f])),
            "words": float(np.mean([w for _, w in f])),
        }

    rows = {"π0 (the pool)": row([(x, y) for x, pool in zip(prompts, pools) for y in pool])}
    for name, s in scores.items():
        best = np.argmax(s, axis=1)  # the first of equal maxima, as best_of_n_index
        rows[f"best of {len(pools[0])}: {name}"] = row([(x, pool[int(b)]) for x, pool, b in zip(prompts, pools, best)])
    return pd.DataFrame(rows).T.rename_axis("responses")


# --------------------------------------------------------------------------------------- pools, proxies


def gold_pool_wins(arena: Arena, prompts: Sequence[str], pools: Sequence[Sequence[str]]) -> np.ndarray:
    """(M, N) mean_j P*(y_i ≻ y_j | x) over each prompt's pool, exact from the classes."""
    out = []
    for prompt, pool in zip(prompts, pools):
        types, classes = arena.classify([prompt] * len(pool), list(pool))
        c = torch.from_numpy(classes)
        out.append(arena.gold_matrix[int(types[0])][c][:, c].mean(1).numpy())
    return np.stack(out)


def proxy_pool_scores(scorer, prompts: Sequence[str], pools: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(scores (M, N), win rates against the pool (M, N)) of a best-of-n scorer
    (:func:`prefgame.generate.candidate_scores`: the linear LCB takes the pool's mean feature as φ(x, π0))."""
    from prefgame.generate import candidate_scores

    scores, wins = [], []
    for prompt, pool in zip(prompts, pools):
        s, w = candidate_scores(scorer, prompt, list(pool))
        scores.append(s.double().numpy())
        wins.append(w.mean(1).numpy())
    return np.stack(scores), np.stack(wins)


def demonstrator_pools(arena: Arena, prompts: Sequence[str], size: int, rng: np.random.Generator) -> list[list[str]]:
    """π0 = the arena's demonstrator: ``size`` responses per prompt drawn from its feature distribution."""
    from prefgame.arena.world import parse_prompt

    return [[compose_response(parse_prompt(p), arena.sample_features(rng), rng) for _ in range(size)] for p in prompts]


def annotator_spec(arena: Arena, cfg: HackingConfig) -> AnnotatorSpec:
    specs = {s.name: s for s in arena.spec.annotators}
    if cfg.annotator not in specs:
        raise ConfigError(f"hacking.annotator '{cfg.annotator}' is not one of {', '.join(specs)}")
    spec = specs[cfg.annotator]
    return dataclasses.replace(spec, length_bias=cfg.length_bias) if cfg.length_bias >= 0 else spec


def annotator_pairs(
    arena: Arena, spec: AnnotatorSpec, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], rng
) -> list[dict]:
    """Pairs labeled by one draw of the annotator: chosen = the response it picked, label 1 (0.5: a tie)."""
    labels = arena.annotate(spec, list(prompts), list(a), list(b), rng)
    rows = []
    for x, ya, yb, label in zip(prompts, a, b, labels):
        if ya == yb:
            continue
        chosen, rejected = (yb, ya) if label == 0.0 else (ya, yb)
        rows.append({"prompt": x, "chosen": chosen, "rejected": rejected, "label": 1.0 if label != 0.5 else 0.5})
    return rows


def train_proxies(cfg: HackingConfig, arena: Arena, pairs_path: Path, out: Path) -> dict[str, object]:
    """The proxies of ``cfg.proxies`` trained on ``pairs_path`` under ``out``, as best-of-n scorers by title
    (the linear LCB: one per width c, all on the one BT model)."""
    from prefgame.models import load_preference_model
    from prefgame.models.pessimistic import linear_lcb_model, read_offline_pairs
    from prefgame.run import RunDir
    from prefgame.train.pm import PMDataConfig, train_preference_model
    from prefgame.train.pm_arena import ArenaPMConfig, arena_pm_config

    pm_cfg = ArenaPMConfig(seed=cfg.seed, head_steps=cfg.head_steps)
    data = PMDataConfig(path=str(pairs_path), eval_fraction=0.1, skip_invalid=True)
    trained: dict[str, Path] = {}
    for name, kind in (("bt", "bt"), ("bt_ensemble", "bt"), ("gpm", "gpm")):
        wanted = name in cfg.proxies or (name == "bt" and "bt_lcb" in cfg.proxies)
        if not wanted:
            continue
        pm = dataclasses.replace(arena_pm_config(pm_cfg, kind, out / name, data), overwrite=True, arena_metrics=False)
        if name == "bt_ensemble":
            pm.model.ensemble.size, pm.model.ensemble.mode = cfg.ensemble_size, cfg.ensemble_mode
            pm.model.ensemble.c = cfg.ensemble_c
        run_dir = RunDir(pm.output_dir)
        try:
            train_preference_model(pm, run_dir, logging.getLogger("prefgame.train.pm"))
        finally:
            run_dir.close()
        trained[name] = out / name / "model"
    models = {name: load_preference_model(path) for name, path in trained.items()}
    scorers = {}
    for name in cfg.proxies:
        if name != "bt_lcb":
            scorers[PROXY_TITLES[name]] = models[name]
            continue
        offline = read_offline_pairs(str(pairs_path))
        for c in cfg.lcb_c:
            lcb = PessimismConfig(kind="linear_lcb", c=c, lam=cfg.lcb_lam)
            scorers[f"{PROXY_TITLES[name]} (c={c:g})"] = linear_lcb_model(models["bt"], lcb, offline=offline)
    return scorers


# ------------------------------------------------------------------------------------------ the picture


@dataclass
class HackingResult:
    curves: pd.DataFrame
    peaks: pd.DataFrame
    picks: pd.DataFrame
    section: ReportSection
    metrics: dict
    cpu_seconds: float


def reward_hacking(
    cfg: HackingConfig,
    arena: Arena,
    out: Path,
    *,
    pools: Callable[[list[str]], list[list[str]]] | None = None,
    policy: str = "the arena's demonstrator",
    pairs: tuple[list[str], list[str], list[str]] | None = None,
) -> HackingResult:
    """Train the proxies on annotator-labeled pairs, score each prompt's pool, and build the section.

    ``pools(prompts)`` draws π0's pool per prompt (default: the arena's demonstrator, ``policy`` names π0 in
    the text); ``pairs`` (prompts, a, b): the response pairs the annotator labels (default: demonstrator pairs,
    ``cfg.train_pairs`` of them). Writes ``out/pairs.jsonl``, ``out/<proxy>/`` and ``out/curves.csv``.
    """
    t0 = time.process_time()
    rng = np.random.default_rng([cfg.seed, 0x4AC])
    spec = annotator_spec(arena, cfg)
    if pairs is None:
        pairs = export.response_pairs(arena, cfg.train_pairs, rng, minimal_pair_fraction=cfg.minimal_pair_fraction)
    rows = annotator_pairs(arena, spec, *pairs, rng)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pairs.jsonl", rows)
    scorers = train_proxies(cfg, arena, out / "pairs.jsonl", out)
    prompts = [p.text for p in arena.sample_prompts(cfg.prompts, rng)]
    pool_texts = pools(prompts) if pools is not None else demonstrator_pools(arena, prompts, cfg.pool, rng)
    gold = gold_pool_wins(arena, prompts, pool_texts)
    stats = {name: proxy_pool_scores(s, prompts, pool_texts) for name, s in scorers.items()}
    curves = hacking_curves({k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}, gold, cfg.ns)
    curves.to_csv(out / "curves.csv", index=False)
    peaks = peak_table(curves)
    picked = picked_features(arena, prompts, pool_texts, {k: v[0] for k, v in stats.items()})
    setup = (
        f"{len(rows)} pairs labeled by `{spec.name}` (length bias {spec.length_bias:g} log-odds per word, "
        f"temperature {spec.temperature:g}); π0: {policy}; {len(prompts)} prompts × a pool of "
        f"{len(pool_texts[0])} samples"
    )
    scale = penalty_scale(stats, cfg)
    if scale:
        setup += (
            f"; over the pools, ‖φ − φ(x, π0)‖ in the Σ_off⁻¹ norm averages {scale['distance']:.3f} and the BT "
            f"reward's standard deviation within a pool {scale['reward_std']:.3f}"
        )
    section = hacking_section(curves, peaks, setup, cfg)
    section.add_table(
        "reward_hacking_picks", picked.round(3), "What π0's samples and each proxy's best of the pool are:"
    )
    metrics = {
        "setup": setup,
        "lcb_scale": scale,
        "peaks": peaks.reset_index().to_dict(orient="records"),
        "picks": picked.reset_index().to_dict(orient="records"),
        "cpu_seconds": time.process_time() - t0,
    }
    return HackingResult(curves, peaks, picked, section, metrics, metrics["cpu_seconds"])


def penalty_scale(stats: dict[str, tuple[np.ndarray, np.ndarray]], cfg: HackingConfig) -> dict[str, float]:
    """The LCB's penalty per unit of c (the mean Σ_off⁻¹ distance of a pool sample to the pool's mean feature,
    (r̂ − r_lcb)/c) next to the BT reward's mean within-pool standard deviation; {} without both proxies."""
    titles = [f"{PROXY_TITLES['bt_lcb']} (c={c:g})" for c in cfg.lcb_c if c > 0]
    if PROXY_TITLES["bt"] not in stats or not titles:
        return {}
    reward = stats[PROXY_TITLES["bt"]][0]
    c = next(c for c in cfg.lcb_c if c > 0)
    distance = (reward - stats[titles[0]][0]) / c
    return {"distance": float(distance.mean()), "reward_std": float(reward.std(axis=1, ddof=1).mean())}


def hacking_png(curves: pd.DataFrame) -> bytes:
    """Two panels against KL(π‖π0): the proxy's own win rate vs π0 and the gold win rate vs π0 (± 1 SE)."""
    from evaluation.plots import _figure, _png

    fig = _figure(8.0, 3.2)
    for k, (column, label) in enumerate((("proxy_win_rate", "proxy win rate vs π0"),
                                         ("gold_win_rate", "gold win rate vs π0"))):  # fmt: skip
        ax = fig.add_subplot(1, 2, k + 1)
        for name, c in curves.groupby("proxy", sort=False):
            ax.plot(c["kl"], c[column], marker="o", markersize=3, label=name)
            if column == "gold_win_rate":
                ax.fill_between(c["kl"], c[column] - c["gold_se"], c[column] + c["gold_se"], alpha=0.15)
        ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("KL(best-of-n ‖ π0) = log n − (n−1)/n  (nats)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle("Best-of-n under proxies trained on a biased annotator", fontsize=10)
    return _png(fig)


def hacking_section(curves: pd.DataFrame, peaks: pd.DataFrame, setup: str, cfg: HackingConfig) -> ReportSection:
    s = ReportSection("Reward hacking: best-of-n against proxies of a biased annotator")
    s.text(
        f"Proxies trained on {setup}. Best-of-n picks the sample the proxy scores highest (a GPM: the highest mean "
        "win probability against the pool); every n comes from the one pool through the order-statistics "
        "estimator (the average over all n-subsets), so n = 1 is π0 itself (gold win rate ½). "
        f"BT + linear LCB: c ∈ {{{', '.join(f'{c:g}' for c in cfg.lcb_c)}}}, λ = {cfg.lcb_lam:g} on the head's last "
        "hidden layer, φ(x, π0) the "
        f"pool's mean feature; ensemble: {cfg.ensemble_size} heads, "
        + (f"mean − {cfg.ensemble_c:g}·std" if cfg.ensemble_mode == "mean_std" else "min")
        + " of their rewards. The gold win rate is exact per pair (the arena's gold preference)."
    )
    s.add_figure("reward_hacking", hacking_png(curves), "Proxy and gold win rate vs π0 against KL(π‖π0).")
    wide = curves.pivot(index="n", columns="proxy", values="gold_win_rate")[list(dict.fromkeys(curves["proxy"]))]
    wide.insert(0, "KL", [best_of_n_kl(int(n)) for n in wide.index])
    s.add_table("reward_hacking_gold", wide.round(3), "Gold win rate vs π0 of best-of-n under each proxy:")
    s.add_table(
        "reward_hacking_peaks",
        peaks.round(3),
        "Where the gold win rate peaks, and how far it falls by the largest n:",
    )
    s.metrics["reward_hacking"] = peaks.reset_index().to_dict(orient="records")
    return s
