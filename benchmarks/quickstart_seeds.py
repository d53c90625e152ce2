"""The quickstart's headline figures over several seeds: mean, spread and the claims checked per seed.

    for s in 0 1 2; do prefgame quickstart output_dir=runs/qs-seed$s seed=$s; done
    .venv/bin/python benchmarks/quickstart_seeds.py runs/qs-seed0 runs/qs-seed1 runs/qs-seed2

Reads each run's ``metrics.json`` and prints, per world and policy, the exact gold win rate against π0,
the exploitability and its part without the cycle (mean and min–max over the runs), then the
showcase's claims seed by seed: in the cyclic world the best self-play policy's exploitability against
0.6× π0's and against every baseline's; in the transitive world self-play against PPO, compared with
the seed spread; offline DPO's gold win rate against ½; and the wall and CPU time of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from evaluation.quickstart_report import BASELINES, best_selfplay

FIGURES = (("gold_win_rate_vs_ref", "gold win rate vs π0"), ("exploitability", "exploitability"),
           ("exploitability_transitive", "w/o cycle"))  # fmt: skip


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


def figures_table(runs: list[dict]) -> str:
    lines = ["| world | policy | " + " | ".join(label for _, label in FIGURES) + " |", "|---|---|---|---|---|"]
    for world, policies in runs[0]["worlds"].items():
        for policy in policies:
            cells = [_cell([r["worlds"][world][policy][key] for r in runs]) for key, _ in FIGURES]
            lines.append(f"| {world} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_table(runs: list[dict], names: list[str]) -> str:
    lines = ["| run | cyclic: best self-play / π0 | lower than every baseline | transitive: self-play − PPO | "
             "offline DPO gold win rate | wall (s) | CPU (s) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in zip(names, runs):
        cells = []
        if "cyclic" in r["worlds"]:
            e = {p: m["exploitability"] for p, m in r["worlds"]["cyclic"].items()}
            best = best_selfplay(r["worlds"]["cyclic"], r["selfplay"])
            beaten = [p for p in BASELINES if p in e and e[best] >= e[p]]
            cells += [f"{best} {e[best]:.3f} / {e['π0']:.3f} = {e[best] / e['π0']:.2f}",
                      "yes" if not beaten else "no: " + ", ".join(f"{p} {e[p]:.3f}" for p in beaten)]  # fmt: skip
        else:
            cells += ["—", "—"]
        if "transitive" in r["worlds"]:
            t = r["worlds"]["transitive"]
            best = best_selfplay(t, r["selfplay"])
            cells.append(f"{t[best]['exploitability'] - t['ppo']['exploitability']:+.3f}" if "ppo" in t else "—")
        else:
            cells.append("—")
        first = next(iter(r["worlds"].values()))
        cells.append(f"{first['dpo']['gold_win_rate_vs_ref']:.3f}" if "dpo" in first else "—")
        cells.append(f"{r['seconds']['total']:.0f}")
        cells.append(f"{r['cpu_seconds']['total']:.0f}" if "cpu_seconds" in r else "—")  # runs before it was kept
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(runs) > 1 and all("transitive" in r["worlds"] for r in runs):
        spread = {
            p: max(r["worlds"]["transitive"][p]["exploitability"] for r in runs)
            - min(r["worlds"]["transitive"][p]["exploitability"] for r in runs)
            for p in runs[0]["worlds"]["transitive"]
            if p not in ("π* (exact)",)
        }
        lines.append("")
        lines.append("Seed spread (max − min) of the transitive world's exploitability: "
                     + ", ".join(f"{p} {v:.3f}" for p, v in spread.items()))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quickstart output folders (one per seed)")
    args = parser.parse_args()
    runs = [json.loads((path / "metrics.json").read_text()) for path in args.runs]
    print(figures_table(runs))
    print()
    print(claims_table(runs, [path.name for path in args.runs]))


if __name__ == "__main__":
    main()
