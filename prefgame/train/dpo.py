"""The DPO family (``prefgame dpo``, docs/design.md §3.4): DPO, IPO, conservative DPO, length-regularized DPO,
the other GPO losses, SLiC-HF, and the listwise PRO / InfoNCA / NCA on K-way rankings (docs/dpo.md).

Loss (:func:`prefgame.losses.dpo_loss`), with Δ = log π(y_w)/π0(y_w) − log π(y_l)/π0(y_l) and
z = βΔ − α(|y_w| − |y_l|):

    sigmoid (DPO; cDPO with ε = label_smoothing): ℓ = −(1 − ε) log σ(z) − ε log σ(−z)
    ipo:                                          ℓ = (z/β − 1/(2β))²

β (``loss.beta``) is the inverse temperature of the implicit reward r = β log π/π0; α is
``loss.length_alpha``. ``loss.loss_type`` picks a GPO function f (ℓ = f(z), :func:`prefgame.losses.gpo_loss`),
SLiC-HF (:func:`prefgame.losses.slic_loss`) or a listwise loss on ranked lists (:func:`pair_loss`,
:func:`list_loss`). Two modes:

- **offline** (``mode: offline``): a fixed preference data set loaded with :mod:`prefgame.data` (arena
  pairs export, UltraFeedback-binarized, HH, any ``pairs`` format). The reference π0 is the initial
  policy: its log-probabilities of the chosen and rejected responses are computed once, before the
  first step, for the held-out pairs and the training pairs that the run's steps draw (a run shorter
  than an epoch reads only those), and no reference model is kept in memory. Log-probabilities are taken over response
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
import dataclasses
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
from prefgame.errors import ConfigError, DataError, PrefgameError
from prefgame.lm import build_pairs_batch, encode_prompt, encode_response, load_tokenizer, truncate
from prefgame.lm import token_logps as lm_token_logps
from prefgame.lora import LoraConfig, apply_lora, base_weights, reference, trained_state
from prefgame.losses import (
    dpo_loss,
    gpo_loss,
    infonca_loss,
    nca_loss,
    pro_loss,
    sequence_logprobs,
    sequence_mean_logprobs,
    slic_loss,
)
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
    max_pairs: int = param(0, "use only the first N pairs (or ranked lists) (0: all)")
    ranking_pairs: Literal["best_worst", "all"] = param(
        "best_worst",
        "K-way rankings data with a pair loss: the pair of each list's best and worst response, or every "
        "strictly ordered pair (a listwise loss_type trains on the whole lists)",
    )
    eval_fraction: float = param(0.05, "share of pairs held out for eval loss, reward accuracy and margins")
    max_length: int = param(512, "truncate prompt+response to this many tokens (keeps the prompt's end)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")


# loss.loss_type: the pair losses (GPO's f, IPO, SLiC-HF) and the listwise ones (K-way rankings)
GPO_TYPES = ("hinge", "squared", "exponential", "truncated_quadratic", "savage")  # sigmoid is GPO's logistic
PAIR_TYPES = ("sigmoid", "ipo", *GPO_TYPES, "slic")
LISTWISE_TYPES = ("pro", "infonca", "nca")
LossType = Literal[
    "sigmoid",
    "ipo",
    "hinge",
    "squared",
    "exponential",
    "truncated_quadratic",
    "savage",
    "slic",
    "pro",
    "infonca",
    "nca",
]


@dataclass
class DPOLossConfig:
    loss_type: LossType = param(
        "sigmoid",
        "sigmoid: DPO / cDPO / R-DPO; ipo: IPO; hinge, squared, exponential, truncated_quadratic, savage: GPO "
        "with that f; slic: SLiC-HF; listwise on K responses per prompt (offline: rankings data; online: all K "
        "samples ranked): pro (Plackett–Luce), infonca, nca",
    )
    beta: float = param(0.1, "β, inverse temperature of the implicit reward β log π/π0")
    label_smoothing: float = param(0.0, "ε of conservative DPO (sigmoid and the GPO types): ℓ = (1 − ε) f(z) + ε f(−z)")
    length_alpha: float = param(
        0.0, "α of length-regularized DPO: α|y| (tokens) is subtracted from each reward (sigmoid, ipo, GPO types)"
    )
    length_normalize: bool = param(
        False, "use the mean log-prob per response token instead of the sum (policy and reference alike)"
    )
    slic_delta: float = param(1.0, "slic: the calibration margin δ of max(0, δ − m)")
    slic_reference: bool = param(
        False, "slic: the margin m is the log-ratio margin against π0 (false: log π(y_w) − log π(y_l), the paper's)"
    )
    sft_coef: float = param(0.0, "slic, pro: λ of the SFT term −λ log π(y_best | x)")
    infonca_alpha: float = param(1.0, "infonca, nca: temperature α of the target softmax(scores/α)")
    chunk_size: int = param(1024, "response tokens projected to the vocabulary at once (chunked log-softmax)")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError("loss.beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("loss.label_smoothing must be in [0, 0.5)")
        if self.label_smoothing and self.loss_type not in ("sigmoid", *GPO_TYPES):
            raise ValueError("loss.label_smoothing applies to loss_type=sigmoid and the GPO types only")
        if self.length_alpha and self.loss_type not in ("sigmoid", "ipo", *GPO_TYPES):
            raise ValueError("loss.length_alpha applies to loss_type=sigmoid, ipo and the GPO types only")
        if self.slic_delta <= 0 or self.sft_coef < 0 or self.infonca_alpha <= 0:
            raise ValueError("loss.slic_delta and loss.infonca_alpha must be > 0, loss.sft_coef ≥ 0")
        if self.chunk_size < 1:
            raise ValueError("loss.chunk_size must be ≥ 1")

    @property
    def listwise(self) -> bool:
        return self.loss_type in LISTWISE_TYPES


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

    length_groups: int = param(
        1,
        "online: forward passes per micro-batch, its sequences sorted by length (self-play's train.length_groups)",
        ge=1,
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
    if data.kind == "rankings":
        data = _ranking_pairs(data, cfg.ranking_pairs)
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


def _ranking_pairs(data, which: str):
    """Normalized rankings as normalized pairs (:meth:`prefgame.data.columns.Rankings.pairs`)."""
    from datasets import Dataset

    from prefgame.data.chat import messages_of
    from prefgame.data.columns import rankings_of
    from prefgame.data.schema import PAIRS_FEATURES

    pairs = rankings_of(data).pairs(which)
    rows = {name: [] for name in PAIRS_FEATURES}
    for x, c, r, sub in zip(pairs.prompts, pairs.chosen, pairs.rejected, pairs.subsets):
        messages = messages_of(x)
        rows["prompt_messages"].append(messages)
        rows["prompt"].append(next(m["content"] for m in reversed(messages) if m["role"] == "user"))
        rows["chosen"].append(c)
        rows["rejected"].append(r)
        rows["label"].append(1.0)
        rows["subset"].append(sub)
        rows["source"].append("")
        rows["score_chosen"].append(None)
        rows["score_rejected"].append(None)
    return dataclasses.replace(data, kind="pairs", dataset=Dataset.from_dict(rows, features=PAIRS_FEATURES))


@dataclass
class ListSet:
    """Tokenized K-way rankings (each list best first, K may vary) and π0's log-probs of every response."""

    prompt_ids: list[list[int]]
    response_ids: list[list[list[int]]]  # each best first
    scores: list[np.ndarray]  # each (K,) non-increasing
    ref: torch.Tensor | None = None  # (N, K_max) log π0(y_k | x), 0 at padding

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def take(self, idx: Sequence[int]) -> ListSet:
        return ListSet(
            [self.prompt_ids[i] for i in idx], [self.response_ids[i] for i in idx], [self.scores[i] for i in idx]
        )

    @property
    def k_max(self) -> int:
        return max((len(r) for r in self.response_ids), default=0)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of each list's longest sequence."""
        return np.array([len(p) + max(len(y) for y in ys) for p, ys in zip(self.prompt_ids, self.response_ids)])

    def mask(self, idx: Sequence[int], k_max: int) -> torch.Tensor:
        sizes = torch.tensor([len(self.response_ids[i]) for i in idx])
        return torch.arange(k_max)[None, :] < sizes[:, None]  # (b, K_max)

    def score_matrix(self, idx: Sequence[int], k_max: int) -> torch.Tensor:
        out = torch.zeros(len(idx), k_max)
        for row, i in enumerate(idx):
            out[row, : len(self.scores[i])] = torch.as_tensor(self.scores[i], dtype=torch.float32)
        return out

    def token_counts(self, idx: Sequence[int], k_max: int) -> torch.Tensor:
        out = torch.ones(len(idx), k_max)
        for row, i in enumerate(idx):
            out[row, : len(self.response_ids[i])] = torch.tensor([float(len(y)) for y in self.response_ids[i]])
        return out

    def batch(self, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Every response of the lists ``idx``, list by list (best first), as one right-padded batch."""
        prompts = [self.prompt_ids[i] for i in idx for _ in self.response_ids[i]]
        responses = [y for i in idx for y in self.response_ids[i]]
        return build_pairs_batch(prompts, responses, pad_id)


def unflatten_lists(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(Σ K_i,) values of the lists' responses, list by list → (b, K_max), 0 at padding."""
    out = flat.new_zeros(mask.shape)
    out[mask.to(flat.device)] = flat
    return out


def load_list_set(cfg: DPODataConfig, tokenizer) -> tuple[ListSet, dict[str, int]]:
    """The K-way rankings of ``cfg.path`` (each list best first); lists whose scores all tie are dropped."""
    from prefgame.data.chat import messages_of
    from prefgame.data.columns import load_rankings

    ranked = load_rankings(cfg.path, cfg.split, skip_invalid=cfg.skip_invalid)
    if cfg.max_pairs:
        ranked = ranked.take(range(min(cfg.max_pairs, len(ranked))))
    lists = ListSet([], [], [])
    tied = 0
    for x, ys, scores in zip(ranked.prompts, ranked.responses, ranked.scores):
        if scores[0] == scores[-1]:
            tied += 1
            continue
        p_ids = encode_prompt(tokenizer, messages_of(x))
        cut = [truncate(p_ids, encode_response(tokenizer, y), cfg.max_length) for y in ys]
        p_ids = min((c[0] for c in cut), key=len)  # one prompt for all: the shortest cut
        lists.prompt_ids.append(p_ids)
        lists.response_ids.append([c[1][: cfg.max_length - len(p_ids)] for c in cut])
        lists.scores.append(scores)
    if not len(lists):
        raise DataError(f"{cfg.path}: no ranked list with distinct scores (all {tied} lists tie)")
    return lists, {"rows": len(ranked), "ties_dropped": tied, "tied_pairs": ranked.tied_pairs}


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


@torch.no_grad()
def list_logps(
    module: PairLogps, lists: ListSet, pad_id: int, *, batch_size: int, device, autocast=contextlib.nullcontext
) -> torch.Tensor:
    """log π(y_k | x) of every response of every list, (N, K_max) float32 on CPU (0 at padding), in eval
    mode; ``batch_size`` lists per forward pass, in order of length."""
    was_training = module.training
    module.eval()
    k_max = lists.k_max
    out = torch.zeros(len(lists), k_max)
    order = np.argsort(lists.lengths, kind="stable")
    for start in range(0, len(lists), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in lists.batch(idx, pad_id).items()}
        with autocast():
            flat = module(**batch).float().cpu()  # (Σ K,)
        out[idx] = unflatten_lists(flat, lists.mask(idx, k_max))
    module.train(was_training)
    return out


def evaluate_lists(module: PairLogps, lists: ListSet, cfg: DPOConfig, pad_id: int, device, autocast) -> dict:
    """Eval loss and ranking metrics (ordered-pair accuracy, top-1, margins) on held-out lists."""
    bs = cfg.train.micro_batch_size
    policy = list_logps(module, lists, pad_id, batch_size=bs, device=device, autocast=autocast)
    idx, k_max = range(len(lists)), lists.k_max
    mask, scores = lists.mask(idx, k_max), lists.score_matrix(idx, k_max)
    ref = lists.ref
    if cfg.loss.length_normalize:
        n = lists.token_counts(idx, k_max)
        policy, ref = policy / n, ref / n
    loss, metrics = list_loss(cfg.loss, policy, ref, scores, mask)
    return {"eval_loss": float(loss), **{f"eval_{k}": float(v) for k, v in metrics.items()}}


def response_token_counts(pairs: PairSet, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor([len(pairs.chosen_ids[i]) for i in idx], dtype=torch.float32),
        torch.tensor([len(pairs.rejected_ids[i]) for i in idx], dtype=torch.float32),
    )


def pair_loss(
    cfg: DPOLossConfig, policy_chosen, policy_rejected, ref_chosen, ref_rejected, *,
    chosen_lengths, rejected_lengths, normalizer=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The pair loss of ``loss.loss_type`` (:data:`PAIR_TYPES`) on (B,) log-probs; a listwise type
    on a pair is its K = 2 case (pro: DPO; infonca, nca: a hard target on the pair)."""
    args = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    t = cfg.loss_type
    if t in ("sigmoid", "ipo"):
        return dpo_loss(
            *args, beta=cfg.beta, loss_type=t, label_smoothing=cfg.label_smoothing, chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths, length_alpha=cfg.length_alpha, normalizer=normalizer,
        )  # fmt: skip
    if t in GPO_TYPES:
        return gpo_loss(
            *args, beta=cfg.beta, f=t, label_smoothing=cfg.label_smoothing, chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths, length_alpha=cfg.length_alpha, normalizer=normalizer,
        )  # fmt: skip
    if t == "slic":
        return slic_loss(
            *args, delta=cfg.slic_delta, sft_coef=cfg.sft_coef, use_reference=cfg.slic_reference, beta=cfg.beta,
            normalizer=normalizer,
        )  # fmt: skip
    policy, ref = torch.stack(args[:2], -1), torch.stack(args[2:], -1)  # (B, 2), best first
    scores = torch.tensor([1.0, 0.0], dtype=policy.dtype, device=policy.device).expand_as(policy)
    return list_loss(cfg, policy, ref, scores, None, normalizer=normalizer)


def list_loss(
    cfg: DPOLossConfig, policy, ref, scores, mask, *, normalizer=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The listwise loss of ``loss.loss_type`` on (B, K) log-probs in ranked order (best first), with
    the (B, K) ``scores`` that ranked them (infonca, nca: the target softmax(scores/α)) and ``mask``."""
    if cfg.loss_type == "pro":
        return pro_loss(policy, ref, beta=cfg.beta, sft_coef=cfg.sft_coef, mask=mask, normalizer=normalizer)
    fn = {"infonca": infonca_loss, "nca": nca_loss}[cfg.loss_type]
    return fn(policy, ref, scores, beta=cfg.beta, alpha=cfg.infonca_alpha, mask=mask, normalizer=normalizer)


def evaluate_pairs(module: PairLogps, pairs: PairSet, cfg: DPOConfig, pad_id: int, device, autocast) -> dict:
    """Eval loss, reward accuracy, margins and mean implicit rewards on held-out pairs."""
    bs = cfg.train.micro_batch_size
    chosen, rejected = pair_logps(module, pairs, pad_id, batch_size=bs, device=device, autocast=autocast)
    lc, lr = response_token_counts(pairs, range(len(pairs)))
    loss, metrics = pair_loss(
        cfg.loss, chosen, rejected, pairs.ref_chosen, pairs.ref_rejected, chosen_lengths=lc, rejected_lengths=lr
    )
    return {"eval_loss": float(loss), **{f"eval_{k}": float(v) for k, v in metrics.items()}}


# ---------------------------------------------------------------------------------------------- offline


def offline_micro_loss(wrapper, train_set, cfg: DPOConfig, pad_id: int, device):
    """The loss of one micro-batch of an offline DPO step, as :func:`~prefgame.train.engine.optimizer_step`
    calls it: ``micro_loss(mb)`` runs the pairs (or, for a listwise ``loss.loss_type`` on rankings, the
    ranked lists) ``mb`` of ``train_set`` (whose π0 log-probs are computed) through ``wrapper`` (the prepared
    :class:`PairLogps`) and returns (loss, metrics), the loss a sum over the micro-batch divided by the step's
    global pair or list count (``train.batch_size``)."""
    normalizer, listwise = cfg.train.batch_size, isinstance(train_set, ListSet)

    def list_micro_loss(mb):
        batch = {key: v.to(device) for key, v in train_set.batch(mb, pad_id).items()}
        k_max = max(len(train_set.response_ids[i]) for i in mb)
        mask = train_set.mask(mb, k_max).to(device)
        policy = unflatten_lists(wrapper(**batch).float(), mask)  # (b, K)
        ref = train_set.ref[mb, :k_max].to(device)
        if cfg.loss.length_normalize:
            n = train_set.token_counts(mb, k_max).to(device)
            policy, ref = policy / n, ref / n
        scores = train_set.score_matrix(mb, k_max).to(device)
        return list_loss(cfg.loss, policy, ref, scores, mask, normalizer=normalizer)  # Σ / global list count

    def micro_loss(mb):
        if listwise:
            return list_micro_loss(mb)
        batch = {key: v.to(device) for key, v in train_set.batch(mb, pad_id).items()}
        lc, lr = response_token_counts(train_set, mb)
        logps = wrapper(**batch).float()  # (2b,) chosen then rejected
        return pair_loss(
            cfg.loss,
            logps[: len(mb)],
            logps[len(mb) :],
            train_set.ref_chosen[mb].to(device),
            train_set.ref_rejected[mb].to(device),
            chosen_lengths=lc.to(device),
            rejected_lengths=lr.to(device),
            normalizer=normalizer,
        )  # a sum over the micro-batch / the global pair count

    return micro_loss


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
    """(train pairs, held-out pairs, data info): ``data.eval_fraction`` held out by a seeded permutation.
    A listwise loss on K-way rankings data gets ranked lists (:class:`ListSet`) instead of pairs."""
    if cfg.loss.listwise and _holds_rankings(cfg.data):
        pairs, data_info = load_list_set(cfg.data, tok)
    else:
        pairs, data_info = load_pair_set(cfg.data, tok)
    order = np.random.default_rng(cfg.train.seed).permutation(len(pairs))
    n_eval = int(round(cfg.data.eval_fraction * len(pairs)))
    eval_set, train_set = pairs.take(order[:n_eval]), pairs.take(order[n_eval:])
    if not len(train_set):
        raise DataError(f"{cfg.data.path}: no training pairs left after holding out {n_eval} for evaluation")
    return train_set, eval_set, data_info


def _holds_rankings(cfg: DPODataConfig) -> bool:
    from prefgame.data.formats import detect_format
    from prefgame.data.load import load_raw

    if cfg.format:
        return cfg.format == "rankings"
    raw = load_raw(cfg.path, split=cfg.split)
    return len(raw) > 0 and detect_format(raw.column_names, raw[0]) == "rankings"


def drawn_indices(n_examples: int, tc: TrainConfig) -> np.ndarray:
    """(M,) sorted: the examples that the run's steps 0 … max_steps − 1 draw (:func:`step_indices`), the
    only training examples whose π0 log-probs it reads."""
    steps = [step_indices(n_examples, tc.batch_size, tc.seed, step) for step in range(tc.max_steps)]
    return np.unique(np.concatenate(steps)) if steps else np.zeros(0, dtype=np.int64)


def _reference_logps(cfg: DPOConfig, module: PairLogps, parts: Sequence[tuple], pad_id: int, acc) -> None:
    """π0 = the initial policy (with LoRA: its base, adapters disabled): its log-probs of the pairs, computed
    once (no reference model stays in memory), stored on each part as ``ref_chosen`` / ``ref_rejected``
    (ranked lists: ``ref``, (N, K_max)). ``parts`` holds (part, rows): the rows of the part whose
    log-probs are needed (None: all); the others are NaN."""
    batch_size = cfg.reference_batch_size or 4 * cfg.train.micro_batch_size
    with base_weights(module.model):
        for part, rows in parts:
            sub = part if rows is None else part.take(rows)
            if not len(sub):
                continue
            rows = np.arange(len(part)) if rows is None else rows
            if isinstance(part, ListSet):
                ref = list_logps(module, sub, pad_id, batch_size=batch_size, device=acc.device, autocast=acc.autocast)
                part.ref = torch.full((len(part), part.k_max), math.nan)
                part.ref[rows] = torch.nn.functional.pad(ref, (0, part.k_max - ref.shape[1]))  # 0 at padding
            else:
                chosen, rejected = pair_logps(
                    module, sub, pad_id, batch_size=batch_size, device=acc.device, autocast=acc.autocast
                )
                part.ref_chosen, part.ref_rejected = (torch.full((len(part),), math.nan) for _ in range(2))
                part.ref_chosen[rows], part.ref_rejected[rows] = chosen, rejected


def train_offline(cfg: DPOConfig, out: RunDir, log) -> dict:
    t_start = time.perf_counter()
    tc = cfg.train
    seed_everything(tc.seed)
    acc = make_accelerator(tc, out.path, batch_size=tc.batch_size)
    run = begin_run(out, cfg, acc, job="dpo", resume=cfg.resume, report_to=tc.report_to)
    tok = load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path)
    if cfg.lora.enabled and cfg.policy.init_from:
        raise ConfigError("policy.init_from needs lora.enabled=false: with LoRA π0 is the policy's own base")
    start = cfg.policy.init_from or cfg.policy.name_or_path
    model = load_trainable_lm(start, cfg.policy.dtype, Precision.of(tc, acc), key="policy.dtype")
    model = apply_lora(model, cfg.lora, seed=tc.seed)
    trained = trained_state(model)  # what checkpoints hold: the model, or its adapters
    train_set, eval_set, data_info = _split_pairs(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        f"dpo offline ({cfg.loss.loss_type}, β={cfg.loss.beta}): {len(train_set)} train / {len(eval_set)} eval "
        f"{'ranked lists' if isinstance(train_set, ListSet) else 'pairs'} ({data_info['ties_dropped']} ties dropped), "
        f"model {n_params / 1e6:.2f}M parameters"
    )
    module = PairLogps(model, chunk_size=cfg.loss.chunk_size, length_normalize=cfg.loss.length_normalize)
    model.to(acc.device)

    t_ref = time.perf_counter()
    drawn = drawn_indices(len(train_set), tc)  # a short run reads the log-probs of part of the training set
    _reference_logps(cfg, module, ((train_set, drawn), (eval_set, None)), tok.pad_token_id, acc)
    ref_seconds = time.perf_counter() - t_ref

    optimizer, scheduler = make_optimizer(module.parameters(), tc, tc.max_steps)
    wrapper, optimizer = sharding.prepare(acc, module, optimizer)

    listwise = isinstance(train_set, ListSet)
    evaluate_fn = evaluate_lists if listwise else evaluate_pairs

    def evaluate() -> dict:  # every process (under FSDP the layers gather their shards in their forward)
        with sharding.gathered(acc):
            return evaluate_fn(module, eval_set, cfg, tok.pad_token_id, acc.device, acc.autocast)

    initial_eval = evaluate() if len(eval_set) else {}  # π0's figures: before a checkpoint replaces the weights
    start_step = resume_state(run, out, modules={"model": trained}, optimizer=optimizer, scheduler=scheduler)["step"]

    lengths = train_set.lengths
    guard = NonFiniteGuard(tc.max_nonfinite_steps)
    progress = Progress(tc.max_steps - start_step, "dpo", log)
    t_train = time.perf_counter()

    micro_loss = offline_micro_loss(wrapper, train_set, cfg, tok.pad_token_id, acc.device)

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
        "train_pairs_drawn": len(drawn),
        "eval_pairs": len(eval_set),
        "data": "ranked lists" if isinstance(train_set, ListSet) else "pairs",
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


def ranked_groups(win_rates: torch.Tensor, k: int) -> np.ndarray:
    """For each prompt's K samples (prompt-major (M·K,) leave-one-out win rates): the global indices of
    its samples from the highest win rate to the lowest (equal rates in sample order), (K, M') with
    one column per prompt; prompts whose samples all tie are skipped."""
    groups = win_rates.view(-1, k).numpy()  # (M, K)
    order = np.argsort(-groups, axis=1, kind="stable")  # (M, K) best first
    keep = groups.max(1) > groups.min(1)
    base = np.arange(groups.shape[0])[:, None] * k
    return (base + order)[keep].T  # (K, M')


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
    ranked_win = win - cfg.online.missing_eos_penalty * cut  # (M·K,)
    ref = sp.sequence_logps(sp.ref, ys)  # (M·K,) log π0(y | x)
    n_tokens = torch.tensor([len(r) for r in ys.response_ids], dtype=torch.float32)
    if loss.listwise:  # every sample of a prompt, ranked by its win rate: one K-way list per prompt
        columns = ranked_groups(ranked_win, k)  # (K, M')

        def list_fn(mb, cols, normalizer):
            idx = columns[:, mb].T  # (b, K) best first
            x = cols[0]
            policy, r = torch.stack(cols, -1), ref[idx].to(x)  # (b, K)
            if loss.length_normalize:
                policy, r = policy / n_tokens[idx].to(x), r / n_tokens[idx].to(x)
            return list_loss(loss, policy, r, ranked_win[idx].to(x), None, normalizer=normalizer)

        info = sp.optimize(Examples(ys, columns, list_fn), (seed, t, STEP_ORDER))
        gap = float((win[columns[0]] - win[columns[-1]]).mean()) if columns.shape[1] else math.nan
        return {"lists": columns.shape[1], "win_rate_gap": gap, "missing_eos": float(cut.mean()), **info}
    chosen, rejected = best_worst_pairs(ranked_win, k)

    def loss_fn(mb, cols, normalizer):
        w, l = chosen[mb], rejected[mb]
        x = cols[0]
        lw, ll = n_tokens[w].to(x), n_tokens[l].to(x)
        pc, pr, rc, rr = cols[0], cols[1], ref[w].to(x), ref[l].to(x)
        if loss.length_normalize:  # mean log-prob per response token, as in the offline mode
            pc, pr, rc, rr = pc / lw, pr / ll, rc / lw, rr / ll
        return pair_loss(loss, pc, pr, rc, rr, chosen_lengths=lw, rejected_lengths=ll, normalizer=normalizer)

    info = sp.optimize(Examples(ys, np.stack([chosen, rejected]), loss_fn), (seed, t, STEP_ORDER))
    gap = float((win[chosen] - win[rejected]).mean())
    return {"pairs": len(chosen), "win_rate_gap": gap, "missing_eos": float(cut.mean()), **info}


def train_online(cfg: DPOConfig, out: RunDir, log, *, oracle: PreferenceOracle | None = None) -> dict:
    from prefgame.train.selfplay import Iterations, SelfPlay

    t_start = time.perf_counter()
    seed_everything(cfg.train.seed)
    rounds = cfg.online.rounds
    plan = Iterations(rounds, cfg.online.steps_per_round, cfg.train.batch_size, length_groups=cfg.online.length_groups)
    sp = SelfPlay(cfg, out, log, oracle=oracle, plan=plan, chunk_size=cfg.loss.chunk_size)
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
