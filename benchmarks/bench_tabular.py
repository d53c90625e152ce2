"""Benchmark of the tabular game solvers (prefgame.game): Newton vs scipy, and self-play iteration counts.

    .venv/bin/python benchmarks/bench_tabular.py            # full run, markdown tables on stdout
    .venv/bin/python benchmarks/bench_tabular.py --quick    # smaller batches and caps

Table 1 times `solve_equilibrium` (median of --repeats runs after one warm-up) against a loop over the
batch of scipy.optimize.root (hybrid Powell, analytic Jacobian, continued in τ from 1 down by √10
because a cold start fails for τ = 0.01; games still unsolved are retried with 8 steps per decade)
on the same fixed point, and reports the speed ratio and the largest total-variation distance between
the two answers. Table 2 counts the iterations each update
rule needs to reach a duality gap ≤ 1e-8 with its default step size. Table 3 gives the unregularized
exploitability of the multiplicative-weights average iterate against the horizon.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from scipy.optimize import root
from scipy.special import log_softmax, softmax

from prefgame.game import random_game, run_dynamics, solve_equilibrium

TAUS = (1.0, 0.1, 0.01)
RULES = ("nash_md", "online_md", "magnetic_md", "extragradient", "magnetic_extragradient", "optimistic_md")


def scipy_solve(A: np.ndarray, ref: np.ndarray, tau: float, per_decade: int = 2) -> tuple[np.ndarray, float]:
    """π* of one game from scipy's root finder on z = log_softmax(log π0 + A softmax(z)/τ), with
    ``per_decade`` continuation steps per factor 10 of τ; returns (π*, max |residual|)."""
    log_ref, z = np.log(ref), np.log(ref)
    n = len(ref)
    stages = max(1, math.ceil(per_decade * math.log10(1 / tau))) + 1
    for e in np.geomspace(max(tau, 1.0), tau, stages):

        def fixed_point(z: np.ndarray, e: float = e) -> np.ndarray:
            return z - log_softmax(log_ref + A @ softmax(z) / e)

        def jacobian(z: np.ndarray, e: float = e) -> np.ndarray:
            pi = softmax(z)
            b = softmax(log_ref + A @ pi / e)
            dlogits = (A / e) @ (np.diag(pi) - np.outer(pi, pi))  # ∂(Aπ/τ)/∂z
            return np.eye(n) - (np.eye(n) - np.outer(np.ones(n), b)) @ dlogits

        z = root(fixed_point, z, jac=jacobian, method="hybr", options={"xtol": 1e-13}).x
    return softmax(z), float(np.abs(fixed_point(z)).max())


def scipy_batch(A: np.ndarray, ref: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
    """Loop over the batch; games whose residual stays > 1e-10 are retried with 8 steps per decade.

    Returns π* (B, n) and the number of games that still failed."""
    stars, failed = [], 0
    for A_b, ref_b in zip(A, ref):
        star, residual = scipy_solve(A_b, ref_b, tau)
        if residual > 1e-10:
            star, residual = scipy_solve(A_b, ref_b, tau, per_decade=8)
        stars.append(star)
        failed += residual > 1e-10
    return np.stack(stars), failed


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn`` after one warm-up. On a shared machine the
    CPU time is the figure to compare: it does not count the time other processes hold the cores."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def solver_table(shapes: list[tuple[int, int]], repeats: int, device: str) -> None:
    print(
        "| batch × n | τ | Newton wall (s) | Newton CPU (s) | Newton iters | max gap | scipy time (s) "
        "| scipy failed | speed-up | max TV |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for B, n in shapes:
        g = random_game(B, n, cyclic_strength=2.0, seed=0, device=device)
        for tau in TAUS:
            seconds, cpu = median_time(lambda g=g, tau=tau: solve_equilibrium(g.A, g.ref, tau), repeats)
            star, info = solve_equilibrium(g.A, g.ref, tau)
            A_np, ref_np = g.A.cpu().numpy(), g.ref.cpu().numpy()
            start = time.perf_counter()
            scipy_star, failed = scipy_batch(A_np, ref_np, tau)
            scipy_seconds = time.perf_counter() - start
            max_tv = 0.5 * np.abs(scipy_star - star.cpu().numpy()).sum(-1).max()
            print(
                f"| {B} × {n} | {tau} | {seconds:.4f} | {cpu:.4f} | {info.iterations} | {info.gap.max().item():.1e} "
                f"| {scipy_seconds:.2f} | {failed} | {scipy_seconds / seconds:.0f}× | {max_tv:.1e} |"
            )


def rules_table(B: int, n: int, max_iters: int, device: str, rules: tuple[str, ...] = RULES) -> None:
    g = random_game(B, n, cyclic_strength=2.0, seed=0, device=device)
    print(f"Iterations to duality gap ≤ 1e-8, {B} games × {n} actions, default steps (median / max over games)")
    print()
    print("| rule | τ = 1 | τ = 0.1 | τ = 0.01 |")
    print("|---|---|---|---|")
    for rule in rules:
        cells = []
        for tau in TAUS:
            start = time.perf_counter()
            _, trace = run_dynamics(rule, g.A, g.ref, tau, max_iters, record_every=10, tol=1e-8)
            seconds = time.perf_counter() - start
            hits = trace.iters_to_tol
            if bool((hits >= 0).all()):
                cells.append(f"{int(hits.median())} / {int(hits.max())} ({seconds:.1f} s)")
                continue
            gap = trace.gap[-1].max().item()
            cell = f"> {max_iters} (gap {gap:.1e}, {seconds:.1f} s)"
            if rule == "nash_md":  # O(1/T) last iterate, so the gap falls like 1/T²: extrapolate
                cell += f"; ≈{max_iters * math.sqrt(gap / 1e-8):.0e} by 1/T²"
            cells.append(cell)
        print(f"| {rule} | " + " | ".join(cells) + " |")


def mwu_table(horizons: tuple[int, ...], device: str) -> None:
    g = random_game(4, 20, cyclic_strength=3.0, seed=5, device=device)
    print("Multiplicative weights (η = sqrt(8 log n / T)), 4 games × 20 actions, average-iterate exploitability")
    print()
    print("| T | mean exploitability | bound sqrt(log n / 2T) |")
    print("|---|---|---|")
    means = []
    for T in horizons:
        _, trace = run_dynamics("multiplicative_weights", g.A, g.ref, 1.0, T, record_every=T)
        means.append(trace.avg_exploitability[-1].mean().item())
        print(f"| {T} | {means[-1]:.2e} | {math.sqrt(math.log(20) / (2 * T)):.2e} |")
    slope = np.polyfit(np.log(horizons), np.log(means), 1)[0]
    print(f"\nlog-log slope: {slope:.3f}")


def limit_blas_threads(threads: int) -> None:
    """Limit numpy/scipy's BLAS threads too (scipy's side of the comparison), if threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl not installed: numpy/scipy keep their default BLAS threads")
        return
    threadpool_limits(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches and iteration caps")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the Newton solver (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: theirs)")
    parser.add_argument("--device", default="cpu", help="torch device of the games")
    parser.add_argument("--max-iters", type=int, default=200_000, help="iteration cap in the rules table")
    parser.add_argument(
        "--tables", default="solver,rules,mwu", help="comma-separated subset of the tables: solver, rules, mwu"
    )
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules of the rules table")
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
        limit_blas_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads\n")
    shapes = [(256, 16), (16, 100)] if args.quick else [(1024, 16), (64, 100)]
    if "solver" in tables:
        solver_table(shapes, args.repeats, args.device)
        print()
    if "rules" in tables:
        rules = tuple(args.rules.split(","))
        rules_table(4 if args.quick else 8, 100, 20_000 if args.quick else args.max_iters, args.device, rules)
        print()
    if "mwu" in tables:
        mwu_table((100, 1_000, 10_000), args.device)


if __name__ == "__main__":
    main()
