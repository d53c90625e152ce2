"""Sampling responses from a causal LM, its reference, or their geometric mixture (docs/design.md §3.3).

Nash-MD plays against the mixture π^μ ∝ π^{1−β} π0^{β}. On sequences it is sampled token by token:

    log π^μ(y_t | x, y_<t) = log_softmax((1 − β)·log π(·|x, y_<t) + β·log π0(·|x, y_<t))[y_t]

(:func:`~prefgame.losses.geometric_mixture_logprobs`; log_softmax of raw logits gives the same
result since per-row constants cancel). β = 0 is π and β = 1 is π0; only the models with non-zero
weight are run. :func:`sample_groups` is one batched decoding loop over several groups of rows, each
with its own β and random stream (Nash-MD's policy samples and mixture samples are two groups of one
loop): each model runs once per token over the rows of every group that needs it, with a KV cache
(:mod:`prefgame.game.decoding`: a preallocated static cache for Llama-family decoders, the model's own
cache otherwise); with ``use_cache=False`` it recomputes the whole prefix at every token instead (the
reference the cache is checked against, and the benchmark's baseline).

A response ends with a stop token (any of ``Stops.token_ids``: the tokenizer's EOS and the ids a chat
model's generation config lists), with the token that completes a stop string (``Stops.strings``;
its text is cut before the string), or at ``max_new_tokens``. Rows that have stopped keep being fed
padding (ignored) until every row of their group is done.

Randomness: one uniform draw per row per step from its group's ``generator`` (a CPU
``torch.Generator``), turned into a token by inverting the CDF in float64; a group draws nothing once
all its rows are done. The draws do not depend on the device, on whether the cache is used, or on the
other groups of the call, so a group sampled alone or with others, with or without the cache, gets
the same tokens for one seed (up to float rounding of the logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefgame.game.decoding import StackedDecoder, make_decoder
from prefgame.lm import Stops, encode_prompt, pad_batch, stops_for
from prefgame.lora import active_model, base_of


@dataclass
class SampledTokens:
    """The output of :func:`sample_tokens` for B prompts and N generated positions."""

    tokens: torch.Tensor  # (B, N) sampled token ids, pad after the end
    mask: torch.Tensor  # (B, N) bool: real response tokens (up to and including the stop token)
    logps: torch.Tensor  # (B, N) float32 log-prob of each token under the sampled distribution, 0 after the end
    stopped: torch.Tensor  # (B,) bool: ended by a stop token or string (False: cut at max_new_tokens)
    # (B, N) float32 log-prob of each token under the reference alone at temperature 1, 0 after the end,
    # where the reference computed every row's logits on the way (a stacked Nash-MD decoding); else None
    ref_logps: torch.Tensor | None = None

    def as_lists(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.mask)]


@dataclass
class Group:
    """Rows that :func:`sample_groups` samples together: their prompts' token ids, β and the generator
    of their draws (None: PyTorch's default)."""

    prompt_ids: Sequence[Sequence[int]]
    mixture_coef: float
    generator: torch.Generator | None = None


def _stop_string_hits(tokenizer, stops: Stops, tokens: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """(len(rows),) bool: the text of the last :attr:`Stops.window` tokens up to position ``n`` of each
    of ``rows`` contains a stop string."""
    windows = tokens[rows, max(0, n + 1 - stops.window) : n + 1].tolist()
    texts = tokenizer.batch_decode(windows, skip_special_tokens=True)
    return torch.tensor([any(s in t for s in stops.strings) for t in texts], dtype=torch.bool)


@torch.no_grad()
def sample_groups(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    groups: Sequence[Group],
    *,
    max_new_tokens: int,
    stops: Stops | int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    use_cache: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[SampledTokens]:
    """One response per prompt of each group, from π^μ ∝ π^{1−β} π0^{β} with the group's β, at
    ``temperature``, in one decoding loop (module docstring).

    Each step's distribution is log_softmax(((1 − β)·logits_π + β·logits_π0) / temperature); temperature 0
    is greedy decoding (the most likely token, its log-prob at temperature 1, no draws). The
    policy may be None when every β is 1 and the reference may be None when every β is 0; the
    reference may be a :class:`~prefgame.lora.Reference` (the policy with its adapters disabled for
    each of its forward passes). Both models are put in eval mode for the call and restored
    afterwards. Stop strings need the ``tokenizer``.
    """
    stops = Stops.of(stops)
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    for g in groups:
        if not 0.0 <= g.mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {g.mixture_coef}")
    if stops.strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    groups = list(groups)
    bounds = np.cumsum([0] + [len(g.prompt_ids) for g in groups])  # group g: rows bounds[g] … bounds[g+1]−1
    all_ids = [list(p) for g in groups for p in g.prompt_ids]
    if not all_ids:
        return [_empty() for _ in groups]
    # each model with non-zero weight in some group runs once per token over those groups' rows
    plan = []  # (model, rows of the batch it computes; None: all of them)
    for model, weight in ((policy, lambda b: 1.0 - b), (ref, lambda b: b)):
        served = [i for i, g in enumerate(groups) if weight(g.mixture_coef) > 0]
        if not served:
            continue
        if model is None:
            raise ValueError("a model with non-zero mixture weight is None")
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in served])
        plan.append((model, None if len(rows) == len(all_ids) else rows))
    device = next(base_of(plan[0][0]).parameters()).device
    plan = [(m, None if rows is None else torch.as_tensor(rows, device=device)) for m, rows in plan]
    modes = {id(base_of(m)): (base_of(m), base_of(m).training) for m, _ in plan}
    for net, _ in modes.values():
        net.eval()
    decoders = None
    try:
        if len(plan) == 2 and use_cache:
            stacked = StackedDecoder.of([m for m, _ in plan], all_ids, pad_token_id, device, max_new_tokens)
            if stacked is not None:  # both models step together over every row: π0's log-probs come with them
                decoders, plan = stacked, [(m, None) for m, _ in plan]
        if decoders is None:
            decoders = _Separate(plan)
            for m, rows in plan:
                ids = all_ids if rows is None else [all_ids[i] for i in rows.tolist()]
                decoders.parts.append(
                    make_decoder(m, ids, pad_token_id, device, max_new_tokens=max_new_tokens, use_cache=use_cache)
                )
        return _decode(groups, plan, decoders, bounds, stops, max_new_tokens, pad_token_id, temperature, tokenizer,
                       device)  # fmt: skip
    finally:
        if decoders is not None:
            decoders.close()
        for net, mode in modes.values():
            net.train(mode)


class _Separate:
    """Each model's own decoder over its rows of the batch (``plan``), stepped one after the other."""

    def __init__(self, plan) -> None:
        self.plan = plan
        self.parts: list = []

    def start(self) -> list[torch.Tensor]:
        return [d.start() for d in self.parts]

    def step(self, pick: torch.Tensor) -> list[torch.Tensor]:
        return [d.step(pick if rows is None else pick[rows]) for d, (_, rows) in zip(self.parts, self.plan)]

    def close(self) -> None:
        for d in self.parts:
            d.close()


def _decode(groups, plan, decoders, bounds, stops: Stops, max_new_tokens, pad_token_id, temperature, tokenizer, device):
    """The decoding loop of :func:`sample_groups` (its arguments, resolved)."""
    b = int(bounds[-1])
    sizes = [len(g.prompt_ids) for g in groups]
    tokens = torch.full((b, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_mask = torch.zeros((b, max_new_tokens), dtype=torch.bool, device=device)
    logps = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=device)
    # the reference's own log-probs of the chosen tokens, where it computes every row (it is the plan's last
    # model when it has any weight)
    ref_logps = torch.zeros_like(logps) if len(plan) == 2 and plan[1][1] is None else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    stopped = torch.zeros(b, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(stops.token_ids, dtype=torch.long, device=device)
    pad = torch.full((b,), pad_token_id, dtype=torch.long, device=device)
    greedy, temperature = temperature == 0, temperature or 1.0
    if len(plan) == 2:
        # the mixture's logits (1 − β)·ℓπ + β·ℓπ0 of every row (geometric_mixture_logprobs, with one β per
        # row), at the temperature; a model's logits are zero on the rows it does not compute, whose weight
        # for it is 0, so that β = 0 rows get exactly ℓπ and β = 1 rows ℓπ0
        beta = torch.tensor([g.mixture_coef for g, k in zip(groups, sizes) for _ in range(k)], device=device)
        weights = ((1 - beta)[:, None] / temperature, beta[:, None] / temperature)
    active = [True] * len(groups)
    used = [0] * len(groups)
    logits = decoders.start()  # per model, (its rows, V)
    for n in range(max_new_tokens):
        full = [lg.float() if rows is None else lg.new_zeros((b, lg.shape[-1])).index_copy_(0, rows, lg).float()
                for lg, (_, rows) in zip(logits, plan)]  # fmt: skip
        if len(full) == 2:
            mixed = torch.addcmul(weights[0] * full[0], weights[1], full[1])
        else:
            mixed = full[0] if temperature == 1.0 else full[0] / temperature
        step_logp = torch.log_softmax(mixed, dim=-1)  # (B, V)
        if greedy:
            pick = step_logp.argmax(-1)
        else:
            draws = [
                torch.rand(k, generator=g.generator, dtype=torch.float64) if on else torch.zeros(k, dtype=torch.float64)
                for g, k, on in zip(groups, sizes, active)
            ]  # one draw per row of every group still sampling
            u = (draws[0] if len(draws) == 1 else torch.cat(draws)).to(device)  # (B,)
            cdf = step_logp.double().exp().cumsum(-1)  # (B, V)
            pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
        pick = torch.where(done, pad, pick)
        tokens[:, n] = pick
        out_mask[:, n] = ~done
        logps[:, n] = step_logp.gather(-1, pick.unsqueeze(-1)).squeeze(-1)  # rows already done: zeroed at the end
        if ref_logps is not None:
            ref_logps[:, n] = torch.log_softmax(full[1], dim=-1).gather(-1, pick.unsqueeze(-1)).squeeze(-1)
        used = [n + 1 if on else k for on, k in zip(active, used)]
        hit = torch.isin(pick, stop_ids) & ~done
        if stops.strings:
            live = (~done & ~hit).nonzero().squeeze(-1)
            if len(live):
                hit[live] = _stop_string_hits(tokenizer, stops, tokens, live, n).to(device)
        stopped |= hit
        done |= hit
        for g in range(len(groups)):
            if active[g] and bool(done[int(bounds[g]) : int(bounds[g + 1])].all()):
                active[g] = False
        if not any(active) or n + 1 == max_new_tokens:
            break
        logits = decoders.step(pick)
    logps = torch.where(out_mask, logps, 0.0)
    ref_logps = None if ref_logps is None else torch.where(out_mask, ref_logps, 0.0)
    out = []
    for g in range(len(groups)):
        rows = slice(int(bounds[g]), int(bounds[g + 1]))
        k = used[g]
        out.append(
            SampledTokens(
                tokens[rows, :k].cpu(), out_mask[rows, :k].cpu(), logps[rows, :k].cpu(), stopped[rows].cpu(),
                None if ref_logps is None else ref_logps[rows, :k].cpu(),
            )
        )  # fmt: skip
    return out


def _empty() -> SampledTokens:
    zeros = torch.zeros((0, 0))
    return SampledTokens(zeros.long(), zeros.bool(), zeros, torch.zeros(0, dtype=torch.bool))


def sample_tokens(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    prompt_ids: Sequence[Sequence[int]],
    *,
    mixture_coef: float,
    max_new_tokens: int,
    stops: Stops | int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> SampledTokens:
    """One response per prompt from π^μ ∝ π^{1−β} π0^{β} (β = ``mixture_coef``): :func:`sample_groups`
    with one group."""
    return sample_groups(
        policy, ref, [Group(prompt_ids, mixture_coef, generator)], max_new_tokens=max_new_tokens, stops=stops,
        pad_token_id=pad_token_id, temperature=temperature, use_cache=use_cache, tokenizer=tokenizer,
    )[0]  # fmt: skip


@dataclass
class Responses:
    """Sampled responses, n per prompt, prompt-major: entry i·n + k is sample k of prompt i."""

    prompts: list[str]  # (N,) the prompt of each response
    prompt_ids: list[list[int]]  # (N,) encoded prompts (chat template applied)
    response_ids: list[list[int]]  # (N,) sampled tokens, the stop token included when produced
    texts: list[str]  # (N,) decoded responses (special tokens removed, cut before a stop string)
    # (N,) float32 log-prob of each response under the distribution it was sampled from (π^μ at the
    # sampling temperature), summed over its tokens; None when the sampler does not report it (vLLM)
    logps: torch.Tensor | None = None
    # (N,) bool: the response ended with a stop token or string (False: cut at the length limit); None
    # when unknown
    stopped: torch.Tensor | None = None
    # (N,) float32 log π0(y | x) of each response (the reference alone, temperature 1), summed over its
    # tokens, where the sampler computed it on the way (SampledTokens.ref_logps); else None
    ref_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of each prompt and its response together (what a batch of them pads to)."""
        return np.array([len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)], dtype=np.int64)

    def interleave(self, other: Responses, n: int, n_other: int) -> Responses:
        """This set (n per prompt) and ``other`` (n_other per prompt, the same prompts in the same order)
        as one set of n + n_other per prompt: each prompt's own samples first. ``logps``, ``stopped`` and
        ``ref_logps`` are kept only when both sets have them."""
        m = len(self) // n
        if len(other) != m * n_other:
            raise ValueError(f"interleave: {len(other)} responses are not {n_other} for each of {m} prompts")
        order: list[tuple[Responses, int]] = []
        for p in range(m):
            order += [(self, p * n + k) for k in range(n)] + [(other, p * n_other + k) for k in range(n_other)]

        def column(name: str) -> torch.Tensor | None:
            if getattr(self, name) is None or getattr(other, name) is None:
                return None
            return torch.stack([getattr(s, name)[i] for s, i in order])

        return Responses(
            [s.prompts[i] for s, i in order],
            [s.prompt_ids[i] for s, i in order],
            [s.response_ids[i] for s, i in order],
            [s.texts[i] for s, i in order],
            column("logps"),
            column("stopped"),
            column("ref_logps"),
        )


@dataclass(frozen=True)
class Request:
    """What :func:`generate_groups` samples for each prompt: ``n`` responses from π^μ with β =
    ``mixture_coef``, drawn from the stream of ``seed``."""

    n: int
    mixture_coef: float
    seed: int | Sequence[int]


# prefgame: this module's loop (the default: faster on CPU at every batch size measured, with the static
# cache about 2× the tokens/s of transformers' generate, on the model's own cache about 1×; docs/selfplay.md,
# *Sampling*);
# transformers: generate, for the policy alone
ENGINES = ("prefgame", "transformers")


def uses_transformers(engine: str, mixture_coef: float, *, use_cache: bool) -> bool:
    """Whether samples of one model alone (β = 0) go through transformers' ``generate``: with
    ``engine=transformers``; mixtures (β > 0) and ``use_cache=False`` always use prefgame's loop."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine == "transformers" and mixture_coef == 0.0 and use_cache


def generate_groups(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    requests: Sequence[Request],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 256,
    use_cache: bool = True,
    stops: Stops | None = None,
    engine: str = "prefgame",
) -> list[Responses]:
    """The responses of each request for every prompt (see :func:`sample_groups`), deterministic in the
    requests' seeds: batch j samples the j-th ``batch_size`` rows of every request in one loop (the
    requests' rows share each model's forward passes), so a request gets the same responses alone or
    with others. ``stops`` None: the tokenizer's EOS and those of the model's generation config
    (:func:`~prefgame.lm.stops_for`). ``engine`` (:func:`uses_transformers`) decides whether a request
    of the policy alone goes through transformers' ``generate`` instead."""
    if stops is None:
        stops = stops_for(tokenizer, base_of(policy if policy is not None else ref))
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    gens = [torch.Generator().manual_seed(_seed_int(r.seed)) for r in requests]
    rows = [[list(e) for e in encoded for _ in range(r.n)] for r in requests]
    outs: list[list[SampledTokens]] = [[] for _ in requests]
    common = dict(max_new_tokens=max_new_tokens, stops=stops, pad_token_id=tokenizer.pad_token_id,
                  temperature=temperature, tokenizer=tokenizer)  # fmt: skip
    separate = [uses_transformers(engine, r.mixture_coef, use_cache=use_cache) for r in requests]
    for start in range(0, max((len(r) for r in rows), default=0), batch_size):
        together = [i for i, r in enumerate(rows) if start < len(r) and not separate[i]]
        batch = [Group(rows[i][start : start + batch_size], requests[i].mixture_coef, gens[i]) for i in together]
        for i, out in zip(together, sample_groups(policy, ref, batch, use_cache=use_cache, **common)):
            outs[i].append(out)
        for i in (i for i, r in enumerate(rows) if start < len(r) and separate[i]):
            chunk = rows[i][start : start + batch_size]
            outs[i].append(transformers_tokens(policy, chunk, generator=gens[i], **common))
    results = []
    for r, ids, parts in zip(requests, rows, outs):
        response_ids = [seq for part in parts for seq in part.as_lists()]
        texts = response_texts(tokenizer, stops, response_ids)
        results.append(
            Responses(
                [p for p in prompts for _ in range(r.n)], ids, response_ids, texts,
                torch.cat([p.logps.sum(-1) for p in parts]) if parts else torch.zeros(0),  # zeros after the end add 0
                torch.cat([p.stopped for p in parts]) if parts else torch.zeros(0, dtype=torch.bool),
                torch.cat([p.ref_logps.sum(-1) for p in parts])
                if parts and all(p.ref_logps is not None for p in parts) else None,
            )
        )  # fmt: skip
    return results


def generate(
    policy: PreTrainedModel | None,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n: int,
    mixture_coef: float,
    max_new_tokens: int,
    seed: int | Sequence[int],
    temperature: float = 1.0,
    batch_size: int = 256,
    use_cache: bool = True,
    stops: Stops | None = None,
    engine: str = "prefgame",
) -> Responses:
    """``n`` responses for each prompt from π^μ (see :func:`sample_tokens`), deterministic in ``seed``:
    :func:`generate_groups` with one request.

    ``seed`` may be a sequence of ints (e.g. (seed, iteration, purpose)); it is hashed into one
    generator seed. The same seed, models and batch size give the same responses.
    """
    return generate_groups(
        policy, ref, tokenizer, prompts, [Request(n, mixture_coef, seed)], max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, use_cache=use_cache, stops=stops, engine=engine,
    )[0]  # fmt: skip


@torch.no_grad()
def transformers_tokens(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stops: Stops | int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> SampledTokens:
    """One response per prompt of ``model`` alone through transformers' ``generate`` (pure sampling at
    ``temperature``: no top-k, top-p or other processor, whatever the model's generation config says;
    temperature 0: greedy), with the log-probs of the chosen tokens from the logits it returns (at the
    temperature; at 1 for greedy) and the same stops as :func:`sample_groups` (stop strings applied to its
    output). Its random stream is PyTorch's global generator: seeded from one draw of ``generator`` and
    restored afterwards, or used as it is when ``generator`` is None."""
    from transformers import GenerationConfig

    stops = Stops.of(stops)
    if stops.strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    if not prompt_ids:
        return _empty()
    net = base_of(model)
    device = next(net.parameters()).device
    ids, mask = pad_batch(prompt_ids, pad_token_id, left=True)
    sampled = temperature > 0
    config = GenerationConfig(
        do_sample=sampled, temperature=temperature if sampled else None, top_k=0 if sampled else None,
        top_p=1.0 if sampled else None, max_new_tokens=max_new_tokens, eos_token_id=list(stops.token_ids) or None,
        pad_token_id=pad_token_id, return_dict_in_generate=True, output_logits=True,
    )  # fmt: skip
    stream = contextlib.nullcontext()
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        stream = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    was_training = net.training
    net.eval()
    try:
        with stream, active_model(model) as m:
            if generator is not None:
                torch.manual_seed(seed)
            out = m.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    finally:
        net.train(was_training)
    tokens = out.sequences[:, ids.shape[1] :]  # (B, N)
    logits = torch.stack(out.logits, dim=1).float() / (temperature or 1.0)  # (B, N, V)
    logps = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, N)
    b, n = tokens.shape
    is_stop = torch.isin(tokens, torch.tensor(stops.token_ids, dtype=torch.long, device=tokens.device))  # (B, N)
    stopped = is_stop.any(-1)  # (B,)
    ends = torch.where(stopped, is_stop.float().argmax(-1) + 1, n)  # (B,) tokens kept per row
    for k in range(n if stops.strings else 0):  # the first position whose text completes a stop string
        live = (ends > k).nonzero().squeeze(-1)
        if len(live) == 0:
            break
        hits = live[_stop_string_hits(tokenizer, stops, tokens, live, k).to(live.device)]
        ends[hits], stopped[hits] = k + 1, True
    keep = torch.arange(n, device=tokens.device)[None, :] < ends[:, None]  # (B, N)
    tokens = torch.where(keep, tokens, torch.full_like(tokens, pad_token_id))
    logps = torch.where(keep, logps, 0.0)
    width = int(ends.max()) if b else 0
    return SampledTokens(tokens[:, :width].cpu(), keep[:, :width].cpu(), logps[:, :width].cpu(), stopped.cpu())


def _seed_int(seed: int | Sequence[int]) -> int:
    """An int seed from an int or a tuple of ints (numpy's SeedSequence hashing, stable across runs)."""
    entropy = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % (2**63))


def sample_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int | None = None,
    stops: Stops | None = None,
    engine: str = "transformers",
) -> list[str]:
    """One response text per prompt of ``model`` (repeat prompts for several; temperature 0: greedy), for
    evaluation. ``engine`` transformers: ``generate`` in batches on PyTorch's global random stream,
    seeded with ``seed`` (the quickstart's samples); prefgame: :func:`generate` seeded by ``seed``.
    ``stops`` None: :func:`~prefgame.lm.stops_for` the model."""
    stops = stops_for(tokenizer, base_of(model)) if stops is None else stops
    if not uses_transformers(engine, 0.0, use_cache=True):
        ys = generate(
            model, None, tokenizer, prompts, n=1, mixture_coef=0.0, max_new_tokens=max_new_tokens,
            seed=0 if seed is None else seed, temperature=temperature, batch_size=batch_size, stops=stops,
            engine="prefgame",
        )  # fmt: skip
        return ys.texts
    if seed is not None:
        torch.manual_seed(seed)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        out = transformers_tokens(
            model, ids, max_new_tokens=max_new_tokens, stops=stops, pad_token_id=tokenizer.pad_token_id,
            temperature=temperature, tokenizer=tokenizer,
        )  # fmt: skip
        texts += response_texts(tokenizer, stops, out.as_lists())
    return texts


def response_texts(tokenizer: PreTrainedTokenizerBase, stops: Stops, response_ids: list[list[int]]) -> list[str]:
    """The texts of sampled responses: special tokens removed, cut before a stop string, stripped."""
    return [stops.cut(t).strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
