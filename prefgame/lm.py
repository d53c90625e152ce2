"""Causal-LM helpers shared by every trainer: prompt formatting, tokenization, what ends a sampled
response (:class:`Stops`), and response log-probabilities (sampling itself: :mod:`prefgame.game.lm_sampling`).

Prompts are rendered with the tokenizer's chat template when it has one (plain text otherwise);
responses are tokenized on their own and followed by EOS, so the boundary between prompt and
response tokens is exact for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prefgame.data.chat import messages_of
from prefgame.errors import PrefgameError
from prefgame.losses.logprobs import response_logprobs
from prefgame.weights import load_pretrained


def _require_local_or_hub_name(name_or_path: str, what: str) -> None:
    """A missing local folder is a user error worth one clear line; a hub name is exactly 'org/name'."""
    hub_like = name_or_path.count("/") == 1 and not name_or_path.startswith(("/", ".", "~"))
    if not Path(name_or_path).exists() and not hub_like:
        raise PrefgameError(
            f"{what} path not found: '{name_or_path}' (give a checkpoint folder or a hub name org/model)"
        )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    _require_local_or_hub_name(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise PrefgameError(
            f"cannot load tokenizer from '{name_or_path}': {str(exc).splitlines()[0]} "
            "(give a folder with tokenizer files or a hub name)"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    _require_local_or_hub_name(name_or_path, "model")
    return load_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, "causal LM", dtype=dtype)


@dataclass(frozen=True)
class Stops:
    """What ends a sampled response: a token of ``token_ids`` (kept as the response's last token, as
    EOS is), or a text that contains one of ``strings``: the response then ends with the token that
    completes the first occurrence, and its text is cut before it (:meth:`cut`)."""

    token_ids: tuple[int, ...] = ()
    strings: tuple[str, ...] = ()

    @classmethod
    def of(cls, stops: Stops | int | Sequence[int] | None) -> Stops:
        """``stops`` itself, or the stop tokens given as one id or a sequence of ids."""
        if isinstance(stops, Stops):
            return stops
        if stops is None:
            return cls()
        return cls((int(stops),) if isinstance(stops, int) else tuple(int(i) for i in stops))

    def cut(self, text: str) -> str:
        """``text`` up to the first occurrence of any stop string (all of it without one)."""
        ends = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        return text[: min(ends)] if ends else text

    @property
    def window(self) -> int:
        """Tokens at the end of a response whose text is searched for the stop strings after each new
        token: the longest string's length in characters (every token decodes to at least one) plus two,
        so that the string never reaches the window's first token, whose text may lose a leading space."""
        return max((len(s) for s in self.strings), default=0) + 2


def stops_for(
    tokenizer: PreTrainedTokenizerBase, model=None, *, eos_token_ids: Sequence[int] = (), stop: Sequence[str] = (),
    key: str = "sampling.eos_token_ids",
) -> Stops:  # fmt: skip
    """The stops of a job's sampler: ``eos_token_ids`` when given, otherwise the tokenizer's EOS and every
    id of the model's ``generation_config.eos_token_id`` (chat models list several, e.g. end of turn and
    end of text; ``model`` may also be a ``GenerationConfig`` itself, or None); and the stop strings
    ``stop``. An id outside the vocabulary fails in one line naming the config ``key``."""
    if eos_token_ids:
        ids = [int(i) for i in eos_token_ids]
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise PrefgameError(
                f"{key}: {bad[0]} is not a token id of this model (ids run from 0 to {vocab - 1}); "
                "leave it empty for the tokenizer's and the model's end-of-sequence tokens"
            )
    else:
        ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        listed = getattr(getattr(model, "generation_config", model), "eos_token_id", None)
        ids += [listed] if isinstance(listed, int) else list(listed or ())
    return Stops(tuple(dict.fromkeys(ids)), tuple(stop))


def load_generation_config(name_or_path: str):
    """The ``GenerationConfig`` saved with a model (its end-of-sequence ids), or None without one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return None


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> str:
    """The prompt as the model sees it before its response: the chat template with the generation
    prompt applied to every message of the prompt (text is one user turn, a
    :class:`~prefgame.data.chat.Conversation` or a message list the whole history), or without a
    template :func:`plain_prompt`."""
    messages = messages_of(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(messages)


def plain_prompt(messages: Sequence[dict[str, str]]) -> str:
    """A prompt for a model without a chat template: one ``role: content`` line per message, then
    ``assistant:``."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> list[int]:
    """The token ids of :func:`prompt_text` (the whole conversation of a multi-turn prompt)."""
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Response tokens followed by EOS (what the model must learn to produce)."""
    text = response if getattr(tokenizer, "chat_template", None) else " " + response
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def truncate(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Keep the prompt's end and the response's start so that the pair fits in ``max_length`` tokens."""
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids
    prompt_ids = prompt_ids[-max(max_length - len(response_ids), max_length // 2) :]
    return prompt_ids, response_ids[: max_length - len(prompt_ids)]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T_max)."""
    t_max = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), t_max), dtype=torch.long)
    for i, s in enumerate(sequences):
        if left:
            ids[i, t_max - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, t_max - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def build_pairs_batch(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response batch with a mask of the response tokens.

    Returns input_ids (B, T), attention_mask (B, T) and response_mask (B, T): response_mask[b, t] is 1
    where token t is a response token (its log-probability is predicted from position t − 1).
    """
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    ids, mask = pad_batch(seqs, pad_id)
    response_mask = torch.zeros_like(mask)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        response_mask[i, len(p) : len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}


def final_hidden(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The final hidden states whose row t predicts token t + 1, (B, T−1, H)."""
    base = getattr(model, model.base_model_prefix)
    # no KV cache: nothing is generated from these states (and checkpointed layers cannot keep one)
    return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[:, :-1]


def hidden_token_logps(
    model: PreTrainedModel, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, *, chunk_size=None
) -> torch.Tensor:
    """log π(y_t) at the ``mask`` positions of (B, T−1) from :func:`final_hidden`'s states, 0 elsewhere:
    only those rows are projected to the vocabulary, ``chunk_size`` at a time (None: all at once)."""
    head = model.get_output_embeddings()
    return response_logprobs(
        hidden, head.weight, input_ids[:, 1:], mask, chunk_size=chunk_size, lm_head_bias=getattr(head, "bias", None)
    )


def token_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor], *, chunk_size=None) -> torch.Tensor:
    """Per-token log-probabilities of the response tokens, (B, T−1), zero elsewhere: the one sequence
    log-prob computation of every trainer (:func:`prefgame.losses.response_logprobs`).

    Only the positions that predict a response token are projected to the vocabulary, ``chunk_size``
    rows at a time (None: all at once), so no vocabulary-sized logits are materialized for prompt or
    padding tokens.
    """
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["response_mask"][:, 1:].bool()  # (B, T−1): position t predicts token t + 1
    return hidden_token_logps(model, hidden, batch["input_ids"], mask, chunk_size=chunk_size)


class ResponseLogps(torch.nn.Module):
    """A causal LM whose forward returns response-token log-probabilities, (B, T−1).

    Trainers hand this wrapper to ``accelerator.prepare`` so that data-parallel wrappers (DDP, FSDP)
    see the forward that computes the loss.
    """

    def __init__(self, model: PreTrainedModel, *, chunk_size: int | None = None) -> None:
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
        return token_logps(self.model, batch, chunk_size=self.chunk_size)
