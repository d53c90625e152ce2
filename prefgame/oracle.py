"""The preference-oracle protocol.

Anything that answers "how likely is response ``a`` preferred to response ``b`` for prompt ``x``"
implements :class:`PreferenceOracle`: the arena's gold preference and its simulated annotators,
trained preference models, and judges. Self-play, DPO labeling and evaluation consume only this
protocol.

Contract: ``preference(prompts, responses_a, responses_b)`` returns a float tensor of shape (N,)
with P(a_i ≻ b_i | x_i) in [0, 1]. Implementations that can be exactly anti-symmetric
(P(a≻b) + P(b≻a) = 1, P(a≻a) = ½) are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PreferenceOracle(Protocol):
    """Batched pairwise preference probabilities."""

    name: str

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """Return P(a_i ≻ b_i | x_i) for every i, shape (N,), dtype float32/float64."""
        ...


def preference_matrix(oracle: PreferenceOracle, prompt: str, responses: Sequence[str]) -> torch.Tensor:
    """The K×K matrix M[i, j] = P(responses[i] ≻ responses[j] | prompt) from K² batched queries.

    Only the strict upper triangle is queried; the rest follows from anti-symmetry
    (M[j, i] = 1 − M[i, j], M[i, i] = ½), so the result is exactly anti-symmetric.
    """
    k = len(responses)
    rows, cols = torch.triu_indices(k, k, offset=1)
    probs = oracle.preference([prompt] * len(rows), [responses[i] for i in rows], [responses[j] for j in cols]).double()
    m = torch.full((k, k), 0.5, dtype=torch.float64)
    m[rows, cols] = probs
    m[cols, rows] = 1.0 - probs
    return m
