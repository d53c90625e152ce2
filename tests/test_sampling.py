"""Generation: the static-cache decoder against the model's own forward for each architecture it
computes, several stop tokens and stop strings (batched, left-padded, with a mixture), several
request groups in one loop, transformers' ``generate`` as an engine, and the stops a job resolves.

The models are tiny random decoders over the arena vocabulary; their samples are nonsense, which is
all these tests need: exact log-probabilities and where responses end.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.arena.world import all_prompts
from prefgame.errors import PrefgameError
from prefgame.game.decoding import CachedForward, StackedDecoder, StaticCacheDecoder, make_decoder
from prefgame.game.lm_sampling import (
    Group,
    Request,
    generate,
    generate_groups,
    sample_groups,
    sample_tokens,
    transformers_tokens,
    uses_transformers,
)
from prefgame.lm import Stops, build_pairs_batch, encode_prompt, stops_for
from prefgame.losses import geometric_mixture_logprobs


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def llama(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))


def other_architecture(kind: str, tok):
    """A tiny random model of another family the static-cache decoder computes: grouped-query attention
    (2 key/value heads for 4 query heads), Qwen2's q/k/v biases."""
    torch.manual_seed(1)
    common = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def prompt_ids(tok, n: int = 5) -> list[list[int]]:
    """Arena prompts of different lengths (left padding), the first one twice (a shared prefill)."""
    ids = [encode_prompt(tok, p.text) for p in all_prompts()[:: 2700 // n][:n]]
    assert len({len(i) for i in ids}) > 1
    return [ids[0], *ids]


def forward_logits(model, prompts, responses, pad_id) -> list[torch.Tensor]:
    """The logits (N_b + 1, V) that a right-padded forward pass gives at each response position of each row
    (position k: the distribution of response token k; the last one follows the whole response)."""
    batch = build_pairs_batch(prompts, responses, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return [logits[b, len(p) - 1 : len(p) + len(r)] for b, (p, r) in enumerate(zip(prompts, responses))]


# ---------------------------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_static_cache_decoder_equals_the_model_forward(tok, kind):
    """Prefill then six steps of the static-cache decoder give, for every row of a left-padded batch with
    a repeated prompt, the logits of the model's own full forward pass (float32 rounding)."""
    model = (llama(tok) if kind == "llama" else other_architecture(kind, tok)).eval()
    ids = prompt_ids(tok)
    assert StaticCacheDecoder.supports(model, 64)
    decoder = StaticCacheDecoder(model, ids, tok.pad_token_id, torch.device("cpu"), max_new_tokens=6)
    steps = [decoder.start()]
    fed = torch.randint(6, len(tok), (len(ids), 6), generator=torch.Generator().manual_seed(0))
    for n in range(6):
        steps.append(decoder.step(fed[:, n]))
    got = torch.stack(steps, dim=1)  # (B, 7, V)
    want = forward_logits(model, ids, fed.tolist(), tok.pad_token_id)
    for b in range(len(ids)):
        torch.testing.assert_close(got[b], want[b], rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_stacked_decoder_equals_each_models_own(tok, kind):
    """A policy and a different reference stepped together (one batched product per operation over both
    models) give, at the prefill and six steps, each model's own static-cache logits; models of
    different shapes, or in low precision, are not stacked."""
    build = (lambda seed: llama(tok, seed)) if kind == "llama" else (lambda seed: other_architecture(kind, tok))
    policy, ref = build(0).eval(), build(1).eval()
    if kind != "llama":  # other_architecture seeds itself: make the reference differ
        with torch.no_grad():
            for w in ref.parameters():
                w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
    ids = prompt_ids(tok)
    cpu = torch.device("cpu")
    stacked = StackedDecoder.of([policy, ref], ids, tok.pad_token_id, cpu, max_new_tokens=6)
    assert stacked is not None
    alone = [StaticCacheDecoder(m, ids, tok.pad_token_id, cpu, max_new_tokens=6) for m in (policy, ref)]
    fed = torch.randint(6, len(tok), (len(ids), 6), generator=torch.Generator().manual_seed(0))
    got, want = [stacked.start()], [[d.start() for d in alone]]
    for n in range(6):
        got.append(stacked.step(fed[:, n]))
        want.append([d.step(fed[:, n]) for d in alone])
    for g, w in zip(got, want):
        for j in range(2):
            torch.testing.assert_close(g[j], w[j], rtol=0, atol=2e-5)
    assert not torch.allclose(got[-1][0], got[-1][1])
    other = LlamaForCausalLM(tiny_llama_config(tok, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64))
    assert StackedDecoder.of([policy, other], ids, tok.pad_token_id, cpu, max_new_tokens=6) is None
    low = llama(tok, 1).to(torch.bfloat16)
    assert StackedDecoder.of([policy, low], ids, tok.pad_token_id, cpu, max_new_tokens=6) is None


def test_large_models_are_not_stacked(tok, monkeypatch):
    """Stacking copies both models' weights once more; beyond STACK_MAX_PARAMETERS each decodes alone."""
    policy, ref = llama(tok, 0).eval(), llama(tok, 1).eval()
    ids, cpu = prompt_ids(tok), torch.device("cpu")
    size = sum(p.numel() for p in policy.parameters())
    monkeypatch.setattr("prefgame.game.decoding.STACK_MAX_PARAMETERS", size)
    assert StackedDecoder.of([policy, ref], ids, tok.pad_token_id, cpu, max_new_tokens=6) is not None
    monkeypatch.setattr("prefgame.game.decoding.STACK_MAX_PARAMETERS", size - 1)
    assert StackedDecoder.of([policy, ref], ids, tok.pad_token_id, cpu, max_new_tokens=6) is None


def test_decoder_choice(tok, monkeypatch):
    """The static cache where it computes the model exactly, the model's own cache otherwise: another
    family, a sliding window shorter than the sequences, a model in bfloat16, and model types it is told
    not to compute."""
    ids = prompt_ids(tok, 2)
    cpu = torch.device("cpu")
    model = llama(tok)
    assert isinstance(make_decoder(model, ids, 0, cpu, max_new_tokens=4, use_cache=True), StaticCacheDecoder)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert not StaticCacheDecoder.supports(gpt2, 64)
    windowed = MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                sliding_window=8))  # fmt: skip
    assert not StaticCacheDecoder.supports(windowed, 64) and StaticCacheDecoder.supports(windowed, 8)
    assert not StaticCacheDecoder.supports(llama(tok).to(torch.bfloat16), 64)
    monkeypatch.setattr("prefgame.game.decoding.STATIC_CACHE_TYPES", ())
    assert isinstance(make_decoder(model, ids, 0, cpu, max_new_tokens=4, use_cache=True), CachedForward)


# ---------------------------------------------------------------------------------------------- stops


@pytest.fixture(params=["static", "transformers-cache"])
def decoder_kind(request, monkeypatch):
    if request.param == "transformers-cache":
        monkeypatch.setattr("prefgame.game.decoding.STATIC_CACHE_TYPES", ())
    return request.param


def ends(tokens: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m].tolist() for row, m in zip(tokens, mask)]


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_several_stop_tokens_end_generation_batched_and_left_padded(tok, decoder_kind, beta):
    """Six stop ids over 40 left-padded rows: each row ends exactly at its first stop token (kept as its
    last token, flagged as stopped) or runs to the limit without one; both kinds occur, several
    different ids end rows, and the reported log-probs are the mixture's, teacher-forced."""
    policy, ref = llama(tok, 0).eval(), llama(tok, 1).eval()
    ids = [p for p in prompt_ids(tok, 4) for _ in range(8)]
    stop_ids = (tok.eos_token_id, *range(20, 25))
    out = sample_tokens(
        policy, ref, ids, mixture_coef=beta, max_new_tokens=24, stops=stop_ids, pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    rows = ends(out.tokens, out.mask)
    ended_by = set()
    for row, stopped in zip(rows, out.stopped.tolist()):
        hits = [i for i, t in enumerate(row) if t in stop_ids]
        if stopped:
            assert hits == [len(row) - 1]
            ended_by.add(row[-1])
        else:
            assert hits == [] and len(row) == 24
    assert 2 <= len(ended_by) and 0 < int(out.stopped.sum()) < len(rows)
    lp_pi = forward_logits(policy, ids, rows, tok.pad_token_id)
    lp_0 = forward_logits(ref, ids, rows, tok.pad_token_id)
    for b, row in enumerate(rows):
        expected = geometric_mixture_logprobs(lp_pi[b][: len(row)], lp_0[b][: len(row)], mixture_coef=beta)
        picked = expected.gather(-1, torch.tensor(row)[:, None]).squeeze(-1)
        torch.testing.assert_close(out.logps[b, : len(row)], picked, rtol=0, atol=2e-5)
        assert bool((out.logps[b, len(row) :] == 0).all())
        if out.ref_logps is not None:  # π0 alone, from the logits the mixture needed anyway
            alone = torch.log_softmax(lp_0[b][: len(row)], dim=-1).gather(-1, torch.tensor(row)[:, None])
            torch.testing.assert_close(out.ref_logps[b, : len(row)], alone.squeeze(-1), rtol=0, atol=2e-5)
            assert bool((out.ref_logps[b, len(row) :] == 0).all())
    # the reference computes every row only where the mixture needs it everywhere (β > 0)
    assert (out.ref_logps is not None) == (beta > 0)


def test_a_stop_string_ends_generation_and_cuts_the_text(tok, decoder_kind):
    """The stop string " the" spans two tokens (the space between them): a response ends with the token
    that completes its first occurrence, its text is cut before it, and responses without it are
    untouched; the same as the loop without the cache."""
    policy = llama(tok, 0)
    stops = Stops((tok.eos_token_id,), (" the",))
    prompts = [p.text for p in all_prompts()[::300]]
    kwargs = dict(n=6, mixture_coef=0.0, max_new_tokens=30, seed=(2,), stops=stops, engine="prefgame")
    ys = generate(policy, None, tok, prompts, **kwargs)
    cut = 0
    for ids, text, stopped in zip(ys.response_ids, ys.texts, ys.stopped.tolist()):
        full = tok.decode(ids, skip_special_tokens=True)
        if " the" in full:
            cut += 1
            assert stopped and full.endswith(" the") and " the" not in tok.decode(ids[:-1], skip_special_tokens=True)
            assert text == full[: full.index(" the")].strip()
        else:
            assert text == full.strip() and stopped == (ids[-1] == tok.eos_token_id)
    assert cut >= 3
    assert generate(policy, None, tok, prompts, use_cache=False, **kwargs).response_ids == ys.response_ids


def test_request_groups_share_the_loop_and_keep_their_streams(tok):
    """Nash-MD's two requests in one loop (the policy's samples and the mixture's) give each request what
    it gets sampled alone with its seed; the batch size splits every request the same way."""
    policy, ref = llama(tok, 0), llama(tok, 1)
    prompts = [p.text for p in all_prompts()[::400]]
    requests = [Request(3, 0.0, (1, 0, 1)), Request(2, 0.4, (1, 0, 2))]
    common = dict(max_new_tokens=10, batch_size=8, engine="prefgame")
    together = generate_groups(policy, ref, tok, prompts, requests, **common)
    for r, ys in zip(requests, together):
        alone = generate(policy, ref, tok, prompts, n=r.n, mixture_coef=r.mixture_coef, seed=r.seed, **common)
        assert ys.response_ids == alone.response_ids and ys.texts == alone.texts
        torch.testing.assert_close(ys.logps, alone.logps, rtol=0, atol=1e-5)
        assert torch.equal(ys.stopped, alone.stopped)
    # stepped together, π0 computes the policy's rows too: its log-probs of the policy's samples come with
    # them, equal to a teacher-forced pass of π0 (where every batch has both requests' rows; with batch size
    # 8 the last batches hold the policy's samples alone, which π0 does not see)
    assert together[0].ref_logps is None
    ys = generate_groups(policy, ref, tok, prompts, requests, max_new_tokens=10, batch_size=64, engine="prefgame")[0]
    assert ys.ref_logps is not None
    batch = build_pairs_batch(ys.prompt_ids, ys.response_ids, tok.pad_token_id)
    with torch.no_grad():
        logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    forced = (token * batch["response_mask"][:, 1:]).sum(-1)
    torch.testing.assert_close(ys.ref_logps, forced, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="mixture_coef"):
        sample_groups(policy, ref, [Group([[1, 2]], 1.5)], max_new_tokens=2, stops=0, pad_token_id=0)


# ---------------------------------------------------------------------------------------------- transformers' generate


def test_transformers_engine_log_probs_stops_and_pure_sampling(tok):
    """Samples through transformers' generate: each token's reported log-prob is log_softmax(logits/T)
    of a teacher-forced pass, rows end at their first of several stop ids, the same seed gives the same
    samples, and the model's generation config (top-k 5 here) does not change what is sampled: one
    step over 6,000 rows is within total variation 0.06 of the pure softmax."""
    model = llama(tok, 0).eval()
    model.generation_config.top_k = 5
    ids = [p for p in prompt_ids(tok, 3) for _ in range(6)]
    stop_ids = (tok.eos_token_id, *range(30, 36))
    kwargs = dict(max_new_tokens=16, stops=stop_ids, pad_token_id=tok.pad_token_id, temperature=0.7)
    out = transformers_tokens(model, ids, generator=torch.Generator().manual_seed(5), **kwargs)
    again = transformers_tokens(model, ids, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(out.tokens, again.tokens)
    rows = ends(out.tokens, out.mask)
    for row, stopped in zip(rows, out.stopped.tolist()):
        hits = [i for i, t in enumerate(row) if t in stop_ids]
        assert hits == ([len(row) - 1] if stopped else []) and (stopped or len(row) == 16)
    assert out.stopped.any()
    logits = forward_logits(model, ids, rows, tok.pad_token_id)
    for b, row in enumerate(rows):
        expected = torch.log_softmax(logits[b][: len(row)] / 0.7, dim=-1).gather(-1, torch.tensor(row)[:, None])
        torch.testing.assert_close(out.logps[b, : len(row)], expected.squeeze(-1), rtol=0, atol=2e-5)
    one = [encode_prompt(tok, all_prompts()[0].text)] * 6000
    step = transformers_tokens(model, one, max_new_tokens=1, stops=(), pad_token_id=tok.pad_token_id,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        exact = torch.softmax(model(torch.tensor([one[0]])).logits[0, -1], dim=-1).double()
    freq = torch.bincount(step.tokens[:, 0], minlength=exact.shape[0]).double() / len(one)
    assert 0.5 * (freq - exact).abs().sum() < 0.06


def test_engine_choice(tok):
    """transformers' generate for one model alone when asked; mixtures and use_cache=False always on
    prefgame's loop."""
    model = llama(tok)
    assert uses_transformers("transformers", 0.0, use_cache=True)
    assert not uses_transformers("prefgame", 0.0, use_cache=True)
    assert not uses_transformers("transformers", 0.2, use_cache=True)
    assert not uses_transformers("transformers", 0.0, use_cache=False)
    with pytest.raises(ValueError, match="engine"):
        uses_transformers("vllm", 0.0, use_cache=True)
    # through generate: the transformers engine's samples are teacher-forced exactly as well
    ys = generate(model, None, tok, ["what is 2 plus 3 ?"], n=4, mixture_coef=0.0, max_new_tokens=6, seed=(1,),
                  engine="transformers")  # fmt: skip
    assert len(ys) == 4 and ys.logps.shape == (4,) and ys.stopped.shape == (4,)


# ---------------------------------------------------------------------------------------------- resolved stops


def test_stops_of_a_tokenizer_and_a_chat_model(tok):
    """By default the tokenizer's EOS and every id of the model's generation config (a chat model lists
    several); an explicit list replaces them; an id outside the vocabulary is one line naming the key."""
    model = llama(tok)
    assert stops_for(tok, model) == Stops((tok.eos_token_id,))
    model.generation_config.eos_token_id = [tok.eos_token_id, 40, 41]
    assert stops_for(tok, model, stop=["\n\nUser:"]) == Stops((tok.eos_token_id, 40, 41), ("\n\nUser:",))
    assert stops_for(tok, model, eos_token_ids=[7, 7, 8]).token_ids == (7, 8)
    with pytest.raises(PrefgameError, match=r"^sampling\.eos_token_ids: 500 is not a token id"):
        stops_for(tok, model, eos_token_ids=[500])
    # a model's saved generation config alone (what vLLM is given), or none
    assert stops_for(tok, model.generation_config).token_ids == (tok.eos_token_id, 40, 41)
    assert stops_for(tok, None).token_ids == (tok.eos_token_id,)
    assert Stops((), ("ab", "c")).cut("xxcab") == "xx" and Stops().cut("text") == "text"


def test_trainer_runtime_resolves_and_applies_its_stops(tok, tmp_path):
    """A trainer's sampling.eos_token_ids and sampling.stop reach its sampler (Nash-MD's policy and mixture
    samples alike), and eos_missing (PPO's penalty, online DPO's ranking, eval/eos_rate) counts exactly
    the responses that stopped at none of them; bad settings are refused as the config loads."""
    import logging

    from prefgame.errors import ConfigError
    from prefgame.run import RunDir
    from prefgame.train.selfplay import SelfPlay, selfplay_config

    pi0 = tmp_path / "pi0"
    llama(tok).save_pretrained(str(pi0))
    tok.save_pretrained(str(pi0))
    stop_ids = [tok.eos_token_id, *range(20, 26)]
    overrides = [
        f"policy.name_or_path={pi0}", f"output_dir={tmp_path / 'run'}", "eval.prompts=0",
        "sampling.prompts_per_iteration=6", "sampling.samples_per_prompt=4", "sampling.max_new_tokens=20",
        f"sampling.eos_token_ids=[{','.join(map(str, stop_ids))}]", "sampling.stop=[' the']",
    ]  # fmt: skip
    cfg = selfplay_config("nash_md", None, overrides)
    out = RunDir(cfg.output_dir)
    sp = SelfPlay(cfg, out, logging.getLogger("test"))
    assert sp.stops == Stops(tuple(stop_ids), (" the",))
    prompts = sp.iteration_prompts(0)
    ys, opponents = sp.sample_requests(prompts, [Request(4, 0.0, (0, 0, 1)), Request(4, 0.2, (0, 0, 2))])
    for responses in (ys, opponents):
        missing = sp.eos_missing(responses)
        for ids, text, cut in zip(responses.response_ids, responses.texts, missing.tolist()):
            full = tok.decode(ids, skip_special_tokens=True)
            ended = ids[-1] in stop_ids or full.endswith(" the")
            assert cut == (not ended) and (ended or len(ids) == 20) and " the" not in text
        assert 0 < int(missing.sum()) < len(responses)
    out.close()
    for bad in ("sampling.stop=['']", "sampling.eos_token_ids=[-1]"):
        with pytest.raises((ConfigError, ValueError)):
            selfplay_config("nash_md", None, [*overrides[:2], bad])
