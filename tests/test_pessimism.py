"""Pure pessimism / uncertainty / best-of-n functions (prefgame/pessimism.py), against hand values
and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from prefgame.pessimism import (
    best_of_n_index,
    best_of_n_kl,
    ensemble_disagreement,
    linear_lcb,
    mahalanobis_norm,
    offline_covariance,
)


def test_offline_covariance_and_lcb_hand_computed():
    # two offline pairs in 2-D: d1 = (1, 0), d2 = (1, 1); λ = 1
    # Σ = I + d1 d1ᵀ + d2 d2ᵀ = [[3, 1], [1, 2]], det 5, Σ⁻¹ = [[2, −1], [−1, 3]] / 5
    diffs = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    sigma = offline_covariance(diffs, lam=1.0)
    assert torch.equal(sigma, torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
    # v = (1, 0): vᵀΣ⁻¹v = 2/5; v = (0, 1): 3/5; v = (1, 1): (2 − 2 + 3)/5 = 3/5
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(mahalanobis_norm(v, sigma), torch.tensor([0.4, 0.6, 0.6], dtype=torch.float64).sqrt())
    # r̂ = (1, 1, 1), φ_ref = 0, c = 2 → 1 − 2·sqrt(·)
    value = torch.ones(3, dtype=torch.float64)
    lcb = linear_lcb(value, v, torch.zeros_like(v), sigma, c=2.0)
    torch.testing.assert_close(lcb, 1 - 2 * torch.tensor([0.4, 0.6, 0.6], dtype=torch.float64).sqrt())
    # a direction the offline data covered more gets the smaller penalty
    assert mahalanobis_norm(v[:1], sigma) < mahalanobis_norm(v[1:2], sigma)
    # c = 0 is the plain estimate; the reference itself gets no penalty
    assert torch.equal(linear_lcb(value, v, torch.zeros_like(v), sigma, c=0.0), value)
    assert torch.equal(linear_lcb(value, v, v, sigma, c=5.0), value)


def test_offline_covariance_rejects_nonpositive_lambda():
    with pytest.raises(ValueError, match="lam"):
        offline_covariance(torch.zeros(1, 2), lam=0.0)


def test_ensemble_disagreement_constructed():
    # members agree on pair 0, split half/half on pair 1, mildly disagree on pair 2
    probs = torch.tensor([[0.7, 0.0, 0.6], [0.7, 1.0, 0.4], [0.7, 0.0, 0.6], [0.7, 1.0, 0.4]], dtype=torch.float64)
    d = ensemble_disagreement(probs)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 0.1], dtype=torch.float64))
    assert int(d.argmax()) == 1
    # swapping a and b (P → 1 − P) leaves it unchanged
    torch.testing.assert_close(ensemble_disagreement(1 - probs), d)
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_disagreement(probs[:1])


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_matches_monte_carlo(n):
    # π0 uniform over V outcomes with continuous distinct scores: best-of-n puts mass
    # ((k+1)^n − k^n)/V^n on the k-th ranked outcome (0 = worst). KL from those exact masses, and
    # from a Monte Carlo draw of best-of-n, both approach log n − (n−1)/n as V grows.
    v = 4096
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(v, generator=g, dtype=torch.float64)
    rank = scores.argsort().argsort().double()  # 0 = worst
    exact = ((rank + 1) / v) ** n - (rank / v) ** n
    kl_exact = float((exact * (exact * v).log()).sum())
    assert abs(kl_exact - best_of_n_kl(n)) < 2e-3

    draws = 200_000
    idx = torch.randint(0, v, (draws, n), generator=g)
    best = idx.gather(1, best_of_n_index(scores[idx]).unsqueeze(1)).squeeze(1)
    freq = torch.bincount(best, minlength=v).double() / draws
    kl_mc = float((freq * (exact * v).log()).sum())  # E_bon[log π_bon/π0] with the sampled best-of-n
    assert abs(kl_mc - best_of_n_kl(n)) < 0.02
    if n == 1:
        assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(n) <= math.log(n)


def test_best_of_n_kl_rejects_zero():
    with pytest.raises(ValueError):
        best_of_n_kl(0)
