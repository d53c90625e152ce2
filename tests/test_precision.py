"""Precision and memory (prefgame.train.precision): float32 master weights under bf16 autocast, the explicit
pure low-precision option, frozen copies in the compute dtype, and gradient checkpointing in every trainer.

The shipped real-model configs run here on a tiny random Llama saved in bfloat16 (the dtype a hub
checkpoint comes in), with the paths, sizes and step counts overridden and their precision settings
kept. On a CPU, bf16 autocast is what ``train.mixed_precision=bf16`` gives (``auto`` is float32 there).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers.weights import TINY, changed_fraction, save_bf16_llama
from safetensors.torch import load_file

from prefgame.cli import main
from prefgame.errors import ConfigError
from prefgame.train.precision import Precision, resolve_mixed_precision

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# 10 steps at the shipped learning rate, from the first step on (the shipped warm-up is 100 steps)
STEPS = ["train.max_steps=10", "train.warmup_steps=0", "train.batch_size=8", "train.micro_batch_size=4"]
QUIET = ["train.eval_every=0", "train.save_every=0", "train.log_every=1"]


@pytest.fixture(scope="module")
def bf16_llama(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama causal LM with the arena tokenizer, saved in bfloat16."""
    return save_bf16_llama(arena_dir / "tokenizer", tmp_path_factory.mktemp("bf16-llama"))


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def pm_run(config: str, arena: Path, model: Path, out: Path, *extra: str) -> Path:
    """``prefgame train-pm`` with a shipped config, pointed at ``model`` and the arena pairs."""
    args = [
        "train-pm", "--config", str(CONFIGS / "pm" / config), f"output_dir={out}",
        f"model.backbone.name_or_path={model}", "model.backbone.max_length=64",
        f"data.path={arena / 'pairs.jsonl'}", "data.eval_path=", "data.eval_fraction=0.1", "loss.margin=none",
        *STEPS, *QUIET, *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return out


def dpo_run(arena: Path, model: Path, out: Path, *extra: str) -> Path:
    """``prefgame dpo`` with the shipped real-model config and ``policy.dtype=bfloat16``."""
    args = [
        "dpo", "--config", str(CONFIGS / "dpo" / "qwen2.5-0.5b-ultrafeedback.yaml"), f"output_dir={out}",
        f"policy.name_or_path={model}", "policy.dtype=bfloat16", f"data.path={arena / 'pairs.jsonl'}",
        "data.split=train", "data.max_length=64", "data.eval_fraction=0.1", *STEPS, *QUIET, *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return out


# -- the shipped bf16 configs train --------------------------------------------------------------------


def test_bf16_pm_config_trains_every_layer_and_matches_float32(arena_dir, bf16_llama, tmp_path):
    """configs/pm/qwen2.5-1.5b-ultrafeedback-gpm.yaml (backbone dtype bfloat16, fine-tuned, lr 2e-6):
    under bf16 autocast every layer weight moves (float32 master weights), the losses follow a float32
    run's within autocast tolerance, and the same config with mixed_precision=auto runs on the CPU."""
    config = "qwen2.5-1.5b-ultrafeedback-gpm.yaml"
    bf16 = pm_run(config, arena_dir, bf16_llama, tmp_path / "bf16", "train.mixed_precision=bf16")
    auto = pm_run(config, arena_dir, bf16_llama, tmp_path / "auto")  # the shipped auto: float32 on a CPU
    saved = bf16 / "model" / "backbone" / "model.safetensors"
    assert changed_fraction(bf16_llama / "model.safetensors", saved) >= 0.99
    assert next(iter(load_file(str(saved)).values())).dtype == torch.float32  # the master weights are saved
    assert changed_fraction(bf16_llama / "model.safetensors", auto / "model" / "backbone" / "model.safetensors") >= 0.99
    torch.testing.assert_close(torch.tensor(losses(bf16)), torch.tensor(losses(auto)), rtol=0, atol=1e-2)


def test_bf16_dpo_policy_trains_every_layer_and_matches_float32(arena_dir, bf16_llama, tmp_path):
    """The shipped DPO config asking for a bfloat16 policy: the same as train-pm, and the frozen π0
    log-probabilities come from the same weights, so the first loss is log 2 in both precisions."""
    bf16 = dpo_run(arena_dir, bf16_llama, tmp_path / "bf16", "train.mixed_precision=bf16")
    auto = dpo_run(arena_dir, bf16_llama, tmp_path / "auto")
    for run in (bf16, auto):
        assert changed_fraction(bf16_llama / "model.safetensors", run / "model" / "model.safetensors") >= 0.99
    torch.testing.assert_close(torch.tensor(losses(bf16)), torch.tensor(losses(auto)), rtol=0, atol=1e-3)
    assert losses(auto)[0] == pytest.approx(0.6931, abs=1e-4)


def test_low_precision_weights_is_explicit_warns_and_loses_small_updates(arena_dir, bf16_llama, tmp_path):
    """train.low_precision_weights=true trains the bf16 weights themselves (no float32 copy): the run's
    log says what that costs, and at lr 2e-6 most layer weights do not move."""
    config = "qwen2.5-1.5b-ultrafeedback-bt.yaml"
    out = pm_run(config, arena_dir, bf16_llama, tmp_path / "pure", "train.mixed_precision=bf16",
                 "train.low_precision_weights=true")  # fmt: skip
    log = (out / "log.txt").read_text()
    assert "train.low_precision_weights=true" in log and "no float32 master copy" in log and "rounded away" in log
    saved = out / "model" / "backbone" / "model.safetensors"
    assert next(iter(load_file(str(saved)).values())).dtype == torch.bfloat16
    assert changed_fraction(bf16_llama / "model.safetensors", saved) < 0.5


# -- the rules, one place --------------------------------------------------------------------------------


def test_precision_rules(caplog):
    bf16, fp32 = torch.bfloat16, torch.float32
    under_bf16, on_cpu = Precision("bf16"), Precision("no")
    for p in (under_bf16, on_cpu):  # trained weights: float32 master weights by default
        assert p.trainable_dtype("bfloat16", key="policy.dtype") == fp32
        assert p.trainable_dtype("float32", key="policy.dtype") == fp32
    # frozen weights: the lower of the dtype asked for and the compute dtype
    assert under_bf16.frozen_dtype("float32") == bf16 and under_bf16.frozen_dtype("bfloat16") == bf16
    assert on_cpu.frozen_dtype("float32") == fp32 and on_cpu.frozen_dtype("bfloat16") == bf16
    assert Precision("fp16").frozen_dtype("float32") == torch.float16
    pure = Precision("bf16", low_precision_weights=True)
    with caplog.at_level(logging.WARNING, logger="prefgame.train"):
        assert pure.trainable_dtype("bfloat16", key="model.backbone.dtype") == bf16
    assert "rounded away" in caplog.text and "model.backbone.dtype=bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefgame.train"):
        assert pure.trainable_dtype("float32", key="policy.dtype") == fp32
    assert "has no effect" in caplog.text
    with pytest.raises(ConfigError, match="gradient scaler"):
        Precision("fp16", low_precision_weights=True).trainable_dtype("float16", key="model.backbone.dtype")


def test_mixed_precision_auto_is_float32_on_a_cpu_and_fp16_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision("bf16") == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_mixed_precision("fp16")


# -- gradient checkpointing in every trainer -------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_run(arena_dir: Path, bf16_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BT reward model on the frozen tiny backbone (one step), for PPO."""
    out = tmp_path_factory.mktemp("reward")
    args = [
        "train-pm", f"output_dir={out}", "model.kind=bt", f"model.backbone.name_or_path={bf16_llama}",
        "model.backbone.max_length=64", f"data.path={arena_dir / 'pairs.jsonl'}", "train.max_steps=1",
        "train.batch_size=8", *QUIET,
    ]  # fmt: skip
    assert main(args) == 0
    return out


def trainer_args(job: str, arena: Path, model: Path, reward: Path, out: Path, *extra: str) -> list[str]:
    """One cheap optimizer step (self-play, PPO: one iteration) of ``job`` on the tiny bf16 Llama."""
    step = ["train.batch_size=4", "train.micro_batch_size=2", "train.warmup_steps=0"]
    policy = [f"policy.name_or_path={model}", "sampling.max_new_tokens=4", "eval.prompts=0"]
    return {
        "sft": ["sft", f"model.name_or_path={model}", f"data.path={arena / 'sft.jsonl'}", "data.max_length=48",
                "data.eval_fraction=0", "train.max_steps=1", "train.save_every=0", *step],
        "train-pm": ["train-pm", "model.kind=bt", "model.backbone.freeze=false", f"model.backbone.name_or_path={model}",
                     "model.backbone.max_length=48", f"data.path={arena / 'pairs.jsonl'}", "data.eval_fraction=0",
                     "train.max_steps=1", "train.save_every=0", *step],
        "dpo": ["dpo", f"policy.name_or_path={model}", f"data.path={arena / 'pairs.jsonl'}", "data.max_length=48",
                "data.eval_fraction=0", "train.max_steps=1", "train.save_every=0", *step],
        "selfplay": ["selfplay", "algorithm=nash_md", *policy, "sampling.prompts_per_iteration=2",
                     "sampling.samples_per_prompt=2", "train.iterations=1", "train.steps_per_iteration=1", *step],
        "ppo": ["ppo", *policy, f"reward.path={reward}", "reward.normalize=false", "train.iterations=1",
                "train.rollout_batch_size=4", "train.mini_batch_size=4", "train.micro_batch_size=2", "ppo.epochs=1",
                "train.warmup_steps=0"],
    }[job] + [f"output_dir={out}", *extra]  # fmt: skip


@pytest.mark.parametrize("job", ["sft", "train-pm", "dpo", "selfplay", "ppo"])
def test_every_trainer_honours_gradient_checkpointing(job, arena_dir, bf16_llama, reward_run, tmp_path, monkeypatch):
    """With train.gradient_checkpointing=true the layers of every forward pass that has gradients run
    again in the backward pass (their activations were not kept): each layer's MLP runs twice per
    training forward pass of the model."""
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaModel

    counts = {LlamaModel: 0, LlamaMLP: 0}

    def counting(cls):
        forward = cls.forward

        @functools.wraps(forward)  # the same signature: callers look at the arguments it takes
        def spy(self, *args, **kwargs):
            if torch.is_grad_enabled() and self.training:
                counts[cls] += 1
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)

    counting(LlamaModel)
    counting(LlamaMLP)
    checkpointing = "train.gradient_checkpointing=true"
    assert main(trainer_args(job, arena_dir, bf16_llama, reward_run, tmp_path / job, checkpointing)) == 0
    assert counts[LlamaModel] > 0
    assert counts[LlamaMLP] == 2 * TINY["num_layers"] * counts[LlamaModel]


# -- the frozen reference: compute dtype, optional CPU offload --------------------------------------------


def test_reference_is_frozen_in_the_compute_dtype(bf16_llama):
    """π0's frozen copy: no gradients, eval mode, in bf16 under bf16 autocast and in float32 without;
    the trained policy keeps float32 master weights either way."""
    from prefgame.train.policy import PolicyConfig, load_policy

    cfg = PolicyConfig(name_or_path=str(bf16_llama), dtype="float32")
    for mixed, ref_dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
        _, policy, ref = load_policy(cfg, "cpu", Precision(mixed))
        assert next(policy.parameters()).dtype == torch.float32 and policy.training
        assert {p.dtype for p in ref.parameters()} == {ref_dtype}
        assert not ref.training and not any(p.requires_grad for p in ref.parameters())


def test_offloaded_reference_visits_the_accelerator_only_while_it_computes():
    """policy.offload_reference: π0 stays in CPU memory and goes to the accelerator for each use (once
    for nested uses)."""
    from types import SimpleNamespace

    from prefgame.train.policy import PolicyConfig, PolicyRuntime

    moves = []
    ref = SimpleNamespace(to=lambda device: moves.append(str(device)))
    for offload, expected in ((True, ["cuda", "cpu"]), (False, [])):
        moves.clear()
        cfg = SimpleNamespace(policy=PolicyConfig(offload_reference=offload))
        rt = SimpleNamespace(
            cfg=cfg, acc=SimpleNamespace(device=torch.device("cuda")), ref=ref, reference_borrowed=False
        )
        with PolicyRuntime.reference(rt):
            with PolicyRuntime.reference(rt):
                assert moves == expected[:1]
        assert moves == expected and not rt.reference_borrowed


def test_offloaded_reference_trains_like_a_resident_one(arena_dir, bf16_llama, reward_run, tmp_path):
    """Self-play (nash_md: π0 in the sampler's mixture and in the loss) and PPO run the same with
    policy.offload_reference=true."""
    for job in ("selfplay", "ppo"):
        resident, offloaded = tmp_path / job, tmp_path / f"{job}-offload"
        assert main(trainer_args(job, arena_dir, bf16_llama, reward_run, resident)) == 0
        assert (
            main(trainer_args(job, arena_dir, bf16_llama, reward_run, offloaded, "policy.offload_reference=true")) == 0
        )
        assert losses(resident) and losses(resident) == losses(offloaded)
