"""What every trainer of a policy against π0 shares (self-play, PPO, online DPO): the policy and its
frozen reference loaded from one checkpoint, and the prompt pools with one held-out split.

One split for every trainer, so that their held-out measurements are taken on the same prompts: on the
arena the held-out prompts are ``n_eval // N_PROMPT_TYPES`` per prompt type (stratified), from a
file a seeded permutation holds out ``n_eval`` (at most half); the rest is the training pool.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from prefgame.config import param
from prefgame.errors import PrefgameError
from prefgame.lm import build_pairs_batch, load_causal_lm, load_tokenizer, token_logps
from prefgame.losses import sequence_logprobs

# the seed stream of the held-out split: (train.seed, HELD_OUT)
HELD_OUT = 12345


@dataclass
class PolicyConfig:
    name_or_path: str = param(
        "", "π0: causal LM folder or hub name; the policy starts from it and a frozen copy is the reference"
    )
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own")
    dtype: Literal["float32", "bfloat16"] = param("float32", "weights dtype of policy and reference")


@dataclass
class PromptsConfig:
    source: Literal["arena", "file"] = param(
        "arena", "arena: the arena's prompt grammar (enables the exact class-level metrics); file: `path`"
    )
    path: str = param("", "source=file: a .jsonl/.json/.parquet/.csv file or hub data set with prompts")
    split: str = param("train", "source=file: split of a hub data set")
    field: str = param("prompt", "source=file: column holding the prompt text")


@dataclass
class GenerationConfig:
    """How responses are generated (``sampling``); each trainer's section extends it."""

    max_new_tokens: int = param(40, "response length limit in tokens")
    batch_size: int = param(256, "sequences per generation batch")
    use_cache: bool = param(True, "reuse the KV cache between tokens (false recomputes the prefix; vllm ignores it)")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be ≥ 1")


@dataclass
class EvalConfig:
    """The held-out measurements of a policy (``eval``); each trainer's section may extend it."""

    every: int = param(10, "measure every N iterations (0: only before the first and after the last)")
    prompts: int = param(240, "held-out prompts (arena: the same number per prompt type)")
    samples_per_prompt: int = param(2, "policy responses per held-out prompt at each measurement")
    reference_samples_per_prompt: int = param(4, "π0 responses per held-out prompt (measured once)")

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.samples_per_prompt < 1 or self.reference_samples_per_prompt < 1:
            raise ValueError("eval.prompts, eval.samples_per_prompt and eval.reference_samples_per_prompt must be ≥ 1")


def load_policy(cfg: PolicyConfig, device, *, gradient_checkpointing: bool = False):
    """(tokenizer, policy, reference): the policy from ``cfg.name_or_path`` and a frozen copy of it on
    ``device`` as π0."""
    if not cfg.name_or_path:
        raise PrefgameError("policy.name_or_path is empty: give π0's folder, e.g. runs/quickstart/pi0/model")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    tok = load_tokenizer(cfg.tokenizer or cfg.name_or_path)
    policy = load_causal_lm(cfg.name_or_path, dtype=dtype)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    ref = load_causal_lm(cfg.name_or_path, dtype=dtype).to(device)
    ref.requires_grad_(False)
    ref.eval()
    return tok, policy, ref


def response_batch(responses, idx, pad_id: int, device) -> dict[str, torch.Tensor]:
    """The right-padded batch (input_ids, attention_mask, response_mask) of ``responses`` rows ``idx`` on
    ``device``."""
    batch = build_pairs_batch([responses.prompt_ids[i] for i in idx], [responses.response_ids[i] for i in idx], pad_id)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def sequence_logps(
    model, responses, pad_id: int, *, batch_size: int, device, autocast=contextlib.nullcontext, chunk_size=None
) -> torch.Tensor:
    """log π(y | x) of every response, summed over its tokens, (N,) float32 on CPU; ``batch_size`` rows at
    a time, in eval mode, the vocabulary projected ``chunk_size`` rows at a time (:func:`token_logps`)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(responses), batch_size):
        batch = response_batch(responses, range(start, min(start + batch_size, len(responses))), pad_id, device)
        with autocast():
            logps = token_logps(model, batch, chunk_size=chunk_size)
        out.append(sequence_logprobs(logps.float(), batch["response_mask"][:, 1:]).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def prompt_pools(cfg: PromptsConfig, arena, *, seed: int, n_eval: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts), the split of the module docstring."""
    rng = np.random.default_rng([seed, HELD_OUT])
    if cfg.source == "arena":
        from prefgame.arena.world import N_PROMPT_TYPES

        per_type = max(1, n_eval // N_PROMPT_TYPES)
        by_type: dict[int, list[str]] = {}
        for p in arena.prompts:
            by_type.setdefault(p.type_index, []).append(p.text)
        held = []
        for t in range(N_PROMPT_TYPES):
            texts = by_type[t]
            held += [texts[i] for i in rng.choice(len(texts), size=min(per_type, len(texts)), replace=False)]
        held_set = set(held)
        return [p.text for p in arena.prompts if p.text not in held_set], held
    if not cfg.path:
        raise PrefgameError("prompts.path is empty: give a prompt file, or set prompts.source=arena")
    from prefgame.data.load import load_raw

    table = load_raw(cfg.path, split=cfg.split)
    if cfg.field not in table.column_names:
        raise PrefgameError(f"{cfg.path}: no column '{cfg.field}' (columns: {', '.join(table.column_names)})")
    texts = list(dict.fromkeys(str(x) for x in table[cfg.field] if str(x).strip()))
    order = rng.permutation(len(texts))
    n = min(n_eval, len(texts) // 2)
    return [texts[i] for i in order[n:]], [texts[i] for i in order[:n]]
