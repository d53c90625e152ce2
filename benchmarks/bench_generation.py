"""Tokens per second of the self-play sampler, with and without the KV cache.

    python benchmarks/bench_generation.py --model runs/quickstart/pi0/model --threads 1

Samples responses to arena prompts from π (β = 0, one model) and from the Nash-MD mixture
π^μ ∝ π^{1−β} π0^{β} (β = 0.5, two models: the policy and a copy as the reference), with the KV cache
(``prefgame.game.lm_sampling.sample_tokens``) and without it (the whole prefix is recomputed at
every token). Both loops draw the same tokens for one seed, so they generate the same number of
tokens and the rates compare like for like. ``transformers``' own ``generate`` (β = 0, KV cache) is
timed as a reference point. Without ``--model`` a new arena-size model with random weights is used
(its responses run to the length limit). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from prefgame.arena.world import Arena
from prefgame.game.lm_sampling import generate
from prefgame.lm import load_causal_lm, load_tokenizer, sample


def load_models(path: str | None):
    if path:
        return load_causal_lm(path), load_causal_lm(path), load_tokenizer(path)
    from transformers import LlamaForCausalLM

    from prefgame.arena.lm import build_tokenizer, tiny_llama_config

    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = LlamaForCausalLM(tiny_llama_config(tok))
    ref = LlamaForCausalLM(tiny_llama_config(tok))
    ref.load_state_dict(policy.state_dict())
    return policy, ref, tok


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="π0 folder (default: a new random arena-size model)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts; each gets --samples responses")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-sizes", default="16,256", help="generation batch sizes (comma-separated)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats; the fastest is reported")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    policy, ref, tok = load_models(args.model)
    policy, ref = policy.to(args.device).eval(), ref.to(args.device).eval()
    prompts = [p.text for p in Arena().sample_prompts(args.prompts, np.random.default_rng(0))]
    n_params = sum(p.numel() for p in policy.parameters())
    print(
        f"model {args.model or 'random arena-size Llama'} ({n_params / 1e6:.2f}M parameters), device {args.device}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"{args.prompts} prompts × {args.samples} samples, ≤ {args.max_new_tokens} new tokens\n"
    )
    print("| sampler | β | models | batch | KV cache | tokens | seconds | tokens/s | cache speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for beta in (0.0, 0.5):
            rates = {}
            for cache in (True, False):

                def run(cache=cache, beta=beta, batch=batch):
                    return generate(
                        policy, ref, tok, prompts, n=args.samples, mixture_coef=beta,
                        max_new_tokens=args.max_new_tokens, seed=(0,), batch_size=batch, use_cache=cache,
                    )  # fmt: skip

                seconds, out = timed(run, args.repeats)
                tokens = sum(len(r) for r in out.response_ids)
                rates[cache] = tokens / seconds
                speedup = f"{rates[True] / rates[False]:.1f}×" if not cache else ""
                print(
                    f"| prefgame | {beta} | {2 if beta > 0 else 1} | {batch} | {'yes' if cache else 'no'} | "
                    f"{tokens} | {seconds:.2f} | {rates[cache]:.0f} | {speedup} |"
                )
        repeated = [p for p in prompts for _ in range(args.samples)]
        seconds, texts = timed(
            lambda batch=batch, repeated=repeated: sample(
                policy, tok, repeated, max_new_tokens=args.max_new_tokens, batch_size=batch, seed=0
            ),
            args.repeats,
        )
        tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # + EOS (approx.)
        rate = tokens / seconds
        print(f"| transformers generate | 0.0 | 1 | {batch} | yes | ≈{tokens} | {seconds:.2f} | {rate:.0f} | |")


if __name__ == "__main__":
    main()
