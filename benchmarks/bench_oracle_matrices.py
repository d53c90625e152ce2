"""The K×K preference matrices of a preference model as self-play asks for them, on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_oracle_matrices.py [--prompts 8] [--k 8] [--repeats 3]

For each of the kinds gpm and bt, a new arena-size backbone (tiny Llama, hidden 128, 4 layers) and
M prompts × K arena responses: ``group_matrices`` through the oracle cache (one call for the M·K(K−1)/2
pairs; each distinct sequence passes the backbone once) against the same pairs embedded pair by
pair (every view of every pair through the backbone, three sequences per gpm pair, two per bt pair).
Prints the rows that reach the backbone and the best wall time of ``--repeats`` runs of each, and
checks that the two give the same matrices (within 1e-5). Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np
import torch

from prefgame.arena import export
from prefgame.arena.world import Arena
from prefgame.game.lm_selfplay import PreferenceCache, group_matrices
from prefgame.models import BackboneConfig, PMModelConfig, PreferenceModel, build_encoder, build_head
from prefgame.oracle import preference_matrices


def pair_by_pair(model: PreferenceModel):
    """P(a ≻ b) from every view of every pair embedded on its own (no sequence shared between pairs)."""

    def ask(prompts, a, b):
        seqs = model.view_sequences(model.views, prompts, a, b)
        emb = {v: model.encoder.embed(s, batch_size=model.batch_size * 4) for v, s in seqs.items()}
        return torch.sigmoid(model.scores_from_vectors(emb).double().cpu())

    return ask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m, k = args.prompts, args.k
    pairs = export.labeled_pairs(Arena(), 50 * m * k, np.random.default_rng(0))
    prompts = list(dict.fromkeys(r["prompt"] for r in pairs))[:m]
    texts = list(dict.fromkeys([r["chosen"] for r in pairs] + [r["rejected"] for r in pairs]))
    xs = [x for x in prompts for _ in range(k)]
    ys = texts[: m * k]
    ok = True
    for kind in ("gpm", "bt"):
        cfg = PMModelConfig(kind=kind, backbone=BackboneConfig())
        encoder = build_encoder(cfg.backbone, seed=0)
        torch.manual_seed(1)
        model = PreferenceModel(encoder, [build_head(cfg, encoder.hidden_size)], cfg).eval()
        rows = [0]

        def count(module, a, kwargs, rows=rows):
            rows[0] += int(kwargs["input_ids"].shape[0])

        encoder.model.register_forward_pre_hook(count, with_kwargs=True)
        figures = {}
        for name, fn in (
            ("shared", lambda model=model: group_matrices(PreferenceCache(model), xs, ys, k)),
            ("pair by pair", lambda model=model: preference_matrices(pair_by_pair(model), prompts, ys, k)),
        ):
            rows[0] = 0
            mats = fn()
            used = rows[0]
            figures[name] = (used, min(timeit.repeat(fn, number=1, repeat=args.repeats)), mats)
        close = torch.allclose(figures["shared"][2], figures["pair by pair"][2], rtol=0, atol=1e-5)
        ok &= close
        (r1, t1, _), (r0, t0, _) = figures["shared"], figures["pair by pair"]
        print(
            f"{kind}: {m} prompts × K={k}: backbone rows {r1} (pair by pair {r0}), "
            f"{t1:.3f} s (pair by pair {t0:.3f} s, {t0 / t1:.1f}×), matrices equal: {close}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
