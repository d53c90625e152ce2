"""Preference-model losses and fits (docs/design.md §3.1).

Labels are soft probabilities p = P(chosen ≻ rejected) ∈ [0, 1] (hard labels: p = 1; ties: p = ½).
Every loss returns ``(loss, metrics)``; metrics are detached 0-dim tensors. Pair accuracy counts a
pair as correct when the sign of the model's score difference matches the sign of p − ½; ties
(p = ½) are excluded, and a score difference of exactly 0 counts as wrong.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prefgame.losses.logprobs import reduce_mean


def _pair_accuracy(score_diff: Tensor, labels: Tensor) -> Tensor:
    """Fraction of non-tie pairs with sign(score_diff) == sign(p − ½); NaN when all are ties."""
    target = torch.sign(labels - 0.5)  # (B,)
    decided = target != 0
    correct = (torch.sign(score_diff) == target) & decided
    dtype = score_diff.dtype
    return (correct.to(dtype).sum() / decided.to(dtype).sum()).detach()


def pairwise_logistic_loss(
    scores: Tensor, labels: Tensor, *, normalizer: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logistic loss of an anti-symmetric pair score s(a, b) = −s(b, a) with P(a≻b) = σ(s) (§3.1).

        ℓ = −p log σ(s) − (1 − p) log σ(−s) = p·softplus(−s) + (1 − p)·softplus(s)

    scores, labels (B,): labels are p = P(a ≻ b). The loss is the mean over pairs, or the sum divided
    by ``normalizer`` (the global pair count of the optimizer step). Metrics: accuracy (ties
    excluded), mean score.
    """
    per_pair = F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction="none")  # (B,)
    loss = reduce_mean(per_pair, normalizer=normalizer)
    metrics = {"accuracy": _pair_accuracy(scores, labels), "score": scores.detach().mean()}
    return loss, metrics


def bt_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    labels: Tensor | None = None,
    margin: Tensor | float | None = None,
    center_coef: float = 0.0,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley–Terry reward-model loss with soft labels, margin and reward centering (§3.1).

    With Δ = r_c − r_r and margin m (in the chosen direction), the model's preference logit is Δ − m:

        ℓ = −p log σ(Δ − m) − (1 − p) log σ(−(Δ − m)) + center_coef · (r_c + r_r)²

    so for p = 1 it is the margin loss −log σ(Δ − m): the chosen reward must exceed the rejected one
    by m before the pair counts as 50/50. The per-pair optimum is Δ* = m + logit(p); for a tie
    (p = ½) that is Δ* = m, so give ties m = 0 (margins from rating gaps are 0 on ties anyway).
    The centering term pulls the reward scale's offset to 0 (it does not change Δ).

    chosen_rewards, rejected_rewards (B,); labels (B,) p = P(chosen ≻ rejected), default 1; margin
    (B,) or scalar, default 0. Mean over pairs, or sum / ``normalizer``. Metrics: accuracy (Δ vs
    p − ½, ties excluded), margin (mean Δ), center_penalty (mean (r_c + r_r)²).
    """
    delta = chosen_rewards - rejected_rewards  # (B,)
    if labels is None:
        labels = torch.ones_like(delta)
    logit = delta if margin is None else delta - margin  # (B,)
    per_pair = F.binary_cross_entropy_with_logits(logit, labels.to(delta.dtype), reduction="none")  # (B,)
    center = (chosen_rewards + rejected_rewards) ** 2  # (B,)
    loss = reduce_mean(per_pair + center_coef * center, normalizer=normalizer)
    metrics = {
        "accuracy": _pair_accuracy(delta, labels),
        "margin": delta.detach().mean(),
        "center_penalty": center.detach().mean(),
    }
    return loss, metrics


def regression_loss(
    pred: Tensor, target: Tensor, mask: Tensor, *, normalizer: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked mean squared error for multi-objective rating heads (§3.1, ArmoRM stage 1).

        ℓ = Σ_{ij} m_ij (pred_ij − target_ij)² / Σ_{ij} m_ij

    pred, target, mask (B, k); missing ratings have mask 0 and may hold NaN. The mean is over the
    observed entries only (or the sum / ``normalizer``, the global count of observed entries).
    Metrics: mse, observed (fraction of entries observed).
    """
    mask = mask.bool()
    sq = (pred - torch.where(mask, target, 0.0)) ** 2  # (B, k); masked entries dropped below
    loss = reduce_mean(sq, mask, normalizer=normalizer)
    metrics = {"mse": reduce_mean(sq.detach(), mask), "observed": mask.float().mean()}
    return loss, metrics


def ridge_fit(
    features: Tensor, targets: Tensor, mask: Tensor, l2: float, *, fit_intercept: bool = True
) -> tuple[Tensor, Tensor]:
    """Closed-form ridge regression per objective with missing targets (§3.1, ArmoRM stage 1).

    For each objective j, on its observed rows O_j = {n : mask[n, j]} only:

        (w_j, b_j) = argmin Σ_{n∈O_j} (x_n·w + b − y_nj)² + l2 ‖w‖²     (b not penalized)

    With an intercept, center on O_j: x̄_j, ȳ_j = means over O_j, then
    w_j = (X̃ᵀX̃ + l2 I)⁻¹ X̃ᵀỹ with X̃ = X_{O_j} − x̄_j, ỹ = y_{O_j} − ȳ_j, and b_j = ȳ_j − x̄_j·w_j.
    Without an intercept, no centering and b_j = 0. All k systems are solved as one batch.

    features (n, d); targets (n, k), NaN allowed where unobserved; mask (n, k). Returns
    (weights (d, k), bias (k,)). An objective with no observed rows gets w = 0, b = 0 (needs l2 > 0).
    """
    if l2 < 0:
        raise ValueError(f"l2 must be ≥ 0, got {l2}")
    m = mask.to(features.dtype)  # (n, k)
    y = torch.where(mask.bool(), targets, 0.0).to(features.dtype)  # (n, k)
    count = m.sum(0)  # (k,)
    gram = torch.einsum("nk,nd,ne->kde", m, features, features)  # (k, d, d)
    rhs = features.T @ (m * y)  # (d, k)
    d = features.shape[1]
    if fit_intercept:
        x_mean = (m.T @ features) / count.clamp(min=1.0)[:, None]  # (k, d)
        y_mean = y.sum(0) / count.clamp(min=1.0)  # (k,)
        # Σ_O (x − x̄)(x − x̄)ᵀ = Σ_O x xᵀ − n x̄ x̄ᵀ;  Σ_O (x − x̄)(y − ȳ) = Σ_O x y − n x̄ ȳ
        gram = gram - count[:, None, None] * x_mean[:, :, None] * x_mean[:, None, :]
        rhs = rhs - (count * y_mean)[None, :] * x_mean.T
    eye = torch.eye(d, dtype=features.dtype, device=features.device)
    weights = torch.linalg.solve(gram + l2 * eye, rhs.T.unsqueeze(-1)).squeeze(-1).T  # (d, k)
    if not fit_intercept:
        return weights, torch.zeros(targets.shape[1], dtype=features.dtype, device=features.device)
    bias = y_mean - (x_mean * weights.T).sum(-1)  # (k,)
    return weights, bias


def pessimistic_score(scores: Tensor, *, mode: Literal["min", "mean_std"] = "min", c: float = 1.0) -> Tensor:
    """Conservative score of an ensemble (§3.1, pessimism), reducing the ensemble dim 0.

    mode="min": min_k s_k.  mode="mean_std": mean_k s_k − c · std_k s_k (unbiased std, K ≥ 2).
    scores (K, ...) → (...).
    """
    if mode == "min":
        return scores.min(dim=0).values
    if mode == "mean_std":
        return scores.mean(dim=0) - c * scores.std(dim=0, correction=1)
    raise ValueError(f"mode must be 'min' or 'mean_std', got {mode!r}")


def plackett_luce_nll(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """−log P(ranking) under Plackett–Luce, per list: (B, K) scores in ranked order (best first) → (B,).

        −log P = −Σ_k [s_k − log Σ_{i≥k} exp(s_i)]      (k and i over the list's real entries)

    ``mask`` (B, K) marks the real entries (default all); masked-out entries, which may hold any
    value, take no part and get zero gradient. The last real entry's term is 0. K = 2 gives the BT
    loss softplus(−(s_1 − s_2)).
    """
    k = scores.shape[-1]
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    s = scores.where(mask, 0.0)  # (B, K) finite everywhere
    later = torch.triu(torch.ones(k, k, dtype=torch.bool, device=scores.device))  # [k, i]: i ≥ k
    eye = torch.eye(k, dtype=torch.bool, device=scores.device)
    # row k: the entries i ≥ k still in the list; a masked-out k keeps itself so that no row is empty
    allowed = later & (mask[:, None, :] | eye)  # (B, K, K)
    denom = torch.logsumexp(s[:, None, :].expand(-1, k, -1).masked_fill(~allowed, -torch.inf), dim=-1)  # (B, K)
    return -(s - denom).where(mask, 0.0).sum(-1)


def plackett_luce_loss(
    scores: Tensor, *, mask: Tensor | None = None, normalizer: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plackett–Luce (K-way Bradley–Terry) ranking loss of a reward model (§3.1), InstructGPT-style.

    scores (B, K): r(x, y_k) of each list's responses in ranked order, best first; ``mask`` (B, K)
    marks real entries (lists shorter than K). Loss: the mean over lists of :func:`plackett_luce_nll`
    (or the sum / ``normalizer``, the global list count of the step). With K = 2 it is
    :func:`bt_loss` with hard labels. Metrics: accuracy (share of ordered pairs i < j with s_i > s_j),
    top1 (share of lists whose first response scores highest), margin (mean first − last score).
    """
    from prefgame.losses.policy import _ranking_metrics

    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    loss = reduce_mean(plackett_luce_nll(scores, mask), normalizer=normalizer)
    return loss, _ranking_metrics(scores.detach(), mask, "")
