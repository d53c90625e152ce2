"""Evaluation: win rates, length-controlled win rates, ratings, agreement and reports.

The standard benchmarks' files and exact statistics are in :mod:`evaluation.alpacaeval` (AlpacaEval 2),
:mod:`evaluation.arenahard` (Arena-Hard-Auto), :mod:`evaluation.mtbench` (MT-Bench agreement) and
:mod:`evaluation.rewardbench` (RewardBench). Also the two commands built on them:
:mod:`evaluation.evaluate` (``prefgame evaluate``) and :mod:`evaluation.quickstart` (``prefgame quickstart``,
its report in :mod:`evaluation.quickstart_report`).
This package imports prefgame; prefgame never imports it (its command table names those two modules by
path and loads them on demand, docs/design.md §2.2)."""

from evaluation.agreement import (
    SubsetAccuracy,
    accuracy_by_subset,
    agreement,
    agreement_matrix,
    cohen_kappa,
    longer_response_win_rate,
    position_consistency,
)
from evaluation.ratings import bt_ratings, predicted_win_rate
from evaluation.winrate import (
    LengthControlledWinRate,
    WinRate,
    battle_outcomes,
    length_controlled_win_rate,
    win_rate,
    win_rate_matrix,
)

__all__ = [
    "LengthControlledWinRate",
    "SubsetAccuracy",
    "WinRate",
    "accuracy_by_subset",
    "agreement",
    "agreement_matrix",
    "battle_outcomes",
    "bt_ratings",
    "cohen_kappa",
    "length_controlled_win_rate",
    "longer_response_win_rate",
    "position_consistency",
    "predicted_win_rate",
    "win_rate",
    "win_rate_matrix",
]
