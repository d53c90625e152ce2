"""Arena figures of the preference models (issue 3, "Done when"), reproducible on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_pm_arena.py [--out runs/bench_pm] [--train-pairs 16000]

1. On the default arena (cyclic style term c = 2.5): BT, GPM and gated models via
   :func:`prefgame.train.pm_arena.train_arena_preference_models` on ``--train-pairs`` sampled pairs;
2. on the same world with the cyclic term off (``arena.cycle=0``): BT and GPM.

Prints one table row per model and checks: GPM expected accuracy within 3 points of Bayes-optimal;
GPM at least 10 points above BT on in-cycle pairs; with c = 0, |BT − GPM| ≤ 2 points; gated
gating-weight correlation with the true w(x) ≥ 0.8. Exit status 1 when a check fails. CPU seconds
are process time (the figure that does not depend on other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prefgame.arena.job import ArenaConfig
from prefgame.train.pm_arena import ArenaPMConfig, train_arena_preference_models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_pm")
    parser.add_argument("--train-pairs", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for name, cycle, kinds in (("cyclic", 2.5, ("bt", "gpm", "gated")), ("no_cycle", 0.0, ("bt", "gpm"))):
        cfg = ArenaPMConfig(arena=ArenaConfig(cycle=cycle), seed=args.seed, train_pairs=args.train_pairs)
        wall, cpu = time.perf_counter(), time.process_time()
        rows = train_arena_preference_models(Path(args.out) / name, cfg=cfg, kinds=kinds)
        results[name] = {
            "rows": [asdict(r) for r in rows],
            "wall_seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
        }
        print(
            f"\n== arena cycle={cycle}: {args.train_pairs} training pairs, "
            f"{results[name]['cpu_seconds']:.0f} CPU s ({results[name]['wall_seconds']:.0f} s wall)"
        )
        print(
            f"{'model':<26} {'held-out acc':>12} {'expected':>9} {'Bayes':>7} {'in-cycle':>9} "
            f"{'Bayes':>7} {'gating r':>9}"
        )
        for r in rows:
            cyc = "-" if r.in_cycle_expected_accuracy is None else f"{r.in_cycle_expected_accuracy:.4f}"
            cyc_bayes = "-" if r.in_cycle_bayes_accuracy is None else f"{r.in_cycle_bayes_accuracy:.4f}"
            gate = "-" if r.gating_correlation is None else f"{r.gating_correlation:.3f}"
            print(
                f"{r.model:<26} {r.accuracy:>12.4f} {r.expected_accuracy:>9.4f} {r.bayes_accuracy:>7.4f} "
                f"{cyc:>9} {cyc_bayes:>7} {gate:>9}"
            )
    cyc = {r["kind"]: r for r in results["cyclic"]["rows"]}
    flat = {r["kind"]: r for r in results["no_cycle"]["rows"]}
    checks = {
        "gpm_within_3_points_of_bayes": cyc["gpm"]["bayes_accuracy"] - cyc["gpm"]["expected_accuracy"] <= 0.03,
        "gpm_10_points_above_bt_in_cycle": cyc["gpm"]["in_cycle_expected_accuracy"]
        - cyc["bt"]["in_cycle_expected_accuracy"]
        >= 0.10,
        "no_cycle_bt_gpm_within_2_points": abs(flat["gpm"]["expected_accuracy"] - flat["bt"]["expected_accuracy"])
        <= 0.02,
        "gating_correlation_at_least_0.8": cyc["gated"]["gating_correlation"] >= 0.8,
    }
    results["checks"] = checks
    print("\nchecks: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    out = Path(args.out) / "bench_pm_arena.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
