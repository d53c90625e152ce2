"""``prefgame data validate FILE_OR_HUB_NAME [--format F] [--split S] [--skip-invalid] [--json]``.

Loads and normalizes the data set, then prints a summary (rows, kind, detected format, label
balance, length statistics, problems by reason). Invalid rows are listed on stderr (at most
:data:`MAX_LISTED` lines); without ``--skip-invalid`` the command then fails with a one-line error
(exit code 2, printed by :mod:`prefgame.cli`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from prefgame.data.formats import FORMAT_KINDS
from prefgame.data.load import load_preferences
from prefgame.data.schema import InvalidDataError, Problem
from prefgame.data.summary import summarize

MAX_LISTED = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate`` sub-command to the ``data`` command's parser."""
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    p = sub.add_parser(
        "validate",
        help="load a preference data set, check every row and print a summary",
        description="Load a preference data set, check every row and print a summary.",
    )
    p.add_argument("source", metavar="FILE_OR_HUB_NAME", help="a .jsonl/.json/.parquet/.csv file or a hub name")
    p.add_argument("--format", choices=list(FORMAT_KINDS), default=None, help="input format (default: detect)")
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of failing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    """Run ``prefgame data <subcommand>``; returns the exit code."""
    import datasets

    datasets.disable_progress_bars()
    try:
        data = load_preferences(args.source, split=args.split, format=args.format, skip_invalid=args.skip_invalid)
    except InvalidDataError as exc:
        print_problems(exc.problems, file=sys.stderr)
        raise
    if data.problems:
        print_problems(data.problems, file=sys.stderr, dropped=True)
    summary = summarize(data)
    if args.json:
        from prefgame.run import to_json

        print(to_json(summary))
    else:
        print(format_summary(summary))
    return 0


def print_problems(problems: Sequence[Problem], *, file: TextIO, dropped: bool = False) -> None:
    """List problems one per line (at most MAX_LISTED), with a header saying how rows are numbered."""
    n = len(problems)
    what = f"dropped {n} invalid row{'s' if n != 1 else ''}" if dropped else f"{n} problem{'s' if n != 1 else ''}"
    note = " (rows are 0-based indexes into the split)" if any(p.row is not None for p in problems) else ""
    print(f"{what}{note}:", file=file)
    for problem in problems[:MAX_LISTED]:
        print(f"  {problem.describe()}", file=file)
    if len(problems) > MAX_LISTED:
        print(f"  ... and {len(problems) - MAX_LISTED} more", file=file)


def _num(x: float, digits: int = 1) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary printed by ``data validate``."""
    lines = [
        f"source    {summary['source']}",
        f"format    {summary['format']} (kind: {summary['kind']})",
        f"rows      {summary['rows']} valid, {summary['invalid_rows']} invalid dropped",
    ]
    if "labels" in summary:
        labels = summary["labels"]
        shares = ", ".join(f"{k} {_pct(v)}" for k, v in labels.items() if k != "mean")
        lines.append(f"labels    {shares} (mean label {_num(labels['mean'], 3)})")
    if "winners" in summary:
        lines.append("winners   " + ", ".join(f"{k} {_pct(v)}" for k, v in summary["winners"].items()))
    if "rankings" in summary:
        r = summary["rankings"]
        lines.append(
            f"rankings  K {r['k_min']}–{r['k_max']} (mean {_num(r['k_mean'], 2)}), all tied {_pct(r['all_tied'])}, "
            f"tied pairs {_pct(r['tied_pairs'])}"
        )
    if "attributes" in summary:
        lines.append("ratings   attribute: mean (missing)")
        for name, stats in summary["attributes"].items():
            lines.append(f"  {name:<16} {_num(stats['mean'], 2)} ({stats['missing']})")
    lines.append("lengths   chars mean / median / max | words mean / median / max")
    for name, stats in summary["lengths"].items():
        chars = " / ".join(_num(stats["chars"][k], d) for k, d in (("mean", 1), ("median", 1), ("max", 0)))
        words = " / ".join(_num(stats["words"][k], d) for k, d in (("mean", 1), ("median", 1), ("max", 0)))
        lines.append(f"  {name:<16} {chars} | {words}")
    problems = ", ".join(f"{reason}: {n}" for reason, n in summary["problems"].items())
    lines.append(f"problems  {problems or 'none'}")
    return "\n".join(lines)
