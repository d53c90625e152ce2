"""Next-token logits for the samplers of :mod:`prefgame.game.lm_sampling`: one object per model and set
of rows, fed the chosen tokens one step at a time.

Three ways to compute them, all giving the logits a full forward pass of the model gives (checked
against it in the tests):

- :class:`StaticCacheDecoder`: for float32 decoders of the Llama family (``llama``, ``mistral``,
  ``qwen2`` configs: pre-norm blocks of rotary self-attention and a gated MLP, RMSNorm, one causal mask;
  a model in low precision decodes with its own forward, whose order of rounding it does not keep). It
  runs the model's own modules or weights (embedding, rotary embedding, projections, activation, head)
  and orchestrates them itself: a key/value cache allocated once for the whole response length and
  written in place, an additive mask of the prompts' padding, q/k/v and gate/up fused into one matrix
  product each with the RMSNorm weights folded in when they are plain linear layers (LoRA layers are
  called as modules), a table of the rotary angles, and the prompts' prefill run once per
  distinct prompt (the K samples of a prompt, and a policy's and a mixture's samples of it, share it).
  A token costs about half the time of a transformers forward with its dynamic cache at the arena's
  sizes on a CPU, where the Python and allocation work of each operation dominates. Under FSDP it
  gathers the layers once for a sampling call (:func:`gather_layers`) instead of once per layer and
  token as their forward does; with FSDP mixed precision the model's own forward decodes instead.
- :class:`CachedForward`: any causal LM whose forward takes the transformers ``cache`` argument, one
  forward per token with its dynamic cache.
- :class:`Recompute`: any causal LM, the whole prefix recomputed at every token (the reference the
  caches are checked against).

Left padding: prompts are padded on the left, padding is masked out of every attention, and position
ids count real tokens only (``cumsum(mask) − 1``), so a padded row computes what it would alone.
A model may be a :class:`~prefgame.lora.Reference` (the policy with its adapters disabled): every
forward pass enters :func:`~prefgame.lora.active_model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prefgame.errors import PrefgameError
from prefgame.lm import pad_batch
from prefgame.lora import active_model, base_of

# model types whose decoder layers StaticCacheDecoder computes (one causal mask for every layer)
STATIC_CACHE_TYPES = ("llama", "mistral", "qwen2")


def unique_prompts(prompt_ids: Sequence[Sequence[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """(distinct prompts in first-seen order, (R,) index of each row's prompt among them)."""
    index: dict[tuple[int, ...], int] = {}
    rows = [index.setdefault(tuple(p), len(index)) for p in prompt_ids]
    return [list(p) for p in index], torch.tensor(rows, dtype=torch.long)


def check_cache_argument(model: nn.Module) -> None:
    """The cached loop passes the KV cache as ``cache=``; a model whose forward names it otherwise would
    take it into ``**kwargs`` and ignore it, silently decoding from the last token alone."""
    if "cache" not in inspect.signature(model.forward).parameters:
        raise PrefgameError(
            f"{type(model).__name__}.forward takes no `cache` argument, so prefgame cannot reuse its KV cache; "
            "sample with use_cache=false (sampling.use_cache=false) or use a model class that takes `cache`"
        )


class CachedForward:
    """One transformers forward per token with the model's dynamic KV cache (the ``cache`` argument)."""

    def __init__(self, model, prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device) -> None:
        check_cache_argument(base_of(model))
        self.model = model
        ids, mask = pad_batch(prompt_ids, pad_token_id, left=True)
        self.ids, self.mask = ids.to(device), mask.to(device)  # (R, T0)
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (R, T0) positions of real tokens, 0 on padding
        self.cache = None

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        with active_model(self.model) as net:
            out = net(
                input_ids=ids, attention_mask=self.mask, position_ids=pos, cache=self.cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
        self.cache = out.cache
        return out.logits[:, -1]

    def start(self) -> torch.Tensor:
        """Logits (R, V) of the first response token."""
        return self._forward(self.ids, self.pos)

    def close(self) -> None:
        pass

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (R, V) of the next token after ``tokens`` (R,)."""
        self.pos = self.pos[:, -1:] + 1
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        return self._forward(tokens.unsqueeze(-1), self.pos)


class Recompute:
    """The whole prefix through the model at every token, no cache."""

    def __init__(self, model, prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device) -> None:
        self.model = model
        ids, mask = pad_batch(prompt_ids, pad_token_id, left=True)
        self.ids, self.mask = ids.to(device), mask.to(device)

    def start(self) -> torch.Tensor:
        pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        with active_model(self.model) as net:
            out = net(input_ids=self.ids, attention_mask=self.mask, position_ids=pos, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1]

    def close(self) -> None:
        pass

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, tokens.unsqueeze(-1)], dim=-1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        return self.start()


class _Projection:
    """x ↦ x·Wᵀ + b of linear layers stacked along their outputs (q/k/v, or gate/up, in one matrix product).

    Plain ``nn.Linear`` layers are computed from a pre-transposed contiguous copy of their stacked
    weights, into which an RMSNorm weight ``scale`` may be folded (W·diag(scale)·x = W·(scale ⊙ x));
    anything else (a LoRA layer, a quantized one) is called as a module, each output concatenated, and
    ``folded`` is then False: the caller applies the norm's weight itself.
    """

    def __init__(self, modules: Sequence[nn.Module], scale: torch.Tensor | None = None) -> None:
        self.modules = list(modules)
        self.weight = self.bias = None
        if any(type(m) is not nn.Linear for m in self.modules):
            self.folded = False
            return
        weight = torch.cat([m.weight.detach() for m in self.modules]).t()  # (in, out)
        self.folded = scale is not None
        if self.folded:
            weight = weight * scale.detach()[:, None]
        self.weight = weight.contiguous()
        if any(m.bias is not None for m in self.modules):
            self.bias = torch.cat(
                [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in self.modules]
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            outs = [m(x) for m in self.modules]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if x.dim() == 2:
            return torch.mm(x, self.weight) if self.bias is None else torch.addmm(self.bias, x, self.weight)
        out = torch.matmul(x, self.weight)
        return out if self.bias is None else out + self.bias

    def residual(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h + (x·Wᵀ + b): one fused product for a plain layer on (R, ·) rows."""
        if self.weight is not None and x.dim() == 2:
            h = torch.addmm(h, x, self.weight)
            return h if self.bias is None else h + self.bias
        return h + self(x)


class _Layer:
    """What one decoder layer's step needs: its projections (q/k/v and gate/up fused, the norms' weights
    folded in, where they are plain linear layers), the norms' weights not folded, its activation."""

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = _Projection([attn.q_proj, attn.k_proj, attn.v_proj], norm1.weight)
        self.out = _Projection([attn.o_proj])
        self.gate_up = _Projection([mlp.gate_proj, mlp.up_proj], norm2.weight)
        self.down = _Projection([mlp.down_proj])
        self.norm1 = (None if self.qkv.folded else norm1.weight, norm1.variance_epsilon)
        self.norm2 = (None if self.gate_up.folded else norm2.weight, norm2.variance_epsilon)
        self.scaling = attn.scaling
        self.qk_size = attn.q_proj.out_features + attn.k_proj.out_features
        self.inter = mlp.gate_proj.out_features
        self.act = F.silu if type(mlp.act_fn).__name__ in ("SiLUActivation", "SiLU") else mlp.act_fn

    def qk_v(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries and keys side by side, (..., (Hq + Hkv)·D); values, (..., Hkv·D)) of ``x``."""
        out = self.qkv(_rms_norm(self.norm1, x))
        return out[..., : self.qk_size], out[..., self.qk_size :]

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` plus the gated MLP of its norm (the layer's second residual branch)."""
        gate_up = self.gate_up(_rms_norm(self.norm2, h))
        return self.down.residual(h, self.act(gate_up[..., : self.inter]) * gate_up[..., self.inter :])


def _rms_norm(norm: tuple[torch.Tensor | None, float], x: torch.Tensor) -> torch.Tensor:
    """The Llama-family RMSNorm of (weight, eps) ``norm`` applied to float32 ``x``, scaled by the weight
    unless it is None (folded into the next projection)."""
    weight, eps = norm
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: rotate_half(x)·sin = roll(x, D/2)·signed_sin."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` (..., D): x·cos + rotate_half(x)·sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


# rotary embeddings whose angles depend on the position alone (not on the sequence length seen so far),
# so that a table over every position equals what the model computes step by step
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


class StaticCacheDecoder:
    """Incremental decoding of a Llama-family model with a preallocated KV cache (module docstring).

    Built for one sampling call: ``prompt_ids`` (R rows) and at most ``max_new_tokens`` steps. The
    model's weights are read when it is built (fused copies of q/k/v and gate/up), so it must not
    outlive an update of the model.
    """

    def __init__(
        self, model, prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device, max_new_tokens: int, *,
        gathered: Sequence[nn.Module] = (),
    ) -> None:  # fmt: skip
        self.model = model
        self.gathered = list(gathered)  # FSDP layers gathered for this decoder (gather_layers), sharded on close
        net = base_of(model)
        inner = getattr(net, net.base_model_prefix)
        self.embed, self.rotary = inner.embed_tokens, inner.rotary_emb
        self.plain_embed = type(self.embed) is nn.Embedding and self.embed.max_norm is None
        self.head = _Projection([net.get_output_embeddings()], inner.norm.weight)
        self.final_norm = (None if self.head.folded else inner.norm.weight, inner.norm.variance_epsilon)
        self.layers = [_Layer(layer) for layer in inner.layers]
        cfg = net.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.group = self.n_heads // self.n_kv  # query heads per key/value head
        self.head_dim = inner.layers[0].self_attn.head_dim
        self.dtype = self.embed.weight.dtype
        self.device = device
        self.prompts, self.rows = unique_prompts(prompt_ids)
        self.rows = self.rows.to(device)
        ids, mask = pad_batch(self.prompts, pad_token_id, left=True)
        self.ids, self.prompt_mask = ids.to(device), mask.to(device).bool()  # (U, T0)
        t0, r = ids.shape[1], len(prompt_ids)
        self.slots = t0 + max_new_tokens
        shape = (r, self.n_kv, self.slots, self.head_dim)
        # per layer (R, Hkv, T, D), and the same memory as (R·Hkv, T, D) for the attention's batched products
        self.keys = [torch.empty(shape, dtype=self.dtype, device=device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=self.dtype, device=device) for _ in self.layers]
        self.flat_keys = [k.view(r * self.n_kv, self.slots, self.head_dim) for k in self.keys]
        self.flat_values = [v.view(r * self.n_kv, self.slots, self.head_dim) for v in self.values]
        # additive attention mask of every key slot, (R·Hkv, 1, T): 0 to attend, −inf for the prompts' padding
        valid = torch.ones((r, self.slots), dtype=torch.bool, device=device)
        valid[:, :t0] = self.prompt_mask[self.rows]
        blocked = torch.zeros((r, self.slots), dtype=self.dtype, device=device).masked_fill(~valid, float("-inf"))
        self.blocked = blocked.repeat_interleave(self.n_kv, dim=0).unsqueeze(1)
        self.length = 0  # filled cache slots
        self.next_pos = mask.sum(-1).to(device)[self.rows]  # (R,) position of the next token
        self.table = None  # (cos, sin) of every position, (P, D), where they depend on the position alone
        if getattr(self.rotary, "rope_type", None) in STATIC_ROPE:
            positions = torch.arange(int(self.next_pos.max()) + max_new_tokens, device=device)[None]
            with torch.no_grad():
                cos, sin = self.rotary(self.embed.weight[:1][None], positions)
            self.table = (cos[0], _signed_sin(sin[0]))

    @staticmethod
    def supports(model, total_length: int) -> bool:
        """Whether ``model`` (or the policy of a Reference) is a decoder this class computes exactly."""
        net = base_of(model)
        cfg = getattr(net, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in STATIC_CACHE_TYPES:
            return False
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        window = getattr(cfg, "sliding_window", None)
        if window is not None and getattr(cfg, "use_sliding_window", True) and window < total_length:
            return False
        if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
            return False
        inner = getattr(net, getattr(net, "base_model_prefix", ""), None)
        if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm")):
            return False
        if inner.embed_tokens.weight.dtype != torch.float32:
            return False  # low precision rounds in the order of the model's own forward, which this does not keep
        if net.get_output_embeddings() is None:
            return False
        return all(_layer_supported(layer) for layer in inner.layers) and _norm_supported(inner.norm)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(_rms_norm(self.final_norm, h))

    def close(self) -> None:
        """Shard again the FSDP layers gathered for this decoder."""
        for layer in self.gathered:
            layer.reshard()
        self.gathered = []

    def start(self) -> torch.Tensor:
        """Prefill every distinct prompt once; logits (R, V) of the first response token."""
        u, t0 = self.ids.shape
        hq, kv, d = self.n_heads, self.n_kv, self.head_dim
        pos = (self.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # (U, T0)
        causal = torch.ones((t0, t0), dtype=torch.bool, device=self.device).tril()
        # a padding query sees itself too, so that no row of the attention is empty (NaN)
        mask = (causal & self.prompt_mask[:, None, :]) | torch.eye(t0, dtype=torch.bool, device=self.device)
        mask = mask.unsqueeze(1)  # (U, 1, T0, T0)
        with torch.no_grad(), active_model(self.model):
            h = self.embed(self.ids)  # (U, T0, H)
            cos, sin = self.rotary(h, pos)  # (U, T0, D)
            cos, sin = cos.unsqueeze(2), _signed_sin(sin).unsqueeze(2)  # (U, T0, 1, D)
            for i, layer in enumerate(self.layers):
                qk, v = layer.qk_v(h)
                qk = _rotate(qk.view(u, t0, hq + kv, d), cos, sin).transpose(1, 2)  # (U, Hq+Hkv, T0, D)
                q, k = qk[:, :hq], qk[:, hq:]
                v = v.view(u, t0, kv, d).transpose(1, 2)  # (U, Hkv, T0, D)
                self.keys[i][:, :, :t0] = k[self.rows]
                self.values[i][:, :, :t0] = v[self.rows]
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, scale=layer.scaling, enable_gqa=self.group > 1
                )  # (U, Hq, T0, D)
                h = layer.out.residual(h, out.transpose(1, 2).reshape(u, t0, -1))
                h = layer.mlp(h)
            logits = self._logits(h[:, -1])
        self.length = t0
        return logits[self.rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (R, V) of the next token after ``tokens`` (R,)."""
        t, r, hq, kv, d = self.length, len(tokens), self.n_heads, self.n_kv, self.head_dim
        blocked = self.blocked[:, :, : t + 1]  # (R·Hkv, 1, t+1)
        with torch.no_grad(), active_model(self.model):
            h = F.embedding(tokens, self.embed.weight) if self.plain_embed else self.embed(tokens)  # (R, H)
            if self.table is not None:
                cos, sin = self.table[0][self.next_pos], self.table[1][self.next_pos]  # (R, D)
            else:
                cos, sin = (x[:, 0] for x in self.rotary(h[:, None], self.next_pos[:, None]))
                sin = _signed_sin(sin)
            cos, sin = cos[:, None], sin[:, None]  # (R, 1, D)
            for i, layer in enumerate(self.layers):
                qk, v = layer.qk_v(h)  # (R, (Hq+Hkv)·D), (R, Hkv·D)
                qk = _rotate(qk.view(r, hq + kv, d), cos, sin)  # (R, Hq+Hkv, D)
                self.keys[i][:, :, t] = qk[:, hq:]
                self.values[i][:, :, t] = v.view(r, kv, d)
                keys, values = self.flat_keys[i][:, : t + 1], self.flat_values[i][:, : t + 1]  # (R·Hkv, t+1, D)
                # each key/value head with its group of query heads, one batch entry per (row, kv head)
                scores = torch.baddbmm(
                    blocked, qk[:, :hq].reshape(r * kv, self.group, d), keys.transpose(1, 2), alpha=layer.scaling
                )  # (R·Hkv, G, t+1)
                h = layer.out.residual(h, torch.bmm(torch.softmax(scores, dim=-1), values).view(r, -1))
                h = layer.mlp(h)
            logits = self._logits(h)
        self.length = t + 1
        self.next_pos = self.next_pos + 1
        return logits


# the largest model (parameters) that StackedDecoder steps together with another
STACK_MAX_PARAMETERS = 100_000_000


class StackedDecoder:
    """Several :class:`StaticCacheDecoder` of models with the same shapes over the same rows (a policy and
    its frozen reference, for the Nash-MD mixture), stepped together: each operation of a step runs once
    over a leading model dimension (batched products of the models' stacked weights, one attention over
    their stacked caches) instead of once per model, which halves the operations a token costs where
    their per-call work dominates (small models, CPU). Each prompt is prefilled by each model's own
    decoder; the logits of every step are those the models' own decoders give, up to float rounding.

    Built by :meth:`of` only where every projection is a plain (fused) matrix, the norms are folded
    into them, the rotary tables agree, and the models are small (at most :data:`STACK_MAX_PARAMETERS`
    each): the stacked weights are one more copy of both models' weights for the call, worth it only
    where a step's operations cost more than their arithmetic. Otherwise :meth:`of` returns None and each
    model decodes alone.
    """

    def __init__(self, parts: list[StaticCacheDecoder]) -> None:
        self.parts = parts
        first = parts[0]
        m, r = len(parts), len(first.rows)
        self.m, self.r = m, r

        vocab = first.embed.weight.shape[0]
        self.embed = torch.cat([p.embed.weight.detach() for p in parts])  # (M·V, H): model j's rows from j·V
        self.offsets = (torch.arange(m, device=first.device) * vocab)[:, None]  # (M, 1)
        # per layer, each projection's (weights (M, in, out), bias (M, 1, out) or None) over the models
        self.layers = [
            {name: _stack_projections([getattr(p.layers[i], name) for p in parts]) for name in _PROJECTIONS}
            for i in range(len(first.layers))
        ]
        self.head = _stack_projections([p.head for p in parts])
        # one cache per layer for all models, (M, R, Hkv, T, D); each model's decoder reads and writes (its
        # prefill) its own slice of it
        self.keys, self.values = [], []
        for i in range(len(first.layers)):
            for name, flat, joint_caches in (("keys", "flat_keys", self.keys), ("values", "flat_values", self.values)):
                joint = torch.stack([getattr(p, name)[i] for p in parts])
                for j, p in enumerate(parts):
                    getattr(p, name)[i] = joint[j]
                    getattr(p, flat)[i] = joint[j].view(r * first.n_kv, first.slots, first.head_dim)
                joint_caches.append(joint)
        shape = (m * r * first.n_kv, first.slots, first.head_dim)
        self.flat_keys = [k.view(shape) for k in self.keys]
        self.flat_values = [v.view(shape) for v in self.values]
        self.blocked = first.blocked.repeat(m, 1, 1)  # (M·R·Hkv, 1, T)

    @classmethod
    def of(cls, models, prompt_ids, pad_token_id: int, device, max_new_tokens: int) -> StackedDecoder | None:
        """The stacked decoder of ``models`` on ``prompt_ids``, or None where it does not apply."""
        total = max(len(p) for p in prompt_ids) + max_new_tokens
        if len(models) < 2 or not all(StaticCacheDecoder.supports(m, total) for m in models):
            return None
        if any(_is_shard(p) for m in models for p in base_of(m).parameters()):
            return None
        if any(sum(p.numel() for p in base_of(m).parameters()) > STACK_MAX_PARAMETERS for m in models):
            return None
        if not all(_plain_projections(m) for m in models):  # LoRA or quantized layers: nothing to stack
            return None
        parts = [StaticCacheDecoder(m, prompt_ids, pad_token_id, device, max_new_tokens) for m in models]
        if not all(_stackable(parts[0], p) for p in parts):
            return None
        return cls(parts)

    def start(self) -> list[torch.Tensor]:
        """Prefill every model; logits (R, V) of the first response token, one tensor per model."""
        return [p.start() for p in self.parts]

    def step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each model's logits (R, V) of the next token after ``tokens`` (R,)."""
        first = self.parts[0]
        t, m, r, hq, kv, d = first.length, self.m, self.r, first.n_heads, first.n_kv, first.head_dim
        blocked = self.blocked[:, :, : t + 1]  # (M·R·Hkv, 1, t+1)
        with torch.no_grad():
            h = F.embedding(tokens[None] + self.offsets, self.embed)  # (M, R, H)
            cos, sin = first.table[0][first.next_pos][:, None], first.table[1][first.next_pos][:, None]  # (R, 1, D)
            for i, (layer, w) in enumerate(zip(first.layers, self.layers)):
                out = _stacked_product(F.rms_norm(h, (h.shape[-1],), None, layer.norm1[1]), *w["qkv"])
                qk = _rotate(out[..., : layer.qk_size].view(m, r, hq + kv, d), cos, sin)  # (M, R, Hq+Hkv, D)
                self.keys[i][:, :, :, t] = qk[:, :, hq:]
                self.values[i][:, :, :, t] = out[..., layer.qk_size :].view(m, r, kv, d)
                keys, values = self.flat_keys[i][:, : t + 1], self.flat_values[i][:, : t + 1]  # (M·R·Hkv, t+1, D)
                scores = torch.baddbmm(
                    blocked, qk[:, :, :hq].reshape(m * r * kv, first.group, d), keys.transpose(1, 2),
                    alpha=layer.scaling,
                )  # fmt: skip
                attn = torch.bmm(torch.softmax(scores, dim=-1), values).view(m, r, -1)
                h = _stacked_product(attn, *w["out"], add=h)
                gate_up = _stacked_product(F.rms_norm(h, (h.shape[-1],), None, layer.norm2[1]), *w["gate_up"])
                act = layer.act(gate_up[..., : layer.inter]) * gate_up[..., layer.inter :]
                h = _stacked_product(act, *w["down"], add=h)
            logits = _stacked_product(F.rms_norm(h, (h.shape[-1],), None, first.final_norm[1]), *self.head)
        for p in self.parts:
            p.length = t + 1
            p.next_pos = p.next_pos + 1
        return list(logits.unbind(0))

    def close(self) -> None:
        for p in self.parts:
            p.close()


_PROJECTIONS = ("qkv", "out", "gate_up", "down")


def _stack_projections(projections: Sequence[_Projection]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused weights (M, in, out) of one projection of M models, and their biases (M, 1, out) or None."""
    weight = torch.stack([p.weight for p in projections])
    bias = None if projections[0].bias is None else torch.stack([p.bias for p in projections])[:, None, :]
    return weight, bias


def _stacked_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, add: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, R, in) × (M, in, out) per model, plus ``bias`` (M, 1, out) and ``add`` (M, R, out) where given."""
    out = torch.bmm(x, weight) if add is None else torch.baddbmm(add, x, weight)
    return out if bias is None else out + bias


def _plain_projections(model) -> bool:
    """Whether every projection of ``model``'s layers and its output layer is a plain ``nn.Linear`` (what
    :class:`_Projection` fuses into one matrix), checked before any decoder is built for it."""
    net = base_of(model)
    inner = getattr(net, net.base_model_prefix)
    modules = [net.get_output_embeddings()]
    for layer in inner.layers:
        modules += [getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        modules += [getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
    return all(type(m) is nn.Linear for m in modules)


def _stackable(a: StaticCacheDecoder, b: StaticCacheDecoder) -> bool:
    """Whether two decoders compute the same shapes with every projection a fused matrix, every norm's
    weight folded into it, and the same rotary table, so that :class:`StackedDecoder` can step them together."""
    if a.table is None or b.table is None or not (a.plain_embed and b.plain_embed):
        return False
    if a.embed.weight.shape != b.embed.weight.shape or len(a.layers) != len(b.layers):
        return False
    if (a.n_heads, a.n_kv, a.head_dim) != (b.n_heads, b.n_kv, b.head_dim):
        return False
    if not (torch.equal(a.table[0], b.table[0]) and torch.equal(a.table[1], b.table[1])):
        return False
    if not torch.equal(a.rows, b.rows) or not torch.equal(a.next_pos, b.next_pos):
        return False
    if a.final_norm[0] is not None or b.final_norm[0] is not None or a.final_norm[1] != b.final_norm[1]:
        return False
    for la, lb in zip(a.layers, b.layers):
        pairs = [(getattr(la, n), getattr(lb, n)) for n in _PROJECTIONS]
        if any(x.weight is None or y.weight is None for x, y in pairs):
            return False
        if any(x.weight.shape != y.weight.shape or (x.bias is None) != (y.bias is None) for x, y in pairs):
            return False
        if any(norm[0] is not None for norm in (la.norm1, la.norm2, lb.norm1, lb.norm2)):
            return False
        if (la.norm1[1], la.norm2[1], la.scaling, la.act) != (lb.norm1[1], lb.norm2[1], lb.scaling, lb.act):
            return False
    return a.head.weight is not None and b.head.weight is not None and a.head.weight.shape == b.head.weight.shape


def _is_shard(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is an FSDP shard (a ``DTensor``) rather than a whole tensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a PyTorch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def gather_layers(model) -> list[nn.Module] | None:
    """Under FSDP, the layers of ``model`` whose parameters are sharded, gathered now (``unshard``, a
    collective: every process samples the same, in step) for a :class:`StaticCacheDecoder`, which reads
    them directly instead of through each layer's forward; ``[]`` when none is sharded; None (nothing
    gathered) when the decoder cannot run on them: the root's parameters (embeddings, norm, output layer)
    are not gathered (:func:`prefgame.train.sharding.gathered`), or the layers gather in another dtype than
    the root's (FSDP mixed precision). :meth:`StaticCacheDecoder.close` shards them again."""
    net = base_of(model)
    inner = getattr(net, net.base_model_prefix)
    layers = [layer for layer in inner.layers if _is_shard(layer.self_attn.q_proj.weight)]
    if not layers:
        return []
    if _is_shard(inner.embed_tokens.weight) or not all(hasattr(layer, "unshard") for layer in layers):
        return None
    for layer in layers:
        layer.unshard()
    dtype = inner.embed_tokens.weight.dtype
    if any(p.dtype != dtype or _is_shard(p) for layer in layers for p in layer.parameters()):
        for layer in layers:
            layer.reshard()
        return None
    return layers


def _layer_supported(layer: nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None:
        return False
    if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
        return False
    if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    # Qwen3-style per-head q/k norms and other additions are not computed here
    if any(hasattr(attn, a) for a in ("q_norm", "k_norm", "sinks")):
        return False
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    return all(n is not None and _norm_supported(n) for n in norms)


def _norm_supported(norm: nn.Module) -> bool:
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon") and hasattr(norm, "weight")


def make_decoder(model, prompt_ids, pad_token_id: int, device, *, max_new_tokens: int, use_cache: bool):
    """The fastest exact decoder for ``model`` on these rows (:class:`StaticCacheDecoder` where it applies)."""
    if not use_cache:
        return Recompute(model, prompt_ids, pad_token_id, device)
    total = max(len(p) for p in prompt_ids) + max_new_tokens
    if StaticCacheDecoder.supports(model, total):
        gathered = gather_layers(model)
        if gathered is not None:
            try:
                return StaticCacheDecoder(model, prompt_ids, pad_token_id, device, max_new_tokens, gathered=gathered)
            except BaseException:
                for layer in gathered:
                    layer.reshard()
                raise
    return CachedForward(model, prompt_ids, pad_token_id, device)
