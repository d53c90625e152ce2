"""INPO (iterative Nash policy optimization): online mirror descent
π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(η P(y ≻ π_t)) as an IPO-style loss on pairs of a prompt's samples.

The target is the oracle's probability (or a winner drawn from it, ``game.pair_labels=sampled``); with
``sampling.reference_samples_per_prompt`` > 0 π0's samples join the pairs and the loss targets explicit
win rates against π_t (:func:`~prefgame.losses.inpo_loss`). Needs ητ ≤ 1. Its tabular form is
``online_md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefgame.game.lm_sampling import Responses
from prefgame.game.lm_selfplay import (
    PreferenceCache,
    cross_matrices,
    distinct_pairs,
    draw_pairs,
    group_matrices,
    leave_one_out_win_rates,
)
from prefgame.losses import inpo_loss
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import (
    ANCHOR_SAMPLES,
    PAIR_LABELS,
    POLICY_SAMPLES,
    STEP_ORDER,
    Examples,
    SelfPlay,
)


@dataclass
class Anchors:
    """π0's responses that join an iteration's INPO pairs (``sampling.reference_samples_per_prompt``)."""

    responses: Responses  # M per prompt, the iteration's prompts in order
    old: torch.Tensor  # (P·M,) log π_t
    ref: torch.Tensor  # (P·M,) log π0


def sample_anchors(sp: SelfPlay, prompts: Sequence[str], t: int) -> Anchors | None:
    """M responses per prompt from π0 with their log-probs under π_t (the policy now) and π0."""
    m = sp.cfg.sampling.reference_samples_per_prompt
    if m == 0:
        return None
    zs = sp.sample(prompts, (sp.cfg.train.seed, t, ANCHOR_SAMPLES), n=m, model=sp.ref)
    return Anchors(zs, sp.sequence_logps(sp.policy, zs), sp.policy_logps(zs, model=sp.ref))


def inpo_examples(
    sp: SelfPlay, prefs: PreferenceCache, ys: Responses, old: torch.Tensor, label_seed, anchors: Anchors | None = None
) -> Examples:
    """INPO pairs of ``ys`` (``old`` holds their log π_t).

    Without anchors: all pairs of a prompt's samples, oriented by a draw from the oracle; the loss uses the
    oracle's probability unless ``game.pair_labels=sampled``. With anchors (π0 samples): all pairs of a
    prompt's K policy samples and M anchors, each response's win rate against π_t estimated from the
    policy samples (leave-one-out for the policy's own), the loss on the win-rate gap (inpo_loss
    ``win_rate_gap``), which is right pair by pair for any mix of the two."""
    g, k = sp.cfg.game, sp.cfg.sampling.samples_per_prompt
    ref = sp.sequence_logps(sp.ref, ys)
    mats = group_matrices(prefs, ys.prompts, ys.texts, k)
    if anchors is not None:
        m = sp.cfg.sampling.reference_samples_per_prompt
        n_prompts = len(ys) // k
        anchor_win = cross_matrices(prefs, anchors.responses.prompts, anchors.responses.texts, ys.texts, m, k).mean(-1)

        def both(own: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:  # (P·K,), (P·M,) → (P·(K+M),)
            return torch.cat([own.reshape(n_prompts, k), extra.reshape(n_prompts, m).to(own)], 1).reshape(-1)

        responses = ys.interleave(anchors.responses, k, m)
        win = both(leave_one_out_win_rates(mats), anchor_win)  # (P·(K+M),) P̂(y ≻ π_t)
        old, ref = both(old, anchors.old), both(ref, anchors.ref)
        first, second, keep = distinct_pairs(responses.response_ids, k + m)
        first, second = first[keep], second[keep]
        target = {"win_rate_gap": win[first] - win[second]}  # (pairs,)
    else:
        responses = ys
        first, second, p = draw_pairs(mats, ys.response_ids, np.random.default_rng(list(label_seed)))  # winner first
        expected = g.pair_labels == "expected"
        target = {"chosen_prob": torch.from_numpy(p) if expected else None}  # P(first ≻ second), or a drawn label

    def loss_fn(mb, cols, normalizer):
        a, b, x = first[mb], second[mb], cols[0]
        labels = {key: None if v is None else v[mb].to(x) for key, v in target.items()}
        return inpo_loss(
            cols[0], cols[1], old[a].to(x), old[b].to(x), ref[a].to(x), ref[b].to(x),
            eta=g.eta, tau=g.tau, normalizer=normalizer, **labels,
        )  # fmt: skip

    return Examples(responses, np.stack([first, second]), loss_fn)


def inpo_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Online mirror descent (INPO): IPO-style loss on pairs y, y' ∼ π_t (inpo_loss), with π0's samples
    among them when ``sampling.reference_samples_per_prompt`` > 0."""
    seed = sp.cfg.train.seed
    prompts = sp.iteration_prompts(t)
    ys = sp.sample(prompts, (seed, t, POLICY_SAMPLES))
    ex = inpo_examples(sp, prefs, ys, sp.policy_logps(ys), (seed, t, PAIR_LABELS), sample_anchors(sp, prompts, t))
    return {"pairs": ex.columns.shape[1], **sp.optimize(ex, (seed, t, STEP_ORDER))}


INPO = register(
    AlgorithmSpec(
        name="inpo",
        iterate=inpo_iteration,
        summary="online mirror descent π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(ηP(y≻π_t)) as an IPO-style pair loss",
        preset=("game.tau=0.05", "game.eta=5", "train.lr=2e-4"),
        tabular="online_md",
        anchors=True,
        needs_small_step=True,
    )
)
