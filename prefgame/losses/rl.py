"""PPO pieces for the RLHF baseline (docs/design.md §3.4): KL-shaped token rewards, GAE, clipped losses.

Token tensors are (B, T) over response positions with a boolean ``mask`` that is contiguous per row
(the response); a masked-out position after a valid one is the end of the episode. Rewards,
advantages and returns carry no gradient. Token losses are masked means, or masked sums divided by
``normalizer`` (the global response-token count of the optimizer step, see
:func:`prefgame.losses.logprobs.reduce_mean`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefgame.losses.logprobs import masked_mean, reduce_mean, whiten_with


@torch.no_grad()
def kl_penalized_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    eos_missing: Tensor | None = None,
    missing_eos_penalty: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token rewards r_t = −kl_coef · (log π(y_t) − log π0(y_t)), plus the sequence score at the
    last response token (§3.4, "reward minus β·KL per token"; kl_coef is that β).

    The per-token KL term is the one-sample estimator k1 = log π − log π0 (unbiased for KL(π‖π0)
    summed over the response). A response without EOS (``eos_missing`` True) has
    ``missing_eos_penalty`` (a positive number) subtracted from its score before it is placed.

    scores (B,); logps, ref_logps, mask (B, T); eos_missing (B,) bool. Returns rewards (B, T), 0 off
    the mask, and metrics: kl (mean over sequences of Σ_t k1), non_score_reward (mean Σ_t of the KL
    term), score (mean score after the penalty).
    """
    mask = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    last = torch.where(mask, positions, -1).max(dim=-1).values  # (B,)
    if bool((last < 0).any()):
        raise ValueError("every row of mask needs at least one response token to carry its score")
    if missing_eos_penalty is not None:
        if eos_missing is None:
            raise ValueError("missing_eos_penalty needs eos_missing")
        scores = scores - missing_eos_penalty * eos_missing.to(scores.dtype)  # (B,)
    kl = torch.where(mask, logps - ref_logps, 0.0)  # (B, T)
    non_score = -kl_coef * kl  # (B, T)
    at_last = positions[None, :] == last[:, None]  # (B, T)
    rewards = non_score + at_last.to(non_score.dtype) * scores[:, None]  # (B, T)
    metrics = {
        "kl": kl.sum(-1).mean(),
        "non_score_reward": non_score.sum(-1).mean(),
        "score": scores.mean(),
    }
    return rewards, metrics


@torch.no_grad()
def compute_gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over response tokens (§3.4). Returns (advantages, returns).

        δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   G_t = A_t + V_t

    with V and r taken as 0 off the mask, so the step after the last valid token is terminal
    (V = 0, A = 0). rewards, values, mask (B, T); outputs (B, T), 0 off the mask.
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards, 0.0)  # (B, T)
    values = torch.where(mask, values, 0.0)  # (B, T)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T) V_{t+1}
    deltas = rewards + gamma * next_values - values  # (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    running = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    for t in reversed(range(values.shape[1])):
        running = torch.where(mask[:, t], deltas[:, t] + gamma * lam * running, 0.0)
        advantages[:, t] = running
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def ppo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_range: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (§3.4). logps, old_logps, advantages, mask (B, T).

        ratio = π(y_t)/π_old(y_t);  pg_loss1 = −A·ratio;  pg_loss2 = −A·clip(ratio, 1 − ε, 1 + ε)
        ℓ = masked mean of max(pg_loss1, pg_loss2)

    Metrics: clipfrac (fraction of tokens where the clipped term is the larger, i.e. carries no
    gradient), approx_kl (masked mean of (ratio − 1) − log ratio, an unbiased, non-negative estimator
    of KL(π_old‖π) on tokens from π_old), ratio (masked mean).
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logps - old_logps, 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    pg_loss1 = -advantages * ratio  # (B, T)
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = reduce_mean(torch.maximum(pg_loss1, pg_loss2), mask, normalizer=normalizer)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range_value: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (§3.4). values, old_values, returns, mask (B, T).

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        ℓ = ½ · masked mean of max((V − G)², (V_clip − G)²)

    Metrics: vf_clipfrac (fraction of tokens where the clipped error is the larger), value (masked
    mean of V).
    """
    mask = mask.bool()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_loss1 = (values - returns) ** 2  # (B, T)
    vf_loss2 = (values_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * reduce_mean(torch.maximum(vf_loss1, vf_loss2), mask, normalizer=normalizer)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean((vf_loss2 > vf_loss1).to(values.dtype), mask),
            "value": masked_mean(values, mask),
        }
    return loss, metrics


def kl_loss(
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    estimator: str = "k3",
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL(π‖π0) as a loss term on sampled response tokens ("KL in the loss", §3.4), per-token estimators
    of d = log π(y_t) − log π0(y_t) for y_t drawn from (approximately) π:

        k1 = d                 unbiased value, but its gradient is not the gradient of the KL
        k2 = ½ d²              its gradient equals ∇KL in expectation (on-policy samples)
        k3 = e^{−d} − 1 + d    unbiased value, always ≥ 0 (the GRPO choice)

    ℓ = masked mean (or masked sum / ``normalizer``) of the estimator; logps, ref_logps, mask (B, T).
    Metrics: kl (masked mean of d, the k1 value), estimate (masked mean of the chosen estimator).
    """
    mask = mask.bool()
    d = torch.where(mask, logps - ref_logps, 0.0)  # (B, T)
    if estimator == "k1":
        per_token = d
    elif estimator == "k2":
        per_token = 0.5 * d**2
    elif estimator == "k3":
        per_token = torch.exp(-d) - 1.0 + d
    else:
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
    loss = reduce_mean(per_token, mask, normalizer=normalizer)
    with torch.no_grad():
        metrics = {"kl": masked_mean(d, mask), "estimate": masked_mean(per_token, mask)}
    return loss, metrics


@torch.no_grad()
def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """(Σ x, Σ x², n) over the masked entries of ``x``, float64, shape (3,). Moments of shards add up, so
    summing them over data-parallel processes (``accelerator.reduce(..., "sum")``) gives the global
    ones that :func:`whiten_from_moments` needs."""
    mask = mask.bool()
    values = x[mask].double()  # (N,)
    return torch.stack([values.sum(), (values**2).sum(), values.new_tensor(float(values.numel()))])


@torch.no_grad()
def whiten_from_moments(
    x: Tensor, mask: Tensor, moments: Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    """Whiten the masked entries of ``x`` with the mean and unbiased variance given by ``moments``
    (Σ x, Σ x², n) — those of a larger batch, e.g. the sum of :func:`masked_moments` over processes:

        x̄ = Σx / n,   var = (Σx² − n x̄²) / (n − 1),   y = (x − x̄) / sqrt(var + eps)  [+ x̄ without shift_mean]

    With the moments of ``x`` itself this is :func:`prefgame.losses.masked_whiten`. Masked-out outputs are 0.
    """
    total, total_sq, n = moments.double().unbind()
    if float(n) < 2:
        raise ValueError("whitening needs at least 2 masked entries")
    mean = total / n
    var = ((total_sq - n * mean**2) / (n - 1)).clamp(min=0.0)
    return whiten_with(x.double(), mask, mean, var, shift_mean=shift_mean, eps=eps).to(x.dtype)
