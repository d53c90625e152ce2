"""Self-play dynamics and an exact Newton solver for the tabular regularized game (docs/design.md §3.2–3.3).

Shapes and symbols as in :mod:`prefgame.game.metrics` and the notation of docs/design.md §3: A (B, n, n)
skew-symmetric, pi and ref (B, n), ``tau`` the KL coefficient τ of the game. Each update rule is one step
``pi_next = rule(A, pi, ref, tau, eta)`` computed in log space (log-softmax of a combination of
log-probabilities), where ``eta`` is the mirror-descent step η (η_t when it varies), a float or a tensor
broadcastable to (B,) for one step per game. :func:`run_dynamics` takes the steps as ``step_size``: a
constant η or a schedule t ↦ η_t.

Step-size conventions. Every rule multiplies the payoff Aπ by η, and the rules that pull towards π0
do so with weight ητ, the fraction of a step spent on the KL term. Defaults (:func:`default_step_size`)
use L = max_ij |A_ij| ≤ ½, the payoff's Lipschitz constant from ℓ1 to ℓ∞. Linearized at π* (error e
in logit space, e' = M e), online MD has M = (1 − ητ)I + η·AD and magnetic MD
M = (I + η·AD)/(1 + ητ), where D = diag π* − π*π*ᵀ and AD has a purely imaginary spectrum iλ (it
is similar to the skew matrix D^½AD^½). Its |λ| is of the order of L (0.1–0.2 on random 100-action
games with L ≈ ½), so with |λ| ≤ L:

- online / magnetic mirror descent: η = τ/(τ² + L²), which minimizes online MD's worst factor
  |1 − ητ + i·ηλ|² = 1 − τ²/(τ² + L²) at |λ| = L: linear convergence in O((L/τ)² log 1/ε) steps;
- extragradient and optimistic MD: η = 1/(τ + 2L); η|λ| ≤ ½ keeps the extra step stable for any
  τ, and the factor is about (1 + ητ)⁻¹ per step: O((L/τ) log 1/ε) steps, far fewer for small τ;
- Nash-MD: η_t = 2/(τ(t + 2)) (:func:`harmonic_step_size`), so the pull towards π0 per step, the
  mixture weight β = η_t·τ of docs/design.md §3.3, is 2/(t + 2) ≤ 1. With a constant η it converges
  linearly, but to a biased point: its fixed point plays against the mixture π^μ, not π, and the bias
  shrinks only like O(η). Decreasing steps remove the bias; the error obeys
  e_{t+1} ≈ (1 − η_t·τ) e_t + O(η_t²), and with η_t·τ = c/(t + c) that gives O(1/T) for c > 1 but only
  O(log T / T) for c = 1 (the η_t = 1/(τ(t + 2)) of the Nash-MD analysis). c = 2 reaches gap 1e-8 at
  τ = 0.01 in ≈ 10⁵ steps where c = 1 is at 3.5e-5;
- multiplicative weights: η = sqrt(8 log n / T), the Hedge step tuned to the horizon T; the
  average iterate's exploitability is then at most sqrt(log n / (2T)).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from prefgame.errors import ConfigError
from prefgame.game.metrics import duality_gap, exploitability, kl, payoff

StepSize = float | Tensor
Rule = Callable[[Tensor, Tensor, Tensor, float, StepSize], Tensor]


def _col(eta: StepSize) -> StepSize:
    """A per-game step η (B,) as a column (B, 1) that broadcasts against (B, n); floats pass through."""
    return eta.unsqueeze(-1) if isinstance(eta, Tensor) else eta


def _magnetic_log_step(logpi: Tensor, ref: Tensor, g: Tensor, tau: float, eta: StepSize) -> Tensor:
    """log π' for π' ∝ [π · π0^{ητ} · exp(η·g)]^{1/(1+ητ)}, the magnetic (proximal) mirror step on payoff g."""
    eta = _col(eta)
    return torch.log_softmax((logpi + eta * tau * ref.log() + eta * g) / (1.0 + eta * tau), dim=-1)  # (B, n)


def _magnetic_step(pi: Tensor, ref: Tensor, g: Tensor, tau: float, eta: StepSize) -> Tensor:
    """π' = exp(_magnetic_log_step(log π, ...))."""
    return _magnetic_log_step(pi.log(), ref, g, tau, eta).exp()


# ----------------------------------------------------------------------------- update rules


def multiplicative_weights(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """SPPO's idealization, π_{t+1} ∝ π_t · exp(η · Pπ_t) (docs/design.md §3.3). Targets the UNregularized game.

    ``ref`` and ``tau`` are ignored; ``eta`` is the step η. Pπ = Aπ + ½ and the constant cancels in the
    normalization. Only the average iterate converges (O(1/√T) exploitability); :func:`run_dynamics` keeps it.
    """
    logits = pi.log() + _col(eta) * payoff(A, pi)  # (B, n)
    return torch.softmax(logits, dim=-1)


def nash_md(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """Nash-MD (docs/design.md §3.3): π^μ ∝ π_t^{1−ητ} π0^{ητ}, then π_{t+1} ∝ π^μ · exp(η · Aπ^μ).

    ``tau`` is the KL coefficient τ, ``eta`` the step η; the mixture weight is β = ητ, so ητ ≤ 1 is
    needed. Use the decreasing steps η_t of :func:`harmonic_step_size` to reach π*; a constant η
    converges to a point at distance O(η) from π*.
    """
    eta = _col(eta)
    mix = torch.softmax((1.0 - eta * tau) * pi.log() + eta * tau * ref.log(), dim=-1)  # (B, n) π^μ
    return torch.softmax(mix.log() + eta * payoff(A, mix), dim=-1)


def _online_step(pi: Tensor, ref: Tensor, g: Tensor, tau: float, eta: StepSize) -> Tensor:
    """π' ∝ π^{1−ητ} · π0^{ητ} · exp(η·g), the online (anchored) mirror step on payoff g."""
    eta = _col(eta)
    return torch.softmax((1.0 - eta * tau) * pi.log() + eta * tau * ref.log() + eta * g, dim=-1)  # (B, n)


def online_md(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """Online mirror descent with π0 anchoring (INPO): π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(η · Aπ_t).

    ``tau`` is the KL coefficient τ, ``eta`` the step η; needs ητ ≤ 1. Its fixed points are exactly
    π* = softmax(log π0 + Aπ*/τ).
    """
    return _online_step(pi, ref, payoff(A, pi), tau, eta)


def magnetic_md(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """Magnetic mirror descent (MPO), magnet π0: π_{t+1} ∝ [π_t · π0^{ητ} · exp(η · Aπ_t)]^{1/(1+ητ)}.

    The magnet strength α of docs/design.md §3.3 is τ (``tau``). Any step η > 0 (``eta``) is a valid
    (proximal) step; its fixed points are exactly π*.
    """
    return _magnetic_step(pi, ref, payoff(A, pi), tau, eta)


def extragradient(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """Extragradient (EGPO) with the online mirror step of :func:`online_md` (KL coefficient τ, step η).

    π_{t+½} ∝ π_t^{1−ητ} π0^{ητ} exp(η·Aπ_t), then π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(η·Aπ_{t+½}): the
    full step starts again from π_t but uses the payoff against the half-step policy, as LM
    ``extragradient`` does with two INPO steps. Needs ητ ≤ 1. Two payoff evaluations per step.
    """
    half = _online_step(pi, ref, payoff(A, pi), tau, eta)  # (B, n) π_{t+½}
    return _online_step(pi, ref, payoff(A, half), tau, eta)


def magnetic_extragradient(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize) -> Tensor:
    """Extragradient with the magnetic step M(π, g) of :func:`magnetic_md`: π_{t+½} = M(π_t, Aπ_t), then
    π_{t+1} = M(π_t, Aπ_{t+½}). Any step η > 0 is a valid proximal step. Two payoff evaluations per step.
    """
    half = _magnetic_step(pi, ref, payoff(A, pi), tau, eta)  # (B, n) π_{t+½}
    return _magnetic_step(pi, ref, payoff(A, half), tau, eta)


def optimistic_md(A: Tensor, pi: Tensor, ref: Tensor, tau: float, eta: StepSize, *, prev_pi: Tensor) -> Tensor:
    """Optimistic magnetic MD: π_{t+1} = M(π_t, 2Aπ_t − Aπ_{t−1}) with M as in :func:`magnetic_md` (τ, η).

    ``prev_pi`` is π_{t−1} (use π_t on the first step). One payoff evaluation per step.
    """
    g = 2.0 * payoff(A, pi) - payoff(A, prev_pi)  # (B, n) optimistic payoff
    return _magnetic_step(pi, ref, g, tau, eta)


RULES: dict[str, Rule] = {
    "multiplicative_weights": multiplicative_weights,
    "nash_md": nash_md,
    "online_md": online_md,
    "magnetic_md": magnetic_md,
    "extragradient": extragradient,
    "magnetic_extragradient": magnetic_extragradient,
    "optimistic_md": optimistic_md,
}
ALIASES = {
    "sppo": "multiplicative_weights",
    "mwu": "multiplicative_weights",
    "inpo": "online_md",
    "mpo": "magnetic_md",
    "mmd": "magnetic_md",
    "egpo": "extragradient",
}


def get_rule(name: str) -> Rule:
    """The update rule called ``name`` (a key of RULES or ALIASES); unknown names fail with a hint."""
    key = ALIASES.get(name, name)
    if key not in RULES:
        close = difflib.get_close_matches(name, [*RULES, *ALIASES], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown update rule {name!r}{hint} (choose from {sorted(RULES)})")
    return RULES[key]


# ----------------------------------------------------------------------------- step sizes


def harmonic_step_size(tau: float, scale: float = 2.0, offset: float = 2.0) -> Callable[[int], float]:
    """The Nash-MD steps η_t = scale/(τ(t + offset)) for t = 0, 1, ..., given the KL coefficient τ (``tau``);
    the mixture weight is then η_t·τ = scale/(t + offset).

    Needs scale ≤ offset (so that η_t·τ ≤ 1, a valid mixture); scale > 1 gives the O(1/T) rate (see the
    module docstring), scale = 1, offset = 2 is the schedule of the Nash-MD analysis.
    """
    if not 0 < scale <= offset:
        raise ConfigError(f"harmonic_step_size needs 0 < scale ≤ offset (η·τ ≤ 1), got scale={scale}, offset={offset}")
    return lambda t: scale / (tau * (t + offset))


def default_step_size(rule: str | Rule, A: Tensor, tau: float, iters: int | None = None) -> StepSize:
    """Default step η per game, shape (B,), or a schedule t ↦ η_t for Nash-MD; see the module docstring.

    ``tau`` is the KL coefficient τ; L = max_ij |A_ij| per game. ``iters`` (the horizon T) is needed for
    multiplicative weights.
    """
    rule = get_rule(rule) if isinstance(rule, str) else rule
    L = A.abs().amax(dim=(-2, -1)).clamp_min(1e-12)  # (B,)
    if rule is multiplicative_weights:
        if iters is None:
            raise ConfigError("multiplicative weights needs the horizon `iters` to set its default step")
        return torch.full_like(L, math.sqrt(8.0 * math.log(max(A.shape[-1], 2)) / max(iters, 1)))
    if rule is nash_md:
        return harmonic_step_size(tau)
    if rule in (online_md, magnetic_md):
        return tau / (tau**2 + L**2)
    return 1.0 / (tau + 2.0 * L)


# ----------------------------------------------------------------------------- driver


class Trace(NamedTuple):
    """What :func:`run_dynamics` records every ``record_every`` iterations (K records, B games)."""

    iteration: Tensor  # (K,) number of updates applied before the record
    gap: Tensor  # (K, B) duality gap of the last iterate
    exploitability: Tensor  # (K, B) unregularized exploitability of the last iterate
    kl: Tensor  # (K, B) KL(π_t‖π0)
    avg_exploitability: Tensor  # (K, B) unregularized exploitability of the running average iterate
    avg_pi: Tensor  # (B, n) average of the played iterates π_0..π_{T−1} (π_0 if T = 0)
    iters_to_tol: Tensor  # (B,) first recorded iteration with gap ≤ tol, −1 if none (or tol is None)


def run_dynamics(
    rule: str | Rule,
    A: Tensor,
    ref: Tensor,
    tau: float,
    iters: int,
    *,
    step_size: StepSize | Callable[[int], StepSize] | None = None,
    init: Tensor | None = None,
    record_every: int = 1,
    tol: float | None = None,
) -> tuple[Tensor, Trace]:
    """Run ``iters`` steps of an update rule from ``init`` (default π0) and trace its metrics.

    ``rule`` is a name from RULES/ALIASES or a callable ``(A, pi, ref, tau, eta) -> pi``; ``tau`` is
    the KL coefficient τ. ``step_size`` gives the mirror-descent steps η_t: a constant η (float or (B,)
    tensor), a schedule ``t -> η_t`` for t = 0, 1, ..., or None for :func:`default_step_size`. With
    ``tol`` the run stops at the first record where every game has gap ≤ tol. Returns the last iterate
    (B, n) and the :class:`Trace`.
    """
    fn = get_rule(rule) if isinstance(rule, str) else rule
    step_size = default_step_size(fn, A, tau, iters) if step_size is None else step_size
    schedule = step_size if callable(step_size) else (lambda t: step_size)
    P = A + 0.5
    pi = ref.clone() if init is None else init
    prev, avg = pi, torch.zeros_like(pi)
    records: list[tuple[int, Tensor, Tensor, Tensor, Tensor]] = []
    hit = torch.full(pi.shape[:-1], -1, dtype=torch.long, device=pi.device)  # (B,)
    for t in range(iters + 1):
        if t % record_every == 0 or t == iters:
            gap = duality_gap(A, pi, ref, tau)  # (B,)
            avg_now = avg / t if t > 0 else pi
            records.append((t, gap, exploitability(P, pi), kl(pi, ref), exploitability(P, avg_now)))
            if tol is not None:
                hit = torch.where((hit < 0) & (gap <= tol), t, hit)
                if bool((hit >= 0).all()):
                    break
        if t == iters:
            break
        eta = schedule(t)
        nxt = fn(A, pi, ref, tau, eta, prev_pi=prev) if fn is optimistic_md else fn(A, pi, ref, tau, eta)
        avg = avg + pi
        prev, pi = pi, nxt
    steps = records[-1][0]
    cols = list(zip(*records))
    trace = Trace(
        iteration=torch.tensor(cols[0], device=pi.device),
        gap=torch.stack(cols[1]),
        exploitability=torch.stack(cols[2]),
        kl=torch.stack(cols[3]),
        avg_exploitability=torch.stack(cols[4]),
        avg_pi=avg / steps if steps > 0 else pi.clone(),
        iters_to_tol=hit,
    )
    return pi, trace


# ----------------------------------------------------------------------------- exact solver


class SolveInfo(NamedTuple):
    """Convergence report of :func:`solve_equilibrium`."""

    iterations: int  # Newton iterations run, summed over continuation stages
    gap: Tensor  # (B,) final duality gap, in the working dtype
    residual: Tensor  # (B,) final max_y |log π_y − log BR(π)_y|
    converged: Tensor  # (B,) bool, gap ≤ tol and residual ≤ residual_tol
    fallback_steps: Tensor  # (B,) iterations where the Newton step was rejected


_LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125)


def _residual(A: Tensor, logpi: Tensor, ref: Tensor, tau: float) -> Tensor:
    """Fixed-point residual R(u) = u − log BR(softmax(u)) at normalized logits u = log π.  (..., n)"""
    return logpi - torch.log_softmax(ref.log() + payoff(A, logpi.exp()) / tau, dim=-1)


def _newton_direction(A: Tensor, logpi: Tensor, ref: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Newton step Δ solving J Δ = −R(u) at u = log π; returns (Δ (B, n), solved (B,)).

    With π = softmax(u), b = BR(π), D = diag π − ππᵀ = ∂π/∂u, the Jacobian of R is
    J = I − (I − 1bᵀ)(A/τ)D. At π* its eigenvalues are 1 and 1 − iλ (AD has a purely imaginary
    spectrum, being similar to the skew matrix D^½AD^½), so J is nonsingular near π*.
    """
    pi = logpi.exp()  # (B, n)
    g = payoff(A, pi)  # (B, n)
    logb = torch.log_softmax(ref.log() + g / tau, dim=-1)  # (B, n)
    AD = (A * pi.unsqueeze(-2) - g.unsqueeze(-1) * pi.unsqueeze(-2)) / tau  # (B, n, n) (A/τ)D
    M = AD - logb.exp().unsqueeze(-2) @ AD  # (B, n, n) (I − 1bᵀ)(A/τ)D
    J = torch.eye(pi.shape[-1], dtype=pi.dtype, device=pi.device) - M  # (B, n, n)
    delta, info = torch.linalg.solve_ex(J, (logb - logpi).unsqueeze(-1))  # (B, n, 1)
    delta = delta.squeeze(-1)
    solved = (info == 0) & torch.isfinite(delta).all(-1)  # (B,)
    return torch.where(solved.unsqueeze(-1), delta, torch.zeros_like(delta)), solved


def _safeguarded_newton_step(A: Tensor, logpi: Tensor, ref: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """One Newton iteration with backtracking on ‖R‖², or an extragradient step; returns (log π', fell back).

    Every α in _LINE_SEARCH is tried at once; the largest one with
    ‖R(u + αΔ)‖² ≤ (1 − 1e-4·α)‖R(u)‖² is taken (Armijo; Δ is a descent direction of ‖R‖²
    wherever J is nonsingular). Games where no α qualifies, or J is singular, take one extragradient
    step with its default step size instead.
    """
    merit = _residual(A, logpi, ref, tau).square().sum(-1)  # (B,)
    delta, solved = _newton_direction(A, logpi, ref, tau)
    alphas = torch.tensor(_LINE_SEARCH, dtype=logpi.dtype, device=logpi.device)  # (K,)
    cand = torch.log_softmax(logpi + alphas[:, None, None] * delta, dim=-1)  # (K, B, n)
    cand_merit = _residual(A, cand, ref, tau).square().sum(-1)  # (K, B)
    accept = cand_merit <= (1.0 - 1e-4 * alphas[:, None]) * merit  # (K, B)
    first = accept.to(torch.int8).argmax(0)  # (B,) index of the largest accepted α
    newton = cand.gather(0, first[None, :, None].expand(1, *logpi.shape)).squeeze(0)  # (B, n)
    use_newton = solved & accept.any(0)  # (B,)
    eta = default_step_size(magnetic_extragradient, A, tau)  # in log space: no underflow to log 0
    half = _magnetic_log_step(logpi, ref, payoff(A, logpi.exp()), tau, eta)  # (B, n)
    fallback = _magnetic_log_step(logpi, ref, payoff(A, half.exp()), tau, eta)  # (B, n)
    return torch.where(use_newton.unsqueeze(-1), newton, fallback), ~use_newton


def _newton_solve(
    A: Tensor, logpi: Tensor, ref: Tensor, tau: float, tol: float, residual_tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Safeguarded Newton iterations on the unfinished games only, until gap ≤ tol and residual ≤
    residual_tol everywhere or max_iter; returns (log π, gap, residual, fallback counts, iterations)."""
    fallbacks = torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)  # (B,)
    iterations = 0
    while True:
        gap = duality_gap(A, logpi.exp(), ref, tau)  # (B,)
        residual = _residual(A, logpi, ref, tau).abs().amax(-1)  # (B,)
        todo = ~((gap <= tol) & (residual <= residual_tol))  # (B,)
        if iterations == max_iter or not bool(todo.any()):
            return logpi, gap, residual, fallbacks, iterations
        idx = todo.nonzero().squeeze(-1)  # (k,) unfinished games
        step, fell_back = _safeguarded_newton_step(A[idx], logpi[idx], ref[idx], tau)
        logpi = logpi.index_copy(0, idx, step)
        fallbacks = fallbacks.index_add(0, idx, fell_back.long())
        iterations += 1


def continuation_taus(tau: float, start: float = 1.0, per_decade: int = 2) -> list[float]:
    """The path of KL coefficients of :func:`solve_equilibrium`: ``per_decade`` geometric steps per
    factor 10 from ``start`` down to τ, excluding τ itself (empty when τ ≥ start)."""
    stages = math.ceil(per_decade * math.log10(start / tau)) if tau < start else 0
    return [tau * (start / tau) ** (k / stages) for k in range(stages, 0, -1)]


def solve_equilibrium(
    A: Tensor,
    ref: Tensor,
    tau: float,
    *,
    tol: float = 1e-12,
    residual_tol: float = 1e-10,
    max_iter: int = 500,
    init: Tensor | None = None,
    continuation: bool = True,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, SolveInfo]:
    """The regularized equilibrium π* = softmax(log π0 + Aπ*/τ) (docs/design.md §3.2) by safeguarded Newton.

    ``tau`` is the KL coefficient τ of the game.

    Newton's method on the fixed point R(u) = u − log BR(softmax(u)) = 0 in normalized logit space
    u = log π, one batched linear solve per iteration, globalized by a line search on ‖R‖² with an
    extragradient step as fallback (:func:`_safeguarded_newton_step`). With ``continuation`` (and no
    ``init``), small τ is reached along the path τ = 1, 10^-½, 10^-1, ... (:func:`continuation_taus`),
    each stage solved loosely (residual ≤ 0.1) from the last one's answer, since Newton started at π0
    often stalls for τ ≲ 0.01. A game is done when its duality gap ≤ ``tol`` and its residual
    max_y |log π_y − log BR(π)_y| ≤ ``residual_tol``; the residual test makes π itself accurate (a gap
    of 1e-12 alone only bounds TV(π, π*) by ~1e-6, the gap being quadratic in π − π*) and costs about
    one more Newton step. Only unfinished games are computed, so a few slow games do not slow the batch.

    Computation is in ``dtype`` (float64 by default, so float32 inputs still reach small gaps); π* is
    returned in the dtype of ``ref``. A (..., n, n) and ref (..., n) share their batch shape.
    ``max_iter`` bounds the iterations of each stage. Returns (π* (..., n), SolveInfo).
    """
    out_dtype, batch = ref.dtype, ref.shape[:-1]
    A = A.to(dtype).reshape(-1, *A.shape[-2:])  # (B, n, n)
    ref = ref.to(dtype).reshape(-1, ref.shape[-1])  # (B, n)
    logpi = (ref if init is None else init.to(dtype).reshape(ref.shape)).log()  # (B, n)
    path = continuation_taus(tau) if continuation and init is None else []
    fallbacks, iterations = torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device), 0
    for stage_tau, stage_tol, stage_res in [*((t, math.inf, 0.1) for t in path), (tau, tol, residual_tol)]:
        logpi, gap, residual, stage_fallbacks, stage_iters = _newton_solve(
            A, logpi, ref, stage_tau, stage_tol, stage_res, max_iter
        )
        fallbacks, iterations = fallbacks + stage_fallbacks, iterations + stage_iters
    info = SolveInfo(
        iterations=iterations,
        gap=gap.reshape(batch),
        residual=residual.reshape(batch),
        converged=((gap <= tol) & (residual <= residual_tol)).reshape(batch),
        fallback_steps=fallbacks.reshape(batch),
    )
    return logpi.exp().reshape(*batch, -1).to(out_dtype), info
