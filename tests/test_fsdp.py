"""Sharded training: FSDP2 on two CPU processes (gloo, ``accelerate launch --config_file
configs/accelerate/fsdp_cpu_2proc.yaml -m prefgame ...``) trains, saves and resumes like one process
without FSDP.

What is checked, for ``sft`` (default run) and, with ``-m slow``, offline ``dpo`` (with the end-of-run
measurement that samples from the sharded policy), ``train-pm`` (GPM, fine-tuned backbone), ``selfplay``
(INPO, Nash-MD, extragradient, and a step whose examples do not divide over the processes), online
``dpo`` and ``ppo``:

* the FSDP run ends with the weights of a one-process run with the same global batch, within the DDP
  tests' tolerance (tests/test_distributed.py: float32 summation order), and logs the same losses;
* its checkpoint holds complete tensors and the full optimizer state in the layout of the unsharded run;
* ``model/`` is a normal transformers checkpoint: ``from_pretrained`` loads it into a plain model, with
  the embeddings still tied, whose logits are the one-process model's;
* a run cut after its checkpoint resumes, as two FSDP processes again, to the uninterrupted run's weights
  bit for bit: in the default test by resuming a copy of the folder as a kill after the checkpoint leaves
  it (the checkpoint, no ``model/``, no ``metrics.json``), in the slow one by SIGKILL of the running job;
  one process without FSDP resumes the same checkpoint too.

Settings prefgame does not support under sharding fail with one line (in-process, no launch): DeepSpeed,
FSDP1, loading on the main process only, LoRA, and the train-pm and selfplay settings FSDP does not
shard.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from accelerate.utils import DistributedType
from helpers.launch import FSDP_CONFIG, REPO, assert_same_weights, job_env, launch, launch_command, load_weights
from helpers.tiny import EVAL, TRAIN, ppo_args, selfplay_args, sft_args, train_pi0_and_reward
from helpers.tiny import pm_args as tiny_pm_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from prefgame.cli import main
from prefgame.errors import PrefgameError
from prefgame.models.model import load_preference_model
from prefgame.train import sharding
from prefgame.train.engine import latest_checkpoint

ATOL = 2e-5  # the DDP tests' tolerance (tests/test_distributed.py); a wrong gradient scale gives ≥ 1e-3


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_same_optimizer_state(expected: Path, got: Path) -> None:
    """Two checkpoints' optimizer.pt: the same layout (parameter indices, groups) and complete tensors
    equal within ATOL; read without unpickling."""
    a = torch.load(expected / "optimizer.pt", weights_only=True)["optimizer"]
    b = torch.load(got / "optimizer.pt", weights_only=True)["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, values in a["state"].items():
        assert values.keys() == b["state"][index].keys()
        for key, tensor in values.items():
            torch.testing.assert_close(b["state"][index][key], tensor, rtol=0, atol=ATOL, msg=f"{index}.{key}")


def assert_loads_as_plain_model(saved: Path, reference: Path) -> None:
    """``from_pretrained`` loads ``saved`` into a plain model with tied embeddings, and its logits are those
    of the model in ``reference`` (within float32 rounding of ATOL-close weights)."""
    model = AutoModelForCausalLM.from_pretrained(saved).eval()
    expected = AutoModelForCausalLM.from_pretrained(reference).eval()
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected(ids).logits, rtol=0, atol=1e-4)


def cut_after_checkpoint(run_dir: Path, copy: Path) -> Path:
    """``copy`` of a finished run as a kill after its last checkpoint leaves it: the checkpoints and logs,
    no model and no metrics.json (resume drops the metrics.jsonl lines after the checkpoint)."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "model")
    (copy / "metrics.json").unlink()
    return copy


def test_sft_under_fsdp_equals_one_process_saves_and_resumes(arena_dir: Path, tmp_path: Path) -> None:
    args = [
        *sft_args(arena_dir),
        "data.eval_fraction=0.05",  # evaluations between steps run on the sharded model too
        "train.eval_every=2",
        "train.max_steps=4",
        "train.save_every=2",
        "train.micro_batch_size=4",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sft", *args, f"output_dir={one}"]) == 0
    launch("sft", [*args, f"output_dir={two}"], config=FSDP_CONFIG)

    assert_same_weights(one / "model", two / "model", atol=ATOL)
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=1e-5) and m2["eval_loss"] < m2["eval_loss_initial"]
    ckpt1, ckpt2 = one / "checkpoints" / "step-00000002", two / "checkpoints" / "step-00000002"
    assert_same_weights(ckpt1, ckpt2, atol=ATOL)
    assert_same_optimizer_state(ckpt1, ckpt2)
    assert_loads_as_plain_model(two / "model", one / "model")

    resumed = cut_after_checkpoint(two, tmp_path / "resumed")
    launch("sft", [*args, f"output_dir={resumed}", "resume=true"], config=FSDP_CONFIG)
    assert_same_weights(two / "model", resumed / "model")  # bit for bit
    assert losses(resumed) == losses(two)
    # the checkpoint does not depend on the launcher: one process without FSDP resumes it too
    single = cut_after_checkpoint(two, tmp_path / "single")
    assert main(["sft", *args, f"output_dir={single}", "resume=true"]) == 0
    assert_same_weights(one / "model", single / "model", atol=ATOL)


@pytest.mark.slow
def test_sft_under_fsdp_with_bf16_autocast(arena_dir: Path, tmp_path: Path) -> None:
    """bf16 autocast under FSDP: the layers gather bf16 copies and reduce float32 gradients into float32
    master weights, which model/ holds; the losses follow the one-process autocast run's within autocast
    tolerance (the bf16 roundings differ: FSDP also rounds the norm weights)."""
    args = [*sft_args(arena_dir), "train.max_steps=4", "train.save_every=0", "train.micro_batch_size=2"]
    args = [a for a in args if not a.startswith("train.mixed_precision")] + ["train.mixed_precision=bf16"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sft", *args, f"output_dir={one}"]) == 0
    launch("sft", [*args, f"output_dir={two}"], config=FSDP_CONFIG)
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    assert {t.dtype for t in load_weights(two / "model").values()} == {torch.float32}


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny π0 (hidden 32, 2 layers, tied embeddings) after 5 SFT steps, and next to it (``../../reward``)
    a BT reward model for PPO."""
    pi0, _ = train_pi0_and_reward(arena_dir, tmp_path_factory.mktemp("pi0"))
    return pi0


def dpo_args(arena: Path, pi0: Path, steps: int) -> list[str]:
    return [
        f"policy.name_or_path={pi0}",
        f"data.path={arena / 'pairs.jsonl'}",
        "data.eval_fraction=0.1",
        "data.max_length=64",
        *TRAIN,
        "train.schedule=constant",
        "train.eval_every=2",
        f"train.max_steps={steps}",
        "train.save_every=2",
        "train.micro_batch_size=4",
        "eval.prompts=4",  # the final measurement samples from the sharded policy
        "eval.samples_per_prompt=1",
        "eval.reference_samples_per_prompt=1",
        "sampling.max_new_tokens=6",
    ]


def kill_after_first_checkpoint(job: str, args: list[str], run_dir: Path) -> None:
    """Launch ``job`` as two FSDP processes and SIGKILL the launcher and its workers once the run has
    written its first checkpoint."""
    proc = subprocess.Popen(
        launch_command(job, [*args, f"output_dir={run_dir}"], config=FSDP_CONFIG),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=job_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(run_dir) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the job ended before the kill: {proc.stderr.read()[-3000:]}"
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
    finally:
        proc.kill()
        proc.communicate()
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()


@pytest.mark.slow
def test_dpo_under_fsdp_equals_one_process_saves_and_resumes_after_sigkill(
    arena_dir: Path, pi0: Path, tmp_path: Path
) -> None:
    args = dpo_args(arena_dir, pi0, steps=30)
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    assert main(["dpo", *args, f"output_dir={one}"]) == 0
    launch("dpo", [*args, f"output_dir={two}"], config=FSDP_CONFIG)

    assert_same_weights(one / "model", two / "model", atol=ATOL)
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    start, end = load_weights(pi0), load_weights(two / "model")
    assert any(not start[k].equal(end[k]) for k in start)  # it trained
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval"]["eval_loss"] == pytest.approx(m1["eval"]["eval_loss"], rel=1e-5)
    assert m2["final"]["eval/kl_to_ref"] == pytest.approx(m1["final"]["eval/kl_to_ref"], abs=1e-3)
    ckpt1, ckpt2 = latest_checkpoint(one), latest_checkpoint(two)
    assert_same_weights(ckpt1, ckpt2, atol=ATOL)
    assert_same_optimizer_state(ckpt1, ckpt2)
    assert_loads_as_plain_model(two / "model", one / "model")

    kill_after_first_checkpoint("dpo", args, killed)
    launch("dpo", [*args, f"output_dir={killed}", "resume=true"], config=FSDP_CONFIG)
    assert_same_weights(two / "model", killed / "model")  # bit for bit
    assert losses(killed) == losses(two)


def online_dpo_args(pi0: Path) -> list[str]:
    train = ["train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-2", "train.mixed_precision=no"]
    sampling = ["sampling.prompts_per_iteration=4", "sampling.samples_per_prompt=2", "sampling.max_new_tokens=6"]
    online = ["mode=online", "online.rounds=2", "online.steps_per_round=2", "prompts.source=arena"]
    return [f"policy.name_or_path={pi0}", *online, *sampling, *train, *EVAL]


POLICY_CASES = {
    # id: (job, its settings); each checkpoints after every iteration or round
    "selfplay-inpo": ("selfplay", lambda pi0: [*selfplay_args(pi0, "inpo"), "train.micro_batch_size=4"]),
    "selfplay-nash_md": ("selfplay", lambda pi0: [*selfplay_args(pi0, "nash_md"), "train.micro_batch_size=4"]),
    "selfplay-extragradient": (  # restores a snapshot of the sharded policy mid-iteration
        "selfplay",
        lambda pi0: [*selfplay_args(pi0, "extragradient"), "train.micro_batch_size=4"],
    ),
    # 3 prompts × 1 pair = 3 examples a step: 2 micro-batches of 1 on one process, 1 on the other, which repeats
    # its last one with a zero loss to stay in step (sharding.micro_batch_rounds)
    "selfplay-uneven": (
        "selfplay",
        lambda pi0: [*selfplay_args(pi0), "sampling.prompts_per_iteration=3", "train.micro_batch_size=1"],
    ),
    "dpo-online": ("dpo", online_dpo_args),
    "ppo": (  # every process samples the whole rollout; two mini-batches of 4 per epoch, each process on 2 rows
        "ppo",
        lambda pi0: [
            *ppo_args(pi0),
            "ppo.epochs=2",
            "train.mini_batch_size=4",
            "train.micro_batch_size=1",
            "train.save_every=1",
        ],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_on_policy_trainers_under_fsdp_equal_one_process_and_resume(case: str, pi0: Path, tmp_path: Path) -> None:
    job, settings = POLICY_CASES[case]
    args = settings(pi0)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([job, *args, f"output_dir={one}"]) == 0
    launch(job, [*args, f"output_dir={two}"], config=FSDP_CONFIG)
    assert_same_weights(one / "model", two / "model", atol=ATOL)
    start, end = load_weights(pi0), load_weights(two / "model")
    assert any(not start[k].equal(end[k]) for k in start)  # it trained
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    ckpt1, ckpt2 = one / "checkpoints" / "step-00000001", two / "checkpoints" / "step-00000001"
    assert_same_weights(ckpt1, ckpt2, atol=ATOL)
    assert_same_optimizer_state(ckpt1, ckpt2)
    assert_loads_as_plain_model(two / "model", one / "model")
    if job == "ppo":
        heads = [load_file(str(d / "value_head.safetensors")) for d in (one, two)]
        for name, tensor in heads[0].items():
            torch.testing.assert_close(heads[1][name], tensor, rtol=0, atol=ATOL, msg=name)

    resumed = cut_after_checkpoint(two, tmp_path / "resumed")
    for later in sorted((resumed / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)  # cut after the first iteration
    launch(job, [*args, f"output_dir={resumed}", "resume=true"], config=FSDP_CONFIG)
    assert_same_weights(two / "model", resumed / "model")  # bit for bit


def pm_args(arena: Path) -> list[str]:
    """train-pm, the GPM kind with a fine-tuned backbone: what FSDP shards."""
    return [
        *tiny_pm_args(arena),
        "train.max_steps=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.micro_batch_size=4",
    ]


@pytest.mark.slow
def test_train_pm_under_fsdp_equals_one_process_saves_and_resumes(arena_dir: Path, tmp_path: Path) -> None:
    args = pm_args(arena_dir)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train-pm", *args, f"output_dir={one}"]) == 0
    launch("train-pm", [*args, f"output_dir={two}"], config=FSDP_CONFIG)

    assert_same_weights(one / "model", two / "model", atol=ATOL)  # model/backbone and heads
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval"]["log_loss"] == pytest.approx(m1["eval"]["log_loss"], rel=1e-4)
    ckpt1, ckpt2 = one / "checkpoints" / "step-00000002", two / "checkpoints" / "step-00000002"
    assert_same_weights(ckpt1, ckpt2, atol=ATOL)
    assert_same_optimizer_state(ckpt1, ckpt2)
    a, b = (load_preference_model(d / "model") for d in (one, two))  # its backbone with from_pretrained
    prompts, x, y = ["add 2 and 3"] * 2, ["five", "it is 5"], ["six", "formal: 5"]
    torch.testing.assert_close(b.preference(prompts, x, y), a.preference(prompts, x, y), rtol=0, atol=1e-4)

    resumed = cut_after_checkpoint(two, tmp_path / "resumed")
    launch("train-pm", [*args, f"output_dir={resumed}", "resume=true"], config=FSDP_CONFIG)
    assert_same_weights(two / "model", resumed / "model")  # bit for bit


# -- what sharding does not support: one line each -----------------------------------------------------


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "deepspeed is not installed"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 1 is not supported"),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"},
            "fsdp_cpu_ram_efficient_loading",
        ),
    ],
)
def test_unsupported_launcher_settings_fail_with_one_line(
    env: dict[str, str], message: str, arena_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [*sft_args(arena_dir), "train.max_steps=1", "train.save_every=0", f"output_dir={tmp_path / 'run'}"]
    assert main(["sft", *args]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("stage", ["2", "3"])
def test_deepspeed_with_deepspeed_installed_is_refused(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
    monkeypatch.setattr(sharding.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(PrefgameError, match="^DeepSpeed is not supported: its engine applies the update inside"):
        sharding.check_launcher()


FSDP = SimpleNamespace(distributed_type=DistributedType.FSDP)
DDP = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)


def test_lora_is_refused_under_fsdp() -> None:
    from prefgame.lm import ResponseLogps
    from prefgame.lora import LoraConfig, apply_lora

    model = AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    module = ResponseLogps(apply_lora(model, LoraConfig(enabled=True, r=2), seed=0))
    with pytest.raises(PrefgameError, match=r"^lora.enabled=true is not supported under FSDP .*configs/accelerate"):
        sharding.prepare(FSDP, module, None)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        (["model.backbone.freeze=true"], "model.backbone.freeze=true"),
        (["model.kind=gated", "model.gated.stage1=sgd", "data.ratings_path=RATINGS"], "model.kind=gated"),
    ],
)
def test_train_pm_settings_fsdp_does_not_shard_fail_with_one_line(
    settings: list[str], name: str, arena_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(sharding, "is_fsdp", lambda acc: True)  # as under an FSDP launch, without one
    args = [*tiny_pm_args(arena_dir), *(a.replace("RATINGS", str(arena_dir / "ratings.jsonl")) for a in settings)]
    assert main(["train-pm", *args, "train.max_steps=1", f"output_dir={tmp_path / 'run'}"]) == 2
    line = one_error_line(capsys)
    assert f"{name} is not supported under FSDP (train-pm shards a fine-tuned backbone" in line, line
    assert "configs/accelerate/ddp.yaml" in line
    assert not (tmp_path / "run" / "model").exists()


def test_settings_that_keep_a_whole_copy_are_refused_under_fsdp() -> None:
    settings = {"train.average_from ≥ 0": True, "sampling.backend=vllm": False}
    with pytest.raises(PrefgameError, match=r"^train.average_from ≥ 0 is not supported under FSDP \(why\); change"):
        sharding.refuse_settings(FSDP, settings, "why")
    sharding.refuse_settings(DDP, settings, "why")  # DDP: fine
