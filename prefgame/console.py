"""The console of a command: library warnings held back while it runs.

Libraries print warnings on stderr as they go (Python ``warnings``, and the loggers of transformers,
datasets, huggingface_hub, accelerate and torch). A command that ends in a user error must print one
line, so while a command runs these are held: each is forwarded to the ``prefgame.libraries`` logger
(recorded in the run's ``log.txt``, left out of its console lines) and printed by the CLI once the
command has succeeded or crashed, never before a one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

LIBRARY_LOG = "prefgame.libraries"
# Without a run's log.txt the forwarded records must not fall through to logging's stderr fallback
logging.getLogger(LIBRARY_LOG).addHandler(logging.NullHandler())

# Loggers of the libraries a job calls into; transformers, datasets and huggingface_hub each attach their
# own stderr handler to theirs, accelerate and torch fall back to logging's last-resort handler.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "torch")


class _HeldMessages(logging.Handler):
    """Keeps the warnings libraries emit during a command, each once, and forwards each to
    ``prefgame.libraries`` (which the run's ``log.txt`` records and its console line omits)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: dict[str, None] = {}  # in order of first appearance, each once

    def add(self, source: str, text: str, level: int = logging.WARNING) -> None:
        line = f"{source}: {' '.join(text.split())}"  # one line, whatever the library wrote
        self.lines.setdefault(line)
        logging.getLogger(LIBRARY_LOG).log(level, line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed library record must not end the command
            return
        self.add(record.name.split(".")[0], text, record.levelno)

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """Stands in for ``warnings.showwarning``: what the warning says and where it was raised."""
        self.add("python", f"{category.__name__}: {message} ({filename}:{lineno})")


@contextlib.contextmanager
def held_library_messages() -> Iterator[_HeldMessages]:
    """While a command runs, hold back what libraries print as warnings (Python ``warnings`` and the
    libraries' loggers) so that a user error ends in exactly one line on stderr. The caller prints the
    held lines when the command succeeds or crashes; they also reach the run's ``log.txt``."""
    from datasets.utils import logging as ds_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    for lib in (hf_logging, ds_logging, hub_logging):
        lib.get_verbosity()  # each library attaches its stderr handler on first use: let that happen now
    held = _HeldMessages()
    saved = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.handlers[:]
        for h in saved[name]:
            logger.removeHandler(h)
        logger.addHandler(held)
    shown = warnings.showwarning  # Python warnings that the filters let through are held too
    warnings.showwarning = held.showwarning
    try:
        yield held
    finally:
        warnings.showwarning = shown
        for name, handlers in saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(held)
            for h in handlers:
                logger.addHandler(h)


def print_held(held: _HeldMessages, command: str) -> None:
    for line in held.lines:
        print(f"prefgame {command}: warning from {line}", file=sys.stderr)
