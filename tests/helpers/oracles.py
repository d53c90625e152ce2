"""Toy preference oracles for ``kind=factory`` in command-line tests (tests/ on PYTHONPATH)."""

from __future__ import annotations

import torch


class LongerWins:
    """The response with more characters wins; equal lengths tie."""

    name = "longer-wins"

    def preference(self, prompts, responses_a, responses_b) -> torch.Tensor:
        d = torch.tensor([len(a) - len(b) for a, b in zip(responses_a, responses_b)], dtype=torch.float64)
        return (torch.sign(d) + 1) / 2


def longer_wins(path: str, **options) -> LongerWins:
    return LongerWins()


class CountingGold:
    """The arena's gold preference (default world) that counts what it is asked and reports a judge's usage
    (``stats``: requests, pairs, cost at 0.01 a pair), as an LLM judge does."""

    name = "counting-gold"
    asked: list[int] = []  # pairs per call, over every instance of this process

    def __init__(self) -> None:
        from prefgame.arena.job import ArenaConfig
        from prefgame.arena.world import GoldOracle

        self.gold = GoldOracle(ArenaConfig().build())
        self.stats = {"requests": 0, "pairs": 0, "cost": 0.0}

    def preference(self, prompts, responses_a, responses_b) -> torch.Tensor:
        CountingGold.asked.append(len(prompts))
        self.stats["requests"] += 1
        self.stats["pairs"] += len(prompts)
        self.stats["cost"] += 0.01 * len(prompts)
        return self.gold.preference(prompts, responses_a, responses_b)


def counting_gold(path: str, **options) -> CountingGold:
    return CountingGold()
