"""Pessimism, uncertainty and best-of-n: the pure functions behind the online loop and the
reward-hacking measurements (docs/design.md §3.1 pessimism; docs/online.md).

Every function here takes and returns tensors and has no state; the model-level wrappers that apply
them to a preference model's features or to an ensemble's members call these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
