"""``prefgame online``: online iterative RLHF with a general preference model (docs/online.md).

The loop learns the preference model while it aligns the policy. Round t = 0, 1, … (every phase writes
into ``rounds/round-<t>/`` of ``output_dir``):

1. **fit** R̂_t, a preference model (``pm.kind``, an ensemble of ``pm.ensemble`` heads whose mean score
   is the oracle), on every label so far: the offline set and the pairs of rounds 0 … t−1; warm-started
   from R̂_{t−1}'s heads or fitted from scratch (``pm.refit``). No label yet (an online start): no R̂_0;
2. **solve**: the main agent π_t is the inner solver (``solver.kind``: self-play with any registered
   algorithm, online DPO, or PPO when R̂ is a reward) against R̂_t, warm-started from π_{t−1}
   (``policy.init_from``) with π0 as the reference; without R̂_t, π_t = π_{t−1};
3. **label**: on m = ``online.pairs_per_round`` training prompts the main agent answers once and the
   enhancer (``enhancer.kind``) once: ``reference`` (a π0 sample), ``uncertainty`` (of
   ``enhancer.candidates`` samples, the one on whose pair with the main agent's response R̂_t's members
   disagree most: :func:`prefgame.pessimism.ensemble_disagreement`) or ``best_of_n`` (of the candidates,
   the best under R̂_t: the highest leave-one-out win rate, the highest reward for a BT model); the true
   oracle (``oracle``: the arena's gold preference, an annotator, or a judge through ``kind=factory``)
   labels each distinct pair once; ``online.label_budget`` caps the labels the run asks for.

Rounds 0 … ``online.rounds``−1 label; the last round (``online.rounds``, or the one after the budget ran
out) fits and solves only, so the final policy and preference model use every label. ``offline.pairs`` π0
pairs labeled by the oracle at the start (counted in the budget) and ``offline.path`` (a pairs file, not
counted) are the offline set: offline only (``online.rounds=0``), online only (neither), or both (hybrid).

Every random draw comes from a stream seeded by (seed, round, purpose); each phase's output is written
atomically (the solver's and the preference model's runs checkpoint as their own jobs do), and a phase
whose output exists is not run again, so ``resume=true|auto`` after a kill at any point ends with the
files an uninterrupted run writes. ``labels.jsonl`` (every label, offline first) and ``metrics.jsonl``
(one row per round) are rewritten whole after each round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from prefgame.arena.job import ArenaConfig
from prefgame.config import config_to_dict, load_config, param
from prefgame.errors import ConfigError, PrefgameError
from prefgame.game.lm_selfplay import leave_one_out_win_rates
from prefgame.models.kinds import kind_names, kind_spec
from prefgame.oracle import OracleConfig, PreferenceOracle, build_oracle, preference_matrices
from prefgame.pessimism import best_of_n_index, ensemble_disagreement
from prefgame.run import (
    Resume,
    RunDir,
    atomic_write_json,
    overwrite_param,
    read_jsonl,
    resume_param,
    run_job,
    seed_everything,
    write_jsonl,
)
from prefgame.train.policy import PolicyConfig, PromptsConfig, prompt_pools
from prefgame.train.selfplay.config import Algorithm

# purposes of the random streams, each seeded by (seed, round, purpose)
OFFLINE_PROMPTS, OFFLINE_SAMPLES, LABEL_PROMPTS, MAIN_SAMPLES, ENHANCER_SAMPLES = 0, 1, 2, 3, 4
LABEL_DRAWS, SOLVER, EVAL_SAMPLES, REFERENCE_EVAL, PM_EVAL = 5, 6, 7, 8, 9

PAIR_KINDS = tuple(kind_names(ratings=False))  # the kinds a preference model of labeled pairs can be
OUTPUTS = ("rounds", "offline", "eval", "labels.jsonl")  # what a fresh start clears besides metrics and checkpoints
SOLVER_DEFAULTS: dict[str, list[str]] = {  # each solver's settings before solver.overrides (arena scale)
    "selfplay": [
        "train.iterations=4", "sampling.prompts_per_iteration=32", "sampling.samples_per_prompt=4",
        "sampling.reference_samples_per_prompt=4", "train.steps_per_iteration=8", "train.batch_size=128",
        "train.micro_batch_size=128", "train.warmup_steps=0", "train.schedule=constant", "game.tau=0.05",
        "game.eta=2", "train.lr=5e-4", "eval.prompts=0",
    ],
    "dpo": [
        "online.rounds=4", "sampling.prompts_per_iteration=32", "sampling.samples_per_prompt=8",
        "online.steps_per_round=8", "train.warmup_steps=0", "eval.prompts=0",
    ],
    "ppo": ["train.iterations=4", "train.rollout_batch_size=256", "train.mini_batch_size=64",
            "train.micro_batch_size=32", "train.save_every=1", "eval.prompts=0", "reward.normalize_samples=128"],
}  # fmt: skip


@dataclass
class OfflineConfig:
    path: str = param("", "a pairs file of labels given before the run (any pairs format; not counted in the budget)")
    pairs: int = param(0, "pairs of π0 responses the oracle labels before round 0 (counted in the budget)", ge=0)


@dataclass
class RoundsConfig:
    rounds: int = param(4, "T: labeling rounds (then a last fit and solve on every label); 0: offline only", ge=0)
    pairs_per_round: int = param(500, "m: pairs (main agent vs enhancer) the oracle labels per round", ge=1)
    label_budget: int = param(
        0,
        "most labels the run asks the oracle for (offline.pairs included); when it runs out mid-round the run "
        "keeps what was labeled, fits and solves once more on it, and ends (0: no limit)",
        ge=0,
    )
    labels: Literal["soft", "sampled"] = param(
        "soft", "soft: the label is the oracle's probability P(a ≻ b); sampled: a winner drawn from it (0 or 1)"
    )


@dataclass
class EnhancerConfig:
    kind: Literal["reference", "uncertainty", "best_of_n"] = param(
        "reference",
        "the main agent's opponent in the labeled pairs: reference (a π0 sample), uncertainty (the candidate "
        "on which R̂'s ensemble disagrees most; pm.ensemble ≥ 2) or best_of_n (the best candidate under R̂)",
    )
    candidates: int = param(4, "uncertainty, best_of_n: candidate responses per prompt", ge=1)
    source: Literal["reference", "policy"] = param(
        "reference", "uncertainty, best_of_n: the candidates are samples of π0 (reference) or of the main agent"
    )


@dataclass
class OnlinePMConfig:
    kind: Literal[PAIR_KINDS] = param("gpm", f"preference model kind ({', '.join(PAIR_KINDS)}): R̂_t")
    ensemble: int = param(1, "heads of R̂ (independently seeded); R̂'s score is their mean", ge=1)
    refit: Literal["scratch", "warm"] = param(
        "scratch", "R̂_{t+1} from a seeded initialization (scratch) or from R̂_t's heads (warm)"
    )
    steps: int = param(600, "optimizer steps of each fit", ge=1)
    lr: float = param(3e-3, "peak learning rate of each fit", gt=0)
    batch_size: int = param(128, "pairs per optimizer step", ge=1)
    head_hidden_size: int = param(256, "MLP width of each head")
    gpm_blocks: int = param(4, "k of the GPM (2k-dimensional preference vectors)", ge=1)
    backbone_hidden_size: int = param(128, "arena: width of the frozen bag-of-words backbone", ge=1)
    eval_pairs: int = param(1000, "arena: held-out gold-labeled pairs each fit is scored on (0: none)", ge=0)
    overrides: list[str] = param([], "key=value settings of every fit (prefgame train-pm --help), after the above")


@dataclass
class SolverConfig:
    kind: Literal["selfplay", "dpo", "ppo"] = param(
        "selfplay", "the main agent's solver against R̂: self-play, online DPO, or PPO (pm.kind=bt)"
    )
    algorithm: Algorithm = param("inpo", "kind=selfplay: the self-play algorithm (its arena preset applies)")
    overrides: list[str] = param(
        [],
        "key=value settings of every solver run (prefgame selfplay|dpo|ppo --help), after the job's own "
        "(online.py SOLVER_DEFAULTS: 4 iterations of 32 prompts per round on the arena)",
    )


@dataclass
class OnlineSamplingConfig:
    max_new_tokens: int = param(40, "length limit of the labeled responses and of the measurements' samples", ge=1)
    batch_size: int = param(256, "sequences per generation batch", ge=1)


@dataclass
class OnlineEvalConfig:
    prompts: int = param(240, "arena: held-out prompts each round's policy answers (exact class-level figures)", ge=0)
    samples_per_prompt: int = param(4, "responses per held-out prompt", ge=1)


@dataclass
class OnlineConfig:
    output_dir: str = param("runs/online", "where the rounds, labels, metrics and log are written")
    resume: Resume = resume_param("the phases this output_dir holds (every finished phase is kept)")
    overwrite: bool = overwrite_param()
    seed: int = param(0, "seed of every draw: prompts, samples, label draws, and the solver's and fits' seeds")
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")
    policy: PolicyConfig = param(PolicyConfig, "π0: the first main agent and the reference of every solver run")
    oracle: OracleConfig = param(OracleConfig, "the true preference that labels pairs (arena gold by default)")
    prompts: PromptsConfig = param(PromptsConfig, "where the labeled prompts and the solver's prompts come from")
    arena: ArenaConfig = param(ArenaConfig, "the arena world (prompts, gold oracle, measurements)")
    offline: OfflineConfig = param(OfflineConfig, "labels before round 0")
    online: RoundsConfig = param(RoundsConfig, "rounds, pairs per round and the label budget")
    enhancer: EnhancerConfig = param(EnhancerConfig, "the explorer: the main agent's opponent in labeled pairs")
    pm: OnlinePMConfig = param(OnlinePMConfig, "the preference model R̂ refitted every round")
    solver: SolverConfig = param(SolverConfig, "the main agent's solver")
    sampling: OnlineSamplingConfig = param(OnlineSamplingConfig, "sampling of labeled and measured responses")
    eval: OnlineEvalConfig = param(OnlineEvalConfig, "measurements of every round's policy")

    def __post_init__(self) -> None:
        e, pm, o = self.enhancer, self.pm, self.online
        if e.kind == "uncertainty" and pm.ensemble < 2:
            raise ValueError(f"enhancer.kind=uncertainty needs an ensemble: set pm.ensemble ≥ 2 (got {pm.ensemble})")
        if e.kind != "reference" and e.candidates < 2:
            raise ValueError(f"enhancer.kind={e.kind} chooses among candidates: set enhancer.candidates ≥ 2")
        if self.solver.kind == "ppo" and not kind_spec(pm.kind).reward:
            raise ValueError(f"solver.kind=ppo needs a reward: pm.kind={'/'.join(kind_names(reward=True))}")
        if not self.offline.path and self.offline.pairs == 0 and o.rounds == 0:
            raise ValueError("no labels to fit: set online.rounds ≥ 1, offline.pairs ≥ 1 or offline.path")
        if o.label_budget and self.offline.pairs > o.label_budget:
            raise ValueError(f"offline.pairs={self.offline.pairs} exceeds online.label_budget={o.label_budget}")
        from prefgame.train.pm import PMConfig

        checks = {
            "solver": lambda: solver_config(self.solver, []),
            "pm": lambda: load_config(PMConfig, None, pm.overrides),
        }
        for key, check in checks.items():  # the settings of the runs the loop starts, before any of them
            try:
                check()
            except ConfigError as exc:
                raise ValueError(f"{key}.overrides: {str(exc).removeprefix('invalid config: ')}") from None


def solver_config(s: SolverConfig, own: list[str], model: str = ""):
    """(config, train function) of a solver run: ``s.kind``'s defaults (:data:`SOLVER_DEFAULTS`, after the
    algorithm's arena preset for self-play and the online preset for DPO), ``s.overrides``, then ``own``
    (the loop's settings) and the preference model at ``model`` as oracle (PPO: as reward)."""
    settings = [*SOLVER_DEFAULTS[s.kind], *s.overrides, *own]
    if s.kind == "selfplay":
        from prefgame.train.selfplay import selfplay_config
        from prefgame.train.selfplay import train as job

        oracle = ["oracle.kind=model", f"oracle.path={json.dumps(model)}"] if model else []
        return selfplay_config(s.algorithm, None, [*settings, *oracle]), job
    if s.kind == "dpo":
        from prefgame.train.dpo import ARENA_PRESETS, DPOConfig
        from prefgame.train.dpo import train as job

        oracle = ["oracle.kind=model", f"oracle.path={json.dumps(model)}"] if model else []
        return load_config(DPOConfig, None, [*ARENA_PRESETS["online"], *settings, *oracle]), job
    from prefgame.train.ppo import ppo_config
    from prefgame.train.ppo import train as job

    return ppo_config(None, [*settings, *([f"reward.path={json.dumps(model)}"] if model else [])]), job


def run(cfg: OnlineConfig) -> dict:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return run_job(cfg.output_dir, lambda out, log: train(cfg, out, log), name="prefgame.online")


def train(cfg: OnlineConfig, out: RunDir, log, *, oracle: PreferenceOracle | None = None) -> dict:
    """The online loop in ``out`` (module docstring); returns the final metrics."""
    progress = [out.file(n) for n in ("rounds", "offline") if out.file(n).exists()]
    resumed = out.start(cfg, resume=cfg.resume, checkpoint=progress[0] if progress else None, outputs=OUTPUTS)
    if resumed:
        log.info(f"resuming in {out.path}: finished phases are kept")
    seed_everything(cfg.seed)
    return OnlineLoop(cfg, out, log, oracle).run()


# ---------------------------------------------------------------------------------------------- pure parts


def stream_seed(seed: int, round_: int, purpose: int) -> int:
    """The integer seed of the stream (seed, round, purpose): samplers and sub-runs take one integer."""
    return int(np.random.SeedSequence([seed, round_, purpose]).generate_state(1)[0])


def most_uncertain(member_probs: torch.Tensor) -> torch.Tensor:
    """member_probs (K, M, n): member k's P(candidate_{m,j} ≻ main_m) → (M,) the index of each prompt's
    candidate with the largest ensemble disagreement (:func:`~prefgame.pessimism.ensemble_disagreement`);
    ties go to the first."""
    k, m, n = member_probs.shape
    return ensemble_disagreement(member_probs.reshape(k, m * n)).reshape(m, n).argmax(-1)


def labeled_rows(
    prompts: Sequence[str], main: Sequence[str], other: Sequence[str], probs: torch.Tensor, *, round_: int,
    source: str, draws: np.ndarray | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Pairs rows (prefgame.data's pairs format) of oracle probabilities P(main ≻ other): chosen is the side
    the label favours, ``label`` = P(chosen ≻ rejected) (soft), or 1 for the drawn winner (``draws``:
    uniforms, main wins when u < P)."""
    rows = []
    for i, p in enumerate(probs.double().tolist()):
        main_wins = p >= 0.5 if draws is None else bool(draws[i] < p)
        label = (p if main_wins else 1.0 - p) if draws is None else 1.0
        rows.append(
            {
                "prompt": prompts[i],
                "chosen": main[i] if main_wins else other[i],
                "rejected": other[i] if main_wins else main[i],
                "label": label,
                "round": round_,
                "source": source,
                "chosen_is_main": main_wins,
            }
        )
    return rows


def overrides_of(section: Any, prefix: str) -> list[str]:
    """A config section as ``prefix.key=value`` overrides (values in JSON, which YAML reads back)."""

    def flat(d: dict, pre: str) -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{pre}{k}.") if isinstance(v, dict) and v else [f"{pre}{k}={json.dumps(v)}"]
        return out

    return flat(config_to_dict(section, redact=False), f"{prefix}." if prefix else "")


def judge_cost(oracle: PreferenceOracle) -> dict[str, float]:
    """The numeric usage counters of an oracle that reports them (an LLM judge's ``stats``: requests,
    tokens, cost); {} otherwise."""
    stats = getattr(oracle, "stats", None)
    stats = stats() if callable(stats) else stats
    if not isinstance(stats, dict):
        return {}
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------- the loop


class OnlineLoop:
    """One run of the loop: its models, prompt pools and phases (each skipped when its output exists)."""

    def __init__(self, cfg: OnlineConfig, out: RunDir, log, oracle: PreferenceOracle | None) -> None:
        from prefgame.lm import load_causal_lm, load_tokenizer

        if not cfg.policy.name_or_path:
            raise PrefgameError("policy.name_or_path is empty: give π0's folder, e.g. runs/quickstart/pi0/model")
        self.cfg, self.out, self.log = cfg, out, log
        self.arena = cfg.arena.build()
        self.oracle = oracle if oracle is not None else build_oracle(cfg.oracle, self.arena)
        self.tok = load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path)
        self.pi0_path = cfg.policy.name_or_path
        self.pi0 = load_causal_lm(self.pi0_path).eval()
        self.on_arena = cfg.prompts.source == "arena"
        self.train_prompts, self.eval_prompts = prompt_pools(
            cfg.prompts, self.arena, seed=cfg.seed, n_eval=cfg.eval.prompts if self.on_arena else 0
        )
        self.ref_classes = None

    # -- files ------------------------------------------------------------------------------------
    def round_dir(self, t: int) -> Path:
        return self.out.file("rounds") / f"round-{t:03d}"

    def _rel(self, path: Path | str) -> str:
        path = Path(path)
        return str(path.relative_to(self.out.path)) if path.is_relative_to(self.out.path) else str(path)

    # -- sampling -----------------------------------------------------------------------------------
    def sample(self, model, prompts: Sequence[str], seed: int) -> list[str]:
        from prefgame.game.lm_sampling import sample_texts

        sc = self.cfg.sampling
        return sample_texts(
            model, self.tok, list(prompts), max_new_tokens=sc.max_new_tokens, batch_size=sc.batch_size, seed=seed,
            engine="prefgame",
        )  # fmt: skip

    def load_policy(self, path: str):
        from prefgame.lm import load_causal_lm

        return self.pi0 if path == self.pi0_path else load_causal_lm(path).eval()

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, log = self.cfg, self.log
        t_start, cpu_start = time.perf_counter(), time.process_time()
        offline = self.offline_labels()
        initial = self.reference_figures()
        rows: list[dict[str, Any]] = []
        policy, pm = self.pi0_path, None
        used = sum(1 for r in offline if r["source"] == "offline-labeled")
        budget, m = cfg.online.label_budget, cfg.online.pairs_per_round
        stopped = {"by": "rounds", "round": cfg.online.rounds}
        t = 0
        while True:
            rdir = self.round_dir(t)
            labels = offline + [row for r in range(t) for row in read_jsonl(self.round_dir(r) / "pairs.jsonl")]
            row: dict[str, Any] = {"round": t, "labels_total": len(labels)}
            c0 = time.process_time()
            if labels:
                pm, fit = self.fit(t, rdir, labels, pm)
                row.update(fit)
                policy = self.solve(t, rdir, pm, policy)
            row["policy_trained"] = pm is not None
            row.update(self.measure(t, rdir, policy))
            final = t >= cfg.online.rounds or stopped["by"] == "label_budget"
            if not final:
                asked = m if not budget else min(m, budget - used)
                if asked <= 0:
                    stopped, final = {"by": "label_budget", "round": t, "pairs_asked": 0, "of": m}, True
                else:
                    info = self.label(t, rdir, policy, pm, asked)
                    used += info["labeled"]
                    row.update({f"label/{k}": v for k, v in info.items()})
                    if asked < m:
                        stopped = {"by": "label_budget", "round": t, "pairs_asked": asked, "of": m}
            row["labels_used"] = used
            row["cpu_seconds"] = time.process_time() - c0
            rows.append(row)
            write_jsonl(self.out.file("metrics.jsonl"), [{"step": r["round"], **r} for r in rows])
            self.write_labels(offline, t + (0 if final else 1))
            log.info(self.round_line(row))
            if final:
                break
            t += 1
        infos = [self.out.file("offline") / "info.json", *(self.round_dir(r) / "labels.json" for r in range(t + 1))]
        infos = [json.loads(p.read_text()) for p in infos if p.exists()]
        judge: dict[str, float] = {}
        for info in infos:
            for k, v in (info.get("judge") or {}).items():
                judge[k] = judge.get(k, 0.0) + v
        final_row = rows[-1]
        metrics = {
            "start": ("hybrid" if cfg.online.rounds else "offline") if offline else "online",
            "rounds": t,
            "labels": {
                "used": used,
                "budget": budget or None,
                "offline_labeled": sum(1 for r in offline if r["source"] == "offline-labeled"),
                "offline_given": sum(1 for r in offline if r["source"] == "offline-given"),
                "online": used - sum(1 for r in offline if r["source"] == "offline-labeled"),
                "identical_pairs_skipped": sum(i["identical_skipped"] for i in infos),
                "empty_pairs_skipped": sum(i["empty_skipped"] for i in infos),
                "judge": judge or None,
            },
            "stopped": stopped,
            "policy": self._rel(Path(policy)),
            "preference_model": self._rel(Path(pm)) if pm is not None else None,
            "initial": initial,
            "final": {k: v for k, v in final_row.items() if k.startswith(("eval/", "pm/"))},
            "history": rows,
            "seconds": {"total": time.perf_counter() - t_start, "cpu_seconds": time.process_time() - cpu_start},
        }
        self.out.write_metrics(metrics)
        log.info(self.summary(metrics))
        return metrics

    def round_line(self, row: dict[str, Any]) -> str:
        parts = [f"round {row['round']}: {row['labels_used']} labels used"]
        if "pm/expected_accuracy" in row:
            parts.append(f"R̂ expected accuracy {row['pm/expected_accuracy']:.3f}")
        if "eval/exploitability" in row:
            parts.append(f"exploitability {row['eval/exploitability']:.3f}")
            parts.append(f"gold win rate vs π0 {row['eval/gold_win_rate_vs_ref']:.3f}")
        return ", ".join(parts)

    def summary(self, m: dict[str, Any]) -> str:
        s, lab = m["stopped"], m["labels"]
        why = (
            f"the label budget ({lab['budget']}) ended it in round {s['round']} after {s['pairs_asked']} of "
            f"{s['of']} pairs"
            if s["by"] == "label_budget"
            else f"{s['round']} labeling rounds done"
        )
        cost = f", judge cost {lab['judge']['cost']:.4f}" if lab["judge"] and "cost" in lab["judge"] else ""
        f, i = m["final"], m["initial"]
        figures = ""
        if "eval/exploitability" in f:
            figures = (
                f"; final exploitability {f['eval/exploitability']:.3f} (π0 {i['eval/exploitability']:.3f}), "
                f"gold win rate vs π0 {f['eval/gold_win_rate_vs_ref']:.3f}"
            )
        return f"online done: {why}; {lab['used']} labels used{cost}{figures}; policy {m['policy']}"

    # -- phases ------------------------------------------------------------------------------------
    def offline_labels(self) -> list[dict[str, Any]]:
        """The offline set: ``offline.path``'s pairs, then ``offline.pairs`` π0 pairs labeled by the oracle
        (kept in offline/labels.jsonl, with the oracle's usage in offline/info.json)."""
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
        if cfg.offline.path:
            from prefgame.data.columns import load_pairs_or_rankings

            pairs = load_pairs_or_rankings(cfg.offline.path, "train", skip_invalid=True)
            if not hasattr(pairs, "chosen"):
                raise PrefgameError(f"offline.path {cfg.offline.path} holds rankings: give pairs")
            rows += [
                {
                    "prompt": str(x),
                    "chosen": a,
                    "rejected": b,
                    "label": float(p),
                    "round": -1,
                    "source": "offline-given",
                }
                for x, a, b, p in zip(pairs.prompts, pairs.chosen, pairs.rejected, pairs.labels)
            ]
        n = cfg.offline.pairs
        if n:
            path, info_path = self.out.file("offline") / "labels.jsonl", self.out.file("offline") / "info.json"
            if not info_path.exists():
                rng = np.random.default_rng(stream_seed(cfg.seed, 0, OFFLINE_PROMPTS))
                prompts = [self.train_prompts[i] for i in rng.integers(len(self.train_prompts), size=n)]
                ys = self.sample(self.pi0, prompts * 2, stream_seed(cfg.seed, 0, OFFLINE_SAMPLES))
                new, info = self.ask_oracle(prompts, ys[:n], ys[n:], round_=-1, source="offline-labeled")
                write_jsonl(path, new)
                atomic_write_json(info_path, info)  # last: the phase is done
            rows += read_jsonl(path)
        return rows

    def ask_oracle(
        self, prompts: list[str], main: list[str], other: list[str], *, round_: int, source: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Label the pairs the oracle can compare: two different, non-empty responses (an identical pair carries
        no preference, and the pairs format has no empty response); the others are not asked and not counted."""
        keep = [i for i in range(len(prompts)) if main[i] != other[i] and main[i].strip() and other[i].strip()]
        identical = sum(1 for a, b in zip(main, other) if a == b)
        before = judge_cost(self.oracle)
        sel = lambda xs: [xs[i] for i in keep]  # noqa: E731
        probs = self.oracle.preference(sel(prompts), sel(main), sel(other)) if keep else torch.zeros(0)
        after = judge_cost(self.oracle)
        draws = None
        if self.cfg.online.labels == "sampled":
            draws = np.random.default_rng(stream_seed(self.cfg.seed, round_ + 1, LABEL_DRAWS)).random(len(keep))
        rows = labeled_rows(sel(prompts), sel(main), sel(other), probs, round_=round_, source=source, draws=draws)
        info = {
            "asked": len(prompts),
            "labeled": len(keep),
            "identical_skipped": identical,
            "empty_skipped": len(prompts) - len(keep) - identical,
            "judge": {k: after[k] - before.get(k, 0.0) for k in after} or None,
        }
        return rows, info

    def reference_figures(self) -> dict[str, float]:
        """π0's class distribution on the held-out prompts (every measurement's opponent, from samples of their
        own stream), and π0's figures measured as every round's policy is (:meth:`measure`)."""
        if not self.on_arena or not self.eval_prompts:
            return {}
        prompts = [p for p in self.eval_prompts for _ in range(self.cfg.eval.samples_per_prompt)]
        texts = self.sample(self.pi0, prompts, stream_seed(self.cfg.seed, 0, REFERENCE_EVAL))
        self.ref_classes = self.arena.class_distribution(prompts, texts)
        return self.figures(self.pi0)

    def figures(self, model) -> dict[str, float]:
        """Exact class-level figures of ``model`` against π0 from its samples on the held-out prompts, drawn
        from one stream for every model (common random numbers across rounds)."""
        from prefgame.game.lm_selfplay import class_figures

        prompts = [p for p in self.eval_prompts for _ in range(self.cfg.eval.samples_per_prompt)]
        texts = self.sample(model, prompts, stream_seed(self.cfg.seed, 0, EVAL_SAMPLES))
        pi = self.arena.class_distribution(prompts, texts)
        return {f"eval/{k}": v for k, v in class_figures(self.arena, pi, self.ref_classes).items()}

    def measure(self, t: int, rdir: Path, policy: str) -> dict[str, float]:
        """Round t's policy measured (:meth:`figures`), kept in rdir/measure.json."""
        if self.ref_classes is None:
            return {}
        path = rdir / "measure.json"
        if not path.exists():
            atomic_write_json(path, self.figures(self.load_policy(policy)))
        return json.loads(path.read_text())

    def fit(self, t: int, rdir: Path, labels: list[dict], previous: str | None) -> tuple[str, dict[str, Any]]:
        """R̂_t on ``labels`` (rdir/pm: a train-pm run); (its model folder, its figures)."""
        from prefgame.train.pm import train_preference_model

        pm_dir = rdir / "pm"
        if not (pm_dir / "metrics.json").exists():
            data = rdir / "pm_train.jsonl"
            write_jsonl(data, [{k: r[k] for k in ("prompt", "chosen", "rejected", "label")} for r in labels])
            init = previous if self.cfg.pm.refit == "warm" and previous is not None else ""
            pm_cfg = self.pm_config(pm_dir, data, init)
            run_job(pm_dir, lambda o, lg: train_preference_model(pm_cfg, o, lg), name="prefgame.pm", quiet=True)
        m = json.loads((pm_dir / "metrics.json").read_text())
        figures: dict[str, Any] = {"pm/train_pairs": m["train_pairs"]}
        if "eval" in m:
            figures["pm/accuracy"] = m["eval"]["accuracy"]
        if "arena" in m:
            figures["pm/expected_accuracy"] = m["arena"]["expected_accuracy"]
            figures["pm/bayes_accuracy"] = m["arena"]["bayes_accuracy"]
        return str(pm_dir / "model"), figures

    def pm_config(self, pm_dir: Path, data: Path, init_from: str):
        from prefgame.arena import export
        from prefgame.train.pm import PMConfig, PMDataConfig
        from prefgame.train.pm_arena import ArenaPMConfig, arena_pm_config

        c = self.cfg.pm
        eval_path = ""
        if self.on_arena and c.eval_pairs:
            eval_file = self.out.file("eval") / "pm_eval.jsonl"
            if not eval_file.exists():
                rng = np.random.default_rng(stream_seed(self.cfg.seed, 0, PM_EVAL))
                rows = [r for r in export.labeled_pairs(self.arena, c.eval_pairs, rng) if r["chosen"] != r["rejected"]]
                write_jsonl(eval_file, rows)
            eval_path = str(eval_file)
        arena_pm = ArenaPMConfig(
            arena=self.cfg.arena, seed=self.cfg.seed, backbone_hidden_size=c.backbone_hidden_size,
            head_hidden_size=c.head_hidden_size, head_steps=c.steps, head_lr=c.lr, batch_size=c.batch_size,
            gpm_blocks=c.gpm_blocks,
        )  # fmt: skip
        data_cfg = PMDataConfig(path=str(data), eval_path=eval_path, eval_fraction=0.0, skip_invalid=True)
        base = arena_pm_config(arena_pm, c.kind, pm_dir, data_cfg)
        base.arena_metrics = bool(eval_path)
        own = [
            f"model.ensemble.size={c.ensemble}", "model.ensemble.mode=mean_std", "model.ensemble.c=0",
            "resume=auto", f"init_from={json.dumps(init_from)}", f"output_dir={json.dumps(str(pm_dir))}",
        ]  # fmt: skip
        return load_config(PMConfig, None, [*overrides_of(base, ""), *own, *c.overrides])

    def solve(self, t: int, rdir: Path, pm: str, previous: str) -> str:
        """π_t: the solver against R̂_t from π_{t−1} (rdir/policy: a selfplay, dpo or ppo run); its model folder."""
        s = self.cfg.solver
        run_dir = rdir / "policy"
        if not (run_dir / "metrics.json").exists():
            cfg = self.cfg
            own = [
                *overrides_of(cfg.policy, "policy"),
                f"policy.init_from={json.dumps('' if previous == self.pi0_path else str(previous))}",
                *overrides_of(cfg.prompts, "prompts"),
                *overrides_of(cfg.arena, "arena"),
                f"train.seed={stream_seed(cfg.seed, t, SOLVER)}",
                f"output_dir={json.dumps(str(run_dir))}",
                "resume=auto",
            ]
            job_cfg, job = solver_config(s, own, pm)
            run_job(run_dir, lambda o, lg: job(job_cfg, o, lg), name=f"prefgame.{s.kind}", quiet=True)
        return str(run_dir / "model")

    def label(self, t: int, rdir: Path, policy: str, pm: str | None, asked: int) -> dict[str, Any]:
        """Round t's ``asked`` pairs (main agent vs enhancer) labeled by the oracle: rdir/pairs.jsonl and
        rdir/labels.json (what was asked, labeled and skipped, the enhancer's figures, the judge's usage)."""
        info_path = rdir / "labels.json"
        if info_path.exists():
            return json.loads(info_path.read_text())
        cfg = self.cfg
        rng = np.random.default_rng(stream_seed(cfg.seed, t, LABEL_PROMPTS))
        prompts = [self.train_prompts[i] for i in rng.integers(len(self.train_prompts), size=asked)]
        main_model = self.load_policy(policy)
        main = self.sample(main_model, prompts, stream_seed(cfg.seed, t, MAIN_SAMPLES))
        other, enhancer_info = self.enhance(t, prompts, main, main_model, pm)
        rows, info = self.ask_oracle(prompts, main, other, round_=t, source="online")
        write_jsonl(rdir / "pairs.jsonl", rows)
        info.update(enhancer_info)
        atomic_write_json(info_path, info)
        return info

    def enhance(self, t: int, prompts: list[str], main: list[str], main_model, pm: str | None):
        """The enhancer's response to each prompt, and its figures."""
        e, seed = self.cfg.enhancer, stream_seed(self.cfg.seed, t, ENHANCER_SAMPLES)
        if e.kind == "reference":
            return self.sample(self.pi0, prompts, seed), {}
        n = e.candidates
        source = self.pi0 if e.source == "reference" else main_model
        many = [p for p in prompts for _ in range(n)]  # prompt-major
        candidates = self.sample(source, many, seed)
        if pm is None:  # no preference model yet: a plain sample
            return [candidates[i * n] for i in range(len(prompts))], {"enhancer/without_model": True}
        from prefgame.models.load import load_model

        model = load_model(pm, device="cpu")
        if e.kind == "uncertainty":
            member = model.member_preferences(many, candidates, [y for y in main for _ in range(n)])
            pick = most_uncertain(member.reshape(member.shape[0], len(prompts), n))
            spread = ensemble_disagreement(member).reshape(len(prompts), n)
            figures = {
                "enhancer/disagreement_chosen": float(spread.gather(1, pick[:, None]).mean()),
                "enhancer/disagreement_mean": float(spread.mean()),
            }
        else:
            mats = preference_matrices(model.preference, prompts, candidates, n)
            win = leave_one_out_win_rates(mats).reshape(len(prompts), n)  # for a reward: ordered as the rewards
            pick = best_of_n_index(win)
            figures = {"enhancer/win_rate_chosen": float(win.gather(1, pick[:, None]).mean())}
        return [candidates[i * n + int(j)] for i, j in enumerate(pick)], figures

    def write_labels(self, offline: list[dict], rounds: int) -> None:
        """labels.jsonl: the offline set, then every labeled round's pairs (rewritten whole, atomically)."""
        rows = list(offline)
        for r in range(rounds):
            path = self.round_dir(r) / "pairs.jsonl"
            if path.exists():
                rows += read_jsonl(path)
        write_jsonl(self.out.file("labels.jsonl"), rows)
