"""Job outputs: atomic files, the run directory, its start-up rules, logging, seeding and progress.

Every job writes into its ``output_dir``: the resolved ``config.yaml``, a per-step ``metrics.jsonl``
where there are steps, ``metrics.json`` with the final figures (written last, atomically: its
presence means the job finished), and ``log.txt``. Files are replaced atomically (write to a
temporary file in the same folder, fsync, rename), so a killed job never leaves a truncated file
that looks complete.

Every job starts through :meth:`RunDir.lock` and :meth:`RunDir.start` (the trainers through
``prefgame.train.engine.begin_run``), which keep a folder honest:

* one job at a time: the job holds an exclusive lock on ``output_dir/.prefgame.lock`` for its life
  (the operating system releases it when the process ends, however it ends); a second job on the
  folder fails at once, naming the holder;
* a finished run (``metrics.json``) is replaced only when the config says ``overwrite=true``;
* ``resume=true`` continues from a checkpoint and fails when there is none (``resume=auto``
  continues when there is one and starts fresh otherwise); a resumed run must have the recorded
  configuration except for the keys of :data:`SAFE_ON_RESUME` (and :data:`GROWABLE_ON_RESUME`,
  which may only grow);
* on resume, the finished run's ``metrics.json`` is removed and the accepted ``config.yaml`` written
  only once the checkpoint has loaded (:meth:`RunDir.commit_resume`), before any training step, so
  ``config.yaml`` always describes the run that produced the files beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from prefgame.config import config_to_dict, config_to_yaml, flat_config, iter_keys, load_config, param
from prefgame.console import LIBRARY_LOG
from prefgame.errors import ConfigError, PrefgameError

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
        if path.exists():  # a name of its own: a fixed one could be another writer's swap in flight
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
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


# -- the start-up rules of an output folder ------------------------------------------------------------

Resume = bool | Literal["auto"]
"""The type of every job's ``resume`` key: true continues from the last checkpoint (an error when there
is none), false starts fresh, "auto" continues when there is a checkpoint and starts fresh otherwise."""


def resume_param(what: str = "the last checkpoint in output_dir") -> Any:
    """The ``resume`` key of a job config (type :data:`Resume`)."""
    return param(False, f"continue from {what} (an error when there is none); auto: continue if there is one")


def overwrite_param() -> Any:
    """The ``overwrite`` key of a job config."""
    return param(False, "let a fresh start replace a finished run in output_dir (its metrics, model, checkpoints)")


LOCK_FILE = ".prefgame.lock"  # in output_dir; holds the pid, host, start time and command of the job holding it

# Keys a resumed run may change: they decide how the run starts, what it logs and keeps, and where, not
# what it computes. Every other key must be as recorded in config.yaml.
SAFE_ON_RESUME = (
    "resume",  # how this run starts, not what it computes
    "overwrite",
    "output_dir",  # the folder may have been moved
    "num_threads",
    "train.report_to",
    "train.log_every",
    "train.eval_every",  # the held-out loss of sft, train-pm and offline dpo draws nothing at random
    "train.save_every",
    "train.keep_checkpoints",
    "llm_judge",  # quickstart: the LLM judge labels pairs and judges policies, stages a resumed quickstart redoes
    "judge.*",  # (a key ending in .* stands for its whole section)
)
# The run's length may grow on resume (a longer run from the same start); the learning-rate schedule is
# then that of the new length from the resumed step on (the same run when it is constant).
GROWABLE_ON_RESUME = ("train.max_steps", "train.iterations", "online.rounds")


def _main_process() -> bool:
    """False on the other processes of a multi-process launch (torchrun / accelerate launch set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    head = Path(argv[0])
    argv[0] = head.parent.name if head.name == "__main__.py" else head.name  # python -m prefgame: "prefgame"
    text = " ".join(argv)
    return text if len(text) <= 300 else text[:297] + "..."


def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "it has not recorded itself yet"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def resume_changes(cfg: Any, recorded: Path) -> list[str]:
    """The changes (``key old → new``) from the configuration recorded in ``recorded`` (a run's config.yaml)
    to ``cfg`` that a resumed run may make; a :class:`PrefgameError` listing every other one. Secret keys
    are not recorded and not compared; a key the recorded file lacks counts with its default."""
    where = f"cannot resume in {recorded.parent}"
    fresh = "or start a new run (overwrite=true without resume, or another output_dir)"
    if not recorded.is_file():
        raise PrefgameError(f"{where}: config.yaml is missing, so the checkpoint's configuration is unknown; {fresh}")
    try:
        before = load_config(type(cfg), recorded)
    except ConfigError as exc:
        raise PrefgameError(f"{where}: its config.yaml does not load ({exc}); {fresh}") from None
    secret = {key for key, _, f in iter_keys(type(cfg)) if f.metadata.get("secret")}
    old, new = (flat_config(config_to_dict(c)) for c in (before, cfg))
    allowed, refused = [], []
    for key, value in new.items():
        if key in secret or key in ("resume", "overwrite") or old.get(key) == value:  # how this run starts
            continue
        change = f"{key} {_show(old.get(key))} → {_show(value)}"
        if key in SAFE_ON_RESUME or any(key.startswith(k[:-1]) for k in SAFE_ON_RESUME if k.endswith(".*")):
            allowed.append(change)
        elif key in GROWABLE_ON_RESUME and isinstance(value, int) and value >= old.get(key, value):
            allowed.append(change)
        else:
            refused.append(change + (" (may only grow)" if key in GROWABLE_ON_RESUME else ""))
    if refused:
        raise PrefgameError(
            f"resume refused: the configuration differs from the one recorded in {recorded}: {'; '.join(refused)}. "
            "Only logging, checkpoint, tracker and thread settings may change on resume, and the run's length may "
            f"grow (docs/scaling.md, 'Resume'): undo these changes, {fresh}"
        )
    return allowed


class RunDir:
    """The output folder of one job."""

    def __init__(self, output_dir: str | Path, *, name: str = "prefgame") -> None:
        self.path = Path(output_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(name)
        self._handler: logging.Handler | None = None
        self._lock: int | None = None  # the descriptor holding the folder's lock
        self._resumed: Any = None  # the accepted config of a resumed run, until commit_resume records it

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: Any) -> None:
        atomic_write_text(self.file("config.yaml"), config_to_yaml(cfg))

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl``."""
        self.commit_resume()  # a trainer that did not record its resume yet: no step goes out before it
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
        self.commit_resume()
        atomic_write_json(self.file("metrics.json"), metrics)

    def start_fresh(self, outputs: Sequence[str] = ()) -> None:
        """Remove outputs of an earlier run (not resumed) so nothing stale looks current: its metrics,
        model and checkpoints, the further files and folders ``outputs`` names, and what an interrupted
        atomic write of any of them left (hidden ``.<name>.*``).

        Old checkpoints go too: a later ``resume=true`` must continue this run, not the earlier one.
        """
        for name in ("metrics.json", "metrics.jsonl", "checkpoints", "model", *outputs):
            target = self.file(name)
            if target.is_dir() and not target.is_symlink():  # out of sight in one rename: a kill leaves no half folder
                hidden = target.with_name(f".{name}.removed-{os.getpid()}")
                os.replace(target, hidden)
                shutil.rmtree(hidden, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            for leftover in self.path.glob(f".{name}.*"):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def finished(self, outputs: Sequence[str] = ()) -> list[str]:
        """The ``metrics.json`` files that mark finished runs here (relative paths): the folder's own and
        any under the folders ``outputs`` names (where a job runs other jobs)."""
        found = [self.file("metrics.json")] if self.file("metrics.json").exists() else []
        for name in outputs:
            if self.file(name).is_dir():
                found += sorted(self.file(name).rglob("metrics.json"))
        return [str(p.relative_to(self.path)) for p in found]

    # -- start-up ----------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold this folder's lock until :meth:`close` or the end of the process, however it ends: a second
        job on the folder fails at once, naming this one. Only the main process of a multi-process launch
        takes it; the other processes of the launch share the folder with it."""
        if self._lock is not None or not _main_process():
            return
        path = self.file(LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PrefgameError(f"cannot write in {self.path} ({exc.strerror}): choose a writable output_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PrefgameError(
                f"{self.path} is in use by another prefgame job ({_lock_holder(path)}); "
                "wait for it to end or choose another output_dir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": _command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._lock = fd

    def start(
        self,
        cfg: Any,
        *,
        resume: Resume = False,
        checkpoint: Path | None = None,
        outputs: Sequence[str] = (),
        main: bool = True,
        defer: bool = False,
    ) -> bool:
        """The start-up of a job in this folder, before it writes anything: the lock, then either continue
        from ``checkpoint`` (``resume`` true or "auto" and a checkpoint to continue from) or start fresh.

        Continuing checks ``cfg`` against the recorded ``config.yaml`` (:func:`resume_changes`), then
        :meth:`commit_resume` removes the finished run's ``metrics.json`` and records ``cfg``: at once, or
        with ``defer`` when the caller has loaded the checkpoint. ``resume=true`` without a checkpoint
        fails. Starting fresh refuses to replace a finished run (:meth:`finished`) unless
        ``cfg.overwrite``, then removes the earlier run's outputs (:meth:`start_fresh`) and records
        ``cfg``. Every process of a launch checks; only the ``main`` one writes. Returns True when the
        run continues from ``checkpoint``.
        """
        if main:
            self.lock()
        if resume and checkpoint is not None:
            changes = resume_changes(cfg, self.file("config.yaml"))
            if main:
                self._resumed = cfg
                if changes:
                    self.logger.info(f"resuming with changed settings: {', '.join(changes)}")
                if not defer:
                    self.commit_resume()
            return True
        finished = ", ".join(self.finished(outputs))
        if resume is True:
            also = f": it holds a finished run ({finished}), which only overwrite=true lets a new run replace"
            raise PrefgameError(
                f"resume=true but {self.path} holds no checkpoint to continue from{also if finished else ''}; "
                "resume=auto starts fresh when there is none"
            )
        if finished and not getattr(cfg, "overwrite", False):
            cont = ", resume=true to continue it from its last checkpoint" if checkpoint is not None else ""
            raise PrefgameError(
                f"{self.path} holds a finished run ({finished}) that a new run would replace: "
                f"add overwrite=true to replace it{cont}, or choose another output_dir"
            )
        if main:
            self.start_fresh(outputs)
            self.write_config(cfg)
        return False

    def commit_resume(self) -> None:
        """On resume, once the checkpoint has loaded and before any training step: remove the finished
        run's ``metrics.json`` (this run writes its own at its end) and record the accepted configuration in
        ``config.yaml``. Nothing to do otherwise, and on the other processes of a launch."""
        if self._resumed is None:
            return
        self.file("metrics.json").unlink(missing_ok=True)
        self.write_config(self._resumed)
        self._resumed = None

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
        """Close the log and release the folder's lock."""
        if self._handler is not None:
            logging.getLogger("prefgame").removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock, 0)  # the holder's record goes with the lock
            os.close(self._lock)
            self._lock = None


def run_job(output_dir: str | Path, body: Any, *, name: str = "prefgame", quiet: bool = False) -> Any:
    """``body(out, log)`` with the job's output folder locked (:meth:`RunDir.lock`) and open, and its
    ``log.txt`` written (the console line too unless ``quiet``); the lock is released and the log closed
    however the job ends. Returns what ``body`` returns."""
    out = RunDir(output_dir, name=name)
    out.lock()
    try:
        log = out.start_logging(quiet=quiet)
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
