"""Chat messages: conversations as prompts, and a list of messages as text.

A prompt is a ``str``. A prompt that is more than one user turn (a multi-turn history, a system
message) is a :class:`Conversation`: a ``str`` whose value is :func:`conversation_text` of its
messages (what judges, oracles, caches and output files read) and whose ``messages`` are what models
read: :func:`prefgame.lm.encode_prompt` and the preference-model encoder apply the chat template to
the whole list. :func:`as_prompt` makes the prompt of a message list, :func:`messages_of` gives
the messages of any prompt back. A one-user-turn conversation is its plain text, so single-turn
data give the same prompts whichever field or format they come from.

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
Message = Mapping[str, str]


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


def conversation_text(messages: Sequence[Message]) -> str:
    """A conversation as one text, for readers of text (judges, oracles, output files): one user turn
    is its content; any other conversation is every turn, roles kept, in the plain format of the
    module docstring without the generation prompt (``"User: …\\n\\nAssistant: …\\n\\nUser: …"``)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return plain_chat(messages, add_generation_prompt=False)


class Conversation(str):
    """A prompt of several messages: the ``str`` :func:`conversation_text` of ``messages``, which it keeps.

    It equals (and hashes as) that text, so text-keyed caches and oracles that read text take it as
    it is; code that renders a prompt for a model reads :func:`messages_of` instead. Text operations
    (slicing, ``strip``, concatenation) return plain ``str`` without the messages.
    """

    turns: tuple[tuple[str, str], ...]

    def __new__(cls, messages: Sequence[Message]) -> Conversation:
        turns = tuple((m["role"], m["content"]) for m in messages)
        if not turns:
            raise ValueError("a conversation needs at least one message")
        self = super().__new__(cls, conversation_text(messages))
        self.turns = turns
        return self

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.turns]

    def __reduce__(self):  # pickling and deep copies keep the messages
        return Conversation, (self.messages,)

    def __repr__(self) -> str:
        return f"Conversation({self.messages!r})"


def as_prompt(messages: Sequence[Message]) -> str:
    """The prompt of the conversation before a response: its text when it is one user turn, else a
    :class:`Conversation`."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return Conversation(messages)


def messages_of(prompt: str | Sequence[Message]) -> list[dict[str, str]]:
    """The messages of a prompt: a :class:`Conversation`'s own, one user turn for plain text, or a copy
    of a message list."""
    if isinstance(prompt, Conversation):
        return prompt.messages
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
