"""A tiny random Llama saved in bfloat16 (the dtype a hub checkpoint comes in) and how much of its
transformer layers' weights a run moved: shared by the precision tests and the GPU tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}


def save_bf16_llama(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny random Llama causal LM (:data:`TINY`, seed 0) with the tokenizer of ``tokenizer_dir``, saved in
    bfloat16 to ``out``."""
    from transformers import LlamaForCausalLM

    from prefgame.arena.lm import tiny_llama_config
    from prefgame.lm import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok, max_position_embeddings=128, **TINY)).to(torch.bfloat16)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def layer_weights(path: Path) -> dict[str, torch.Tensor]:
    """The transformer layers' weights of a saved model (causal LM or base model), by their name
    under ``layers.``, in float32."""
    tensors = load_file(str(path))
    return {k[k.index("layers.") :]: v.float() for k, v in tensors.items() if "layers." in k}


def changed_fraction(before: Path, after: Path) -> float:
    """The share of the transformer layers' weight entries that differ between two saved models."""
    a, b = layer_weights(before), layer_weights(after)
    assert a.keys() == b.keys() and a
    return sum(int((a[k] != b[k]).sum()) for k in a) / sum(v.numel() for v in a.values())
