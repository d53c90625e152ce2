"""The DPO family (``prefgame dpo``, docs/design.md §3.4): DPO, IPO, conservative DPO, length-regularized DPO.

Loss (:func:`prefgame.losses.dpo_loss`), with Δ = log π(y_w)/π0(y_w) − log π(y_l)/π0(y_l) and
z = βΔ − α(|y_w| − |y_l|):

    sigmoid (DPO; cDPO with ε = label_smoothing): ℓ = −(1 − ε) log σ(z) − ε log σ(−z)
    ipo:                                          ℓ = (z/β − 1/(2β))²

β (``loss.beta``) is the inverse temperature of the implicit reward r = β log π/π0; α is
``loss.length_alpha``. Two modes:

- **offline** (``mode: offline``): a fixed preference data set loaded with :mod:`prefgame.data` (arena
  pairs export, UltraFeedback-binarized, HH, any ``pairs`` format). The reference π0 is the initial
  policy: its log-probabilities of every chosen and rejected response are computed once, before the
  first step, and no reference model is kept in memory. Log-probabilities are taken over response
  tokens only, projected to the vocabulary in chunks (:func:`prefgame.losses.response_logprobs`);
  chosen and rejected sequences share one forward pass, and each step's examples are sorted by
  length before they are cut into micro-batches (less padding, same gradient).
- **online** (``mode: online``, iterative DPO): each round samples K responses per prompt from the
  current policy (KV cache), asks a preference oracle (arena gold or annotator, a trained preference
  model, a judge) for the K×K matrix of each prompt, pairs the sample with the highest leave-one-out
  win rate against the one with the lowest, and takes ``online.steps_per_round`` steps with π0 fixed
  as the reference. Sampling, oracle queries, optimization and the held-out measurements (win rates
  and KL against π0; on the arena the exact class-level figures) are those of
  :class:`prefgame.train.selfplay.SelfPlay`.

Resume is exact: offline at step granularity, online at round granularity (see
:mod:`prefgame.train.engine`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from prefgame.arena.job import ArenaConfig
from prefgame.config import load_config, param
from prefgame.errors import DataError, PrefgameError
from prefgame.lm import build_pairs_batch, encode_prompt, encode_response, load_tokenizer, truncate
from prefgame.lm import token_logps as lm_token_logps
from prefgame.lora import LoraConfig, apply_lora, base_weights, reference, trained_state
from prefgame.losses import dpo_loss, sequence_logprobs, sequence_mean_logprobs
from prefgame.oracle import OracleConfig, PreferenceOracle
from prefgame.run import Progress, Resume, RunDir, overwrite_param, read_jsonl, resume_param, run_job, seed_everything
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
from prefgame.train.policy import (
    PolicyEvaluator,
    PolicyRuntime,
    measured_rows,
    reference_home,
    run_iterations,
    summary_text,
)
from prefgame.train.precision import Precision, load_frozen_lm, load_trainable_lm
from prefgame.train.selfplay import (
    PolicyConfig,
    PromptsConfig,
    SamplingConfig,
    SelfPlayEvalConfig,
)
from prefgame.train.sft import save_model

# ---------------------------------------------------------------------------------------------- config


@dataclass
class DPODataConfig:
    path: str = param("", "offline: preference pairs, a .jsonl/.json/.parquet/.csv file or a hub data set")
    split: str = param("train", "split to read from a hub data set")
    format: str = param("", "input format (pairs, hh, chat, ...); empty: detected from the columns")
    skip_invalid: bool = param(False, "drop invalid rows (reported in the log) instead of stopping")
    max_pairs: int = param(0, "use only the first N pairs (0: all)")
    eval_fraction: float = param(0.05, "share of pairs held out for eval loss, reward accuracy and margins")
    max_length: int = param(512, "truncate prompt+response to this many tokens (keeps the prompt's end)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")


@dataclass
class DPOLossConfig:
    loss_type: Literal["sigmoid", "ipo"] = param("sigmoid", "sigmoid: DPO / cDPO / R-DPO; ipo: IPO")
    beta: float = param(0.1, "β, inverse temperature of the implicit reward β log π/π0")
    label_smoothing: float = param(0.0, "ε of conservative DPO (sigmoid only): share of flipped labels")
    length_alpha: float = param(0.0, "α of length-regularized DPO: α|y| (tokens) is subtracted from each reward")
    length_normalize: bool = param(
        False, "use the mean log-prob per response token instead of the sum (policy and reference alike)"
    )
    chunk_size: int = param(1024, "response tokens projected to the vocabulary at once (chunked log-softmax)")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError("loss.beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("loss.label_smoothing must be in [0, 0.5)")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("loss.label_smoothing applies to loss_type=sigmoid only")
        if self.chunk_size < 1:
            raise ValueError("loss.chunk_size must be ≥ 1")


@dataclass
class OnlineConfig:
    rounds: int = param(20, "online: rounds of sample → rank → train")
    steps_per_round: int = param(4, "online: optimizer steps on each round's pairs")
    missing_eos_penalty: float = param(
        1.0,
        "online: subtracted from the leave-one-out win rate of a response cut at sampling.max_new_tokens "
        "without a stop token or string before the best and worst are picked (1: it never wins a pair against "
        "a finished response; 0: off)",
    )

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.steps_per_round < 1:
            raise ValueError("online.rounds must be ≥ 0 and online.steps_per_round ≥ 1")
        if self.missing_eos_penalty < 0:
            raise ValueError("online.missing_eos_penalty must be ≥ 0")


@dataclass
class DPOEvalConfig(SelfPlayEvalConfig):
    prompts: int = param(
        0, "held-out prompts the policy is measured on (online: every N rounds; offline: at the end); 0: none"
    )


@dataclass
class DPOConfig:
    output_dir: str = param("runs/dpo", "where the policy, checkpoints, metrics and log are written")
    resume: Resume = resume_param()
    overwrite: bool = overwrite_param()
    mode: Literal["offline", "online"] = param("offline", "offline: a fixed data set; online: iterative DPO")
    policy: PolicyConfig = param(PolicyConfig, "π0: the initial policy, and the fixed reference")
    loss: DPOLossConfig = param(DPOLossConfig, "the DPO-family loss")
    data: DPODataConfig = param(DPODataConfig, "offline: the preference data set")
    train: TrainConfig = param(
        TrainConfig, "optimization (online: max_steps, eval_every and save_every are set by the online section)"
    )
    reference_batch_size: int = param(
        0, "offline: pairs per forward pass of the one-time reference pass (0: 4 × train.micro_batch_size)"
    )
    online: OnlineConfig = param(OnlineConfig, "online: rounds")
    oracle: OracleConfig = param(OracleConfig, "online: the preference oracle that ranks the K samples")
    prompts: PromptsConfig = param(PromptsConfig, "online: where prompts come from")
    arena: ArenaConfig = param(ArenaConfig, "the arena world (arena prompts and oracles, exact measurements)")
    sampling: SamplingConfig = param(SamplingConfig, "online: K samples per prompt from the current policy")
    eval: DPOEvalConfig = param(DPOEvalConfig, "held-out measurements of the policy (prompts from `prompts`)")
    lora: LoraConfig = param(LoraConfig, "LoRA adapters instead of full fine-tuning; π0 is the base (prefgame.lora)")


# ---------------------------------------------------------------------------------------------- data


@dataclass
class PairSet:
    """Tokenized preference pairs (chosen preferred) and π0's log-probabilities of both responses."""

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    ref_chosen: torch.Tensor | None = None  # (N,) log π0(y_w | x)
    ref_rejected: torch.Tensor | None = None  # (N,) log π0(y_l | x)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def take(self, idx: Sequence[int]) -> PairSet:
        return PairSet(
            [self.prompt_ids[i] for i in idx], [self.chosen_ids[i] for i in idx], [self.rejected_ids[i] for i in idx]
        )

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of the longer of the two sequences of each pair (what a micro-batch pads to)."""
        return np.array([len(p) + max(len(c), len(r)) for p, c, r in zip(*self.columns())])

    def columns(self):
        return self.prompt_ids, self.chosen_ids, self.rejected_ids

    def batch(self, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Chosen rows 0..b−1 then rejected rows b..2b−1 of one right-padded batch (see build_pairs_batch)."""
        prompts = [self.prompt_ids[i] for i in idx]
        responses = [self.chosen_ids[i] for i in idx] + [self.rejected_ids[i] for i in idx]
        return build_pairs_batch(prompts + prompts, responses, pad_id)


def load_pair_set(cfg: DPODataConfig, tokenizer) -> tuple[PairSet, dict[str, int]]:
    """The pairs of ``cfg.path`` with the preferred response first; ties (label ½) are dropped."""
    from prefgame.data import load_preferences

    data = load_preferences(cfg.path, split=cfg.split, format=cfg.format or None, skip_invalid=cfg.skip_invalid)
    if data.kind != "pairs":
        raise DataError(f"{cfg.path}: read as {data.kind} ({data.format} format); DPO needs preference pairs")
    ds = data.dataset
    if cfg.max_pairs:
        ds = ds.select(range(min(cfg.max_pairs, len(ds))))
    pairs = PairSet([], [], [])
    ties = 0
    for messages, chosen, rejected, label in zip(ds["prompt_messages"], ds["chosen"], ds["rejected"], ds["label"]):
        if label == 0.5:
            ties += 1
            continue
        if label < 0.5:
            chosen, rejected = rejected, chosen
        p_ids = encode_prompt(tokenizer, messages)
        pc, c_ids = truncate(p_ids, encode_response(tokenizer, chosen), cfg.max_length)
        pr, r_ids = truncate(p_ids, encode_response(tokenizer, rejected), cfg.max_length)
        p_ids = pc if len(pc) <= len(pr) else pr  # one prompt for both: the shorter cut
        pairs.prompt_ids.append(p_ids)
        pairs.chosen_ids.append(c_ids[: cfg.max_length - len(p_ids)])
        pairs.rejected_ids.append(r_ids[: cfg.max_length - len(p_ids)])
    if not len(pairs):
        raise DataError(f"{cfg.path}: no pair with a strict preference (all {ties} rows are ties)")
    return pairs, {"rows": len(ds), "ties_dropped": ties}


# ---------------------------------------------------------------------------------------------- log-probs


class PairLogps(torch.nn.Module):
    """A causal LM whose forward returns per-sequence log π(y | x) over response tokens, (B,).

    The final hidden states of response positions only are projected to the vocabulary, ``chunk_size``
    rows at a time in forward and backward (:func:`prefgame.losses.response_logprobs`): no (B, T, V)
    logits, and none for prompt or padding tokens. Trainers hand this module to
    ``accelerator.prepare`` so that data-parallel wrappers see the forward that computes the loss.
    """

    def __init__(self, model, *, chunk_size: int = 1024, length_normalize: bool = False) -> None:
        super().__init__()
        self.model, self.chunk_size, self.length_normalize = model, chunk_size, length_normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
        token_logps = lm_token_logps(self.model, batch, chunk_size=self.chunk_size)  # (B, T−1)
        mask = response_mask[:, 1:]  # (B, T−1): position t predicts token t+1
        reduce = sequence_mean_logprobs if self.length_normalize else sequence_logprobs
        return reduce(token_logps, mask)  # (B,)


@torch.no_grad()
def pair_logps(
    module: PairLogps, pairs: PairSet, pad_id: int, *, batch_size: int, device, autocast=contextlib.nullcontext
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_w | x), log π(y_l | x) of every pair, (N,) each, float32 on CPU, in eval mode.

    Pairs are processed in order of length so that each batch pads little.
    """
    was_training = module.training
    module.eval()
    n = len(pairs)
    chosen, rejected = torch.zeros(n), torch.zeros(n)
    order = np.argsort(pairs.lengths, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pairs.batch(idx, pad_id).items()}
        with autocast():
            logps = module(**batch).float().cpu()  # (2b,)
        chosen[idx], rejected[idx] = logps[: len(idx)], logps[len(idx) :]
    module.train(was_training)
    return chosen, rejected


def response_token_counts(pairs: PairSet, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor([len(pairs.chosen_ids[i]) for i in idx], dtype=torch.float32),
        torch.tensor([len(pairs.rejected_ids[i]) for i in idx], dtype=torch.float32),
    )


def loss_kwargs(cfg: DPOLossConfig) -> dict[str, Any]:
    return {"beta": cfg.beta, "loss_type": cfg.loss_type, "label_smoothing": cfg.label_smoothing}


def evaluate_pairs(module: PairLogps, pairs: PairSet, cfg: DPOConfig, pad_id: int, device, autocast) -> dict:
    """Eval loss, reward accuracy, margins and mean implicit rewards on held-out pairs."""
    bs = cfg.train.micro_batch_size
    chosen, rejected = pair_logps(module, pairs, pad_id, batch_size=bs, device=device, autocast=autocast)
    lc, lr = response_token_counts(pairs, range(len(pairs)))
    loss, metrics = dpo_loss(
        chosen, rejected, pairs.ref_chosen, pairs.ref_rejected,
        chosen_lengths=lc, rejected_lengths=lr, length_alpha=cfg.loss.length_alpha, **loss_kwargs(cfg.loss),
    )  # fmt: skip
    return {"eval_loss": float(loss), **{f"eval_{k}": float(v) for k, v in metrics.items()}}


# ---------------------------------------------------------------------------------------------- offline


def run(cfg: DPOConfig) -> dict:
    return run_job(cfg.output_dir, lambda out, log: train(cfg, out, log), name="prefgame.dpo")


def train(cfg: DPOConfig, out: RunDir, log, *, oracle: PreferenceOracle | None = None) -> dict:
    if not cfg.policy.name_or_path:
        raise PrefgameError("policy.name_or_path is empty: give π0's folder, e.g. runs/quickstart/pi0/model")
    if cfg.mode == "online":
        return train_online(cfg, out, log, oracle=oracle)
    if not cfg.data.path:
        raise PrefgameError("data.path is empty: give a pairs file, e.g. data.path=runs/quickstart/data/pairs.jsonl")
    return train_offline(cfg, out, log)


def _split_pairs(cfg: DPOConfig, tok) -> tuple[PairSet, PairSet, dict[str, Any]]:
    """(train pairs, held-out pairs, data info): ``data.eval_fraction`` held out by a seeded permutation."""
    pairs, data_info = load_pair_set(cfg.data, tok)
    order = np.random.default_rng(cfg.train.seed).permutation(len(pairs))
    n_eval = int(round(cfg.data.eval_fraction * len(pairs)))
    eval_set, train_set = pairs.take(order[:n_eval]), pairs.take(order[n_eval:])
    if not len(train_set):
        raise DataError(f"{cfg.data.path}: no training pairs left after holding out {n_eval} for evaluation")
    return train_set, eval_set, data_info


def _reference_logps(cfg: DPOConfig, module: PairLogps, parts: Sequence[PairSet], pad_id: int, acc) -> None:
    """π0 = the initial policy (with LoRA: its base, adapters disabled): its log-probs of every pair,
    computed once (no reference model stays in memory), stored on each part as ``ref_chosen`` /
    ``ref_rejected``."""
    with base_weights(module.model):
        for part in parts:
            if len(part):
                part.ref_chosen, part.ref_rejected = pair_logps(
                    module, part, pad_id, batch_size=cfg.reference_batch_size or 4 * cfg.train.micro_batch_size,
                    device=acc.device, autocast=acc.autocast,
                )  # fmt: skip


def train_offline(cfg: DPOConfig, out: RunDir, log) -> dict:
    t_start = time.perf_counter()
    tc = cfg.train
    seed_everything(tc.seed)
    acc = make_accelerator(tc, out.path, batch_size=tc.batch_size)
    run = begin_run(out, cfg, acc, job="dpo", resume=cfg.resume, report_to=tc.report_to)
    tok = load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path)
    model = load_trainable_lm(cfg.policy.name_or_path, cfg.policy.dtype, Precision.of(tc, acc), key="policy.dtype")
    model = apply_lora(model, cfg.lora, seed=tc.seed)
    trained = trained_state(model)  # what checkpoints hold: the model, or its adapters
    train_set, eval_set, data_info = _split_pairs(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        f"dpo offline ({cfg.loss.loss_type}, β={cfg.loss.beta}): {len(train_set)} train / {len(eval_set)} eval "
        f"pairs ({data_info['ties_dropped']} ties dropped), model {n_params / 1e6:.2f}M parameters"
    )
    module = PairLogps(model, chunk_size=cfg.loss.chunk_size, length_normalize=cfg.loss.length_normalize)
    model.to(acc.device)

    t_ref = time.perf_counter()
    _reference_logps(cfg, module, (train_set, eval_set), tok.pad_token_id, acc)
    ref_seconds = time.perf_counter() - t_ref

    optimizer, scheduler = make_optimizer(module.parameters(), tc, tc.max_steps)
    wrapper, optimizer = sharding.prepare(acc, module, optimizer)

    def evaluate() -> dict:  # every process (under FSDP the layers gather their shards in their forward)
        with sharding.gathered(acc):
            return evaluate_pairs(module, eval_set, cfg, tok.pad_token_id, acc.device, acc.autocast)

    initial_eval = evaluate() if len(eval_set) else {}  # π0's figures: before a checkpoint replaces the weights
    start_step = resume_state(run, out, modules={"model": trained}, optimizer=optimizer, scheduler=scheduler)["step"]

    lengths = train_set.lengths
    guard = NonFiniteGuard(tc.max_nonfinite_steps)
    progress = Progress(tc.max_steps - start_step, "dpo", log)
    t_train = time.perf_counter()

    def micro_loss(mb):
        batch = {key: v.to(acc.device) for key, v in train_set.batch(mb, tok.pad_token_id).items()}
        lc, lr = response_token_counts(train_set, mb)
        logps = wrapper(**batch).float()  # (2b,) chosen then rejected
        return dpo_loss(
            logps[: len(mb)],
            logps[len(mb) :],
            train_set.ref_chosen[mb].to(acc.device),
            train_set.ref_rejected[mb].to(acc.device),
            chosen_lengths=lc.to(acc.device),
            rejected_lengths=lr.to(acc.device),
            length_alpha=cfg.loss.length_alpha,
            normalizer=tc.batch_size,
            **loss_kwargs(cfg.loss),
        )  # a sum over the micro-batch / the global pair count

    def step_batches(step: int):
        idx = step_indices(len(train_set), tc.batch_size, tc.seed, step)
        idx = idx[np.argsort(lengths[idx], kind="stable")]  # length-grouped micro-batches, same step
        return list(local_micro_batches(idx, tc.micro_batch_size, acc.process_index, acc.num_processes)), micro_loss

    def checkpoint(done: int) -> None:
        save_checkpoint(
            out.path, done, modules={"model": trained}, optimizer=optimizer, scheduler=scheduler, state={},
            keep=tc.keep_checkpoints,
        )  # fmt: skip

    last = train_steps(
        acc, out, run, tc, (wrapper, optimizer, scheduler, guard), step_batches, start_step=start_step,
        evaluate=evaluate if len(eval_set) else None, checkpoint=checkpoint, progress=progress,
    )  # fmt: skip
    acc.wait_for_everyone()
    train_seconds = time.perf_counter() - t_train
    final_eval = evaluate() if len(eval_set) else {}
    metrics: dict[str, Any] = {
        "mode": "offline",
        "loss_type": cfg.loss.loss_type,
        "train_loss": last["loss"],
        "train": {k: v for k, v in last.items() if k != "loss"},
        "eval_initial": initial_eval,
        "eval": final_eval,
        "steps": tc.max_steps,
        "train_pairs": len(train_set),
        "eval_pairs": len(eval_set),
        **data_info,
        "parameters": n_params,
        "nonfinite_steps": guard.total,
    }
    weights = sharding.model_weights(model)  # gathered on every process under FSDP
    if acc.is_main_process:
        save_model(model, tok, out.path / "model", state_dict=weights)
    if cfg.eval.prompts and sharding.computes_here(acc):
        with sharding.gathered(acc):
            metrics["final"] = _measure_policy(cfg, out, acc, tok, model)
    if acc.is_main_process:
        metrics["seconds"] = {
            "total": time.perf_counter() - t_start, "reference_logps": ref_seconds, "train": train_seconds,
        }  # fmt: skip
        out.write_metrics(metrics)
        log.info(summary_line(metrics))
    end_run(acc, run)
    return metrics


def _measure_policy(cfg: DPOConfig, out: RunDir, acc, tok, model) -> dict[str, Any]:
    """The trained policy against π0 on the held-out prompts, as the on-policy trainers measure it."""
    ref = reference(model)  # with LoRA: the trained model with its adapters disabled
    if ref is None:
        precision, home = Precision.of(cfg.train, acc), reference_home(cfg.policy, acc.device)
        ref = load_frozen_lm(cfg.policy.name_or_path, cfg.policy.dtype, precision, home)
    rt = PolicyRuntime(
        cfg, out.path, batch_size=cfg.train.batch_size, arena=cfg.prompts.source == "arena", acc=acc,
        models=(tok, model, ref),
    )  # fmt: skip
    return PolicyEvaluator(rt).measure(cfg.train.max_steps)


def summary_line(m: dict[str, Any]) -> str:
    text = f"dpo {m['mode']} ({m['loss_type']}) done, train loss {m['train_loss']:.4f}"
    if m.get("eval"):
        e, e0 = m["eval"], m["eval_initial"]
        text += (
            f", eval loss {e0['eval_loss']:.4f} → {e['eval_loss']:.4f}, reward accuracy "
            f"{e['eval_rewards/accuracy']:.3f}, margin {e['eval_rewards/margin']:.3f}"
        )
    return summary_text(text, m) if m.get("final") else text


# ---------------------------------------------------------------------------------------------- online


def best_worst_pairs(win_rates: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each prompt's K samples (prompt-major (M·K,) leave-one-out win rates): the global indices of
    the sample with the highest and the lowest win rate. Prompts whose samples all tie are skipped."""
    groups = win_rates.view(-1, k)  # (M, K)
    best, worst = groups.argmax(-1), groups.argmin(-1)  # (M,)
    keep = (groups.max(-1).values > groups.min(-1).values).numpy()
    base = np.arange(groups.shape[0]) * k
    return (base + best.numpy())[keep], (base + worst.numpy())[keep]


def online_round(sp, t: int, prefs, cfg: DPOConfig) -> dict[str, float]:
    """One round: K samples per prompt from π_t, oracle K×K matrices, best vs worst, DPO steps vs π0.

    Responses cut without EOS are ranked down by ``online.missing_eos_penalty``: a cut text can read as
    a long answer (e.g. one word repeated), and pairing it as the winner teaches the policy to ramble.
    """
    from prefgame.game.lm_selfplay import group_matrices, leave_one_out_win_rates
    from prefgame.train.selfplay import POLICY_SAMPLES, STEP_ORDER, Examples

    loss = cfg.loss
    seed, k = sp.cfg.train.seed, sp.cfg.sampling.samples_per_prompt
    ys = sp.sample(sp.iteration_prompts(t), (seed, t, POLICY_SAMPLES))
    win = leave_one_out_win_rates(group_matrices(prefs, ys.prompts, ys.texts, k))  # (M·K,)
    cut = sp.eos_missing(ys).to(win.dtype)  # (M·K,) cut at the length limit, without a stop
    chosen, rejected = best_worst_pairs(win - cfg.online.missing_eos_penalty * cut, k)
    ref = sp.sequence_logps(sp.ref, ys)  # (M·K,) log π0(y | x)
    n_tokens = torch.tensor([len(r) for r in ys.response_ids], dtype=torch.float32)

    def loss_fn(mb, cols, normalizer):
        w, l = chosen[mb], rejected[mb]
        x = cols[0]
        lw, ll = n_tokens[w].to(x), n_tokens[l].to(x)
        pc, pr, rc, rr = cols[0], cols[1], ref[w].to(x), ref[l].to(x)
        if loss.length_normalize:  # mean log-prob per response token, as in the offline mode
            pc, pr, rc, rr = pc / lw, pr / ll, rc / lw, rr / ll
        return dpo_loss(
            pc, pr, rc, rr, chosen_lengths=lw, rejected_lengths=ll, length_alpha=loss.length_alpha,
            normalizer=normalizer, **loss_kwargs(loss),
        )  # fmt: skip

    info = sp.optimize(Examples(ys, np.stack([chosen, rejected]), loss_fn), (seed, t, STEP_ORDER))
    gap = float((win[chosen] - win[rejected]).mean())
    return {"pairs": len(chosen), "win_rate_gap": gap, "missing_eos": float(cut.mean()), **info}


def train_online(cfg: DPOConfig, out: RunDir, log, *, oracle: PreferenceOracle | None = None) -> dict:
    from prefgame.train.selfplay import Iterations, SelfPlay

    t_start = time.perf_counter()
    seed_everything(cfg.train.seed)
    rounds = cfg.online.rounds
    sp = SelfPlay(
        cfg, out, log, oracle=oracle, plan=Iterations(rounds, cfg.online.steps_per_round, cfg.train.batch_size)
    )
    trained = trained_state(sp.policy)  # what checkpoints hold: the policy, or its adapters
    run, state = sp.start(
        out, "dpo", modules={"policy": trained}, optimizer=sp.optimizer, scheduler=sp.scheduler, unit="round"
    )
    sp.version = state.get("version", 0)
    n_params = sum(p.numel() for p in sp.policy.parameters())
    log.info(
        f"dpo online ({cfg.loss.loss_type}, β={cfg.loss.beta}): {rounds} rounds × "
        f"{cfg.sampling.prompts_per_iteration} prompts × K={cfg.sampling.samples_per_prompt}, "
        f"policy {n_params / 1e6:.2f}M parameters, oracle {sp.oracle.name}"
    )
    evaluator = PolicyEvaluator(sp, preferences=sp.preferences) if cfg.eval.prompts else None

    def iterate(t: int) -> dict[str, Any]:
        prefs = sp.preferences()
        return {**online_round(sp, t, prefs, cfg), **prefs.stats()}

    def checkpoint(done: int) -> None:
        save_checkpoint(
            out.path, done, modules={"policy": trained}, optimizer=sp.optimizer, scheduler=sp.scheduler,
            state={"version": sp.version, **(evaluator.state() if evaluator else {})}, keep=cfg.train.keep_checkpoints,
        )  # fmt: skip

    round_seconds = run_iterations(
        sp, out, run, name="dpo online", unit="round", total=rounds, start=state["step"], state=state,
        iterate=iterate, evaluator=evaluator, checkpoint=checkpoint, show=("loss", "eval/win_rate_vs_ref"), log=log,
    )  # fmt: skip
    rows = read_jsonl(out.file("metrics.jsonl")) if out.file("metrics.jsonl").exists() else []
    metrics: dict[str, Any] = {
        "mode": "online",
        "loss_type": cfg.loss.loss_type,
        "train_loss": next((r["loss"] for r in reversed(rows) if "loss" in r), math.nan),
        "rounds": rounds,
        **measured_rows(out),
        "oracle": sp.oracle.name,
        "parameters": n_params,
        "nonfinite_steps": sp.guard.total,
    }
    weights = sharding.model_weights(sp.policy)  # gathered on every process under FSDP
    if sp.acc.is_main_process:
        save_model(sp.policy, sp.tok, out.path / "model", state_dict=weights)
        metrics["seconds"] = {
            "total": time.perf_counter() - t_start, "rounds": round_seconds,
            "measurements": evaluator.seconds if evaluator else 0.0,
        }  # fmt: skip
        out.write_metrics(metrics)
        log.info(summary_line(metrics))
    end_run(sp.acc, run)
    return metrics


# ---------------------------------------------------------------------------------------------- library entry


def dpo_config(config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> DPOConfig:
    return load_config(DPOConfig, config_file, list(overrides))


def train_dpo_arena(
    pi0_path: str | Path,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    mode: Literal["offline", "online"] = "online",
    overrides: Sequence[str] = (),
    eval_prompts: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """DPO from the π0 checkpoint ``pi0_path`` on the arena export ``data_dir`` (its pairs.jsonl).

    Settings: configs/dpo/arena.yaml (offline) or configs/dpo/arena-online.yaml (online, gold
    oracle), whose values are :data:`ARENA_PRESETS`, then ``overrides`` (``key=value``). Returns the
    run's metrics plus ``model_path``; ``metrics["final"]`` holds the policy's held-out measurements
    (the exact gold win rate against π0 …) on ``eval_prompts`` held-out prompts (None: the preset's;
    0: none).
    """
    paths = [
        f"policy.name_or_path={pi0_path}",
        f"output_dir={output_dir}",
        f"data.path={Path(data_dir) / 'pairs.jsonl'}",
    ]
    if eval_prompts is not None:
        paths.append(f"eval.prompts={eval_prompts}")
    cfg = load_config(DPOConfig, None, [*ARENA_PRESETS[mode], *paths, *overrides])
    out = RunDir(cfg.output_dir, name="prefgame.dpo")
    log = out.start_logging(quiet=quiet)
    try:
        metrics = train(cfg, out, log)
    finally:
        out.close()
    return {**metrics, "model_path": str(Path(cfg.output_dir) / "model")}


# The arena settings; configs/dpo/arena.yaml (offline) and arena-online.yaml (online) hold the same values.
ARENA_PRESETS: dict[str, list[str]] = {
    "offline": [
        "mode=offline", "data.skip_invalid=true", "data.eval_fraction=0.05", "data.max_length=64",
        "loss.loss_type=sigmoid", "loss.beta=0.1", "train.lr=1e-4", "train.warmup_steps=10", "train.max_steps=60",
        "train.batch_size=32", "train.micro_batch_size=32", "train.eval_every=20", "train.save_every=0",
        "train.log_every=10", "eval.prompts=1000", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1",
    ],
    "online": [
        "mode=online", "oracle.kind=gold", "prompts.source=arena", "sampling.prompts_per_iteration=256",
        "sampling.samples_per_prompt=6", "sampling.max_new_tokens=40", "online.rounds=30",
        "online.steps_per_round=8", "loss.loss_type=sigmoid", "loss.beta=0.3", "train.lr=2e-4",
        "train.warmup_steps=2", "train.batch_size=32", "train.micro_batch_size=32", "eval.every=0",
        "eval.prompts=120", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1",
    ],
}  # fmt: skip
