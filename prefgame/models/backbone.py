"""Backbones for preference models: any transformers model turned into a text → vector encoder.

A :class:`TextEncoder` holds a transformers base model (``AutoModel``: a decoder such as Llama/Qwen
or an encoder such as BERT/MiniLM) and its tokenizer, and maps token sequences to one vector each:

- ``pooling="last"``: the hidden state of the last real token (decoders: the EOS that ends the
  response). With right padding the index is gathered from the attention mask; with left padding
  it is position T−1. Position ids are computed from the attention mask, so both padding sides
  give the same vector.
- ``pooling="mean"``: the mean hidden state over real tokens.
- ``pooling="sum"``: the sum over real tokens. On layer 0 (``layers=[0]``, the token embeddings,
  computed without running the transformer) this is a fixed linear map of the word counts of the
  sequence — a bag-of-words encoder, exact and cheap; the arena figures use it to compare what the
  heads can represent, independently of how well a small transformer learns to read text.

Three kinds of sequences are built here, so every model kind tokenizes the same way:
``prompt_ids(x)`` (the prompt as the model sees it before a response), ``response_ids(x, y)``
(prompt then response) and ``joint_ids(x, a, b)`` (prompt, then both responses, for the pairwise
form). Text layout (``text_format``): ``chat`` renders the prompt with the tokenizer's chat template
and appends the response and EOS (decoders); ``pair`` writes ``[CLS] x [SEP] y [SEP]`` (BERT-style
encoders; token type ids are left at 0); ``plain`` writes ``user: x / assistant:`` text then the
response and EOS (:func:`prefgame.lm.plain_prompt`). A multi-turn prompt
(:class:`~prefgame.data.chat.Conversation`) is the whole history in every layout: every message in
the chat template and in plain lines, its text with roles (``User: … Assistant: …``) in pair layout.
``auto`` picks chat when the tokenizer has a template, pair when it has CLS and SEP tokens, plain
otherwise. Too-long sequences lose the start of the prompt first, then the end of
the response (the final EOS/SEP is always kept, so last-token pooling stays meaningful).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prefgame.config import param
from prefgame.data.chat import Conversation, messages_of
from prefgame.errors import PrefgameError
from prefgame.lm import load_tokenizer, pad_batch, plain_prompt, prompt_text
from prefgame.weights import load_pretrained


@dataclass
class BackboneConfig:
    name_or_path: str = param(
        "",
        "transformers model folder or hub name (decoder or encoder, loaded with AutoModel); "
        "empty: a new tiny Llama sized for the arena",
    )
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own (new model: arena)")
    pooling: Literal["last", "mean", "sum"] = param("last", "sequence vector: last real token, mean or sum of tokens")
    layers: list[int] = param(
        [-1],
        "hidden-state layers pooled and concatenated (0: token embeddings, -1: last layer); "
        "e.g. [0, -1] keeps word identity next to the contextual features",
    )
    padding_side: Literal["right", "left"] = param("right", "how batches are padded (both give the same vectors)")
    text_format: Literal["auto", "chat", "pair", "plain"] = param(
        "auto", "how prompt and response are laid out (see prefgame.models.backbone)"
    )
    max_length: int = param(512, "truncate sequences to this many tokens")
    freeze: bool = param(
        True, "frozen backbone: vectors computed once and cached, only heads train; false: fine-tune all"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = param(
        "float32",
        "precision asked for the backbone's weights: a frozen one is stored in the lower of it and the compute "
        "dtype (bf16 halves the memory of big frozen backbones); a fine-tuned one keeps float32 master weights "
        "(in this dtype only with train.low_precision_weights); a saved model is served in it",
    )
    embed_batch_size: int = param(256, "sequences per forward pass when computing cached vectors", ge=1)
    hidden_size: int = param(128, "new model only: hidden size", ge=1)
    num_layers: int = param(4, "new model only: transformer layers", ge=1)
    num_heads: int = param(4, "new model only: attention heads", ge=1)
    intermediate_size: int = param(512, "new model only: MLP width", ge=1)

    def __post_init__(self) -> None:
        if self.max_length < 4:
            raise ValueError("backbone.max_length must be ≥ 4")
        if not self.layers:
            raise ValueError("backbone.layers must name at least one layer (e.g. [-1])")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoder(nn.Module):
    """A transformers base model + tokenizer: token sequences → pooled vectors (B, H)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "last",
        padding_side: str = "right",
        text_format: str = "auto",
        max_length: int = 512,
        layers: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling, self.padding_side, self.max_length = pooling, padding_side, max_length
        self.text_format = resolve_text_format(tokenizer, text_format)
        self.layers = tuple(layers)
        self.hidden_size = int(model.config.hidden_size) * len(self.layers)
        accepted = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in accepted
        self._takes_use_cache = "use_cache" in accepted  # decoders: no KV cache, nothing is generated
        self._token_cache: dict[str, tuple[int, ...]] = {}
        self._prompt_cache: dict = {}  # prompt text, or a Conversation's turns → rendered prompt

    # -- tokenization -----------------------------------------------------------------------
    _CACHE_LIMIT = 200_000

    def _ids(self, text: str) -> list[int]:
        ids = self._token_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._remember({text: ids})
        return list(ids)  # callers may extend it; the cache keeps an immutable tuple

    def _remember(self, tokens: dict[str, tuple[int, ...]]) -> None:
        if len(self._token_cache) + len(tokens) > self._CACHE_LIMIT:
            self._token_cache.clear()
        self._token_cache.update(tokens)

    def prefetch(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        """Tokenize many prompts and responses in one batched tokenizer call (cached for the
        ``*_ids`` methods; the same token ids as one call per text)."""
        texts = {self._prompt_string(x) for x in prompts} | {self._segment_string(y) for y in responses}
        todo = sorted(t for t in texts if t not in self._token_cache)
        if todo:
            ids = self.tokenizer(todo, add_special_tokens=False)["input_ids"]
            self._remember({t: tuple(i) for t, i in zip(todo, ids)})

    def _end_id(self) -> int:
        tok = self.tokenizer
        if self.text_format == "pair":
            return tok.sep_token_id
        return tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id

    def _prompt_string(self, prompt: str) -> str:
        if self.text_format == "pair":
            return str(prompt)  # a Conversation: its text, every turn with its role
        if self.text_format == "chat":  # rendering the template is slow: once per prompt
            key = prompt.turns if isinstance(prompt, Conversation) else prompt
            text = self._prompt_cache.get(key)
            if text is None:
                if len(self._prompt_cache) > self._CACHE_LIMIT:
                    self._prompt_cache.clear()
                text = self._prompt_cache[key] = prompt_text(self.tokenizer, prompt)
            return text
        return plain_prompt(messages_of(prompt))

    def _segment_string(self, response: str) -> str:
        return response if self.text_format in ("chat", "pair") else " " + response

    def _prompt_tokens(self, prompt: str) -> list[int]:
        return self._ids(self._prompt_string(prompt))

    def _wrap(self, prompt_tokens: list[int]) -> list[int]:
        if self.text_format == "pair":
            return [self.tokenizer.cls_token_id, *prompt_tokens, self.tokenizer.sep_token_id]
        return list(prompt_tokens)  # a copy: the caller extends it, and the tokens are cached

    def _segment(self, response: str) -> list[int]:
        """A response followed by the end token (EOS, or SEP for pair layout)."""
        return [*self._ids(self._segment_string(response)), self._end_id()]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt alone, as the model sees it before a response."""
        return self._fit(self._prompt_tokens(prompt), [])

    def response_ids(self, prompt: str, response: str) -> list[int]:
        """Prompt then response (one sequence per (x, y))."""
        return self._fit(self._prompt_tokens(prompt), [self._segment(response)])

    def joint_ids(self, prompt: str, response_a: str, response_b: str) -> list[int]:
        """Prompt, response a, response b (the pairwise form reads both; the order is visible)."""
        return self._fit(self._prompt_tokens(prompt), [self._segment(response_a), self._segment(response_b)])

    def _fit(self, prompt_tokens: list[int], segments: list[list[int]]) -> list[int]:
        """Lay out and truncate to max_length: drop the start of the prompt (keeping at least a
        quarter of the budget when responses are long), then shorten each response from its end
        (its final EOS/SEP is kept)."""
        budget = self.max_length - (2 if self.text_format == "pair" else 0)
        seg_len = sum(len(s) for s in segments)
        if len(prompt_tokens) + seg_len > budget:
            keep = min(len(prompt_tokens), max(budget // 4, budget - seg_len))
            prompt_tokens = prompt_tokens[len(prompt_tokens) - keep :]
        out = self._wrap(prompt_tokens)
        if segments:
            per_segment = (self.max_length - len(out)) // len(segments)
            for s in segments:
                out += s if len(s) <= per_segment else [*s[: per_segment - 1], s[-1]]
        return out

    def collate(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """(input_ids, attention_mask) padded on ``padding_side``."""
        pad = self.tokenizer.pad_token_id
        ids, mask = pad_batch(sequences, pad if pad is not None else 0, left=self.padding_side == "left")
        return {"input_ids": ids, "attention_mask": mask}

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled vectors (B, H) of a padded batch (either padding side)."""
        kwargs = {"use_cache": False} if self._takes_use_cache else {}
        if self._takes_position_ids:
            # positions count real tokens only, so left padding gives the same positions as right
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.layers == (0,):  # token embeddings only: no transformer pass
            emb = self.model.get_input_embeddings()(input_ids)  # (B, T, H)
            return pool(emb, attention_mask, self.pooling)
        if self.layers == (-1,):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            return pool(out.last_hidden_state, attention_mask, self.pooling)  # (B, H)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
        # hidden_states[0] is the embedding output, [-1] the (normed) last layer
        hidden = [out.last_hidden_state if i == -1 else out.hidden_states[i] for i in self.layers]
        return torch.cat([pool(h, attention_mask, self.pooling) for h in hidden], dim=-1)  # (B, L·H)

    @torch.no_grad()
    def embed(self, sequences: Sequence[Sequence[int]], *, batch_size: int = 256) -> torch.Tensor:
        """Vectors (N, H) in float32 on CPU, computed in eval mode in length-sorted batches."""
        device = next(self.model.parameters()).device
        if self.layers == (0,) and self.pooling in ("sum", "mean"):  # a bag of token embeddings: no padding
            flat = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
            lengths = torch.tensor([0] + [len(s) for s in sequences[:-1]], dtype=torch.long, device=device)
            weight = self.model.get_input_embeddings().weight
            return F.embedding_bag(flat, weight, lengths.cumsum(0), mode=self.pooling).float().cpu()  # (N, H)
        was_training = self.training
        self.eval()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = torch.empty(len(sequences), self.hidden_size)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.collate([sequences[i] for i in chunk]).items()}
            out[chunk] = self(**batch).float().cpu()
        self.train(was_training)
        return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) mask → (B, H).

    "last": the last position whose mask is 1 (works for right and left padding alike);
    "mean": the masked mean over positions; "sum": the masked sum.
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "sum":
        return (hidden * mask.unsqueeze(-1)).sum(1)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'last', 'mean' or 'sum', got {pooling!r}")


def resolve_text_format(tokenizer, text_format: str) -> str:
    if text_format != "auto":
        if text_format == "pair" and (tokenizer.cls_token_id is None or tokenizer.sep_token_id is None):
            raise PrefgameError("backbone.text_format=pair needs a tokenizer with CLS and SEP tokens")
        return text_format
    if getattr(tokenizer, "chat_template", None):
        return "chat"
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return "pair"
    return "plain"


def build_encoder(cfg: BackboneConfig, *, seed: int = 0, dtype: torch.dtype | None = None) -> TextEncoder:
    """Load ``cfg.name_or_path`` with AutoModel (a causal-LM checkpoint loads as its base model),
    or build a new tiny Llama with the arena tokenizer when the path is empty; its weights in ``dtype``
    (None: ``cfg.dtype``; a trainer passes what :mod:`prefgame.train.precision` decides)."""
    dtype = _DTYPES[cfg.dtype] if dtype is None else dtype
    if cfg.name_or_path:
        from transformers import AutoModel

        if not Path(cfg.name_or_path).exists() and "/" not in cfg.name_or_path:
            raise PrefgameError(
                f"backbone path not found: '{cfg.name_or_path}' (give a model folder or a hub name org/model)"
            )
        tok = load_tokenizer(cfg.tokenizer or cfg.name_or_path)
        model = load_pretrained(AutoModel.from_pretrained, cfg.name_or_path, "backbone", dtype=dtype)
    else:
        from transformers import LlamaModel

        from prefgame.arena.lm import new_tiny_model

        model, tok = new_tiny_model(LlamaModel, cfg, seed=seed, max_position_embeddings=max(96, cfg.max_length))
        model = model.to(dtype)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    max_length = min(cfg.max_length, max_pos) if max_pos else cfg.max_length
    return TextEncoder(
        model,
        tok,
        pooling=cfg.pooling,
        padding_side=cfg.padding_side,
        text_format=cfg.text_format,
        max_length=max_length,
        layers=cfg.layers,
    )
