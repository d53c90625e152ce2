"""Sampling responses from a causal LM, its reference, or their geometric mixture (docs/design.md §3.3).

Nash-MD plays against the mixture π^μ ∝ π^{1−β} π0^{β}. On sequences it is sampled token by token:

    log π^μ(y_t | x, y_<t) = log_softmax((1 − β)·log π(·|x, y_<t) + β·log π0(·|x, y_<t))[y_t]

(:func:`~prefgame.losses.geometric_mixture_logprobs`; log_softmax of raw logits gives the same
result since per-row constants cancel). β = 0 is π and β = 1 is π0; only the models with non-zero
weight are run. :func:`sample_tokens` is one batched decoding loop that keeps a KV cache for each
model it runs (the ``cache`` argument and output of a transformers model's forward); with
``use_cache=False`` it recomputes the whole prefix at every token instead (the reference the cache is
checked against, and the benchmark's baseline).

Left padding: prompts are padded on the left, the attention mask hides the padding, and position
ids count real tokens only (``cumsum(mask) − 1``), so a padded row computes exactly what it would
alone. Rows that have produced EOS keep being fed padding (ignored) until every row is done.

Randomness: one uniform draw per row per step from ``generator`` (a CPU ``torch.Generator``),
turned into a token by inverting the CDF in float64. The draws do not depend on the device or on
whether the cache is used, so the cached and uncached loops give the same tokens for one seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefgame.errors import PrefgameError
from prefgame.lm import encode_prompt, pad_batch
from prefgame.lora import active_model, base_of
from prefgame.losses import geometric_mixture_logprobs


@dataclass
class SampledTokens:
    """The output of :func:`sample_tokens` for B prompts and N generated positions."""

    tokens: torch.Tensor  # (B, N) sampled token ids, pad after the end
    mask: torch.Tensor  # (B, N) bool: real response tokens (up to and including EOS)
    logps: torch.Tensor  # (B, N) float32 log-prob of each token under the sampled distribution, 0 after the end

    def as_lists(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.mask)]


def _check_cache_argument(model: PreTrainedModel) -> None:
    """The cached loop passes the KV cache as ``cache=``; a model whose forward names it otherwise would
    take it into ``**kwargs`` and ignore it, silently decoding from the last token alone."""
    if "cache" not in inspect.signature(model.forward).parameters:
        raise PrefgameError(
            f"{type(model).__name__}.forward takes no `cache` argument, so prefgame cannot reuse its KV cache; "
            "sample with use_cache=false (sampling.use_cache=false) or use a model class that takes `cache`"
        )


def _next_token_logits(model, ids, mask, pos, cache, *, use_cache: bool):
    """Logits of the next token, (B, V), and the updated cache (None without ``use_cache``)."""
    kwargs = {"cache": cache, "use_cache": True} if use_cache else {"use_cache": False}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float(), (out.cache if use_cache else None)


@torch.no_grad()
def sample_tokens(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    prompt_ids: Sequence[Sequence[int]],
    *,
    mixture_coef: float,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> SampledTokens:
    """Sample one response per prompt from π^μ ∝ π^{1−β} π0^{β} (β = ``mixture_coef``) at ``temperature``.

    Each step's distribution is log_softmax(((1 − β)·logits_π + β·logits_π0) / temperature). The
    policy may be None when β = 1 and the reference may be None when β = 0; the reference may be a
    :class:`~prefgame.lora.Reference` (the policy with its adapters disabled for each of its forward
    passes). Both models are put in eval mode for the call and restored afterwards.
    """
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    models = [m for m, w in ((policy, 1.0 - mixture_coef), (ref, mixture_coef)) if w > 0]
    if any(m is None for m in models):
        raise ValueError("a model with non-zero mixture weight is None")
    nets = [base_of(m) for m in models]  # a LoRA reference runs on the policy's own module
    if use_cache:
        for net in nets:
            _check_cache_argument(net)
    modes = {id(net): (net, net.training) for net in nets}
    for net, _ in modes.values():
        net.eval()
    device = next(nets[0].parameters()).device
    ids, mask = pad_batch(prompt_ids, pad_token_id, left=True)
    ids, mask = ids.to(device), mask.to(device)  # (B, T0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0) positions of real tokens, 0 on padding
    B = ids.shape[0]
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_mask = torch.zeros((B, max_new_tokens), dtype=torch.bool, device=device)
    logps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    caches: list = [None] * len(models)
    step_ids, step_pos = ids, pos  # what the cached models read next
    n = 0
    for n in range(max_new_tokens):
        logits = []
        for k, m in enumerate(models):
            with active_model(m) as net:
                if use_cache:
                    lg, caches[k] = _next_token_logits(net, step_ids, mask, step_pos, caches[k], use_cache=True)
                else:  # recompute the whole prefix
                    lg, _ = _next_token_logits(net, ids, mask, pos, None, use_cache=False)
            logits.append(lg / temperature)  # (B, V)
        if len(models) == 2:
            step_logp = geometric_mixture_logprobs(logits[0], logits[1], mixture_coef=mixture_coef)  # (B, V)
        else:
            step_logp = torch.log_softmax(logits[0], dim=-1)  # (B, V)
        u = torch.rand(B, generator=generator, dtype=torch.float64).to(device)  # (B,)
        cdf = step_logp.double().exp().cumsum(-1)  # (B, V)
        nxt = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)  # (B,)
        nxt = nxt.clamp(max=cdf.shape[-1] - 1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        tokens[:, n] = nxt
        out_mask[:, n] = ~done
        logps[:, n] = torch.where(done, 0.0, step_logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1))
        done = done | (nxt == eos_token_id)
        if bool(done.all()):
            break
        step_ids = nxt.unsqueeze(-1)  # (B, 1)
        step_pos = step_pos[:, -1:] + 1  # (B, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)  # (B, T+1)
        ids = torch.cat([ids, step_ids], dim=-1)
        pos = torch.cat([pos, step_pos], dim=-1)
    for net, mode in modes.values():
        net.train(mode)
    n_used = n + 1
    return SampledTokens(tokens[:, :n_used].cpu(), out_mask[:, :n_used].cpu(), logps[:, :n_used].cpu())


@dataclass
class Responses:
    """Sampled responses, n per prompt, prompt-major: entry i·n + k is sample k of prompt i."""

    prompts: list[str]  # (N,) the prompt of each response
    prompt_ids: list[list[int]]  # (N,) encoded prompts (chat template applied)
    response_ids: list[list[int]]  # (N,) sampled tokens, EOS included when produced
    texts: list[str]  # (N,) decoded responses (special tokens removed)
    # (N,) float32 log-prob of each response under the distribution it was sampled from (π^μ at the
    # sampling temperature), summed over its tokens; None when the sampler does not report it (vLLM)
    logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def interleave(self, other: Responses, n: int, n_other: int) -> Responses:
        """This set (n per prompt) and ``other`` (n_other per prompt, the same prompts in the same order)
        as one set of n + n_other per prompt: each prompt's own samples first. ``logps`` are kept only
        when both sets have them."""
        m = len(self) // n
        if len(other) != m * n_other:
            raise ValueError(f"interleave: {len(other)} responses are not {n_other} for each of {m} prompts")
        order: list[tuple[Responses, int]] = []
        for p in range(m):
            order += [(self, p * n + k) for k in range(n)] + [(other, p * n_other + k) for k in range(n_other)]
        logps = None
        if self.logps is not None and other.logps is not None:
            logps = torch.stack([s.logps[i] for s, i in order])
        return Responses(
            [s.prompts[i] for s, i in order],
            [s.prompt_ids[i] for s, i in order],
            [s.response_ids[i] for s, i in order],
            [s.texts[i] for s, i in order],
            logps,
        )


def generate(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n: int,
    mixture_coef: float,
    max_new_tokens: int,
    seed: int | Sequence[int],
    temperature: float = 1.0,
    batch_size: int = 256,
    use_cache: bool = True,
) -> Responses:
    """``n`` responses for each prompt from π^μ (see :func:`sample_tokens`), deterministic in ``seed``.

    ``seed`` may be a sequence of ints (e.g. (seed, iteration, purpose)); it is hashed into one
    generator seed. The same seed, models and batch size give the same responses.
    """
    gen = torch.Generator().manual_seed(_seed_int(seed))
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    all_prompts = [p for p in prompts for _ in range(n)]
    all_ids = [list(e) for e in encoded for _ in range(n)]
    response_ids: list[list[int]] = []
    logps: list[torch.Tensor] = []
    for start in range(0, len(all_ids), batch_size):
        out = sample_tokens(
            policy,
            ref,
            all_ids[start : start + batch_size],
            mixture_coef=mixture_coef,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            generator=gen,
            use_cache=use_cache,
        )
        response_ids += out.as_lists()
        logps.append(out.logps.sum(-1))  # (b,) zeros after the end add nothing
    texts = [s.strip() for s in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Responses(all_prompts, all_ids, response_ids, texts, torch.cat(logps) if logps else torch.zeros(0))


def _seed_int(seed: int | Sequence[int]) -> int:
    """An int seed from an int or a tuple of ints (numpy's SeedSequence hashing, stable across runs)."""
    entropy = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % (2**63))
