"""Pure pessimism / uncertainty / best-of-n functions (prefgame/pessimism.py), against hand values,
Monte Carlo and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefgame.pessimism import (
    best_of_n_expectation,
    best_of_n_index,
    best_of_n_kl,
    best_of_n_weights,
    ensemble_disagreement,
    linear_lcb,
    mahalanobis_norm,
    offline_covariance,
    shrink_logit,
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


def test_best_of_n_weights_hand_computed():
    # pool of 4, best of 2: position p (0 = best) wins when it is drawn and its partner ranks below it:
    # C(3 − p, 1) / C(4, 2) = 3/6, 2/6, 1/6, 0
    torch.testing.assert_close(best_of_n_weights(4, 2), torch.tensor([3, 2, 1, 0], dtype=torch.float64) / 6)
    torch.testing.assert_close(best_of_n_weights(5, 1), torch.full((5,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(best_of_n_weights(3, 3), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    for size, n in [(256, 1), (256, 7), (256, 256), (1000, 40)]:
        assert abs(float(best_of_n_weights(size, n).sum()) - 1) < 1e-12
    with pytest.raises(ValueError):
        best_of_n_weights(4, 5)


def test_best_of_n_expectation_equals_every_subset():
    # the estimator is the average over all n-subsets of the value of each subset's best (first on ties)
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (3, 7), generator=g).double()  # many ties
    values = torch.randn(3, 7, generator=g, dtype=torch.float64)
    for n in (1, 2, 3, 7):
        brute = []
        for m in range(3):
            picks = []
            for subset in itertools.combinations(range(7), n):
                s = scores[m, list(subset)]
                picks.append(float(values[m, subset[int(best_of_n_index(s.unsqueeze(0))[0])]]))
            brute.append(sum(picks) / len(picks))
        torch.testing.assert_close(best_of_n_expectation(scores, values, n), torch.tensor(brute, dtype=torch.float64))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=8),
    st.lists(st.floats(0, 30, allow_nan=False), min_size=8, max_size=8),
)
def test_shrink_logit_is_antisymmetric_and_shrinks(logits, penalties):
    s = torch.tensor(logits, dtype=torch.float64)
    pen = torch.tensor(penalties[: len(logits)], dtype=torch.float64)
    out = shrink_logit(s, pen)
    assert torch.equal(shrink_logit(-s, pen), -out)  # bit for bit
    assert bool((out.abs() <= s.abs()).all()) and bool((out * s >= 0).all())  # towards 0, never past it
    torch.testing.assert_close(out.abs(), torch.clamp(s.abs() - pen, min=0.0))
    assert torch.equal(
        shrink_logit(torch.zeros(3, dtype=torch.float64), torch.ones(3)), torch.zeros(3, dtype=torch.float64)
    )
