"""Tests of the tabular regularized preference game: metrics, update rules, Newton solver (docs/design.md §3.2–3.3)."""

from __future__ import annotations

import inspect
import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import root
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax

from prefgame.errors import ConfigError
from prefgame.game import (
    RULES,
    best_response,
    best_response_logits,
    continuation_taus,
    default_step_size,
    duality_gap,
    exploitability,
    get_rule,
    harmonic_step_size,
    kl,
    random_game,
    run_dynamics,
    solve_equilibrium,
)

TAUS = (1.0, 0.1, 0.01)
F64 = torch.float64


def tv(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance per game."""
    return 0.5 * (p - q).abs().sum(-1)


def rps(dtype: torch.dtype = F64) -> torch.Tensor:
    """Rock-paper-scissors, A[i, j] = P(i ≻ j) − ½ with paper ≻ rock ≻ scissors ≻ paper.  (1, 3, 3)"""
    return torch.tensor([[0.0, -0.5, 0.5], [0.5, 0.0, -0.5], [-0.5, 0.5, 0.0]], dtype=dtype)[None]


# ----------------------------------------------------------------------------- metrics


def test_best_response_2x2_by_hand() -> None:
    """A = [[0, a], [−a, 0]] (P(y1 ≻ y2) = ½ + a), π = (p, 1 − p), π0 = (q, 1 − q).

    Aπ = (a(1 − p), −a p), so BR_1/BR_2 = q/(1 − q) · exp((a(1 − p) + a p)/τ) = q/(1 − q) · exp(a/τ):
    BR_1 = σ(log(q/(1 − q)) + a/τ), whatever p is. With a = 0.3, τ = 0.5, q = 0.25:
    BR_1 = σ(−log 3 + 0.6) = 1/(1 + 3e^{−0.6}) = 0.378014...
    """
    a, tau, q = 0.3, 0.5, 0.25
    A = torch.tensor([[[0.0, a], [-a, 0.0]]], dtype=F64)
    ref = torch.tensor([[q, 1 - q]], dtype=F64)
    expected = 1.0 / (1.0 + 3.0 * math.exp(-0.6))
    for p in (0.0, 0.2, 0.9):
        br = best_response(A, torch.tensor([[p, 1 - p]], dtype=F64), ref, tau)
        assert br[0, 0].item() == pytest.approx(expected, abs=1e-15)
        assert br.sum().item() == pytest.approx(1.0, abs=1e-15)


def test_kl_and_exploitability_by_hand() -> None:
    """KL((1, 0)‖(½, ½)) = log 2 (0·log 0 = 0). In RPS, pure rock is beaten by paper with P = 1, so its
    exploitability is 1 − ½ = ½; the uniform policy has Pπ = ½ for every y, exploitability 0."""
    assert kl(torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64)).item() == pytest.approx(
        math.log(2), abs=1e-15
    )
    P = rps() + 0.5
    assert exploitability(P, torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)).item() == pytest.approx(0.5, abs=1e-15)
    assert exploitability(P, torch.full((1, 3), 1 / 3, dtype=F64)).item() == pytest.approx(0.0, abs=1e-15)


def test_random_game_is_a_valid_game() -> None:
    g = random_game(5, 7, cyclic_strength=2.0, seed=3)
    assert torch.equal(g.A, -g.A.transpose(-1, -2))
    assert torch.allclose(g.P + g.P.transpose(-1, -2), torch.ones_like(g.P), atol=1e-15)
    assert torch.all(g.ref > 0) and torch.allclose(g.ref.sum(-1), torch.ones(5, dtype=F64))
    assert torch.equal(random_game(5, 7, cyclic_strength=2.0, seed=3).A, g.A)
    assert random_game(2, 3, cyclic_strength=1.0, seed=0, dtype=torch.float32).A.dtype == torch.float32


@pytest.mark.parametrize("tau", TAUS)
def test_gap_nonnegative_and_zero_only_at_equilibrium(tau: float) -> None:
    g = random_game(64, 10, cyclic_strength=2.0, seed=1)
    pis = torch.distributions.Dirichlet(torch.ones(10, dtype=F64)).sample((64,))  # (64, 10)
    assert torch.all(duality_gap(g.A, pis, g.ref, tau) > 0)
    star, _ = solve_equilibrium(g.A, g.ref, tau)
    assert duality_gap(g.A, star, g.ref, tau).abs().max().item() < 1e-14
    nudged = (star + 1e-3 * pis) / (1 + 1e-3)
    assert torch.all(duality_gap(g.A, nudged, g.ref, tau) > 0)


def simplex_grid(n: int, steps: int) -> torch.Tensor:
    """All points of the simplex in R^n (n = 2 or 3) with coordinates in {0, 1/steps, ..., 1}."""
    k = torch.arange(steps + 1, dtype=F64) / steps
    if n == 2:
        return torch.stack([k, 1 - k], -1)
    i, j = torch.meshgrid(k, k, indexing="ij")
    keep = i + j <= 1 + 1e-12
    i, j = i[keep], j[keep]
    return torch.stack([i, j, (1 - i - j).clamp_min(0)], -1)


@pytest.mark.parametrize("n, steps", [(2, 20000), (3, 600)])
@pytest.mark.parametrize("tau", (1.0, 0.1))
def test_gap_closed_form_matches_brute_force(n: int, steps: int, tau: float) -> None:
    """gap(π) = max_π1 f(π1, π) − min_π2 f(π, π2), f(π1, π2) = π1ᵀPπ2 − τ KL(π1‖π0) + τ KL(π2‖π0),
    with the max and min taken by brute force over a fine grid of the simplex (no logsumexp)."""
    g = random_game(3, n, cyclic_strength=2.0, seed=n)
    grid = simplex_grid(n, steps)  # (M, n)
    for b in range(3):
        P, ref = g.P[b], g.ref[b]
        for pi in (ref, torch.softmax(torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(b)), -1)):
            best_reply = (grid @ P @ pi - tau * kl(grid, ref) + tau * kl(pi, ref)).max()
            worst_reply = (pi @ P @ grid.T - tau * kl(pi, ref) + tau * kl(grid, ref)).min()
            brute = (best_reply - worst_reply).item()
            closed = duality_gap(g.A[b : b + 1], pi[None], ref[None], tau).item()
            assert closed >= brute - 1e-12  # the grid can only under-estimate the max and min
            assert closed == pytest.approx(brute, abs=2e-5)


# ----------------------------------------------------------------------------- update rules


@pytest.fixture(scope="module")
def game100():
    return random_game(3, 100, cyclic_strength=2.0, seed=0)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize(
    "rule, max_iters",
    [
        ("online_md", 40_000),
        ("magnetic_md", 40_000),
        ("extragradient", 3_000),
        ("magnetic_extragradient", 3_000),
        ("optimistic_md", 3_000),
    ],
)
def test_regularized_rules_reach_1e8_gap(game100, rule: str, max_iters: int, tau: float) -> None:
    """Default steps (module docstring of solvers): OMD/MMD need O((L/τ)² log 1/ε) steps (≈25k at
    τ = 0.01), extragradient / optimistic MD O((L/τ) log 1/ε) (≈800 at τ = 0.01)."""
    A, ref = game100.A, game100.ref
    pi, trace = run_dynamics(rule, A, ref, tau, max_iters, record_every=10, tol=1e-8)
    print(f"{rule} tau={tau}: iterations to gap<=1e-8 {trace.iters_to_tol.tolist()}")
    assert torch.all(trace.iters_to_tol >= 0)
    assert duality_gap(A, pi, ref, tau).max().item() <= 1e-8
    star, _ = solve_equilibrium(A, ref, tau)
    assert tv(pi, star).max().item() < 1e-3


@pytest.mark.parametrize(
    "tau, max_iters", [(1.0, 2_000), (0.1, 20_000), pytest.param(0.01, 200_000, marks=pytest.mark.slow)]
)
def test_nash_md_harmonic_steps_reach_1e8_gap(game100, tau: float, max_iters: int) -> None:
    """Nash-MD with the default η_t = 2/(τ(t + 2)) reaches gap 1e-8 within 500 (τ = 1), 4.5–7k (τ = 0.1)
    and 30–48k (τ = 0.01) steps on these 100-action games with a cyclic part (recorded every 500)."""
    A, ref = game100.A, game100.ref
    pi, trace = run_dynamics("nash_md", A, ref, tau, max_iters, record_every=500, tol=1e-8)
    print(f"nash_md tau={tau}: iterations to gap<=1e-8 {trace.iters_to_tol.tolist()}")
    assert torch.all(trace.iters_to_tol >= 0)
    star, _ = solve_equilibrium(A, ref, tau)
    assert tv(pi, star).max().item() < 1e-3


def test_nash_md_step_scale_above_one_beats_the_analysis_schedule(game100) -> None:
    """η_t·τ = c/(t + c): the error recursion e' ≈ (1 − η·τ)e + O(η²) gives O(1/T) for c > 1 but only
    O(log T / T) for c = 1, the schedule of the Nash-MD analysis. At τ = 0.01 and 20k steps the default
    (c = 2) is measured at gap 1e-7–5e-7 and c = 1 at 2e-4–6e-4."""
    A, ref, tau = game100.A, game100.ref, 0.01
    _, default = run_dynamics("nash_md", A, ref, tau, 20_000, record_every=20_000)
    _, analysis = run_dynamics(
        "nash_md", A, ref, tau, 20_000, step_size=harmonic_step_size(tau, scale=1.0), record_every=20_000
    )
    print(f"nash_md tau=0.01, 20k steps: gap c=2 {default.gap[-1].tolist()} c=1 {analysis.gap[-1].tolist()}")
    assert torch.all(default.gap[-1] < analysis.gap[-1] / 20)


def test_harmonic_step_size_keeps_the_mixture_valid() -> None:
    schedule = harmonic_step_size(0.1)
    assert [round(schedule(t) * 0.1, 12) for t in range(3)] == [1.0, round(2 / 3, 12), 0.5]
    with pytest.raises(ConfigError, match="scale ≤ offset"):
        harmonic_step_size(0.1, scale=3.0, offset=2.0)


def test_nash_md_constant_step_is_biased(game100) -> None:
    """A constant step converges linearly, but to a point at O(η) from π*: the gap plateaus at a level
    that shrinks like η² (halving η divides it by ≈4) instead of going to zero."""
    A, ref, tau = game100.A, game100.ref, 1.0
    plateaus = []
    for eta in (0.2, 0.1):
        _, trace = run_dynamics("nash_md", A, ref, tau, 400, step_size=eta, record_every=100)
        assert torch.allclose(trace.gap[-1], trace.gap[-2], rtol=1e-6)  # converged ...
        plateaus.append(trace.gap[-1])
    assert torch.all(plateaus[1] > 1e-7)  # ... but not to π*
    assert torch.allclose(plateaus[0] / plateaus[1], torch.full_like(plateaus[0], 4.0), rtol=0.2)


def test_multiplicative_weights_average_iterate_rate() -> None:
    """Hedge with the horizon-tuned step η = sqrt(8 log n / T): the average iterate's exploitability
    is at most regret/T ≤ sqrt(log n / (2T)); the fitted log-log slope over T ∈ {1e2, 1e3, 1e4} ≤ −0.4."""
    g = random_game(4, 20, cyclic_strength=3.0, seed=5)
    horizons, expl = (100, 1_000, 10_000), []
    for T in horizons:
        _, trace = run_dynamics("sppo", g.A, g.ref, 1.0, T, record_every=T)
        assert torch.all(trace.avg_exploitability[-1] <= math.sqrt(math.log(20) / (2 * T)))
        expl.append(trace.avg_exploitability[-1].mean().item())
    slope = np.polyfit(np.log(horizons), np.log(expl), 1)[0]
    print(f"multiplicative weights: avg exploitability {expl}, slope {slope:.3f}")
    assert slope <= -0.4
    _, trace = run_dynamics("multiplicative_weights", rps(), torch.tensor([[0.7, 0.2, 0.1]], dtype=F64), 1.0, 1000)
    assert trace.avg_exploitability[-1].item() <= math.sqrt(math.log(3) / 2000)


def test_optimistic_md_first_step_equals_magnetic_md(game100) -> None:
    pi_o, _ = run_dynamics("optimistic_md", game100.A, game100.ref, 0.1, 1, step_size=0.3)
    pi_m, _ = run_dynamics("magnetic_md", game100.A, game100.ref, 0.1, 1, step_size=0.3)
    assert torch.allclose(pi_o, pi_m, atol=1e-15)


def test_argument_names_follow_the_notation() -> None:
    """docs/design.md §3: ``tau`` is the KL coefficient τ and ``eta`` the mirror-descent step η everywhere;
    every rule is ``rule(A, pi, ref, tau, eta)``."""
    for name, rule in RULES.items():
        assert list(inspect.signature(rule).parameters)[:5] == ["A", "pi", "ref", "tau", "eta"], name
    game_functions = (best_response_logits, best_response, duality_gap, harmonic_step_size, default_step_size)
    for fn in (*game_functions, run_dynamics, continuation_taus, solve_equilibrium):
        params = inspect.signature(fn).parameters
        assert "tau" in params and "eta" not in params, fn.__name__


def test_unknown_rule_suggests_nearest_name() -> None:
    with pytest.raises(ConfigError, match="magnetic_md"):
        get_rule("magnetic_mdd")


# ----------------------------------------------------------------------------- exact solver


def scipy_equilibrium(A: np.ndarray, ref: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    """Independent solve of z = log_softmax(log π0 + A softmax(z)/τ) with scipy's hybrid Powell method
    (finite-difference Jacobian), continued from τ = 1 down to τ in steps of √10 (a cold start fails
    for τ = 0.01). Returns (π*, max |residual|)."""
    log_ref, z = np.log(ref), np.log(ref)
    for e in np.geomspace(max(tau, 1.0), tau, max(1, int(np.ceil(2 * np.log10(1 / tau)))) + 1):

        def fixed_point(z: np.ndarray, e: float = e) -> np.ndarray:
            return z - np_log_softmax(log_ref + A @ np_softmax(z) / e)

        z = root(fixed_point, z, method="hybr", options={"xtol": 1e-13}).x
    return np_softmax(z), float(np.abs(fixed_point(z)).max())


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n", (16, 60))
def test_solver_matches_scipy(tau: float, n: int) -> None:
    g = random_game(6, n, cyclic_strength=2.0, seed=11)
    star, info = solve_equilibrium(g.A, g.ref, tau)
    assert bool(info.converged.all()) and info.gap.max().item() <= 1e-12
    for b in range(6):
        ref_star, residual = scipy_equilibrium(g.A[b].numpy(), g.ref[b].numpy(), tau)
        assert residual < 1e-10
        assert 0.5 * np.abs(ref_star - star[b].numpy()).sum() < 1e-8


@pytest.mark.parametrize("tau", TAUS)
def test_solver_100_actions(tau: float) -> None:
    g = random_game(16, 100, cyclic_strength=3.0, seed=2)
    star, info = solve_equilibrium(g.A, g.ref, tau)
    assert bool(info.converged.all()), info
    assert duality_gap(g.A, star, g.ref, tau).max().item() <= 1e-12
    assert tv(star, best_response(g.A, star, g.ref, tau)).max().item() <= 1e-10


def test_solver_batch_shapes_are_independent_of_batching() -> None:
    g = random_game(6, 8, cyclic_strength=2.0, seed=4)
    star, _ = solve_equilibrium(g.A, g.ref, 0.1)
    star_nd, info = solve_equilibrium(g.A.reshape(2, 3, 8, 8), g.ref.reshape(2, 3, 8), 0.1)
    assert star_nd.shape == (2, 3, 8) and info.gap.shape == (2, 3)
    assert torch.allclose(star_nd.reshape(6, 8), star, atol=1e-13)
    single, _ = solve_equilibrium(g.A[2], g.ref[2], 0.1)  # unbatched (n, n), (n,)
    assert torch.allclose(single, star[2], atol=1e-13)


def test_solver_float32_inputs() -> None:
    """float32 in, float32 out; the solve runs in float64, so only the final rounding is lost."""
    g64 = random_game(32, 16, cyclic_strength=2.0, seed=6)
    g32 = random_game(32, 16, cyclic_strength=2.0, seed=6, dtype=torch.float32)
    star32, info = solve_equilibrium(g32.A, g32.ref, 0.1)
    star64, _ = solve_equilibrium(g64.A, g64.ref, 0.1)
    assert star32.dtype == torch.float32 and bool(info.converged.all())
    assert torch.allclose(star32.sum(-1), torch.ones(32), atol=1e-6)
    assert tv(star32.double(), star64).max().item() < 1e-5
    renormalized = star32.double() / star32.double().sum(-1, keepdim=True)  # the gap is linear in Σπ − 1
    assert duality_gap(g64.A, renormalized, g64.ref, 0.1).max().item() < 1e-9


def test_solver_degenerate_cases() -> None:
    one, info = solve_equilibrium(torch.zeros(3, 1, 1, dtype=F64), torch.ones(3, 1, dtype=F64), 0.1)
    assert torch.equal(one, torch.ones(3, 1, dtype=F64)) and info.iterations == 0
    ref = random_game(4, 5, cyclic_strength=1.0, seed=0).ref
    star, info = solve_equilibrium(torch.zeros(4, 5, 5, dtype=F64), ref, 0.01)
    assert torch.allclose(star, ref, atol=1e-15) and info.iterations == 0


def test_solver_warm_start_and_info() -> None:
    g = random_game(8, 16, cyclic_strength=2.0, seed=9)
    star, info = solve_equilibrium(g.A, g.ref, 0.1)
    again, info2 = solve_equilibrium(g.A, g.ref, 0.1, init=star)
    assert info2.iterations == 0 and torch.allclose(again, star, rtol=1e-15, atol=0)
    _, info3 = solve_equilibrium(g.A, g.ref, 0.1, max_iter=1, continuation=False)
    assert info3.iterations == 1 and not bool(info3.converged.all())
    assert torch.all(info3.gap < duality_gap(g.A, g.ref, g.ref, 0.1))


def test_continuation_path() -> None:
    assert continuation_taus(1.0) == [] and continuation_taus(3.0) == []
    assert continuation_taus(0.01) == pytest.approx([1.0, 10**-0.5, 0.1, 10**-1.5])


@pytest.mark.parametrize("tau", (1.0, 0.1))
def test_solver_without_continuation(tau: float) -> None:
    g = random_game(32, 16, cyclic_strength=2.0, seed=7)
    star, info = solve_equilibrium(g.A, g.ref, tau, continuation=False)
    assert bool(info.converged.all())
    assert tv(star, solve_equilibrium(g.A, g.ref, tau)[0]).max().item() < 1e-10


def test_solver_very_small_tau() -> None:
    """τ = 0.001 with a peaked π0: logits reach ±500, plain Newton from π0 stalls, continuation solves it."""
    g = random_game(16, 30, cyclic_strength=5.0, transitive_scale=2.0, ref_scale=3.0, seed=8)
    star, info = solve_equilibrium(g.A, g.ref, 0.001)
    assert bool(info.converged.all()), info
    assert tv(star, best_response(g.A, star, g.ref, 0.001)).max().item() <= 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_solver_and_dynamics_on_cuda() -> None:
    g = random_game(64, 16, cyclic_strength=2.0, seed=1, device="cuda")
    star, info = solve_equilibrium(g.A, g.ref, 0.1)
    assert star.device.type == "cuda" and bool(info.converged.all())
    cpu, _ = solve_equilibrium(g.A.cpu(), g.ref.cpu(), 0.1)
    assert tv(star.cpu(), cpu).max().item() < 1e-10
    pi, trace = run_dynamics("extragradient", g.A, g.ref, 0.1, 200, tol=1e-8)
    assert pi.device.type == "cuda" and torch.all(trace.iters_to_tol >= 0)


@pytest.mark.slow
def test_solver_speed_1024x16() -> None:
    """The 1,024 × 16 batch solves to gap ≤ 1e-8 in ≤ 1 s on a 2-core CPU (median of 5, after warm-up)."""
    g = random_game(1024, 16, cyclic_strength=2.0, seed=0)
    for tau in TAUS:
        solve_equilibrium(g.A, g.ref, tau)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            _, info = solve_equilibrium(g.A, g.ref, tau, tol=1e-8)
            times.append(time.perf_counter() - start)
        assert bool(info.converged.all())
        assert float(np.median(times)) <= 1.0
