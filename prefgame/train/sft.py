"""Supervised fine-tuning of a causal LM on prompt/response data (``prefgame sft``).

Loss: mean negative log-likelihood of the response tokens (prompt tokens are context only), summed
over the step's tokens and divided by the step's global response-token count. Each step's examples
are sorted by length before they are cut into micro-batches (less padding, the same gradient). Works for any causal
LM and any prompt/response data set; on the arena it trains π0 from the demonstration corpus.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefgame.config import param
from prefgame.data.columns import read_prompts
from prefgame.data.load import load_raw
from prefgame.errors import DataError, PrefgameError
from prefgame.lm import (
    ResponseLogps,
    build_pairs_batch,
    encode_prompt,
    encode_response,
    load_tokenizer,
    truncate,
)
from prefgame.lora import LoraConfig, apply_lora, save_pretrained, trained_state
from prefgame.run import Progress, Resume, RunDir, atomic_dir, overwrite_param, resume_param, run_job, seed_everything
from prefgame.train import sharding
from prefgame.train.engine import (
    NonFiniteGuard,
    TrainConfig,
    begin_run,
    end_run,
    local_micro_batches,
    make_accelerator,
    make_optimizer,
    resume_state,
    save_checkpoint,
    step_indices,
    train_steps,
)
from prefgame.train.precision import Precision, load_trainable_lm


@dataclass
class SFTModelConfig:
    name_or_path: str = param("", "causal LM checkpoint folder or hub name; empty: a new tiny Llama (arena size)")
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own")
    hidden_size: int = param(128, "new model only: hidden size", ge=1)
    num_layers: int = param(4, "new model only: transformer layers", ge=1)
    num_heads: int = param(4, "new model only: attention heads", ge=1)
    intermediate_size: int = param(512, "new model only: MLP width", ge=1)


@dataclass
class SFTDataConfig:
    path: str = param("", "prompt/response data: a .jsonl/.json/.parquet/.csv file or a hub name")
    split: str = param("train", "split to read from a hub data set")
    prompt_field: str = param(
        "prompt", "column holding the prompts: text, HH transcripts or [{role, content}] message lists"
    )
    response_field: str = param("response", "column holding the target response text")
    messages_field: str = param(
        "",
        "chat data instead: column with [{role, content}] lists; the last assistant turn is the target, "
        "every turn before it the prompt",
    )
    eval_fraction: float = param(0.05, "share of rows held out to measure the loss")
    max_length: int = param(512, "truncate prompt+response to this many tokens", ge=2)

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")


@dataclass
class SFTConfig:
    output_dir: str = param("runs/sft", "where the model, checkpoints, metrics and log are written")
    resume: Resume = resume_param()
    overwrite: bool = overwrite_param()
    model: SFTModelConfig = param(SFTModelConfig, "model section")
    data: SFTDataConfig = param(SFTDataConfig, "data section")
    train: TrainConfig = param(TrainConfig, "training section")
    lora: LoraConfig = param(LoraConfig, "LoRA adapters instead of full fine-tuning (prefgame.lora)")


def load_prompt_response(cfg: SFTDataConfig) -> tuple[list[str], list[str]]:
    """Prompts (text, or a :class:`~prefgame.data.chat.Conversation`: the whole conversation before the
    answer) and target responses."""
    table = load_raw(cfg.path, split=cfg.split)
    fields = [cfg.messages_field] if cfg.messages_field else [cfg.prompt_field, cfg.response_field]
    for field in fields:
        if field not in table.column_names:
            raise DataError(
                f"{cfg.path}: no column '{field}' (columns: {', '.join(table.column_names)}); "
                "set data.prompt_field / data.response_field or data.messages_field"
            )
    if cfg.messages_field:
        conversations, responses = table[cfg.messages_field], []
        for i, messages in enumerate(conversations):
            final = messages[-1] if isinstance(messages, list) and len(messages) >= 2 else None
            answer = isinstance(final, dict) and final.get("role") == "assistant"
            content = final.get("content") if answer else None
            if not isinstance(content, str) or not content.strip():
                raise DataError(
                    f"{cfg.path}: row {i}, field '{cfg.messages_field}': expected a message list ending with a "
                    "non-empty assistant turn"
                )
            responses.append(content)
        return read_prompts(conversations, cfg.messages_field, cfg.path), responses
    prompts = read_prompts(table[cfg.prompt_field], cfg.prompt_field, cfg.path)
    for i, (p, r) in enumerate(zip(prompts, table[cfg.response_field])):
        if p is None:
            raise DataError(
                f"{cfg.path}: row {i}, field '{cfg.prompt_field}': expected non-empty text or a message list"
            )
        if not isinstance(r, str) or not r.strip():
            raise DataError(f"{cfg.path}: row {i}, field '{cfg.response_field}': expected non-empty text, got {r!r}")
    return prompts, list(table[cfg.response_field])


def build_model(cfg: SFTModelConfig, seed: int, precision: Precision | None = None):
    """(model, tokenizer) to train: float32 master weights (whatever dtype the checkpoint was saved in;
    compute runs in train.mixed_precision), gradient checkpointing as ``precision`` asks."""
    precision = precision or Precision()
    if cfg.name_or_path:
        tok = load_tokenizer(cfg.tokenizer or cfg.name_or_path)
        return load_trainable_lm(cfg.name_or_path, "float32", precision, key="model"), tok
    from transformers import LlamaForCausalLM

    from prefgame.arena.lm import new_tiny_model

    model, tok = new_tiny_model(LlamaForCausalLM, cfg, seed=seed)
    return precision.prepare_trainable(model), tok


@torch.no_grad()
def response_nll(model, examples: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 128) -> float:
    """Mean negative log-likelihood per response token."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = build_pairs_batch([p for p, _ in chunk], [r for _, r in chunk], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logps = ResponseLogps(model)(**batch)
        total -= float(logps.sum())
        count += int(batch["response_mask"].sum())
    model.train(was_training)
    return total / max(count, 1)


def run(cfg: SFTConfig) -> dict:
    if not cfg.data.path:
        raise PrefgameError("data.path is empty: give a prompt/response file, e.g. data.path=runs/arena/sft.jsonl")
    return run_job(cfg.output_dir, lambda out, log: _train(cfg, out, log))


def _train(cfg: SFTConfig, out: RunDir, log) -> dict:
    tc = cfg.train
    seed_everything(tc.seed)
    acc = make_accelerator(tc, out.path, batch_size=tc.batch_size)
    run = begin_run(out, cfg, acc, job="sft", resume=cfg.resume, report_to=tc.report_to)
    prompts, responses = load_prompt_response(cfg.data)
    model, tok = build_model(cfg.model, tc.seed, Precision.of(tc, acc))
    model = apply_lora(model, cfg.lora, seed=tc.seed)
    trained = trained_state(model)  # what checkpoints hold: the model, or its adapters

    examples = [
        truncate(encode_prompt(tok, p), encode_response(tok, r), cfg.data.max_length)
        for p, r in zip(prompts, responses)
    ]
    order = np.random.default_rng(tc.seed).permutation(len(examples))
    n_eval = int(round(cfg.data.eval_fraction * len(examples)))
    eval_set = [examples[i] for i in order[:n_eval]]
    train_set = [examples[i] for i in order[n_eval:]]
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"sft: {len(train_set)} train / {len(eval_set)} eval examples, model {n_params / 1e6:.2f}M parameters")

    wrapper = ResponseLogps(model)
    optimizer, scheduler = make_optimizer(wrapper.parameters(), tc, tc.max_steps)
    wrapper, optimizer = sharding.prepare(acc, wrapper, optimizer)
    state = resume_state(run, out, modules={"model": trained}, optimizer=optimizer, scheduler=scheduler)
    start_step, initial_eval = state["step"], state.get("eval_loss_initial")

    def eval_loss() -> float:  # every process under FSDP (the layers gather their shards), else any
        with sharding.gathered(acc):
            return response_nll(model, eval_set, tok.pad_token_id)

    if eval_set and start_step == 0:
        initial_eval = eval_loss()
    guard = NonFiniteGuard(tc.max_nonfinite_steps)
    lengths = np.array([len(p) + len(r) for p, r in train_set])  # (N,) tokens of each example
    progress = Progress(tc.max_steps - start_step, "sft", log)
    device = acc.device
    t0 = time.perf_counter()

    def micro_loss(mb, n_tokens: int):
        batch = build_pairs_batch([train_set[i][0] for i in mb], [train_set[i][1] for i in mb], tok.pad_token_id)
        logps = wrapper(**{key: v.to(device) for key, v in batch.items()})
        return -logps.sum() / n_tokens, {}  # a sum over the micro-batch / the step's response tokens

    def step_batches(step: int):
        idx = step_indices(len(train_set), tc.batch_size, tc.seed, step)
        idx = idx[np.argsort(lengths[idx], kind="stable")]  # length-grouped micro-batches, same step
        n_tokens = sum(len(train_set[i][1]) for i in idx)  # global response tokens of this step
        micro = list(local_micro_batches(idx, tc.micro_batch_size, acc.process_index, acc.num_processes))
        return micro, functools.partial(micro_loss, n_tokens=n_tokens)

    def evaluate() -> dict:
        return {"eval_loss": eval_loss()} if sharding.computes_here(acc) else {}

    def checkpoint(done: int) -> None:
        save_checkpoint(  # the initial loss too, so that a resumed run reports it
            out.path, done, modules={"model": trained}, optimizer=optimizer, scheduler=scheduler,
            state={"eval_loss_initial": initial_eval}, keep=tc.keep_checkpoints,
        )  # fmt: skip

    last = train_steps(
        acc, out, run, tc, (wrapper, optimizer, scheduler, guard), step_batches, start_step=start_step,
        evaluate=evaluate if eval_set else None, checkpoint=checkpoint, progress=progress,
    )  # fmt: skip
    last_loss = last["loss"]
    acc.wait_for_everyone()
    metrics = {
        "train_loss": last_loss,
        "eval_loss_initial": initial_eval,
        "eval_loss": eval_loss() if eval_set else None,
        "steps": tc.max_steps,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "parameters": n_params,
        "nonfinite_steps": guard.total,
        "seconds": time.perf_counter() - t0,
    }
    weights = sharding.model_weights(model)  # gathered on every process under FSDP
    if acc.is_main_process:
        save_model(model, tok, out.path / "model", state_dict=weights)
        out.write_metrics(metrics)
        log.info(f"sft done: eval loss {metrics['eval_loss']} (from {initial_eval}); model in {out.path / 'model'}")
    end_run(acc, run)
    return metrics


def save_model(model, tokenizer, path: Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """A normal transformers checkpoint (safetensors) written atomically, loadable with ``from_pretrained``;
    a model with LoRA adapters is written merged, with its adapters in ``adapter/``
    (:func:`prefgame.lora.save_pretrained`).

    ``state_dict``: the complete tensors to write instead of the model's own, for a model sharded by FSDP
    (:func:`prefgame.train.sharding.model_weights`, gathered on every process before the main one calls
    this; FSDP does not combine with LoRA)."""
    with atomic_dir(path) as tmp:
        save_pretrained(model, tmp, state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
