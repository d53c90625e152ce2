"""Bad input through the real command line: every failure a user can cause ends in exit code 2 and one
line on stderr that names the cause, before anything that looks finished is written; Ctrl-C at any
moment of a job exits 130 with one line; no checkpoint or weights file is ever unpickled; an API key a
judge echoes and the credentials inside a URL stay out of everything stored.

The exit-2 cases call ``prefgame.cli.main`` in this process (the code path of ``python -m prefgame``
without the interpreter start-up); Ctrl-C is sent to ``python -m prefgame`` subprocesses. Malformed
data rows, missing model paths, unknown config keys and an unreachable judge are the cases of
tests/test_faults.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import tiny
from helpers.judge_server import FakeJudgeServer
from helpers.launch import job_env

from prefgame.cli import main

# the job's own progress lines and tqdm bars are not errors
PROGRESS = re.compile(r"(it/s|s/it|examples/s)\]$|^\[prefgame\] |^\s*$")
SECRET = "sk-live-51ab7c93d2e8-echoed-by-the-judge"
PASSWORD = "pw-4d1c9e7b-in-the-url"


class Unpickled:
    """A pickle payload that would make the folder ``marker`` if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr, stderr lines that are not progress) of ``prefgame argv``."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err, [line for line in err.splitlines() if not PROGRESS.search(line)]


# -- what the cases start from ---------------------------------------------------------------------


@dataclass
class Trained:
    """A tiny SFT run with a checkpoint (its command line kept for resuming) and a tiny BT model."""

    sft_args: list[str]
    sft: Path
    pm: Path


@pytest.fixture(scope="module")
def trained(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    sft_args = [*tiny.sft_args(arena_dir), "train.max_steps=2", "train.save_every=1", "train.micro_batch_size=8"]
    assert main(["sft", *sft_args, f"output_dir={root / 'sft'}"]) == 0
    pm_args = [*tiny.pm_args(arena_dir), "model.kind=bt", "model.backbone.freeze=true", "train.max_steps=2"]
    assert main(["train-pm", *pm_args, "train.save_every=0", f"output_dir={root / 'pm'}"]) == 0
    return Trained(sft_args, root / "sft", root / "pm")


@dataclass
class Ctx:
    arena: Path
    trained: Trained
    tmp: Path
    marker: Path  # must never exist: a pickle payload makes it

    def copy(self, run: Path) -> Path:
        dest = self.tmp / run.name
        shutil.copytree(run, dest)
        return dest

    def killed_sft(self) -> Path:
        """A copy of the SFT run as a kill leaves it: checkpoints, no model and no metrics.json."""
        run = self.copy(self.trained.sft)
        shutil.rmtree(run / "model")
        (run / "metrics.json").unlink()
        return run

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path


@dataclass
class Case:
    argv: list[str]  # after "prefgame"
    fragments: list[str]  # the error line contains each
    absent: list[Path] = field(default_factory=list)  # nothing that looks finished is written
    setup: Callable[[pytest.MonkeyPatch], None] | None = None
    prefix: str = ""  # how the error line starts; empty: "prefgame <command>: error: "


CASES: dict[str, Callable[[Ctx], Case]] = {}


def case(name: str):
    def register(build: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
        CASES[name] = build
        return build

    return register


def sft_job(c: Ctx, *extra: str) -> list[str]:
    return ["sft", *tiny.sft_args(c.arena), "train.max_steps=1", f"output_dir={c.tmp / 'out'}", *extra]


# -- numbers out of range: one general rule, every job ----------------------------------------------

VALUES = {  # name: (command, override, fragments)
    "lr_nan": ("sft", "train.lr=nan", ["'train.lr' must be a finite number, got nan"]),
    "lr_inf": ("sft", "train.lr=inf", ["'train.lr' must be a finite number, got inf"]),
    "lr_negative": ("sft", "train.lr=-1", ["'train.lr' must be > 0, got -1.0", "default 0.001"]),
    "lr_zero": ("sft", "train.lr=0", ["'train.lr' must be > 0"]),
    "seed_negative": ("sft", "train.seed=-1", ["'train.seed' must be ≥ 0, got -1"]),
    "batch_size_zero": ("sft", "train.batch_size=0", ["'train.batch_size' must be ≥ 1"]),
    "log_every_zero": ("sft", "train.log_every=0", ["'train.log_every' must be ≥ 1"]),
    "weight_decay_negative": ("sft", "train.weight_decay=-0.5", ["'train.weight_decay' must be ≥ 0"]),
    "hidden_size_negative": ("sft", "model.hidden_size=-8", ["'model.hidden_size' must be ≥ 1"]),
    "grad_norm_nan": ("train-pm", "train.max_grad_norm=.nan", ["'train.max_grad_norm' must be a finite number"]),
    "dpo_beta_inf": ("dpo", "loss.beta=inf", ["'loss.beta' must be a finite number"]),
    "selfplay_tau_nan": ("selfplay", "game.tau=nan", ["'game.tau' must be a finite number"]),
    "ppo_lr_negative": ("ppo", "train.lr=-1", ["'train.lr' must be > 0", "default 0.0005"]),  # lr redeclared
    "generate_seed_negative": ("generate", "seed=-1", ["'seed' must be ≥ 0"]),
    "quickstart_seed_negative": ("quickstart", "seed=-3", ["'seed' must be ≥ 0"]),
    "override_nested_too_deeply": ("sft", "train.lr=" + "[" * 5000 + "]" * 5000, ["nested too deeply"]),
}


def _value_case(name: str) -> Callable[[Ctx], Case]:
    job, override, fragments = VALUES[name]
    return lambda c: Case([job, override, f"output_dir={c.tmp / 'out'}"], fragments, [c.tmp / "out"])


for _name in VALUES:
    CASES[f"value_{_name}"] = _value_case(_name)


@case("evaluate_seed_negative")
def _(c: Ctx) -> Case:
    battles = c.arena / "battles.jsonl"
    out = c.tmp / "eval"
    argv = ["evaluate", "winrate", f"winrate.battles={battles}", "seed=-1", f"output_dir={out}"]
    return Case(argv, ["'seed' must be ≥ 0"], [out])


# -- config files -----------------------------------------------------------------------------------


@case("yaml_not_utf8")
def _(c: Ctx) -> Case:
    path = c.file("latin1.yaml", b"train:\n  lr: 0.01  # caf\xe9\n")
    return Case(sft_job(c, "--config", str(path)), [str(path), "not UTF-8", "line 2"], [c.tmp / "out"])


@case("yaml_5000_deep")
def _(c: Ctx) -> Case:
    path = c.file("deep.yaml", "train: " + "[" * 5000 + "]" * 5000 + "\n")
    return Case(sft_job(c, "--config", str(path)), [str(path), "nested too deeply"], [c.tmp / "out"])


@case("yaml_nan")
def _(c: Ctx) -> Case:
    path = c.file("nan.yaml", "train:\n  weight_decay: .nan\n")
    return Case(sft_job(c, "--config", str(path)), ["'train.weight_decay' must be a finite number"], [c.tmp / "out"])


# -- where outputs go -------------------------------------------------------------------------------


@case("output_dir_is_a_file")
def _(c: Ctx) -> Case:
    path = c.file("a-file", "x")
    argv = [*sft_job(c), f"output_dir={path}"]
    return Case(argv, [f"output_dir={path} is a file"], [c.tmp / "out"])


@case("output_dir_under_a_file")
def _(c: Ctx) -> Case:
    path = c.file("a-file", "x")
    argv = [*sft_job(c), f"output_dir={path / 'run'}"]
    return Case(argv, [f"output_dir={path / 'run'} cannot be created", f"{path} is a file"], [c.tmp / "out"])


@case("output_dir_not_writable")
def _(c: Ctx) -> Case:
    locked = c.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)

    def deny(monkeypatch: pytest.MonkeyPatch) -> None:
        if os.geteuid() == 0:  # permissions do not stop root: the OS's answer is simulated
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))

    argv = [*sft_job(c), f"output_dir={locked / 'run'}"]
    return Case(argv, ["cannot be written", f"no write permission in {locked}"], [locked / "run"], deny)


@case("generate_out_is_a_folder")
def _(c: Ctx) -> Case:
    folder = c.tmp / "outputs"
    folder.mkdir()
    model = c.trained.sft / "model"
    argv = ["generate", f"model={model}", "prompts=arena", "max_prompts=4", "max_new_tokens=2", f"out={folder}"]

    def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:  # the path fails before any output is made
        def generated(*args, **kwargs):
            raise AssertionError("outputs were generated before the output path was checked")

        monkeypatch.setattr("prefgame.generate.generate_outputs", generated)

    return Case(
        argv, [f"out={folder} is a folder", "give a file path"], [c.tmp / "outputs.metrics.json"], no_generation
    )


@case("score_out_is_a_folder")
def _(c: Ctx) -> Case:
    folder = c.tmp / "scored"
    folder.mkdir()
    argv = ["score", f"model={c.trained.pm}", f"data={c.arena / 'pairs.jsonl'}", f"out={folder}"]
    return Case(argv, [f"out={folder} is a folder"], [c.tmp / "scored.metrics.json"])


@case("evaluate_output_dir_is_a_file")
def _(c: Ctx) -> Case:
    path = c.file("a-file", "x")
    argv = ["evaluate", "winrate", f"winrate.battles={c.arena / 'battles.jsonl'}", f"output_dir={path}"]
    return Case(argv, [f"output_dir={path} is a file"])


# -- weights, checkpoints and model folders ---------------------------------------------------------


def generate_with(c: Ctx, model: Path) -> list[str]:
    return [
        "generate",
        f"model={model}",
        "prompts=arena",
        "max_prompts=4",
        "max_new_tokens=2",
        f"out={c.tmp / 'g.jsonl'}",
    ]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(data[:8] + b"x" * 32 + data[40:])


@case("model_safetensors_corrupted")
def _(c: Ctx) -> Case:
    model = c.copy(c.trained.sft / "model")
    damage(model / "model.safetensors", "header")
    return Case(
        generate_with(c, model), [str(model / "model.safetensors"), "not a valid safetensors file"], [c.tmp / "g.jsonl"]
    )


@case("model_safetensors_truncated")
def _(c: Ctx) -> Case:
    model = c.copy(c.trained.sft / "model")
    damage(model / "model.safetensors", "truncate")
    return Case(generate_with(c, model), [str(model / "model.safetensors"), "is truncated"], [c.tmp / "g.jsonl"])


@case("pickle_as_pytorch_model_bin")
def _(c: Ctx) -> Case:
    model = c.copy(c.trained.sft / "model")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"lm_head.weight": Unpickled(c.marker)}))
    fragments = [str(model / "pytorch_model.bin"), "never unpickles", "model.safetensors"]
    return Case(generate_with(c, model), fragments, [c.tmp / "g.jsonl"])


@case("pickle_as_heads_safetensors")
def _(c: Ctx) -> Case:
    run = c.copy(c.trained.pm)
    (run / "model" / "heads.safetensors").write_bytes(pickle.dumps(Unpickled(c.marker)))
    argv = ["score", f"model={run}", f"data={c.arena / 'pairs.jsonl'}", f"out={c.tmp / 's.jsonl'}"]
    return Case(argv, ["heads.safetensors is a pickle, not safetensors"], [c.tmp / "s.jsonl"])


@case("torch_save_as_heads_safetensors")
def _(c: Ctx) -> Case:
    run = c.copy(c.trained.pm)
    torch.save({"w": Unpickled(c.marker)}, run / "model" / "heads.safetensors")
    argv = ["score", f"model={run}", f"data={c.arena / 'pairs.jsonl'}", f"out={c.tmp / 's.jsonl'}"]
    return Case(argv, ["heads.safetensors is a torch.save (zip of pickles) file"], [c.tmp / "s.jsonl"])


@case("preference_model_json_broken")
def _(c: Ctx) -> Case:
    run = c.copy(c.trained.pm)
    (run / "model" / "preference_model.json").write_text('{"kind": "bt",')
    argv = ["score", f"model={run}", f"data={c.arena / 'pairs.jsonl'}", f"out={c.tmp / 's.jsonl'}"]
    return Case(argv, ["preference_model.json is not valid JSON", "train it again"], [c.tmp / "s.jsonl"])


@case("preference_model_json_not_a_model")
def _(c: Ctx) -> Case:
    run = c.copy(c.trained.pm)
    (run / "model" / "preference_model.json").write_text('["bt"]')
    argv = ["score", f"model={run}", f"data={c.arena / 'pairs.jsonl'}", f"out={c.tmp / 's.jsonl'}"]
    return Case(argv, ["preference_model.json does not describe a preference model"], [c.tmp / "s.jsonl"])


def resume_with(c: Ctx, change: Callable[[Path], None], *fragments: str) -> Case:
    """``sft resume=true`` on a killed run whose latest checkpoint ``change`` damaged."""
    run = c.killed_sft()
    (ckpt,) = sorted((run / "checkpoints").glob("step-*"))
    change(ckpt)
    argv = ["sft", *c.trained.sft_args, f"output_dir={run}", "resume=true"]
    return Case(argv, [*fragments, f"remove the checkpoint folder {ckpt}"], [run / "metrics.json", run / "model"])


@case("pickle_as_optimizer_pt")
def _(c: Ctx) -> Case:
    def plant(ckpt: Path) -> None:
        (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Unpickled(c.marker), "scheduler": {}}))

    return resume_with(c, plant, "optimizer.pt holds objects other than tensors", "never unpickles")


@case("torch_save_as_optimizer_pt")
def _(c: Ctx) -> Case:
    def plant(ckpt: Path) -> None:
        torch.save({"optimizer": Unpickled(c.marker), "scheduler": {}}, ckpt / "optimizer.pt")

    return resume_with(c, plant, "optimizer.pt holds objects other than tensors")


@case("optimizer_pt_truncated")
def _(c: Ctx) -> Case:
    return resume_with(
        c, lambda ckpt: damage(ckpt / "optimizer.pt", "truncate"), "optimizer.pt is damaged or truncated"
    )


@case("checkpoint_safetensors_truncated")
def _(c: Ctx) -> Case:
    return resume_with(c, lambda ckpt: damage(ckpt / "model.safetensors", "truncate"), "model.safetensors is truncated")


@case("trainer_state_json_broken")
def _(c: Ctx) -> Case:
    return resume_with(
        c, lambda ckpt: (ckpt / "trainer_state.json").write_text('{"step": 1'), "trainer_state.json is not valid JSON"
    )


def test_a_safetensors_file_whose_first_bytes_look_like_a_pickle_loads(tmp_path: Path) -> None:
    # A header of 640 bytes is written as 80 02 00 ...: a pickle's opening. The file is checked as
    # safetensors first, and loads.
    from safetensors.torch import save_file

    from prefgame.weights import load_safetensors

    path = tmp_path / "heads.safetensors"
    for pad in range(700):
        save_file({"w": torch.ones(3)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert torch.equal(load_safetensors(path)["w"], torch.ones(3))


# -- data files -------------------------------------------------------------------------------------


@case("csv_not_utf8")
def _(c: Ctx) -> Case:
    path = c.file("latin1.csv", b"prompt,response\nname a caf\xe9,an apple\n")
    return Case(
        sft_job(c, f"data.path={path}"), [str(path), "not UTF-8", "byte 0xe9 at line 2"], [c.tmp / "out" / "model"]
    )


@case("jsonl_not_utf8")
def _(c: Ctx) -> Case:
    path = c.file("latin1.jsonl", b'{"prompt": "a", "chosen": "caf\xe9", "rejected": "b"}\n')
    argv = ["train-pm", f"data.path={path}", f"output_dir={c.tmp / 'out'}"]
    return Case(argv, [str(path), "not UTF-8"], [c.tmp / "out" / "model"])


@case("jsonl_empty")
def _(c: Ctx) -> Case:
    path = c.file("empty.jsonl", "")
    return Case(sft_job(c, f"data.path={path}"), [str(path), "the file is empty (no rows)"], [c.tmp / "out" / "model"])


@case("csv_header_only")
def _(c: Ctx) -> Case:
    path = c.file("header.csv", "prompt,response\n")
    return Case(sft_job(c, f"data.path={path}"), [str(path), "only a header line"], [c.tmp / "out" / "model"])


@case("data_validate_blank_file")
def _(c: Ctx) -> Case:
    path = c.file("blank.jsonl", "\n\n  \n")
    return Case(["data", "validate", str(path)], [str(path), "the file is empty"])


def winrate_on(c: Ctx, battles: Path) -> list[str]:
    return ["evaluate", "winrate", f"winrate.battles={battles}", f"output_dir={c.tmp / 'eval'}"]


@case("battles_malformed_line")
def _(c: Ctx) -> Case:
    good = '{"model_a": "x", "model_b": "y", "winner": "model_a"}'
    path = c.file("battles.jsonl", f'{good}\n{{"model_a": "x", "model_b"\n{good}\n')
    return Case(winrate_on(c, path), [str(path), "line 2", "malformed JSON"], [c.tmp / "eval" / "metrics.json"])


@case("battles_model_not_a_name")
def _(c: Ctx) -> Case:
    path = c.file("battles.jsonl", '{"model_a": "x", "model_b": "y", "winner": "model_a"}\n'
                  '{"model_a": 5, "model_b": null, "winner": "model_b"}\n')  # fmt: skip
    return Case(winrate_on(c, path), ["battle row 1", "'model_a' must name a model"], [c.tmp / "eval" / "metrics.json"])


@case("battles_csv_unreadable")
def _(c: Ctx) -> Case:
    path = c.file("battles.csv", 'model_a,model_b,winner\nx,y,model_a\n"x,y\n')
    return Case(winrate_on(c, path), [str(path), "could not read"], [c.tmp / "eval" / "metrics.json"])


@case("battles_empty")
def _(c: Ctx) -> Case:
    path = c.file("battles.jsonl", "")
    return Case(winrate_on(c, path), [str(path), "the file is empty"], [c.tmp / "eval" / "metrics.json"])


# -- the command line itself ------------------------------------------------------------------------


@case("unknown_option")
def _(c: Ctx) -> Case:
    return Case(["sft", "--bogus", "train.lr=1"], ["unrecognized arguments: --bogus"], prefix="prefgame: error: ")


# -- judges -----------------------------------------------------------------------------------------


@pytest.fixture
def server():
    s = FakeJudgeServer()
    yield s
    s.close()


def judge_winrate(tmp: Path, base_url: str) -> list[str]:
    """``evaluate winrate`` of two generators' outputs (GOOD wins), judged by the LLM judge at ``base_url``."""
    files = []
    for name, text in (("good", "GOOD answer"), ("plain", "plain answer here")):
        files.append(tmp / f"{name}.jsonl")
        rows = [{"prompt": f"question {i} ?", "output": f"{text} {i}", "generator": name} for i in range(4)]
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["evaluate", "winrate", f"output_dir={tmp / 'eval'}", f"winrate.samples=[{files[0]},{files[1]}]",
            "winrate.baseline=plain", "winrate.judge.kind=llm", "winrate.judge.llm.model=judge-test",
            f"winrate.judge.llm.base_url={base_url}", f"winrate.judge.llm.cache_dir={tmp / 'cache'}",
            "winrate.judge.llm.backoff_base_s=0.01", "n_bootstrap=10"]  # fmt: skip


def stored_texts(*roots: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for root in roots for p in root.rglob("*") if p.is_file()}


# -- the exit-2 cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(
    name: str, arena_dir: Path, trained: Trained, tmp_path: Path, capsys, monkeypatch
) -> None:
    ctx = Ctx(arena_dir, trained, tmp_path, tmp_path / "UNPICKLED")
    c = CASES[name](ctx)
    if c.setup is not None:
        c.setup(monkeypatch)
    monkeypatch.chdir(tmp_path)  # nothing is written into the repository
    code, out, err, lines = run_cli(c.argv, capsys)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(c.prefix or f"prefgame {c.argv[0]}: error: "), lines[0]
    assert err.rstrip().endswith(lines[0])  # nothing after the error line
    for fragment in c.fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for path in c.absent:
        assert not path.exists(), path
    assert not ctx.marker.exists()  # no pickle was ever loaded


def test_every_judgment_failed_says_so(server: FakeJudgeServer, tmp_path: Path, capsys, monkeypatch) -> None:
    server.no_verdict = True  # the endpoint answers, but never with a verdict
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code, _, err, lines = run_cli(judge_winrate(tmp_path, server.base_url), capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("prefgame evaluate: error: every judgment failed (4 pairs, both orders)")
    assert "no verdict ([[A]], [[B]] or [[C]]) in the answer" in lines[0] and "fought no battle" not in lines[0]
    assert not (tmp_path / "eval" / "metrics.json").exists()


# -- secrets ----------------------------------------------------------------------------------------


def test_a_judge_answer_that_echoes_the_key_is_stored_redacted(
    server: FakeJudgeServer, tmp_path: Path, capsys, monkeypatch, caplog
) -> None:
    server.echo_key = True  # every answer quotes the key it was sent
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code, out, err, _ = run_cli(judge_winrate(tmp_path, server.base_url), capsys)
    assert code == 0, err[-3000:]
    assert f"Bearer {SECRET}" in server.authorization  # the key was used...
    cache = (tmp_path / "cache" / "judgments.jsonl").read_text()
    assert "You sent <redacted>." in cache  # ...the answers are kept, without it
    texts = {
        "stdout": out,
        "stderr": err,
        "log records": caplog.text,
        **stored_texts(tmp_path / "eval", tmp_path / "cache"),
    }
    for where, text in texts.items():
        for i in range(len(SECRET) - 7):
            assert SECRET[i : i + 8] not in text, (where, SECRET[i : i + 8])


def test_credentials_in_urls_are_never_written(server: FakeJudgeServer, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = server.base_url.replace("http://", f"http://alice:{PASSWORD}@")
    code, out, err, _ = run_cli(judge_winrate(tmp_path, url), capsys)
    assert code == 0, err[-3000:]
    config = (tmp_path / "eval" / "config.yaml").read_text()
    assert "base_url: http://<redacted>@127.0.0.1:" in config  # the setting is recorded, its secret is not
    # free-form factory options: a URL's credentials and a value under a secret's name
    options = f"{{base_url: 'https://bob:{PASSWORD}@judge.example/v1', api_key: {SECRET}, max_tokens: 7}}"
    argv = [
        "evaluate",
        "winrate",
        f"output_dir={tmp_path / 'factory'}",
        f"winrate.samples=[{tmp_path / 'good.jsonl'}]",
        "winrate.judge.kind=factory",
        "winrate.judge.factory=no_such_module:judge",
        f"winrate.judge.options={options}",
    ]
    code, out2, err2, lines = run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1, err2[-3000:]
    factory_config = (tmp_path / "factory" / "config.yaml").read_text()
    assert "max_tokens: 7" in factory_config and "api_key: <redacted>" in factory_config
    texts = {
        "stdout": out + out2,
        "stderr": err + err2,
        **stored_texts(tmp_path / "eval", tmp_path / "cache", tmp_path / "factory"),
    }
    for where, text in texts.items():
        assert PASSWORD not in text and "alice:" not in text and "bob:" not in text and SECRET not in text, where


# -- the command line accepts overrides on both sides of --config --------------------------------


def test_overrides_before_and_after_config(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "arena.yaml"
    config.write_text("sft_examples: 100\npairs: 100\nratings: 6\nbattles: 6\n")
    argv = ["arena", "sft_examples=7", f"output_dir={tmp_path / 'arena'}", "--config", str(config), "pairs=9"]
    code, _, err, _ = run_cli(argv, capsys)
    assert code == 0, err[-3000:]
    recorded = (tmp_path / "arena" / "config.yaml").read_text()
    for line in ("sft_examples: 7", "pairs: 9", "ratings: 6", "battles: 6"):  # the file, then every override
        assert re.search(rf"^{line}$", recorded, re.MULTILINE), line


# -- Ctrl-C at any moment: exit 130, one line ---------------------------------------------------------


# point -> what marks it: a module whose import has finished (``-X importtime`` prints each import as it
# finishes) or a file of the output folder that has appeared with content
INTERRUPT_AT = {
    "argument_parsing": ("import", "prefgame.config"),
    "importing_torch": ("import", "torch._C"),
    "importing_accelerate": ("import", "accelerate"),
    "job_start_up": ("file", "config.yaml"),
    "training": ("file", "metrics.jsonl"),
}


@dataclass
class Job:
    proc: subprocess.Popen
    out: Path
    lines: list[str] = field(default_factory=list)  # stderr, appended by a reader thread
    scanned: int = 0
    note: str = "never reached"

    def reached(self, kind: str, mark: str) -> bool:
        if kind == "file":
            path = self.out / mark
            return path.exists() and path.stat().st_size > 0
        new, self.scanned = self.lines[self.scanned :], len(self.lines)
        return any(line.startswith("import time:") and line.rstrip().endswith(f" {mark}") for line in new)


@pytest.fixture(scope="module")
def interrupted(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """point → an SFT job sent SIGINT at that point; the jobs run at once."""
    root = tmp_path_factory.mktemp("interrupted")
    args = [*tiny.sft_args(arena_dir), "train.max_steps=100000", "train.save_every=0", "train.micro_batch_size=8"]
    jobs = {}
    # a test run started in the background of a non-interactive shell (`make test &`) ignores SIGINT, and
    # a process inherits that through exec, so its jobs would never see the Ctrl-C: they start with
    # Python's own handler (exec resets a handled signal to its default)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    for point in INTERRUPT_AT:
        out = root / point
        command = [sys.executable, "-X", "importtime", "-m", "prefgame", "sft", *args, f"output_dir={out}"]
        proc = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=job_env(PYTHONFAULTHANDLER="1"))  # fmt: skip
        jobs[point] = job = Job(proc, out)
        threading.Thread(target=lambda j=job: j.lines.extend(j.proc.stderr), daemon=True).start()
    signal.signal(signal.SIGINT, inherited)
    pending, deadline = dict(jobs), time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        for point, job in list(pending.items()):
            if job.proc.poll() is not None:
                job.note = "ended before its point"
            elif job.reached(*INTERRUPT_AT[point]):
                job.proc.send_signal(signal.SIGINT)
                job.note = "interrupted"
            else:
                continue
            del pending[point]
        time.sleep(0.002)
    for job in jobs.values():
        if job.note != "interrupted":
            job.proc.kill()
        try:
            job.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # its test fails with where the job was (faulthandler's stacks)
            job.note = "still running 120 s after the interrupt"
            job.proc.send_signal(signal.SIGABRT)
            try:
                job.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait(timeout=30)
    time.sleep(0.2)  # the readers take the last lines
    return jobs


@pytest.mark.parametrize("point", list(INTERRUPT_AT))
def test_ctrl_c_at_any_moment_exits_130_with_one_line(point: str, interrupted: dict[str, Job]) -> None:
    job = interrupted[point]
    err = "".join(line for line in job.lines if not line.startswith("import time:"))
    assert job.note == "interrupted", (job.note, err[-3000:])
    assert job.proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if not PROGRESS.search(line)] == ["prefgame sft: interrupted"], err
    assert not (job.out / "metrics.json").exists() and not (job.out / "model").exists()
