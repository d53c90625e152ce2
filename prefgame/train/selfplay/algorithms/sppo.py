"""SPPO (self-play preference optimization): π_{t+1} ∝ π_t exp(η P(y ≻ π_t)), unregularized (τ unused).

Each iteration samples K responses per prompt from π_t, estimates P̂(y ≻ π_t) as the leave-one-out mean
of the oracle's probabilities against the prompt's other K − 1 samples, and regresses log π/π_t onto
η(P̂(y ≻ π_t) − ½) (:func:`~prefgame.losses.sppo_loss`). Its tabular form is multiplicative weights.
"""

from __future__ import annotations

from prefgame.game.lm_selfplay import PreferenceCache
from prefgame.losses import sppo_loss
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import STEP_ORDER, SelfPlay, single


def sppo_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """SPPO: regress log π/π_t onto η(P̂(y ≻ π_t) − ½), y ∼ π_t (sppo_loss)."""
    _, ys, win = sp.sample_with_win_rates(t, prefs)
    old = sp.policy_logps(ys)
    eta = sp.cfg.game.eta

    def loss_fn(mb, cols, normalizer):
        return sppo_loss(cols[0], old[mb].to(cols[0]), win[mb].to(cols[0]), eta=eta, normalizer=normalizer)

    return {"win_rate_std": float(win.std()), **sp.optimize(single(ys, loss_fn), (sp.cfg.train.seed, t, STEP_ORDER))}


SPPO = register(
    AlgorithmSpec(
        name="sppo",
        iterate=sppo_iteration,
        summary="regression of log π/π_t onto η(P̂(y≻π_t) − ½): π_{t+1} ∝ π_t exp(ηP(y≻π_t)), τ unused",
        preset=("game.tau=0.05", "game.eta=2", "train.lr=2e-4"),
        tabular="multiplicative_weights",
    )
)
