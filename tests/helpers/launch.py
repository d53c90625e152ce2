"""Run prefgame jobs the way users do — ``python -m prefgame`` or ``accelerate launch -m prefgame`` with
N processes — and compare the weights they save.

The data-parallel harness: :func:`launch` starts a job as ``nproc`` processes on the CPU (gloo) with
``configs/accelerate/cpu_2proc.yaml`` (or another launcher config, e.g. ``FSDP_CONFIG``), one PyTorch
thread each and a free rendezvous port;
:func:`assert_same_weights` compares every tensor of two saved models.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp_cpu_2proc.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job subprocess: one thread, no progress bars, tests/ importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "tests"), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def run_prefgame(*args: str, cwd: Path = REPO, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m prefgame ARGS`` in a subprocess: (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "prefgame", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=job_env(**env),
    )


def start_prefgame(*args: str, cwd: Path = REPO, **env: str) -> subprocess.Popen:
    """``python -m prefgame ARGS`` started in the background (stdout and stderr piped, as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "prefgame", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=job_env(**env),
    )


def logged_steps(run_dir: Path) -> int:
    """The last complete step line of a running job's metrics.jsonl (0 when none)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        with_step = re.match(r'\{"step": (\d+)', line)
        if with_step and line.endswith("}"):
            steps.append(int(with_step.group(1)))
    return max(steps)


def launch_command(job: str, args: list[str], *, nproc: int = 2, config: Path = CPU_CONFIG) -> list[str]:
    """``accelerate launch --config_file CONFIG --num_processes NPROC -m prefgame JOB ARGS`` on a free port."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(nproc),
        "--main_process_port",
        str(free_port()),
        "-m",
        "prefgame",
        job,
        *args,
    ]


def launch(
    job: str, args: list[str], *, nproc: int = 2, config: Path = CPU_CONFIG, cwd: Path = REPO, timeout: float = 300
):
    """``accelerate launch --config_file CONFIG -m prefgame JOB ARGS`` (CONFIG: configs/accelerate/cpu_2proc.yaml
    unless given); fails the test with the job's error output when it does not exit with 0."""
    command = launch_command(job, args, nproc=nproc, config=config)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=job_env())
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"
    return result


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file under ``folder``, keyed ``file:tensor``."""
    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            out[f"{path.relative_to(folder)}:{name}"] = tensor
    assert out, f"no safetensors files under {folder}"
    return out


def assert_same_weights(expected: Path, got: Path, *, atol: float = 0.0) -> None:
    """The models saved in two folders have the same tensors (exactly, or within ``atol``)."""
    a, b = load_weights(expected), load_weights(got)
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)
