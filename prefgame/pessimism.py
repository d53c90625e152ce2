"""Pessimism, uncertainty and best-of-n: the pure functions behind the online loop and the
reward-hacking measurements (docs/design.md §3.1 pessimism; docs/online.md).

Every function here takes and returns tensors and has no state; the model-level wrappers that apply
them to a preference model's features or to an ensemble's members call these
(:mod:`prefgame.models.pessimistic`, which :class:`PessimismConfig` configures wherever a job loads a
model as a reward, an oracle or a best-of-n scorer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prefgame.config import param


@dataclass
class PessimismConfig:
    """A pessimistic view of a trained preference model (docs/preference_models.md, *Pessimism*)."""

    kind: Literal["none", "linear_lcb"] = param(
        "none",
        "none: the model as trained; linear_lcb: r̂(x,a) − c·‖φ(x,a) − φ(x,π0)‖ in the Σ_off⁻¹ norm (bt), the "
        "pairwise logit shrunk by c·‖φ(x,a) − φ(x,b)‖ towards no preference (gpm); φ: the head's last hidden layer",
    )
    c: float = param(1.0, "linear_lcb: width c of the confidence bound", ge=0)
    lam: float = param(1.0, "linear_lcb: ridge λ of Σ_off = λI + Σ (φ(a¹) − φ(a²))(φ(a¹) − φ(a²))ᵀ", gt=0)
    offline_pairs: str = param(
        "", "linear_lcb: the pairs file the model was trained on (Σ_off; its responses also estimate φ(x, π0))"
    )
    reference: str = param(
        "",
        "linear_lcb: optional π0 samples (`prefgame generate` jsonl: prompt, output) whose mean feature per prompt "
        "is φ(x, π0); prompts they lack use the offline responses to that prompt, then the mean of all",
    )


def offline_covariance(feature_diffs: Tensor, lam: float) -> Tensor:
    """Σ_off = λ·I + Σ_i d_i d_iᵀ over the offline pairs' feature differences d_i = φ(x_i, a¹_i) − φ(x_i, a²_i).

    feature_diffs (N, d) → (d, d), in feature_diffs' dtype (use float64 for the bound). λ > 0 keeps Σ_off
    positive definite when N < d or the differences span a subspace.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    d = feature_diffs.shape[-1]
    eye = torch.eye(d, dtype=feature_diffs.dtype, device=feature_diffs.device)
    return lam * eye + feature_diffs.T @ feature_diffs


def mahalanobis_norm(v: Tensor, sigma: Tensor) -> Tensor:
    """‖v_i‖_{Σ⁻¹} = sqrt(v_iᵀ Σ⁻¹ v_i) for each row of v (N, d) → (N,), by a Cholesky solve (no explicit inverse)."""
    chol = torch.linalg.cholesky(sigma)
    w = torch.linalg.solve_triangular(chol, v.T, upper=False)  # L w = vᵀ → ‖w‖² = vᵀ Σ⁻¹ v
    return w.pow(2).sum(0).sqrt()


def linear_lcb(value: Tensor, phi: Tensor, phi_ref: Tensor, sigma: Tensor, c: float) -> Tensor:
    """The linear lower confidence bound  value_i − c · ‖φ_i − φ_ref,i‖_{Σ⁻¹}.

    ``value`` (N,) is the model's estimate (a reward r̂(x, a), or a pairwise logit s(a, b)); ``phi`` (N, d)
    its features and ``phi_ref`` (N, d) the reference's (φ(x, π0): the mean feature of π0's responses to
    x, or for a pairwise logit the other response's features); ``sigma`` (d, d) Σ_off.
    """
    if c < 0:
        raise ValueError(f"c must be ≥ 0, got {c}")
    return value - c * mahalanobis_norm(phi - phi_ref, sigma).to(value.dtype)


def ensemble_disagreement(member_probs: Tensor) -> Tensor:
    """How much an ensemble disagrees on each pair: the (population) standard deviation over the
    members of P_k(a ≻ b), member_probs (K, N) → (N,). 0 when the members agree; at most ½
    (half the members say 0, half say 1). Symmetric in a and b: swapping every pair (P → 1 − P)
    leaves it unchanged."""
    if member_probs.shape[0] < 2:
        raise ValueError("disagreement needs an ensemble of at least 2 members")
    return member_probs.std(dim=0, correction=0)


def best_of_n_kl(n: int) -> float:
    """KL(π_best-of-n ‖ π0) = log n − (n − 1)/n, exact for a continuous (tie-free) score; an upper
    bound otherwise. n = 1 gives 0."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_index(scores: Tensor) -> Tensor:
    """Index of the best of each row's n candidates, scores (M, n) → (M,); ties go to the first."""
    return scores.argmax(dim=-1)


def shrink_logit(score: Tensor, penalty: Tensor) -> Tensor:
    """A pairwise logit moved ``penalty`` ≥ 0 towards no preference, never past it:
    sign(s) · max(|s| − penalty, 0).

    Exactly anti-symmetric whenever the penalty is symmetric in the pair (penalty(a, b) =
    penalty(b, a), as ‖φ_a − φ_b‖ is): s(b, a) = −s(a, b) gives −result bit for bit, and s = 0 stays 0.
    The linear LCB of a general preference model's logit (docs/preference_models.md, *Pessimism*).
    """
    return torch.sign(score) * torch.clamp(score.abs() - penalty.to(score.dtype), min=0.0)


def best_of_n_weights(size: int, n: int) -> Tensor:
    """Order-statistics weights of best-of-n from a pool of ``size`` samples, (size,) float64.

    Position p of the pool sorted best first (p = 0 the best) is the best of a uniformly drawn n-subset
    with probability C(size − 1 − p, n − 1) / C(size, n): the subset holds p and its other n − 1 members
    come from the size − 1 − p samples ranked below p. The weights sum to 1; n = 1 gives 1/size each,
    n = size puts everything on p = 0. Computed with log-gamma, so size in the thousands is exact to
    float64 rounding.
    """
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}], got {n}")
    p = torch.arange(size, dtype=torch.float64)
    below = size - 1 - p  # samples ranked below position p
    valid = below >= n - 1
    log_choose = torch.lgamma(below + 1) - torch.lgamma(torch.clamp(below - n + 2, min=1.0)) - math.lgamma(n)
    log_total = math.lgamma(size + 1) - math.lgamma(size - n + 1) - math.lgamma(n + 1)
    return torch.where(valid, (log_choose - log_total).exp(), torch.zeros_like(p))


def best_of_n_expectation(scores: Tensor, values: Tensor, n: int) -> Tensor:
    """Unbiased estimate of E[value of the best of n] per row from a pool of N samples per row:
    scores, values (M, N) → (M,).

    The U-statistic over every n-subset of the pool (:func:`best_of_n_weights` on the pool sorted by
    score, best first), so one sampling pass of N ≥ n answers every n ≤ N, with lower variance than one
    drawn subset. Ties in score go to the earlier sample, as :func:`best_of_n_index` does.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (M, N) best first
    ranked = values.double().gather(-1, order)
    return ranked @ best_of_n_weights(scores.shape[-1], n)
