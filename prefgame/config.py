"""Config dataclasses, YAML files and ``key=value`` overrides.

Every job has one config dataclass. Each field is declared with :func:`param`, which gives it a
default and a one-line doc (shown by ``prefgame <command> --help``). YAML files only set fields;
``a.b=value`` overrides on the command line are applied on top. An unknown key fails with a message
naming the key and the nearest valid one; a value of the wrong type fails with the key, the
expected type and the value.

Values are checked where they enter: every number must be finite (``nan`` and ``inf`` are refused
unless a field is declared with ``finite=False``), a field declared with bounds (``param(..., gt=0)``,
``ge``, ``le``, ``lt``) must lie within them (a subclass that changes a field's default keeps the
bounds its base declared), and every field named ``seed`` is a non-negative integer. A failure names
the key, the rule, the value given and the default. The paths a job writes (``output_dir``, and the
fields declared ``param(..., output="file")``) are checked by :func:`check_output_paths` before the
job starts, so a folder that is a file or cannot be written fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from prefgame.errors import ConfigError
from prefgame.redact import REDACTED, redact_value

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 (true/false only). YAML 1.1 also reads yes/no/on/off as
    booleans, so ``mixed_precision: no`` would arrive as False instead of the choice "no"."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data only


BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
# Bounds every field of this name has, wherever it is declared
_NAMED_BOUNDS: dict[str, dict[str, float]] = {"seed": {"ge": 0}}


def param(
    default: Any,
    help: str,
    *,
    secret: bool = False,
    finite: bool = True,
    output: str | None = None,
    **bounds: float,
) -> Any:
    """A documented config field. ``default`` may be a dataclass type (nested section) or a mutable
    value (copied per instance). ``secret`` fields are never written to disk or printed. ``gt``, ``ge``,
    ``lt`` and ``le`` bound a number; ``finite=False`` lets it be nan or inf. ``output="file"`` marks a
    path the job writes (checked before it starts, as ``output_dir`` is)."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"param() got unknown bounds {sorted(unknown)}; use {', '.join(BOUNDS)}")
    if output not in (None, "file"):
        raise TypeError(f"param(output=...) must be None or 'file', got {output!r}")
    meta = {"help": help, "secret": secret, "finite": finite, "bounds": bounds, "output": output}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    # repr=False keeps a secret out of every repr of its config (logs, tracebacks, debuggers).
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def iter_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """Yield (dotted key, type, field) for every leaf field of a config dataclass."""
    for key, tp, f, _ in _iter_fields(cls, prefix):
        yield key, tp, f


def _iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field, type]]:
    """(dotted key, type, field, the dataclass declaring it) for every leaf field of a config dataclass."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            yield from _iter_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f, cls


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, Sequence, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Mismatch(Exception):
    pass


def _bounds(cls: type, name: str) -> dict[str, float]:
    """The bounds of field ``name``: its own, else those of the nearest base class that declares the
    field with bounds (a subclass that only changes the default keeps them), else those of its name."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("bounds"):
            return f.metadata["bounds"]
    return _NAMED_BOUNDS.get(name, {})


def _rule(bounds: dict[str, float]) -> str:
    return " and ".join(f"{BOUNDS[k]} {v:g}" for k, v in bounds.items())


def _numbers(value: Any) -> Iterator[float]:
    """The numbers in a coerced value (itself, or the items of a list or mapping)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)


def _check_value(cls: type, f: dataclasses.Field, tp: Any, value: Any, dotted: str) -> None:
    """Finite numbers within the field's bounds, or a ConfigError naming key, rule, value and default."""
    if tp is Any or get_args(tp) and Any in get_args(tp):
        return  # free-form values (factory options) are the factory's to check
    default = "" if f.default is dataclasses.MISSING else f" (default {f.default!r})"
    bounds = _bounds(cls, f.name)
    for number in _numbers(value):
        if f.metadata.get("finite", True) and not math.isfinite(number):
            raise ConfigError(f"config key '{dotted}' must be a finite number, got {number}{default}")
        for kind, limit in bounds.items():
            ok = {"gt": number > limit, "ge": number >= limit, "lt": number < limit, "le": number <= limit}[kind]
            if not ok:
                raise ConfigError(f"config key '{dotted}' must be {_rule(bounds)}, got {number!r}{default}")


def _coerce(value: Any, tp: Any) -> Any:
    """Convert a YAML value to ``tp`` or raise _Mismatch."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch
    if origin in (list, Sequence, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        (arg,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, arg) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        _, vt = get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, vt) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise _Mismatch from None
            if f.is_integer():
                return int(f)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    raise _Mismatch


def _show(value: Any, limit: int = 80) -> str:
    """A value's repr for a one-line message: shortened, and safe for values nested too deeply to print."""
    try:
        text = repr(value)
    except RecursionError:
        return "a value nested too deeply to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nearest(key: str, valid: list[str]) -> str:
    tail = key.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    by_tail = difflib.get_close_matches(tail, [v.rsplit(".", 1)[-1] for v in valid], n=1, cutoff=0.6)
    if by_tail:
        candidates = [v for v in valid if v.rsplit(".", 1)[-1] == by_tail[0]]
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0) or match
    return match[0] if match else ""


def _build(cls: type[T], data: dict[str, Any], prefix: str, root: type) -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = [k for k, _, _ in iter_keys(root)] + _section_keys(root)
            near = _nearest(dotted, valid)
            hint = f" (did you mean '{near}'?)" if near else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        tp = hints[key]
        if _is_dataclass_type(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' is a section: give it as a mapping, not {_show(value)}")
            kwargs[key] = _build(tp, value, f"{dotted}.", root)
            continue
        try:
            kwargs[key] = _coerce(value, tp)
        except _Mismatch:
            raise ConfigError(
                f"config key '{dotted}' expects {_type_name(tp)}, got {_show(value)} ({type(value).__name__})"
            ) from None
        _check_value(cls, fields[key], tp, kwargs[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid config{' section ' + prefix.rstrip('.') if prefix else ''}: {exc}") from None


def _section_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            out.append(f"{prefix}{f.name}")
            out.extend(_section_keys(hints[f.name], f"{prefix}{f.name}."))
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.hidden_size=64"`` → (["model", "hidden_size"], 64). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override '{key}=...' is nested too deeply to read (give a flat value)") from None
    return key.split("."), value


def _read_yaml_file(p: Path) -> Any:
    """The YAML document in ``p``, or a ConfigError naming the file and what is wrong with it."""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}): save it as UTF-8"
        ) from None
    try:
        return _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"config file {p} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply to read: a config is a few levels of keys") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides (applied in order)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (give an existing YAML file, e.g. under configs/)")
        loaded = _read_yaml_file(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must contain a mapping of keys to values at the top level")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
    return _build(cls, data, "", cls)


def config_to_dict(cfg: Any, *, redact: bool = True) -> dict[str, Any]:
    """A plain dict of the config. With ``redact``, secret fields are replaced by a marker, and so are
    the credentials of URLs and the secrets of free-form mappings (see :func:`prefgame.redact.redact_value`)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value, redact=redact)
        elif redact and f.metadata.get("secret") and value:
            out[f.name] = REDACTED
        else:
            value = list(value) if isinstance(value, tuple) else value
            out[f.name] = redact_value(value) if redact else value
    return out


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict (``config_to_dict``) flattened to {"a.b.c": value} with scalar values (others as
    strings): the form experiment trackers (``accelerator.init_trackers(config=...)``) accept, and the one
    a resumed run's configuration is compared in."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg, redact=True), sort_keys=False)


def config_help(cls: type) -> str:
    """One line per key: name, type (and bounds), default and doc. Used as the epilog of ``--help``."""
    lines = []
    defaults = config_to_dict(cls(), redact=True)
    for key, tp, f, owner in _iter_fields(cls):
        node: Any = defaults
        for part in key.split("."):
            node = node[part]
        bounds = _bounds(owner, f.name)
        kind = _type_name(tp) + (f" {_rule(bounds)}" if bounds else "")
        lines.append(f"  {key} ({kind}, default {node!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def check_output_paths(cfg: Any) -> None:
    """Fail before a job starts when a path it writes cannot be written: ``output_dir`` (every job's
    folder) that is a file or lies where no folder can be made, and a field declared
    ``param(..., output="file")`` that names a folder or lies in such a place."""
    for key, _, f, _ in _iter_fields(type(cfg)):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if not node or not isinstance(node, str):
            continue
        if f.name == "output_dir":
            _check_writable(Path(node).expanduser(), key, folder=True)
        elif f.metadata.get("output") == "file":
            _check_writable(Path(node).expanduser(), key, folder=False)


def _check_writable(path: Path, key: str, *, folder: bool) -> None:
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a folder: give a folder for the job's outputs")
    if not folder and path.is_dir():
        raise ConfigError(f"{key}={path} is a folder: give a file path, e.g. {path / 'outputs.jsonl'}")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be written: no write permission in {parent}")
