"""The reward-hacking picture at a larger size than the quickstart's: several seeds, more prompts.

    OMP_NUM_THREADS=1 python benchmarks/reward_hacking.py --seeds 0 1 2 --prompts 64
    OMP_NUM_THREADS=1 python benchmarks/reward_hacking.py --pi0 runs/quickstart/pi0/model   # an LM as π0

Per seed: proxies (BT, BT + linear LCB at each c, a pessimistic BT ensemble, a GPM) trained on pairs of the
arena demonstrator's responses labeled by the biased annotator (evaluation/reward_hacking.py), best-of-n of
π0 for n = 1…256 from one pool per prompt. Prints the gold win rate per n (mean over seeds) and, per proxy,
where the gold win rate peaks and how far it falls, mean (min–max) over seeds; writes every seed's curves to
``--out``. Extra ``key=value`` arguments set HackingConfig fields (e.g. ``length_bias=0.25``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from evaluation.reward_hacking import HackingConfig, reward_hacking
from prefgame.arena.world import Arena
from prefgame.config import load_config
from prefgame.markdown import table


def _spread(values: pd.Series, fmt: str) -> str:
    return f"{values.mean():{fmt}} ({values.min():{fmt}}–{values.max():{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--pi0", default="", help="a causal LM folder as π0 (default: the arena's demonstrator)")
    parser.add_argument("--out", default="runs/bench-reward-hacking")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="HackingConfig fields")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pools, policy = None, "the arena's demonstrator"
    curves, peaks, picks = [], [], []
    for seed in args.seeds:
        cfg = load_config(HackingConfig, None, [f"prompts={args.prompts}", f"seed={seed}", *args.overrides])
        if args.pi0:
            from prefgame.game.lm_sampling import sample_texts
            from prefgame.lm import load_causal_lm, load_tokenizer

            model, tok = load_causal_lm(args.pi0), load_tokenizer(args.pi0)

            def pools(prompts, cfg=cfg, model=model, tok=tok):
                texts = sample_texts(model, tok, [p for p in prompts for _ in range(cfg.pool)], max_new_tokens=40,
                                     seed=cfg.seed)  # fmt: skip
                return [texts[i : i + cfg.pool] for i in range(0, len(texts), cfg.pool)]

            policy = f"`{args.pi0}`"
        t0 = time.process_time()
        result = reward_hacking(cfg, Arena(), Path(args.out) / f"seed{seed}", pools=pools, policy=policy)
        print(f"seed {seed}: {result.metrics['setup']}; {time.process_time() - t0:.0f} CPU-s")
        picks.append(result.picks)
        curves.append(result.curves.assign(seed=seed))
        peaks.append(result.peaks.reset_index().assign(seed=seed))
    curves, peaks = pd.concat(curves), pd.concat(peaks)
    order = list(dict.fromkeys(curves["proxy"]))
    gold = curves.groupby(["n", "proxy"])["gold_win_rate"].mean().unstack()[order]
    gold.insert(0, "KL", curves.groupby("n")["kl"].first())
    print(f"\nGold win rate vs π0 of best-of-n, mean over seeds {args.seeds}:\n")
    print(table(["n", *gold.columns], [[n, *row] for n, row in zip(gold.index, gold.to_numpy().tolist())]))
    last = [c for c in peaks.columns if c.startswith("gold win rate at n=")][0]
    rows = []
    for proxy in order:
        p = peaks[peaks["proxy"] == proxy]
        rows.append(
            {
                "proxy": proxy,
                "peak n": " / ".join(str(int(v)) for v in p["peak n"]),
                "peak gold win rate": _spread(p["peak gold win rate"], ".3f"),
                last: _spread(p[last], ".3f"),
                "fall after peak": _spread(p["fall after peak"], ".3f"),
                "falls (> 2 SE)": f"{int(p['falls (> 2 SE)'].sum())} of {len(p)}",
            }
        )
    print(f"\nPer proxy, mean (min–max) over seeds {args.seeds} (peak n: seed by seed):\n")
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    mean_picks = pd.concat(picks).groupby(level=0, sort=False).mean()
    print(f"\nWhat π0's samples and each proxy's best of the pool are, mean over seeds {args.seeds}:\n")
    print(
        table(
            ["responses", *mean_picks.columns],
            [[i, *r] for i, r in zip(mean_picks.index, mean_picks.to_numpy().tolist())],
        )
    )


if __name__ == "__main__":
    main()
