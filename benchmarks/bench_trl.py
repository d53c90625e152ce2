"""DPO and reward-model training against TRL's DPOTrainer and RewardTrainer: step time and peak memory.

    OMP_NUM_THREADS=1 python benchmarks/bench_trl.py --threads 1 --steps 30 --batch-size 16

Same model (a tiny Llama: hidden 128, 4 layers, the arena tokenizer; ``--vocab-size`` widens its
vocabulary, as real tokenizers have 32k–150k entries), same data (arena preference pairs), same
batch size, sequence length limit, optimizer (AdamW) and precision (fp32) on both sides. Each
(task, implementation) runs in its own subprocess with ``--threads`` PyTorch threads.

- **step time**: the median interval between consecutive optimizer steps (a global
  ``torch.optim`` post-step hook, identical for both sides), after ``--warmup`` steps. For DPO the
  one-time reference pass of prefgame (π0's log-probs of every pair, computed before training) is
  reported too, and included once per pair in the "per pair, 1 epoch" column: a one-epoch run pays
  it for every pair, as TRL pays its reference forward in every step.
- **peak memory**: the process's peak resident set size (VmHWM, reset through
  /proc/self/clear_refs after imports) minus the resident size after imports: what building the
  model(s), tokenizing the data and training cost.

prefgame's DPO is ``prefgame.train.dpo`` (offline mode), its reward model ``prefgame.train.pm``
(kind bt, the same Llama as backbone, fine-tuned, last-token pooling). Prints a markdown table and
the throughput and memory ratios (TRL / prefgame).
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


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Meter:
    """Optimizer-step timestamps (global hook) and peak RSS since construction."""

    def __init__(self) -> None:

        self.base = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.times: list[float] = []
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *_: self.times.append(time.perf_counter()))

    def result(self, warmup: int) -> dict:
        gaps = np.diff(self.times[warmup:])
        return {
            "steps": len(self.times),
            "step_s": float(statistics.median(gaps)) if len(gaps) else float("nan"),
            "peak_mib": (rss_kib("VmHWM") - self.base) / 1024,
        }


# -- setup (parent process) ---------------------------------------------------------------------


def make_assets(work: Path, n_pairs: int, vocab_size: int) -> None:
    """A seeded tiny Llama saved to ``work/model`` and ``n_pairs`` arena pairs in two layouts."""
    import torch
    from transformers import LlamaForCausalLM

    from prefgame.arena.export import labeled_pairs
    from prefgame.arena.lm import build_tokenizer, tiny_llama_config
    from prefgame.arena.world import Arena
    from prefgame.lm import prompt_text

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = tiny_llama_config(tok)
    if vocab_size:
        config.vocab_size = max(vocab_size, len(tok))
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(work / "model"))
    tok.save_pretrained(str(work / "model"))
    rows = [r for r in labeled_pairs(Arena(), n_pairs, np.random.default_rng(0)) if r["chosen"] != r["rejected"]]
    with open(work / "pairs.jsonl", "w") as fh:  # prefgame's pairs format
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected", "label")}) + "\n")
    with open(work / "trl.jsonl", "w") as fh:  # TRL's: the prompt as the model sees it, responses after it
        for r in rows:
            p = prompt_text(tok, r["prompt"])
            fh.write(json.dumps({"prompt": p, "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}) + "\n")


# -- one measurement (child process) ------------------------------------------------------------


def run_ours_dpo(a, work: Path, meter: Meter) -> dict:
    from prefgame.config import load_config
    from prefgame.train import dpo

    cfg = load_config(
        dpo.DPOConfig,
        None,
        [
            f"output_dir={work / 'ours-dpo'}", f"policy.name_or_path={work / 'model'}",
            f"data.path={work / 'pairs.jsonl'}", "data.eval_fraction=0", f"data.max_length={a.max_length}",
            f"loss.beta={a.beta}", f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}",
            f"train.micro_batch_size={a.batch_size}", f"train.lr={a.lr}", "train.warmup_steps=0",
            "train.schedule=constant", "train.eval_every=0", "train.save_every=0", "train.log_every=1000000",
            "train.mixed_precision=no",
        ],
    )  # fmt: skip
    metrics = dpo.run(cfg)
    return {"reference_s": metrics["seconds"]["reference_logps"], "pairs": metrics["train_pairs"]}


def run_trl_dpo(a, work: Path, meter: Meter) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"))
    ds = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    args = DPOConfig(
        output_dir=str(work / "trl-dpo"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="constant", beta=a.beta, max_length=a.max_length,
        report_to="none", save_strategy="no", logging_steps=1000000, use_cpu=True, bf16=False,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
    return {"pairs": len(ds)}


def run_ours_rm(a, work: Path, meter: Meter) -> dict:
    from prefgame.config import load_config
    from prefgame.train import pm

    cfg = load_config(
        pm.PMConfig,
        None,
        [
            f"output_dir={work / 'ours-rm'}", "model.kind=bt", f"model.backbone.name_or_path={work / 'model'}",
            "model.backbone.pooling=last", "model.backbone.layers=[-1]", "model.backbone.freeze=false",
            f"model.backbone.max_length={a.max_length}", f"data.path={work / 'pairs.jsonl'}", "data.eval_fraction=0",
            f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"train.micro_batch_size={a.batch_size}",
            f"train.lr={a.lr}", "train.warmup_steps=0", "train.schedule=constant", "train.eval_every=0",
            "train.save_every=0", "train.log_every=1000000", "train.mixed_precision=no",
        ],
    )  # fmt: skip
    pm.run(cfg)
    return {}


def run_trl_rm(a, work: Path, meter: Meter) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    model = AutoModelForSequenceClassification.from_pretrained(str(work / "model"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    ds = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    args = RewardConfig(
        output_dir=str(work / "trl-rm"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="constant", max_length=a.max_length, report_to="none",
        save_strategy="no", logging_steps=1000000, use_cpu=True, bf16=False, dataloader_num_workers=0,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
    return {}


RUNS = {
    ("dpo", "prefgame"): run_ours_dpo,
    ("dpo", "trl"): run_trl_dpo,
    ("rm", "prefgame"): run_ours_rm,
    ("rm", "trl"): run_trl_rm,
}


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    import transformers  # noqa: F401  (imports happen before the baseline RSS is taken)

    if a.impl == "trl":
        import trl  # noqa: F401
    else:
        import prefgame.train.dpo  # noqa: F401
        import prefgame.train.pm  # noqa: F401
    work = Path(a.work)
    meter = Meter()
    extra = RUNS[(a.task, a.impl)](a, work, meter)
    print("RESULT " + json.dumps({**meter.result(a.warmup), **extra}))


# -- driver ------------------------------------------------------------------------------------


def measure(a, task: str, impl: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--task", task, "--impl", impl, "--work", a.work]
    for key in ("steps", "warmup", "batch_size", "max_length", "threads", "lr", "beta"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{task}/{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="dpo,rm", help="dpo, rm, or both (comma-separated)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median step time")
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    ap.add_argument("--max-length", type=int, default=64, help="prompt+response token limit")
    ap.add_argument("--pairs", type=int, default=1000, help="arena pairs in the data set")
    ap.add_argument("--vocab-size", type=int, default=0, help="model vocabulary (0: the arena's 95 words)")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch threads in each run")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    import trl

    with tempfile.TemporaryDirectory() as tmp:
        a.work = tmp
        make_assets(Path(tmp), a.pairs, a.vocab_size)
        vocab = a.vocab_size or 95
        print(
            f"\nCPU {platform.processor() or platform.machine()}, {a.threads} thread(s), trl {trl.__version__}; "
            f"tiny Llama (hidden 128, 4 layers, vocab {vocab}), batch {a.batch_size} pairs, "
            f"max length {a.max_length}, {a.steps} steps (median after {a.warmup})\n"
        )
        print("| task | implementation | step (s) | pairs/s | per pair, 1 epoch (ms) | peak memory (MiB) |")
        print("|---|---|---|---|---|---|")
        for task in a.tasks.split(","):
            res = {impl: measure(a, task, impl) for impl in ("prefgame", "trl")}
            per_pair = {}
            for impl, r in res.items():
                per_pair[impl] = r["step_s"] / a.batch_size + r.get("reference_s", 0.0) / r.get("pairs", 1)
                print(
                    f"| {task} | {impl} | {r['step_s']:.4f} | {a.batch_size / r['step_s']:.1f} | "
                    f"{1000 * per_pair[impl]:.2f} | {r['peak_mib']:.0f} |"
                )
            ours, theirs = res["prefgame"], res["trl"]
            print(
                f"| {task} | **ratio TRL / prefgame** | **{theirs['step_s'] / ours['step_s']:.2f}× throughput** | | "
                f"**{per_pair['trl'] / per_pair['prefgame']:.2f}×** | "
                f"**{theirs['peak_mib'] / max(ours['peak_mib'], 1e-9):.2f}× memory** |"
            )


if __name__ == "__main__":
    main()
