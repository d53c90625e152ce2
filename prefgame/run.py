"""Job outputs: atomic files, the run directory, logging, seeding and progress.

Every job writes into its ``output_dir``: the resolved ``config.yaml``, a per-step ``metrics.jsonl``
where there are steps, ``metrics.json`` with the final figures (written last, atomically: its
presence means the job finished), and ``log.txt``. Files are replaced atomically (write to a
temporary file in the same folder, fsync, rename), so a killed job never leaves a truncated file
that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefgame.config import config_to_yaml
from prefgame.console import LIBRARY_LOG

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _not_library(record: logging.LogRecord) -> bool:
    return not record.name.startswith(LIBRARY_LOG)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(_clean(obj), indent=indent, default=_json_default, ensure_ascii=False)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A crash inside the block leaves ``path`` as it was (the old version or nothing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):  # on disk before the rename, so a power loss cannot publish empty files
            if file.is_file():
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def untie_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): clone duplicates."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class RunDir:
    """The output folder of one job."""

    def __init__(self, output_dir: str | Path, *, name: str = "prefgame") -> None:
        self.path = Path(output_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(name)
        self._handler: logging.Handler | None = None

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: Any) -> None:
        atomic_write_text(self.file("config.yaml"), config_to_yaml(cfg))

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl``."""
        with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(to_json({"step": step, **metrics}, indent=None) + "\n")
            fh.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: keep only the lines up to ``last_step`` (those after it are replayed)."""
        path = self.file("metrics.jsonl")
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if row.get("step", 0) <= last_step:
                keep.append(line + "\n")
        atomic_write_text(path, "".join(keep))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Final figures; written last so that its presence means the job completed."""
        atomic_write_json(self.file("metrics.json"), metrics)

    def start_fresh(self) -> None:
        """Remove outputs of an earlier run (not resumed) so nothing stale looks current.

        Old checkpoints go too: a later ``resume=true`` must continue this run, not the earlier one.
        """
        for name in ("metrics.json", "metrics.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                self.file(name).unlink()
        for name in ("checkpoints", "model"):  # out of sight in one rename, so a kill leaves no half folder
            target = self.file(name)
            if target.exists():
                hidden = target.with_name(f".{name}.removed-{os.getpid()}")
                os.replace(target, hidden)
                shutil.rmtree(hidden, ignore_errors=True)

    # -- logging -----------------------------------------------------------------------------
    def start_logging(self, *, quiet: bool = False) -> logging.Logger:
        root = logging.getLogger("prefgame")
        root.setLevel(logging.INFO)
        rank = int(os.environ.get("RANK", "0"))  # set by torchrun / accelerate launch
        if rank > 0:  # other data-parallel processes: warnings on the console; rank 0 writes log.txt
            if not any(getattr(h, "_prefgame_console", False) for h in root.handlers):
                console = logging.StreamHandler(sys.stderr)
                console.setLevel(logging.WARNING)
                console.setFormatter(logging.Formatter(f"[prefgame rank {rank}] %(message)s"))
                console.addFilter(_not_library)
                console._prefgame_console = True  # type: ignore[attr-defined]
                root.addHandler(console)
            return self.logger
        self._handler = logging.FileHandler(self.file("log.txt"), encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(self._handler)
        if not quiet and not any(getattr(h, "_prefgame_console", False) for h in root.handlers):
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("[prefgame] %(message)s"))
            console.addFilter(_not_library)
            console._prefgame_console = True  # type: ignore[attr-defined]
            root.addHandler(console)
        return self.logger

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger("prefgame").removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def run_job(output_dir: str | Path, body: Any, *, name: str = "prefgame", quiet: bool = False) -> Any:
    """``body(out, log)`` with the job's output folder open and its ``log.txt`` written (the console line
    too unless ``quiet``); the log is closed however the job ends. Returns what ``body`` returns."""
    out = RunDir(output_dir, name=name)
    log = out.start_logging(quiet=quiet)
    try:
        return body(out, log)
    finally:
        out.close()


class Progress:
    """Periodic progress lines (steps done, rate, ETA) for long loops; quiet by default in tests."""

    def __init__(self, total: int, desc: str, logger: logging.Logger, *, every_s: float = 10.0) -> None:
        self.total, self.desc, self.logger, self.every_s = total, desc, logger, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int = 1, **info: Any) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
            self.logger.info(f"{self.desc}: {self.done}/{self.total} ({rate:.2f}/s, eta {eta:.0f}s) {extra}".rstrip())
