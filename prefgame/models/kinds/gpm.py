"""General preference, embedding form (``gpm``): s(a, b) = v_aᵀ R(x) v_b / τ (docs/design.md §3.1).

One pass per response gives its preference vector v(x, y) ∈ R^{2k}; K responses' K×K score matrix is
one matrix product (:meth:`~prefgame.models.heads.GPMHead.score_matrix`). Trained with the logistic
loss on s; options in ``model.gpm``.
"""

from __future__ import annotations

from torch import Tensor

from prefgame.models.heads import GPMHead
from prefgame.models.kinds import KindSpec, register


def build_gpm_head(cfg, in_dim: int, objectives, verbosity_index: int) -> GPMHead:
    h, g = cfg.head, cfg.gpm
    return GPMHead(
        in_dim,
        blocks=g.blocks,
        hidden=h.hidden_size,
        layers=h.num_layers,
        prompt_gate=g.prompt_gate,
        normalize=g.normalize,
        temperature=g.temperature,
        prompt_input=h.prompt_input,
    )


def gpm_score_matrix(head: GPMHead, h_y: Tensor, h_x: Tensor | None) -> Tensor:
    """S (K, K) of one prompt's K responses: their vectors, the prompt's λ(x), one product."""
    lam = head.eigenvalues(h_x, 1)[0]  # (k_blocks,)
    return head.score_matrix(head.vectors(h_y, h_x), lam)


GPM = register(
    KindSpec(
        name="gpm",
        build_head=build_gpm_head,
        reward=False,
        help="general preference embedding",
        title="GPM (general preference)",
        order=1,
        score_matrix=gpm_score_matrix,
        arena=True,
    )
)
