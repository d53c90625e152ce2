"""Input formats: detection from the columns, and row-by-row normalization into the schema.

Formats (name → kind, required input columns):

``pairs`` → pairs: ``prompt`` (a prompt field, below), ``chosen``, ``rejected`` strings; optional soft
    label column ``label`` or ``preference`` (P(chosen ≻ rejected), default 1.0 when the data has no
    such column), ``subset``, ``source`` / ``annotator`` / ``judge``, ``score_chosen`` / ``score_rejected``.
``hh`` → pairs: Anthropic-HH transcripts, ``chosen`` / ``rejected`` strings of the form
    ``"\\n\\nHuman: …\\n\\nAssistant: …"`` (any number of turns; a ``prompt`` column, if any, is
    not used). The text after the last ``"\\n\\nAssistant:"`` is the response; the turns before it
    are the prompt, which must be the same in both transcripts.
``chat`` → pairs: ``chosen`` / ``rejected`` lists of {role, content} messages whose last message is
    the assistant response (UltraFeedback-binarized style); the messages before it must be the same
    in both. ``prompt`` (a prompt field) is used when the lists hold only the response.
``ratings`` → ratings: ``prompt`` (a prompt field), ``response`` and one numeric column per attribute
    (HelpSteer style). Attributes are the known names in :data:`KNOWN_ATTRIBUTES` plus every other numeric
    column except ids (``id``, ``idx``, ``index``, ``*_id``).
``rankings`` → rankings (K-way): a prompt field ``prompt`` or ``instruction`` and either
    ``completions``, a list of K ≥ 2 dicts each with a response text (``response``, ``text`` or
    ``content``) and a score (the first of :data:`SCORE_KEYS` it has; UltraFeedback's four rated
    completions), or ``responses`` (K strings) with ``scores`` (K numbers, higher is better) or
    ``ranking`` (a permutation of 0…K−1, best first); optional ``subset``, ``source``.
``battles`` → battles: ``model_a``, ``model_b``, ``winner`` (one of the four canonical values) and
    either ``prompt`` (a prompt field) or ``conversation_a`` / ``conversation_b`` message lists
    (Chatbot-Arena style); optional ``judge`` / ``annotator`` / ``annotator_id``, ``response_a`` /
    ``response_b``.

A *prompt field* (:func:`prompt_turns`) holds text, an HH transcript (``"\\n\\nHuman: …\\n\\nAssistant:
…"``) or a list of {role, content} messages; a transcript or list that ends with an assistant turn
gives the turns before it (that turn is a response). Every format keeps the whole conversation
before the responses in ``prompt_messages``.

A normalizer is a function ``row dict → record dict`` that raises :class:`RowError` on the first
problem it finds in the row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datasets import Features, Value

from prefgame.data.schema import BATTLES_FEATURES, PAIRS_FEATURES, RANKINGS_FEATURES, WINNERS, ratings_features
from prefgame.errors import DataError

FORMAT_KINDS = {
    "pairs": "pairs",
    "hh": "pairs",
    "chat": "pairs",
    "ratings": "ratings",
    "battles": "battles",
    "rankings": "rankings",
}
# a completion's score, in order of preference (UltraFeedback: overall_score, fine-grained_score)
SCORE_KEYS = ("score", "overall_score", "fine-grained_score", "rating")
_RESPONSE_KEYS = ("response", "text", "content")
KNOWN_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

_REQUIRED = {
    "pairs": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
    "chat": ("chosen", "rejected"),
    "ratings": ("prompt", "response"),
    "battles": ("model_a", "model_b", "winner"),
    "rankings": (),
}
_LABEL_COLUMNS = ("label", "preference")
_SOURCE_COLUMNS = ("source", "annotator", "judge")
_JUDGE_COLUMNS = ("judge", "annotator", "annotator_id")
_NOT_ATTRIBUTES = {"prompt", "response", "subset", "id", "idx", "index"}

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

Record = dict[str, Any]
Normalizer = Callable[[Mapping[str, Any]], Record]


class RowError(Exception):
    """The first problem found in a row: which field, a reason category and a detail."""

    def __init__(self, field: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.detail = field, reason, detail


# -- detection ---------------------------------------------------------------------------------


def detect_format(column_names: Sequence[str], first_row: Mapping[str, Any]) -> str:
    """Name the input format (a key of :data:`FORMAT_KINDS`) from the columns and one row.

    ``first_row`` only decides between ``chat`` (message lists) and the string formats (``hh`` when
    ``chosen`` is a "Human: … Assistant: …" transcript, even next to a ``prompt`` column); pass a row
    whose ``chosen`` is not null.
    """
    cols = set(column_names)
    if {"model_a", "model_b", "winner"} <= cols:
        return "battles"
    if "completions" in cols or ("responses" in cols and cols & {"scores", "ranking"}):
        return "rankings"
    if {"chosen", "rejected"} <= cols:
        chosen = first_row.get("chosen")
        if isinstance(chosen, list):
            return "chat"
        if "prompt" not in cols or (isinstance(chosen, str) and chosen.lstrip().startswith("Human:")):
            return "hh"
        return "pairs"
    if {"prompt", "response"} <= cols:
        return "ratings"
    raise DataError(
        f"cannot tell the data format from the columns {sorted(cols)}: expected prompt/chosen/rejected "
        "(pairs), chosen/rejected transcripts (hh) or message lists (chat), prompt/response + ratings "
        "(ratings), model_a/model_b/winner (battles), or prompt/completions or prompt/responses/scores "
        "(rankings); pass format= / --format to choose one"
    )


def check_columns(fmt: str, column_names: Sequence[str], source: str) -> None:
    """Raise DataError when ``fmt`` is unknown or the data lacks a column it needs."""
    if fmt not in FORMAT_KINDS:
        raise DataError(f"unknown data format '{fmt}' (choose one of {', '.join(FORMAT_KINDS)})")
    cols = set(column_names)
    missing = [c for c in _REQUIRED[fmt] if c not in cols]
    if fmt == "battles" and "prompt" not in cols and not {"conversation_a", "conversation_b"} <= cols:
        missing.append("prompt (or conversation_a/conversation_b)")
    if fmt == "rankings":
        if not cols & {"prompt", "instruction"}:
            missing.append("prompt (or instruction)")
        if "completions" not in cols and not ("responses" in cols and cols & {"scores", "ranking"}):
            missing.append("completions (or responses with scores or ranking)")
    if missing:
        raise DataError(
            f"{source}: format '{fmt}' needs the column(s) {', '.join(missing)}; the data has {sorted(cols)}"
        )


def make_normalizer(fmt: str, features: Features) -> tuple[Normalizer, Features]:
    """The row normalizer of ``fmt`` for data with these input features, and the output features."""
    cols = set(features)
    if fmt == "ratings":
        attributes = rating_attributes(features)
        return (lambda row: _ratings_row(row, attributes)), ratings_features(attributes)
    if fmt == "battles":
        return (lambda row: _battles_row(row, cols)), BATTLES_FEATURES
    if fmt == "rankings":
        return (lambda row: _rankings_row(row, cols)), RANKINGS_FEATURES
    pair_fn = {"pairs": _plain_pair, "hh": _hh_pair, "chat": _chat_pair}[fmt]
    return (lambda row: _pair_record(row, cols, *pair_fn(row))), PAIRS_FEATURES


def rating_attributes(features: Features) -> list[str]:
    """Attribute columns of a ratings input: known attribute names, then other numeric columns."""
    out = []
    for name, feature in features.items():
        numeric = isinstance(feature, Value) and feature.dtype.startswith(("int", "uint", "float"))
        is_id = name in _NOT_ATTRIBUTES or name.endswith("_id")
        if name in KNOWN_ATTRIBUTES or (numeric and not is_id):
            out.append(name)
    return out


# -- field readers -----------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _missing(value: Any) -> bool:
    """None, or the NaN that pandas puts in empty CSV cells."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(row: Mapping[str, Any], field: str, *, response: bool = False) -> str:
    """A required, non-empty string field."""
    value = row.get(field)
    if _missing(value):
        raise RowError(field, "missing field")
    if not isinstance(value, str):
        raise RowError(field, "wrong type", f"expected text, got {type(value).__name__} {_show(value)}")
    if not value.strip():
        raise RowError(field, "empty response" if response else "empty text")
    return value


def _optional_text(row: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The first of ``fields`` present in the row as a string ("" when none is)."""
    for field in fields:
        value = row.get(field)
        if _missing(value):
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError(field, "wrong type", f"expected text, got {type(value).__name__} {_show(value)}")
        return str(value)
    return ""


def _number(row: Mapping[str, Any], field: str) -> float | None:
    """An optional number (None/NaN → None); numeric strings from CSV files are accepted."""
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(field, "wrong type", f"expected a number, got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(field, "wrong type", f"expected a number, got {type(value).__name__} {_show(value)}")
    return None if math.isnan(value) else float(value)


def _label(row: Mapping[str, Any], cols: set[str]) -> float:
    field = next((c for c in _LABEL_COLUMNS if c in cols), None)
    if field is None:
        return 1.0
    label = _number(row, field)
    if label is None:
        raise RowError(field, "missing field")
    if not 0.0 <= label <= 1.0:
        raise RowError(field, "label out of [0, 1]", f"got {label:g}")
    return label


def _messages(row: Mapping[str, Any], field: str) -> list[dict[str, str]]:
    """A non-empty list of {role, content} string dicts (extra keys are dropped)."""
    value = row.get(field)
    if value is None:
        raise RowError(field, "missing field")
    if not isinstance(value, list) or not value:
        raise RowError(field, "wrong type", f"expected a non-empty list of messages, got {_show(value)}")
    out = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise RowError(field, "wrong type", f"message {i} is not a {{role, content}} dict of strings")
        out.append({"role": role, "content": content})
    return out


def _split_final_turn(messages: list[dict[str, str]], field: str) -> tuple[list[dict[str, str]], str]:
    """(messages before the final assistant turn, final assistant text)."""
    final = messages[-1]
    if final["role"] != "assistant":
        raise RowError(field, "no final assistant turn", f"last message has role {final['role']!r}")
    if not final["content"].strip():
        raise RowError(field, "empty response")
    return messages[:-1], final["content"]


def _last_user_text(messages: list[dict[str, str]], field: str) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise RowError(field, "no user turn", "the conversation before the response has no user message")


def prompt_turns(value: Any, field: str) -> list[dict[str, str]]:
    """The conversation of a prompt field (see the module docstring): text is one user turn; an HH
    transcript or a message list is every turn before its final assistant turn, and needs a user turn."""
    if _missing(value):
        raise RowError(field, "missing field")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field, "empty text")
        if not (value.lstrip().startswith("Human:") and HH_ASSISTANT in value):
            return [{"role": "user", "content": value}]
        parts = _HH_TURN.split("\n\n" + value.lstrip())  # ["", "Human", " text", "Assistant", " text", ...]
        messages = [{"role": _HH_ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    elif isinstance(value, list):
        messages = _messages({field: value}, field)
    else:
        raise RowError(
            field, "wrong type", f"expected text or a list of messages, got {type(value).__name__} {_show(value)}"
        )
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    _last_user_text(messages, field)
    return messages


def _prompt(row: Mapping[str, Any], field: str) -> tuple[str, list[dict[str, str]]]:
    """(text of the last user turn, the conversation) of a prompt field."""
    messages = prompt_turns(row.get(field), field)
    return _last_user_text(messages, field), messages


def _same_prompt(chosen_msgs: list[dict[str, str]], rejected_msgs: list[dict[str, str]]) -> None:
    if chosen_msgs != rejected_msgs:
        raise RowError("rejected", "prompt differs from chosen", "the turns before the final response differ")


# -- pairs -------------------------------------------------------------------------------------
# Each pair reader returns (prompt, prompt_messages, chosen, rejected).

PairParts = tuple[str, list[dict[str, str]], str, str]


def _plain_pair(row: Mapping[str, Any]) -> PairParts:
    prompt, messages = _prompt(row, "prompt")
    chosen = _text(row, "chosen", response=True)
    rejected = _text(row, "rejected", response=True)
    return prompt, messages, chosen, rejected


def split_hh_transcript(transcript: str, field: str = "chosen") -> tuple[list[dict[str, str]], str]:
    """Split an HH transcript into (messages before the last assistant turn, final response).

    ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → ``([{"role": "user", "content": "hi"}], "hello")``.
    Turn texts are stripped of surrounding whitespace; a transcript may omit the leading blank line.
    """
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RowError(field, "not an HH transcript", "no '\\n\\nAssistant:' turn")
    response = text[cut + len(HH_ASSISTANT) :].strip()
    parts = _HH_TURN.split(text[:cut])  # ["", "Human", " text", "Assistant", " text", ...]
    if parts[0].strip():
        raise RowError(field, "not an HH transcript", "text before the first 'Human:' turn")
    messages = [{"role": _HH_ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    if not messages or messages[-1]["role"] != "user":
        raise RowError(field, "not an HH transcript", "the last 'Assistant:' turn does not follow a 'Human:' turn")
    return messages, response


def _hh_pair(row: Mapping[str, Any]) -> PairParts:
    chosen_msgs, chosen = split_hh_transcript(_text(row, "chosen", response=True), "chosen")
    if not chosen:
        raise RowError("chosen", "empty response")
    rejected_msgs, rejected = split_hh_transcript(_text(row, "rejected", response=True), "rejected")
    if not rejected:
        raise RowError("rejected", "empty response")
    _same_prompt(chosen_msgs, rejected_msgs)
    return chosen_msgs[-1]["content"], chosen_msgs, chosen, rejected


def _chat_pair(row: Mapping[str, Any]) -> PairParts:
    chosen_msgs, chosen = _split_final_turn(_messages(row, "chosen"), "chosen")
    rejected_msgs, rejected = _split_final_turn(_messages(row, "rejected"), "rejected")
    _same_prompt(chosen_msgs, rejected_msgs)
    if not chosen_msgs:  # the lists hold only the responses: the prompt column is the conversation
        return (*_prompt(row, "prompt"), chosen, rejected)
    return _last_user_text(chosen_msgs, "chosen"), chosen_msgs, chosen, rejected


def _pair_record(
    row: Mapping[str, Any],
    cols: set[str],
    prompt: str,
    prompt_messages: list[dict[str, str]],
    chosen: str,
    rejected: str,
) -> Record:
    if chosen.strip() == rejected.strip():
        raise RowError("rejected", "identical to chosen")
    return {
        "prompt": prompt,
        "prompt_messages": prompt_messages,
        "chosen": chosen,
        "rejected": rejected,
        "label": _label(row, cols),
        "subset": _optional_text(row, ["subset"]),
        "source": _optional_text(row, _SOURCE_COLUMNS),
        "score_chosen": _number(row, "score_chosen"),
        "score_rejected": _number(row, "score_rejected"),
    }


# -- ratings and battles -----------------------------------------------------------------------


def _ratings_row(row: Mapping[str, Any], attributes: list[str]) -> Record:
    prompt, messages = _prompt(row, "prompt")
    response = _text(row, "response", response=True)
    ratings = {name: _number(row, name) for name in attributes}
    if all(v is None for v in ratings.values()):
        raise RowError("ratings", "no ratings", f"all of {', '.join(attributes) or '(no attribute columns)'} missing")
    record: Record = {
        "prompt": prompt,
        "prompt_messages": messages,
        "response": response,
    }
    record.update({name: math.nan if v is None else v for name, v in ratings.items()})
    record["subset"] = _optional_text(row, ["subset"])
    return record


def _battles_row(row: Mapping[str, Any], cols: set[str]) -> Record:
    if "prompt" in cols:
        prompt, messages = _prompt(row, "prompt")
        response_a = _text(row, "response_a", response=True) if "response_a" in cols else ""
        response_b = _text(row, "response_b", response=True) if "response_b" in cols else ""
    else:  # Chatbot-Arena conversations: the prompt is the final user turn before the responses
        before_a, response_a = _split_final_turn(_messages(row, "conversation_a"), "conversation_a")
        before_b, response_b = _split_final_turn(_messages(row, "conversation_b"), "conversation_b")
        if before_a != before_b:
            raise RowError("conversation_b", "prompt differs from conversation_a")
        prompt, messages = _last_user_text(before_a, "conversation_a"), before_a
    model_a, model_b = _text(row, "model_a"), _text(row, "model_b")
    if model_a == model_b:
        raise RowError("model_b", "same model on both sides", f"both are {model_a!r}")
    winner = _text(row, "winner")
    if winner not in WINNERS:
        raise RowError("winner", "unknown winner", f"got {_show(winner)}, expected one of {', '.join(WINNERS)}")
    return {
        "prompt": prompt,
        "prompt_messages": messages,
        "model_a": model_a,
        "model_b": model_b,
        "winner": winner,
        "judge": _optional_text(row, _JUDGE_COLUMNS),
        "response_a": response_a,
        "response_b": response_b,
        "subset": _optional_text(row, ["subset"]),
    }


# -- rankings ----------------------------------------------------------------------------------


def _score_value(value: Any, field: str) -> float:
    """A required finite score (numeric strings accepted)."""
    if _missing(value):
        raise RowError(field, "missing score")
    number = _number({field: value}, field)
    if number is None or math.isinf(number):
        raise RowError(field, "missing score" if number is None else "wrong type", f"got {_show(value)}")
    return number


def _completions(row: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    value = row.get("completions")
    if _missing(value):
        raise RowError("completions", "missing field")
    if not isinstance(value, list):
        raise RowError("completions", "wrong type", f"expected a list of completions, got {_show(value)}")
    responses, scores = [], []
    for i, item in enumerate(value):
        where = f"completions[{i}]"
        if not isinstance(item, Mapping):
            raise RowError(where, "wrong type", f"expected a dict with a response and a score, got {_show(item)}")
        key = next((k for k in _RESPONSE_KEYS if not _missing(item.get(k))), None)
        if key is None:
            raise RowError(f"{where}.response", "missing field", f"no {' / '.join(_RESPONSE_KEYS)}")
        responses.append(_text({f"{where}.{key}": item[key]}, f"{where}.{key}", response=True))
        score_key = next((k for k in SCORE_KEYS if not _missing(item.get(k))), None)
        if score_key is None:
            raise RowError(f"{where}.score", "missing score", f"no {' / '.join(SCORE_KEYS)}")
        scores.append(_score_value(item[score_key], f"{where}.{score_key}"))
    return responses, scores


def _listed_responses(row: Mapping[str, Any], cols: set[str]) -> tuple[list[str], list[float]]:
    value = row.get("responses")
    if _missing(value):
        raise RowError("responses", "missing field")
    if not isinstance(value, list):
        raise RowError("responses", "wrong type", f"expected a list of responses, got {_show(value)}")
    responses = [_text({f"responses[{i}]": v}, f"responses[{i}]", response=True) for i, v in enumerate(value)]
    if "scores" in cols and not _missing(row.get("scores")):
        raw = row["scores"]
        if not isinstance(raw, list) or len(raw) != len(responses):
            n = len(raw) if isinstance(raw, list) else _show(raw)
            raise RowError("scores", "wrong length", f"{n} scores for {len(responses)} responses")
        return responses, [_score_value(v, f"scores[{i}]") for i, v in enumerate(raw)]
    raw = row.get("ranking")
    if _missing(raw):
        raise RowError("scores" if "scores" in cols else "ranking", "missing field")
    if not isinstance(raw, list) or sorted(raw) != list(range(len(responses))):
        raise RowError(
            "ranking",
            "not a ranking",
            f"expected a permutation of 0…{len(responses) - 1} (best first), got {_show(raw)}",
        )
    scores = [0.0] * len(responses)
    for position, index in enumerate(raw):
        scores[index] = float(len(responses) - position)
    return responses, scores


def _rankings_row(row: Mapping[str, Any], cols: set[str]) -> Record:
    prompt, messages = _prompt(row, "prompt" if "prompt" in cols else "instruction")
    responses, scores = _completions(row) if "completions" in cols else _listed_responses(row, cols)
    field = "completions" if "completions" in cols else "responses"
    if len(responses) < 2:
        raise RowError(field, "fewer than 2 responses", f"got {len(responses)}")
    stripped = [r.strip() for r in responses]
    if len(set(stripped)) < len(stripped):
        first = next(i for i, r in enumerate(stripped) if stripped.index(r) != i)
        raise RowError(
            f"{field}[{first}]", "duplicate response", f"same text as {field}[{stripped.index(stripped[first])}]"
        )
    return {
        "prompt": prompt,
        "prompt_messages": messages,
        "responses": responses,
        "scores": scores,
        "subset": _optional_text(row, ["subset"]),
        "source": _optional_text(row, _SOURCE_COLUMNS),
    }
