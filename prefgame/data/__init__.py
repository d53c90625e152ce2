"""Preference data: load a hub data set or a local jsonl/json/parquet/csv file and normalize it.

Four normalized kinds, each a ``datasets.Dataset`` with fixed columns (details in
:mod:`prefgame.data.schema`):

- **pairs**: prompt, prompt_messages, chosen, rejected, label = P(chosen ≻ rejected) (1.0 hard,
  0.5 tie, soft values in [0, 1]), subset, source, score_chosen, score_rejected;
- **ratings**: prompt, prompt_messages, response, one float column per attribute (NaN when
  missing), subset;
- **battles**: prompt, prompt_messages, model_a, model_b, winner ∈ {model_a, model_b, tie,
  tie (bothbad)}, judge, response_a, response_b, subset;
- **rankings** (K-way): prompt, prompt_messages, responses (K ≥ 2), scores (K, higher is better),
  subset, source — e.g. UltraFeedback's four rated completions.

``prompt_messages`` is the whole conversation before the response(s); jobs read it as a prompt with
:func:`~prefgame.data.chat.as_prompt` (plain text for one user turn, a
:class:`~prefgame.data.chat.Conversation` for more).

Input formats (``pairs``, ``hh``, ``chat``, ``ratings``, ``battles``, ``rankings``) are detected from the columns
(:mod:`prefgame.data.formats`); invalid rows raise :class:`InvalidDataError` listing every problem,
or are dropped and reported with ``skip_invalid=True`` (:mod:`prefgame.data.load`).
"""

from prefgame.data.chat import Conversation, apply_chat_template_or_plain, as_prompt, conversation_text, messages_of
from prefgame.data.formats import FORMAT_KINDS, detect_format, split_hh_transcript
from prefgame.data.load import NormalizedData, load_preferences
from prefgame.data.schema import (
    BATTLES_FEATURES,
    PAIRS_FEATURES,
    RANKINGS_FEATURES,
    InvalidDataError,
    Problem,
    ratings_features,
)
from prefgame.data.summary import summarize

__all__ = [
    "BATTLES_FEATURES",
    "Conversation",
    "FORMAT_KINDS",
    "PAIRS_FEATURES",
    "RANKINGS_FEATURES",
    "InvalidDataError",
    "NormalizedData",
    "Problem",
    "apply_chat_template_or_plain",
    "as_prompt",
    "conversation_text",
    "detect_format",
    "load_preferences",
    "messages_of",
    "ratings_features",
    "split_hh_transcript",
    "summarize",
]
