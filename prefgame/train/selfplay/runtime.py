"""The runtime every self-play algorithm (and online DPO) is written with: the shared policy runtime
(:class:`~prefgame.train.policy.PolicyRuntime`), the oracle, the optimizer steps and the state a
checkpoint holds. Every random draw comes from a stream seeded by (seed, iteration, purpose)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefgame.errors import ConfigError
from prefgame.game.lm_sampling import Request, Responses, _seed_int
from prefgame.game.lm_selfplay import PreferenceCache, group_matrices, leave_one_out_win_rates
from prefgame.game.vllm_sampling import VLLMSampler
from prefgame.lm import ResponseLogps
from prefgame.lora import trained_state
from prefgame.losses import sequence_logprobs
from prefgame.oracle import PreferenceOracle, build_oracle
from prefgame.run import RunDir
from prefgame.train import sharding
from prefgame.train.engine import MetricMeter, local_micro_batches, make_optimizer, optimizer_step, step_indices
from prefgame.train.policy import PolicyRuntime
from prefgame.train.selfplay.registry import ALGORITHMS

# Purposes of the random streams; every stream is seeded by (seed, iteration, purpose).
PROMPTS, POLICY_SAMPLES, MIXTURE_SAMPLES, PAIR_LABELS, STEP_ORDER = 0, 1, 2, 3, 4
HALF_POLICY_SAMPLES, HALF_PAIR_LABELS, HALF_STEP_ORDER = 5, 6, 7
ANCHOR_SAMPLES = 10  # 8 and 9 are the evaluator's (prefgame.train.policy)


@dataclass
class Examples:
    """What one phase of an iteration trains on: ``columns[c, e]`` is the index (into ``responses``)
    of the c-th sequence of example e (1 column: single samples; 2: chosen/rejected pairs)."""

    responses: Responses
    columns: np.ndarray  # (C, E)
    loss_fn: Callable[[np.ndarray, list[torch.Tensor], int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Iterations:
    """How a run's iterations are organized: ``count`` iterations of ``steps`` optimizer steps on
    ``batch_size`` examples; ``reset_optimizer`` and ``average_from`` as in ``train`` of self-play."""

    count: int
    steps: int
    batch_size: int
    reset_optimizer: bool = False
    average_from: int = -1
    length_groups: int = 1  # forward passes per micro-batch, its sequences sorted by length (train.length_groups)

    @classmethod
    def of(cls, tc) -> Iterations:
        return cls(
            tc.iterations, tc.steps_per_iteration, tc.batch_size, tc.reset_optimizer, tc.average_from,
            tc.length_groups,
        )  # fmt: skip


class SelfPlay(PolicyRuntime):
    """State of one self-play run (or online DPO run) and the operations every algorithm is written with:
    the shared policy runtime, the oracle, the optimizer over the policy's sequence log-probs, the vLLM
    sampler, the weight average and the modules an algorithm keeps (``extras``). Log-probs project
    ``chunk_size`` response rows to the vocabulary at a time (None: ``train.logprob_chunk_size``), in the
    optimizer's forward passes and in :meth:`sequence_logps` alike."""

    def __init__(
        self, cfg, out: RunDir, log, *, oracle: PreferenceOracle | None = None, plan: Iterations | None = None,
        chunk_size: int | None = None,
    ) -> None:  # fmt: skip
        tc = cfg.train
        self.plan = plan if plan is not None else Iterations.of(tc)
        _check_lora(cfg, self.plan)
        arena = cfg.prompts.source == "arena" or cfg.oracle.kind in ("gold", "annotator")
        chunk_size = tc.logprob_chunk_size if chunk_size is None else chunk_size
        super().__init__(cfg, out.path, batch_size=self.plan.batch_size, arena=arena, chunk_size=chunk_size)
        self.out, self.log = out, log
        self.oracle = oracle if oracle is not None else build_oracle(cfg.oracle, self.arena)
        whole_copies = {  # each keeps a whole copy of the policy beside the sharded one
            "train.average_from ≥ 0": self.plan.average_from >= 0,  # the weight average
            "sampling.backend=vllm": cfg.sampling.backend == "vllm",  # the engine's weights
            "algorithm=optimistic_md": getattr(cfg, "algorithm", "") == "optimistic_md",  # the previous iterate
        }
        sharding.refuse_settings(self.acc, whole_copies, "it keeps a whole copy of the policy beside the sharded one")
        if self.plan.length_groups > 1 and self.acc.num_processes > 1:
            raise ConfigError(
                f"length_groups={self.plan.length_groups} (train.length_groups; online DPO: online.length_groups) "
                "runs several forward passes before each backward, which the data-parallel and FSDP wrappers do not "
                "support: set it to 1 with several processes"
            )
        self.wrapper = ResponseLogps(self.policy, chunk_size=chunk_size)
        steps = self.plan.count * self.plan.steps
        self.optimizer, self.scheduler = make_optimizer(self.wrapper.parameters(), tc, steps)
        self.wrapper, self.optimizer = sharding.prepare(self.acc, self.wrapper, self.optimizer)
        self.version = 0  # optimizer steps applied (tells the vLLM copy when it is stale)
        self.vllm = None
        if cfg.sampling.backend == "vllm":
            self.vllm = VLLMSampler(
                cfg.policy.name_or_path, self.tok, cfg.sampling, cfg.policy.dtype, tc.seed, stops=self.stops
            )
        # tail average of the policy weights (train.average_from): a frozen float32 copy (a running mean in
        # bf16 would round away the small updates), updated after each iteration
        if self.plan.average_from >= 0:
            self.average = copy.deepcopy(self.policy).float().requires_grad_(False).eval()
        # modules an algorithm keeps across iterations (its spec's setup adds them); checkpointed
        self.extras: dict[str, torch.nn.Module] = {}
        spec = ALGORITHMS.get(getattr(cfg, "algorithm", ""))
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
        self, prompts: Sequence[str], seed: tuple[int, ...], *, n: int | None = None, model=None,
        mixture_coef: float = 0.0, temperature: float | None = None,
    ) -> Responses:  # fmt: skip
        """:meth:`PolicyRuntime.sample` with K = ``sampling.samples_per_prompt`` responses per prompt by
        default, the policy's own samples from vLLM when that is the backend."""
        n = self.cfg.sampling.samples_per_prompt if n is None else n
        return super().sample(prompts, seed, n=n, model=model, mixture_coef=mixture_coef, temperature=temperature)

    def sample_requests(
        self, prompts: Sequence[str], requests: Sequence[Request], *, model=None, temperature: float | None = None
    ) -> list[Responses]:
        """:meth:`PolicyRuntime.sample_requests`, the policy's own samples (β = 0) from vLLM when that is
        the backend (mixtures need both models per token and stay on the HF loop)."""
        if self.vllm is None or model is not None:
            return super().sample_requests(prompts, requests, model=model, temperature=temperature)
        temperature = self.cfg.sampling.temperature if temperature is None else temperature
        out: dict[int, Responses] = {}
        own = [i for i, r in enumerate(requests) if r.mixture_coef == 0.0]
        if own:
            self.vllm.sync(self.acc.unwrap_model(self.wrapper).model, self.version)
            for i in own:
                out[i] = self.vllm.generate(prompts, n=requests[i].n, seed=requests[i].seed, temperature=temperature)
        rest = [i for i in range(len(requests)) if i not in out]
        for i, ys in zip(rest, super().sample_requests(prompts, [requests[i] for i in rest], temperature=temperature)):
            out[i] = ys
        return [out[i] for i in range(len(requests))]

    def optimize(self, ex: Examples, seed: tuple[int, ...]) -> dict[str, float]:
        """``steps_per_iteration`` optimizer steps on ``ex``; each step's examples depend on ``seed`` only."""
        tc, acc, plan = self.cfg.train, self.acc, self.plan
        n_examples = ex.columns.shape[1]
        if n_examples == 0:
            self.log.warning("no training examples this iteration (all samples identical?); no update")
            return {}
        bs = min(plan.batch_size, n_examples)
        if plan.reset_optimizer:  # a fresh AdamW for this iteration's regression (step counts restart too)
            getattr(self.optimizer, "optimizer", self.optimizer).state.clear()
        self.policy.train()

        def micro_loss(mb):
            seq = ex.columns[:, mb]  # (C, b) sequence indices
            # a sequence in several pairs (inpo: K − 1 pairs each) runs once; indexing its log-prob
            # again sums the gradients of its uses, as separate rows would
            unique, where = np.unique(seq.reshape(-1), return_inverse=True)  # (U,), (C·b,)
            logps = self.forward_logps(ex.responses, unique)  # (U,)
            logps = logps[torch.as_tensor(where.reshape(-1), device=logps.device)]  # (C·b,)
            cols = list(logps.view(seq.shape[0], len(mb)).unbind(0))
            return ex.loss_fn(mb, cols, bs)  # a sum over the micro-batch / global count

        losses, meter = [], MetricMeter()
        for s in range(plan.steps):
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

    def forward_logps(self, responses: Responses, idx: np.ndarray) -> torch.Tensor:
        """log π(y | x) of ``responses`` rows ``idx`` under the policy, with gradient, (len(idx),): the rows
        sorted by length and cut into ``train.length_groups`` forward passes, each padded to its own
        longest row (less padding; the same values and gradient up to float rounding)."""
        order = np.argsort(responses.lengths[idx], kind="stable")  # (U,) shortest first
        parts = []
        for group in np.array_split(order, min(self.plan.length_groups, len(order))):
            batch = self.batch(responses, idx[group])
            token_logps = self.wrapper(**batch)  # (g, T−1)
            parts.append(sequence_logprobs(token_logps.float(), batch["response_mask"][:, 1:]))  # (g,)
        logps = torch.cat(parts)  # (U,) in length order
        return logps[torch.as_tensor(np.argsort(order), device=logps.device)]  # (U,) in the order of idx

    @torch.no_grad()
    def update_average(self) -> None:
        """Add the current policy to the running uniform average of the weights (the first one replaces it)."""
        self.averaged += 1
        for avg, p in zip(self.average.parameters(), self.policy.parameters()):
            avg.add_(p.detach().to(avg.dtype) - avg, alpha=1.0 / self.averaged)

    def snapshot(self) -> tuple[dict, dict, dict]:
        """Policy weights (with LoRA: its adapters) and optimizer/scheduler state (EGPO restarts its full
        step from θ_t)."""
        weights = {k: v.detach().clone() for k, v in trained_state(self.policy).state_dict().items()}
        return weights, copy.deepcopy(self.optimizer.state_dict()), copy.deepcopy(self.scheduler.state_dict())

    def restore(self, snap: tuple[dict, dict, dict]) -> None:
        trained_state(self.policy).load_state_dict(snap[0])
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


def _check_lora(cfg, plan: Iterations) -> None:
    """The settings that do not combine with LoRA adapters yet, refused in one line."""
    if not cfg.lora.enabled:
        return
    if plan.average_from >= 0:
        raise ConfigError(
            "train.average_from with lora.enabled would average the adapter factors B and A separately, which "
            "is not the average of the weight updates B·A; set train.average_from=-1 or lora.enabled=false"
        )
    if cfg.sampling.backend == "vllm":
        raise ConfigError("sampling.backend=vllm copies full weights into the engine: with lora.enabled use backend=hf")


def single(responses: Responses, loss_fn) -> Examples:
    return Examples(responses, np.arange(len(responses))[None], loss_fn)
