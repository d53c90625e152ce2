"""Reading the files of models and checkpoints, and saying in one line what is wrong with one.

Weights are safetensors files: a little-endian length, a JSON header naming every tensor's byte range,
then the bytes. :func:`check_safetensors` reads only the header and the file size, so a damaged,
truncated or foreign file (a pickle posing as ``*.safetensors``) is named before anything is loaded.
Optimizer state (``optimizer.pt``) is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never code. Every failure is a :class:`~prefgame.errors.DataError` naming the file,
what is wrong and how to get a good one.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prefgame.errors import DataError

HEADER_LIMIT = 100_000_000  # bytes; the safetensors format's own cap on a header
_PICKLE = b"\x80"  # protocol 2+ pickles start with PROTO
_ZIP = b"PK\x03\x04"  # torch.save's format: a zip of pickles


def _kind_of(head: bytes) -> str | None:
    """What a file that should be safetensors is instead, from its first bytes."""
    if head.startswith(_ZIP):
        return "a torch.save (zip of pickles) file"
    if head[:1] == _PICKLE and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    return None


def check_safetensors(path: str | Path, fix: str = "save or copy it again") -> None:
    """Raise DataError unless ``path`` is a complete safetensors file (header and sizes only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: {fix}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = None
        if 0 <= length <= min(HEADER_LIMIT, size - 8):
            try:
                header = json.loads(fh.read(length))
                ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                header = None
    if header is None:
        other = _kind_of(head)
        if other:
            raise DataError(
                f"{path} is {other}, not safetensors: prefgame never unpickles weights; "
                "save them with safetensors (save_pretrained / safetensors.torch.save_file)"
            )
        if length < 0:
            raise DataError(f"{path} is not a safetensors file (only {size} bytes): it is truncated; {fix}")
        what = "its header length is wrong" if length > size - 8 else "its header is damaged"
        raise DataError(f"{path} is not a valid safetensors file ({what}): {fix}")
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise DataError(f"{path} is truncated ({size} of {expected} bytes): {fix}")


def load_safetensors(path: str | Path, fix: str = "save or copy it again") -> dict[str, torch.Tensor]:
    """The tensors of a checked safetensors file (see :func:`check_safetensors`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, fix)
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise DataError(f"{path} is not a valid safetensors file ({' '.join(str(exc).split())}): {fix}") from None


def load_torch_state(path: str | Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers, never code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: {fix}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise DataError(
            f"{path} holds objects other than tensors and plain containers, which prefgame never "
            f"unpickles (nothing in it was run): {fix}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DataError(f"{path} is damaged or truncated ({reason}): {fix}") from None


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file of a model or checkpoint folder, or DataError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {fix}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: {fix}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): {fix}") from None


def load_pretrained(load: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """``load(name_or_path, **kwargs)`` (a transformers ``from_pretrained``) with every failure in one
    line: a local folder's safetensors files are checked first, and a pickled weights file holding
    anything but tensors is named (transformers reads ``*.bin`` with ``weights_only=True``)."""
    from safetensors import SafetensorError

    folder = Path(name_or_path)
    fix = f"save the {what} again (save_pretrained) or copy it from its source"
    if folder.is_dir():
        for file in sorted(folder.glob("*.safetensors")):
            check_safetensors(file, fix)
    try:
        return load(name_or_path, **kwargs)
    except pickle.UnpicklingError:
        bins = sorted(folder.glob("*.bin")) if folder.is_dir() else []
        name = bins[0] if len(bins) == 1 else name_or_path
        raise DataError(
            f"{name} holds objects other than tensors, which prefgame never unpickles (nothing in it was run): "
            f"give the {what} as model.safetensors"
        ) from None
    except (OSError, ValueError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot load {what} from '{name_or_path}': {first}") from None
