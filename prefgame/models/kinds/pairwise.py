"""General preference, pairwise form (``pairwise``): s(a, b) = ½ (f(x,a,b) − f(x,b,a)) (docs/design.md §3.1).

The head reads one pass over the prompt and both responses (views "ab", "ba"), so K responses cost
K² passes (the K×K matrix asks the K(K−1)/2 pairs). Trained with the logistic loss; with
``loss.pairwise_single_pass`` a training step passes one order only ("ab", the pair's order drawn by
the order augmentation), half the passes.
"""

from __future__ import annotations

from prefgame.models.heads import PairwiseHead
from prefgame.models.kinds import KindSpec, register


def build_pairwise_head(cfg, in_dim: int, objectives, verbosity_index: int) -> PairwiseHead:
    return PairwiseHead(in_dim, hidden=cfg.head.hidden_size, layers=cfg.head.num_layers)


def pairwise_train_views(views: tuple[str, ...], loss_cfg) -> tuple[str, ...]:
    return ("ab",) if loss_cfg.pairwise_single_pass else views


PAIRWISE = register(
    KindSpec(
        name="pairwise",
        build_head=build_pairwise_head,
        reward=False,
        title="pairwise (general preference)",
        order=2,
        pair_views=("ab", "ba"),
        train_views=pairwise_train_views,
    )
)
