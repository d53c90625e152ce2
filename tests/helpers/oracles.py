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
