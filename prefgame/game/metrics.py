"""Exact quantities of the KL-regularized preference game on a finite response set (docs/design.md §3.2).

One prompt has n candidate responses. Every function is batched over any leading dimensions and
follows the device and dtype of its inputs.

    P    (B, n, n)  P[i, j] = P(y_i ≻ y_j), with P + Pᵀ = 1
    A    (B, n, n)  A = P − ½, skew-symmetric, so πᵀAπ = 0 for every π
    pi   (B, n)     a policy on the simplex
    ref  (B, n)     the reference policy π0, strictly positive
    tau  float      the KL coefficient τ > 0 (docs/design.md §3, notation)

The game is max_π min_π' P(π ≻ π') − τ KL(π‖π0) + τ KL(π'‖π0). Its unique equilibrium is
symmetric, (π*, π*), with π* = softmax(log π0 + Aπ*/τ). The step of the self-play update rules is
η (:mod:`prefgame.game.solvers`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def payoff(A: Tensor, pi: Tensor) -> Tensor:
    """(Aπ)_y = P(y ≻ π) − ½, the advantage of each response against π.  Shape (B, n).

    Also for a stack of policies (K, B, n) against A (B, n, n): einsum broadcasts without copying A.
    """
    return torch.einsum("...ij,...j->...i", A, pi)


def kl(pi: Tensor, ref: Tensor) -> Tensor:
    """KL(π‖π0) = Σ_y π_y log(π_y / π0_y), with 0·log 0 = 0.  Shape (B,)."""
    return (torch.xlogy(pi, pi) - torch.xlogy(pi, ref)).sum(-1)


def best_response_logits(A: Tensor, pi: Tensor, ref: Tensor, tau: float) -> Tensor:
    """Unnormalized log best response, log π0 + Aπ/τ, for the KL coefficient τ (``tau``).  Shape (B, n)."""
    return ref.log() + payoff(A, pi) / tau


def best_response(A: Tensor, pi: Tensor, ref: Tensor, tau: float) -> Tensor:
    """BR(π) = softmax(log π0 + Aπ/τ) (docs/design.md §3.2), τ = ``tau``.  Shape (B, n).

    It is the maximizer of π'ᵀAπ − τ KL(π'‖π0) over the simplex (Gibbs variational principle).
    """
    return torch.softmax(best_response_logits(A, pi, ref, tau), dim=-1)


def duality_gap(A: Tensor, pi: Tensor, ref: Tensor, tau: float) -> Tensor:
    """Duality gap of the symmetric profile (π, π) (docs/design.md §3.2), τ = ``tau``.  Shape (B,).

        gap(π) = 2 [ τ · logsumexp(log π0 + Aπ/τ) + τ · KL(π‖π0) ]

    Derivation. With f(π1, π2) = π1ᵀAπ2 − τ KL(π1‖π0) + τ KL(π2‖π0) (the constant ½ of P cancels),
    max_π' [π'ᵀAπ − τ KL(π'‖π0)] = τ logsumexp(log π0 + Aπ/τ) by the Gibbs variational principle.
    Hence max_π1 f(π1, π) = τ logsumexp(·) + τ KL(π‖π0), and because πᵀAπ' = −π'ᵀAπ,
    min_π2 f(π, π2) = −τ KL(π‖π0) − τ logsumexp(·); the gap is the difference. It is convex in π,
    ≥ 0 (take π' = π, using πᵀAπ = 0), and zero only at π*. logsumexp keeps it finite for small τ;
    at π* it is zero up to rounding (about 1e-16 · τ · |log π0 + Aπ/τ|).
    """
    logits = best_response_logits(A, pi, ref, tau)  # (B, n)
    return 2.0 * tau * (torch.logsumexp(logits, dim=-1) + kl(pi, ref))


def exploitability(P: Tensor, pi: Tensor) -> Tensor:
    """Unregularized exploitability max_y (Pπ)_y − ½, zero at a Nash equilibrium of the plain game.

    Shape (B,). This is the best win rate any single response achieves against π, minus ½.
    """
    return payoff(P, pi).amax(-1) - 0.5


class TabularGame(NamedTuple):
    """A batch of games: preferences P, their skew-symmetric part A = P − ½, reference π0."""

    P: Tensor  # (B, n, n)
    A: Tensor  # (B, n, n)
    ref: Tensor  # (B, n)


def random_game(
    B: int,
    n: int,
    *,
    cyclic_strength: float = 1.0,
    transitive_scale: float = 1.0,
    ref_scale: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TabularGame:
    """Random preference games with a transitive and a cyclic part, and a random reference policy.

        P_ij = σ(r_i − r_j + c · C_ij),  r ~ N(0, transitive_scale²),  C = (G − Gᵀ)/√2, G_ij ~ N(0, 1)

    with c = cyclic_strength. C is skew-symmetric, so P + Pᵀ = 1; A is re-symmetrized as
    (A − Aᵀ)/2 so that it is skew-symmetric to the last bit. π0 = softmax(ref_scale · N(0, 1)).
    Sampling is done on the CPU in float64 with the given seed, so results do not depend on device.
    """
    gen = torch.Generator().manual_seed(seed)
    r = transitive_scale * torch.randn(B, n, 1, generator=gen, dtype=torch.float64)  # (B, n, 1)
    G = torch.randn(B, n, n, generator=gen, dtype=torch.float64)  # (B, n, n)
    C = (G - G.transpose(-1, -2)) / 2**0.5  # (B, n, n) skew-symmetric
    A = torch.sigmoid(r - r.transpose(-1, -2) + cyclic_strength * C) - 0.5  # (B, n, n)
    A = 0.5 * (A - A.transpose(-1, -2))
    ref = torch.softmax(ref_scale * torch.randn(B, n, generator=gen, dtype=torch.float64), dim=-1)
    A, ref = A.to(device=device, dtype=dtype), ref.to(device=device, dtype=dtype)
    return TabularGame(P=A + 0.5, A=A, ref=ref)
