"""prefgame.game: the KL-regularized preference game (docs/design.md §3.2–3.3).

Symbols as in docs/design.md §3: ``tau`` is the KL coefficient τ of the game, ``eta`` the step η of a
mirror-descent update rule (``step_size`` in :func:`run_dynamics`, a constant η or a schedule t ↦ η_t).

Tabular exact tools: game quantities in :mod:`prefgame.game.metrics`, self-play update rules, their
driver and the Newton equilibrium solver in :mod:`prefgame.game.solvers`.
"""

from prefgame.game.metrics import (
    TabularGame,
    best_response,
    best_response_logits,
    duality_gap,
    exploitability,
    kl,
    payoff,
    random_game,
)
from prefgame.game.solvers import (
    ALIASES,
    RULES,
    SolveInfo,
    Trace,
    continuation_taus,
    default_step_size,
    extragradient,
    get_rule,
    harmonic_step_size,
    magnetic_extragradient,
    magnetic_md,
    multiplicative_weights,
    nash_md,
    online_md,
    optimistic_md,
    run_dynamics,
    solve_equilibrium,
)

__all__ = [
    "ALIASES",
    "RULES",
    "SolveInfo",
    "TabularGame",
    "Trace",
    "best_response",
    "best_response_logits",
    "continuation_taus",
    "default_step_size",
    "duality_gap",
    "exploitability",
    "extragradient",
    "magnetic_extragradient",
    "get_rule",
    "harmonic_step_size",
    "kl",
    "magnetic_md",
    "multiplicative_weights",
    "nash_md",
    "online_md",
    "optimistic_md",
    "payoff",
    "random_game",
    "run_dynamics",
    "solve_equilibrium",
]
