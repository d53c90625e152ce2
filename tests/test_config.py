"""Tests of the config system (prefgame.config): YAML files, ``key=value`` overrides, error messages
that name the key (and the nearest valid key, or the expected type), round trips through the written
config.yaml, secret redaction and the ``--help`` listing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from prefgame.arena.job import ArenaJobConfig
from prefgame.config import REDACTED, config_help, config_to_dict, iter_keys, load_config, param
from prefgame.errors import ConfigError, PrefgameError
from prefgame.run import RunDir
from prefgame.train.sft import SFTConfig


@dataclass
class Optim:
    lr: float = param(1e-3, "learning rate")
    steps: int = param(10, "optimizer steps")
    schedule: Literal["cosine", "linear"] = param("cosine", "decay shape")
    betas: tuple[float, ...] = param((0.9, 0.99), "Adam betas")


@dataclass
class Toy:
    name: str = param("toy", "run name")
    api_key: str = param("", "judge API key", secret=True)
    verbose: bool = param(False, "print more")
    tags: list[str] = param([], "free-form tags")
    clip: float | None = param(None, "clip value; null disables")
    optim: Optim = param(Optim, "optimizer section")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(cls: type, text: str | None = None, overrides: tuple[str, ...] = (), tmp_path=None) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(cls, path, overrides)
    message = str(info.value)
    assert "\n" not in message  # one line for the CLI
    return message


# -- values --------------------------------------------------------------------------------------


def test_defaults_yaml_and_overrides_apply_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "name: from-yaml\noptim:\n  steps: 5\n  lr: 0.5\n")
    cfg = load_config(Toy, path, ["optim.steps=7", "tags=[a, b]", "verbose=true", "optim.steps=8"])
    assert cfg == Toy(name="from-yaml", verbose=True, tags=["a", "b"], optim=Optim(lr=0.5, steps=8))
    assert load_config(Toy) == Toy()


def test_exponent_string_is_coerced_to_float(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as the string "1e-3"; a float field must still accept it.
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}
    cfg = load_config(Toy, write(tmp_path, "optim:\n  lr: 1e-3\n"))
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert load_config(Toy, None, ["optim.lr=2e-4"]).optim.lr == 2e-4
    assert load_config(Toy, None, ["clip=1e-2"]).clip == 1e-2
    assert load_config(Toy, None, ["clip=null"]).clip is None


def test_literal_accepts_its_choices_only(tmp_path: Path) -> None:
    assert load_config(Toy, None, ["optim.schedule=linear"]).optim.schedule == "linear"
    message = error_of(Toy, overrides=("optim.schedule=exp",), tmp_path=tmp_path)
    assert "'optim.schedule'" in message and "one of 'cosine', 'linear'" in message and "'exp'" in message


def test_yaml_11_booleans_stay_strings(tmp_path: Path) -> None:
    # YAML 1.1 reads no/yes/on/off as booleans; "no" is a choice of train.mixed_precision.
    cfg = load_config(SFTConfig, write(tmp_path, "train:\n  mixed_precision: no\n"), ["model.tokenizer=off"])
    assert cfg.train.mixed_precision == "no" and cfg.model.tokenizer == "off"
    assert load_config(SFTConfig, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(Toy, None, ["verbose=True"]).verbose is True
    message = error_of(Toy, overrides=("verbose=yes",), tmp_path=tmp_path)
    assert "'verbose' expects true/false, got 'yes'" in message
    assert yaml.safe_load("a: no") == {"a": False}  # the global SafeLoader is untouched


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    assert load_config(Toy, write(tmp_path, "optim:\n")) == Toy()
    assert load_config(Toy, write(tmp_path, "")) == Toy()


# -- unknown keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "key", "nearest"),
    [
        ("nme: x\n", (), "nme", "name"),
        ("optim:\n  lrr: 0.1\n", (), "optim.lrr", "optim.lr"),
        (None, ("verbos=true",), "verbos", "verbose"),
        (None, ("optim.stesp=3",), "optim.stesp", "optim.steps"),
        (None, ("optm.lr=3",), "optm", "optim"),  # a misspelt section
    ],
)
def test_unknown_key_names_key_and_nearest(tmp_path, yaml_text, overrides, key, nearest) -> None:
    message = error_of(Toy, yaml_text, overrides, tmp_path)
    assert f"unknown config key '{key}'" in message
    assert f"did you mean '{nearest}'?" in message


def test_unknown_key_in_real_job_configs(tmp_path: Path) -> None:
    message = error_of(SFTConfig, overrides=("train.lrr=1",), tmp_path=tmp_path)
    assert "'train.lrr'" in message and "'train.lr'" in message
    message = error_of(SFTConfig, "model:\n  hiden_size: 8\n", tmp_path=tmp_path)
    assert "'model.hidden_size'" in message
    message = error_of(ArenaJobConfig, "arena:\n  cycel: 0\n", tmp_path=tmp_path)
    assert "'arena.cycel'" in message and "'arena.cycle'" in message


# -- wrong types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("optim.steps=ten", "optim.steps", "integer"),  # string for int
        ("optim.steps=true", "optim.steps", "integer"),  # bool for int (bool is an int in Python)
        ("optim.steps=1.5", "optim.steps", "integer"),  # a float that is not whole
        ("optim.lr=[1, 2]", "optim.lr", "number"),  # list for float
        ("optim.lr=abc", "optim.lr", "number"),
        ("verbose=1", "verbose", "true/false"),
        ("tags=a", "tags", "list of string"),  # a scalar for a list
        ("clip=[1]", "clip", "number or null"),
        ("optim.betas=0.9", "optim.betas", "list of number"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, override, key, expected) -> None:
    message = error_of(Toy, overrides=(override,), tmp_path=tmp_path)
    assert f"config key '{key}' expects {expected}, got" in message


def test_wrong_type_from_yaml(tmp_path: Path) -> None:
    message = error_of(SFTConfig, "train:\n  max_steps: [1]\n", tmp_path=tmp_path)
    assert "'train.max_steps' expects integer, got [1] (list)" in message


def test_whole_numbers_are_accepted_for_int(tmp_path: Path) -> None:
    assert load_config(Toy, None, ["optim.steps=3.0"]).optim.steps == 3
    assert load_config(Toy, None, ["optim.steps='1e2'"]).optim.steps == 100


@pytest.mark.parametrize("text", ["optim: 5\n", "optim: [1, 2]\n", "optim: fast\n"])
def test_section_given_as_scalar(tmp_path: Path, text: str) -> None:
    message = error_of(Toy, text, tmp_path=tmp_path)
    assert "'optim' is a section" in message and "mapping" in message


def test_validation_in_post_init_is_a_config_error(tmp_path: Path) -> None:
    message = error_of(SFTConfig, overrides=("train.batch_size=0",), tmp_path=tmp_path)
    assert "train" in message and "batch_size" in message


# -- files -----------------------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(Toy, tmp_path / "nope.yaml")
    assert isinstance(info.value, PrefgameError)


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: ok\noptim:\n  lr: 0.1\n  steps: [1, 2\nverbose: true\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+") as info:
        load_config(Toy, path)
    # The unclosed bracket opened on line 4; PyYAML reports where it noticed (line 5 or 6).
    line = int(str(info.value).split("at line ")[1].split(":")[0])
    assert 4 <= line <= 6


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Toy, write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=3"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        load_config(Toy, None, [text])


# -- round trip and secrets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "overrides"),
    [
        (Toy, []),
        (
            Toy,
            [
                "name=123",
                "verbose=true",
                "tags=[x, '1e-3', 'yes']",
                "clip=0.25",
                "optim.lr=3e-5",
                "optim.schedule=linear",
                "optim.betas=[0.8, 0.95]",
            ],
        ),
        (
            SFTConfig,
            [
                "resume=true",
                "model.hidden_size=32",
                "data.path=a/b.jsonl",
                "data.eval_fraction=0.1",
                "train.lr=1e-5",
                "train.schedule=constant",
                "train.mixed_precision=no",
            ],
        ),
        (ArenaJobConfig, ["arena.cycle=0", "arena.strength=1.5e1", "pairs=10", "minimal_pair_fraction=1"]),
    ],
)
def test_round_trip_through_written_config_yaml(tmp_path: Path, cls: type, overrides: list[str]) -> None:
    cfg = load_config(cls, None, overrides)
    run_dir = RunDir(tmp_path / "run")
    run_dir.write_config(cfg)
    again = load_config(cls, run_dir.file("config.yaml"))
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_secret_fields_are_redacted_in_written_yaml(tmp_path: Path) -> None:
    cfg = load_config(Toy, None, ["api_key=sk-very-secret"])
    assert cfg.api_key == "sk-very-secret"
    run_dir = RunDir(tmp_path / "run")
    run_dir.write_config(cfg)
    text = run_dir.file("config.yaml").read_text()
    assert "sk-very-secret" not in text
    assert yaml.safe_load(text)["api_key"] == REDACTED
    assert "sk-very-secret" not in config_help(Toy)
    assert config_to_dict(cfg, redact=False)["api_key"] == "sk-very-secret"
    assert "sk-very-secret" not in repr(cfg)
    # An empty secret is written as is (nothing to hide), so the round trip holds.
    assert load_config(Toy, run_dir.file("config.yaml")).api_key == REDACTED
    empty = Toy()
    run_dir.write_config(empty)
    assert load_config(Toy, run_dir.file("config.yaml")) == empty


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Toy, SFTConfig, ArenaJobConfig])
def test_config_help_lists_every_key_with_its_doc(cls: type) -> None:
    lines = config_help(cls).splitlines()
    keys = list(iter_keys(cls))
    assert len(lines) == 2 * len(keys)  # a key line and a doc line per key, in field order
    for (key, _, field), key_line, doc_line in zip(keys, lines[::2], lines[1::2]):
        assert key_line.startswith(f"  {key} (")
        assert field.metadata["help"] and doc_line == f"      {field.metadata['help']}"


def test_every_job_config_field_has_a_default_and_doc() -> None:
    for cls in (SFTConfig, ArenaJobConfig):
        cls()  # every field has a default
        for key, _, field in iter_keys(cls):
            assert field.metadata.get("help"), key
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f.name
