"""Metrics of a preference model's probabilities on labeled pairs, and arena ground-truth metrics.

Labels are p = P(a ≻ b) (1 hard, ½ tie, soft in between); predictions q = P̂(a ≻ b).

- accuracy: sign(q − ½) == sign(p − ½) over pairs with p ≠ ½ (q = ½ counts as wrong);
- log_loss: −p log q − (1 − p) log(1 − q), mean over all pairs (q clipped to [1e-7, 1 − 1e-7]);
- ece: top-label expected calibration error over ``n_bins`` equal-width confidence bins of
  max(q, 1 − q): Σ_b (n_b / N) |mean confidence_b − mean correctness_b|, where correctness is p
  when q ≥ ½ and 1 − p otherwise (soft labels give soft correctness);
- per subset: accuracy and count; per section: accuracy over all pairs of the section's subsets
  (weighting subsets by the pairs present; RewardBench's own fixed weights: evaluation/rewardbench.py).

Arena (gold P* known): Bayes-optimal accuracy E[max(P*, 1 − P*)], the model's expected accuracy
under the gold preference E[P* if q > ½, 1 − P* if q < ½, ½ if q = ½] (noise-free, directly
comparable to the Bayes figure), the same two on in-cycle pairs, and for a gated model the Pearson
correlation of its gating weights with the true w(x) per prompt type × objective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def accuracy(probs, labels) -> float:
    q, p = _np(probs), _np(labels)
    decided = p != 0.5
    if not decided.any():
        return float("nan")
    return float((np.sign(q - 0.5) == np.sign(p - 0.5))[decided].mean())


def log_loss(probs, labels) -> float:
    q, p = np.clip(_np(probs), 1e-7, 1 - 1e-7), _np(labels)
    return float(np.mean(-p * np.log(q) - (1 - p) * np.log(1 - q)))


def expected_calibration_error(probs, labels, *, n_bins: int = 10) -> float:
    q, p = _np(probs), _np(labels)
    confidence = np.maximum(q, 1 - q)  # in [½, 1]
    correct = np.where(q >= 0.5, p, 1 - p)
    bins = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(confidence[sel].mean() - correct[sel].mean())
    return float(ece)


def section_of(subset: str, sections: Mapping[str, Sequence[str]] | None) -> str:
    """The section of a subset: from ``sections`` (section → subsets), else the text before '/'."""
    if sections:
        for name, members in sections.items():
            if subset in members:
                return name
        return "other"
    return subset.split("/", 1)[0]


def preference_metrics(
    probs,
    labels,
    *,
    subsets: Sequence[str] | None = None,
    sections: Mapping[str, Sequence[str]] | None = None,
    n_bins: int = 10,
) -> dict:
    """accuracy, log_loss, ece, n; with subsets also per_subset and per_section accuracies."""
    q, p = _np(probs), _np(labels)
    out: dict = {
        "accuracy": accuracy(q, p),
        "log_loss": log_loss(q, p),
        "ece": expected_calibration_error(q, p, n_bins=n_bins),
        "n": len(q),
    }
    if subsets is not None and any(subsets):
        names = np.asarray(list(subsets))
        out["per_subset"] = {
            s: {"accuracy": accuracy(q[names == s], p[names == s]), "n": int((names == s).sum())}
            for s in sorted(set(names.tolist()))
        }
        sec = np.asarray([section_of(s, sections) for s in names])
        out["per_section"] = {
            s: {"accuracy": accuracy(q[sec == s], p[sec == s]), "n": int((sec == s).sum())}
            for s in sorted(set(sec.tolist()))
        }
    return out


def expected_gold_accuracy(probs, gold) -> float:
    """E[P* if q > ½ else 1 − P* (½ at q = ½)]: accuracy against labels drawn from the gold P*."""
    q, g = _np(probs), _np(gold)
    return float(np.where(q > 0.5, g, np.where(q < 0.5, 1 - g, 0.5)).mean())


def arena_metrics(arena, prompts: Sequence[str], responses_a, responses_b, probs) -> dict:
    """Gold-preference figures of predictions q = P̂(a ≻ b) on arena pairs."""
    prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
    gold = arena.gold_probability(prompts, responses_a, responses_b).numpy()
    q = _np(probs)
    cyc = arena.in_cycle(prompts, responses_a, responses_b)
    bayes = np.maximum(gold, 1 - gold)
    out = {
        "bayes_accuracy": float(bayes.mean()),
        "expected_accuracy": expected_gold_accuracy(q, gold),
        "gold_log_loss": log_loss(q, gold),
        "in_cycle": {
            "n": int(cyc.sum()),
            "bayes_accuracy": float(bayes[cyc].mean()) if cyc.any() else None,
            "expected_accuracy": expected_gold_accuracy(q[cyc], gold[cyc]) if cyc.any() else None,
        },
    }
    return out


def gating_correlation(model, arena, *, prompts_per_type: int = 0) -> dict:
    """Pearson correlation between a gated model's mean gating weights per prompt type and the
    arena's true w(x), over prompt type × objective (objectives matched by name).

    ``prompts_per_type`` = 0 uses every prompt of the grammar (225 per type).
    """
    from prefgame.arena.world import N_PROMPT_TYPES, OBJECTIVES

    names = list(model.info.objectives)
    shared = [o for o in OBJECTIVES if o in names]
    by_type: dict[int, list[str]] = {t: [] for t in range(N_PROMPT_TYPES)}
    for p in arena.prompts:
        if not prompts_per_type or len(by_type[p.type_index]) < prompts_per_type:
            by_type[p.type_index].append(p.text)
    texts = [x for t in range(N_PROMPT_TYPES) for x in by_type[t]]
    weights = model.gating_weights(texts).double().numpy()  # (N, k)
    learned = np.zeros((N_PROMPT_TYPES, len(names)))
    start = 0
    for t in range(N_PROMPT_TYPES):
        n = len(by_type[t])
        learned[t] = weights[start : start + n].mean(0)
        start += n
    learned = learned[:, [names.index(o) for o in shared]]
    true = arena.type_weights[:, [OBJECTIVES.index(o) for o in shared]]
    corr = float(np.corrcoef(learned.ravel(), true.ravel())[0, 1])
    return {
        "pearson": corr,
        "objectives": shared,
        "learned": learned.round(4).tolist(),
        "true": true.round(4).tolist(),
    }
