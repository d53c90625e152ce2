"""LM self-play on the KL-regularized preference game (``prefgame selfplay``, docs/design.md §3.3).

The game is max_π min_π' E_x[P(π ≻ π' | x) − τ KL(π‖π0) + τ KL(π'‖π0)] (τ as in docs/design.md §1 and
§3.2, and in :mod:`prefgame.losses`). Its symmetric equilibrium π* is the aligned policy. Each
iteration t:

1. draws ``prompts_per_iteration`` prompts (a function of (seed, t));
2. samples K = ``samples_per_prompt`` responses per prompt from the current policy π_t (Nash-MD also
   samples K from the token-level geometric mixture π_t^μ ∝ π_t^{1−β} π0^{β}), with the KV cache;
3. asks the preference oracle for the K×K matrix of each prompt in one batched, deduplicated call;
4. takes ``steps_per_iteration`` optimizer steps on the algorithm's loss (:mod:`prefgame.losses`):

   ============== =====================================================================================
   nash_md        policy gradient E_{y∼π_t, y'∼π_t^μ}[(P(y≻y') − ½)∇log π(y)] − τ∇KL(π‖π0);
                  P̂(y ≻ π^μ) is the mean over the prompt's K mixture samples. Step size: ``train.lr``.
   sppo           regression of log π/π_t onto η(P̂(y≻π_t) − ½): π_{t+1} ∝ π_t exp(ηP(y≻π_t)),
                  unregularized (τ unused); P̂ is the leave-one-out mean over the other K−1 samples.
   mmd            magnetic mirror descent π_{t+1} ∝ [π_t π0^{ητ} exp(ηP(y≻π_t))]^{1/(1+ητ)} (α = τ),
                  the same regression with the magnet term.
   inpo           online mirror descent π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(ηP(y≻π_t)) as an IPO-style
                  loss on all pairs of a prompt's samples, target the oracle's probability (or a winner
                  drawn from it, ``game.pair_labels=sampled``).
   extragradient  EGPO: the inpo step from θ_t against π_t gives θ_{t+½}; then, from θ_t again (model
                  and optimizer state restored), the inpo step with pairs sampled from π_{t+½}.
   ============== =====================================================================================

   η (``game.eta``) is the mirror-descent step of the target update; ητ ≤ 1 for inpo/extragradient.
   Their fixed point is π* = softmax(log π0 + Aπ*/τ), the equilibrium of the game above.
5. measures the new policy on held-out prompts (``metrics.jsonl``): win rates under the oracle
   against π0 and against the previous iterate, the Monte Carlo sequence-level KL(π‖π0), and on the
   arena the exact class-level figures (:class:`~prefgame.game.lm_selfplay.ClassGame`): duality gap,
   unregularized exploitability, total-variation distance to π*.

π0 (the reference) is a frozen copy of the initial policy. Resume is exact at iteration granularity:
every random draw comes from a generator seeded by (seed, iteration, purpose), a checkpoint after
each iteration holds the policy and optimizer state, and a resumed run replays the iterations an
uninterrupted run would have run, bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.errors import ConfigError, PrefgameError
from prefgame.game.lm_sampling import Responses, _seed_int, generate
from prefgame.game.lm_selfplay import (
    ClassGame,
    PreferenceCache,
    cross_matrices,
    distinct_pairs,
    draw_pairs,
    group_matrices,
    leave_one_out_win_rates,
    smoothed_class_distribution,
)
from prefgame.lm import ResponseLogps, build_pairs_batch, encode_prompt, load_causal_lm, load_tokenizer
from prefgame.losses import inpo_loss, mmd_loss, nash_md_pg_loss, sequence_logprobs, sppo_loss
from prefgame.oracle import PreferenceOracle
from prefgame.run import Progress, RunDir, read_jsonl, seed_everything
from prefgame.train.engine import (
    MetricMeter,
    NonFiniteGuard,
    OptimConfig,
    begin_run,
    end_run,
    local_micro_batches,
    log_row,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    resume_state,
    save_checkpoint,
    step_indices,
)
from prefgame.train.sft import save_model

Algorithm = Literal["nash_md", "sppo", "inpo", "mmd", "extragradient"]

# Purposes of the random streams; every stream is seeded by (seed, iteration, purpose).
PROMPTS, POLICY_SAMPLES, MIXTURE_SAMPLES, PAIR_LABELS, STEP_ORDER = 0, 1, 2, 3, 4
HALF_POLICY_SAMPLES, HALF_PAIR_LABELS, HALF_STEP_ORDER, EVAL_SAMPLES, REF_SAMPLES = 5, 6, 7, 8, 9
ANCHOR_SAMPLES = 10


# ---------------------------------------------------------------------------------------------- config


@dataclass
class PolicyConfig:
    name_or_path: str = param(
        "", "π0: causal LM folder or hub name; the policy starts from it and a frozen copy is the reference"
    )
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own")
    dtype: Literal["float32", "bfloat16"] = param("float32", "weights dtype of policy and reference")


@dataclass
class OracleConfig:
    kind: Literal["gold", "annotator", "factory"] = param(
        "gold",
        "gold: the arena's gold preference; annotator: a simulated arena annotator; factory: any "
        "PreferenceOracle built by `factory` (e.g. a trained preference model or a judge)",
    )
    annotator: str = param("careful", "kind=annotator: the annotator's name (arena.world.DEFAULT_ANNOTATORS)")
    factory: str = param("", "kind=factory: 'module:function' called as function(path, **options) → PreferenceOracle")
    path: str = param("", "kind=factory: the first argument of the factory (e.g. a preference-model folder)")
    options: dict[str, Any] = param({}, "kind=factory: keyword arguments of the factory")


@dataclass
class PromptsConfig:
    source: Literal["arena", "file"] = param(
        "arena", "arena: the arena's prompt grammar (enables the exact class-level metrics); file: `path`"
    )
    path: str = param("", "source=file: a .jsonl/.json/.parquet/.csv file or hub data set with prompts")
    split: str = param("train", "source=file: split of a hub data set")
    field: str = param("prompt", "source=file: column holding the prompt text")


@dataclass
class GameConfig:
    tau: float = param(
        0.1,
        "τ, KL regularization of the game P(π≻π') − τKL(π‖π0) + τKL(π'‖π0) (docs/design.md §1/§3.2): the pull "
        "towards π0 of nash_md, mmd (α = τ), inpo and extragradient; sppo ignores it",
    )
    eta: float = param(
        1.0,
        "η, step of the target update π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(ηP(y≻π_t)) (sppo, mmd, inpo, "
        "extragradient); inpo/extragradient need ητ ≤ 1; nash_md ignores it (its step is train.lr)",
    )
    mixture_coef: float = param(
        0.1, "β of nash_md: the opponent is the token-level mixture π^μ ∝ π^{1−β} π0^{β} (docs/design.md §3.3)"
    )
    pair_labels: Literal["sampled", "expected"] = param(
        "expected",
        "inpo/extragradient pairs: expected (the loss uses the oracle's probability itself: the same "
        "expected gradient as a drawn winner, without the label noise; inpo_loss chosen_prob) or sampled "
        "(winner drawn from the probability, the original INPO recipe)",
    )

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.eta <= 0:
            raise ValueError("game.tau and game.eta must be > 0")
        if not 0.0 <= self.mixture_coef <= 1.0:
            raise ValueError("game.mixture_coef must be in [0, 1]")


@dataclass
class SamplingConfig:
    backend: Literal["hf", "vllm"] = param(
        "hf", "generation engine for policy samples: hf (KV cache, any device) or vllm (GPU, imported only then)"
    )
    prompts_per_iteration: int = param(32, "prompts drawn per iteration")
    samples_per_prompt: int = param(4, "K responses per prompt (≥ 2)")
    max_new_tokens: int = param(40, "response length limit in tokens")
    temperature: float = param(1.0, "sampling temperature (1: the policy itself)")
    reference_samples_per_prompt: int = param(
        0,
        "inpo/extragradient: M responses per prompt from π0 join each iteration's pairs; the loss then "
        "targets explicit win rates against the K policy samples (inpo_loss win_rate_gap), exact for pairs "
        "from any behaviour, so responses the policy no longer samples stay within the update's reach",
    )
    batch_size: int = param(256, "sequences per generation batch")
    use_cache: bool = param(True, "hf: reuse the KV cache between tokens (false recomputes the prefix)")
    vllm_gpu_memory_utilization: float = param(0.3, "vllm: share of GPU memory for its engine")

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("sampling.samples_per_prompt must be ≥ 2 (win rates need other samples)")
        if self.prompts_per_iteration < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.prompts_per_iteration, max_new_tokens and batch_size must be ≥ 1")
        if self.reference_samples_per_prompt < 0:
            raise ValueError("sampling.reference_samples_per_prompt must be ≥ 0")


@dataclass
class SelfPlayTrainConfig(OptimConfig):
    """``train`` of self-play: the shared optimization settings, iterations and their steps."""

    lr: float = param(2e-4, "AdamW learning rate (the step size of nash_md)")
    iterations: int = param(60, "self-play iterations t = 0 … iterations−1")
    steps_per_iteration: int = param(4, "optimizer steps on each iteration's samples")
    batch_size: int = param(64, "examples (samples, or pairs for inpo/extragradient) per optimizer step")
    reset_optimizer: bool = param(
        False,
        "clear AdamW's moment estimates at the start of every iteration: each iteration fits a new target, "
        "and momentum carried across iterations lags the rotation of the game's cyclic part",
    )
    average_from: int = param(
        -1,
        "-1: the run's policy is the last iterate; k ≥ 0: the uniform average of the policy weights after "
        "iterations k+1 … t is the run's policy (model/, and every measurement after iteration k): tail "
        "averaging, the average iterate of mirror descent, which settles where the last iterate circles the "
        "game's cyclic part. Self-play itself continues from the last iterate",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0 or self.steps_per_iteration < 1:
            raise ValueError("train.iterations must be ≥ 0 and train.steps_per_iteration ≥ 1")
        if self.average_from < -1 or (self.iterations > 0 and self.average_from >= self.iterations):
            raise ValueError(
                f"train.average_from must be -1 (off) or an iteration in 0 … {self.iterations - 1}, "
                f"got {self.average_from}"
            )
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("train.batch_size and train.micro_batch_size must be ≥ 1")


@dataclass
class SelfPlayEvalConfig:
    every: int = param(10, "measure every N iterations (0: only before the first and after the last)")
    prompts: int = param(240, "held-out prompts (arena: the same number per prompt type)")
    samples_per_prompt: int = param(2, "policy responses per held-out prompt at each measurement")
    reference_samples_per_prompt: int = param(
        4, "π0 responses per held-out prompt (win-rate opponents; arena: π0's class distribution)"
    )
    reference_prior: float = param(
        10.0, "arena: pseudo-samples of π0's pooled class distribution added to each prompt type's counts"
    )

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.samples_per_prompt < 1:
            raise ValueError("eval.prompts and eval.samples_per_prompt must be ≥ 1")
        if self.reference_samples_per_prompt < self.samples_per_prompt:
            raise ValueError("eval.reference_samples_per_prompt must be ≥ eval.samples_per_prompt")


@dataclass
class SelfPlayConfig:
    output_dir: str = param("runs/selfplay", "where the policy, checkpoints, metrics and log are written")
    resume: bool = param(False, "continue from the last iteration checkpoint in output_dir")
    algorithm: Algorithm = param("nash_md", "self-play algorithm: nash_md, sppo, inpo, mmd, extragradient")
    policy: PolicyConfig = param(PolicyConfig, "π0 (initial policy and frozen reference)")
    oracle: OracleConfig = param(OracleConfig, "the preference oracle")
    prompts: PromptsConfig = param(PromptsConfig, "where prompts come from")
    arena: ArenaConfig = param(ArenaConfig, "the arena world (prompts.source=arena or an arena oracle)")
    game: GameConfig = param(GameConfig, "the game and the update rule (τ, η, β)")
    sampling: SamplingConfig = param(SamplingConfig, "response sampling")
    train: SelfPlayTrainConfig = param(SelfPlayTrainConfig, "optimization")
    eval: SelfPlayEvalConfig = param(SelfPlayEvalConfig, "measurements")

    def __post_init__(self) -> None:
        if self.algorithm in ("inpo", "extragradient") and self.game.eta * self.game.tau > 1:
            raise ValueError(f"{self.algorithm} needs game.eta·game.tau ≤ 1, got {self.game.eta * self.game.tau}")
        if self.sampling.reference_samples_per_prompt and self.algorithm not in ("inpo", "extragradient"):
            raise ValueError(
                "sampling.reference_samples_per_prompt is for inpo and extragradient, "
                f"not {self.algorithm}; set it to 0"
            )


# ---------------------------------------------------------------------------------------------- oracle


def build_oracle(cfg: OracleConfig, arena) -> PreferenceOracle:
    """The oracle of ``cfg``: the arena's gold preference or an annotator, or a factory's oracle."""
    if cfg.kind == "factory":
        if ":" not in cfg.factory:
            raise ConfigError("oracle.factory must be 'module:function' (e.g. mypkg.pm:load_oracle)")
        module, attr = cfg.factory.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"oracle.factory '{cfg.factory}' cannot be imported: {exc}") from None
        oracle = fn(cfg.path, **cfg.options)
        if not isinstance(oracle, PreferenceOracle):
            raise ConfigError(
                f"oracle.factory '{cfg.factory}' returned {type(oracle).__name__}, not a PreferenceOracle"
            )
        return oracle
    from prefgame.arena.world import AnnotatorOracle, GoldOracle

    if cfg.kind == "gold":
        return GoldOracle(arena)
    specs = {s.name: s for s in arena.spec.annotators}
    if cfg.annotator not in specs:
        raise ConfigError(f"oracle.annotator '{cfg.annotator}' is not one of {', '.join(specs)}")
    return AnnotatorOracle(arena, specs[cfg.annotator])


def local_judge_oracle(
    path: str, *, dtype: str = "bfloat16", device: str = "auto", **judge_options: Any
) -> PreferenceOracle:
    """A causal LM read as a pairwise judge (:class:`~prefgame.judges.LocalLMJudge`), for ``oracle.kind=factory``
    with ``oracle.factory: prefgame.train.selfplay:local_judge_oracle`` and ``oracle.path`` the judge model;
    ``oracle.options`` go to LocalLMJudge (batch_size, template, verdict_tokens, ...)."""
    from prefgame.judges import LocalLMJudge

    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_causal_lm(path, dtype=getattr(torch, dtype)).to(target)
    return LocalLMJudge(model, load_tokenizer(path), **judge_options)


# ---------------------------------------------------------------------------------------------- samplers


class VLLMSampler:
    """Policy samples from a vLLM engine whose weights are refreshed from the training policy.

    Imported and built only with ``sampling.backend=vllm``. Not exercised by the CPU test suite.
    Mixture samples (Nash-MD's opponent) need two models per token and always use the HF loop.
    """

    def __init__(self, model_path: str, tokenizer, cfg: SamplingConfig, dtype: str, seed: int) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise PrefgameError("sampling.backend=vllm needs vLLM: pip install 'prefgame[vllm]'") from None
        self.tokenizer, self.cfg = tokenizer, cfg
        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
        self.version = -1

    def sync(self, policy, version: int) -> None:
        """Copy the policy's weights into the engine when they changed since the last copy."""
        if version == self.version:
            return
        engine = self.llm.llm_engine
        weights = [(k, v.detach()) for k, v in policy.state_dict().items()]
        if hasattr(self.llm, "collective_rpc"):  # vLLM ≥ 0.7

            def load(worker, w=weights):
                worker.model_runner.model.load_weights(w)

            self.llm.collective_rpc(load)
        else:
            engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        self.version = version

    def generate(
        self, prompts: Sequence[str], *, n: int, seed: Sequence[int], temperature: float | None = None
    ) -> Responses:
        """``n`` samples per prompt at ``temperature`` (None: ``sampling.temperature``)."""
        from vllm import SamplingParams

        temperature = self.cfg.temperature if temperature is None else temperature
        params = SamplingParams(
            n=n, temperature=temperature, top_p=1.0, max_tokens=self.cfg.max_new_tokens, seed=_seed_int(seed)
        )
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        response_ids = [list(c.token_ids) for o in outs for c in o.outputs]
        texts = [s.strip() for s in self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
        return Responses(
            [p for p in prompts for _ in range(n)], [list(e) for e in encoded for _ in range(n)], response_ids, texts
        )


# ---------------------------------------------------------------------------------------------- trainer


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
        dtype = torch.bfloat16 if cfg.policy.dtype == "bfloat16" else torch.float32
        if not cfg.policy.name_or_path:
            raise PrefgameError("policy.name_or_path is empty: give π0's folder, e.g. runs/quickstart/pi0/model")
        self.tok = load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path)
        self.policy = load_causal_lm(cfg.policy.name_or_path, dtype=dtype)
        if tc.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.ref = load_causal_lm(cfg.policy.name_or_path, dtype=dtype).to(self.acc.device)
        self.ref.requires_grad_(False)
        self.ref.eval()
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
        self.train_prompts, self.eval_prompts = self._prompt_pools()
        # tail average of the policy weights (train.average_from): a frozen float32 copy (a running mean in
        # bf16 would round away the small updates), updated after each iteration
        self.average = None
        self.averaged = 0  # iterates in the average
        if tc.average_from >= 0:
            self.average = copy.deepcopy(self.policy).float().requires_grad_(False).eval()
        # the sampler runs the fp32 weights without autocast, as sequence_logps does only in this case
        self._fp32 = dtype == torch.float32 and self.acc.mixed_precision == "no"

    def _prompt_pools(self) -> tuple[list[str], list[str]]:
        """(training prompts, held-out prompts); on the arena the held-out set is stratified by type."""
        cfg, rng = self.cfg, np.random.default_rng([self.cfg.train.seed, 12345])
        if cfg.prompts.source == "arena":
            from prefgame.arena.world import N_PROMPT_TYPES

            per_type = max(1, cfg.eval.prompts // N_PROMPT_TYPES)
            by_type: dict[int, list[str]] = {}
            for p in self.arena.prompts:
                by_type.setdefault(p.type_index, []).append(p.text)
            held = []
            for t in range(N_PROMPT_TYPES):
                texts = by_type[t]
                held += [texts[i] for i in rng.choice(len(texts), size=min(per_type, len(texts)), replace=False)]
            held_set = set(held)
            return [p.text for p in self.arena.prompts if p.text not in held_set], held
        if not cfg.prompts.path:
            raise PrefgameError("prompts.path is empty: give a prompt file, or set prompts.source=arena")
        from prefgame.data.load import load_raw

        table = load_raw(cfg.prompts.path, split=cfg.prompts.split)
        if cfg.prompts.field not in table.column_names:
            raise PrefgameError(
                f"{cfg.prompts.path}: no column '{cfg.prompts.field}' (columns: {', '.join(table.column_names)})"
            )
        texts = list(dict.fromkeys(str(x) for x in table[cfg.prompts.field] if str(x).strip()))
        order = rng.permutation(len(texts))
        n_eval = min(cfg.eval.prompts, len(texts) // 2)
        return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]

    # -- operations the algorithms use --------------------------------------------------------------
    def iteration_prompts(self, t: int) -> list[str]:
        rng = np.random.default_rng([self.cfg.train.seed, t, PROMPTS])
        n = min(self.cfg.sampling.prompts_per_iteration, len(self.train_prompts))
        return [self.train_prompts[i] for i in rng.choice(len(self.train_prompts), size=n, replace=False)]

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

    @torch.no_grad()
    def sequence_logps(self, model, responses: Responses) -> torch.Tensor:
        """log π(y | x) summed over response tokens, (N,) float32, in eval mode, no gradient."""
        was_training = model.training
        model.eval()
        out = []
        bs = self.cfg.train.micro_batch_size
        for start in range(0, len(responses), bs):
            batch = self._batch(responses, range(start, min(start + bs, len(responses))))
            with self.acc.autocast():
                logps = ResponseLogps(model)(**batch)
            out.append(sequence_logprobs(logps.float(), batch["response_mask"][:, 1:]).cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def _batch(self, responses: Responses, idx) -> dict[str, torch.Tensor]:
        batch = build_pairs_batch(
            [responses.prompt_ids[i] for i in idx], [responses.response_ids[i] for i in idx], self.tok.pad_token_id
        )
        return {k: v.to(self.acc.device) for k, v in batch.items()}

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


# ---------------------------------------------------------------------------------------------- algorithms
# Each algorithm is one iteration: sample, ask the oracle, optimize. They share SelfPlay's operations.


def _single(responses: Responses, loss_fn) -> Examples:
    return Examples(responses, np.arange(len(responses))[None], loss_fn)


def sppo_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """SPPO: regress log π/π_t onto η(P̂(y ≻ π_t) − ½), y ∼ π_t (sppo_loss)."""
    prompts = sp.iteration_prompts(t)
    ys = sp.sample(prompts, (sp.cfg.train.seed, t, POLICY_SAMPLES))
    win = leave_one_out_win_rates(group_matrices(prefs, ys.prompts, ys.texts, sp.cfg.sampling.samples_per_prompt))
    old = sp.policy_logps(ys)
    eta = sp.cfg.game.eta

    def loss_fn(mb, cols, normalizer):
        return sppo_loss(cols[0], old[mb].to(cols[0]), win[mb].to(cols[0]), eta=eta, normalizer=normalizer)

    return {"win_rate_std": float(win.std()), **sp.optimize(_single(ys, loss_fn), (sp.cfg.train.seed, t, STEP_ORDER))}


def mmd_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Magnetic mirror descent with magnet π0 and α = τ (mmd_loss), y ∼ π_t."""
    prompts = sp.iteration_prompts(t)
    ys = sp.sample(prompts, (sp.cfg.train.seed, t, POLICY_SAMPLES))
    win = leave_one_out_win_rates(group_matrices(prefs, ys.prompts, ys.texts, sp.cfg.sampling.samples_per_prompt))
    old, ref = sp.policy_logps(ys), sp.sequence_logps(sp.ref, ys)
    g = sp.cfg.game

    def loss_fn(mb, cols, normalizer):
        x = cols[0]
        return mmd_loss(x, old[mb].to(x), ref[mb].to(x), win[mb].to(x), eta=g.eta, alpha=g.tau, normalizer=normalizer)

    return {"win_rate_std": float(win.std()), **sp.optimize(_single(ys, loss_fn), (sp.cfg.train.seed, t, STEP_ORDER))}


def nash_md_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Nash-MD: y ∼ π_t against y' ∼ π_t^μ, P̂(y ≻ π^μ) over the K mixture samples (nash_md_pg_loss).

    Variance reduction (RLOO): each sample's coefficient c(y) = (P̂(y≻π^μ) − ½) − τ(log π_t(y) − log π0(y))
    has the leave-one-out mean b of the other K − 1 coefficients of its prompt subtracted (passed to
    the loss as P̂ − b). b does not depend on y, so the gradient stays unbiased; without it the
    sequence-level KL term (tens of nats once π drifts) swamps the preference signal and the policy
    can run away from π0.
    """
    g, seed, k = sp.cfg.game, sp.cfg.train.seed, sp.cfg.sampling.samples_per_prompt
    prompts = sp.iteration_prompts(t)
    ys = sp.sample(prompts, (seed, t, POLICY_SAMPLES))
    opponents = sp.sample(prompts, (seed, t, MIXTURE_SAMPLES), mixture_coef=g.mixture_coef)
    pref = cross_matrices(prefs, ys.prompts, ys.texts, opponents.texts, k).mean(-1).reshape(-1)  # (N,)
    ref = sp.sequence_logps(sp.ref, ys)
    coef = (pref - 0.5) - g.tau * (sp.policy_logps(ys) - ref).double()  # (N,) c(y) at π_t
    groups = coef.view(-1, k)  # (M, K)
    baseline = ((groups.sum(-1, keepdim=True) - groups) / (k - 1)).reshape(-1)  # (N,) leave-one-out mean
    shifted = pref - baseline

    def loss_fn(mb, cols, normalizer):
        x = cols[0]
        return nash_md_pg_loss(x, ref[mb].to(x), shifted[mb].to(x), tau=g.tau, normalizer=normalizer)

    return {"preference_vs_mixture": float(pref.mean()), **sp.optimize(_single(ys, loss_fn), (seed, t, STEP_ORDER))}


@dataclass
class Anchors:
    """π0's responses that join an iteration's INPO pairs (``sampling.reference_samples_per_prompt``)."""

    responses: Responses  # M per prompt, the iteration's prompts in order
    old: torch.Tensor  # (P·M,) log π_t
    ref: torch.Tensor  # (P·M,) log π0


def _anchors(sp: SelfPlay, prompts: Sequence[str], t: int) -> Anchors | None:
    """M responses per prompt from π0 with their log-probs under π_t (the policy now) and π0."""
    m = sp.cfg.sampling.reference_samples_per_prompt
    if m == 0:
        return None
    zs = sp.sample(prompts, (sp.cfg.train.seed, t, ANCHOR_SAMPLES), n=m, model=sp.ref)
    return Anchors(zs, sp.sequence_logps(sp.policy, zs), sp.policy_logps(zs, model=sp.ref))


def _inpo_examples(
    sp: SelfPlay, prefs: PreferenceCache, ys: Responses, old: torch.Tensor, label_seed, anchors: Anchors | None = None
) -> Examples:
    """INPO pairs of ``ys`` (``old`` holds their log π_t).

    Without anchors: all pairs of a prompt's samples, oriented by a draw from the oracle; the loss uses the
    oracle's probability unless ``game.pair_labels=sampled``. With anchors (π0 samples): all pairs of a
    prompt's K policy samples and M anchors, each response's win rate against π_t estimated from the
    policy samples (leave-one-out for the policy's own), the loss on the win-rate gap (inpo_loss
    ``win_rate_gap``), which is right pair by pair for any mix of the two."""
    g, k = sp.cfg.game, sp.cfg.sampling.samples_per_prompt
    ref = sp.sequence_logps(sp.ref, ys)
    mats = group_matrices(prefs, ys.prompts, ys.texts, k)
    if anchors is not None:
        m = sp.cfg.sampling.reference_samples_per_prompt
        n_prompts = len(ys) // k
        anchor_win = cross_matrices(prefs, anchors.responses.prompts, anchors.responses.texts, ys.texts, m, k).mean(-1)

        def both(own: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:  # (P·K,), (P·M,) → (P·(K+M),)
            return torch.cat([own.reshape(n_prompts, k), extra.reshape(n_prompts, m).to(own)], 1).reshape(-1)

        responses = ys.interleave(anchors.responses, k, m)
        win = both(leave_one_out_win_rates(mats), anchor_win)  # (P·(K+M),) P̂(y ≻ π_t)
        old, ref = both(old, anchors.old), both(ref, anchors.ref)
        first, second, keep = distinct_pairs(responses.response_ids, k + m)
        first, second = first[keep], second[keep]
        target = {"win_rate_gap": win[first] - win[second]}  # (pairs,)
    else:
        responses = ys
        first, second, p = draw_pairs(mats, ys.response_ids, np.random.default_rng(list(label_seed)))  # winner first
        expected = g.pair_labels == "expected"
        target = {"chosen_prob": torch.from_numpy(p) if expected else None}  # P(first ≻ second), or a drawn label

    def loss_fn(mb, cols, normalizer):
        a, b, x = first[mb], second[mb], cols[0]
        labels = {key: None if v is None else v[mb].to(x) for key, v in target.items()}
        return inpo_loss(
            cols[0], cols[1], old[a].to(x), old[b].to(x), ref[a].to(x), ref[b].to(x),
            eta=g.eta, tau=g.tau, normalizer=normalizer, **labels,
        )  # fmt: skip

    return Examples(responses, np.stack([first, second]), loss_fn)


def inpo_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """Online mirror descent (INPO): IPO-style loss on pairs y, y' ∼ π_t (inpo_loss), with π0's samples
    among them when ``sampling.reference_samples_per_prompt`` > 0."""
    seed = sp.cfg.train.seed
    prompts = sp.iteration_prompts(t)
    ys = sp.sample(prompts, (seed, t, POLICY_SAMPLES))
    ex = _inpo_examples(sp, prefs, ys, sp.policy_logps(ys), (seed, t, PAIR_LABELS), _anchors(sp, prompts, t))
    return {"pairs": ex.columns.shape[1], **sp.optimize(ex, (seed, t, STEP_ORDER))}


def extragradient_iteration(sp: SelfPlay, t: int, prefs: PreferenceCache) -> dict[str, float]:
    """EGPO: half step θ_t → θ_{t+½} against π_t, then the full step from θ_t against π_{t+½}."""
    seed = sp.cfg.train.seed
    prompts = sp.iteration_prompts(t)
    theta_t = sp.snapshot()
    ys = sp.sample(prompts, (seed, t, POLICY_SAMPLES))
    anchors = _anchors(sp, prompts, t)  # π0's samples, log-probs at θ_t: the same for both steps
    half = sp.optimize(
        _inpo_examples(sp, prefs, ys, sp.policy_logps(ys), (seed, t, PAIR_LABELS), anchors),
        (seed, t, STEP_ORDER),
    )
    ys_half = sp.sample(prompts, (seed, t, HALF_POLICY_SAMPLES))  # y ∼ π_{t+½}
    sp.restore(theta_t)  # back to θ_t: "old" log-probs and the full step are taken at π_t
    # ys_half's sampler log-probs are π_{t+½}'s; the loss needs π_t's, so a forward pass at θ_t
    ex = _inpo_examples(sp, prefs, ys_half, sp.sequence_logps(sp.policy, ys_half), (seed, t, HALF_PAIR_LABELS), anchors)
    full = sp.optimize(ex, (seed, t, HALF_STEP_ORDER))
    return {"half_loss": half.get("loss", math.nan), "pairs": ex.columns.shape[1], **full}


ITERATIONS: dict[str, Callable[[SelfPlay, int, PreferenceCache], dict[str, float]]] = {
    "nash_md": nash_md_iteration,
    "sppo": sppo_iteration,
    "inpo": inpo_iteration,
    "mmd": mmd_iteration,
    "extragradient": extragradient_iteration,
}


# ---------------------------------------------------------------------------------------------- measurements


@dataclass
class Evaluator:
    """Held-out measurements of a policy: oracle win rates, Monte Carlo KL, arena class-level figures."""

    sp: SelfPlay
    reference: Responses  # π0's responses on the held-out prompts (reference_samples_per_prompt each)
    game: ClassGame | None
    previous: Responses | None = None
    seconds: float = 0.0
    _paired: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, sp: SelfPlay, reference_classes: torch.Tensor | None = None) -> Evaluator:
        ec = sp.cfg.eval
        ref_resp = sp.sample(  # measurements sample the models themselves (temperature 1)
            sp.eval_prompts, (sp.cfg.train.seed, 0, REF_SAMPLES), n=ec.reference_samples_per_prompt, model=sp.ref,
            temperature=1.0,
        )  # fmt: skip
        game = None
        if sp.arena is not None and sp.cfg.prompts.source == "arena":
            rho0 = (
                reference_classes
                if reference_classes is not None
                else smoothed_class_distribution(
                    sp.arena, ref_resp.prompts, ref_resp.texts, prior=sp.cfg.eval.reference_prior
                )
            )
            game = ClassGame(sp.arena.gold_matrix, rho0, sp.arena.type_probs, sp.cfg.game.tau)
        ev = cls(sp, ref_resp, game)
        # the k-th policy sample of a prompt meets the k-th π0 sample of that prompt
        n_ref, n = ec.reference_samples_per_prompt, ec.samples_per_prompt
        ev._paired = [i * n_ref + k for i in range(len(sp.eval_prompts)) for k in range(n)]
        return ev

    def measure(self, t: int) -> dict[str, Any]:
        """Figures of the run's policy after t updates (π_t, or the weight average of ``train.average_from``);
        remembers its samples for the next measurement."""
        start = time.perf_counter()
        sp = self.sp
        averaged = sp.averaged > 0
        ys = sp.sample(
            sp.eval_prompts, (sp.cfg.train.seed, t, EVAL_SAMPLES), n=sp.cfg.eval.samples_per_prompt, temperature=1.0,
            model=sp.average if averaged else None,
        )  # fmt: skip
        log_ratio = sp.policy_logps(ys, model=sp.average if averaged else None) - sp.sequence_logps(sp.ref, ys)
        prefs = sp.preferences()
        opp = [self.reference.texts[i] for i in self._paired]
        vs_ref = prefs.query(ys.prompts, ys.texts, opp)
        row: dict[str, Any] = {
            "win_rate_vs_ref": float(vs_ref.mean()),
            "win_rate_vs_ref_se": float(vs_ref.std() / math.sqrt(len(vs_ref))),
            "win_rate_vs_previous": None,
            "kl_to_ref": float(log_ratio.mean()),
            "kl_to_ref_se": float(log_ratio.std() / math.sqrt(len(log_ratio))),
            "response_tokens": float(np.mean([len(r) for r in ys.response_ids])),
            "averaged_iterates": sp.averaged,
        }
        if self.previous is not None:
            row["win_rate_vs_previous"] = float(prefs.query(ys.prompts, ys.texts, self.previous.texts).mean())
        if self.game is not None:
            pi = sp.arena.class_distribution(ys.prompts, ys.texts)
            row.update({f"class/{k}": v for k, v in self.game.measure(pi).items()})
        self.previous = ys
        self.seconds += time.perf_counter() - start
        return row

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run measures as an uninterrupted one: the texts of
        the last measurement's samples (the opponents of the next ``win_rate_vs_previous``)."""
        return {"previous_texts": None if self.previous is None else list(self.previous.texts)}

    def load_state(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state`; False when ``state`` has none (a checkpoint of an older version)."""
        texts = state.get("previous_texts")
        if texts is None:
            return False
        sp, n = self.sp, self.sp.cfg.eval.samples_per_prompt
        prompts = [p for p in sp.eval_prompts for _ in range(n)]
        if len(texts) != len(prompts):
            raise PrefgameError(
                f"the checkpoint holds {len(texts)} evaluation samples, the config asks for {len(prompts)}: "
                "resume with the eval settings of the interrupted run"
            )
        self.previous = Responses(prompts, [], [], list(texts))  # only prompts and texts are read
        return True


# ---------------------------------------------------------------------------------------------- driver


def run(cfg: SelfPlayConfig) -> dict:
    out = RunDir(cfg.output_dir, name="prefgame.selfplay")
    log = out.start_logging()
    try:
        return train(cfg, out, log)
    finally:
        out.close()


def train(
    cfg: SelfPlayConfig,
    out: RunDir,
    log,
    *,
    oracle: PreferenceOracle | None = None,
    reference_classes: torch.Tensor | None = None,
) -> dict:
    t_start = time.perf_counter()
    tc = cfg.train
    seed_everything(tc.seed)
    sp = SelfPlay(cfg, out, log, oracle=oracle)
    run = begin_run(out, cfg, sp.acc, job="selfplay", resume=cfg.resume, report_to=tc.report_to)
    state = resume_state(
        run, out, modules=_checkpointed(sp), optimizer=sp.optimizer, scheduler=sp.scheduler, unit="iteration"
    )
    start = state["step"]
    sp.version = state.get("version", 0)
    sp.averaged = state.get("averaged", 0)
    sp.guard.total = state.get("nonfinite_steps", 0)
    n_params = sum(p.numel() for p in sp.policy.parameters())
    log.info(
        f"selfplay {cfg.algorithm}: {tc.iterations} iterations × {cfg.sampling.prompts_per_iteration} prompts × "
        f"K={cfg.sampling.samples_per_prompt}, policy {n_params / 1e6:.2f}M parameters, oracle {sp.oracle.name}"
    )
    evaluator = Evaluator.build(sp, reference_classes)
    if evaluator.game is not None:
        eq = evaluator.game.summary()["equilibrium"]
        log.info(f"class-level equilibrium (τ={cfg.game.tau}): exploitability {eq['exploitability']:.4f}")
    # figures of π0 (also the opponent of the next win_rate_vs_previous); a resumed run takes that
    # opponent from the checkpoint instead, as the uninterrupted run holds it at this point
    if start == 0 or not evaluator.load_state(state):
        first = evaluator.measure(start)
        if start == 0:
            log_row(out, sp.acc, run, 0, {"iteration": 0, **first})
    iterate = ITERATIONS[cfg.algorithm]
    progress = Progress(tc.iterations - start, f"selfplay {cfg.algorithm}", log, every_s=5.0)
    train_seconds = 0.0
    for t in range(start, tc.iterations):
        t0 = time.perf_counter()
        prefs = sp.preferences()
        info = iterate(sp, t, prefs)
        train_seconds += time.perf_counter() - t0
        done = t + 1
        if sp.average is not None and done > tc.average_from:
            sp.update_average()
        row = {"iteration": done, **info, **prefs.stats(), "seconds": time.perf_counter() - t0}
        if (cfg.eval.every and done % cfg.eval.every == 0) or done == tc.iterations:
            row.update(evaluator.measure(done))
        log_row(out, sp.acc, run, done, row)
        if sp.acc.is_main_process:
            save_checkpoint(
                out.path,
                done,
                modules=_checkpointed(sp),
                optimizer=sp.optimizer,
                scheduler=sp.scheduler,
                state={
                    "version": sp.version,
                    "nonfinite_steps": sp.guard.total,
                    "averaged": sp.averaged,
                    **evaluator.state(),
                },
                keep=tc.keep_checkpoints,
            )
        progress.update(**{k: v for k, v in row.items() if k in ("loss", "class/exploitability", "win_rate_vs_ref")})
    sp.acc.wait_for_everyone()
    metrics = summarize(cfg, out, evaluator, n_params)
    metrics["seconds"] = {
        "total": time.perf_counter() - t_start,
        "iterations": train_seconds,
        "measurements": evaluator.seconds,
    }
    if sp.acc.is_main_process:
        final = sp.average if sp.averaged else sp.acc.unwrap_model(sp.wrapper).model
        save_model(final, sp.tok, out.path / "model")
        out.write_metrics(metrics)
        log.info(summary_line(metrics))
    end_run(sp.acc, run)
    return metrics


def _checkpointed(sp: SelfPlay) -> dict[str, torch.nn.Module]:
    """The modules an iteration checkpoint holds: the policy, and the weight average when there is one."""
    return {"policy": sp.policy} if sp.average is None else {"policy": sp.policy, "average": sp.average}


# The figures of each measured iteration that summarize() copies into metrics["history"]: oracle win
# rates and Monte Carlo KL on held-out prompts, and on the arena the exact class-level figures
# (class/win_rate_vs_ref is the exact gold win rate of the class distribution against π0's).
HISTORY_KEYS = (
    "iteration",
    "win_rate_vs_ref",
    "win_rate_vs_previous",
    "kl_to_ref",
    "class/exploitability",
    "class/gap",
    "class/tv_to_equilibrium",
    "class/class_kl",
    "class/win_rate_vs_ref",
    "averaged_iterates",
)


def summarize(cfg: SelfPlayConfig, out: RunDir, evaluator: Evaluator, n_params: int) -> dict[str, Any]:
    """Final figures from metrics.jsonl: the first and last measured rows and their changes."""
    rows = read_jsonl(out.file("metrics.jsonl")) if out.file("metrics.jsonl").exists() else []
    # wall times stay out of the figures (they are in metrics["seconds"]), so that a resumed run's
    # summary equals an uninterrupted run's
    measured = [{k: v for k, v in r.items() if k != "seconds"} for r in rows if "win_rate_vs_ref" in r]
    initial, final = (measured[0], measured[-1]) if measured else ({}, {})
    metrics: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "iterations": cfg.train.iterations,
        "parameters": n_params,
        "oracle": evaluator.sp.oracle.name,
        "initial": initial,
        "final": final,
        "nonfinite_steps": evaluator.sp.guard.total,
    }
    metrics["history"] = [{k: r[k] for k in HISTORY_KEYS if k in r} for r in measured]  # convergence trace
    if evaluator.game is not None and initial.get("class/exploitability") is not None:
        metrics["equilibrium"] = evaluator.game.summary()
        metrics["exploitability_ratio"] = final["class/exploitability"] / initial["class/exploitability"]
        metrics["tv_to_equilibrium"] = [initial["class/tv_to_equilibrium"], final["class/tv_to_equilibrium"]]
        metrics["gap_ratio"] = final["class/gap"] / initial["class/gap"]
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    f = m.get("final", {})
    text = (
        f"selfplay {m['algorithm']} done: win rate vs π0 {f.get('win_rate_vs_ref', math.nan):.3f}, "
        f"KL {f.get('kl_to_ref', math.nan):.3f}"
    )
    if "exploitability_ratio" in m:
        i = m["initial"]
        text += (
            f", exploitability {i['class/exploitability']:.3f} → {f['class/exploitability']:.3f}, "
            f"TV to π* {m['tv_to_equilibrium'][0]:.3f} → {m['tv_to_equilibrium'][1]:.3f}"
        )
    return text


# ---------------------------------------------------------------------------------------------- library entry


def run_selfplay(
    pi0: str | Path,
    oracle: PreferenceOracle | None = None,
    *,
    algorithm: Algorithm = "nash_md",
    output_dir: str | Path = "runs/selfplay",
    overrides: Sequence[str] = (),
    config_file: str | Path | None = None,
    reference_classes: torch.Tensor | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Self-play from the π0 checkpoint folder ``pi0`` against ``oracle``; returns the final metrics.

    Settings: ``config_file`` when given (a complete config such as configs/selfplay/sppo.yaml),
    otherwise the arena preset of ``algorithm`` (:data:`ARENA_PRESETS`, the values of
    configs/selfplay/<algorithm>.yaml); then ``overrides`` (``key=value`` strings). ``oracle`` None
    builds the configured one (the arena's gold preference by default). ``reference_classes`` (T, C)
    replaces the π0 class distribution estimated from samples in the arena's class-level figures
    (e.g. one measured from more samples); it must be strictly positive.
    """
    paths = [f"policy.name_or_path={pi0}", f"output_dir={output_dir}"]
    cfg = selfplay_config(None if config_file else algorithm, config_file, [*paths, *overrides])
    out = RunDir(cfg.output_dir, name="prefgame.selfplay")
    log = out.start_logging(quiet=quiet)
    try:
        return train(cfg, out, log, oracle=oracle, reference_classes=reference_classes)
    finally:
        out.close()


# The arena settings of each algorithm (configs/selfplay/<algorithm>.yaml holds the same values).
ARENA_PRESETS: dict[str, list[str]] = {
    "nash_md": ["game.tau=0.05", "game.mixture_coef=0.2", "train.lr=2e-4"],
    "sppo": ["game.tau=0.05", "game.eta=2", "train.lr=2e-4"],
    "inpo": ["game.tau=0.05", "game.eta=5", "train.lr=2e-4"],
    "mmd": ["game.tau=0.1", "game.eta=3", "train.lr=3e-4"],
    "extragradient": ["game.tau=0.05", "game.eta=10", "train.lr=3e-4"],
}


# A short run for the quickstart's budget (applied on top of an ARENA_PRESETS entry): 10 iterations ×
# 16 prompts × K = 4, 2 optimizer steps each at a constant lr 5e-4, measured before, at iteration 5
# and after the last on 120 held-out prompts: 25–36 CPU-s for nash_md, sppo, inpo (docs/selfplay.md).
# Longer runs at this lr drift (KL 6–17 nats by 14–16 iterations, exploitability rising again).
QUICKSTART_OVERRIDES: tuple[str, ...] = (
    "train.iterations=10",
    "sampling.prompts_per_iteration=16",
    "train.steps_per_iteration=2",
    "train.batch_size=64",
    "train.micro_batch_size=64",
    "train.warmup_steps=0",
    "train.schedule=constant",
    "train.lr=5e-4",
    "eval.every=5",
    "eval.prompts=120",
    "eval.reference_samples_per_prompt=2",
)


def selfplay_config(
    algorithm: Algorithm | None, config_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> SelfPlayConfig:
    """The arena preset of ``algorithm`` (None: no preset), then ``config_file``, then ``overrides``."""
    from prefgame.config import load_config

    if algorithm is not None and algorithm not in ARENA_PRESETS:
        raise ConfigError(f"unknown algorithm '{algorithm}' (choose from {', '.join(ARENA_PRESETS)})")
    preset = [] if algorithm is None else [f"algorithm={algorithm}", *ARENA_PRESETS[algorithm]]
    return load_config(SelfPlayConfig, config_file, [*preset, *overrides])
