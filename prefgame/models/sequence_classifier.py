"""Sequence-classification reward models (``AutoModelForSequenceClassification`` with one output, the
form of most public reward models) as rewards and preference oracles.

:class:`SequenceClassifierReward` reads r(x, y) as the model's one logit on the conversation "user:
x, assistant: y" and answers P(a ≻ b | x) = σ(r(x, a) − r(x, b)) (Bradley–Terry), so it serves where
a trained ``bt`` preference model does: the PPO reward (``reward.path``), the oracle of self-play and
online DPO (``oracle.kind=model``) and ``prefgame score``.

Text layout: with a chat template the tokenizer renders the whole conversation (the prompt's turns,
or one user turn for a string prompt, then the response as the assistant's turn) and the text is
tokenized as it stands, since the template writes its own special tokens; without one, a tokenizer
with CLS and SEP tokens (BERT-style classifiers) encodes (prompt, response) as a sentence pair, and
any other reads ``user: x`` / ``assistant: y`` with its tokenizer's special tokens. A sequence longer
than ``max_length`` loses the start of the conversation (a leading BOS is kept), so the end, where
the score is read, is always there.

Batching: each distinct (prompt, response) of a call is scored once (a K×K request names every
response K − 1 times), in length-sorted batches of ``batch_size`` sequences padded on the right with
the model's pad id, on the model's device. The model reads its score at the last token that is not
the pad id, so a sequence gets the same score in a batch as alone. A model saved without a pad id
gets its tokenizer's (its EOS when the tokenizer has no pad token; a conversation that ends with that
EOS is then scored at the token before it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefgame.errors import PrefgameError
from prefgame.lm import load_tokenizer, pad_batch, prompt_text

Prompt = str | Sequence[dict[str, str]]


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def _prompt_key(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(_messages(prompt), sort_keys=True)


class SequenceClassifierReward(nn.Module):
    """A one-output sequence classifier and its tokenizer: r(x, y), and P(a ≻ b) = σ(r_a − r_b)."""

    has_reward = True

    def __init__(self, model: nn.Module, tokenizer, *, name: str = "", batch_size: int = 64, max_length: int = 0):
        super().__init__()
        check_one_label(model.config, name or "the model")
        config = model.config.get_text_config()
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer = model, tokenizer
        self.name = name or "reward-model"
        self.batch_size = batch_size
        self.pad_id = int(config.pad_token_id)
        self.max_length = max_length or int(getattr(config, "max_position_embeddings", 0) or 4096)
        if getattr(tokenizer, "chat_template", None):
            self.layout = "chat"
        elif tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
            self.layout = "pair"
        else:
            self.layout = "plain"

    # -- sequences ----------------------------------------------------------------------------------
    def sequences(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
        """The token ids the model scores for each (prompt, response) (module docstring), one batched
        tokenizer call."""
        tok = self.tokenizer
        if self.layout == "pair":
            turns = [x if isinstance(x, str) else "\n".join(f"{m['role']}: {m['content']}" for m in x) for x in prompts]
            enc = tok(turns, list(responses), truncation="longest_first", max_length=self.max_length)
            return [list(ids) for ids in enc["input_ids"]]
        if self.layout == "chat":
            texts = [
                tok.apply_chat_template([*_messages(x), {"role": "assistant", "content": y}], tokenize=False)
                for x, y in zip(prompts, responses)
            ]
            ids = tok(texts, add_special_tokens=False)["input_ids"]
        else:
            texts = [f"{prompt_text(None, _messages(x))} {y}" for x, y in zip(prompts, responses)]
            ids = tok(texts)["input_ids"]
        return [self._truncate(list(s)) for s in ids]

    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        keep = 1 if ids[0] == self.tokenizer.bos_token_id else 0
        return ids[:keep] + ids[len(ids) - (self.max_length - keep) :]

    # -- scores -------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """The model's output for each token sequence, (N,) float32 on CPU, ``batch_size`` at a time in
        right-padded batches sorted by (length, tokens): the batches depend on the set of sequences, not
        their order, so asking (a, b) and (b, a) gives each sequence the same bits."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), tuple(sequences[i])))
        out = torch.empty(len(sequences))
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = pad_batch([sequences[i] for i in chunk], self.pad_id)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (b, 1)
            out[chunk] = logits[:, 0].float().cpu()
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def reward(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        """r(x_i, y_i), (N,) float32 on CPU; each distinct (prompt, response) is scored once."""
        index: dict[tuple[str, str], int] = {}
        rows: list[int] = []  # the first row of each distinct pair
        where = []
        for i, (x, y) in enumerate(zip(prompts, responses)):
            key = (_prompt_key(x), y)
            if key not in index:
                index[key] = len(rows)
                rows.append(i)
            where.append(index[key])
        if not rows:
            return torch.zeros(0)
        values = self.scores(self.sequences([prompts[i] for i in rows], [responses[i] for i in rows]))
        return values[torch.tensor(where, dtype=torch.long)]

    def preference(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> Tensor:
        """P(a_i ≻ b_i | x_i) = σ(r(x_i, a_i) − r(x_i, b_i)), (N,) float64: one :meth:`reward` call for
        both sides."""
        n = len(responses_a)
        r = self.reward([*prompts, *prompts], [*responses_a, *responses_b]).double()
        return torch.sigmoid(r[:n] - r[n:])

    def preference_matrix(self, prompt: Prompt, responses: Sequence[str]) -> Tensor:
        """M[i, j] = σ(r_i − r_j), (K, K) float64, from the K rewards."""
        r = self.reward([prompt] * len(responses), list(responses)).double()
        return torch.sigmoid(r[:, None] - r[None, :])


# ---------------------------------------------------------------------------------------------- loading


def pretrained_config(path: str | Path) -> Any:
    """The transformers config at ``path`` (a folder or a hub name); one-line error otherwise."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise PrefgameError(f"cannot read a model config from '{path}': {str(exc).splitlines()[0]}") from None


def is_sequence_classifier(config: Any) -> bool:
    """Whether a transformers config names a ``...ForSequenceClassification`` architecture."""
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def check_one_label(config: Any, what: str | Path) -> None:
    """A reward model has one output: one line naming the number of labels otherwise."""
    labels = int(getattr(config, "num_labels", 1))
    if labels != 1:
        raise PrefgameError(
            f"{what}: a sequence classifier with {labels} labels; a reward model has one output (num_labels=1)"
        )


def resolve_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """ "auto": bfloat16 on a CUDA device that supports it, float32 otherwise; else the named dtype."""
    if dtype == "auto":
        cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise PrefgameError(f"dtype must be auto, float32, bfloat16 or float16, got '{dtype}'")
    return getattr(torch, dtype)


def load_sequence_classifier(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "auto",
    batch_size: int = 64,
    max_length: int = 0,
) -> SequenceClassifierReward:
    """A one-output ``AutoModelForSequenceClassification`` checkpoint (folder or hub name) and its
    tokenizer as a frozen :class:`SequenceClassifierReward` on ``device`` (``dtype`` by
    :func:`resolve_dtype`; ``max_length`` 0: the model's maximum positions)."""
    from transformers import AutoModelForSequenceClassification

    config = pretrained_config(path)
    if not is_sequence_classifier(config):
        names = ", ".join(getattr(config, "architectures", None) or ["none"])
        raise PrefgameError(
            f"{path}: neither a prefgame preference model (no preference_model.json) nor a sequence-"
            f"classification reward model (architectures: {names})"
        )
    check_one_label(config, path)
    tokenizer = load_tokenizer(str(path))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=resolve_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise PrefgameError(f"cannot load reward model from '{path}': {str(exc).splitlines()[0]}") from None
    model.requires_grad_(False).eval().to(device)
    return SequenceClassifierReward(model, tokenizer, name=f"rm:{path}", batch_size=batch_size, max_length=max_length)
