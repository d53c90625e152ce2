"""Peak memory and speed of prefgame's DPO step and self-play iteration at the shapes of real models.

    PYTHONPATH=. python benchmarks/bench_scale.py [--models qwen2.5-0.5b,llama-3.2-1b]
        [--modes full,lora,lora+ckpt] [--jobs dpo,selfplay] [--steps 1] [--response-tokens 64]
        [--device cpu|cuda] [--out runs/bench-scale]

**Models.** Random weights (seed 0) in the exact shapes of Qwen2.5-0.5B (Qwen2: hidden 896, 24 layers,
14 heads, 2 KV heads, MLP 4864, vocabulary 151,936, biases on q/k/v, tied embeddings) and Llama-3.2-1B
(Llama: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocabulary 128,256, llama3 RoPE
scaling, tied embeddings), built from hand-written ``Qwen2Config`` / ``LlamaConfig`` (nothing is
downloaded), saved once as a model folder under ``--cache-dir`` with a word-level tokenizer of exactly
that many entries (the arena's special tokens and chat template, then filler words ``t6``, ``t7``, …).
Llama-3.1-8B (hidden 4096, 32 layers, 8 KV heads, MLP 14336, untied) enters the memory estimate only.

**What runs.** Each configuration — model × mode (``full`` fine-tuning; ``lora``: r = 16, α = 32 on every
linear layer, prefgame's ``lora.enabled``; ``lora+ckpt``: the same with ``train.gradient_checkpointing``)
× job — runs in a fresh Python process, through prefgame's own trainer code:

* ``dpo``: offline DPO steps as ``prefgame dpo`` takes them: the trainer's loading (``load_trainable_lm``,
  ``apply_lora``), π0's log-probs computed once beforehand (``PairLogps``, not timed), then
  ``engine.optimizer_step`` with the trainer's micro-batch loss (``dpo.offline_micro_loss``), on one pair:
  2 sequences (chosen, rejected) of ``--seq-len`` 512 tokens, each a prompt of 512 − R tokens and a
  response of R = ``--response-tokens`` tokens.
* ``selfplay``: self-play iterations as ``prefgame selfplay`` runs them (the ``SelfPlay`` runtime and the
  algorithm's registered ``iterate``; ``--algorithm``, INPO by default): one prompt of 512 − R tokens,
  K = 2 samples of R tokens from the policy (prefgame's sampler, KV cache), the oracle's 2×2 matrix,
  π0's log-probs and one optimizer step on the pair, whose forward is 2 × 512 tokens. The oracle is a
  stand-in without a model (P(a ≻ b) from the responses' lengths), so the figures are the policy's own;
  an oracle model (``oracle.kind=model``) adds its weights.

``--steps N`` times N steps (iterations); the time is the mean of those after the first when N > 1, and
the first's otherwise (it includes one-time costs: AdamW's state, the allocator's growth). On a CPU a
configuration runs only if its memory estimate leaves 2 GiB of the available memory free ("not run:
memory" otherwise, with the estimate), and ``--budget`` (default 840 s) bounds the whole run: what does not
start or end in time is "not run: time budget" (``--budget 0``: no limit). The configurations of a model
run in the order of ``PRIORITY``.

**Peak memory.** On a CPU, the kernel's high-water mark of the process's resident memory (``VmHWM`` of
/proc/self/status). After the setup (model loaded, π0's log-probs of offline DPO computed) free heap
memory is returned to the system (``malloc_trim``) and the mark is reset to the current resident size
(writing 5 to /proc/self/clear_refs), so the peak is that of the steps alone: everything they hold
resident — weights, π0, gradients, AdamW state, activations, logits, temporaries — but not the
transient of loading. The figure reported is that peak minus the process's baseline: its resident size
after importing torch, transformers, peft and prefgame, before any model is loaded (reported too). The
processes run with ``MALLOC_MMAP_THRESHOLD_=1048576``: glibc then maps every block from 1 MiB up on its
own and returns it when it is freed; with its default (dynamic, up to 32 MiB) freed activations stay in
its heap, resident, and the peak of a checkpointed step grew to about that of an unchecked one
(``--malloc-default`` keeps glibc's default). transformers maps the safetensors file into memory, so
frozen weights count as resident once they are read. On
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the same point (the
baseline is 0; the CUDA context and the allocator's cache are not counted).

**FLOPs.** Model FLOPs are counted by hooks while the steps run: every forward pass of the decoder (its
tokens and the attention context from its attention mask: 2 FLOPs per weight of the layers' linear
maps per token, 4·h per attended position and layer) and every row projected to the vocabulary
(2·V·h). A forward with gradients counts 3× (forward, and backward for inputs and weights); with LoRA
2× for the frozen weights (their inputs' gradients only) and 3× for the adapters. Recomputation under
gradient checkpointing is not counted (it is extra work, not model FLOPs). The FLOP rate is model
FLOPs / time against the machine's peak, measured here: the best rate of float32 square matrix products
(n = 1024, 2048, 4096) on a CPU, bf16 products (n = 8192) on CUDA (model-FLOP utilization, MFU).
Tokens/s counts the tokens of the trained sequences (2 × 512 per step or iteration).

**Memory estimate** (:func:`estimate`), in bytes. N parameters, N_L of them in the transformer layers,
N_A adapter parameters (LoRA r = 16 on every linear layer), L layers, hidden size h, KV width k (KV heads
× head size), MLP width i, vocabulary V, T = b·s tokens per forward, c rows projected to the vocabulary
at once (offline DPO: ``loss.chunk_size`` 1024; self-play: every response row), d the bytes of the
compute dtype (4 in float32, 2 under bf16 autocast):

* weights 4N — float32 master weights (prefgame's precision rules); with LoRA the frozen base, which
  prefgame stores in float32 too; adapters 4N_A
* gradients 4N (full) | 4N_A (LoRA); AdamW moments 8N | 8N_A
* π0: d·N for self-play with full fine-tuning (the frozen copy in the compute dtype); 0 for offline DPO
  (π0's log-probs are computed once) and for LoRA (π0 is the base with the adapters disabled)
* weight copies under bf16 autocast: 2N (full: autocast caches a bf16 copy of every trained weight for
  the step) | 2(N_L + Vh) (LoRA: the bf16 copy of every frozen weight is saved for the backward pass) |
  2(N_L/L + Vh) (LoRA + checkpointing: one layer at a time); 0 in float32
* activations: L·T·a without checkpointing; L·T·4h + T·a with it (each layer keeps its float32 input and
  one layer is recomputed at a time); a = 32h + 8k + 16i bytes per token and layer in float32,
  a = 30h + 4k + 8i under bf16 autocast: what a Llama / Qwen2 layer saves for its backward pass — the two
  RMSNorms' float32 input and output (4h), the inputs of the q/k/v, o and gate/up projections (3h, one
  per projection under autocast: 6h), the rotated queries (h), keys and values (2k), and the gate,
  up, SiLU and product activations of the MLP (4i) — as torch's saved-tensor hooks count them (SDPA
  keeps no attention matrix); plus 8h·T for the final norm
* logits: 3·c·V·4 (+ 2·c·V under autocast): a chunk's float32 logits, probabilities and their gradient

The forward/backward phase holds weights + adapters + AdamW (from the second step on; the first step's
AdamW state appears in the optimizer phase) + π0 + weight copies + max(activations + logits + 4Vh,
gradients) — the gradients fill while the activations are freed, and the tied or untied output
projection's gradient comes first. The optimizer phase holds weights + gradients + AdamW + π0 + the
update's temporaries: 4N_trained on CUDA (torch's foreach AdamW computes √v for every tensor at once),
2·4·(largest trained tensor) on a CPU (tensor by tensor). The estimate is the larger phase. It leaves out
the CUDA context and the allocator's cache (about 1–3 GB on a GPU), the KV cache of sampling (freed
before the step; 2·L·k·d per token), and an oracle model.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3
REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_SCALE_RESULT "
MODES = ("full", "lora", "lora+ckpt")
JOBS = ("dpo", "selfplay")
# the order the configurations of a model run in, which matters under --budget: self-play with full
# fine-tuning and with LoRA + checkpointing (the pair the memory comparison needs), the DPO steps (short),
# then self-play with LoRA alone
PRIORITY = (
    ("selfplay", "full"), ("selfplay", "lora+ckpt"), ("dpo", "full"), ("dpo", "lora+ckpt"), ("dpo", "lora"),
    ("selfplay", "lora"),
)  # fmt: skip
LORA_R = 16
# what an 80 GB GPU leaves for tensors: 79 GiB that torch sees on an H100 80GB, less ~2 GiB for the CUDA
# context and the allocator's cache
FITS_80GB = 77 * GIB
# a CPU configuration runs only if its estimate leaves this much memory available to the machine's other work
MEMORY_HEADROOM = 2 * GIB
MMAP_THRESHOLD = 1 << 20  # glibc: blocks from 1 MiB up are mapped on their own and unmapped when freed


# ---------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """The architecture of a model: what its config and the memory estimate need."""

    name: str
    family: str  # "qwen2" or "llama"
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    rope_theta: float
    rms_eps: float
    max_positions: int
    qkv_bias: bool = False
    rope_scaling: dict | None = field(default=None, hash=False)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear map of one layer: q, k, v, o, gate, up, down."""
        h, k, i = self.hidden, self.kv_width, self.intermediate
        return [(h, h), (h, k), (h, k), (h, h), (h, i), (h, i), (i, h)]

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears())

    def layer_params(self) -> int:
        bias = self.hidden + 2 * self.kv_width if self.qkv_bias else 0
        return self.layer_linear_params() + bias + 2 * self.hidden  # + the two RMSNorm weights

    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * self.layer_params() + self.hidden

    def lora_params(self, r: int = LORA_R) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.linears())

    def config(self, *, bos: int, eos: int, pad: int):
        from transformers import LlamaConfig, Qwen2Config

        common = dict(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            tie_word_embeddings=self.tied, rope_theta=self.rope_theta, rms_norm_eps=self.rms_eps,
            max_position_embeddings=self.max_positions, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
            attention_dropout=0.0,
        )  # fmt: skip
        if self.family == "qwen2":
            return Qwen2Config(**common, use_sliding_window=False)
        return LlamaConfig(**common, head_dim=self.head_dim, rope_scaling=self.rope_scaling, mlp_bias=False)


LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip
SHAPES = {
    "qwen2.5-0.5b": Shape("Qwen2.5-0.5B", "qwen2", 151936, 896, 4864, 24, 14, 2, True, 1e6, 1e-6, 32768, qkv_bias=True),
    "llama-3.2-1b": Shape(
        "Llama-3.2-1B", "llama", 128256, 2048, 8192, 16, 32, 8, True, 5e5, 1e-5, 131072, rope_scaling=LLAMA3_ROPE
    ),
    "llama-3.1-8b": Shape(
        "Llama-3.1-8B", "llama", 128256, 4096, 14336, 32, 32, 8, False, 5e5, 1e-5, 131072, rope_scaling=LLAMA3_ROPE
    ),
}
MEASURED = ("qwen2.5-0.5b", "llama-3.2-1b")


# ---------------------------------------------------------------------------------------------- estimate


def activation_bytes_per_token_layer(shape: Shape, autocast: bool) -> int:
    """a: the bytes one transformer layer saves for its backward pass, per token (module docstring)."""
    h, k, i = shape.hidden, shape.kv_width, shape.intermediate
    return 30 * h + 4 * k + 8 * i if autocast else 32 * h + 8 * k + 16 * i


def estimate(
    shape: Shape, mode: str, job: str, *, tokens: int, head_rows: int, chunk: int | None, autocast: bool, cuda: bool
) -> dict[str, float]:
    """The memory estimate of the module docstring, in bytes, by component; ``total`` is its peak."""
    n, lora, ckpt = shape.params(), mode != "full", mode == "lora+ckpt"
    n_a = shape.lora_params() if lora else 0
    trained = n_a if lora else n
    d = 2 if autocast else 4
    h, v, L = shape.hidden, shape.vocab, shape.layers
    n_layers = L * shape.layer_params()
    a = activation_bytes_per_token_layer(shape, autocast)
    c = head_rows if chunk is None else min(chunk, head_rows)
    est = {
        "weights": 4.0 * n,
        "adapters": 4.0 * n_a,
        "gradients": 4.0 * trained,
        "adamw": 8.0 * trained,
        "reference": float(d * n) if (job == "selfplay" and not lora) else 0.0,
        "weight_copies": 0.0,
        "activations": float(L * tokens * (4 * h) + tokens * a if ckpt else L * tokens * a) + 8.0 * h * tokens,
        "logits": float(3 * c * v * 4 + (2 * c * v if autocast else 0)),
    }
    if autocast:
        est["weight_copies"] = float(2 * n if not lora else 2 * ((n_layers / L if ckpt else n_layers) + v * h))
    if lora:  # the largest adapter matrix
        largest = LORA_R * max(max(a, b) for a, b in shape.linears())
    else:
        largest = max(v * h, max(a * b for a, b in shape.linears()))
    temp = 4.0 * trained if cuda else 2 * 4.0 * largest
    static = est["weights"] + est["adapters"] + est["reference"]
    head_grad = 0.0 if lora else 4.0 * v * h
    est["phase_backward"] = (
        static + est["adamw"] + est["weight_copies"]
        + max(est["activations"] + est["logits"] + head_grad, est["gradients"])
    )  # fmt: skip
    est["phase_optimizer"] = static + est["gradients"] + est["adamw"] + temp
    est["total"] = max(est["phase_backward"], est["phase_optimizer"])
    return est


# ---------------------------------------------------------------------------------------------- memory probes


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> bool:
    """Return free heap memory to the system and reset the resident high-water mark; False if the kernel
    refuses (the peak then includes what came before)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------------- FLOP counting


class FlopCounter:
    """Model FLOPs of the forward passes of the hooked models (module docstring), split into passes with
    and without gradients."""

    def __init__(self, shape: Shape, lora: bool) -> None:
        self.shape, self.lora = shape, lora
        self.linear = 2 * shape.layers * shape.layer_linear_params()  # per token
        self.adapter = 2 * shape.lora_params() if lora else 0  # per token
        self.flops = 0.0
        self.active = False
        self.handles: list = []

    def _add(self, base: float, adapter: float) -> None:
        if not self.active:
            return
        import torch

        if torch.is_grad_enabled():
            self.flops += (2 if self.lora else 3) * base + 3 * adapter
        else:
            self.flops += base + adapter

    def attach(self, model) -> None:
        """Count ``model``'s decoder passes and its output projection's rows (the sampler's)."""
        decoder = getattr(model, model.base_model_prefix)
        s = self.shape

        def on_decoder(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                return
            b, t = ids.shape
            mask = kwargs.get("attention_mask")
            ctx = mask.shape[-1] if mask is not None else t
            attended = b * (t * ctx - t * (t - 1) / 2)  # Σ over the t new positions of their causal context
            self._add(self.linear * b * t + 4 * s.hidden * s.layers * attended, self.adapter * b * t)

        def on_head(module, args, output):
            self._add(2 * s.vocab * s.hidden * args[0][..., 0].numel(), 0.0)

        self.handles.append(decoder.register_forward_pre_hook(on_decoder, with_kwargs=True))
        self.handles.append(model.get_output_embeddings().register_forward_hook(on_head))

    @contextlib.contextmanager
    def counting_response_rows(self):
        """Count the rows prefgame's log-prob computation projects to the vocabulary (it reads the output
        projection's weight directly, not through the module's forward)."""
        import prefgame.lm as lm

        original = lm.response_logprobs

        def counted(hidden, weight, labels, mask, **kwargs):
            self._add(2 * self.shape.vocab * self.shape.hidden * int(mask.sum()), 0.0)
            return original(hidden, weight, labels, mask, **kwargs)

        lm.response_logprobs = counted
        try:
            yield
        finally:
            lm.response_logprobs = original


# ---------------------------------------------------------------------------------------------- model folders

FILLER = "t{}"


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` entries: the arena's special tokens and chat
    template, then filler words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from prefgame.arena.lm import CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({FILLER.format(i): i for i in range(len(vocab), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    return tok


def model_folder(key: str, cache_dir: Path, log) -> Path:
    """The folder of the random-weight model ``key`` (built and saved on first use), with its tokenizer
    in ``tokenizer/`` (a folder of its own: beside the model's config, ``AutoTokenizer`` would read it as
    the architecture's own tokenizer class)."""
    shape = SHAPES[key]
    folder = cache_dir / key
    if not (folder / "tokenizer" / "tokenizer.json").exists():
        build_tokenizer(shape.vocab).save_pretrained(str(folder / "tokenizer"))
    if (folder / "complete").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    log(f"building {shape.name} (random weights, {shape.params() / 1e6:.1f}M parameters) in {folder}")
    tok = build_tokenizer(shape.vocab)
    config = shape.config(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    counted = sum(p.numel() for p in model.parameters())
    if counted != shape.params():
        raise SystemExit(f"{shape.name}: the model has {counted} parameters, the shape counts {shape.params()}")
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "complete").write_text("ok\n")
    del model
    return folder


def words(start: int, n: int) -> str:
    return " ".join(FILLER.format(6 + (start + j) % 1000) for j in range(n))


def write_data(work: Path, prompt_tokens: int, response_tokens: int) -> None:
    """One prompt of ``prompt_tokens`` tokens (chat template included: <user> … <assistant>) and one pair
    of responses of ``response_tokens`` tokens (EOS included)."""
    prompt = words(0, prompt_tokens - 2)
    with open(work / "prompts.jsonl", "w") as fh:
        fh.write(json.dumps({"prompt": prompt}) + "\n")
    pair = {
        "prompt": prompt, "chosen": words(100, response_tokens - 1), "rejected": words(500, response_tokens - 1),
    }  # fmt: skip
    with open(work / "pairs.jsonl", "w") as fh:
        fh.write(json.dumps(pair) + "\n")


class LengthOracle:
    """A stand-in oracle without a model: P(a ≻ b) = σ((|a| − |b|) / 100) in characters."""

    name = "length (benchmark stand-in)"

    def preference(self, prompts, responses_a, responses_b):
        import torch

        diff = torch.tensor([len(a) - len(b) for a, b in zip(responses_a, responses_b)], dtype=torch.float64)
        return torch.sigmoid(diff / 100.0)


# ---------------------------------------------------------------------------------------------- one configuration


def lora_overrides(mode: str) -> list[str]:
    return [
        f"lora.enabled={mode != 'full'}", f"lora.r={LORA_R}", "lora.alpha=32",
        f"train.gradient_checkpointing={mode == 'lora+ckpt'}",
    ]  # fmt: skip


class Probe:
    """The memory and time of the timed region of one configuration."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.torch, self.cuda = torch, cuda
        self.baseline = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
        self.reset_ok = True
        self.setup_peak = 0

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self.setup_peak = _status_kib("VmHWM") * 1024
            self.reset_ok = reset_peak()
        self.resident_at_start = self.current()

    def current(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else _status_kib("VmRSS") * 1024

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else _status_kib("VmHWM") * 1024


def run_dpo(spec: dict, folder: Path, work: Path, probe: Probe, counter: FlopCounter) -> list[float]:
    import numpy as np

    from prefgame.config import load_config
    from prefgame.lm import load_tokenizer
    from prefgame.lora import apply_lora
    from prefgame.run import seed_everything
    from prefgame.train import sharding
    from prefgame.train.dpo import DPOConfig, PairLogps, _reference_logps, load_pair_set, offline_micro_loss
    from prefgame.train.engine import NonFiniteGuard, make_accelerator, make_optimizer, optimizer_step
    from prefgame.train.precision import Precision, load_trainable_lm

    steps = spec["steps"]
    cfg = load_config(DPOConfig, None, [
        f"policy.name_or_path={folder}", f"policy.tokenizer={folder / 'tokenizer'}", f"output_dir={work / 'dpo'}",
        f"data.path={work / 'pairs.jsonl'}",
        "data.eval_fraction=0", f"data.max_length={spec['seq_len']}", "train.batch_size=1",
        "train.micro_batch_size=1", f"train.max_steps={steps}", "train.warmup_steps=0", "train.lr=1e-6",
        f"train.mixed_precision={spec['mixed_precision']}", *lora_overrides(spec["mode"]),
    ])  # fmt: skip
    tc = cfg.train
    seed_everything(tc.seed)
    acc = make_accelerator(tc, cfg.output_dir, batch_size=tc.batch_size)
    tok = load_tokenizer(cfg.policy.tokenizer)
    model = load_trainable_lm(str(folder), cfg.policy.dtype, Precision.of(tc, acc), key="policy.dtype")
    model = apply_lora(model, cfg.lora, seed=tc.seed)
    pairs, _ = load_pair_set(cfg.data, tok)
    module = PairLogps(model, chunk_size=cfg.loss.chunk_size, length_normalize=cfg.loss.length_normalize)
    model.to(acc.device)
    _reference_logps(cfg, module, (pairs,), tok.pad_token_id, acc)  # once, before training, as the trainer does
    optimizer, scheduler = make_optimizer(module.parameters(), tc, tc.max_steps)
    wrapper, optimizer = sharding.prepare(acc, module, optimizer)  # as train_offline prepares them
    guard = NonFiniteGuard(tc.max_nonfinite_steps)
    micro_loss = offline_micro_loss(wrapper, pairs, cfg, tok.pad_token_id, acc.device)
    spec["trained_tokens"] = 2 * (len(pairs.prompt_ids[0]) + len(pairs.chosen_ids[0]))
    counter.attach(model)
    times = []
    probe.start()
    counter.active = True
    with counter.counting_response_rows():
        for step in range(steps):
            t0 = time.perf_counter()
            result = optimizer_step(
                acc, wrapper, optimizer, scheduler, guard, step, [np.array([0])], micro_loss,
                max_grad_norm=tc.max_grad_norm,
            )  # fmt: skip
            probe.sync()
            times.append(time.perf_counter() - t0)
            if not result.applied:
                raise SystemExit(f"step {step}: non-finite loss or gradient")
    return times


def run_selfplay(spec: dict, folder: Path, work: Path, probe: Probe, counter: FlopCounter) -> list[float]:
    from prefgame.config import load_config
    from prefgame.run import RunDir, seed_everything
    from prefgame.train.selfplay import ALGORITHMS, SelfPlay, SelfPlayConfig

    steps, algorithm = spec["steps"], spec["algorithm"]
    cfg = load_config(SelfPlayConfig, None, [
        f"algorithm={algorithm}", *ALGORITHMS[algorithm].preset, f"policy.name_or_path={folder}",
        f"policy.tokenizer={folder / 'tokenizer'}",
        f"output_dir={work / 'selfplay'}", "prompts.source=file", f"prompts.path={work / 'prompts.jsonl'}",
        "sampling.prompts_per_iteration=1", "sampling.samples_per_prompt=2",
        f"sampling.max_new_tokens={spec['response_tokens']}", f"train.iterations={steps}",
        "train.steps_per_iteration=1", "train.batch_size=2", "train.micro_batch_size=2", "train.warmup_steps=0",
        "train.lr=1e-6", "eval.prompts=0", f"train.mixed_precision={spec['mixed_precision']}",
        *lora_overrides(spec["mode"]),
    ])  # fmt: skip
    seed_everything(cfg.train.seed)
    out = RunDir(cfg.output_dir, name="bench_scale.selfplay")
    sp = SelfPlay(cfg, out, out.logger, oracle=LengthOracle())
    iterate = ALGORITHMS[algorithm].iterate
    phases = {"sampling": 0.0, "log_probs": 0.0}

    def timed(method, phase):  # instrumentation only: the instance's method, timed
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                probe.sync()
                phases[phase] += time.perf_counter() - t0

        return run

    sp.sample = timed(sp.sample, "sampling")
    sp.sequence_logps = timed(sp.sequence_logps, "log_probs")
    counter.attach(sp.policy)
    if isinstance(sp.ref, type(sp.policy)):  # full fine-tuning: π0 is a separate frozen copy
        counter.attach(sp.ref)
    spec["trained_tokens"] = 2 * spec["seq_len"]
    times, tokens = [], []
    probe.start()
    counter.active = True
    with counter.counting_response_rows():
        for t in range(steps):
            t0 = time.perf_counter()
            info = iterate(sp, t, sp.preferences())
            probe.sync()
            times.append(time.perf_counter() - t0)
            tokens.append(info.get("pairs", 0))
    spec["pairs"] = tokens
    spec["phases_s"] = {k: v / steps for k, v in phases.items()}
    return times


def child(spec: dict) -> dict:
    """Run one configuration in this process; the result as a dict (printed as one JSON line)."""
    import peft  # noqa: F401  (its import counts in the baseline, not in the step)
    import torch

    import prefgame.train.dpo  # noqa: F401
    import prefgame.train.selfplay  # noqa: F401

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    probe = Probe(cuda)
    shape = SHAPES[spec["model"]]
    counter = FlopCounter(shape, spec["mode"] != "full")
    work = Path(spec["work"])
    job = run_dpo if spec["job"] == "dpo" else run_selfplay
    times = job(spec, Path(spec["folder"]), work, probe, counter)
    peak = probe.peak()
    timed = times[1:] if len(times) > 1 else times
    return {
        **spec,
        "times_s": times,
        "time_s": sum(timed) / len(timed),
        "flops": counter.flops / len(times),
        "baseline_bytes": probe.baseline,
        "resident_at_start_bytes": probe.resident_at_start,
        "setup_peak_bytes": probe.setup_peak,
        "peak_bytes": peak - probe.baseline,
        "peak_reset": probe.reset_ok,
    }


# ---------------------------------------------------------------------------------------------- the driver


def matmul_peak(device: str) -> tuple[float, str]:
    """(FLOP/s, what was measured): the best rate of square matrix products on ``device``."""
    import torch

    if device == "cuda":
        sizes, dtype, budget = (8192,), torch.bfloat16, 3.0
    else:
        sizes, dtype, budget = (1024, 2048, 4096), torch.float32, 2.0
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < budget:
            a @ b
            reps += 1
            if device == "cuda":
                torch.cuda.synchronize()
        rate = 2 * n**3 * reps / (time.perf_counter() - t0)
        if rate > best:
            best, best_n = rate, n
    what = f"{'bf16' if device == 'cuda' else 'float32'} {best_n}×{best_n} matmul, {torch.get_num_threads()} threads"
    return best, what


def machine(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        return f"{model}, {os.cpu_count()} CPUs"
    return platform.processor() or "CPU"


def spec_estimate(spec: dict) -> dict[str, float]:
    shape = SHAPES[spec["model"]]
    r, s = spec["response_tokens"], spec["seq_len"]
    autocast = spec["device"] == "cuda" and spec["mixed_precision"] != "no"
    chunk = 1024 if spec["job"] == "dpo" else None
    return estimate(
        shape, spec["mode"], spec["job"], tokens=2 * s, head_rows=2 * r, chunk=chunk, autocast=autocast,
        cuda=spec["device"] == "cuda",
    )  # fmt: skip


def run_configuration(spec: dict, logs: Path, timeout: float, log) -> dict:
    """One configuration in a fresh process; its result, or why it did not run."""
    est = spec_estimate(spec)
    spec = {**spec, "estimate_bytes": est["total"]}
    if spec["device"] == "cpu":
        available = mem_available()
        if est["total"] > available - MEMORY_HEADROOM:
            log(f"  not run: memory (estimate {est['total'] / GIB:.1f} GiB, {available / GIB:.1f} GiB available)")
            return {**spec, "status": "not run: memory", "available_bytes": available}
    if timeout < 60:
        log("  not run: time budget")
        return {**spec, "status": "not run: time budget"}
    name = f"{spec['model']}-{spec['mode']}-{spec['job']}".replace("+", "_")
    log_file = logs / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if spec["device"] == "cpu" and not spec["malloc_default"]:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env,
                timeout=None if math.isinf(timeout) else timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            log(f"  not run: time (stopped after {timeout:.0f} s; log {log_file})")
            return {**spec, "status": "not run: time budget"}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG) :]), "status": "ok", "wall_s": wall}
    if proc.returncode in (-9, 137):
        log(f"  not run: memory (killed; log {log_file})")
        return {**spec, "status": "not run: memory (killed)"}
    tail = log_file.read_text().strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    log(f"  failed: {tail[0]} (log {log_file})")
    return {**spec, "status": f"failed: {tail[0]}"}


def gib(x: float | None) -> str:
    return "—" if x is None else f"{x / GIB:.2f}"


def table(results: list[dict], peak: float, device: str) -> list[str]:
    head = (
        "| model | mode | job | peak memory (GiB) | estimate (GiB) | time (s) | of which sampling, π0 log-probs (s) "
        "| tokens/s | model GFLOP/s | "
        + ("% of fp32 matmul peak |" if device == "cpu" else "MFU (% of bf16 matmul peak) |")
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        label = f"| {SHAPES[r['model']].name} | {r['mode']} | {r['job']} |"
        if r["status"] != "ok":
            rows.append(f"{label} {r['status']} | {gib(r['estimate_bytes'])} | — | — | — | — | — |")
            continue
        rate = r["flops"] / r["time_s"]
        split = "{sampling:.1f}, {log_probs:.1f}".format(**r["phases_s"]) if "phases_s" in r else "—"
        rows.append(
            f"{label} {gib(r['peak_bytes'])} | {gib(r['estimate_bytes'])} | {r['time_s']:.1f} | {split} | "
            f"{r['trained_tokens'] / r['time_s']:.0f} | {rate / 1e9:.1f} | {100 * rate / peak:.0f}% |"
        )
    return rows


def factors(results: list[dict]) -> list[str]:
    """Peak memory of full fine-tuning over that of LoRA (+ checkpointing), per model and job."""
    lines = []
    ok = {(r["model"], r["mode"], r["job"]): r for r in results if r["status"] == "ok"}
    for model in dict.fromkeys(r["model"] for r in results):
        for job in JOBS:
            full = ok.get((model, "full", job))
            for mode in ("lora", "lora+ckpt"):
                other = ok.get((model, mode, job))
                if full and other:
                    f = full["peak_bytes"] / other["peak_bytes"]
                    lines.append(
                        f"{SHAPES[model].name}, {job}: full fine-tuning {gib(full['peak_bytes'])} GiB / {mode} "
                        f"{gib(other['peak_bytes'])} GiB = **{f:.2f}×** less peak memory with {mode}"
                    )
    return lines


def estimate_8b(seq_len: int, response_tokens: int) -> list[str]:
    shape = SHAPES["llama-3.1-8b"]
    rows = [
        f"Llama-3.1-8B shape ({shape.params() / 1e9:.2f}B parameters, LoRA r = {LORA_R}: "
        f"{shape.lora_params() / 1e6:.1f}M), one GPU, bf16 autocast with float32 master weights, AdamW, "
        f"batch 2 × {seq_len} tokens ({response_tokens} response tokens each), GiB:",
        "",
        "| job | mode | weights | adapters | gradients | AdamW | π0 | bf16 weight copies | activations | logits "
        "| backward phase | optimizer phase | peak | fits one 80 GB GPU |",
        "|" + "---|" * 14,
    ]
    for job in JOBS:
        for mode in MODES:
            e = estimate(
                shape, mode, job, tokens=2 * seq_len, head_rows=2 * response_tokens,
                chunk=1024 if job == "dpo" else None, autocast=True, cuda=True,
            )  # fmt: skip
            keys = ("weights", "adapters", "gradients", "adamw", "reference", "weight_copies", "activations", "logits")
            cells = " | ".join(gib(e[k]) for k in (*keys, "phase_backward", "phase_optimizer", "total"))
            rows.append(f"| {job} | {mode} | {cells} | {'yes' if e['total'] < FITS_80GB else 'no'} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MEASURED), help=f"comma-separated: {', '.join(MEASURED)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated: {', '.join(JOBS)}")
    parser.add_argument("--steps", type=int, default=1, help="timed steps (iterations) per configuration")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (prompt + response)")
    parser.add_argument("--response-tokens", type=int, default=64, help="response tokens per sequence")
    parser.add_argument("--algorithm", default="inpo", help="self-play algorithm")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mixed-precision", default="auto", help="train.mixed_precision (auto: bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "prefgame-bench-scale"))
    parser.add_argument("--out", default="runs/bench-scale", help="folder for results.json, table.md and logs")
    parser.add_argument(
        "--budget", type=float, default=840.0,
        help="seconds for the whole run: configurations that do not start (or end) in time are reported "
        "'not run: time budget' (0: no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--malloc-default", action="store_true",
        help="CPU: keep glibc's default allocation thresholds (freed blocks up to 32 MiB then stay resident)",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(json.loads(args.child))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    for value, allowed, what in ((models, MEASURED, "model"), (modes, MODES, "mode"), (jobs, JOBS, "job")):
        bad = [v for v in value if v not in allowed]
        if bad:
            parser.error(f"unknown {what} {', '.join(bad)} (choose from {', '.join(allowed)})")
    if not 2 < args.response_tokens < args.seq_len - 2:
        parser.error("--response-tokens must lie between 3 and --seq-len − 3")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_scale: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    peak, peak_what = matmul_peak(args.device)
    log(f"{machine(args.device)}: peak {peak / 1e9:.1f} GFLOP/s ({peak_what})")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        write_data(work, args.seq_len - args.response_tokens, args.response_tokens)
        for model in models:
            folder = model_folder(model, cache, log)
            for job, mode in PRIORITY:
                if job in jobs and mode in modes:
                    spec = {
                        "model": model, "mode": mode, "job": job, "steps": args.steps, "seq_len": args.seq_len,
                        "response_tokens": args.response_tokens, "algorithm": args.algorithm,
                        "device": args.device, "mixed_precision": args.mixed_precision, "threads": args.threads,
                        "malloc_default": args.malloc_default, "folder": str(folder), "work": str(work),
                    }  # fmt: skip
                    log(f"{SHAPES[model].name} {mode} {job}")
                    remaining = args.budget - (time.perf_counter() - started) if args.budget else math.inf
                    result = run_configuration(spec, logs, remaining, log)
                    if result["status"] == "ok":
                        log(
                            f"  peak {gib(result['peak_bytes'])} GiB (estimate {gib(result['estimate_bytes'])}), "
                            f"{result['time_s']:.1f} s, {result['flops'] / result['time_s'] / 1e9:.1f} GFLOP/s"
                        )
                    results.append(result)
    results.sort(key=lambda r: (models.index(r["model"]), JOBS.index(r["job"]), MODES.index(r["mode"])))
    lines = [
        f"`{' '.join(['python', 'benchmarks/bench_scale.py', *sys.argv[1:]])}` on {machine(args.device)}; "
        f"measured peak {peak / 1e9:.1f} GFLOP/s ({peak_what}); batch 2 × {args.seq_len} tokens "
        f"({args.response_tokens} response tokens each), {args.steps} step(s) per configuration; "
        f"self-play algorithm {args.algorithm}.",
        "",
        *table(results, peak, args.device),
        "",
        *[f"- {f}" for f in factors(results)],
        "",
        *estimate_8b(args.seq_len, args.response_tokens),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    summary = {
        "machine": machine(args.device), "peak_flops": peak, "peak_measured": peak_what, "args": vars(args),
        "results": results, "seconds": time.perf_counter() - started,
        "estimate_8b": {
            f"{job}/{mode}": estimate(
                SHAPES["llama-3.1-8b"], mode, job, tokens=2 * args.seq_len, head_rows=2 * args.response_tokens,
                chunk=1024 if job == "dpo" else None, autocast=True, cuda=True,
            )
            for job in JOBS for mode in MODES
        },
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done: {out / 'table.md'}, {out / 'results.json'}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("not run") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
