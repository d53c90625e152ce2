"""PPO with a Bradley–Terry reward model (``prefgame ppo``, docs/design.md §3.4): the RLHF baseline.

Each iteration t:

1. draws ``train.rollout_batch_size`` prompts (a function of (seed, t)) and samples one response per
   prompt from the current policy π_θ with the KV cache (:func:`prefgame.game.lm_sampling.generate`);
2. scores every response with the reward model, r(x, y) (a BT or gated preference model's
   :meth:`PreferenceModel.reward`, or the one output of a sequence-classification reward model,
   :class:`~prefgame.models.sequence_classifier.SequenceClassifierReward`), and
   subtracts ``reward.missing_eos_penalty`` from responses cut at ``sampling.max_new_tokens``
   without a stop token or stop string (``sampling.eos_token_ids``, ``sampling.stop``);
3. one no-gradient pass gives log π_old(y_t), V_old(t) and the token entropy; one pass of the frozen
   reference π0 gives log π0(y_t);
4. token rewards: with ``ppo.kl_in_loss`` (default) the score alone on the last token and β·KL added to
   the loss (:func:`~prefgame.losses.kl_loss`, ``ppo.kl_coef`` = β), so β weighs KL against the whitened
   policy loss and KL to π0 falls as β grows; otherwise r_t = −β(log π_old − log π0)(y_t) + [t = last]·score
   (:func:`~prefgame.losses.kl_penalized_rewards`); optional whitening of the token
   rewards (``ppo.whiten_rewards``, scale only); GAE advantages and returns
   (:func:`~prefgame.losses.compute_gae`), advantages whitened over the whole rollout (moments summed over
   processes, :func:`~prefgame.losses.rl.whiten_from_moments`);
5. ``ppo.epochs`` passes over the rollout in mini-batches of ``train.mini_batch_size`` sequences (one
   optimizer step each, sorted by length and cut into micro-batches of ``train.micro_batch_size``: less
   padding, the same gradient), minimizing
   clipped policy loss + ``ppo.vf_coef`` · clipped value loss (+ β·KL in the loss).

Value function: a linear head on the policy's last hidden state (one shared trunk, one forward pass
for log-probabilities and values). V(t) is read from the hidden state that predicts token t. The head
starts at zero, so value-loss gradients reach the trunk only as the head grows; ``ppo.vf_coef``
scales them. (A separate value model would double the compute per step; on the arena the shared trunk
trains as well and is twice as fast.)

Token losses are sums over the mini-batch's response tokens divided by its global token count, so
micro-batch × accumulation (and data-parallel processes) equals one full mini-batch. Resume is exact
at iteration granularity: every random draw comes from a generator seeded by (seed, iteration,
purpose) and a checkpoint holds the policy (with LoRA: its adapters), its value head, the optimizer and
the scheduler.

Measurements every ``eval.every`` iterations on held-out prompts: mean reward, the Monte Carlo
sequence-level KL(π‖π0), response length and EOS rate; on the arena also the exact gold win rate
against π0 and the exploitability of the class distributions measured from samples
(:meth:`Arena.win_rate`, :meth:`Arena.exploitability`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from prefgame.arena.job import ArenaConfig
from prefgame.config import load_config, param
from prefgame.errors import PrefgameError
from prefgame.game.lm_sampling import Responses
from prefgame.lm import final_hidden, hidden_token_logps
from prefgame.lora import LoraConfig, active_model, trained_state
from prefgame.losses import (
    compute_gae,
    kl_loss,
    kl_penalized_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
from prefgame.losses.rl import masked_moments, whiten_from_moments
from prefgame.pessimism import PessimismConfig
from prefgame.run import Resume, RunDir, overwrite_param, resume_param, run_job, seed_everything
from prefgame.train import sharding
from prefgame.train.engine import (
    OptimConfig,
    end_run,
    make_optimizer,
    optimizer_step,
    save_checkpoint,
)
from prefgame.train.policy import (
    EvalConfig,
    GenerationConfig,
    PolicyConfig,
    PolicyEvaluator,
    PolicyRuntime,
    PromptsConfig,
    measured_rows,
    run_iterations,
    summary_text,
)
from prefgame.train.precision import Precision
from prefgame.train.sft import save_model

# Purposes of the random streams; every stream is seeded by (seed, iteration, purpose).
# (8 and 9 are the evaluator's, prefgame.train.policy)
PROMPTS, ROLLOUT, ORDER, REF_STATS = 0, 1, 2, 5


# ---------------------------------------------------------------------------------------------- config


@dataclass
class PPORewardConfig:
    path: str = param(
        "",
        "the reward model: a sequence-classification reward model (folder or hub name, one output), or a BT "
        "(or gated) 'prefgame train-pm' output_dir or its model/ folder",
    )
    batch_size: int = param(256, "responses per reward-model forward pass")
    normalize: bool = param(
        True,
        "standardize r(x, y) with the mean and std of π0's rewards (BT rewards have an arbitrary offset and "
        "scale); kl_coef and missing_eos_penalty are then in units of π0's reward std",
    )
    normalize_samples: int = param(256, "π0 responses (on training prompts) that give the normalization")
    missing_eos_penalty: float = param(
        1.0, "subtracted from the score of a response cut without a stop token or string (0: none)"
    )
    pessimism: PessimismConfig = param(
        PessimismConfig, "a pessimistic reward: the linear LCB of a bt model (none: the reward as trained)"
    )


@dataclass
class PPOAlgoConfig:
    kl_coef: float = param(
        0.05, "β: weight of the KL(π‖π0) loss term (or of the per-token KL reward without kl_in_loss)"
    )
    kl_in_loss: bool = param(
        True,
        "add β·KL(π‖π0) to the loss (false: shape the reward with −β·KL per token; its pull on the policy is then "
        "a noisy policy-gradient estimate rescaled by advantage whitening, and on the arena KL rose again at β = 2)",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = param(
        "k2", "kl_in_loss: per-token estimator (losses.kl_loss); k2's gradient is ∇KL(π‖π0) on policy samples"
    )
    gamma: float = param(1.0, "discount γ of GAE")
    lam: float = param(0.95, "λ of GAE")
    clip_range: float = param(0.2, "ε of the clipped policy objective")
    clip_range_value: float = param(0.2, "ε_v of the clipped value objective")
    vf_coef: float = param(0.1, "weight of the value loss")
    epochs: int = param(2, "PPO epochs over each rollout batch")
    whiten_rewards: bool = param(False, "whiten the token rewards over the batch (scale only, mean kept)")
    whiten_advantages: bool = param(True, "whiten the advantages over the batch")

    def __post_init__(self) -> None:
        if self.kl_coef < 0 or self.clip_range <= 0 or self.clip_range_value <= 0 or self.vf_coef < 0:
            raise ValueError("ppo.kl_coef and ppo.vf_coef must be ≥ 0, the clip ranges > 0")
        if self.epochs < 1 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("ppo.epochs must be ≥ 1 and ppo.gamma, ppo.lam in [0, 1]")


@dataclass
class PPOTrainConfig(OptimConfig):
    """``train`` of PPO: the shared optimization settings, iterations, rollouts and their mini-batches."""

    lr: float = param(5e-4, "AdamW learning rate of policy and value head")
    warmup_steps: int = param(5, "linear learning-rate warm-up, in optimizer steps")
    schedule: Literal["constant", "cosine", "linear"] = param("constant", "learning-rate decay after warm-up")
    micro_batch_size: int = param(32, "sequences per forward pass (gradient accumulation)")
    iterations: int = param(20, "rollout + update iterations")
    rollout_batch_size: int = param(128, "prompts (one response each) per iteration, over all processes")
    mini_batch_size: int = param(64, "sequences per optimizer step (the rollout is split into these)")
    logprob_chunk_size: int = param(1024, "response rows projected to the vocabulary at a time")
    save_every: int = param(10, "checkpoint every N iterations (0: only the final model)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError("train.iterations must be ≥ 0")
        if min(self.rollout_batch_size, self.mini_batch_size, self.micro_batch_size) < 1:
            raise ValueError("train.rollout_batch_size, mini_batch_size and micro_batch_size must be ≥ 1")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("train.rollout_batch_size must be a multiple of train.mini_batch_size")


@dataclass
class PPOConfig:
    output_dir: str = param("runs/ppo", "where the policy, checkpoints, metrics and log are written")
    resume: Resume = resume_param("the last iteration checkpoint in output_dir")
    overwrite: bool = overwrite_param()
    num_threads: int = param(0, "CPU threads for PyTorch (0: PyTorch's default)")
    policy: PolicyConfig = param(PolicyConfig, "π0 (initial policy and frozen reference)")
    reward: PPORewardConfig = param(PPORewardConfig, "the reward model")
    prompts: PromptsConfig = param(PromptsConfig, "where prompts come from")
    arena: ArenaConfig = param(ArenaConfig, "the arena world (prompts.source=arena: exact gold measurements)")
    ppo: PPOAlgoConfig = param(PPOAlgoConfig, "the PPO objective")
    sampling: GenerationConfig = param(GenerationConfig, "response sampling")
    train: PPOTrainConfig = param(PPOTrainConfig, "optimization")
    eval: EvalConfig = param(EvalConfig, "measurements")
    lora: LoraConfig = param(
        LoraConfig, "LoRA adapters instead of full fine-tuning (the value head trains in full); π0 is the base"
    )


# ---------------------------------------------------------------------------------------------- model


class PolicyWithValue(nn.Module):
    """π_θ and V_φ on one trunk: forward → (log π(y_t) (B, T−1), V(t) (B, T−1)), 0 off the response."""

    def __init__(self, model: nn.Module, *, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.value_head = nn.Linear(model.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.chunk_size = chunk_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
        mask = response_mask[:, 1:].bool()  # (B, T−1): position t predicts response token t + 1
        hidden = final_hidden(self.model, input_ids, attention_mask)  # (B, T−1, H)
        return hidden_token_logps(self.model, hidden, input_ids, mask, chunk_size=self.chunk_size), self.values(
            hidden, mask
        )

    def values(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """V(t) from the hidden state that predicts token t + 1, (B, T−1) float32, 0 off ``mask``."""
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return torch.where(mask, values, 0.0)


@torch.no_grad()
def _token_entropy(model: nn.Module, hidden: Tensor, mask: Tensor, chunk_size: int) -> Tensor:
    """Entropy of π(· | context) at the response positions, (N,), ``chunk_size`` rows at a time."""
    weight = model.get_output_embeddings().weight
    rows = hidden[mask]  # (N, H)
    out = []
    for start in range(0, rows.shape[0], chunk_size):
        logp = torch.log_softmax((rows[start : start + chunk_size] @ weight.T).float(), dim=-1)  # (c, V)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- rollout


@dataclass
class Rollout:
    """One iteration's samples and their per-token quantities; token tensors are (B, T−1) and aligned
    with the right-padded batch :meth:`PPO.batch` builds (column t predicts token t + 1)."""

    responses: Responses
    mask: Tensor  # bool, response tokens
    old_logps: Tensor
    ref_logps: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    metrics: dict[str, float]


class PPO(PolicyRuntime):
    """State of one PPO run and its operations: rollout, optimize; the shared policy runtime, the reward
    model, the policy with its value head and their optimizer."""

    def __init__(self, cfg: PPOConfig, out: RunDir) -> None:
        tc = cfg.train
        if not cfg.reward.path:
            raise PrefgameError(
                "reward.path is empty: give a reward model (a sequence-classification model folder or hub name, "
                "or a 'prefgame train-pm' output of kind bt)"
            )
        super().__init__(
            cfg, out.path, batch_size=tc.mini_batch_size, batch_key="train.mini_batch_size",
            arena=cfg.prompts.source == "arena", chunk_size=tc.logprob_chunk_size,
        )  # fmt: skip
        if tc.rollout_batch_size % self.acc.num_processes:
            raise PrefgameError(
                f"train.rollout_batch_size={tc.rollout_batch_size} is not divisible by the "
                f"{self.acc.num_processes} processes; choose a multiple"
            )
        self.reward_model = _load_reward_model(cfg.reward, self.acc.device, Precision.of(tc, self.acc))
        self.module = PolicyWithValue(self.policy, chunk_size=tc.logprob_chunk_size)
        steps = tc.iterations * cfg.ppo.epochs * (tc.rollout_batch_size // tc.mini_batch_size)
        self.optimizer, self.scheduler = make_optimizer(self.module.parameters(), tc, steps)
        self.wrapper, self.optimizer = sharding.prepare(self.acc, self.module, self.optimizer)
        # Under FSDP every process makes the same forward passes (each layer gathers its shards in step),
        # so every process samples and evaluates the iteration's whole rollout, as one process does, and
        # each optimizer step takes its share of a mini-batch drawn from the whole rollout. Under DDP each
        # process samples its own share of the prompts (with a seed of its own) and steps on its own rows.
        self.whole_rollout = sharding.is_fsdp(self.acc)
        self.steps_done = 0  # optimizer steps taken (for messages)
        self.score_shift, self.score_scale = self._score_normalization()

    def _score_normalization(self) -> tuple[float, float]:
        """(mean, std) of r(x, y) over π0 samples on training prompts; (0, 1) when not normalizing.
        Deterministic in the seed, so every process and a resumed run compute the same numbers."""
        rc = self.cfg.reward
        if not rc.normalize:
            return 0.0, 1.0
        rng = np.random.default_rng([self.cfg.train.seed, 0, REF_STATS])
        idx = rng.choice(len(self.train_prompts), size=rc.normalize_samples, replace=True)
        ys = self.sample([self.train_prompts[i] for i in idx], (self.cfg.train.seed, 0, REF_STATS), model=self.ref)
        raw = self.scores(ys).double()
        return float(raw.mean()), float(raw.std().clamp(min=1e-6)) if len(raw) > 1 else 1.0

    # -- operations ---------------------------------------------------------------------------------
    def iteration_prompts(self, t: int) -> list[str]:
        """The prompts this process samples in iteration t: its share, or all of them (:attr:`whole_rollout`)."""
        rng = np.random.default_rng([self.cfg.train.seed, t, PROMPTS])
        n = self.cfg.train.rollout_batch_size
        idx = rng.choice(len(self.train_prompts), size=n, replace=n > len(self.train_prompts))
        prompts = [self.train_prompts[i] for i in idx]
        return prompts if self.whole_rollout else prompts[self.acc.process_index :: self.acc.num_processes]

    @torch.no_grad()
    def scores(self, responses: Responses) -> Tensor:
        """r(x, y) of the reward model, (N,) float32 on CPU."""
        return self.reward_model.reward(responses.prompts, responses.texts).float().cpu()

    @torch.no_grad()
    def rollout(self, t: int) -> Rollout:
        """Sample, score, and compute the per-token rewards, advantages and returns of iteration t."""
        cfg, acc, p = self.cfg, self.acc, self.cfg.ppo
        share = 0 if self.whole_rollout else acc.process_index  # the whole rollout: one process's seed
        ys = self.sample(self.iteration_prompts(t), (cfg.train.seed, t, ROLLOUT, share))
        raw_scores = self.scores(ys)  # (B,)
        scores = (raw_scores - self.score_shift) / self.score_scale
        full = self.batch(ys, range(len(ys)))
        mask = full["response_mask"][:, 1:].bool()  # (B, T−1)
        old_logps, values, ref_logps = (torch.zeros(mask.shape, device=acc.device) for _ in range(3))
        entropies = []
        self.module.eval()
        chunk = cfg.train.logprob_chunk_size
        with sharding.gathered(acc):  # under FSDP the policy's root parameters, for the direct calls below
            for start in range(0, len(ys), cfg.train.micro_batch_size):
                rows = slice(start, start + cfg.train.micro_batch_size)
                mb = {k: v[rows] for k, v in full.items()}
                with acc.autocast():
                    hidden = final_hidden(self.policy, mb["input_ids"], mb["attention_mask"])  # (b, T−1, H)
                    old_logps[rows] = hidden_token_logps(
                        self.policy, hidden, mb["input_ids"], mask[rows], chunk_size=chunk
                    ).float()
                    values[rows] = self.module.values(hidden, mask[rows])
                    entropies.append(_token_entropy(self.policy, hidden, mask[rows], chunk))
                    with active_model(self.ref) as ref:
                        ref_hidden = final_hidden(ref, mb["input_ids"], mb["attention_mask"])
                        ref_logps[rows] = hidden_token_logps(
                            ref, ref_hidden, mb["input_ids"], mask[rows], chunk_size=chunk
                        ).float()
        self.module.train()
        eos_missing = self.eos_missing(ys).to(acc.device)
        penalty = cfg.reward.missing_eos_penalty or None
        kl_coef = 0.0 if p.kl_in_loss else p.kl_coef
        rewards, info = kl_penalized_rewards(
            scores.to(acc.device), old_logps, ref_logps, mask, kl_coef=kl_coef,
            eos_missing=eos_missing, missing_eos_penalty=penalty,
        )  # fmt: skip
        if p.whiten_rewards:
            rewards = self.whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, gamma=p.gamma, lam=p.lam)
        if p.whiten_advantages:
            advantages = self.whiten(advantages, mask)
        metrics = {
            "score": float(raw_scores.mean()),
            "score_normalized": float(scores.mean()),
            "kl": float(info["kl"]),
            "non_score_reward": float(info["non_score_reward"]),
            "entropy": float(torch.cat(entropies).mean()),
            "response_tokens": float(mask.sum(-1).float().mean()),
            "eos_rate": 1.0 - float(eos_missing.float().mean()),
            "value_mean": float(masked_mean(values, mask)),
            "return_mean": float(masked_mean(returns, mask)),
        }
        return Rollout(ys, mask, old_logps, ref_logps, values, advantages, returns, metrics)

    def whiten(self, x: Tensor, mask: Tensor, *, shift_mean: bool = True) -> Tensor:
        """Whiten over the iteration's whole rollout: with several processes each holding its share the
        moments are summed over them, so every process uses the global mean and variance (as one process
        with the full batch)."""
        moments = masked_moments(x, mask)
        if self.acc.num_processes > 1 and not self.whole_rollout:
            moments = self.acc.reduce(moments.to(self.acc.device), reduction="sum")
        return whiten_from_moments(x, mask, moments, shift_mean=shift_mean)

    def micro_loss(self, ro: Rollout, rows: np.ndarray, normalizer: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a micro-batch: a sum over its response tokens divided by ``normalizer``."""
        p = self.cfg.ppo
        batch = self.batch(ro.responses, rows)
        width = batch["input_ids"].shape[1] - 1  # rollout tensors are padded to the longest sequence
        idx = torch.as_tensor(rows, device=self.acc.device)

        def take(x: Tensor) -> Tensor:
            return x[idx, :width]

        mask = take(ro.mask)
        logps, values = self.wrapper(**batch)
        pg_loss, pg_m = ppo_policy_loss(
            logps, take(ro.old_logps), take(ro.advantages), mask, clip_range=p.clip_range, normalizer=normalizer
        )
        vf_loss, vf_m = ppo_value_loss(
            values, take(ro.values), take(ro.returns), mask, clip_range_value=p.clip_range_value, normalizer=normalizer
        )
        loss = pg_loss + p.vf_coef * vf_loss
        metrics = {"pg_loss": pg_loss.detach(), "vf_loss": vf_loss.detach(), **pg_m, **vf_m}
        if p.kl_in_loss:
            kl, kl_m = kl_loss(logps, take(ro.ref_logps), mask, estimator=p.kl_estimator, normalizer=normalizer)
            loss = loss + p.kl_coef * kl
            metrics["kl_loss"] = kl.detach()
        return loss, metrics

    def optimize(self, ro: Rollout, t: int) -> dict[str, float]:
        """``ppo.epochs`` passes over the rollout, one optimizer step per mini-batch (of the whole rollout,
        each process stepping on its share, or of this process's rows: :attr:`whole_rollout`)."""
        tc, acc = self.cfg.train, self.acc
        n_rows = len(ro.responses)
        mini = tc.mini_batch_size if self.whole_rollout else tc.mini_batch_size // acc.num_processes
        lengths = ro.responses.lengths  # (B,)
        sums: dict[str, float] = {}
        n_steps = 0
        for epoch in range(self.cfg.ppo.epochs):
            order = np.random.default_rng([tc.seed, t, ORDER, epoch]).permutation(n_rows)
            for start in range(0, n_rows, mini):
                rows = order[start : start + mini]
                rows = rows[np.argsort(lengths[rows], kind="stable")]  # length-grouped micro-batches, same step
                if self.whole_rollout:
                    rows = rows[acc.process_index :: acc.num_processes]
                step = self.step(ro, rows)
                for k, v in step.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_steps += 1
        return {k: v / max(n_steps, 1) for k, v in sums.items()}

    def step(self, ro: Rollout, rows: np.ndarray) -> dict[str, float]:
        """One optimizer step on the mini-batch ``rows`` (micro-batches × accumulation)."""
        tc, acc = self.cfg.train, self.acc
        n_tokens = acc.reduce(ro.mask[torch.as_tensor(rows)].sum().float(), reduction="sum")  # global tokens
        normalizer = float(n_tokens.clamp(min=1))
        micro = [rows[i : i + tc.micro_batch_size] for i in range(0, len(rows), tc.micro_batch_size)]
        result = optimizer_step(
            acc, self.wrapper, self.optimizer, self.scheduler, self.guard, self.steps_done, micro,
            lambda mb: self.micro_loss(ro, mb, normalizer), max_grad_norm=tc.max_grad_norm,
        )  # fmt: skip
        self.steps_done += 1
        return {"loss": result.loss, "grad_norm": result.grad_norm, **result.metrics}


def _load_reward_model(cfg: PPORewardConfig, device, precision: Precision):
    """The frozen reward model of ``reward.path`` (:func:`prefgame.models.load.load_model`) on ``device``: a
    sequence-classification reward model or a train-pm model of a reward kind (its backbone in
    :meth:`Precision.frozen_dtype` of its saved dtype), under ``reward.pessimism``."""
    from prefgame.models.kinds import kind_names
    from prefgame.models.load import load_model
    from prefgame.models.pessimistic import apply_pessimism

    model = load_model(cfg.path, device=device, batch_size=cfg.batch_size, backbone_dtype=precision.frozen_dtype)
    if not model.has_reward:
        rewards = " or ".join(kind_names(reward=True))
        raise PrefgameError(
            f"reward.path={cfg.path}: a '{model.kind}' model has no scalar reward; PPO needs kind {rewards} "
            "or a sequence-classification reward model"
        )
    model.requires_grad_(False)
    return apply_pessimism(model, cfg.pessimism)


def run(cfg: PPOConfig) -> dict:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return run_job(cfg.output_dir, lambda out, log: train(cfg, out, log), name="prefgame.ppo")


def train(cfg: PPOConfig, out: RunDir, log) -> dict:
    t_start = time.perf_counter()
    tc = cfg.train
    seed_everything(tc.seed)
    ppo = PPO(cfg, out)
    acc = ppo.acc
    trained = trained_state(ppo.module)  # what checkpoints hold: policy and value head, or adapters and value head
    run, state = ppo.start(
        out, "ppo", modules={"policy": trained}, optimizer=ppo.optimizer, scheduler=ppo.scheduler, unit="iteration"
    )
    n_params = sum(p.numel() for p in ppo.policy.parameters())
    log.info(
        f"ppo: {tc.iterations} iterations × {tc.rollout_batch_size} prompts, {cfg.ppo.epochs} epochs of "
        f"mini-batches of {tc.mini_batch_size}, β={cfg.ppo.kl_coef} ({'loss' if cfg.ppo.kl_in_loss else 'reward'}), "
        f"policy {n_params / 1e6:.2f}M parameters, reward model {ppo.reward_model.name}"
    )
    evaluator = PolicyEvaluator(ppo, scores=ppo.scores) if cfg.eval.prompts else None

    def iterate(t: int) -> dict[str, Any]:
        with ppo.reference():  # π0 on the accelerator for the rollout (policy.offload_reference)
            ro = ppo.rollout(t)
        return {**ro.metrics, **ppo.optimize(ro, t), "lr": ppo.scheduler.get_last_lr()[0]}

    def checkpoint(done: int) -> None:
        if tc.save_every and done % tc.save_every == 0 and done != tc.iterations:
            save_checkpoint(
                out.path, done, modules={"policy": trained}, optimizer=ppo.optimizer, scheduler=ppo.scheduler,
                state={}, keep=tc.keep_checkpoints,
            )  # fmt: skip

    train_seconds = run_iterations(
        ppo, out, run, name="ppo", unit="iteration", total=tc.iterations, start=state["step"], state=state,
        iterate=iterate, evaluator=evaluator, checkpoint=checkpoint, show=("score", "kl", "eval/gold_win_rate_vs_ref"),
        log=log,
    )  # fmt: skip
    metrics: dict[str, Any] = {
        "iterations": tc.iterations,
        "kl_coef": cfg.ppo.kl_coef,
        "kl_in_loss": cfg.ppo.kl_in_loss,
        "parameters": n_params,
        "reward_model": str(cfg.reward.path),
        **measured_rows(out),
        "nonfinite_steps": ppo.guard.total,
        "seconds": {
            "total": time.perf_counter() - t_start,
            "iterations": train_seconds,
            "measurements": evaluator.seconds if evaluator else 0.0,
        },
        "model_path": str(out.path / "model"),
    }
    weights = sharding.model_weights(ppo.policy)  # gathered on every process under FSDP
    head = sharding.model_weights(ppo.module.value_head) or ppo.module.value_head.state_dict()
    if acc.is_main_process:
        save_model(ppo.policy, ppo.tok, out.path / "model", state_dict=weights)
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(out.path / "value_head.safetensors"))
        out.write_metrics(metrics)
        log.info(summary_text(f"ppo done (β={cfg.ppo.kl_coef})", metrics) + f"; model in {metrics['model_path']}")
    end_run(acc, run)
    return metrics


# ---------------------------------------------------------------------------------------------- library entry


def ppo_config(config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> PPOConfig:
    return load_config(PPOConfig, config_file, list(overrides))


# The quickstart's budget: 12 iterations, measured only before the first and after the last, on 120
# held-out prompts. Its cost and results: docs/ppo.md.
QUICKSTART: tuple[str, ...] = (
    "train.iterations=12",
    "train.save_every=0",
    "eval.every=0",
    "eval.prompts=120",
    "reward.normalize_samples=128",
)


def train_ppo_arena(
    pi0_path: str | Path,
    reward_model_path: str | Path,
    output_dir: str | Path = "runs/ppo",
    *,
    kl_coef: float | None = None,
    quick: bool = True,
    overrides: Sequence[str] = (),
    quiet: bool = True,
) -> dict[str, Any]:
    """PPO from the π0 folder ``pi0_path`` against the BT reward model at ``reward_model_path`` on the
    arena prompts. Settings: the arena defaults of :class:`PPOConfig` (configs/ppo/arena.yaml holds the
    same values), then :data:`QUICKSTART` when ``quick``, then ``kl_coef`` (β) and ``overrides``
    (``key=value`` strings). Returns the final metrics, with ``model_path`` the trained policy's folder."""
    args = [f"policy.name_or_path={pi0_path}", f"reward.path={reward_model_path}", f"output_dir={output_dir}"]
    if quick:
        args += QUICKSTART
    if kl_coef is not None:
        args.append(f"ppo.kl_coef={kl_coef}")
    cfg = ppo_config(None, [*args, *overrides])
    return run_job(cfg.output_dir, lambda out, log: train(cfg, out, log), name="prefgame.ppo", quiet=quiet)
