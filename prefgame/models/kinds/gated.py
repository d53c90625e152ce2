"""Multi-objective gated reward (``gated``, ArmoRM-style): f(x, y) = scale · Σ_i g_i(x) r'_i(x, y),
s(a, b) = f(x,a) − f(x,b) (docs/design.md §3.1).

A reward with one rating output per objective (the rating columns of ``data.ratings_path``) and a
prompt gate over them. Its training is its own (``ratings=True``, :mod:`prefgame.train.pm`): stage 1
regresses the ratings (ridge or gradient descent), verbosity debiasing follows, stage 2 trains the
gate and scale with the BT loss on the pairs; options in ``model.gated``.
"""

from __future__ import annotations

from prefgame.errors import PrefgameError
from prefgame.models.heads import GatedHead
from prefgame.models.kinds import KindSpec, register


def build_gated_head(cfg, in_dim: int, objectives, verbosity_index: int) -> GatedHead:
    if not objectives:
        raise PrefgameError("a gated head needs objectives (the rating columns)")
    h, g = cfg.head, cfg.gated
    return GatedHead(
        in_dim,
        objectives,
        hidden=h.hidden_size,
        layers=h.num_layers,
        temperature=g.gate_temperature,
        scale_init=g.scale_init,
        learn_scale=g.learn_scale,
        verbosity_index=verbosity_index,
        train_regression=g.stage1 == "sgd",
        regression_hidden=g.regression_hidden,
        prompt_input=h.prompt_input,
    )


GATED = register(
    KindSpec(
        name="gated",
        build_head=build_gated_head,
        reward=True,
        help="ArmoRM",
        title="gated (ArmoRM-style)",
        order=3,
        ratings=True,
        arena=True,
    )
)
