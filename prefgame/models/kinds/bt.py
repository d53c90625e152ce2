"""Bradley–Terry reward (``bt``): r(x, y) = MLP(h_{x,y}), s(a, b) = r(x,a) − r(x,b) (docs/design.md §3.1).

Trained with the BT loss (soft labels, ties, the score-gap margin, reward centering); a reward, so
PPO can use it and its K×K matrix is K passes and a difference of rewards.
"""

from __future__ import annotations

from prefgame.models.heads import RewardHead
from prefgame.models.kinds import KindSpec, register


def build_bt_head(cfg, in_dim: int, objectives, verbosity_index: int) -> RewardHead:
    h = cfg.head
    return RewardHead(in_dim, hidden=h.hidden_size, layers=h.num_layers, prompt_input=h.prompt_input)


BT = register(
    KindSpec(
        name="bt",
        build_head=build_bt_head,
        reward=True,
        help="Bradley–Terry reward",
        title="BT reward",
        order=0,
        arena=True,
    )
)
