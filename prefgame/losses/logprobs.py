"""Masked reductions and response log-probabilities (docs/design.md §2: losses are pure functions of tensors).

Conventions used across :mod:`prefgame.losses`:

- A ``mask`` is boolean or 0/1 of the same shape as the tensor it masks; masked-out entries never
  contribute to a value or a gradient, whatever they hold (NaN included where noted).
- Token tensors are ``(B, T)``: ``token_logps[:, t]`` is log π(labels[:, t] | context before it).
  Shifting (``hidden[:, :-1]`` predicts ``input_ids[:, 1:]``) is the caller's job.
- Global normalization: a loss that is a sum over the step's tokens (or examples) divided by the
  *global* count of the optimizer step gives the same gradient whether the step is one full batch or
  micro-batches × accumulation × data-parallel ranks. :func:`reduce_mean` with ``normalizer`` set
  to the global count is that reduction; without it, it is the local masked mean.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask over ``dim`` (all entries when ``dim`` is None). Masked-out entries may be NaN."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask / Σ mask over ``dim``; 0 where the mask is empty (the count is clamped to ≥ 1)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance of the masked entries: Σ mask·(x − x̄)² / (n − 1). Needs n ≥ 2."""
    n = mask.to(x.dtype).sum()
    if n < 2:
        raise ValueError(f"masked_var needs at least 2 unmasked entries, got {int(n.item())}")
    centered = x - masked_mean(x, mask)
    return masked_sum(centered**2, mask) / (n - 1)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten the masked entries of ``x`` with their mean and unbiased variance (docs/design.md §3.4).

    y = (x − x̄) / sqrt(var + eps), or y = (x − x̄) / sqrt(var + eps) + x̄ when ``shift_mean`` is False
    (scale only, the mean is kept). x̄ and var use masked entries only; masked-out outputs are 0.
    """
    return whiten_with(x, mask, masked_mean(x, mask), masked_var(x, mask), shift_mean=shift_mean, eps=eps)


def whiten_with(x: Tensor, mask: Tensor, mean: Tensor, var: Tensor, *, shift_mean: bool, eps: float) -> Tensor:
    """(x − mean) / sqrt(var + eps) [+ mean without ``shift_mean``] on the masked entries, 0 elsewhere: the
    whitening step of :func:`masked_whiten` and :func:`prefgame.losses.rl.whiten_from_moments`."""
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def reduce_mean(x: Tensor, mask: Tensor | None = None, *, normalizer: float | Tensor | None = None) -> Tensor:
    """Σ x·mask / normalizer; with ``normalizer=None`` the local (masked) mean.

    Pass the number of tokens (or examples) of the whole optimizer step — over all micro-batches and
    ranks — as ``normalizer`` and sum the micro-batch losses: the result and its gradient equal the
    full-batch mean. (Averaging per-micro-batch means does not, when micro-batches hold different
    numbers of tokens.)
    """
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    if normalizer is None:
        return masked_mean(x, mask)
    return masked_sum(x, mask) / normalizer


def token_logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] = logits[label] − logsumexp(logits), shape ``labels.shape``.

    ``logits`` (..., V), ``labels`` (...) integer. Low-precision logits are upcast to float32 first.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


class _ChunkedLogProbs(torch.autograd.Function):
    """log softmax(h Wᵀ + b)[label] for N rows, projecting ``chunk_size`` rows at a time.

    Neither pass keeps (N, V) logits: forward saves h, W, b, labels and the (N,) logsumexp; backward
    recomputes each chunk's logits and uses ∂ log p_label / ∂ logits = onehot(label) − softmax.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk_size: int) -> Tensor:
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        logps, lses = [], []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = _project(hidden[start : start + chunk_size], weight, bias).to(out_dtype)  # (c, V)
            lse = torch.logsumexp(logits, dim=-1)  # (c,)
            picked = logits.gather(-1, labels[start : start + chunk_size, None]).squeeze(-1)  # (c,)
            logps.append(picked - lse)
            lses.append(lse)
        if not logps:  # no response tokens at all
            logps = lses = [hidden.new_zeros(0, dtype=out_dtype)]
        ctx.save_for_backward(hidden, weight, bias, labels, torch.cat(lses))
        ctx.chunk_size = chunk_size
        return torch.cat(logps)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        c = ctx.chunk_size
        for start in range(0, hidden.shape[0], c):
            h = hidden[start : start + c]  # (c, H)
            g = grad_out[start : start + c]  # (c,)
            probs = torch.exp(_project(h, weight, bias).to(lse.dtype) - lse[start : start + c, None])  # (c, V)
            grad_logits = -g[:, None] * probs  # (c, V)
            rows = torch.arange(h.shape[0], device=h.device)
            grad_logits[rows, labels[start : start + c]] += g
            grad_logits = grad_logits.to(hidden.dtype)
            if need_h:
                grad_h[start : start + c] = grad_logits @ weight  # (c, H)
            if need_w:
                grad_w += grad_logits.T @ h  # (V, H)
            if need_b:
                grad_b += grad_logits.sum(0).to(bias.dtype)  # (V,)
        return grad_h, grad_w, grad_b, None, None


def _project(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """h Wᵀ (+ b): the lm head on a chunk of rows."""
    return h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)


def response_logprobs(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    chunk_size: int | None = 1024,
    lm_head_bias: Tensor | None = None,
) -> Tensor:
    """Per-token log π(labels | context) at the masked (response) positions, 0 elsewhere; (B, T).

    hidden_states (B, T, H) are the final hidden states whose row t predicts ``labels[:, t]``;
    lm_head_weight (V, H) and lm_head_bias (V,) or None; labels, mask (B, T). Only the N masked rows are
    gathered and projected, ``chunk_size`` rows at a time (None: all N at once), in forward and backward
    alike: peak extra memory is O(chunk_size · V), never (B·T) × V. Supports first-order gradients only
    (no double backward). The one sequence log-prob computation of every trainer (:func:`prefgame.lm.token_logps`).
    """
    mask = mask.bool()
    rows = hidden_states[mask]  # (N, H)
    chunk_size = max(rows.shape[0], 1) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    picked = _ChunkedLogProbs.apply(rows, lm_head_weight, lm_head_bias, labels[mask], chunk_size)  # (N,)
    out = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)  # (B, T)
    return out.masked_scatter(mask, picked)


def sequence_logprobs(token_logps: Tensor, mask: Tensor) -> Tensor:
    """log π(y) = Σ_t mask_t · log π(y_t | y_<t), shape (B,) from token_logps, mask (B, T)."""
    return masked_sum(token_logps, mask, dim=-1)


def sequence_mean_logprobs(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Length-normalized log π(y) / |y| (mean over response tokens), shape (B,)."""
    return masked_mean(token_logps, mask, dim=-1)
