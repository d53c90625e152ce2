"""Tests of the ``prefgame`` command line (prefgame.cli): help texts, exit codes, one-line errors.

Most tests call ``main`` in-process (fast); two run ``python -m prefgame`` in a subprocess to check
what a user sees: exit code 2 and a single line on stderr, no traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefgame import cli
from prefgame.cli import JOBS, TOOLS, main
from prefgame.config import iter_keys, load_config

REPO = Path(__file__).resolve().parents[1]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``prefgame argv`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_prefgame(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefgame", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# -- help --------------------------------------------------------------------------------------------


def test_top_level_help_lists_only_the_registered_commands(capsys) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    listing = out.split("positional arguments:")[1].split("options:")[0]
    listed = re.findall(r"^    (\S+)", listing, flags=re.MULTILINE)
    assert listed == [job.name for job in JOBS] + [tool.name for tool in TOOLS]
    flat = " ".join(out.split())
    for command in (*JOBS, *TOOLS):
        assert command.help in flat  # argparse wraps lines; compare without line breaks


def test_no_command_prints_help(capsys) -> None:
    code, out, _ = run_main([], capsys)
    assert code == 0 and "<command>" in out


def test_top_level_help_imports_no_command_module() -> None:
    # Commands load lazily: `prefgame --help` must not import the trainers, the arena or evaluation.
    code = (
        "import sys\nfrom prefgame.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prefgame.train', 'prefgame.arena', "
        "'evaluation'))), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("job", JOBS, ids=[job.name for job in JOBS])
def test_job_help_lists_every_config_key_with_its_meaning(job, capsys) -> None:
    code, out, _ = run_main([job.name, "--help"], capsys)
    assert code == 0
    assert job.example in out
    lines = out.splitlines()
    for key, _, field in iter_keys(cli._load(job.config)):
        at = next((i for i, line in enumerate(lines) if line.startswith(f"  {key} (")), None)
        assert at is not None, f"{key} missing from 'prefgame {job.name} --help'"
        assert lines[at + 1].strip() == field.metadata["help"]


def test_tool_help(capsys) -> None:
    code, out, _ = run_main(["data", "--help"], capsys)
    assert code == 0 and "validate" in out


def test_unknown_command_is_a_usage_error(capsys) -> None:
    code, _, err = run_main(["nosuchcommand"], capsys)
    assert code == 2 and "invalid choice" in err


# -- errors: one line, exit 2 ----------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prefgame sft: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


def test_unknown_key_exits_2_with_one_line() -> None:
    result = run_prefgame("sft", "train.lrr=1")
    assert_one_line_error(result, "unknown config key 'train.lrr'", "did you mean 'train.lr'?")


def test_bad_data_path_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    result = run_prefgame("sft", f"data.path={missing}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert_one_line_error(result, str(missing), "not found")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sft", "--config", "nope.yaml"], "config file not found"),
        (["sft", "train.max_steps=many"], "'train.max_steps' expects integer"),
        (["sft", "train=3"], "'train' is a section"),
        (["sft", "notakeyvalue"], "key=value"),
        (["sft", "output_dir=runs/x"], "data.path is empty"),
        (["arena", "minimal_pair_fraction=2"], "minimal_pair_fraction"),
    ],
)
def test_user_errors_exit_2_in_process(args: list[str], fragment: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is written into the repository
    code, out, err = run_main(args, capsys)
    assert code == 2
    assert err.startswith(f"prefgame {args[0]}: error: ") and fragment in err
    assert len(err.strip().splitlines()) == 1


def test_interrupted_job_exits_130(capsys, monkeypatch, tmp_path) -> None:
    import prefgame.arena.job

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefgame.arena.job, "run", interrupted)
    code, _, err = run_main(["arena", f"output_dir={tmp_path}"], capsys)
    assert code == 130 and err.strip() == "prefgame arena: interrupted"


def _noisy_arena_run(fail: bool):
    """A stand-in for the arena job that makes libraries warn on the way (the warnings module, the
    loggers of transformers and accelerate, as they do), writes log.txt like every job, then fails
    with a user error or finishes."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from prefgame.errors import DataError
    from prefgame.run import RunDir

    def run(cfg):
        out = RunDir(cfg.output_dir)
        out.start_logging()
        try:
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
            hf_logging.get_logger("transformers.modeling_utils").warning("Some weights were not initialized")
            logging.getLogger("accelerate.state").warning("no GPU found, running on the CPU")
            hf_logging.get_logger("transformers.modeling_utils").warning("Some weights were not initialized")
            if fail:
                raise DataError("data.path: the file is empty (add rows)")
        finally:
            out.close()

    return run


@pytest.mark.parametrize("fail", [True, False])
def test_library_warnings_never_come_before_a_one_line_error(fail, capsys, monkeypatch, tmp_path) -> None:
    import prefgame.arena.job

    monkeypatch.setattr(prefgame.arena.job, "run", _noisy_arena_run(fail))
    code, _, err = run_main(["arena", f"output_dir={tmp_path}"], capsys)
    log = (tmp_path / "log.txt").read_text()
    for message in ("a library's warning", "Some weights were not initialized", "no GPU found"):
        assert message in log  # the run's record keeps them either way
    lines = err.strip().splitlines()
    if fail:
        assert code == 2 and lines == ["prefgame arena: error: data.path: the file is empty (add rows)"]
    else:  # after the job, each once, saying where it came from
        where = re.fullmatch(
            r"prefgame arena: warning from python: UserWarning: a library's warning \((.+):\d+\)", lines[0]
        )
        assert where and where.group(1) == __file__
        assert code == 0 and lines[1:] == [
            "prefgame arena: warning from transformers: Some weights were not initialized",
            "prefgame arena: warning from accelerate: no GPU found, running on the CPU",
        ]
    # the libraries' own handlers are back once the command is over
    from transformers.utils import logging as hf_logging

    assert hf_logging.get_logger("transformers").handlers


# -- jobs through the CLI --------------------------------------------------------------------------------


def test_arena_job_through_the_cli(tmp_path: Path, capsys) -> None:
    args = [
        "arena",
        "--config",
        str(REPO / "configs/arena/default.yaml"),
        f"output_dir={tmp_path}",
        "sft_examples=20",
        "pairs=10",
        "ratings=5",
        "battles=5",
        "arena.cycle=0",
    ]
    code, _, _ = run_main(args, capsys)
    assert code == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"] == {
        "sft.jsonl": 20,
        "pairs.jsonl": 10,
        "ratings.jsonl": 5,
        "battles.jsonl": 5,
    }
    from prefgame.arena.job import ArenaJobConfig

    written = load_config(ArenaJobConfig, tmp_path / "config.yaml")
    assert written.arena.cycle == 0.0 and written.arena.strength == 6.0 and written.output_dir == str(tmp_path)


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO) for p in (REPO / "configs").glob("*/*.yaml")), ids=str)
def test_shipped_config_files_load(path: Path) -> None:
    command = {"pm": "train-pm"}.get(path.parts[1], path.parts[1])  # configs/<folder>/ -> its command
    job = next((job for job in JOBS if job.name == command), None)
    if path.parts[1] == "accelerate":
        pytest.skip("accelerate launcher configs are read by accelerate, not by a prefgame job")
    if job is None:
        pytest.skip(f"no command named '{path.parts[1]}'")
    load_config(cli._load(job.config), REPO / path)
