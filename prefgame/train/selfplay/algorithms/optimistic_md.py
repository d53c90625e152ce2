"""Optimistic mirror descent: π_{t+1} = M(π_t, 2·P(y ≻ π_t) − P(y ≻ π_{t−1})).

M is the magnetic step of :mod:`~prefgame.train.selfplay.algorithms.mmd`,
π_{t+1} ∝ [π_t π0^{ητ} exp(η g)]^{1/(1+ητ)} (magnet π0, α = τ), here with the optimistic payoff
g(y) = 2·P̂(y ≻ π_t) − P̂(y ≻ π_{t−1}): the payoff against the current iterate extrapolated by its
change since the last one, which damps the circling of plain mirror descent around the game's cyclic
part at one extra batch of samples per iteration (π_{t−1}'s) instead of extragradient's extra update.

P̂(y ≻ π_t) is the leave-one-out win rate among the prompt's K samples of π_t; P̂(y ≻ π_{t−1}) the mean
preference of y over K samples of π_{t−1}, a frozen copy of the previous iterate that the checkpoint
holds (resume stays exact). On the first iteration π_{t−1} = π_t, so the step is mmd's. Its tabular
form is ``optimistic_md``.
"""

from __future__ import annotations

import copy

from prefgame.game.lm_selfplay import PreferenceCache, cross_matrices
from prefgame.lora import trained_state
from prefgame.train.selfplay.algorithms.mmd import magnetic_update
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import SelfPlay

PREVIOUS_SAMPLES = 101  # purpose of the stream of π_{t−1}'s samples (apart from the runtime's purposes)


def keep_previous_iterate(sp: SelfPlay) -> None:
    """A frozen copy of the policy that holds π_{t−1} (π_0 before the first iteration)."""
    sp.extras["previous"] = copy.deepcopy(sp.policy).requires_grad_(False).eval()


def optimistic_md_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """y ∼ π_t, g = 2 P̂(y ≻ π_t) − P̂(y ≻ π_{t−1}), the magnetic step on g; then π_{t−1} ← π_t."""
    previous = sp.extras["previous"]
    current = {k: v.detach().clone() for k, v in trained_state(sp.policy).state_dict().items()}  # π_t
    prompts, ys, win = sp.sample_with_win_rates(t, prefs)
    if t == 0:
        win_previous = win
    else:
        k = sp.cfg.sampling.samples_per_prompt
        zs = sp.sample(prompts, (sp.cfg.train.seed, t, PREVIOUS_SAMPLES), model=previous)
        win_previous = cross_matrices(prefs, ys.prompts, ys.texts, zs.texts, k).mean(-1).reshape(-1)  # (P·K,)
    payoff = 2.0 * win - win_previous
    info = magnetic_update(sp, t, ys, payoff)
    trained_state(previous).load_state_dict(current)
    return {"win_rate_std": float(win.std()), "win_rate_vs_previous_iterate": float(win_previous.mean()), **info}


OPTIMISTIC_MD = register(
    AlgorithmSpec(
        name="optimistic_md",
        iterate=optimistic_md_iteration,
        summary="magnetic step on the optimistic payoff 2P(y≻π_t) − P(y≻π_{t−1}) (π_{t−1}'s samples kept)",
        preset=("game.tau=0.1", "game.eta=3", "train.lr=3e-4"),
        tabular="optimistic_md",
        setup=keep_previous_iterate,
    )
)
