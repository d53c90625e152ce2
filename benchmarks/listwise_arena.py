"""Listwise against best-vs-worst on the arena (docs/dpo.md, "Arena: listwise against best-vs-worst").

    R=runs/listwise
    prefgame arena output_dir=$R/arena rankings=1000 pairs=10 ratings=10 battles=10
    prefgame sft --config configs/sft/arena.yaml model.tokenizer=$R/arena/tokenizer \\
        data.path=$R/arena/sft.jsonl output_dir=$R/pi0 train.save_every=0
    for s in 0 1 2; do for lt in pro sigmoid; do
      prefgame dpo --config configs/dpo/arena.yaml policy.name_or_path=$R/pi0/model \\
          data.path=$R/arena/rankings.jsonl loss.loss_type=$lt train.seed=$s output_dir=$R/off-$lt-$s
      prefgame dpo --config configs/dpo/arena-online.yaml policy.name_or_path=$R/pi0/model \\
          loss.loss_type=$lt train.seed=$s sampling.samples_per_prompt=4 online.rounds=10 \\
          sampling.prompts_per_iteration=128 output_dir=$R/on-$lt-$s
    done; done
    python benchmarks/listwise_arena.py $R

Offline, ``pro`` trains on the K = 4 lists and ``sigmoid`` (DPO) on each list's best-vs-worst pair, from the
same samples and the same gold comparisons; online, each round's K = 4 samples per prompt are ranked by
the gold oracle's leave-one-out win rates and ``pro`` trains on the whole list, ``sigmoid`` on the best
against the worst. Prints, per run kind, the final gold win rate against π0 and the exploitability
(mean and min–max over the seeds found), and each seed's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KINDS = (("off-pro", "offline PRO, K = 4 lists"), ("off-sigmoid", "offline DPO, best vs worst"),
         ("on-pro", "online PRO, K = 4 lists"), ("on-sigmoid", "online DPO, best vs worst"))  # fmt: skip
FIGURES = (("eval/gold_win_rate_vs_ref", "gold win rate vs π0"), ("eval/exploitability", "exploitability"),
           ("eval/kl_to_ref", "KL to π0"))  # fmt: skip


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    root = parser.parse_args().root
    header = "| run | seeds | " + " | ".join(label for _, label in FIGURES) + " |"
    lines = [header, "|---|---|" + "---|" * len(FIGURES)]
    per_seed = []
    for prefix, label in KINDS:
        runs = sorted(root.glob(f"{prefix}-*/metrics.json"))
        finals = [json.loads(p.read_text())["final"] for p in runs]
        if not finals:
            continue
        cells = [_cell([f[key] for f in finals]) for key, _ in FIGURES]
        lines.append(f"| {label} | {len(finals)} | " + " | ".join(cells) + " |")
        for path, f in zip(runs, finals):
            per_seed.append(f"{path.parent.name}: " + ", ".join(f"{lab} {f[key]:.3f}" for key, lab in FIGURES))
    print("\n".join(lines))
    print("\n".join(per_seed))


if __name__ == "__main__":
    main()
