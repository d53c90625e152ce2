"""Run-folder integrity: one job per output folder, a finished run kept unless ``overwrite=true``, resume
only from a checkpoint and with the recorded configuration, and a folder whose ``config.yaml``, model and
``metrics.json`` always belong to one run (prefgame/run.py ``RunDir.lock`` / ``RunDir.start``, through
``prefgame.train.engine.begin_run`` for the trainers).

Every test's docstring names the item of issue 15 ("Found") it covers. Jobs run through the real command
line: ``prefgame.cli.main`` in this process, or ``python -m prefgame`` where a second process is the point
(a concurrent job, a SIGKILL). The random kill point is drawn from ``PREFGAME_FAULT_SEED`` when set (it is
in the assertion messages, to replay a failing draw).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny
from helpers.launch import REPO, job_env, logged_steps, start_prefgame
from safetensors.torch import load_file, save_file

from prefgame.cli import main
from prefgame.errors import PrefgameError
from prefgame.run import RunDir, atomic_dir

LOCK = ".prefgame.lock"
TRAINERS = ("sft", "train-pm", "dpo", "selfplay", "ppo")
LENGTH = {  # the config key of a run's length, and the metrics.json figure that reports it
    "sft": ("train.max_steps", "steps"),
    "train-pm": ("train.max_steps", "steps"),
    "dpo": ("train.max_steps", "steps"),
    "selfplay": ("train.iterations", "iterations"),
    "ppo": ("train.iterations", "iterations"),
}


# -- tiny jobs -------------------------------------------------------------------------------------------


def trainer_args(job: str, arena: Path, pi0: Path, length: int) -> list[str]:
    """Settings of a few-step run of ``job`` that keeps a checkpoint before its end."""
    if job == "sft":
        return [*tiny.sft_args(arena), f"train.max_steps={length}", "train.micro_batch_size=8", "train.save_every=1"]
    if job == "train-pm":
        frozen = ["model.kind=bt", "model.backbone.freeze=true", "train.micro_batch_size=8"]
        return [*tiny.pm_args(arena), *frozen, f"train.max_steps={length}", "train.save_every=1"]
    policy = [f"policy.name_or_path={pi0}"]
    if job == "dpo":
        data = [f"data.path={arena / 'pairs.jsonl'}", "data.eval_fraction=0", "data.max_length=64"]
        steps = [f"train.max_steps={length}", "train.save_every=1"]
        return [*policy, *data, *tiny.TRAIN, "train.micro_batch_size=8", *steps]
    sampling = ["sampling.max_new_tokens=6", "eval.every=0", "eval.prompts=4", "eval.samples_per_prompt=1"]
    sampling.append("eval.reference_samples_per_prompt=1")
    if job == "selfplay":  # a checkpoint after every iteration
        prompts = ["algorithm=inpo", "sampling.prompts_per_iteration=4", "sampling.samples_per_prompt=2"]
        train = ["train.steps_per_iteration=1", "train.batch_size=8", "train.mixed_precision=no"]
        return [*policy, *prompts, *sampling, *train, f"train.iterations={length}"]
    reward = [f"reward.path={pi0.parent.parent / 'reward'}", "reward.normalize_samples=8"]
    train = ["train.rollout_batch_size=8", "train.mini_batch_size=8", "ppo.epochs=1", "train.mixed_precision=no"]
    return [*policy, *reward, *sampling, *train, "train.save_every=1", f"train.iterations={length}"]


def job_command(job: str, arena: Path, pi0: Path, out: Path) -> list[str]:
    """A valid command line of every job that writes a run folder (trainers at length 2)."""
    if job in TRAINERS:
        return [job, *trainer_args(job, arena, pi0, 2), f"output_dir={out}"]
    if job == "online":
        return ["online", *tiny.online_args(pi0), f"output_dir={out}"]
    if job == "evaluate":
        battles = f"winrate.battles={arena / 'battles.jsonl'}"
        return ["evaluate", "winrate", battles, "n_bootstrap=0", f"output_dir={out}"]
    return [job, f"output_dir={out}"]  # arena, quickstart


ALL_JOBS = (*TRAINERS, "online", "arena", "evaluate", "quickstart")


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny π0 and next to it (``../../reward``) a BT reward model for PPO."""
    policy, _ = tiny.train_pi0_and_reward(arena_dir, tmp_path_factory.mktemp("pi0"))
    return policy


@pytest.fixture(scope="module")
def finished_sft(arena_dir: Path, pi0: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step sft run with its checkpoints at steps 2 and 3 (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "sft"
    assert main([*job_command("sft", arena_dir, pi0, out)[:-1], "train.max_steps=4", f"output_dir={out}"]) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(LOCK))
    return target


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes, but the lock and log.txt (a refused job may
    log why)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (LOCK, "log.txt")
    }


def error_line(capsys, job: str) -> str:
    """The one line a refused job printed (exit 2 asserted by the caller)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"prefgame {job}: error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err[-3000:]
    return lines[0]


def recorded(run: Path, key: str):
    node = yaml.safe_load((run / "config.yaml").read_text())
    for part in key.split("."):
        node = node[part]
    return node


def hold_lock(folder: Path, pid: int = 4242):
    """The folder's lock, taken by this test the way a job takes it (another open file description, so
    a job in this process cannot take it either); returns the descriptor."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    info = {"pid": pid, "host": "testhost", "started": "2020-01-01 00:00:00", "command": "prefgame sft"}
    os.write(fd, json.dumps(info).encode())
    return fd


# -- one job per folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ALL_JOBS)
def test_a_job_on_a_locked_folder_fails_at_once_naming_the_holder(job, arena_dir, pi0, tmp_path, capsys) -> None:
    """Found: "Nothing protects an output folder ... two jobs on one folder both exit 0". Every job takes
    the folder's lock before it writes anything; a held lock ends the job with one line naming the
    holder, and the folder stays as it was."""
    out = tmp_path / "busy"
    fd = hold_lock(out)
    try:
        capsys.readouterr()
        assert main(job_command(job, arena_dir, pi0, out)) == 2
        line = error_line(capsys, job)
    finally:
        os.close(fd)
    assert f"{out} is in use by another prefgame job (pid 4242 on testhost" in line, line
    assert "choose another output_dir" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # no log, no config, nothing else


def test_two_jobs_on_one_folder_one_fails_the_other_finishes_unharmed(arena_dir, pi0, tmp_path, capsys) -> None:
    """Found: "two jobs on one folder both exit 0 with their metrics.jsonl lines interleaved". A second
    sft on the folder of a running one fails with one line naming the first; the first finishes with its
    own config.yaml, one metrics.jsonl line per step and a metrics.json of its own."""
    out = tmp_path / "shared"
    first = [*trainer_args("sft", arena_dir, pi0, 100), "train.save_every=0", f"output_dir={out}"]
    proc = start_prefgame("sft", *first)
    try:
        deadline = time.monotonic() + 120
        while logged_steps(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        capsys.readouterr()
        second = [*trainer_args("sft", arena_dir, pi0, 3), "train.lr=0.5", f"output_dir={out}"]
        assert main(["sft", *second]) == 2
        line = error_line(capsys, "sft")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert f"is in use by another prefgame job (pid {proc.pid} on " in line and "prefgame sft" in line, line
    assert recorded(out, "train.lr") == 0.003 and recorded(out, "train.max_steps") == 100
    steps = [json.loads(row)["step"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 101))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 100


def test_the_lock_goes_with_its_holder_even_when_killed(tmp_path) -> None:
    """Found: "Nothing protects an output folder". The lock names its holder while it lives and is free
    again once the holder is killed (SIGKILL: no clean-up ran)."""
    out = tmp_path / "run"
    script = f"from prefgame.run import RunDir; RunDir({str(out)!r}).lock(); print('locked', flush=True); "
    script += "import time; time.sleep(120)"
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=job_env(PYTHONPATH=str(REPO))
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PrefgameError, match=f"in use by another prefgame job \\(pid {holder.pid} on "):
            RunDir(out).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    again = RunDir(out)
    again.lock()
    again.close()


def test_the_other_processes_of_a_launch_share_the_folder(tmp_path, monkeypatch) -> None:
    """Found: "Nothing protects an output folder" (multi-process launches). Only the main process of a
    torchrun / accelerate launch takes the lock (RANK 0); the others share the folder with it."""
    out = tmp_path / "run"
    fd = hold_lock(out)
    try:
        monkeypatch.setenv("RANK", "1")
        RunDir(out).lock()  # rank 1 does not compete with its rank 0
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(PrefgameError, match="in use by another prefgame job"):
            RunDir(out).lock()
    finally:
        os.close(fd)


def test_atomic_dir_swaps_through_a_name_of_its_own(tmp_path, monkeypatch) -> None:
    """Found: "atomic_dir swaps through a fixed .name.old path that two jobs can race on". Each swap moves
    the old version to a name no other swap uses, and leaves another writer's ``.model.old`` alone."""
    import prefgame.run as run_module

    target = tmp_path / "model"
    target.mkdir()
    foreign = tmp_path / ".model.old"  # another writer's swap in flight
    foreign.mkdir()
    (foreign / "weights").write_text("theirs")
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(run_module.os, "replace", lambda a, b: (moved.append(Path(b)), real_replace(a, b)))
    for version in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text(version)
    assert (target / "weights").read_text() == "two"
    swaps = [p for p in moved if p != target]
    assert len(swaps) == 2 and swaps[0] != swaps[1] and foreign not in swaps, swaps
    assert (foreign / "weights").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.old", "model"]  # no swap left behind


# -- a finished run is kept ------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ALL_JOBS)
def test_a_finished_run_is_not_replaced_without_overwrite(job, arena_dir, pi0, tmp_path, capsys) -> None:
    """Found: "re-running a finished job replaces its model without a word". A folder holding a finished
    run (metrics.json and a model) refuses a new run with one line saying how to proceed; nothing in it
    changes."""
    out = tmp_path / "done"
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"weights of the finished run")
    (out / "metrics.json").write_text('{"steps": 1}\n')
    (out / "config.yaml").write_text("output_dir: earlier\n")
    before = snapshot(out)
    capsys.readouterr()
    assert main(job_command(job, arena_dir, pi0, out)) == 2
    line = error_line(capsys, job)
    assert f"{out} holds a finished run (metrics.json) that a new run would replace: add overwrite=true" in line
    assert "or choose another output_dir" in line
    assert snapshot(out) == before


def test_a_finished_stage_of_a_quickstart_is_a_finished_run(tmp_path, capsys) -> None:
    """Found: "re-running a finished job replaces its model without a word" (the quickstart's stages). A
    quickstart folder whose π0 stage finished refuses a fresh quickstart without overwrite=true, and says
    resume=true keeps it."""
    out = tmp_path / "quickstart"
    (out / "pi0" / "model").mkdir(parents=True)
    (out / "pi0" / "metrics.json").write_text("{}\n")
    (out / "config.yaml").write_text("output_dir: earlier\n")
    before = snapshot(out)
    capsys.readouterr()
    assert main(["quickstart", f"output_dir={out}"]) == 2
    line = error_line(capsys, "quickstart")
    assert "holds a finished run (pi0/metrics.json)" in line and "overwrite=true" in line and "resume=true" in line
    assert snapshot(out) == before


def test_overwrite_true_replaces_a_finished_run(finished_sft, arena_dir, pi0, tmp_path) -> None:
    """Found: "re-running a finished job replaces its model without a word" (the way to say so). With
    overwrite=true the new run replaces the finished one: its metrics, config and no checkpoint of the
    earlier run."""
    out = copy_run(finished_sft, tmp_path)
    args = trainer_args("sft", arena_dir, pi0, 3)
    assert main(["sft", *args, "train.save_every=0", "overwrite=true", f"output_dir={out}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert recorded(out, "train.max_steps") == 3 and recorded(out, "overwrite") is True
    assert not (out / "checkpoints").exists()


# -- resume needs a checkpoint ---------------------------------------------------------------------------


@pytest.mark.parametrize("job", (*TRAINERS, "online"))
def test_resume_without_a_checkpoint_is_refused(job, arena_dir, pi0, tmp_path, capsys) -> None:
    """Found: "resume=true without a checkpoint silently starts over". It ends with one line and writes
    no config, metrics or model; the lock is released after the error (a second try gets the same line)."""
    out = tmp_path / "empty"
    for _ in range(2):
        capsys.readouterr()
        assert main([*job_command(job, arena_dir, pi0, out), "resume=true"]) == 2
        line = error_line(capsys, job)
        assert f"resume=true but {out} holds no checkpoint to continue from" in line, line
        assert "resume=auto starts fresh when there is none" in line
    written = {p.name for p in out.iterdir()} - {LOCK, "log.txt"}
    assert written == set()


@pytest.mark.parametrize("resume", ["true", "auto"])
def test_resume_of_a_finished_run_without_checkpoints_keeps_its_model(resume, arena_dir, pi0, tmp_path, capsys):
    """Found: "on a finished run without checkpoints it deletes the finished model and retrains".
    resume=true says there is nothing to continue; resume=auto would start fresh, which needs
    overwrite=true; either way the finished run stays as it was."""
    out = tmp_path / "run"
    args = [*trainer_args("sft", arena_dir, pi0, 2), "train.save_every=0", f"output_dir={out}"]
    assert main(["sft", *args]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["sft", *args, f"resume={resume}"]) == 2
    line = error_line(capsys, "sft")
    assert "holds a finished run (metrics.json)" in line and "overwrite=true" in line, line
    assert snapshot(out) == before


def test_resume_auto_starts_fresh_without_a_checkpoint_and_continues_with_one(arena_dir, pi0, tmp_path) -> None:
    """Found: "resume=true without a checkpoint silently starts over" (the explicit option that does). An
    empty folder with resume=auto starts a run; the same command on its checkpoint continues it."""
    out = tmp_path / "run"
    args = [*trainer_args("sft", arena_dir, pi0, 4), "resume=auto", f"output_dir={out}"]
    assert main(["sft", *args, "train.max_steps=3"]) == 0  # checkpoints at steps 1 and 2
    assert "resumed from" not in (out / "log.txt").read_text()
    assert main(["sft", *args]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step-00000002'} at step 2" in (out / "log.txt").read_text()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


# -- resume keeps the configuration ----------------------------------------------------------------------

REFUSED = {
    "lr": (["train.lr=0.5"], ["train.lr 0.003 → 0.5"]),
    "seed-and-batch": (["train.seed=7", "train.batch_size=16"], ["train.seed 0 → 7", "train.batch_size 8 → 16"]),
    "model-shape": (["model.hidden_size=64"], ["model.hidden_size 32 → 64"]),
    "shorter": (["train.max_steps=3"], ["train.max_steps 4 → 3 (may only grow)"]),
    "data": (["data.max_length=32"], ["data.max_length 64 → 32"]),
}


@pytest.mark.parametrize("name", REFUSED)
def test_resume_refuses_a_changed_configuration(name, finished_sft, arena_dir, pi0, capsys) -> None:
    """Found: "Resume does not check the configuration" (lr, seed and batch size applied silently; a
    changed model.hidden_size a traceback after a new config.yaml was written). The resumed run must have
    the recorded configuration but for the keys safe to change: one line lists every difference, and
    nothing in the folder changes."""
    changes, fragments = REFUSED[name]
    before = snapshot(finished_sft)
    capsys.readouterr()
    args = [*trainer_args("sft", arena_dir, pi0, 4), f"output_dir={finished_sft}", "resume=true", *changes]
    assert main(["sft", *args]) == 2
    line = error_line(capsys, "sft")
    assert f"the configuration differs from the one recorded in {finished_sft / 'config.yaml'}: " in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "undo these changes, or start a new run" in line
    assert snapshot(finished_sft) == before


def test_resume_accepts_the_keys_safe_to_change_and_records_them(finished_sft, arena_dir, pi0, tmp_path) -> None:
    """Found: "Resume does not check the configuration" (what may change). A longer run, another logging
    and checkpoint frequency: accepted, listed in log.txt and recorded in config.yaml."""
    out = copy_run(finished_sft, tmp_path)
    safe = ["train.max_steps=6", "train.log_every=2", "train.save_every=3", "train.keep_checkpoints=1"]
    assert main(["sft", *trainer_args("sft", arena_dir, pi0, 4), f"output_dir={out}", "resume=true", *safe]) == 0
    log = (out / "log.txt").read_text()
    changed = "train.keep_checkpoints 2 → 1, train.max_steps 4 → 6, train.save_every 1 → 3, train.log_every 1 → 2"
    assert f'resuming with changed settings: output_dir "{finished_sft}" → "{out}", {changed}' in log, log
    assert f"resumed from {out / 'checkpoints' / 'step-00000003'} at step 3" in log
    assert recorded(out, "train.max_steps") == 6 and recorded(out, "train.log_every") == 2
    assert recorded(out, "resume") is True
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line_and_writes_nothing(
    finished_sft, arena_dir, pi0, tmp_path, capsys
) -> None:
    """Found: "Changing model.hidden_size ends in a traceback with the new config.yaml already written
    beside the old model and metrics.json". A checkpoint whose tensors do not fit the model (here with an
    accepted config) fails with one line; config.yaml and metrics.json stay those of the finished run."""
    out = copy_run(finished_sft, tmp_path)
    weights = out / "checkpoints" / "step-00000003" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(weights))
    before = snapshot(out)
    capsys.readouterr()
    args = [*trainer_args("sft", arena_dir, pi0, 4), f"output_dir={out}", "resume=true", "train.max_steps=6"]
    assert main(["sft", *args]) == 2
    line = error_line(capsys, "sft")
    assert f"checkpoint {weights.parent} does not fit the model of this run (size mismatch for {name}" in line, line
    assert snapshot(out) == before


# -- metrics.json belongs to the run beside it -----------------------------------------------------------


@pytest.mark.parametrize("job", TRAINERS)
def test_a_stale_metrics_json_is_gone_before_the_first_resumed_step(job, arena_dir, pi0, tmp_path, monkeypatch):
    """Found: "A stale metrics.json survives a resumed run ... it looks finished (same pattern in dpo,
    selfplay, ppo, pm)". A finished run resumed to a longer length: from its first metrics.jsonl line on,
    the folder has no metrics.json and config.yaml records the new length; at the end metrics.json and
    config.yaml agree."""
    key, figure = LENGTH[job]
    out = tmp_path / job
    assert main([*job_command(job, arena_dir, pi0, out)]) == 0
    assert json.loads((out / "metrics.json").read_text())[figure] == 2
    seen = []
    log_metrics = RunDir.log_metrics

    def watch(self, step, metrics):
        seen.append((step, (self.path / "metrics.json").exists(), recorded(self.path, key)))
        log_metrics(self, step, metrics)

    monkeypatch.setattr(RunDir, "log_metrics", watch)
    assert main([*job_command(job, arena_dir, pi0, out), f"{key}=3", "resume=true"]) == 0
    assert seen and all(not stale and length == 3 for _, stale, length in seen), seen
    assert json.loads((out / "metrics.json").read_text())[figure] == 3 == recorded(out, key)


def test_a_resumed_run_killed_at_a_random_point_leaves_no_mismatched_metrics_json(arena_dir, pi0, tmp_path):
    """Found: "A stale metrics.json survives a resumed run: kill a resumed 400-step run and the folder
    holds the old 150-step metrics.json beside a config.yaml for 400 steps". A finished 4-step run is
    resumed to 30 steps and killed with SIGKILL at a random point: whenever the folder holds a
    metrics.json, it reports the length config.yaml records and is newer than the model; a second resume
    then finishes the run."""
    seed = int(os.environ.get("PREFGAME_FAULT_SEED", time.time_ns() % 2**31))
    kill_at = random.Random(seed).randint(4, 30)  # 4: at once (the finished run logged steps 1-4)
    note = f"PREFGAME_FAULT_SEED={seed} (kill after step {kill_at})"
    out = tmp_path / "run"
    args = [*trainer_args("sft", arena_dir, pi0, 4), f"output_dir={out}"]
    assert main(["sft", *args]) == 0
    proc = start_prefgame("sft", *args, "train.max_steps=30", "resume=true")
    try:
        deadline = time.monotonic() + 180
        while logged_steps(out) < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    if (out / "metrics.json").exists():
        assert json.loads((out / "metrics.json").read_text())["steps"] == recorded(out, "train.max_steps"), note
        model = (out / "model" / "model.safetensors").stat().st_mtime_ns
        assert (out / "metrics.json").stat().st_mtime_ns >= model, note
    else:
        assert recorded(out, "train.max_steps") in (4, 30), note
    assert main(["sft", *args, "train.max_steps=30", "resume=true"]) == 0, note
    assert json.loads((out / "metrics.json").read_text())["steps"] == 30 == recorded(out, "train.max_steps"), note
