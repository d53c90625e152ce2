"""Loading preference data from a local file or the Hugging Face hub, normalized into the schema.

``load_preferences("data/train.jsonl")`` reads the file with ``datasets.load_dataset`` (the
``json``, ``parquet`` or ``csv`` builder, chosen by the file extension), detects the input format
from the columns (see :mod:`prefgame.data.formats`), checks every row and returns a
:class:`NormalizedData` whose ``dataset`` has the columns of :mod:`prefgame.data.schema`. A source
that is not an existing path but looks like ``org/name`` is loaded from the hub.

Invalid rows are never dropped silently: by default the first problem stops the load with an
:class:`~prefgame.data.schema.InvalidDataError` (a ``DataError``) whose one-line message counts the
problems and names the first one, and whose ``problems`` attribute lists them all. With
``skip_invalid=True`` the invalid rows are dropped, logged on the ``prefgame.data`` logger and kept
in ``NormalizedData.problems``. Malformed lines of a JSON-lines file always stop the load (with their
line numbers), since the ``datasets`` JSON reader cannot skip them.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset

from prefgame.data.formats import (
    FORMAT_KINDS,
    Normalizer,
    RowError,
    check_columns,
    detect_format,
    make_normalizer,
)
from prefgame.data.schema import InvalidDataError, Problem, count_reasons, problems_message
from prefgame.errors import DataError

logger = logging.getLogger("prefgame.data")

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_DATA_SUFFIXES = {*FILE_BUILDERS, ".tsv", ".txt", ".gz", ".arrow", ".zip"}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_SKIP_HINT = "use --skip-invalid / skip_invalid=True / data.skip_invalid=true to drop them"


@dataclass
class NormalizedData:
    """A loaded data set in the normalized schema.

    ``kind`` is "pairs", "ratings" or "battles"; ``format`` the input format it was read as;
    ``problems`` the invalid rows that were dropped (empty unless ``skip_invalid``); ``source`` the
    file or hub name it came from.
    """

    kind: str
    dataset: Dataset
    format: str
    source: str
    problems: list[Problem] = field(default_factory=list)


def load_preferences(
    source: str,
    *,
    split: str = "train",
    format: str | None = None,
    skip_invalid: bool = False,
    data_files: Any = None,
) -> NormalizedData:
    """Load and normalize preference data.

    Args:
        source: a local .jsonl/.json/.parquet/.csv file, a hub data set name (``org/name``), or, with
            ``data_files``, a builder name (``"json"``) or hub name that ``data_files`` refers to.
        split: the split to read (a single local file is read as this split).
        format: the input format (see :data:`~prefgame.data.formats.FORMAT_KINDS`); detected from
            the columns when None.
        skip_invalid: drop invalid rows (and report them) instead of raising.
        data_files: passed to ``datasets.load_dataset`` as is.

    Raises:
        DataError: the source cannot be found or read, or its format is unknown;
            ``InvalidDataError`` (a DataError) when rows are invalid and not ``skip_invalid``.
    """
    raw = load_raw(source, split=split, data_files=data_files)
    if len(raw) == 0:
        raise DataError(f"{source}: split '{split}' has no rows")
    fmt = format or detect_format(raw.column_names, _representative_row(raw))
    check_columns(fmt, raw.column_names, source)
    normalize, features = make_normalizer(fmt, raw.features)
    records, problems = normalize_rows(raw, normalize, source)
    if problems and not skip_invalid:
        raise InvalidDataError(f"{problems_message(source, problems)} ({_SKIP_HINT})", problems)
    if problems:
        counts = ", ".join(f"{k} {reason}" for reason, k in count_reasons(problems).items())
        first = problems[0].describe()
        logger.warning(f"{source}: dropped {len(problems)} of {len(raw)} rows as invalid ({counts}); first: {first}")
    columns = {name: [r[name] for r in records] for name in features}
    dataset = Dataset.from_dict(columns, features=features)
    return NormalizedData(FORMAT_KINDS[fmt], dataset, fmt, source, problems)


def normalize_rows(raw: Dataset, normalize: Normalizer, source: str) -> tuple[list[dict], list[Problem]]:
    """Apply ``normalize`` to every row: (records of the valid rows, one problem per invalid row)."""
    records, problems = [], []
    for index, row in enumerate(iter_rows(raw)):
        try:
            records.append(normalize(row))
        except RowError as exc:
            problems.append(Problem(source, index, exc.field, exc.reason, exc.detail))
    return records, problems


def iter_rows(ds: Dataset, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Rows as plain dicts, read in batches (faster than indexing row by row)."""
    for batch in ds.iter(batch_size=batch_size):
        names = list(batch)
        for values in zip(*batch.values()):
            yield dict(zip(names, values))


def _representative_row(raw: Dataset) -> dict[str, Any]:
    """The first row whose ``chosen`` is not null (format detection looks at its type)."""
    rows = list(iter_rows(raw.select(range(min(len(raw), 1000)))))
    return next((r for r in rows if r.get("chosen") is not None), rows[0])


# -- reading -----------------------------------------------------------------------------------


def looks_like_hub_name(source: str) -> bool:
    """``"org/name"`` or ``"name"`` without a data-file extension."""
    return bool(_HUB_NAME.fullmatch(source)) and Path(source).suffix.lower() not in _DATA_SUFFIXES


def load_raw(source: str, *, split: str = "train", data_files: Any = None) -> Dataset:
    """The split as ``datasets`` reads it, before normalization (JSON files are checked first)."""
    if data_files is not None:
        for path in _local_files(data_files):
            if path.suffix.lower() in (".json", ".jsonl"):
                check_json_file(path, str(path))
        return _load_dataset(source, source, data_files=data_files, split=split)
    path = Path(source).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{source}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet or .csv)")
        if builder != "parquet":
            check_text_file(path, source, header=builder == "csv")
        if builder == "json":
            check_json_file(path, source)
        return _load_dataset(source, builder, data_files={split: str(path)}, split=split)
    if path.exists():
        raise DataError(f"{source}: is a directory; give a data file (or a builder name with data_files=)")
    if looks_like_hub_name(source):
        return _load_dataset(source, source, split=split)
    raise DataError(f"{source}: file not found")


def _load_dataset(label: str, path: str, **kwargs: Any) -> Dataset:
    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # datasets raises many exception types; the user needs one line, with the cause
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        lines = str(cause).strip().splitlines()
        raise DataError(f"{label}: could not load ({type(cause).__name__}: {lines[0] if lines else ''})") from exc


def check_text_file(path: Path, label: str, *, header: bool = False) -> None:
    """Raise DataError for a text data file that is not UTF-8 (naming the line of the first bad byte)
    or holds no rows (nothing but blank lines; for a CSV, nothing after its ``header`` line)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = seen = 0
    rows = False
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line = lines + chunk[: exc.start].count(b"\n") + 1
                raise DataError(
                    f"{label}: not UTF-8 text (byte 0x{chunk[exc.start]:02x} at line {line}): save the file as UTF-8"
                ) from None
            lines += chunk.count(b"\n")
            if not rows:
                seen += sum(1 for line in chunk.splitlines() if line.strip())
                rows = seen > int(header)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{label}: not UTF-8 text (the file ends inside a character): save it as UTF-8") from None
    if not rows:
        what = "only a header line" if header and seen else "no rows"
        raise DataError(f"{label}: the file is empty ({what}): give a data file with rows")


def _local_files(data_files: Any) -> list[Path]:
    """Existing local files named in a ``data_files`` argument (str, list, or dict of those)."""
    if isinstance(data_files, dict):
        return [p for value in data_files.values() for p in _local_files(value)]
    names = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
    return [Path(n) for n in names if Path(n).is_file()]


def check_json_file(path: Path, label: str) -> None:
    """Raise InvalidDataError naming every malformed line of a JSON-lines file (1-based line numbers).

    A ``.json`` file holding one JSON document (e.g. an array of records) is checked as a whole.
    """
    if path.suffix.lower() == ".json" and _is_json_document(path, label):
        return
    problems = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    problems.extend(_check_json_line(line, number, label))
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: not UTF-8 text ({exc.reason})") from None
    if problems:
        message = problems_message(label, problems, what="malformed JSON line")
        raise InvalidDataError(f"{message} (fix or remove these lines)", problems)


def _check_json_line(line: str, number: int, label: str) -> list[Problem]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return [Problem(label, None, "", "malformed JSON", f"{exc.msg} at column {exc.colno}", line=number)]
    if not isinstance(obj, dict):
        return [Problem(label, None, "", "not a JSON object", f"got {type(obj).__name__}", line=number)]
    return []


def _is_json_document(path: Path, label: str) -> bool:
    """True for a valid JSON document; False for text that may be JSON lines; raises for a broken array."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: not UTF-8 text ({exc.reason})") from None
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError as exc:
        if not text.lstrip().startswith("["):
            return False
        problem = Problem(label, None, "", "malformed JSON", f"{exc.msg} at column {exc.colno}", line=exc.lineno)
        raise InvalidDataError(problems_message(label, [problem], what="malformed JSON document"), [problem]) from None
