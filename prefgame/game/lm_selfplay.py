"""Estimators the LM self-play trainer computes from sampled responses (docs/design.md §3.3), and the exact
class-level measurements of the arena (docs/design.md §3.2, §4).

- :class:`PreferenceCache` — batched, deduplicated oracle queries: every distinct (x, a, b) is asked
  once (in one canonical order; the other order is 1 − p, a = b is ½), in one call per batch.
- :func:`group_matrices` / :func:`cross_matrices` — the K×K preference matrix of each prompt's
  samples (against each other, or against a second set of samples).
- :func:`leave_one_out_win_rates` — P̂(y_i ≻ π) = mean_{j≠i} M[i, j], an unbiased estimate from the
  K − 1 other samples of the same prompt.
- :func:`draw_pairs` — all pairs of distinct samples of a prompt, the winner drawn from the oracle's
  probability (the pairs of the INPO / EGPO loss); :func:`distinct_pairs` — the pairs without labels.
- :class:`ClassGame` — the arena's regularized game over feature classes: the reference is π0's
  class distribution ρ0 (estimated once from samples), A[t] = P*[t] − ½ per prompt type t, the
  regularization τ. Because P* depends on a response only through its class, this game is exact for
  the sequence-level game: its equilibrium π* is the class marginal of the sequence-level
  equilibrium (which keeps π0's conditional distribution within each class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from prefgame.game.metrics import duality_gap, exploitability, kl
from prefgame.game.solvers import solve_equilibrium
from prefgame.oracle import PreferenceOracle, preference_matrices

Key = tuple[str, str, str]


class PreferenceCache:
    """An oracle behind a table of answers: each distinct (prompt, a, b) is queried at most once.

    Relies on the oracle being anti-symmetric (the :class:`~prefgame.oracle.PreferenceOracle`
    contract): (x, a, b) and (x, b, a) share one query, P(b ≻ a) = 1 − P(a ≻ b), and P(a ≻ a) = ½
    without a query. ``broadcast`` (multi-process runs) is called with the probabilities computed on
    the main process and returns them on every process.
    """

    def __init__(
        self,
        oracle: PreferenceOracle,
        *,
        is_main: bool = True,
        broadcast: Callable[[list[float] | None], list[float]] | None = None,
    ) -> None:
        self.oracle, self.is_main, self.broadcast = oracle, is_main, broadcast
        self.table: dict[Key, float] = {}
        self.requested = 0  # pairs asked for
        self.queried = 0  # pairs sent to the oracle

    def query(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """P(a_i ≻ b_i | x_i), (N,) float64, from one batched oracle call for the unseen pairs."""
        keys = [(x, ai, bi) if ai <= bi else (x, bi, ai) for x, ai, bi in zip(prompts, a, b)]
        missing = list(dict.fromkeys(k for k in keys if k[1] != k[2] and k not in self.table))
        if missing:
            probs: list[float] | None = None
            if self.is_main:
                out = self.oracle.preference([k[0] for k in missing], [k[1] for k in missing], [k[2] for k in missing])
                probs = torch.as_tensor(out, dtype=torch.float64).reshape(-1).tolist()
                if len(probs) != len(missing):
                    raise ValueError(
                        f"oracle {self.oracle.name!r} returned {len(probs)} values for {len(missing)} pairs"
                    )
            if self.broadcast is not None:
                probs = self.broadcast(probs)
            self.table.update(zip(missing, probs))
        self.requested += len(keys)
        self.queried += len(missing)
        out = [0.5 if k[1] == k[2] else self.table[k] for k in keys]
        flip = torch.tensor([ai > bi for ai, bi in zip(a, b)], dtype=torch.bool)
        p = torch.tensor(out, dtype=torch.float64)
        return torch.where(flip, 1.0 - p, p)

    def stats(self) -> dict[str, int]:
        return {"oracle_pairs_requested": self.requested, "oracle_pairs_queried": self.queried}


def group_matrices(cache: PreferenceCache, prompts: Sequence[str], texts: Sequence[str], n: int) -> torch.Tensor:
    """(M, n, n) M[m, i, j] = P(y_{m,i} ≻ y_{m,j} | x_m) for M prompts with n samples each (prompt-major).

    One oracle call for the strict upper triangles of all prompts; the rest follows from anti-symmetry
    (:func:`~prefgame.oracle.preference_matrices` through the cache).
    """
    m_prompts = len(texts) // n
    return preference_matrices(cache.query, [prompts[m * n] for m in range(m_prompts)], texts, n)


def cross_matrices(
    cache: PreferenceCache,
    prompts: Sequence[str],
    texts: Sequence[str],
    opponents: Sequence[str],
    n: int,
    n_opponents: int | None = None,
) -> torch.Tensor:
    """(M, n, n') C[m, i, j] = P(y_{m,i} ≻ y'_{m,j} | x_m): each of a prompt's n samples against each of
    its n' = ``n_opponents`` (default n) opponent samples (both prompt-major)."""
    n_opp = n if n_opponents is None else n_opponents
    m_prompts = len(texts) // n
    qx, qa, qb = [], [], []
    for m in range(m_prompts):
        for i in range(n):
            qx += [prompts[m * n]] * n_opp
            qa += [texts[m * n + i]] * n_opp
            qb += list(opponents[m * n_opp : (m + 1) * n_opp])
    return cache.query(qx, qa, qb).view(m_prompts, n, n_opp)


def leave_one_out_win_rates(mats: torch.Tensor) -> torch.Tensor:
    """(M·n,) P̂(y_i ≻ π) = Σ_{j≠i} M[i, j] / (n − 1): the other samples are independent draws of π."""
    n = mats.shape[-1]
    if n < 2:
        raise ValueError("win rates against the policy need at least 2 samples per prompt")
    off = mats.sum(-1) - mats.diagonal(dim1=-2, dim2=-1)  # (M, n)
    return (off / (n - 1)).reshape(-1)


def distinct_pairs(response_ids: Sequence[Sequence[int]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of each prompt's n samples (prompt-major): (first, second, keep), global
    indices (M·n(n−1)/2,) and whether the two responses differ (identical ones carry no signal)."""
    m_prompts = len(response_ids) // n
    rows, cols = np.triu_indices(n, k=1)
    first = (np.arange(m_prompts)[:, None] * n + rows[None]).reshape(-1)
    second = (np.arange(m_prompts)[:, None] * n + cols[None]).reshape(-1)
    keep = np.array([list(response_ids[i]) != list(response_ids[j]) for i, j in zip(first, second)], dtype=bool)
    return first, second, keep


def draw_pairs(
    mats: torch.Tensor, response_ids: Sequence[Sequence[int]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of a prompt's samples with different tokens; the winner drawn ~ Bernoulli(P).

    Returns (chosen, rejected, p): global sample indices (prompt-major, n per prompt) and the oracle
    probability P(chosen ≻ rejected) of each pair. Identical responses carry no signal and are skipped.
    """
    n = mats.shape[-1]
    rows, cols = np.triu_indices(n, k=1)
    first, second, keep = distinct_pairs(response_ids, n)
    p_first = mats[:, rows, cols].reshape(-1).numpy()  # (M·P,)
    first_wins = rng.random(len(first)) < p_first  # drawn for every pair, so the stream does not depend on keep
    chosen = np.where(first_wins, first, second)[keep]
    rejected = np.where(first_wins, second, first)[keep]
    p = np.where(first_wins, p_first, 1.0 - p_first)[keep]
    return chosen, rejected, p


# ------------------------------------------------------------------------------ arena class-level game


def smoothed_class_distribution(
    arena, prompts: Sequence[str], responses: Sequence[str], *, prior: float
) -> torch.Tensor:
    """A policy's class distribution per prompt type (T, C) from samples, with ``prior`` pseudo-samples of
    its pooled distribution (itself given ½ pseudo-count per class) added to each type's counts, so that
    every class keeps the positive mass a KL-regularized game's reference needs."""
    raw = arena.class_distribution(list(prompts), list(responses))  # (T, C), rows sum to 1
    types, _ = arena.classify(list(prompts), list(responses))
    n_t = torch.bincount(torch.from_numpy(types), minlength=raw.shape[0]).double()  # (T,)
    pooled = (raw * n_t[:, None]).sum(0) + 0.5  # (C,)
    counts = raw * n_t[:, None] + prior * (pooled / pooled.sum())[None]
    return counts / counts.sum(-1, keepdim=True)


def class_figures(arena, pi: torch.Tensor, pi0: torch.Tensor, game: ClassGame | None = None) -> dict[str, float]:
    """The exact class-level figures of a policy's class distribution π (T, C) on the arena, the names
    every trainer, the quickstart and the report use: ``gold_win_rate_vs_ref`` P*(π ≻ π0) against π0's
    class distribution measured from samples (``pi0``), ``exploitability`` (unregularized) and
    ``exploitability_transitive`` (its part under the gold preference without the cyclic term); with the
    regularized ``game``, also its ``gap``, ``tv_to_equilibrium`` and ``class_kl``
    (:meth:`ClassGame.measure`)."""
    figures = {
        "gold_win_rate_vs_ref": arena.win_rate(pi, pi0),
        "exploitability": arena.exploitability(pi),
        "exploitability_transitive": arena.exploitability(pi, transitive=True),
    }
    return {**figures, **game.measure(pi)} if game is not None else figures


class ClassGame:
    """The arena's regularized class-level game, solved once; measures class-level policies exactly.

    ``ref`` (T, C) is π0's class distribution per prompt type (strictly positive: estimate it with
    smoothing), ``P`` (T, C, C) the gold preference, ``type_probs`` (T,) the prompt-type weights and
    ``tau`` the regularization of max_π min_π' P(π≻π') − τ KL(π‖ρ0) + τ KL(π'‖ρ0). π* comes from
    :func:`~prefgame.game.solvers.solve_equilibrium`.
    """

    def __init__(self, P: torch.Tensor, ref: torch.Tensor, type_probs: torch.Tensor, tau: float) -> None:
        if bool((ref <= 0).any()):
            raise ValueError("the reference class distribution must be strictly positive (use smoothing)")
        self.P, self.A = P.double(), P.double() - 0.5
        self.ref, self.type_probs, self.tau = ref.double(), type_probs.double(), tau
        self.pi_star, info = solve_equilibrium(self.A, self.ref, tau)
        self.solver_gap = float(info.gap.max())

    def _avg(self, per_type: torch.Tensor) -> float:
        return float(per_type @ self.type_probs)

    def measure(self, pi: torch.Tensor) -> dict[str, float]:
        """Exact figures of a class-level policy π (T, C), averaged over prompt types.

        gap: duality gap of the regularized game (0 only at π*); exploitability: max_y (P*π)_y − ½;
        tv_to_equilibrium: ½‖π − π*‖₁; class_kl: KL(π‖ρ0) over classes (a lower bound of the
        sequence-level KL).
        """
        pi = pi.double()
        return {
            "gap": self._avg(duality_gap(self.A, pi, self.ref, self.tau)),
            "exploitability": self._avg(exploitability(self.P, pi)),
            "tv_to_equilibrium": self._avg(0.5 * (pi - self.pi_star).abs().sum(-1)),
            "class_kl": self._avg(kl(pi, self.ref)),
        }

    def summary(self) -> dict[str, Any]:
        return {"tau": self.tau, "solver_gap": self.solver_gap, "equilibrium": self.measure(self.pi_star)}
