"""Nash-MD: the policy plays against the token-level geometric mixture π^μ ∝ π^{1−β} π0^{β}.

Policy gradient E_{y∼π_t, y'∼π_t^μ}[(P(y ≻ y') − ½)∇log π(y)] − τ∇KL(π‖π0), with P̂(y ≻ π^μ) the mean
over the prompt's K mixture samples (:func:`~prefgame.losses.nash_md_pg_loss`); the step size is
``train.lr`` (``game.eta`` unused), β is ``game.mixture_coef``.
"""

from __future__ import annotations

from prefgame.game.lm_sampling import Request
from prefgame.game.lm_selfplay import PreferenceCache, cross_matrices
from prefgame.losses import nash_md_pg_loss
from prefgame.train.selfplay.registry import AlgorithmSpec, register
from prefgame.train.selfplay.runtime import (
    MIXTURE_SAMPLES,
    POLICY_SAMPLES,
    STEP_ORDER,
    SelfPlay,
    single,
)


def nash_md_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Nash-MD: y ∼ π_t against y' ∼ π_t^μ, P̂(y ≻ π^μ) over the K mixture samples (nash_md_pg_loss).

    Variance reduction (RLOO): each sample's coefficient c(y) = (P̂(y≻π^μ) − ½) − τ(log π_t(y) − log π0(y))
    has the leave-one-out mean b of the other K − 1 coefficients of its prompt subtracted (passed to
    the loss as P̂ − b). b does not depend on y, so the gradient stays unbiased; without it the
    sequence-level KL term (tens of nats once π drifts) swamps the preference signal and the policy
    can run away from π0.
    """
    g, seed, k = sp.cfg.game, sp.cfg.train.seed, sp.cfg.sampling.samples_per_prompt
    prompts = sp.iteration_prompts(t)
    # y ∼ π_t and y' ∼ π_t^μ in one decoding loop (each with its own random stream)
    ys, opponents = sp.sample_requests(
        prompts, [Request(k, 0.0, (seed, t, POLICY_SAMPLES)), Request(k, g.mixture_coef, (seed, t, MIXTURE_SAMPLES))]
    )
    pref = cross_matrices(prefs, ys.prompts, ys.texts, opponents.texts, k).mean(-1).reshape(-1)  # (N,)
    ref = sp.reference_logps(ys)
    coef = (pref - 0.5) - g.tau * (sp.policy_logps(ys) - ref).double()  # (N,) c(y) at π_t
    groups = coef.view(-1, k)  # (M, K)
    baseline = ((groups.sum(-1, keepdim=True) - groups) / (k - 1)).reshape(-1)  # (N,) leave-one-out mean
    shifted = pref - baseline

    def loss_fn(mb, cols, normalizer):
        x = cols[0]
        return nash_md_pg_loss(x, ref[mb].to(x), shifted[mb].to(x), tau=g.tau, normalizer=normalizer)

    return {"preference_vs_mixture": float(pref.mean()), **sp.optimize(single(ys, loss_fn), (seed, t, STEP_ORDER))}


NASH_MD = register(
    AlgorithmSpec(
        name="nash_md",
        iterate=nash_md_iteration,
        summary="policy gradient against the mixture π^μ ∝ π^{1−β} π0^{β}, − τ∇KL(π‖π0); step train.lr",
        preset=("game.tau=0.05", "game.mixture_coef=0.2", "train.lr=2e-4"),
        tabular="nash_md",
    )
)
