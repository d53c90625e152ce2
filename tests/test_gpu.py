"""What only a CUDA GPU can check, skipped on a machine without one (benchmarks/gpu_check.sh runs this file):
the default precision of a GPU run (bf16 autocast over float32 master weights) trains every layer, a LoRA
run trains its adapters there, and sampling on the GPU — policy alone and the Nash-MD mixture, with the
KV cache — gives the log-probabilities that a forward pass of the sampled tokens gives.

Each test runs the job in this process and checks that it used the GPU (CUDA memory was allocated).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.weights import changed_fraction, save_bf16_llama
from safetensors.torch import load_file

from prefgame.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STEPS = ["train.max_steps=10", "train.warmup_steps=0", "train.batch_size=8", "train.micro_batch_size=4"]
QUIET = ["train.eval_every=0", "train.save_every=0", "train.log_every=1", "eval.prompts=0"]


@pytest.fixture(scope="module")
def bf16_pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the arena tokenizer, saved in bfloat16 (as hub checkpoints come)."""
    return save_bf16_llama(arena_dir / "tokenizer", tmp_path_factory.mktemp("gpu-pi0"))


def dpo(arena: Path, pi0: Path, out: Path, *extra: str) -> Path:
    """Offline ``prefgame dpo`` on the arena pairs with the GPU's default precision (auto: bf16 autocast)."""
    torch.cuda.reset_peak_memory_stats()
    args = [
        "dpo", f"output_dir={out}", f"policy.name_or_path={pi0}", "policy.dtype=bfloat16",
        f"data.path={arena / 'pairs.jsonl'}", "data.max_length=64", "data.eval_fraction=0", "train.lr=2e-6",
        "train.mixed_precision=auto", *STEPS, *QUIET, *extra,
    ]  # fmt: skip
    assert main(args) == 0
    assert torch.cuda.max_memory_allocated() > 0, "the job did not run on the GPU"
    return out


def test_bf16_autocast_on_the_gpu_trains_every_layer(arena_dir: Path, bf16_pi0: Path, tmp_path: Path) -> None:
    """10 steps at lr 2e-6 under bf16 autocast move ≥ 99% of the layer weights (float32 master weights,
    saved in float32)."""
    out = dpo(arena_dir, bf16_pi0, tmp_path / "dpo")
    assert changed_fraction(bf16_pi0 / "model.safetensors", out / "model" / "model.safetensors") >= 0.99
    assert all(v.dtype == torch.float32 for v in load_file(str(out / "model" / "model.safetensors")).values())


def test_lora_step_on_the_gpu_trains_the_adapters(arena_dir: Path, bf16_pi0: Path, tmp_path: Path) -> None:
    """A LoRA run on the GPU: the adapters' B (zero at the start) has moved, and the merged export's layer
    weights differ from π0's."""
    pytest.importorskip("peft")
    out = dpo(arena_dir, bf16_pi0, tmp_path / "lora", "lora.enabled=true", "lora.r=4", "lora.alpha=8", "train.lr=1e-3")
    adapters = load_file(str(out / "model" / "adapter" / "adapter_model.safetensors"))
    b = [v for k, v in adapters.items() if "lora_B" in k]
    assert b and all(bool(v.abs().sum() > 0) for v in b)
    assert changed_fraction(bf16_pi0 / "model.safetensors", out / "model" / "model.safetensors") > 0


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_sampling_on_the_gpu_matches_a_forward_pass(arena_dir: Path, bf16_pi0: Path, beta: float) -> None:
    """Sampling on the GPU with the KV cache (the policy, β = 0, and the Nash-MD mixture, β = 0.5): the
    tokens come back, and at β = 0 the sampler's log-probs equal a forward pass's of the sampled tokens."""
    from prefgame.game.lm_sampling import sample_tokens
    from prefgame.lm import build_pairs_batch, encode_prompt, load_causal_lm, load_tokenizer, token_logps
    from prefgame.losses import sequence_logprobs

    tok = load_tokenizer(str(bf16_pi0))
    policy = load_causal_lm(str(bf16_pi0)).cuda().eval()
    torch.manual_seed(1)
    ref = load_causal_lm(str(bf16_pi0)).cuda().eval()
    with torch.no_grad():  # a reference that differs from the policy, so that the mixture mixes something
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["tell me about music in detail", "what is 2 plus 3 ?", "please explain garden briefly"]
    ids = [encode_prompt(tok, p) for p in prompts]
    out = sample_tokens(
        policy, ref, ids, mixture_coef=beta, max_new_tokens=12, stops=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.tokens.shape[0] == len(prompts) and bool(out.mask[:, 0].all())
    if beta == 0.0:
        responses = out.as_lists()
        batch = {k: v.cuda() for k, v in build_pairs_batch(ids, responses, tok.pad_token_id).items()}
        with torch.no_grad():
            logps = sequence_logprobs(token_logps(policy, batch), batch["response_mask"][:, 1:]).cpu()
        torch.testing.assert_close(logps, out.logps.sum(-1), rtol=0, atol=1e-3)
