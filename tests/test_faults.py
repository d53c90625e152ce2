"""Faults: a job killed with SIGKILL at a random point resumes to the same result as an uninterrupted
run and never leaves a half-written output that looks complete; a non-finite loss skips the step and
repeated ones stop the run without saving a model; bad input through the real command line gives one
clear error line and exit code 2; checkpoints load without unpickling; API keys stay out of outputs.

The kill point is drawn at random (after the first checkpoint, before the end); the seed is in every
assertion message, and ``PREFGAME_FAULT_SEED=N`` replays a failing draw.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny
from helpers.launch import REPO, assert_same_weights, logged_steps, start_prefgame
from safetensors.torch import load_file

from prefgame.cli import main
from prefgame.config import load_config
from prefgame.errors import PrefgameError
from prefgame.train import sft
from prefgame.train.engine import NonFiniteGuard, latest_checkpoint


def sft_args(arena: Path, out: Path, *extra: str) -> list[str]:
    settings = ["data.eval_fraction=0.05", "train.micro_batch_size=8", "train.warmup_steps=2"]
    return [f"output_dir={out}", *tiny.sft_args(arena), *settings, *extra]


def pm_args(arena: Path, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", *tiny.pm_args(arena), "train.micro_batch_size=8", "train.warmup_steps=2", *extra]


def assert_nothing_half_written(run_dir: Path, note: str) -> None:
    """What a killed run leaves: no metrics.json and no model (it ends the run), only complete checkpoints
    (every file readable: safetensors, optimizer state without pickles, trainer state), and a metrics.jsonl
    whose lines parse except possibly a cut last one."""
    assert not (run_dir / "metrics.json").exists(), note
    assert not (run_dir / "model").exists(), note
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts, note
    for ckpt in ckpts:
        for path in ckpt.glob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(str(path)).values()), (note, path)
        torch.load(ckpt / "optimizer.pt", weights_only=True)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert ckpt.name == f"step-{state['step']:08d}", note
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)


def without_timings(obj):
    """``obj`` without the wall-clock figures (keys ending in 'seconds'), at any depth."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not k.endswith("seconds")}
    return obj


def metric_rows(run_dir: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- SIGKILL at a random point, then resume=true -----------------------------------------------------


def dpo_args(arena: Path, pi0: Path, out: Path, *extra: str) -> list[str]:
    settings = ["data.eval_fraction=0.05", "data.max_length=64", "train.micro_batch_size=8", "train.warmup_steps=2"]
    return [f"output_dir={out}", f"policy.name_or_path={pi0}", f"data.path={arena / 'pairs.jsonl'}"] + [
        *tiny.TRAIN,
        *settings,
        *extra,
    ]


def selfplay_args(arena: Path, pi0: Path, out: Path, *extra: str) -> list[str]:
    sampling = ["sampling.prompts_per_iteration=4", "sampling.samples_per_prompt=2", "sampling.max_new_tokens=6"]
    evaluation = ["eval.every=0", "eval.prompts=4", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1"]
    train = ["train.steps_per_iteration=2", "train.batch_size=8", "train.lr=1e-2", "train.mixed_precision=no"]
    return [f"output_dir={out}", f"policy.name_or_path={pi0}", "algorithm=inpo", *sampling, *evaluation, *train, *extra]


def step_settings(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", "train.save_every=5", "train.keep_checkpoints=2"]


KILL_CASES = {
    # job: (settings (arena, π0, output_dir, *extra), run length, steps until the first checkpoint)
    "sft": (lambda arena, pi0, out, *extra: sft_args(arena, out, *step_settings(60), *extra), 60, 5),
    "train-pm": (lambda arena, pi0, out, *extra: pm_args(arena, out, *step_settings(40), *extra), 40, 5),
    "dpo": (lambda arena, pi0, out, *extra: dpo_args(arena, pi0, out, *step_settings(40), *extra), 40, 5),
    # a checkpoint after every iteration; metrics.jsonl's "step" is the iteration
    "selfplay": (lambda arena, pi0, out, *extra: selfplay_args(arena, pi0, out, "train.iterations=12", *extra), 12, 1),
}


def ppo_args(arena: Path, pi0: Path, out: Path, *extra: str) -> list[str]:
    sampling = ["sampling.max_new_tokens=6", "eval.every=0", "eval.prompts=4", "eval.samples_per_prompt=1"]
    reward = [f"reward.path={pi0.parent.parent / 'reward'}", "reward.normalize_samples=8"]
    train = ["train.rollout_batch_size=8", "train.mini_batch_size=8", "ppo.epochs=1", "train.mixed_precision=no"]
    checkpoints = ["train.save_every=1", "train.keep_checkpoints=2", "eval.reference_samples_per_prompt=1"]
    return [f"output_dir={out}", f"policy.name_or_path={pi0}", *reward, *sampling, *train, *checkpoints, *extra]


KILL_CASES["ppo"] = (lambda arena, pi0, out, *extra: ppo_args(arena, pi0, out, "train.iterations=12", *extra), 12, 1)
KNOWN_BUGS: dict[str, str] = {}  # job -> the precise bug that makes its kill test fail (strict xfail)


@pytest.mark.parametrize(
    "job",
    [pytest.param(job, marks=pytest.mark.xfail(job in KNOWN_BUGS, reason=KNOWN_BUGS.get(job, ""), strict=True))
     for job in KILL_CASES],
)  # fmt: skip
def test_sigkill_then_resume_equals_uninterrupted(job: str, arena_dir: Path, pi0: Path, tmp_path: Path) -> None:
    args, steps, first = KILL_CASES[job]
    seed = int(os.environ.get("PREFGAME_FAULT_SEED", time.time_ns() % 2**31))
    kill_at = random.Random(seed).randint(first + 1, steps - 3)  # a logged step after the first checkpoint
    note = f"{job}: PREFGAME_FAULT_SEED={seed} (kill after step {kill_at})"

    killed = tmp_path / "killed"
    proc = start_prefgame(job, *args(arena_dir, pi0, killed))
    try:
        deadline = time.monotonic() + 240
        while logged_steps(killed) < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"{note}: the job ended before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, note
    assert_nothing_half_written(killed, note)
    last = latest_checkpoint(killed)
    assert last is not None and 0 < int(last.name.split("-")[1]) < steps, note

    stale = killed / "checkpoints" / ".step-00000099.x1y2.tmp"  # what a kill during a checkpoint write leaves
    stale.mkdir()
    (stale / "trainer_state.json").write_text('{"step": 99')
    full = tmp_path / "full"
    assert main([job, *args(arena_dir, pi0, full)]) == 0
    assert main([job, *args(arena_dir, pi0, killed, "resume=true")]) == 0, note
    assert f"resumed from {last}" in (killed / "log.txt").read_text(), note  # not from the stale folder
    if latest_checkpoint(killed) != last:
        assert not stale.exists(), note  # removed by the next checkpoint write
    assert_same_weights(full / "model", killed / "model")  # bit for bit
    assert metric_rows(killed) == metric_rows(full), note
    # metrics.json agrees except for timings and paths naming the output folder
    final, resumed = (json.loads((d / "metrics.json").read_text().replace(str(d), "OUT")) for d in (full, killed))
    assert without_timings(resumed) == without_timings(final), note


def test_fresh_run_discards_checkpoints_of_an_earlier_run(arena_dir: Path, tmp_path: Path) -> None:
    # A finished 12-step run keeps checkpoint 10; a new 6-step run in the same folder (resume=false) must
    # not leave it there, or a resume after a kill would continue the old run at step 10.
    out = tmp_path / "run"
    assert main(["sft", *sft_args(arena_dir, out, "train.max_steps=12", "train.save_every=5")]) == 0
    assert latest_checkpoint(out).name == "step-00000010"
    assert main(["sft", *sft_args(arena_dir, out, "train.max_steps=6", "train.save_every=5", "overwrite=true")]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000005"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


# -- non-finite losses --------------------------------------------------------------------------------


def test_guard_counts_consecutive_non_finite_steps_and_stops_at_the_limit() -> None:
    guard = NonFiniteGuard(limit=2)
    assert guard.check(0, torch.tensor(1.0), 0.5)
    assert not guard.check(1, torch.tensor(math.nan), 0.5)  # non-finite loss
    assert guard.check(2, torch.tensor(1.0), 0.5)  # a finite step resets the count
    assert not guard.check(3, torch.tensor(1.0), math.inf)  # non-finite gradient
    with pytest.raises(PrefgameError) as err:
        guard.check(4, torch.tensor(math.inf), math.nan)
    assert "2 consecutive non-finite steps at step 4" in str(err.value) and "\n" not in str(err.value)
    assert guard.total == 3


class PoisonedLogps(sft.ResponseLogps):
    """The SFT forward with NaN log-probabilities on the training forward passes listed in ``poisoned``."""

    poisoned: set[int] = set()
    calls = 0

    def forward(self, input_ids, attention_mask, response_mask):
        logps = super().forward(input_ids, attention_mask, response_mask)
        if torch.is_grad_enabled():
            call = PoisonedLogps.calls
            PoisonedLogps.calls += 1
            if call in PoisonedLogps.poisoned:
                return logps * math.nan
        return logps


def poison(monkeypatch, steps: set[int]) -> None:
    monkeypatch.setattr(PoisonedLogps, "poisoned", steps)
    monkeypatch.setattr(PoisonedLogps, "calls", 0)
    monkeypatch.setattr(sft, "ResponseLogps", PoisonedLogps)


def test_a_non_finite_step_is_skipped_and_logged(arena_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # Step 0 of 1 is NaN: the update is skipped, so the saved model is the seeded initialization.
    poison(monkeypatch, {0})
    out = tmp_path / "run"
    assert main(["sft", *sft_args(arena_dir, out, "train.max_steps=1", "train.save_every=0")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonfinite_steps"] == 1
    assert "step 0: non-finite loss or gradient (loss=nan); update skipped" in (out / "log.txt").read_text()
    cfg = load_config(sft.SFTConfig, out / "config.yaml")
    initial, _ = sft.build_model(cfg.model, cfg.train.seed)
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert saved  # tied weights are saved once
    for name, tensor in saved.items():
        assert torch.equal(initial.state_dict()[name], tensor), name


def test_repeated_non_finite_steps_stop_without_a_model(arena_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # Steps 0-1 train; from step 2 on every loss is NaN: with the limit 3 the run stops at step 4.
    poison(monkeypatch, set(range(2, 100)))
    out = tmp_path / "run"
    args = sft_args(arena_dir, out, "train.max_steps=20", "train.save_every=1", "train.max_nonfinite_steps=3")
    capsys.readouterr()
    assert main(["sft", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("prefgame sft: error:")]
    assert errors == [err[-1]]
    assert "3 consecutive non-finite steps at step 4: training diverged; lower train.lr" in errors[0]
    assert not (out / "metrics.json").exists() and not (out / "model").exists()
    assert latest_checkpoint(out).name == "step-00000004"  # the skipped steps left the weights finite
    assert_nothing_half_written(out, "non-finite")


# -- no pickles -----------------------------------------------------------------------------------------


def test_checkpoints_and_models_load_without_pickles(arena_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["sft", *sft_args(arena_dir, out, "train.max_steps=4", "train.save_every=2")]) == 0
    ckpt = latest_checkpoint(out)
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)  # tensors and plain containers only
    assert set(state) == {"optimizer", "scheduler"}
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pkl", ".pickle", ".pth")]


def test_package_never_unpickles() -> None:
    # Every torch.load in the package passes weights_only=True; nothing calls pickle, joblib or numpy's
    # allow_pickle.
    offenders = []
    for path in sorted((REPO / "prefgame").rglob("*.py")):
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(", text):
            args = text[call.end() : text.find("\n", text.find(")", call.end()))]
            if "weights_only=True" not in args:
                offenders.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
        for pattern in (r"\bpickle\.loads?\(", r"\bjoblib\.load\(", r"allow_pickle\s*=\s*True"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert offenders == []


# -- bad input through the real command line ----------------------------------------------------------

SECRET = "sk-test-9f8e7d6c5b4a-do-not-log"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    return f"http://127.0.0.1:{port}/v1"


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD_SFT = '{"prompt": "name a fruit", "response": "an apple"}'
GOOD_PAIR = '{"prompt": "name a fruit", "chosen": "an apple", "rejected": "a rock", "label": 1.0}'


def bad_inputs(root: Path, arena: Path, pi0: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name → (command line, fragments the error line must contain)."""
    d = root / "data"
    d.mkdir()
    malformed = write_lines(
        d / "malformed.jsonl", GOOD_SFT, '{"prompt": "name a fruit", "response": "a pear"', GOOD_SFT
    )
    wrong_type = write_lines(d / "wrong_type.jsonl", GOOD_SFT, '{"prompt": "name a fruit", "response": {"text": "x"}}')
    empty = write_lines(d / "empty.jsonl", GOOD_SFT, '{"prompt": "name a fruit", "response": "   "}')
    label = write_lines(d / "label.jsonl", GOOD_PAIR, GOOD_PAIR.replace("1.0", "1.7"))
    label_type = write_lines(d / "label_type.jsonl", GOOD_PAIR, GOOD_PAIR.replace("1.0", '"yes"'))
    empty_pair = write_lines(d / "empty_pair.jsonl", GOOD_PAIR.replace('"a rock"', '""'))
    unknown = d / "unknown.yaml"
    unknown.write_text("train:\n  lr: 0.01\n  max_step: 3\n")
    missing = root / "no-such-model"
    url = closed_port_url()
    judge = [
        f"policy.name_or_path={pi0}",
        "oracle.kind=factory",
        "oracle.factory=helpers.judge:llm_judge",
        f"oracle.options={{model: m, base_url: {url}, max_retries: 1, backoff_base_s: 0.01, cache_dir: null}}",
        "sampling.prompts_per_iteration=2",
        "sampling.samples_per_prompt=2",
        "sampling.max_new_tokens=4",
        "train.iterations=1",
        "eval.prompts=2",
    ]
    return {
        "malformed_jsonl_line": (["sft", f"data.path={malformed}"], [str(malformed), "line 2", "malformed JSON"]),
        "wrong_column_type": (["sft", f"data.path={wrong_type}"], ["row 1", "'response'", "expected non-empty text"]),
        "empty_response": (["sft", f"data.path={empty}"], ["row 1", "'response'", "expected non-empty text"]),
        "empty_response_pair": (
            ["dpo", f"policy.name_or_path={pi0}", f"data.path={empty_pair}"],
            ["row 0", "'rejected'", "empty response"],
        ),
        "label_out_of_range": (["train-pm", f"data.path={label}"], ["row 1", "'label'", "out of [0, 1]", "1.7"]),
        "label_wrong_type": (["train-pm", f"data.path={label_type}"], ["row 1", "'label'", "expected a number"]),
        "unknown_key_in_config_file": (
            ["train-pm", "--config", str(unknown), f"data.path={arena / 'pairs.jsonl'}"],
            ["unknown config key 'train.max_step'", "did you mean 'train.max_steps'?"],
        ),
        "missing_model_path": (
            ["sft", f"model.name_or_path={missing}", f"data.path={arena / 'sft.jsonl'}"],
            [str(missing)],
        ),
        "missing_policy_path": (
            ["dpo", f"policy.name_or_path={missing}", f"data.path={arena / 'pairs.jsonl'}"],
            [str(missing)],
        ),
        "judge_endpoint_down": (["selfplay", *judge], [f"cannot reach the judge endpoint {url}", "start the server"]),
    }


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny π0 and next to it (``../../reward``) a BT reward model for PPO."""
    policy, _ = tiny.train_pi0_and_reward(arena_dir, tmp_path_factory.mktemp("pi0"))
    return policy


# Through `python -m prefgame` in subprocesses, all started at once: one per kind of failure (data
# loading, model loading, an oracle that fails mid-run). The others run `main` in this process —
# the same code path without the interpreter start-up, which costs 10-20 s per case on a busy 2-core box.
SUBPROCESS = ("malformed_jsonl_line", "missing_policy_path", "judge_endpoint_down")


@pytest.fixture(scope="module")
def bad_input_cases(arena_dir: Path, pi0: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name → (command line with output_dir, fragments, output_dir, subprocess result or None)."""
    root = tmp_path_factory.mktemp("bad")
    cases, procs = {}, {}
    for name, (argv, fragments) in bad_inputs(root, arena_dir, pi0).items():
        out = root / name
        cases[name] = ([*argv, f"output_dir={out}"], fragments, out)
        if name in SUBPROCESS:
            procs[name] = start_prefgame(*cases[name][0], cwd=root, OPENAI_API_KEY=SECRET)
    results = {name: (*proc.communicate(timeout=300), proc.returncode) for name, proc in procs.items()}
    return {name: (*case, results.get(name)) for name, case in cases.items()}


CASES = [
    "malformed_jsonl_line",
    "wrong_column_type",
    "empty_response",
    "empty_response_pair",
    "label_out_of_range",
    "label_wrong_type",
    "unknown_key_in_config_file",
    "missing_model_path",
    "missing_policy_path",
    "judge_endpoint_down",
]
# tqdm bars (datasets, transformers' weight loading) and the job's own log lines are not errors
PROGRESS = re.compile(r"(it/s|s/it|examples/s)\]$|^\[prefgame\] |^\s*$")


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line_and_exit_2(name: str, bad_input_cases: dict, capsys, monkeypatch) -> None:
    argv, fragments, out, result = bad_input_cases[name]
    job = argv[0]
    if result is None:
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        monkeypatch.chdir(out.parent)
        capsys.readouterr()
        code = main(argv)
        stdout, stderr = capsys.readouterr()
    else:
        stdout, stderr, code = result
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not PROGRESS.search(line)]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"prefgame {job}: error: ") and stderr.strip().endswith(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (out / "metrics.json").exists() and not (out / "model").exists()  # nothing looks complete
    for text in (stdout, stderr, *(p.read_text() for p in out.rglob("*") if p.is_file())):
        assert SECRET not in text and SECRET[-12:] not in text  # the API key is never written or printed


def test_judge_run_records_its_settings_but_not_the_key(bad_input_cases: dict) -> None:
    _, _, out, _ = bad_input_cases["judge_endpoint_down"]
    config = (out / "config.yaml").read_text()
    assert "helpers.judge:llm_judge" in config and "max_retries: 1" in config
    assert "retry" in (out / "log.txt").read_text()  # the log is there and says what happened
