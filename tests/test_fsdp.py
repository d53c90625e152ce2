"""Sharded training: FSDP2 on two CPU processes (gloo, ``accelerate launch --config_file
configs/accelerate/fsdp_cpu_2proc.yaml -m prefgame ...``) trains, saves and resumes like one process
without FSDP.

What is checked, for ``sft`` (default run) and offline ``dpo`` (``-m slow``, with the end-of-run
measurement that samples from the sharded policy):

* the FSDP run ends with the weights of a one-process run with the same global batch, within the DDP
  tests' tolerance (tests/test_distributed.py: float32 summation order), and logs the same losses;
* its checkpoint holds complete tensors and the full optimizer state in the layout of the unsharded run;
* ``model/`` is a normal transformers checkpoint: ``from_pretrained`` loads it into a plain model, with
  the embeddings still tied, whose logits are the one-process model's;
* a run cut after its checkpoint resumes, as two FSDP processes again, to the uninterrupted run's weights
  bit for bit: in the default test by resuming a copy of the folder as a kill after the checkpoint leaves
  it (the checkpoint, no ``model/``, no ``metrics.json``), in the slow one by SIGKILL of the running job;
  one process without FSDP resumes the same checkpoint too;
* ``selfplay`` (INPO, Nash-MD, extragradient) and online ``dpo`` the same way (``-m slow``).

Settings prefgame does not support under sharding fail with one line (in-process, no launch).
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
from helpers.tiny import TRAIN, sft_args
from transformers import AutoModelForCausalLM

from prefgame.cli import main
from prefgame.errors import PrefgameError
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


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny π0 (hidden 32, 2 layers, tied embeddings) after 5 SFT steps."""
    out = tmp_path_factory.mktemp("pi0")
    sft = [*sft_args(arena_dir), "train.max_steps=5", "train.micro_batch_size=8", "train.save_every=0"]
    assert main(["sft", *sft, f"output_dir={out}"]) == 0
    return out / "model"


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


def selfplay_args(pi0: Path, algorithm: str) -> list[str]:
    return [
        f"policy.name_or_path={pi0}",
        f"algorithm={algorithm}",
        "sampling.prompts_per_iteration=4",
        "sampling.samples_per_prompt=2",
        "sampling.max_new_tokens=6",
        "train.iterations=2",
        "train.steps_per_iteration=2",
        "train.batch_size=8",
        "train.micro_batch_size=4",
        "train.lr=1e-2",
        "train.mixed_precision=no",
        "eval.every=0",
        "eval.prompts=4",
        "eval.samples_per_prompt=1",
        "eval.reference_samples_per_prompt=1",
    ]


def online_dpo_args(pi0: Path, algorithm: str) -> list[str]:
    sampling = selfplay_args(pi0, "inpo")[2:5]
    evaluation = selfplay_args(pi0, "inpo")[-3:]
    train = ["train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-2", "train.mixed_precision=no"]
    online = ["mode=online", "online.rounds=2", "online.steps_per_round=2", "prompts.source=arena"]
    return [f"policy.name_or_path={pi0}", *online, *sampling, *train, *evaluation]


POLICY_CASES = {
    # id: (job, settings (π0, algorithm), algorithm); a checkpoint after every iteration or round
    "selfplay-inpo": ("selfplay", selfplay_args, "inpo"),
    "selfplay-nash_md": ("selfplay", selfplay_args, "nash_md"),  # samples the mixture with π0
    "selfplay-extragradient": ("selfplay", selfplay_args, "extragradient"),  # restores a snapshot mid-iteration
    "dpo-online": ("dpo", online_dpo_args, ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_on_policy_trainers_under_fsdp_equal_one_process_and_resume(case: str, pi0: Path, tmp_path: Path) -> None:
    job, settings, algorithm = POLICY_CASES[case]
    args = settings(pi0, algorithm)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([job, *args, f"output_dir={one}"]) == 0
    launch(job, [*args, f"output_dir={two}"], config=FSDP_CONFIG)
    assert_same_weights(one / "model", two / "model", atol=ATOL)
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    assert_same_weights(one / "checkpoints" / "step-00000001", two / "checkpoints" / "step-00000001", atol=ATOL)

    resumed = cut_after_checkpoint(two, tmp_path / "resumed")
    shutil.rmtree(resumed / "checkpoints" / "step-00000002")  # cut after the first iteration
    launch(job, [*args, f"output_dir={resumed}", "resume=true"], config=FSDP_CONFIG)
    assert_same_weights(two / "model", resumed / "model")  # bit for bit


# -- what sharding does not support: one line each -----------------------------------------------------


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
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "model").exists()


def test_zero3_with_deepspeed_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setattr(sharding.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(PrefgameError, match="ZeRO-3 is not supported"):
        sharding.check_launcher()


@pytest.mark.parametrize(("job", "command"), [("pm", "train-pm"), ("ppo", "ppo")])
def test_jobs_not_sharded_yet_say_so(job: str, command: str) -> None:
    with pytest.raises(PrefgameError, match=f"prefgame {command} does not run under FSDP yet"):
        sharding.check_job(SimpleNamespace(distributed_type=DistributedType.FSDP), job)
    sharding.check_job(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), job)  # DDP: fine
    for supported in ("sft", "dpo", "selfplay"):
        sharding.check_job(SimpleNamespace(distributed_type=DistributedType.FSDP), supported)


def test_settings_that_read_whole_parameters_are_refused_under_fsdp() -> None:
    settings = {"train.average_from ≥ 0": True, "sampling.backend=vllm": False}
    with pytest.raises(PrefgameError, match=r"^train.average_from ≥ 0 is not supported under FSDP yet"):
        sharding.refuse_settings(SimpleNamespace(distributed_type=DistributedType.FSDP), settings)
    sharding.refuse_settings(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), settings)
