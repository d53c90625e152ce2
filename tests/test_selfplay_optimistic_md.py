"""LM optimistic mirror descent (prefgame/train/selfplay/algorithms/optimistic_md.py): its first step is
mmd's, later steps use the previous iterate's samples, the previous iterate is checkpointed (resume is
exact) and the reference stays frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_selfplay import TINY, KillAfter, KilledError, read_rows, tiny_model

from prefgame.arena.lm import build_tokenizer
from prefgame.arena.world import Arena, GoldOracle
from prefgame.train.selfplay import ALGORITHMS, run_selfplay


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory) -> Path:
    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("pi0")
    tiny_model(0, tok).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(folder / name))


def test_registered_with_its_tabular_rule_and_preset() -> None:
    spec = ALGORITHMS["optimistic_md"]
    assert spec.tabular == "optimistic_md" and spec.setup is not None
    assert set(spec.preset) == {"game.tau=0.1", "game.eta=3", "train.lr=3e-4"}


def test_first_iteration_is_mmd_then_the_updates_differ(pi0_dir: Path, tmp_path: Path) -> None:
    """π_{−1} = π_0: one iteration of optimistic MD is bit for bit one of mmd (same samples, same
    targets); a second uses π_{t−1}'s samples and so moves elsewhere."""
    runs = {}
    for algorithm in ("mmd", "optimistic_md"):
        for iterations in (1, 2):
            out = tmp_path / f"{algorithm}-{iterations}"
            run_selfplay(
                pi0_dir, GoldOracle(Arena()), algorithm=algorithm, output_dir=out,
                overrides=[*TINY, f"train.iterations={iterations}", "eval.every=0"],
            )  # fmt: skip
            runs[algorithm, iterations] = weights(out / "model")
    one_mmd, one_omd = runs["mmd", 1], runs["optimistic_md", 1]
    assert all(torch.equal(one_mmd[k], one_omd[k]) for k in one_mmd)
    two_mmd, two_omd = runs["mmd", 2], runs["optimistic_md", 2]
    assert any(not torch.equal(two_mmd[k], two_omd[k]) for k in two_mmd)
    pi0 = weights(pi0_dir)
    assert all(not torch.equal(pi0[k], two_omd[k]) for k in pi0)  # the policy moved


def test_checkpoint_holds_the_previous_iterate_and_resume_is_exact(pi0_dir: Path, tmp_path: Path) -> None:
    """Iteration t's checkpoint holds π_{t−1} beside π_t; a run killed in iteration 3 while querying
    the oracle about π_{t−1}'s samples and resumed ends with the uninterrupted run's weights and rows."""
    overrides = [*TINY, "train.iterations=3", "eval.every=1", "train.keep_checkpoints=3"]
    full = tmp_path / "full"
    run_selfplay(pi0_dir, GoldOracle(Arena()), algorithm="optimistic_md", output_dir=full, overrides=overrides)
    ckpts = sorted((full / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000001", "step-00000002", "step-00000003"]
    for before, after in zip(ckpts, ckpts[1:]):  # π_{t−1} of iteration t's checkpoint is π_{t−1} itself
        previous, policy = weights(after, "previous.safetensors"), weights(before, "policy.safetensors")
        assert previous.keys() == policy.keys() and all(torch.equal(previous[k], policy[k]) for k in previous)
    # oracle calls: 1 (π0's measurement), iteration 1: 1 train + 2 measure, iteration 2: 2 + 2; the
    # 10th call is iteration 3's comparison with π_{t−1}'s samples
    killed = tmp_path / "killed"
    with pytest.raises(KilledError):
        run_selfplay(
            pi0_dir, KillAfter(GoldOracle(Arena()), 9), algorithm="optimistic_md", output_dir=killed,
            overrides=overrides,
        )  # fmt: skip
    assert [r["iteration"] for r in read_rows(killed)] == [0, 1, 2]
    run_selfplay(
        pi0_dir,
        GoldOracle(Arena()),
        algorithm="optimistic_md",
        output_dir=killed,
        overrides=[*overrides, "resume=true"],
    )
    a, b = weights(full / "model"), weights(killed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_rows(full) == read_rows(killed)
