"""Policy losses: the DPO family (docs/design.md §3.4) and the self-play updates of §3.3.

Inputs are per-sequence log-probabilities log π(y | x), shape (B,) (sums over response tokens, or
means where a length-normalized variant is wanted — the caller decides). Every loss returns
``(loss, metrics)`` with detached 0-dim metrics; the loss is the mean over the batch, or the sum
divided by ``normalizer`` (the global example count of the optimizer step, see
:func:`prefgame.losses.logprobs.reduce_mean`).

Symbols (each config documents the same):

- β (DPO/IPO) — inverse temperature of the implicit reward r = β log π/π0.
- η (SPPO, INPO, MMD) — step size of the mirror-descent update π_{t+1} ∝ π_t · exp(η P(y ≻ π_t)) · ….
- τ (INPO, Nash-MD) and α (MMD) — strength of the pull towards π0. This is the regularization
  coefficient τ of the game in docs/design.md §1/§3.2: the fixed point of the INPO update
  π ∝ π^{1−ητ} π0^{ητ} exp(ηP(y≻π)) is π ∝ π0 exp(P(y≻π)/τ) = softmax(log π0 + Aπ/τ), the §3.2
  equilibrium with regularization τ; MMD's fixed point is the same with α in place of τ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prefgame.losses.logprobs import masked_sum, reduce_mean


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    length_alpha: float = 0.0,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO, conservative DPO, length-regularized DPO and IPO (§3.4). All inputs (B,).

    Implicit rewards r_w = β log π(y_w)/π0(y_w), r_l = β log π(y_l)/π0(y_l); Δ = (r_w − r_l)/β is the
    log-ratio difference. Length regularization subtracts α|y| from each implicit reward, so the
    regularized reward margin is

        z = (r_w − α|y_w|) − (r_l − α|y_l|) = βΔ − α(|y_w| − |y_l|)

    (α = ``length_alpha``, |y| = ``*_lengths`` in tokens; z = βΔ when α = 0). Then per pair:

        sigmoid (DPO; cDPO with ε = label_smoothing): ℓ = −(1 − ε) log σ(z) − ε log σ(−z)
        ipo:                                          ℓ = (z/β − 1/(2β))²  (= (Δ − 1/(2β))² when α = 0)

    IPO's Δ is whatever the caller passes: sequence sums give the paper's formula; per-token means
    (:func:`~prefgame.losses.logprobs.sequence_mean_logprobs`) give the length-normalized variant.
    Label smoothing is defined for the sigmoid loss only. Metrics (implicit rewards, no length term):
    rewards/chosen, rewards/rejected (means of r_w, r_l), rewards/accuracy (fraction r_w > r_l),
    rewards/margin (mean r_w − r_l).
    """
    _require(beta > 0, f"beta must be > 0, got {beta}")
    _require(0.0 <= label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    _require(loss_type in ("sigmoid", "ipo"), f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    _require(
        loss_type == "sigmoid" or label_smoothing == 0.0,
        "label_smoothing applies to loss_type='sigmoid' only",
    )
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,) z = βΔ
    if length_alpha != 0.0:
        _require(
            chosen_lengths is not None and rejected_lengths is not None,
            "length_alpha ≠ 0 needs chosen_lengths and rejected_lengths",
        )
        logits = logits - length_alpha * (chosen_lengths - rejected_lengths).to(logits.dtype)  # z
    if loss_type == "sigmoid":
        # −log σ(z) = softplus(−z)
        per_pair = (1 - label_smoothing) * F.softplus(-logits) + label_smoothing * F.softplus(logits)
    else:
        per_pair = (logits / beta - 1 / (2 * beta)) ** 2
    loss = reduce_mean(per_pair, normalizer=normalizer)
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
    }
    return loss, metrics


def sppo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    win_rates: Tensor,
    *,
    eta: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPPO regression onto the multiplicative-weights update π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) (§3.3).

        ℓ = (log π_θ(y) − log π_t(y) − η (P̂(y ≻ π_t) − ½))²,  y ∼ π_t

    The update's log-normalizer log Z_t is replaced by η/2 (E_{y∼π_t} P(y ≻ π_t) = ½). policy_logps,
    old_logps (log π_t, no gradient) and win_rates P̂ (estimated from K samples per prompt), all (B,).
    Metrics: log_ratio (mean log π_θ/π_t), target (mean η(P̂ − ½)).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    log_ratio = policy_logps - old_logps  # (B,)
    target = eta * (win_rates - 0.5)  # (B,)
    loss = reduce_mean((log_ratio - target) ** 2, normalizer=normalizer)
    return loss, {"log_ratio": log_ratio.detach().mean(), "target": target.detach().mean()}


def inpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    old_chosen_logps: Tensor,
    old_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
    chosen_prob: Tensor | None = None,
    win_rate_gap: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """INPO / online mirror descent as an IPO-style squared loss on pairs from π_t (§3.3). All (B,).

    Update: π_{t+1}(y) ∝ π_t(y)^{1−ητ} π0(y)^{ητ} exp(η P(y ≻ π_t)), so for any pair (y, y'), with
    g(y) = log π(y) − (1 − ητ) log π_t(y) − ητ log π0(y) and h(y, y') = g(y) − g(y'),

        π = π_{t+1}  ⇔  h(y, y') = η (P(y ≻ π_t) − P(y' ≻ π_t))  for all y, y'   (normalizers cancel).

    Regression target R = E_{y,y'∼π_t}[(h(y,y') − η(P(y≻π_t) − P(y'≻π_t)))²]. Its θ-dependent part is
    E[h²] − 4η E_y[g(y)(P(y≻π_t) − ½)] (using E_{y∼π_t} P(y≻π_t) = ½). Now draw y, y' ∼ π_t, let the
    oracle say which wins, (y_w, y_l), and take ℓ = (h(y_w, y_l) − c)². Since h is antisymmetric,
    ℓ = h(y,y')² − 2c s h(y,y') + c² with s = ±1, E[s | y, y'] = 2P(y≻y') − 1, and
    E[(g(y) − g(y'))(2P(y≻y') − 1)] = 4 E_y[g(y)(P(y≻π_t) − ½)]. So E[ℓ] = E[h²] − 8c E[g(P − ½)] +
    const, which has R's gradient exactly when c = η/2:

        ℓ = (h(y_w, y_l) − η/2)²,   h = log π(y_w)/π(y_l) − (1−ητ) log π_t(y_w)/π_t(y_l)
                                         − ητ log π0(y_w)/π0(y_l)

    No win-rate estimate is needed. Checks: at t = 0 (π_t = π0) this is IPO with β = 1/η.

    With ``chosen_prob`` p = P(y_w ≻ y_l) from the oracle, the drawn label is replaced by its expectation
    (Rao–Blackwell): E[ℓ | y, y'] = (h(y_w, y_l) − η(p − ½))² + const, so

        ℓ = (h(y_w, y_l) − η(p − ½))²

    has the same expected gradient with no label noise; the order of the pair no longer matters (h and
    p − ½ both change sign). Pairs the oracle calls even (p = ½) then pull h to 0 instead of ±η/2. The same
    argument holds for pairs drawn from any μ with P(y ≻ μ) in place of P(y ≻ π_t), so the
    extragradient full step (EGPO) is this loss with old = π_t (the θ_t policy) on pairs sampled
    from the half-step policy π_{t+½}.

    With ``win_rate_gap`` = P̂(y_w ≻ π_t) − P̂(y_l ≻ π_t), estimates of the win rates against π_t itself
    (e.g. against K samples of π_t), the target is the update's own right-hand side,

        ℓ = (h(y_w, y_l) − η (P̂(y_w ≻ π_t) − P̂(y_l ≻ π_t)))²,

    which holds pair by pair rather than in expectation over y, y' ∼ π_t: the pairs may then come from
    any behaviour distribution μ (e.g. π_t and π0 samples together), and the minimizer is π_{t+1} on
    μ's support. This reaches responses π_t no longer samples, which on-policy pairs cannot. Give at most
    one of ``chosen_prob`` and ``win_rate_gap``. Needs 0 ≤ ητ ≤ 1. Metrics: h (mean), logratio_margin
    (mean log π(y_w)/π(y_l) − log π_t(y_w)/π_t(y_l)).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    _require(0 <= eta * tau <= 1, f"eta·tau must be in [0, 1], got {eta * tau}")
    _require(chosen_prob is None or win_rate_gap is None, "give at most one of chosen_prob and win_rate_gap")
    policy_margin = policy_chosen_logps - policy_rejected_logps  # (B,)
    old_margin = old_chosen_logps - old_rejected_logps  # (B,)
    ref_margin = ref_chosen_logps - ref_rejected_logps  # (B,)
    h = policy_margin - (1 - eta * tau) * old_margin - eta * tau * ref_margin  # (B,)
    if win_rate_gap is not None:
        target = eta * win_rate_gap  # (B,)
    else:
        target = eta / 2 if chosen_prob is None else eta * (chosen_prob - 0.5)  # (B,) or scalar
    loss = reduce_mean((h - target) ** 2, normalizer=normalizer)
    metrics = {"h": h.detach().mean(), "logratio_margin": (policy_margin - old_margin).detach().mean()}
    return loss, metrics


def mmd_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor,
    win_rates: Tensor,
    *,
    eta: float,
    alpha: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Magnetic mirror descent (MPO) as an SPPO-style regression, y ∼ π_t (§3.3). All inputs (B,).

    Update with magnet π0: π_{t+1} ∝ [π_t · π0^{ηα} · exp(η P(y ≻ π_t))]^{1/(1+ηα)}, i.e.

        log π_{t+1}(y) − log π_t(y) = [ηα (log π0(y) − log π_t(y)) + η P(y ≻ π_t)] / (1 + ηα) − log Z_t.

    As in SPPO, P is replaced by the estimate P̂ and log Z_t by η/(2(1 + ηα)), which turns P into P − ½:

        ℓ = (log π_θ(y) − log π_t(y) − [ηα (log π0(y) − log π_t(y)) + η (P̂(y ≻ π_t) − ½)] / (1 + ηα))²

    α = 0 is exactly :func:`sppo_loss`. Metrics: log_ratio (mean log π_θ/π_t), target (mean).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    _require(alpha >= 0, f"alpha must be ≥ 0, got {alpha}")
    log_ratio = policy_logps - old_logps  # (B,)
    target = (eta * alpha * (ref_logps - old_logps) + eta * (win_rates - 0.5)) / (1 + eta * alpha)  # (B,)
    loss = reduce_mean((log_ratio - target) ** 2, normalizer=normalizer)
    return loss, {"log_ratio": log_ratio.detach().mean(), "target": target.detach().mean()}


def nash_md_pg_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    preference_vs_mixture: Tensor,
    *,
    tau: float,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Nash-MD policy-gradient surrogate (§3.3), y ∼ π, y' ∼ π^μ (the geometric mixture).

    Objective J(π) = E_{y∼π}[P(y ≻ y') − ½] − τ KL(π‖π0). Its gradient, by the score function:

        ∇J = E_{y∼π}[(P(y≻y') − ½) ∇log π(y)] − τ E_{y∼π}[(log π(y) − log π0(y)) ∇log π(y)]

    (∇KL = E_π[k ∇log π] + E_π[∇log π] with k = log π − log π0, and E_π[∇log π] = 0). So each
    sample gets the detached coefficient c(y) = (P(y≻y') − ½) − τ k(y), where k(y) is the one-sample
    KL estimate, and the loss is −c(y)·log π(y). Differentiating k itself would only add the
    zero-mean term τ∇log π(y); it is dropped. The surrogate is written −c·(log π − sg(log π)) − c, so
    its gradient is −c ∇log π and its value is −ĉ, the negative estimate of J.

    policy_logps, ref_logps: (B, T) token log-probs with ``mask`` (B, T), or (B,) sequence log-probs
    with ``mask=None``; preference_vs_mixture (B,) P(y ≻ y'). Metrics: preference (mean P), kl (mean
    k), objective (mean c).
    """
    _require(tau >= 0, f"tau must be ≥ 0, got {tau}")
    if mask is not None:
        policy_logps = masked_sum(policy_logps, mask, dim=-1)  # (B,)
        ref_logps = masked_sum(ref_logps, mask, dim=-1)  # (B,)
    kl = (policy_logps - ref_logps).detach()  # (B,) one-sample estimate of KL(π‖π0)
    coef = (preference_vs_mixture - 0.5).detach() - tau * kl  # (B,)
    per_seq = -coef * (policy_logps - policy_logps.detach()) - coef  # (B,)
    loss = reduce_mean(per_seq, normalizer=normalizer)
    metrics = {"preference": preference_vs_mixture.detach().mean(), "kl": kl.mean(), "objective": coef.mean()}
    return loss, metrics


def geometric_mixture_logprobs(policy_logits: Tensor, ref_logits: Tensor, *, mixture_coef: float) -> Tensor:
    """Token-level Nash-MD mixture π^μ ∝ π^{1−c} π0^{c}: log_softmax((1 − c)·logits_π + c·logits_π0).

    (§3.3, where c is β.) policy_logits, ref_logits (..., V) → log-probs (..., V). Sampling
    from it token by token gives the mixture used as the opponent y' in :func:`nash_md_pg_loss`.
    """
    _require(0.0 <= mixture_coef <= 1.0, f"mixture_coef must be in [0, 1], got {mixture_coef}")
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    mixed = (1 - mixture_coef) * policy_logits.to(dtype) + mixture_coef * ref_logits.to(dtype)  # (..., V)
    return torch.log_softmax(mixed, dim=-1)
