"""``prefgame generate``: model outputs for evaluation, from any causal-LM checkpoint.

Writes one JSON line per output: ``prompt`` (text; a multi-turn prompt as the text of every turn,
:func:`prefgame.data.chat.conversation_text`), ``prompt_messages`` (the prompt's messages, what the
model was given), ``output``, ``generator`` (the name the win-rate report shows), ``sample`` (k-th
output for the prompt), and the lengths ``prompt_tokens``, ``output_tokens`` and ``output_words``.
This is the ``samples`` format ``prefgame evaluate winrate`` judges: give it one file per model,
generated from the same prompts.

**Best-of-n** (``best_of_n.n`` > 1 with ``best_of_n.scorer``, a preference model or reward model): each
output is the best of n samples under the scorer (:func:`candidate_scores`), optionally pessimistic
(``best_of_n.pessimism``); its rows add ``best_of_n`` and ``score``, and the metrics report the policy's
KL to the sampled model, log n − (n − 1)/n (:func:`prefgame.pessimism.best_of_n_kl`).

Prompts come from the arena's grammar (``prompts=arena``) or from any data set ``prefgame.data`` reads
(a local .jsonl/.json/.parquet/.csv file or a hub name): the ``field`` column when it exists (text,
HH transcripts or message lists), otherwise the prompts of the normalized preference data (pairs,
ratings or battles in any supported format); a multi-turn prompt is the whole conversation, chat
template applied to every turn (:func:`prefgame.data.columns.load_prompts`). Repeated prompts are
generated once. The HF backend samples in batches (:func:`prefgame.game.lm_sampling.sample_texts`:
prefgame's loop, with its static KV cache for the models it has one for, or transformers' ``generate``
with ``engine=transformers``); ``backend=vllm`` uses vLLM on a GPU (imported only then). A response
ends with a stop token (the tokenizer's EOS and the ids of the model's generation config, or
``eos_token_ids``), with a stop string of ``stop`` (cut from the output), or at ``max_new_tokens``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from prefgame.config import param
from prefgame.errors import ConfigError, PrefgameError
from prefgame.pessimism import PessimismConfig, best_of_n_index, best_of_n_kl
from prefgame.run import atomic_write_json, write_jsonl

log = logging.getLogger("prefgame.generate")


@dataclass
class BestOfNConfig:
    n: int = param(1, "keep the best of n samples per output under the scorer (1: plain sampling)", ge=1)
    scorer: str = param(
        "", "n > 1: the scorer, a 'prefgame train-pm' output_dir (any kind) or a sequence-classification reward model"
    )
    pessimism: PessimismConfig = param(
        PessimismConfig, "a pessimistic scorer (linear LCB, with the n samples' mean feature as φ(x, π0))"
    )


@dataclass
class GenerateConfig:
    model: str = param("", "causal LM checkpoint folder (e.g. runs/quickstart/pi0/model) or hub name")
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own")
    generator: str = param("", "name of this model in the outputs and reports; empty: the checkpoint's folder name")
    prompts: str = param("", "'arena' (the arena's prompt grammar), or a prompt / preference data file or hub name")
    split: str = param("train", "split of a hub data set")
    field: str = param(
        "prompt", "column holding the prompts of a prompt file: text, HH transcripts or [{role, content}] lists"
    )
    max_prompts: int = param(0, "use the first N distinct prompts (arena: N sampled with seed); 0: all")
    samples_per_prompt: int = param(1, "outputs per prompt")
    max_new_tokens: int = param(256, "output length limit in tokens")
    temperature: float = param(1.0, "sampling temperature; 0: greedy")
    batch_size: int = param(64, "prompts per generation batch (hf)")
    seed: int = param(0, "seed of sampling (and of the arena prompt draw)")
    backend: Literal["hf", "vllm"] = param("hf", "hf: transformers with the KV cache; vllm: vLLM on a GPU")
    # the engines of prefgame.game.lm_sampling (ENGINES), named here so that loading the config imports no model code
    engine: Literal["prefgame", "transformers"] = param(
        "prefgame",
        "hf backend: prefgame (its batched loop, a static KV cache for float32 llama/mistral/qwen2 models; faster on "
        "CPU, docs/selfplay.md) or transformers (`generate`)",
    )
    eos_token_ids: list[int] = param(
        [],
        "token ids that end an output; empty: the tokenizer's EOS and every id of the model's "
        "generation_config.eos_token_id (chat models list several)",
    )
    stop: list[str] = param([], "stop strings: an output ends where one appears, and is cut before it")
    dtype: Literal["float32", "bfloat16"] = param("float32", "weights dtype (bfloat16 only on a GPU)")
    best_of_n: BestOfNConfig = param(BestOfNConfig, "best-of-n sampling (rejection sampling under a scorer)")
    out: str = param("", "output jsonl; metrics are written next to it as <name>.metrics.json", output="file")
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("samples_per_prompt, max_new_tokens and batch_size must be >= 1")
        if self.temperature < 0 or self.max_prompts < 0:
            raise ValueError("temperature and max_prompts must be >= 0")
        if any(i < 0 for i in self.eos_token_ids):
            raise ValueError(f"eos_token_ids must be token ids >= 0, got {list(self.eos_token_ids)}")
        if any(not s for s in self.stop):
            raise ValueError("stop must not contain an empty string (it would end every output at once)")


def load_prompts(cfg: GenerateConfig) -> list[str]:
    """The distinct prompts of ``cfg.prompts`` in file order (arena: ``max_prompts`` drawn with ``seed``)."""
    if cfg.prompts == "arena":
        from prefgame.arena.world import Arena

        n = cfg.max_prompts or 240
        return [p.text for p in Arena().sample_prompts(n, np.random.default_rng(cfg.seed))]
    from prefgame.data.columns import load_prompts as read_prompt_file

    prompts = read_prompt_file(cfg.prompts, cfg.split, cfg.field)
    return prompts[: cfg.max_prompts] if cfg.max_prompts else prompts


def generate_outputs(cfg: GenerateConfig, prompts: list[str]) -> tuple[list[str], list[str], object]:
    """(prompt per output, output texts, tokenizer): ``samples_per_prompt`` × ``best_of_n.n`` outputs per prompt,
    prompt-major."""
    from prefgame.game.lm_sampling import sample_texts
    from prefgame.lm import load_causal_lm, load_generation_config, load_tokenizer, stops_for

    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    per_prompt = cfg.samples_per_prompt * cfg.best_of_n.n
    repeated = [p for p in prompts for _ in range(per_prompt)]
    stop_keys = dict(eos_token_ids=cfg.eos_token_ids, stop=cfg.stop, key="eos_token_ids")
    if cfg.backend == "vllm":
        from prefgame.game.vllm_sampling import VLLMSampler
        from prefgame.train.selfplay.config import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        stops = stops_for(tok, load_generation_config(cfg.model), **stop_keys)
        engine = VLLMSampler(cfg.model, tok, sampling, cfg.dtype, cfg.seed, stops=stops)
        return repeated, engine.generate(prompts, n=per_prompt, seed=(cfg.seed,)).texts, tok
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.dtype == "bfloat16" and device == "cpu":
        raise PrefgameError("dtype=bfloat16 is for GPUs (about 400x slower on this CPU): use dtype=float32")
    model = load_causal_lm(cfg.model, dtype=getattr(torch, cfg.dtype)).to(device)
    outputs = sample_texts(
        model, tok, repeated, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        batch_size=cfg.batch_size, seed=cfg.seed, stops=stops_for(tok, model, **stop_keys), engine=cfg.engine,
    )  # fmt: skip
    return repeated, outputs, tok


def candidate_scores(scorer, prompt: str, candidates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What best-of-n ranks one prompt's n candidates by: (scores (n,), win matrix (n, n) float64 with
    W[i, j] = the scorer's P(y_i ≻ y_j | x)).

    A scorer with a reward (bt, gated, a sequence classifier) scores r(x, y), W = σ(r_i − r_j); under the
    linear LCB with the candidates' mean feature as φ(x, π0). A general preference model scores each
    candidate's mean win probability against the n, mean_j W[i, j], from its n×n matrix.
    """
    from prefgame.models.pessimistic import LinearLCB

    k = len(candidates)
    if scorer.has_reward:
        reference = None
        if isinstance(scorer, LinearLCB):  # φ(x, π0): the mean feature of the n samples of π0
            reference = scorer.features([prompt] * k, candidates).mean(0, keepdim=True).expand(k, -1)
        r = (scorer.reward([prompt] * k, candidates) if reference is None else scorer.reward(
            [prompt] * k, candidates, reference)).double()  # fmt: skip
        return r, torch.sigmoid(r[:, None] - r[None, :])
    wins = scorer.preference_matrix(prompt, candidates).double()
    return wins.mean(1), wins


def select_best_of_n(prompts: list[str], outputs: list[str], n: int, score) -> tuple[list[str], list[str], list[float]]:
    """Each consecutive group of n outputs (one prompt's, prompt-major) → its best under
    ``score(prompt, candidates)`` → (n,) (ties: the first); returns the kept prompts, outputs and scores."""
    kept_prompts, kept, scores = [], [], []
    for start in range(0, len(outputs), n):
        group = outputs[start : start + n]
        s = score(prompts[start], group)
        best = int(best_of_n_index(s.unsqueeze(0))[0])
        kept_prompts.append(prompts[start])
        kept.append(group[best])
        scores.append(float(s[best]))
    return kept_prompts, kept, scores


def load_scorer(cfg: BestOfNConfig):
    """The best-of-n scorer (:func:`prefgame.models.load.load_model` under ``cfg.pessimism``)."""
    from prefgame.models.load import load_model
    from prefgame.models.pessimistic import apply_pessimism

    if not cfg.scorer:
        raise ConfigError(
            "best_of_n.n > 1 needs best_of_n.scorer=PATH: a 'prefgame train-pm' output_dir or a reward model"
        )
    return apply_pessimism(load_model(cfg.scorer), cfg.pessimism)


def run(cfg: GenerateConfig) -> dict:
    for key in ("model", "prompts", "out"):
        if not getattr(cfg, key):
            raise PrefgameError(
                f"generate needs {key}=...: e.g. prefgame generate model=runs/quickstart/pi0/model "
                "prompts=arena out=runs/eval/pi0.jsonl"
            )
    n = cfg.best_of_n.n
    scorer = load_scorer(cfg.best_of_n) if n > 1 else None
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    prompts = load_prompts(cfg)
    name = cfg.generator or Path(cfg.model.rstrip("/")).name
    if name == "model":  # a training output's model/ folder: name it after the run
        name = Path(cfg.model.rstrip("/")).parent.name
    log.info(f"generating {cfg.samples_per_prompt} output(s) for {len(prompts)} prompts with {name} ({cfg.backend})")
    repeated, outputs, tok = generate_outputs(cfg, prompts)
    scores = None
    if scorer is not None:
        log.info(f"keeping the best of {n} samples per output under {scorer.name}")
        repeated, outputs, scores = select_best_of_n(
            repeated, outputs, n, lambda prompt, group: candidate_scores(scorer, prompt, group)[0]
        )
    rows = []
    from prefgame.data.chat import messages_of

    for i, (prompt, output) in enumerate(zip(repeated, outputs)):
        rows.append(
            {
                "prompt": str(prompt),
                "prompt_messages": messages_of(prompt),
                "output": output,
                "generator": name,
                "sample": i % cfg.samples_per_prompt,
                "prompt_tokens": len(tok(prompt, add_special_tokens=False)["input_ids"]),
                "output_tokens": len(tok(output, add_special_tokens=False)["input_ids"]),
                "output_words": len(output.split()),
            }
        )
        if scores is not None:
            rows[-1].update(best_of_n=n, score=scores[i])
    write_jsonl(cfg.out, rows)
    seconds = time.perf_counter() - start
    metrics = {
        "generator": name,
        "model": cfg.model,
        "prompts": len(prompts),
        "outputs": len(rows),
        "mean_output_tokens": float(np.mean([r["output_tokens"] for r in rows])),
        "empty_outputs": sum(not r["output"] for r in rows),
        "seconds": seconds,
    }
    if scorer is not None:
        metrics.update(
            best_of_n=n,
            scorer=scorer.name,
            # exact for a tie-free score, an upper bound otherwise (prefgame.pessimism.best_of_n_kl)
            kl_to_sampled_model=best_of_n_kl(n),
        )
    out = Path(cfg.out)
    atomic_write_json(out.with_name(out.stem + ".metrics.json"), metrics)
    kl = f" (best of {n}: KL to the sampled model {best_of_n_kl(n):.3f} nats)" if scorer is not None else ""
    print(f"prefgame generate: wrote {len(rows)} outputs of {name} to {out} in {seconds:.1f}s{kl}")
    return metrics
