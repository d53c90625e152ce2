"""Shared test fixtures: one PyTorch thread, a private ``datasets`` cache, and a small exported arena.

Fixtures that build something (the arena export) are session-scoped so that the files are written
once per test run.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest
import torch

# Tests run on small shared CPUs: several PyTorch threads on a busy machine are much slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start


@pytest.fixture(scope="session", autouse=True)
def _single_thread_and_private_cache(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        mp.setenv("HF_DATASETS_CACHE", str(cache))
        datasets.disable_progress_bars()
        yield


@pytest.fixture(scope="session")
def arena_rows() -> dict[str, int]:
    """Row count of each file of the small arena export the tests share."""
    return {"sft.jsonl": 600, "pairs.jsonl": 300, "ratings.jsonl": 120, "battles.jsonl": 150}


@pytest.fixture(scope="session")
def arena_dir(tmp_path_factory: pytest.TempPathFactory, arena_rows: dict[str, int]) -> Path:
    """``prefgame arena`` output (data sets, tokenizer, config.yaml) with ``arena_rows`` rows, seed 0."""
    from prefgame.arena.job import ArenaJobConfig, run

    out = tmp_path_factory.mktemp("arena")
    cfg = ArenaJobConfig(
        output_dir=str(out),
        sft_examples=arena_rows["sft.jsonl"],
        pairs=arena_rows["pairs.jsonl"],
        ratings=arena_rows["ratings.jsonl"],
        battles=arena_rows["battles.jsonl"],
    )
    assert run(cfg) == arena_rows
    return out
