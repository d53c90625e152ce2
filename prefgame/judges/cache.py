"""A persistent, append-only cache of single-order judgments (one JSON line each).

Each judgment is appended and fsync'd as soon as it is paid for, so a run killed midway loses none
of them; a line cut by the kill is skipped on load (and the next append starts on a fresh line).
Lines carry a ``status``: ``ok`` lines are labels and are reused; ``failed`` lines record what went
wrong and are never reused, so the judgment is asked again on the next run.

The key is a hash of everything that can change a verdict (see :func:`judgment_key`); several
judges can share one file. The API key is never part of a key or a line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_FILE = "judgments.jsonl"
KEY_VERSION = 1  # bump when the request sent for the same settings changes meaning


def judgment_key(settings: dict[str, Any], prompt: str, first: str, second: str) -> str:
    """sha256 of (judge settings, prompt, response shown first, response shown second).

    The order is part of the key through (first, second): the (b, a) judgment of a pair is the
    (a, b) judgment of the swapped pair, and is shared with it.
    """
    blob = json.dumps([KEY_VERSION, settings, prompt, first, second], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Judgments by key, loaded from and appended to ``<cache_dir>/judgments.jsonl``.

    ``cache_dir=None`` keeps them in memory only. Safe to call from several threads.
    """

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.path = Path(cache_dir).expanduser() / CACHE_FILE if cache_dir else None
        self._ok: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.loaded_ok = self.loaded_failed = self.skipped_lines = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    key, status = entry["key"], entry["status"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1  # a line cut by a kill
                    continue
                if status == "ok":
                    self._ok[key] = entry
                    self.loaded_ok += 1
                else:
                    self.loaded_failed += 1
        if self.skipped_lines:
            log.warning(f"judgment cache {path}: skipped {self.skipped_lines} unreadable line(s)")

    def __len__(self) -> int:
        return len(self._ok)

    def get(self, key: str) -> dict[str, Any] | None:
        """The ``ok`` judgment stored under ``key``; failures are never returned."""
        with self._lock:
            return self._ok.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        """Append one judgment (``key`` and ``status`` required) and fsync it before returning."""
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self.path is not None:
                self._append(line)
            if entry["status"] == "ok":
                self._ok[entry["key"]] = entry

    def _append(self, line: bytes) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if _ends_without_newline(self.path):
                line = b"\n" + line  # close a line cut by an earlier kill
            os.write(fd, line)  # one write per line: O_APPEND keeps concurrent writers' lines whole
            os.fsync(fd)
        finally:
            os.close(fd)


def _ends_without_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"
