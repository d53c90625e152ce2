"""Magnetic mirror descent (MPO): π_{t+1} ∝ [π_t π0^{ητ} exp(η P(y ≻ π_t))]^{1/(1+ητ)}, magnet π0, α = τ.

Fitted like SPPO, by regression on K samples per prompt from π_t with leave-one-out win rates, with the
magnet term (:func:`~prefgame.losses.mmd_loss`). Its tabular form is ``magnetic_md``.
"""

from __future__ import annotations

import torch

from prefgame.game.lm_sampling import Responses
from prefgame.game.lm_selfplay import PreferenceCache
from prefgame.losses import mmd_loss
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import STEP_ORDER, SelfPlay, single


def magnetic_update(sp: SelfPlay, t: int, ys: Responses, payoff: torch.Tensor) -> dict[str, float]:
    """The magnetic step π_{t+1} ∝ [π_t π0^{ητ} exp(η g)]^{1/(1+ητ)} with g(y) = ``payoff`` (an estimate of
    the payoff P(y ≻ ·) of each response in ``ys``, y ∼ π_t), fitted by regression (mmd_loss, α = τ)."""
    old, ref = sp.policy_logps(ys), sp.sequence_logps(sp.ref, ys)
    g = sp.cfg.game

    def loss_fn(mb, cols, normalizer):
        x = cols[0]
        return mmd_loss(
            x, old[mb].to(x), ref[mb].to(x), payoff[mb].to(x), eta=g.eta, alpha=g.tau, normalizer=normalizer
        )

    return sp.optimize(single(ys, loss_fn), (sp.cfg.train.seed, t, STEP_ORDER))


def mmd_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Magnetic mirror descent with magnet π0 and α = τ, g = P̂(y ≻ π_t), y ∼ π_t."""
    _, ys, win = sp.sample_with_win_rates(t, prefs)
    return {"win_rate_std": float(win.std()), **magnetic_update(sp, t, ys, win)}


MMD = register(
    AlgorithmSpec(
        name="mmd",
        iterate=mmd_iteration,
        summary="magnetic mirror descent π_{t+1} ∝ [π_t π0^{ητ} exp(ηP(y≻π_t))]^{1/(1+ητ)}, by regression",
        preset=("game.tau=0.1", "game.eta=3", "train.lr=3e-4"),
        tabular="magnetic_md",
    )
)
