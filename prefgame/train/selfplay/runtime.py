"""The runtime every self-play algorithm (and online DPO) is written with: the policy and its frozen
reference, the prompt pools, sampling, sequence log-probs, the optimizer steps and the state a
checkpoint holds. Every random draw comes from a stream seeded by (seed, iteration, purpose)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from prefgame.game.lm_sampling import Responses, _seed_int, generate
from prefgame.game.lm_selfplay import PreferenceCache, group_matrices, leave_one_out_win_rates
from prefgame.lm import ResponseLogps
from prefgame.losses import sequence_logprobs
from prefgame.oracle import PreferenceOracle
from prefgame.run import RunDir
from prefgame.train.engine import (
    MetricMeter,
    NonFiniteGuard,
    local_micro_batches,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    step_indices,
)
from prefgame.train.policy import load_policy, prompt_pools, response_batch, sequence_logps
from prefgame.train.selfplay.oracles import build_oracle
from prefgame.train.selfplay.registry import ALGORITHMS
from prefgame.train.selfplay.vllm import VLLMSampler

if TYPE_CHECKING:
    from prefgame.train.selfplay.config import SelfPlayConfig

# Purposes of the random streams; every stream is seeded by (seed, iteration, purpose).
PROMPTS, POLICY_SAMPLES, MIXTURE_SAMPLES, PAIR_LABELS, STEP_ORDER = 0, 1, 2, 3, 4
HALF_POLICY_SAMPLES, HALF_PAIR_LABELS, HALF_STEP_ORDER, EVAL_SAMPLES, REF_SAMPLES = 5, 6, 7, 8, 9
ANCHOR_SAMPLES = 10


@dataclass
class Examples:
    """What one phase of an iteration trains on: ``columns[c, e]`` is the index (into ``responses``)
    of the c-th sequence of example e (1 column: single samples; 2: chosen/rejected pairs)."""

    responses: Responses
    columns: np.ndarray  # (C, E)
    loss_fn: Callable[[np.ndarray, list[torch.Tensor], int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class SelfPlay:
    """State of one self-play run and the operations every algorithm is written with."""

    def __init__(self, cfg: SelfPlayConfig, out: RunDir, log, *, oracle: PreferenceOracle | None = None) -> None:
        self.cfg, self.out, self.log = cfg, out, log
        tc = cfg.train
        self.acc = make_accelerator(tc, out.path, batch_size=tc.batch_size)
        self.tok, self.policy, self.ref = load_policy(
            cfg.policy, self.acc.device, gradient_checkpointing=tc.gradient_checkpointing
        )
        dtype = next(self.policy.parameters()).dtype
        self.arena = cfg.arena.build() if (cfg.prompts.source == "arena" or cfg.oracle.kind != "factory") else None
        self.oracle = oracle if oracle is not None else build_oracle(cfg.oracle, self.arena)
        self.wrapper = ResponseLogps(self.policy)
        self.optimizer, self.scheduler = make_optimizer(
            self.wrapper.parameters(), tc, tc.iterations * tc.steps_per_iteration
        )
        self.wrapper, self.optimizer = self.acc.prepare(self.wrapper, self.optimizer)
        self.guard = NonFiniteGuard(tc.max_nonfinite_steps)
        self.version = 0  # optimizer steps applied (tells the vLLM copy when it is stale)
        self.vllm = None
        if cfg.sampling.backend == "vllm":
            self.vllm = VLLMSampler(cfg.policy.name_or_path, self.tok, cfg.sampling, cfg.policy.dtype, tc.seed)
        self.train_prompts, self.eval_prompts = prompt_pools(
            cfg.prompts, self.arena, seed=tc.seed, n_eval=cfg.eval.prompts
        )
        # tail average of the policy weights (train.average_from): a frozen float32 copy (a running mean in
        # bf16 would round away the small updates), updated after each iteration
        self.average = None
        self.averaged = 0  # iterates in the average
        if tc.average_from >= 0:
            self.average = copy.deepcopy(self.policy).float().requires_grad_(False).eval()
        # the sampler runs the fp32 weights without autocast, as sequence_logps does only in this case
        self._fp32 = dtype == torch.float32 and self.acc.mixed_precision == "no"
        # modules an algorithm keeps across iterations (its spec's setup adds them); checkpointed
        self.extras: dict[str, torch.nn.Module] = {}
        spec = ALGORITHMS.get(cfg.algorithm)
        if spec is not None and spec.setup is not None:
            spec.setup(self)

    # -- operations the algorithms use --------------------------------------------------------------
    def iteration_prompts(self, t: int) -> list[str]:
        rng = np.random.default_rng([self.cfg.train.seed, t, PROMPTS])
        n = min(self.cfg.sampling.prompts_per_iteration, len(self.train_prompts))
        return [self.train_prompts[i] for i in rng.choice(len(self.train_prompts), size=n, replace=False)]

    def sample_with_win_rates(self, t: int, prefs: PreferenceCache) -> tuple[list[str], Responses, torch.Tensor]:
        """Iteration t's prompts, K samples per prompt from π_t, and each sample's win rate P̂(y ≻ π_t):
        the mean of the oracle's probabilities against the prompt's other K − 1 samples, (P·K,)."""
        prompts = self.iteration_prompts(t)
        ys = self.sample(prompts, (self.cfg.train.seed, t, POLICY_SAMPLES))
        mats = group_matrices(prefs, ys.prompts, ys.texts, self.cfg.sampling.samples_per_prompt)
        return prompts, ys, leave_one_out_win_rates(mats)

    def sample(
        self,
        prompts: Sequence[str],
        seed: tuple[int, ...],
        *,
        mixture_coef: float = 0.0,
        n: int | None = None,
        model=None,
        temperature: float | None = None,
    ) -> Responses:
        """K responses per prompt from the policy (or ``model``), or from the mixture π^μ when β > 0, at
        ``temperature`` (None: ``sampling.temperature``; measurements pass 1, the policy itself).

        ``logps`` of the result are the sampler's log π(y|x) under the model that sampled them when they
        equal what :meth:`sequence_logps` computes for it (no mixture, temperature 1, fp32 without
        autocast), else None.
        """
        sc = self.cfg.sampling
        n = sc.samples_per_prompt if n is None else n
        temperature = sc.temperature if temperature is None else temperature
        if self.vllm is not None and mixture_coef == 0.0 and model is None:
            self.vllm.sync(self.acc.unwrap_model(self.wrapper).model, self.version)
            return self.vllm.generate(prompts, n=n, seed=seed, temperature=temperature)
        policy = self.policy if model is None else model
        ys = generate(
            policy,
            self.ref,
            self.tok,
            prompts,
            n=n,
            mixture_coef=mixture_coef,
            max_new_tokens=sc.max_new_tokens,
            seed=seed,
            temperature=temperature,
            batch_size=sc.batch_size,
            use_cache=sc.use_cache,
        )
        exact = mixture_coef == 0.0 and temperature == 1.0 and self._fp32
        return ys if exact else dataclasses.replace(ys, logps=None)

    def policy_logps(self, responses: Responses, model=None) -> torch.Tensor:
        """log π(y | x) of responses sampled from ``model`` (None: the current policy π_t), with no update
        since: the sampler's figures when it kept them (the same sums of the same token log-probs, up to
        float rounding), otherwise a forward pass (:meth:`sequence_logps`)."""
        if responses.logps is not None:
            return responses.logps.float()
        return self.sequence_logps(self.policy if model is None else model, responses)

    def sequence_logps(self, model, responses: Responses) -> torch.Tensor:
        """log π(y | x) summed over response tokens, (N,) float32, in eval mode, no gradient."""
        return sequence_logps(
            model, responses, self.tok.pad_token_id, batch_size=self.cfg.train.micro_batch_size,
            device=self.acc.device, autocast=self.acc.autocast,
        )  # fmt: skip

    def _batch(self, responses: Responses, idx) -> dict[str, torch.Tensor]:
        return response_batch(responses, idx, self.tok.pad_token_id, self.acc.device)

    def optimize(self, ex: Examples, seed: tuple[int, ...]) -> dict[str, float]:
        """``steps_per_iteration`` optimizer steps on ``ex``; each step's examples depend on ``seed`` only."""
        tc, acc = self.cfg.train, self.acc
        n_examples = ex.columns.shape[1]
        if n_examples == 0:
            self.log.warning("no training examples this iteration (all samples identical?); no update")
            return {}
        bs = min(tc.batch_size, n_examples)
        if tc.reset_optimizer:  # a fresh AdamW for this iteration's regression (step counts restart too)
            getattr(self.optimizer, "optimizer", self.optimizer).state.clear()
        self.policy.train()

        def micro_loss(mb):
            seq = ex.columns[:, mb]  # (C, b) sequence indices
            # a sequence in several pairs (inpo: K − 1 pairs each) runs once; indexing its log-prob
            # again sums the gradients of its uses, as separate rows would
            unique, where = np.unique(seq.reshape(-1), return_inverse=True)  # (U,), (C·b,)
            batch = self._batch(ex.responses, unique)
            token_logps = self.wrapper(**batch)  # (U, T−1)
            logps = sequence_logprobs(token_logps.float(), batch["response_mask"][:, 1:])  # (U,)
            logps = logps[torch.as_tensor(where.reshape(-1), device=logps.device)]  # (C·b,)
            cols = list(logps.view(seq.shape[0], len(mb)).unbind(0))
            return ex.loss_fn(mb, cols, bs)  # a sum over the micro-batch / global count

        losses, meter = [], MetricMeter()
        for s in range(tc.steps_per_iteration):
            idx = step_indices(n_examples, bs, _seed_int(seed), s)
            micro = list(local_micro_batches(idx, tc.micro_batch_size, acc.process_index, acc.num_processes))
            result = optimizer_step(
                acc, self.wrapper, self.optimizer, self.scheduler, self.guard, s, micro, micro_loss,
                max_grad_norm=tc.max_grad_norm,
            )  # fmt: skip
            self.version += int(result.applied)
            losses.append(result.loss)
            meter.add(result.metrics)
        return {"loss": float(np.mean(losses)), "grad_norm": result.grad_norm, **meter.mean()}

    @torch.no_grad()
    def update_average(self) -> None:
        """Add the current policy to the running uniform average of the weights (the first one replaces it)."""
        self.averaged += 1
        for avg, p in zip(self.average.parameters(), self.policy.parameters()):
            avg.add_(p.detach().to(avg.dtype) - avg, alpha=1.0 / self.averaged)

    def snapshot(self) -> tuple[dict, dict, dict]:
        """Policy weights and optimizer/scheduler state (EGPO restarts its full step from θ_t)."""
        weights = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        return weights, copy.deepcopy(self.optimizer.state_dict()), copy.deepcopy(self.scheduler.state_dict())

    def restore(self, snap: tuple[dict, dict, dict]) -> None:
        self.policy.load_state_dict(snap[0])
        self.optimizer.load_state_dict(snap[1])
        self.scheduler.load_state_dict(snap[2])
        self.version += 1

    def preferences(self) -> PreferenceCache:
        """A fresh per-iteration cache over the oracle (queried on the main process, then shared)."""
        broadcast = None
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            def broadcast(values):
                box = [values]
                broadcast_object_list(box, from_process=0)
                return box[0]

        return PreferenceCache(self.oracle, is_main=self.acc.is_main_process, broadcast=broadcast)


def single(responses: Responses, loss_fn) -> Examples:
    return Examples(responses, np.arange(len(responses))[None], loss_fn)
