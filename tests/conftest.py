"""Shared test fixtures: one PyTorch thread, a private ``datasets`` cache, and a small exported arena.

Fixtures that build something (the arena export) are session-scoped so that the files are written
once per test run.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import datasets
import pytest
import torch

# Tests run on small shared CPUs: several PyTorch threads on a busy machine are much slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start

# -- deprecations fail the tests -------------------------------------------------------------------
# pyproject.toml turns every DeprecationWarning and FutureWarning into an error. Those that a library
# raises inside itself, whatever prefgame calls, are listed here as (category, the module the warning
# is attributed to, reason); nothing else may be ignored.
_MPL_PYPARSING = (
    "matplotlib before 3.9 (the declared minimum is 3.8.4) parses font patterns and mathtext with "
    "pyparsing's camelCase names, which pyparsing 3.3 deprecates"
)
KNOWN_DEPRECATIONS: list[tuple[str, str, str]] = [
    ("DeprecationWarning", "matplotlib._fontconfig_pattern", _MPL_PYPARSING),
    ("DeprecationWarning", "matplotlib._mathtext", _MPL_PYPARSING),
    ("DeprecationWarning", "pyparsing.util", _MPL_PYPARSING),
    ("DeprecationWarning", "pyparsing.core", _MPL_PYPARSING),
]
DEPRECATIONS = ("DeprecationWarning", "FutureWarning", "PendingDeprecationWarning")
# Libraries that announce deprecations through their loggers instead of the warnings module (and the
# logger the CLI forwards them to while it holds them back: prefgame.console)
LOGGING_LIBRARIES = ("transformers", "datasets", "huggingface_hub", "accelerate", "torch", "prefgame.libraries")

# The prefgame processes that tests start inherit the same rules (-W syntax: the module is literal)
os.environ["PYTHONWARNINGS"] = ",".join(
    [f"error::{c}" for c in DEPRECATIONS] + [f"ignore::{c}:{m}" for c, m, _ in KNOWN_DEPRECATIONS]
)


def pytest_configure(config: pytest.Config) -> None:
    for category, module, _ in KNOWN_DEPRECATIONS:  # after pyproject's lines, so they take precedence
        config.addinivalue_line("filterwarnings", f"ignore::{category}:{re.escape(module)}\\Z")


class _LoggedDeprecations(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(f"{record.name}: {message}")


@pytest.fixture(autouse=True)
def _fail_on_logged_deprecations():
    """A library deprecation notice logged during a test (transformers logs some, once per process)
    fails that test, as a DeprecationWarning would."""
    handler = _LoggedDeprecations()
    loggers = [logging.getLogger(name) for name in LOGGING_LIBRARIES]
    for logger in loggers:
        logger.addHandler(handler)
    yield
    for logger in loggers:
        logger.removeHandler(handler)
    if handler.messages:
        pytest.fail("a library logged a deprecation: " + " | ".join(handler.messages), pytrace=False)


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
