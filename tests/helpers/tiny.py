"""``key=value`` settings of few-step jobs on the test arena with a tiny Llama (hidden 32, 2 layers),
shared by the scaling and fault tests. Callers add max_steps, micro-batch, checkpoint and eval settings."""

from __future__ import annotations

from pathlib import Path

TINY_LM = ["hidden_size=32", "num_layers=2", "num_heads=2", "intermediate_size=64"]
TRAIN = [
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.warmup_steps=1",
    "train.eval_every=0",
    "train.log_every=1",
    "train.mixed_precision=no",
]


def sft_args(arena: Path) -> list[str]:
    """``prefgame sft`` on the arena's demonstrations, no held-out rows."""
    return [
        f"data.path={arena / 'sft.jsonl'}",
        f"model.tokenizer={arena / 'tokenizer'}",
        *(f"model.{kv}" for kv in TINY_LM),
        "data.max_length=64",
        "data.eval_fraction=0",
        *TRAIN,
    ]


def pm_args(arena: Path) -> list[str]:
    """``prefgame train-pm``: the gpm kind with a fine-tuned backbone (encoder and head both train)."""
    return [
        f"data.path={arena / 'pairs.jsonl'}",
        "data.eval_fraction=0.1",
        "model.kind=gpm",
        "model.backbone.freeze=false",
        f"model.backbone.tokenizer={arena / 'tokenizer'}",
        *(f"model.backbone.{kv}" for kv in TINY_LM),
        "model.backbone.max_length=64",
        *TRAIN,
    ]


# one measurement of 4 held-out prompts, after the last iteration
EVAL = ["eval.every=0", "eval.prompts=4", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1"]


def selfplay_args(pi0: Path, algorithm: str = "inpo") -> list[str]:
    """``prefgame selfplay`` from π0: two iterations of 4 prompts × 2 samples, two steps of 8 each."""
    return [
        f"policy.name_or_path={pi0}",
        f"algorithm={algorithm}",
        "sampling.prompts_per_iteration=4",
        "sampling.samples_per_prompt=2",
        "sampling.max_new_tokens=6",
        "train.iterations=2",
        "train.steps_per_iteration=2",
        "train.batch_size=8",
        "train.lr=1e-2",
        "train.mixed_precision=no",
        *EVAL,
    ]


def online_args(pi0: Path) -> list[str]:
    """``prefgame online`` from π0: two labeling rounds of 8 pairs, 20-step fits of a small GPM, one self-play
    iteration of 4 prompts per solve, 12 held-out prompts."""
    solver = [
        "train.iterations=1", "sampling.prompts_per_iteration=4", "sampling.samples_per_prompt=2",
        "sampling.reference_samples_per_prompt=2", "train.steps_per_iteration=1", "train.batch_size=8",
        "train.micro_batch_size=8", "sampling.max_new_tokens=6", "train.mixed_precision=no", "train.lr=1e-2",
    ]  # fmt: skip
    return [
        f"policy.name_or_path={pi0}", "online.rounds=2", "online.pairs_per_round=8", "pm.steps=20",
        "pm.batch_size=16", "pm.head_hidden_size=16", "pm.backbone_hidden_size=32", "pm.eval_pairs=24",
        "sampling.max_new_tokens=6", "eval.prompts=12", "eval.samples_per_prompt=1",
        f"solver.overrides=[{','.join(solver)}]",
    ]  # fmt: skip


def ppo_args(pi0: Path) -> list[str]:
    """``prefgame ppo`` from π0 against the BT reward model :func:`train_pi0_and_reward` puts beside it:
    two iterations of 8 rollouts, one epoch of one mini-batch."""
    return [
        f"policy.name_or_path={pi0}",
        f"reward.path={pi0.parent.parent / 'reward'}",
        "reward.normalize_samples=8",
        "sampling.max_new_tokens=6",
        "ppo.epochs=1",
        "train.iterations=2",
        "train.rollout_batch_size=8",
        "train.mini_batch_size=8",
        "train.lr=1e-2",
        "train.mixed_precision=no",
        "train.save_every=0",
        *EVAL,
    ]


def train_pi0_and_reward(arena: Path, root: Path) -> tuple[Path, Path]:
    """A tiny π0 after 5 SFT steps and a BT reward model (frozen tiny backbone, 5 steps) under ``root``,
    for the trainers that start from a policy (dpo, selfplay, ppo); returns (π0 folder, reward run)."""
    from prefgame.cli import main

    sft = [*sft_args(arena), "train.max_steps=5", "train.micro_batch_size=8", "train.save_every=0"]
    assert main(["sft", *sft, f"output_dir={root / 'sft'}"]) == 0
    reward = [*pm_args(arena), "model.kind=bt", "model.backbone.freeze=true", "train.max_steps=5"]
    assert main(["train-pm", *reward, "train.save_every=0", f"output_dir={root / 'reward'}"]) == 0
    return root / "sft" / "model", root / "reward"
