"""The normalized schema: column types of the four record kinds, and how problems are reported.

Every loader output is a ``datasets.Dataset`` of one *kind* with exactly these columns:

``pairs`` (:data:`PAIRS_FEATURES`)
    ``prompt`` str, the text of the final user turn; ``prompt_messages`` list of {role, content},
    the whole conversation before the final assistant turn (single-turn data gives
    ``[{"role": "user", "content": prompt}]``; what every job reads as the prompt, through
    :func:`prefgame.data.chat.as_prompt`); ``chosen`` / ``rejected`` str, the two final
    assistant responses; ``label`` float, P(chosen ≻ rejected) (1.0 hard label, 0.5 tie, any value in
    [0, 1] for soft labels); ``subset`` str ("" when absent); ``source`` str, the annotator or judge
    id ("" when absent); ``score_chosen`` / ``score_rejected`` float or None.

``ratings`` (:func:`ratings_features`)
    ``prompt`` str, ``prompt_messages`` (as for pairs), ``response`` str, then one float column per
    rated attribute (e.g. helpfulness, correctness, coherence, complexity, verbosity; a missing rating
    is NaN), then ``subset``.

``battles`` (:data:`BATTLES_FEATURES`)
    ``prompt`` str and ``prompt_messages`` (as for pairs); ``model_a`` / ``model_b`` str; ``winner``
    one of :data:`WINNERS`; ``judge`` str, the annotator or judge id ("" when absent); ``response_a``
    / ``response_b`` str ("" when the input has no responses); ``subset`` str.

``rankings`` (:data:`RANKINGS_FEATURES`)
    ``prompt`` str and ``prompt_messages`` (as for pairs); ``responses`` list of K ≥ 2 str, the
    responses to the one prompt (in input order); ``scores`` list of K floats, higher is better (from
    ratings, or K − position for a ranking given as positions); ``subset`` str; ``source`` str.

An invalid input row is described by a :class:`Problem`. Rows are numbered from 0 in the loaded
split (``dataset[row]``; in a jsonl file without blank lines that is line ``row + 1``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Features, List, Value

from prefgame.errors import DataError

KINDS = ("pairs", "ratings", "battles", "rankings")
WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")

_TEXT = Value("string")
_FLOAT = Value("float64")
MESSAGES = List({"role": _TEXT, "content": _TEXT})

PAIRS_FEATURES = Features(
    {
        "prompt": _TEXT,
        "prompt_messages": MESSAGES,
        "chosen": _TEXT,
        "rejected": _TEXT,
        "label": _FLOAT,
        "subset": _TEXT,
        "source": _TEXT,
        "score_chosen": _FLOAT,
        "score_rejected": _FLOAT,
    }
)

RANKINGS_FEATURES = Features(
    {
        "prompt": _TEXT,
        "prompt_messages": MESSAGES,
        "responses": List(_TEXT),
        "scores": List(_FLOAT),
        "subset": _TEXT,
        "source": _TEXT,
    }
)

BATTLES_FEATURES = Features(
    {
        "prompt": _TEXT,
        "prompt_messages": MESSAGES,
        "model_a": _TEXT,
        "model_b": _TEXT,
        "winner": _TEXT,
        "judge": _TEXT,
        "response_a": _TEXT,
        "response_b": _TEXT,
        "subset": _TEXT,
    }
)


def ratings_features(attributes: Sequence[str]) -> Features:
    """Columns of a ratings dataset with the given attribute columns (in that order)."""
    columns = {"prompt": _TEXT, "prompt_messages": MESSAGES, "response": _TEXT}
    columns.update({name: _FLOAT for name in attributes})
    columns["subset"] = _TEXT
    return Features(columns)


@dataclass(frozen=True)
class Problem:
    """One invalid input row (or, for a malformed JSON line, one bad line of the file).

    ``reason`` is a short category ("empty response", "wrong type", ...) that reports count by;
    ``detail`` says more about this row.
    """

    file: str
    row: int | None
    field: str
    reason: str
    detail: str = ""
    line: int | None = None

    def describe(self) -> str:
        """``"row 7, field 'chosen': empty response"`` (one line, without the file)."""
        where = f"line {self.line}" if self.line is not None else f"row {self.row}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class InvalidDataError(DataError):
    """Input rows (or JSON lines) are invalid; ``problems`` lists every one of them."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems


def count_reasons(problems: Sequence[Problem]) -> dict[str, int]:
    """Number of problems per reason, most frequent first."""
    return dict(Counter(p.reason for p in problems).most_common())


def problems_message(source: str, problems: Sequence[Problem], *, what: str = "invalid row") -> str:
    """The one-line summary used as the error message and in logs."""
    n = len(problems)
    counts = ", ".join(f"{k} {reason}" for reason, k in count_reasons(problems).items())
    return f"{source}: {n} {what}{'s' if n != 1 else ''} ({counts}); first: {problems[0].describe()}"
