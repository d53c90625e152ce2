"""What every trainer of a policy against π0 shares (self-play, PPO, DPO): the policy and its frozen
reference loaded from one checkpoint, the prompt pools with one held-out split, sampling and sequence
log-probs (:class:`PolicyRuntime`), one evaluator with one metric vocabulary (:class:`PolicyEvaluator`),
and the iteration loop of the on-policy trainers (:func:`run_iterations`).

One split for every trainer, so that their held-out measurements are taken on the same prompts: on the
arena the held-out prompts are ``n_eval // N_PROMPT_TYPES`` per prompt type (stratified), from a
file a seeded permutation holds out ``n_eval`` (at most half); the rest is the training pool.

The metric vocabulary (every trainer's ``metrics.jsonl`` rows and ``metrics.json``, docs/design.md §2.4):
``eval/kl_to_ref`` (Monte Carlo sequence-level KL(π‖π0), with ``eval/kl_to_ref_se``),
``eval/response_tokens``, ``eval/eos_rate``, ``eval/averaged_iterates``; with a preference oracle
``eval/win_rate_vs_ref`` (``_se``) and ``eval/win_rate_vs_previous``; with a reward model ``eval/score``;
on the arena the exact class-level figures ``eval/gold_win_rate_vs_ref``, ``eval/exploitability`` and,
with a game, ``eval/gap``, ``eval/tv_to_equilibrium``, ``eval/class_kl``
(:func:`~prefgame.game.lm_selfplay.class_figures`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from prefgame.config import param
from prefgame.errors import ConfigError, PrefgameError
from prefgame.game.lm_sampling import ENGINES, Request, Responses, generate_groups
from prefgame.game.lm_selfplay import ClassGame, PreferenceCache, class_figures, smoothed_class_distribution
from prefgame.lm import build_pairs_batch, load_tokenizer, stops_for, token_logps
from prefgame.lora import LoraConfig, active_model, apply_lora, reference
from prefgame.losses import sequence_logprobs
from prefgame.run import Progress, RunDir, read_jsonl
from prefgame.train import sharding
from prefgame.train.engine import NonFiniteGuard, RunStart, begin_run, log_row, make_accelerator, resume_state
from prefgame.train.precision import Precision, load_frozen_lm, load_trainable_lm

# the seed stream of the held-out split: (train.seed, HELD_OUT)
HELD_OUT = 12345
# purposes of the evaluator's random streams, seeded by (train.seed, iteration, purpose); the trainers'
# own purposes are below 8
EVAL_SAMPLES, REF_SAMPLES = 8, 9


@dataclass
class PolicyConfig:
    name_or_path: str = param(
        "",
        "π0: causal LM folder or hub name; the policy starts from it and a frozen copy is the reference "
        "(with lora: its weights with the adapters disabled)",
    )
    tokenizer: str = param("", "tokenizer folder or hub name; empty: the model's own")
    init_from: str = param(
        "",
        "start the trained policy from this causal LM folder (the same architecture and tokenizer as π0, e.g. an "
        "earlier run's model/) instead of π0's weights; π0 (name_or_path) stays the reference. The warm start of "
        "'prefgame online'; empty: π0",
    )
    dtype: Literal["float32", "bfloat16"] = param(
        "float32",
        "precision asked for π0's weights: the frozen reference is stored in the lower of it and the compute "
        "dtype (train.mixed_precision); the trained policy keeps float32 master weights (in this dtype only "
        "with train.low_precision_weights)",
    )
    offload_reference: bool = param(
        False,
        "keep the frozen reference in CPU memory and move it to the accelerator only while it samples or "
        "scores (frees its memory during the optimizer steps, for two copies of its weights per use)",
    )


@dataclass
class PromptsConfig:
    source: Literal["arena", "file"] = param(
        "arena", "arena: the arena's prompt grammar (enables the exact class-level metrics); file: `path`"
    )
    path: str = param("", "source=file: a .jsonl/.json/.parquet/.csv file or hub data set with prompts")
    split: str = param("train", "source=file: split of a hub data set")
    field: str = param(
        "prompt",
        "source=file: column holding the prompts: text, HH transcripts or [{role, content}] message lists "
        "(whole conversations; a final assistant turn is left out); without that column, the prompts of "
        "preference data in any supported format",
    )


@dataclass
class GenerationConfig:
    """How responses are generated (``sampling``); each trainer's section extends it."""

    max_new_tokens: int = param(40, "response length limit in tokens")
    batch_size: int = param(256, "sequences per generation batch")
    use_cache: bool = param(True, "reuse the KV cache between tokens (false recomputes the prefix; vllm ignores it)")
    temperature: float = param(1.0, "sampling temperature of training samples (1: the policy itself)")
    eos_token_ids: list[int] = param(
        [],
        "token ids that end a response (kept as its last token); empty: the tokenizer's EOS and every id of "
        "the model's generation_config.eos_token_id (chat models list several)",
    )
    stop: list[str] = param(
        [], "stop strings: a response ends with the token that completes one, and its text is cut before it"
    )
    engine: Literal[ENGINES] = param(
        "prefgame",
        "sampler of one model alone (mixtures always use prefgame's loop): prefgame (its batched loop, a "
        "static KV cache for float32 llama/mistral/qwen2 models; faster on CPU, docs/selfplay.md) or transformers "
        "(`generate`)",
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be ≥ 1")
        if not self.temperature > 0:
            raise ValueError("sampling.temperature must be > 0")
        check_stops(self.eos_token_ids, self.stop, "sampling")


def check_stops(eos_token_ids, stop, key: str) -> None:
    """Stop token ids are ≥ 0 and stop strings are not empty (``key``: the config section)."""
    if any(i < 0 for i in eos_token_ids):
        raise ValueError(f"{key}.eos_token_ids must be token ids ≥ 0, got {list(eos_token_ids)}")
    if any(not s for s in stop):
        raise ValueError(f"{key}.stop must not contain an empty string (it would stop every response at once)")


@dataclass
class EvalConfig:
    """The held-out measurements of a policy (``eval``); each trainer's section may extend it."""

    every: int = param(10, "measure every N iterations (0: only before the first and after the last)")
    prompts: int = param(240, "held-out prompts (arena: the same number per prompt type; 0: no measurements)")
    samples_per_prompt: int = param(2, "policy responses per held-out prompt at each measurement")
    reference_samples_per_prompt: int = param(4, "π0 responses per held-out prompt (measured once)")

    def __post_init__(self) -> None:
        if self.prompts < 0 or self.samples_per_prompt < 1 or self.reference_samples_per_prompt < 1:
            raise ValueError(
                "eval.prompts must be ≥ 0, eval.samples_per_prompt and eval.reference_samples_per_prompt ≥ 1"
            )
        if self.reference_samples_per_prompt < self.samples_per_prompt:
            raise ValueError("eval.reference_samples_per_prompt must be ≥ eval.samples_per_prompt")


def load_policy(cfg: PolicyConfig, device, precision: Precision, *, lora: LoraConfig | None = None, seed: int = 0):
    """(tokenizer, policy, reference): the policy from ``cfg.name_or_path`` (or ``cfg.init_from``) to train and
    a frozen copy of π0 (``cfg.name_or_path``) on ``device``, at the run's ``precision``
    (:mod:`prefgame.train.precision`); with
    ``lora.enabled`` the policy trains adapters (seeded by ``seed``) and π0 is its base with the adapters
    disabled (:class:`~prefgame.lora.Reference`, no second copy)."""
    if not cfg.name_or_path:
        raise PrefgameError("policy.name_or_path is empty: give π0's folder, e.g. runs/quickstart/pi0/model")
    tok = load_tokenizer(cfg.tokenizer or cfg.name_or_path)
    if lora is not None and lora.enabled and cfg.offload_reference:
        raise ConfigError(
            "policy.offload_reference moves a frozen copy of π0 to CPU memory; with lora.enabled π0 is the "
            "policy's own weights (no copy): set policy.offload_reference=false"
        )
    if lora is not None and lora.enabled and cfg.init_from:
        raise ConfigError(
            "policy.init_from starts the policy from other weights while π0 stays the reference; with lora.enabled "
            "π0 is the policy's base (the adapters disabled), so the two cannot differ: set lora.enabled=false"
        )
    policy = load_trainable_lm(cfg.init_from or cfg.name_or_path, cfg.dtype, precision, key="policy.dtype")
    if lora is not None and lora.enabled:
        policy = apply_lora(policy, lora, seed=seed).to(device)
        return tok, policy, reference(policy)
    ref = load_frozen_lm(cfg.name_or_path, cfg.dtype, precision, reference_home(cfg, device))
    return tok, policy, ref


def reference_home(cfg: PolicyConfig, device):
    """Where the frozen reference stays between its uses: CPU memory with ``policy.offload_reference``."""
    return torch.device("cpu") if cfg.offload_reference else device


def response_batch(responses, idx, pad_id: int, device) -> dict[str, torch.Tensor]:
    """The right-padded batch (input_ids, attention_mask, response_mask) of ``responses`` rows ``idx`` on
    ``device``."""
    batch = build_pairs_batch([responses.prompt_ids[i] for i in idx], [responses.response_ids[i] for i in idx], pad_id)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def sequence_logps(
    model, responses, pad_id: int, *, batch_size: int, device, autocast=contextlib.nullcontext, chunk_size=None
) -> torch.Tensor:
    """log π(y | x) of every response, summed over its tokens, (N,) float32 on CPU; ``batch_size`` rows at
    a time, in eval mode, the vocabulary projected ``chunk_size`` rows at a time (:func:`token_logps`)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(responses), batch_size):
        batch = response_batch(responses, range(start, min(start + batch_size, len(responses))), pad_id, device)
        with autocast():
            logps = token_logps(model, batch, chunk_size=chunk_size)
        out.append(sequence_logprobs(logps.float(), batch["response_mask"][:, 1:]).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def prompt_pools(cfg: PromptsConfig, arena, *, seed: int, n_eval: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts), the split of the module docstring."""
    rng = np.random.default_rng([seed, HELD_OUT])
    if cfg.source == "arena":
        from prefgame.arena.world import N_PROMPT_TYPES

        per_type = max(1, n_eval // N_PROMPT_TYPES)
        by_type: dict[int, list[str]] = {}
        for p in arena.prompts:
            by_type.setdefault(p.type_index, []).append(p.text)
        held = []
        for t in range(N_PROMPT_TYPES):
            texts = by_type[t]
            held += [texts[i] for i in rng.choice(len(texts), size=min(per_type, len(texts)), replace=False)]
        held_set = set(held)
        return [p.text for p in arena.prompts if p.text not in held_set], held
    if not cfg.path:
        raise PrefgameError("prompts.path is empty: give a prompt file, or set prompts.source=arena")
    from prefgame.data.columns import load_prompts

    texts = load_prompts(cfg.path, cfg.split, cfg.field)
    order = rng.permutation(len(texts))
    n = min(n_eval, len(texts) // 2)
    return [texts[i] for i in order[n:]], [texts[i] for i in order[:n]]


# ---------------------------------------------------------------------------------------------- runtime


class PolicyRuntime:
    """What every trainer of a policy against π0 holds and does: the accelerator, tokenizer, policy and
    reference (``ref``: a frozen copy of π0, or with LoRA the policy with its adapters disabled, evaluated
    through :func:`~prefgame.lora.active_model`), the arena when there is one, the prompt pools, the
    non-finite guard, sampling and sequence log-probs. ``cfg`` has the sections ``policy``, ``prompts``,
    ``arena``, ``sampling``, ``train``, ``eval`` and ``lora``; ``acc`` and ``models`` (tokenizer, policy,
    reference) may be given when the trainer built them already."""

    def __init__(
        self, cfg, out_dir, *, batch_size: int, batch_key: str = "train.batch_size", arena: bool,
        chunk_size: int | None = None, acc=None, models=None,
    ) -> None:  # fmt: skip
        tc = cfg.train
        self.cfg = cfg
        self.acc = acc if acc is not None else make_accelerator(tc, out_dir, batch_size=batch_size, batch_key=batch_key)
        self.tok, self.policy, self.ref = (
            models if models is not None
            else load_policy(cfg.policy, self.acc.device, Precision.of(tc, self.acc), lora=cfg.lora, seed=tc.seed)
        )  # fmt: skip
        self.arena = cfg.arena.build() if arena else None
        self.train_prompts, self.eval_prompts = prompt_pools(
            cfg.prompts, self.arena, seed=tc.seed, n_eval=cfg.eval.prompts
        )
        self.guard = NonFiniteGuard(tc.max_nonfinite_steps)
        self.chunk_size = chunk_size
        sc = cfg.sampling
        self.stops = stops_for(self.tok, self.policy, eos_token_ids=sc.eos_token_ids, stop=sc.stop)
        # the sampler's log-probs equal sequence_logps only for fp32 weights run without autocast
        self._fp32 = next(self.policy.parameters()).dtype == torch.float32 and self.acc.mixed_precision == "no"
        self.average = None  # a weight average measured instead of the policy (self-play's train.average_from)
        self.reference_borrowed = False  # the offloaded reference is on the accelerator (:meth:`reference`)
        self.averaged = 0  # iterates in the average

    def start(self, out: RunDir, job: str, *, modules: dict, optimizer, scheduler, unit: str):
        """(run, state): the engine's run start-up (:func:`begin_run`, :func:`resume_state`) for this
        runtime's job."""
        run = begin_run(out, self.cfg, self.acc, job=job, resume=self.cfg.resume, report_to=self.cfg.train.report_to)
        return run, resume_state(run, out, modules=modules, optimizer=optimizer, scheduler=scheduler, unit=unit)

    def measured_model(self):
        """The model measurements sample: the weight average once it holds an iterate, else None (the policy)."""
        return self.average if self.averaged else None

    def sample(
        self, prompts: Sequence[str], seed: tuple[int, ...], *, n: int = 1, model=None, mixture_coef: float = 0.0,
        temperature: float | None = None,
    ) -> Responses:  # fmt: skip
        """``n`` responses per prompt from the policy (or ``model``), or from the mixture π^μ when β > 0, at
        ``temperature`` (None: ``sampling.temperature``; measurements pass 1, the policy itself).

        ``logps`` of the result are the sampler's log π(y|x) under the model that sampled them when they
        equal what :meth:`sequence_logps` computes for it (no mixture, temperature 1, fp32 without
        autocast), else None.
        """
        request = Request(n, mixture_coef, seed)
        return self.sample_requests(prompts, [request], model=model, temperature=temperature)[0]

    def sample_requests(
        self, prompts: Sequence[str], requests: Sequence[Request], *, model=None, temperature: float | None = None
    ) -> list[Responses]:
        """The responses of each request (n per prompt, its β and seed) as :meth:`sample` gives them, the
        requests sampled together: one decoding loop, each model's forward passes shared by the requests
        that use it (Nash-MD's policy and mixture samples), each request with its own random stream."""
        sc = self.cfg.sampling
        temperature = sc.temperature if temperature is None else temperature
        uses_ref = model is self.ref or any(r.mixture_coef > 0 for r in requests)
        # under FSDP every process samples the same, in step, with the policy's root parameters gathered
        with sharding.gathered(self.acc), self.reference() if uses_ref else contextlib.nullcontext():
            out = generate_groups(
                self.policy if model is None else model, self.ref, self.tok, prompts, requests,
                max_new_tokens=sc.max_new_tokens, temperature=temperature, batch_size=sc.batch_size,
                use_cache=sc.use_cache, stops=self.stops, engine=sc.engine,
            )  # fmt: skip
        exact = temperature == 1.0 and self._fp32
        out = [
            ys if exact and r.mixture_coef == 0.0 else dataclasses.replace(ys, logps=None)
            for ys, r in zip(out, requests)
        ]
        # π0's log-probs from the sampler equal sequence_logps(ref) where both compute in float32
        return out if self._fp32 else [dataclasses.replace(ys, ref_logps=None) for ys in out]

    def policy_logps(self, responses: Responses, model=None) -> torch.Tensor:
        """log π(y | x) of responses sampled from ``model`` (None: the current policy), with no update
        since: the sampler's figures when it kept them (the same sums of the same token log-probs, up to
        float rounding), otherwise a forward pass (:meth:`sequence_logps`)."""
        if responses.logps is not None:
            return responses.logps.float()
        return self.sequence_logps(self.policy if model is None else model, responses)

    def reference_logps(self, responses: Responses) -> torch.Tensor:
        """log π0(y | x) of ``responses``: the sampler's figures when it computed them on the way (the same
        sums of the same token log-probs, up to float rounding), otherwise a forward pass of the reference."""
        if responses.ref_logps is not None:
            return responses.ref_logps.float()
        return self.sequence_logps(self.ref, responses)

    def sequence_logps(self, model, responses: Responses) -> torch.Tensor:
        """log π(y | x) summed over response tokens, (N,) float32 on CPU, in eval mode, no gradient; ``model``
        a causal LM or the reference (:attr:`ref`, a frozen copy or the adapter-disabled policy)."""
        reference = self.reference() if model is self.ref else contextlib.nullcontext()
        with sharding.gathered(self.acc), reference, active_model(model) as net:
            return sequence_logps(
                net, responses, self.tok.pad_token_id, batch_size=self.cfg.train.micro_batch_size,
                device=self.acc.device, autocast=self.acc.autocast, chunk_size=self.chunk_size,
            )  # fmt: skip

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference on the accelerator for the block: with ``policy.offload_reference`` it is
        moved there from CPU memory and back afterwards (nested blocks move it once)."""
        home = reference_home(self.cfg.policy, self.acc.device)
        if home == self.acc.device or self.reference_borrowed:
            yield self.ref
            return
        self.reference_borrowed = True
        self.ref.to(self.acc.device)
        try:
            yield self.ref
        finally:
            self.ref.to(home)
            self.reference_borrowed = False

    def batch(self, responses: Responses, idx) -> dict[str, torch.Tensor]:
        return response_batch(responses, idx, self.tok.pad_token_id, self.acc.device)

    def eos_missing(self, responses: Responses) -> torch.Tensor:
        """(N,) bool: the response ends without a stop token or stop string (cut at the length limit)."""
        if responses.stopped is not None:
            return ~responses.stopped.bool()
        ids = set(self.stops.token_ids)
        return torch.tensor([len(r) == 0 or r[-1] not in ids for r in responses.response_ids])


# ---------------------------------------------------------------------------------------------- evaluator


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(len(x))) if len(x) > 1 else 0.0


class PolicyEvaluator:
    """Held-out measurements of a policy against π0, in the vocabulary of the module docstring.

    π0 answers the held-out prompts once (``eval.reference_samples_per_prompt`` each); each measurement
    samples ``eval.samples_per_prompt`` responses of the measured model (temperature 1). ``preferences``
    (a fresh :class:`PreferenceCache` per call) adds oracle win rates, the k-th policy sample of a prompt
    meeting π0's k-th; ``scores`` (responses → (N,) rewards) adds the mean reward; ``tau`` adds the
    arena's regularized class-level game (π0's class distribution smoothed with ``reference_prior``
    pseudo-samples, or ``reference_classes``)."""

    def __init__(
        self, rt: PolicyRuntime, *, preferences: Callable[[], PreferenceCache] | None = None,
        scores: Callable[[Responses], torch.Tensor] | None = None, tau: float | None = None,
        reference_prior: float = 0.0, reference_classes: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        ec, seed = rt.cfg.eval, rt.cfg.train.seed
        self.rt, self.preferences, self.scores = rt, preferences, scores
        self.reference = rt.sample(
            rt.eval_prompts, (seed, 0, REF_SAMPLES), n=ec.reference_samples_per_prompt, model=rt.ref, temperature=1.0
        )
        self.ref_classes = self.game = None
        if rt.arena is not None and rt.cfg.prompts.source == "arena":
            self.ref_classes = rt.arena.class_distribution(self.reference.prompts, self.reference.texts)
            if tau is not None:
                rho0 = reference_classes
                if rho0 is None:
                    rho0 = smoothed_class_distribution(
                        rt.arena, self.reference.prompts, self.reference.texts, prior=reference_prior
                    )
                self.game = ClassGame(rt.arena.gold_matrix, rho0, rt.arena.type_probs, tau)
        n_ref, n = ec.reference_samples_per_prompt, ec.samples_per_prompt
        self._paired = [i * n_ref + k for i in range(len(rt.eval_prompts)) for k in range(n)]
        self.previous: Responses | None = None
        self.seconds = 0.0

    def measure(self, t: int) -> dict[str, Any]:
        """Figures of the measured model after t iterations; remembers its samples for the next
        ``eval/win_rate_vs_previous``."""
        start = time.perf_counter()
        rt = self.rt
        model = rt.measured_model()
        ys = rt.sample(
            rt.eval_prompts, (rt.cfg.train.seed, t, EVAL_SAMPLES), n=rt.cfg.eval.samples_per_prompt, model=model,
            temperature=1.0,
        )  # fmt: skip
        kl, kl_se = _mean_se(rt.policy_logps(ys, model) - rt.sequence_logps(rt.ref, ys))
        row: dict[str, Any] = {
            "eval/kl_to_ref": kl,
            "eval/kl_to_ref_se": kl_se,
            "eval/response_tokens": float(np.mean([len(r) for r in ys.response_ids])),
            "eval/eos_rate": 1.0 - float(rt.eos_missing(ys).float().mean()),
            "eval/averaged_iterates": rt.averaged,
        }
        if self.scores is not None:
            row["eval/score"] = float(self.scores(ys).mean())
        if self.preferences is not None:
            prefs = self.preferences()
            vs_ref = prefs.query(ys.prompts, ys.texts, [self.reference.texts[i] for i in self._paired])
            row["eval/win_rate_vs_ref"], row["eval/win_rate_vs_ref_se"] = _mean_se(vs_ref)
            row["eval/win_rate_vs_previous"] = None
            if self.previous is not None:
                row["eval/win_rate_vs_previous"] = float(prefs.query(ys.prompts, ys.texts, self.previous.texts).mean())
            self.previous = ys
        if self.ref_classes is not None:
            pi = rt.arena.class_distribution(ys.prompts, ys.texts)
            row.update({f"eval/{k}": v for k, v in class_figures(rt.arena, pi, self.ref_classes, self.game).items()})
        self.seconds += time.perf_counter() - start
        return row

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run measures as an uninterrupted one: the texts of
        the last measurement's samples (the opponents of the next ``eval/win_rate_vs_previous``)."""
        return {"previous_texts": None if self.previous is None else list(self.previous.texts)}

    def load_state(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state`; False when ``state`` has none (no oracle, or a checkpoint without it)."""
        texts = state.get("previous_texts")
        if texts is None or self.preferences is None:
            return False
        n = self.rt.cfg.eval.samples_per_prompt
        prompts = [p for p in self.rt.eval_prompts for _ in range(n)]
        if len(texts) != len(prompts):
            raise PrefgameError(
                f"the checkpoint holds {len(texts)} evaluation samples, the config asks for {len(prompts)}: "
                "resume with the eval settings of the interrupted run"
            )
        self.previous = Responses(prompts, [], [], list(texts))  # only prompts and texts are read
        return True


# ---------------------------------------------------------------------------------------------- iterations


def run_iterations(
    rt: PolicyRuntime, out: RunDir, run: RunStart, *, name: str, unit: str, total: int, start: int,
    state: dict[str, Any], iterate: Callable[[int], dict[str, Any]], evaluator: PolicyEvaluator | None,
    checkpoint: Callable[[int], None] | None, show: Sequence[str], log,
) -> float:  # fmt: skip
    """The loop of every on-policy trainer: iterations ``start`` … ``total``−1, each ``iterate(t)`` (its
    row's figures), measured every ``eval.every`` iterations and after the last, one ``metrics.jsonl``
    row each, then ``checkpoint(t + 1)`` on every process (:func:`prefgame.train.engine.save_checkpoint`
    writes on the main one). π0 is measured first on a fresh start (and
    on a resumed one whose checkpoint lacks the evaluator's state, without logging it). Returns the
    seconds spent in ``iterate``."""
    if evaluator is not None and (start == 0 or not evaluator.load_state(state)):
        first = evaluator.measure(start)
        if start == 0:
            log_row(out, rt.acc, run, 0, {unit: 0, **first})
    every = rt.cfg.eval.every
    progress = Progress(total - start, name, log, every_s=5.0)
    seconds = 0.0
    for t in range(start, total):
        t0 = time.perf_counter()
        row = {unit: t + 1, **iterate(t)}
        seconds += time.perf_counter() - t0
        row["seconds"] = time.perf_counter() - t0
        done = t + 1
        if evaluator is not None and ((every and done % every == 0) or done == total):
            row.update(evaluator.measure(done))
        log_row(out, rt.acc, run, done, row)
        if checkpoint is not None:
            checkpoint(done)
        progress.update(**{k: row[k] for k in show if row.get(k) is not None})
    rt.acc.wait_for_everyone()
    return seconds


def measured_rows(out: RunDir) -> dict[str, Any]:
    """The first and last measured rows of ``metrics.jsonl`` and every measured row's figures (the
    convergence history), without wall times, so that a resumed run's summary equals an uninterrupted
    run's."""
    rows = read_jsonl(out.file("metrics.jsonl")) if out.file("metrics.jsonl").exists() else []
    measured = [{k: v for k, v in r.items() if k != "seconds"} for r in rows if "eval/kl_to_ref" in r]
    history = [{k: v for k, v in r.items() if k.startswith("eval/") or k in ("iteration", "round")} for r in measured]
    return {"initial": measured[0] if measured else {}, "final": measured[-1] if measured else {}, "history": history}


def summary_text(head: str, m: dict[str, Any]) -> str:
    """The one-line summary of a policy run: ``head`` then the final figures of the vocabulary that the
    run measured, with the initial (π0's) where it says how far the run moved."""
    i, f = m.get("initial") or {}, m.get("final") or {}
    parts = []
    for key, label in (("eval/win_rate_vs_ref", "win rate vs π0"), ("eval/score", "reward")):
        if f.get(key) is not None:
            parts.append(f"{label} {f[key]:.3f}" + (f" (π0 {i[key]:.3f})" if key == "eval/score" and key in i else ""))
    if "eval/kl_to_ref" in f:
        parts.append(f"KL to π0 {f['eval/kl_to_ref']:.3f}")
    if "eval/gold_win_rate_vs_ref" in f:
        parts.append(f"gold win rate vs π0 {f['eval/gold_win_rate_vs_ref']:.3f}")
    for key, label in (("eval/exploitability", "exploitability"), ("eval/tv_to_equilibrium", "TV to π*")):
        if key in f:
            parts.append(f"{label} {i[key]:.3f} → {f[key]:.3f}" if key in i else f"{label} {f[key]:.3f}")
    return head + (": " + ", ".join(parts) if parts else "")
