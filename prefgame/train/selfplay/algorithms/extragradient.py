"""Extragradient (EGPO): two INPO steps per iteration.

The INPO step from θ_t against π_t gives θ_{t+½}; then, from θ_t again (model and optimizer state
restored), the INPO step with pairs sampled from π_{t+½}. Needs ητ ≤ 1. Its tabular form is
``extragradient`` (two online mirror steps).
"""

from __future__ import annotations

import math

from prefgame.game.lm_selfplay import PreferenceCache
from prefgame.train.selfplay.algorithms.inpo import inpo_examples, sample_anchors
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import (
    HALF_PAIR_LABELS,
    HALF_POLICY_SAMPLES,
    HALF_STEP_ORDER,
    PAIR_LABELS,
    POLICY_SAMPLES,
    STEP_ORDER,
    SelfPlay,
)


def extragradient_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """EGPO: half step θ_t → θ_{t+½} against π_t, then the full step from θ_t against π_{t+½}."""
    seed = sp.cfg.train.seed
    prompts = sp.iteration_prompts(t)
    theta_t = sp.snapshot()
    ys = sp.sample(prompts, (seed, t, POLICY_SAMPLES))
    anchors = sample_anchors(sp, prompts, t)  # π0's samples, log-probs at θ_t: the same for both steps
    half = sp.optimize(
        inpo_examples(sp, prefs, ys, sp.policy_logps(ys), (seed, t, PAIR_LABELS), anchors),
        (seed, t, STEP_ORDER),
    )
    ys_half = sp.sample(prompts, (seed, t, HALF_POLICY_SAMPLES))  # y ∼ π_{t+½}
    sp.restore(theta_t)  # back to θ_t: "old" log-probs and the full step are taken at π_t
    # ys_half's sampler log-probs are π_{t+½}'s; the loss needs π_t's, so a forward pass at θ_t
    ex = inpo_examples(sp, prefs, ys_half, sp.sequence_logps(sp.policy, ys_half), (seed, t, HALF_PAIR_LABELS), anchors)
    full = sp.optimize(ex, (seed, t, HALF_STEP_ORDER))
    return {"half_loss": half.get("loss", math.nan), "pairs": ex.columns.shape[1], **full}


EXTRAGRADIENT = register(
    AlgorithmSpec(
        name="extragradient",
        iterate=extragradient_iteration,
        summary="EGPO: the inpo step to θ_{t+½}, then from θ_t the inpo step with pairs sampled from π_{t+½}",
        preset=("game.tau=0.05", "game.eta=10", "train.lr=3e-4"),
        tabular="extragradient",
        anchors=True,
        needs_small_step=True,
    )
)
