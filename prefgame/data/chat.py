"""Turning a list of chat messages into model input text.

:func:`apply_chat_template_or_plain` uses the tokenizer's own chat template when it has one
(``tokenizer.chat_template`` is set). Otherwise it falls back to a plain format, one paragraph per
turn with the role capitalized::

    System: Be brief.

    User: How long should I boil an egg?

    Assistant:

Turns are joined by a blank line; with ``add_generation_prompt`` the text ends with
``"\\n\\nAssistant:"`` so that the model continues as the assistant (no trailing space).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PLAIN_SEPARATOR = "\n\n"


def plain_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The plain fallback format described in the module docstring."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        turns.append("Assistant:")
    return PLAIN_SEPARATOR.join(turns)


def apply_chat_template_or_plain(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
) -> str:
    """Render ``messages`` as text with the tokenizer's chat template, or the plain fallback.

    ``tokenizer`` may be None (plain format). The result is text, not token ids.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return plain_chat(messages, add_generation_prompt=add_generation_prompt)
