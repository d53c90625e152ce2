"""Tokens per second of prefgame's sampler next to transformers' ``generate``; the time of a Nash-MD step.

    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py [--model runs/quickstart/pi0/model]
    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py --nash-md-step [--compare-with /tmp/before]

The default mode samples ``--samples`` responses to each of ``--prompts`` arena prompts, on the same
model and prompts, with: prefgame's loop and its static-cache decoder; prefgame's loop on the model's
own forward and cache (what it runs for models the static decoder does not compute); transformers'
``generate`` (β = 0 only); and, with ``--uncached``, prefgame's loop recomputing the prefix at every
token. Each at β = 0 (the policy) and β = 0.5 (the Nash-MD mixture π^μ ∝ π^{1−β} π0^{β} of the policy
and a copy as the reference, two models per token), for each batch size. The samplers are timed in
alternation, ``--repeats`` rounds, and the table gives the median; tokens are the responses' own (a
random model's responses run to the length limit). Without ``--model`` a new arena-size model with
random weights is used. Prints a markdown table.

``--nash-md-step`` times one whole self-play iteration of ``nash_md`` instead (the ``selfplay`` job's
iteration: K policy samples and K mixture samples per prompt, the gold oracle's K×K matrices, π0's
log-probs, one optimizer step): 8 prompts, K = 2, 32 new tokens, β = 0.2 (the arena preset), one
PyTorch thread, an arena-size model (random weights unless ``--model``). It prints the median of
``--repeats`` iterations after ``--warmup`` untimed ones. ``--compare-with DIR`` runs the same
measurement on another copy of prefgame (e.g. ``git archive <commit> | tar -x -C DIR``) and on this
one in alternating processes, ``--rounds`` each, and prints both medians: on a shared machine the
two see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prefgame.arena.world import Arena
from prefgame.game.lm_sampling import generate
from prefgame.lm import load_causal_lm, load_tokenizer


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


def cpu_name() -> str:
    """The CPU's model name (as lscpu prints it), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# (label, β, engine, use_cache, static-cache decoder allowed)
SAMPLERS = [
    ("prefgame, static cache", 0.0, "prefgame", True, True),
    ("prefgame, the model's cache", 0.0, "prefgame", True, False),
    ("transformers generate", 0.0, "transformers", True, False),
    ("prefgame, static cache", 0.5, "prefgame", True, True),
    ("prefgame, the model's cache", 0.5, "prefgame", True, False),
]
UNCACHED = [
    ("prefgame, no cache", 0.0, "prefgame", False, False),
    ("prefgame, no cache", 0.5, "prefgame", False, False),
]


def sample_once(policy, ref, tok, prompts, args, batch: int, sampler) -> tuple[float, int]:
    """(seconds, tokens generated) of one run of ``sampler`` (a row of SAMPLERS)."""
    from prefgame.game import decoding  # imported here: --compare-with runs this file on older copies too

    _, beta, engine, use_cache, static = sampler
    kept = decoding.STATIC_CACHE_TYPES
    decoding.STATIC_CACHE_TYPES = kept if static else ()  # the model's own cache: as for other families
    try:
        start = time.perf_counter()
        out = generate(
            policy, ref, tok, prompts, n=args.samples, mixture_coef=beta, max_new_tokens=args.max_new_tokens,
            seed=(0,), batch_size=batch, use_cache=use_cache, engine=engine,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        decoding.STATIC_CACHE_TYPES = kept
    return seconds, sum(len(r) for r in out.response_ids)


def tokens_per_second(args) -> None:
    """The default mode: the markdown table of the module docstring."""
    policy, ref, tok = load_models(args.model)
    policy, ref = policy.to(args.device).eval(), ref.to(args.device).eval()
    prompts = [p.text for p in Arena().sample_prompts(args.prompts, np.random.default_rng(0))]
    n_params = sum(p.numel() for p in policy.parameters())
    print(
        f"model {args.model or 'random arena-size Llama'} ({n_params / 1e6:.2f}M parameters), device {args.device}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}, torch {torch.__version__}; "
        f"{args.prompts} prompts × {args.samples} samples, ≤ {args.max_new_tokens} new tokens; "
        f"median of {args.repeats} alternating rounds\n"
    )
    print("| sampler | β | batch | tokens | seconds | tokens/s | vs transformers generate |")
    print("|---|---|---|---|---|---|---|")
    samplers = SAMPLERS + (UNCACHED if args.uncached else [])
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        sample_once(policy, ref, tok, prompts[:4], args, batch, samplers[0])  # warm-up
        runs: dict[int, list[tuple[float, int]]] = {i: [] for i in range(len(samplers))}
        for _ in range(args.repeats):
            for i, sampler in enumerate(samplers):
                runs[i].append(sample_once(policy, ref, tok, prompts, args, batch, sampler))
        seconds = {i: statistics.median(t for t, _ in r) for i, r in runs.items()}
        tokens = {i: int(statistics.median(n for _, n in r)) for i, r in runs.items()}
        rates = {i: tokens[i] / seconds[i] for i in runs}
        reference = rates[samplers.index(SAMPLERS[2])]
        for i, (label, beta, *_) in enumerate(samplers):
            versus = f"{rates[i] / reference:.2f}×" if beta == 0.0 else ""
            print(f"| {label} | {beta} | {batch} | {tokens[i]} | {seconds[i]:.2f} | {rates[i]:.0f} | {versus} |")


def nash_md_step_seconds(args) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``args.repeats`` Nash-MD self-play iterations after ``args.warmup`` untimed
    ones (CPU: this process's, which other jobs on a shared machine inflate less than the wall time)."""
    import logging

    from prefgame.run import RunDir
    from prefgame.train.selfplay import ALGORITHMS, SelfPlay, selfplay_config

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            pi0 = args.model
        else:
            policy, _, tok = load_models(None)
            pi0 = str(Path(tmp) / "pi0")
            policy.save_pretrained(pi0)
            tok.save_pretrained(pi0)
        cfg = selfplay_config("nash_md", None, [
            f"policy.name_or_path={pi0}", f"output_dir={Path(tmp) / 'run'}", "oracle.kind=gold",
            f"sampling.prompts_per_iteration={args.prompts}", f"sampling.samples_per_prompt={args.samples}",
            f"sampling.max_new_tokens={args.max_new_tokens}", "train.steps_per_iteration=1",
            f"train.batch_size={args.prompts * args.samples}", f"train.micro_batch_size={args.prompts * args.samples}",
            "train.mixed_precision=no", "eval.prompts=0",
        ])  # fmt: skip
        out = RunDir(cfg.output_dir)
        sp = SelfPlay(cfg, out, logging.getLogger("bench"))
        iterate = ALGORITHMS["nash_md"].iterate
        seconds = []
        for t in range(args.warmup + args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            iterate(sp, t, sp.preferences())
            seconds.append((time.perf_counter() - start, time.process_time() - cpu))
        out.close()
    return seconds[args.warmup :]


def nash_md_step(args) -> None:
    """Print the median Nash-MD step time of this copy of prefgame (and of ``--compare-with``'s)."""
    if args.json:  # one measurement for a comparing parent process
        print(json.dumps(nash_md_step_seconds(args)))
        return
    header = (
        f"Nash-MD self-play step: {args.prompts} prompts × K={args.samples}, ≤ {args.max_new_tokens} new tokens, "
        f"β 0.2, {args.threads} thread(s), model {args.model or 'random arena-size Llama'}, "
        f"{cpu_name()}, torch {torch.__version__}"
    )
    if not args.compare_with:
        wall, cpu = zip(*nash_md_step_seconds(args))
        print(
            f"{header}\nmedian {statistics.median(wall):.3f} s over {len(wall)} steps "
            f"(min {min(wall):.3f}, max {max(wall):.3f}); CPU time median {statistics.median(cpu):.3f} s"
        )  # noqa: E501
        return
    here = str(Path(__file__).resolve().parents[1])
    trees = {"other": str(Path(args.compare_with).resolve()), "this": here}
    argv = [sys.executable, str(Path(__file__).resolve()), "--nash-md-step", "--json"]
    for key in ("prompts", "samples", "max_new_tokens", "threads", "repeats", "warmup"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.model:
        argv += ["--model", args.model]
    medians: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(max(args.threads, 1))}
            done = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"bench_generation: the run in {tree} failed:\n{done.stderr[-2000:]}")
            wall, used = zip(*json.loads(done.stdout.strip().splitlines()[-1]))
            medians[name].append(statistics.median(wall))
            cpu[name].append(statistics.median(used))
            print(f"round {r + 1}: {name} ({tree}) median {medians[name][-1]:.3f} s, CPU {cpu[name][-1]:.3f} s",
                  flush=True)  # fmt: skip
    print(header)
    for name, tree in trees.items():
        print(f"{name} ({tree}): median of round medians {statistics.median(medians[name]):.3f} s "
              f"(rounds: {', '.join(f'{m:.3f}' for m in medians[name])}); "
              f"CPU time {statistics.median(cpu[name]):.3f} s")  # fmt: skip
    for label, figures in (("wall", medians), ("CPU", cpu)):
        ratio = statistics.median(figures["other"]) / statistics.median(figures["this"])
        print(f"speed-up of this copy ({label} time): {ratio:.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="π0 folder (default: a new random arena-size model)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts; each gets --samples responses")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-sizes", default="16,64,256", help="generation batch sizes (comma-separated)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (steps with --nash-md-step); medians")
    ap.add_argument("--uncached", action="store_true", help="also time the loop without a KV cache (slow)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--nash-md-step", action="store_true", help="time a whole Nash-MD self-play step instead")
    ap.add_argument("--warmup", type=int, default=3, help="--nash-md-step: untimed steps first")
    ap.add_argument("--compare-with", default="", help="--nash-md-step: another prefgame tree, timed alternately")
    ap.add_argument("--rounds", type=int, default=5, help="--compare-with: alternating processes per tree")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.nash_md_step:
        if "--prompts" not in sys.argv:
            args.prompts = 8
        if "--samples" not in sys.argv:
            args.samples = 2
        if "--max-new-tokens" not in sys.argv:
            args.max_new_tokens = 32
        if "--repeats" not in sys.argv:
            args.repeats = 15
        nash_md_step(args)
        return
    tokens_per_second(args)


if __name__ == "__main__":
    main()
