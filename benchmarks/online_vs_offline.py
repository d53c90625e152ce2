"""Online iterative self-play against a refitted GPM against self-play on a GPM fitted once, at one budget of
gold labels, on the arena (issue 19; docs/online.md, *The measurements*).

    .venv/bin/python benchmarks/online_vs_offline.py --out runs/online-bench

1. the arena's data and π0 (SFT, the quickstart's settings), once, shared by every run (or ``--pi0``: a π0
   folder prepared before);
2. for each seed, ``prefgame online`` in the chosen settings at ``--labels`` gold labels each:
   - ``offline``: every label on π0-vs-π0 pairs before training (``offline.pairs``), one fit, then
     one solve;
   - ``online-reference``: ``--rounds`` rounds of ``--labels / --rounds`` pairs, π0 as the enhancer;
   - ``online-uncertainty``: the same with the uncertainty enhancer (4 π0 candidates, an ensemble of 4 GPM heads);
   - ``offline-ensemble``: the offline run with the uncertainty run's 4-head ensemble (so that the two
     enhancers and the two starts are each compared at one model);
   - ``hybrid-reference``, ``hybrid-uncertainty``: ``--offline-pairs`` π0 pairs labeled first, then
     ``--hybrid-rounds`` rounds of the rest, with π0 or the uncertainty enhancer;
   every run self-plays ``--iterations`` iterations in all, split evenly over its solves (offline: 1;
   online: one per round after round 0, which has no labels to fit; hybrid: one per round and the last),
   with ``--solver`` key=value settings added to every solve;
3. a table of the final policy's exact exploitability and gold win rate against π0 (mean and min–max
   over the seeds), the final GPM's expected accuracy, and the CPU seconds of each run (its own process
   time: wall time says little on a shared machine), as markdown on stdout and in OUT/table.md.

Runs are ``prefgame online`` commands (printed); a finished run is read, not run again (``--jobs`` at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SETTINGS = {
    "offline": ["enhancer.kind=reference", "pm.ensemble=1"],
    "online-reference": ["enhancer.kind=reference", "pm.ensemble=1"],
    "online-uncertainty": ["enhancer.kind=uncertainty", "enhancer.candidates=4", "pm.ensemble=4"],
    "offline-ensemble": ["enhancer.kind=reference", "pm.ensemble=4"],
    "hybrid-reference": ["enhancer.kind=reference", "pm.ensemble=1"],
    "hybrid-uncertainty": ["enhancer.kind=uncertainty", "enhancer.candidates=4", "pm.ensemble=4"],
}


def prefgame(*args: str) -> None:
    command = [sys.executable, "-m", "prefgame", *args]
    print(" ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)


def prepare(out: Path, sft_steps: int) -> Path:
    """The arena export and π0 (quickstart settings), once."""
    if not (out / "data" / "metrics.json").exists():
        prefgame("arena", f"output_dir={out / 'data'}", "sft_examples=4000", "pairs=100", "overwrite=true")
    if not (out / "pi0" / "metrics.json").exists():
        prefgame(
            "sft", f"output_dir={out / 'pi0'}", f"data.path={out / 'data' / 'sft.jsonl'}",
            f"model.tokenizer={out / 'data' / 'tokenizer'}", "model.hidden_size=128", "model.num_layers=4",
            "data.max_length=64", "data.eval_fraction=0", f"train.max_steps={sft_steps}", "train.lr=3e-3",
            "train.batch_size=64", "train.micro_batch_size=64", "train.eval_every=0", "train.save_every=100",
            "overwrite=true",
        )  # fmt: skip
    return out / "pi0" / "model"


def start(name: str, args) -> tuple[list[str], int]:
    """The ``prefgame online`` settings of the setting's start (offline, online or hybrid), and its solves."""
    if name.startswith("offline"):
        return [f"offline.pairs={args.labels}", "online.rounds=0"], 1
    if name.startswith("hybrid"):
        rounds, offline = args.hybrid_rounds, args.offline_pairs
        return [f"offline.pairs={offline}", f"online.rounds={rounds}",
                f"online.pairs_per_round={(args.labels - offline) // rounds}"], rounds + 1  # fmt: skip
    # round 0 has no labels to fit a model on: the online runs solve in rounds 1 … T
    return [f"online.rounds={args.rounds}", f"online.pairs_per_round={args.labels // args.rounds}"], args.rounds


def run_one(out: Path, pi0: Path, name: str, seed: int, args) -> dict:
    run_dir = out / f"{name}-seed{seed}"
    settings, solves = start(name, args)
    solver = [f"train.iterations={args.iterations // solves}", *args.solver]
    if not (run_dir / "metrics.json").exists():
        prefgame(
            "online", f"output_dir={run_dir}", f"policy.name_or_path={pi0}", f"seed={seed}", "num_threads=1",
            f"online.label_budget={args.labels}", *SETTINGS[name], *settings,
            f"solver.overrides=[{','.join(solver)}]", "resume=auto",
        )  # fmt: skip
    return json.loads((run_dir / "metrics.json").read_text())


def cell(values: list[float], digits: int = 3) -> str:
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/online-bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, default=2000, help="gold labels of every run")
    parser.add_argument("--rounds", type=int, default=4, help="labeling rounds of the online runs")
    parser.add_argument("--offline-pairs", type=int, help="hybrid: π0 pairs labeled first (default: half the labels)")
    parser.add_argument("--hybrid-rounds", type=int, default=2, help="hybrid: labeling rounds after the π0 pairs")
    parser.add_argument("--iterations", type=int, default=12, help="self-play iterations of every run in all")
    parser.add_argument(
        "--solver", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every solve (prefgame selfplay)"
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS)[:4], choices=list(SETTINGS))
    parser.add_argument("--pi0", type=Path, help="a π0 model folder to use instead of preparing one in OUT")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if args.offline_pairs is None:
        args.offline_pairs = args.labels // 2
    for name in args.settings:
        solves = start(name, args)[1]
        if args.iterations % solves:
            parser.error(f"--iterations {args.iterations} does not split evenly over the {solves} solves of {name}")
    args.out.mkdir(parents=True, exist_ok=True)
    pi0 = args.pi0 or prepare(args.out, args.sft_steps)
    jobs = [(name, seed) for seed in args.seeds for name in args.settings]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(args.out, pi0, *job, args), jobs))
    by_setting: dict[str, list[dict]] = {}
    for (name, _), m in zip(jobs, results):
        by_setting.setdefault(name, []).append(m)
    first = results[0]["initial"]
    hybrid = args.labels - args.offline_pairs
    lines = [
        f"seeds {args.seeds}; {args.labels} gold labels and {args.iterations} self-play iterations per run; "
        f"online: {args.rounds} rounds of {args.labels // args.rounds} pairs; hybrid: {args.offline_pairs} π0 "
        f"pairs, then {args.hybrid_rounds} rounds of {hybrid // args.hybrid_rounds}; solver settings: "
        f"{' '.join(args.solver) or 'the defaults'}; π0: exploitability {first['eval/exploitability']:.3f}",
        "",
        "| setting | exploitability | gold win rate vs π0 | final GPM expected accuracy | labels used | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for name, ms in by_setting.items():
        f = [m["final"] for m in ms]
        cpu = statistics.fmean(m["seconds"]["cpu_seconds"] for m in ms)
        lines.append(
            f"| {name} | {cell([x['eval/exploitability'] for x in f])} | "
            f"{cell([x['eval/gold_win_rate_vs_ref'] for x in f])} | {cell([x['pm/expected_accuracy'] for x in f])} | "
            f"{cell([m['labels']['used'] for m in ms], 0)} | {cpu:.0f} |"
        )
    lines += ["", "per seed (exploitability / gold win rate vs π0):", ""]
    for name, ms in by_setting.items():
        per = ", ".join(
            f"{m['final']['eval/exploitability']:.3f} / {m['final']['eval/gold_win_rate_vs_ref']:.3f}" for m in ms
        )
        lines.append(f"- {name}: {per}")
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
