"""LM self-play: the mixture sampler, the oracle cache and estimators, the class-level game, and the
trainer on a tiny model (parameters change, the reference does not, resume equals uninterrupted).

The tiny policy is a random 2-layer Llama over the arena vocabulary; its responses are mostly
nonsense, which is fine: every text has an arena class, so the gold oracle and the class-level
metrics apply to them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.arena.world import N_CLASSES, N_PROMPT_TYPES, Arena, GoldOracle, all_prompts
from prefgame.config import load_config
from prefgame.errors import ConfigError, PrefgameError
from prefgame.game.lm_sampling import Responses, generate, sample_tokens
from prefgame.game.lm_selfplay import (
    ClassGame,
    PreferenceCache,
    class_figures,
    cross_matrices,
    distinct_pairs,
    draw_pairs,
    group_matrices,
    leave_one_out_win_rates,
)
from prefgame.game.solvers import solve_equilibrium
from prefgame.lm import build_pairs_batch, encode_prompt
from prefgame.losses import geometric_mixture_logprobs, sequence_logprobs
from prefgame.train.selfplay import (
    ARENA_PRESETS,
    SelfPlayConfig,
    run_selfplay,
    selfplay_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "selfplay"


def tiny_model(seed: int, tok) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    return tiny_model(0, tok), tiny_model(1, tok)


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory, tok) -> Path:
    """A saved tiny π0 (random weights) with the arena tokenizer."""
    path = tmp_path_factory.mktemp("pi0")
    tiny_model(0, tok).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def prompt_ids(tok, n: int = 5) -> list[list[int]]:
    """Arena prompts of different lengths, so the batch has left padding."""
    prompts = [p.text for p in all_prompts()[:: 2700 // n][:n]]
    ids = [encode_prompt(tok, p) for p in prompts]
    assert n == 1 or len({len(i) for i in ids}) > 1
    return ids


# ---------------------------------------------------------------------------------------------- sampler


def teacher_forced_logps(model, prompts, tokens, mask, pad_id) -> torch.Tensor:
    """Log-softmax (B, N, V) of ``model`` at each generated position, from a right-padded full pass."""
    responses = [row[m].tolist() for row, m in zip(tokens, mask)]
    batch = build_pairs_batch(prompts, responses, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = torch.zeros(tokens.shape[0], tokens.shape[1], logits.shape[-1])
    for b, (p, r) in enumerate(zip(prompts, responses)):
        out[b, : len(r)] = torch.log_softmax(logits[b, len(p) - 1 : len(p) - 1 + len(r)].float(), dim=-1)
    return out


@pytest.fixture(params=["static", "transformers-cache", "recompute"])
def decoder(request, monkeypatch):
    """Each way the sampler computes logits (prefgame.game.decoding): its static-cache decoder (the
    arena's Llama is one it computes), the model's own forward with its cache (forced by supporting no
    model type), and the whole prefix recomputed; yields the sampler's ``use_cache``."""
    if request.param == "transformers-cache":
        monkeypatch.setattr("prefgame.game.decoding.STATIC_CACHE_TYPES", ())
    return request.param != "recompute"


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_mixture_sampler_logprobs_match_teacher_forcing(tok, models, beta, decoder):
    """The log-prob the sampler reports for each token equals log_softmax((1−β)ℓπ + βℓπ0)[token],
    recomputed from a plain right-padded forward pass of both models: β = 0 is exactly π, β = 1 is π0,
    and left padding (prompts of different lengths) changes nothing; with every decoder."""
    policy, ref = models
    ids = prompt_ids(tok)
    gen = torch.Generator().manual_seed(3)
    out = sample_tokens(
        policy, ref, ids, mixture_coef=beta, max_new_tokens=6, stops=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, generator=gen, use_cache=decoder,
    )  # fmt: skip
    lp_pi = teacher_forced_logps(policy, ids, out.tokens, out.mask, tok.pad_token_id)
    lp_0 = teacher_forced_logps(ref, ids, out.tokens, out.mask, tok.pad_token_id)
    expected = {0.0: lp_pi, 1.0: lp_0}.get(beta)
    if expected is None:
        expected = geometric_mixture_logprobs(lp_pi, lp_0, mixture_coef=beta)
    picked = expected.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1)  # (B, N)
    torch.testing.assert_close(out.logps[out.mask], picked[out.mask], rtol=0, atol=2e-5)
    assert bool(out.mask[:, 0].all())


def test_mixture_sampler_one_step_frequencies(tok, models):
    """One sampled token per row from π^μ, β = ½, over 6,000 rows: the empirical distribution is within
    total-variation 0.06 of the exact mixture (the expected sampling error is ≈ 0.03 here)."""
    policy, ref = models
    ids = [prompt_ids(tok, 1)[0]] * 6000
    out = sample_tokens(
        policy, ref, ids, mixture_coef=0.5, max_new_tokens=1, stops=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    with torch.no_grad():
        x = torch.tensor([ids[0]])
        exact = geometric_mixture_logprobs(policy(x).logits[0, -1], ref(x).logits[0, -1], mixture_coef=0.5).exp()
    freq = torch.bincount(out.tokens[:, 0], minlength=exact.shape[0]).double() / len(ids)
    assert 0.5 * (freq - exact.double()).abs().sum() < 0.06


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_cached_and_uncached_sampling_agree(tok, models, beta, static, monkeypatch):
    """Same seed → the KV-cache loop (the static-cache decoder, or the model's own cache) and the
    recompute-the-prefix loop give the same tokens."""
    if not static:
        monkeypatch.setattr("prefgame.game.decoding.STATIC_CACHE_TYPES", ())
    policy, ref = models
    kwargs = dict(n=2, mixture_coef=beta, max_new_tokens=8, seed=(5, 1), batch_size=4, engine="prefgame")
    prompts = [p.text for p in all_prompts()[::700]]
    cached = generate(policy, ref, tok, prompts, use_cache=True, **kwargs)
    uncached = generate(policy, ref, tok, prompts, use_cache=False, **kwargs)
    assert cached.response_ids == uncached.response_ids
    assert cached.texts == uncached.texts
    again = generate(policy, ref, tok, prompts, use_cache=True, **kwargs)
    assert again.response_ids == cached.response_ids  # deterministic in the seed


def test_sampler_refuses_a_model_that_would_ignore_the_cache(tok, models, monkeypatch):
    """A model class whose forward names the KV cache otherwise would take ``cache=`` into its
    **kwargs and decode from the last token alone: one clear error where the sampler runs the model's
    forward with its cache (a model type without the static-cache decoder), and use_cache=False still
    works."""
    monkeypatch.setattr("prefgame.game.decoding.STATIC_CACHE_TYPES", ())
    policy, _ = models

    class OldStyleLlama(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
            return super().forward(input_ids, attention_mask, position_ids, past_key_values, **kwargs)

    old = OldStyleLlama(policy.config)
    old.load_state_dict(policy.state_dict())
    ids = prompt_ids(tok, 2)
    common = dict(mixture_coef=0.0, max_new_tokens=3, stops=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with pytest.raises(PrefgameError, match="takes no `cache` argument.*use_cache=false"):
        sample_tokens(old, None, ids, **common)
    a = sample_tokens(old, None, ids, use_cache=False, generator=torch.Generator().manual_seed(1), **common)
    b = sample_tokens(policy, None, ids, generator=torch.Generator().manual_seed(1), **common)
    assert torch.equal(a.tokens, b.tokens)


def test_sampler_needs_only_the_models_it_uses(tok, models):
    policy, _ = models
    ids = prompt_ids(tok, 2)
    common = dict(max_new_tokens=3, stops=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    a = sample_tokens(policy, None, ids, mixture_coef=0.0, generator=torch.Generator().manual_seed(1), **common)
    b = sample_tokens(None, policy, ids, mixture_coef=1.0, generator=torch.Generator().manual_seed(1), **common)
    assert torch.equal(a.tokens, b.tokens)
    with pytest.raises(ValueError):
        sample_tokens(policy, None, ids, mixture_coef=0.5, **common)


# ---------------------------------------------------------------------------------------------- oracle and estimators


class CountingOracle:
    """P(a ≻ b) = σ(len(a) − len(b)) in words; records every pair it is asked."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def preference(self, prompts, a, b):
        self.calls.append(len(a))
        d = torch.tensor([len(x.split()) - len(y.split()) for x, y in zip(a, b)], dtype=torch.float64)
        return torch.sigmoid(d)


def test_preference_cache_queries_each_pair_once():
    """(x, a, b), (x, b, a) and repeats share one query; a = b costs none and is ½; one call per batch."""
    oracle = CountingOracle()
    cache = PreferenceCache(oracle)
    p = cache.query(["x", "x", "x", "x", "y"], ["a b", "c", "a b", "c", "c"], ["c", "a b", "c", "c", "a b"])
    s = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)).item()
    torch.testing.assert_close(p, torch.tensor([s, 1 - s, s, 0.5, 1 - s], dtype=torch.float64))
    assert oracle.calls == [2]  # (x, a b, c) and (y, a b, c)
    cache.query(["x"], ["c"], ["a b"])
    assert oracle.calls == [2]  # answered from the table
    assert cache.stats() == {"oracle_pairs_requested": 6, "oracle_pairs_queried": 2}


def test_group_and_cross_matrices_and_win_rates():
    """Texts of 1, 2, 3 words: M[i, j] = σ(i − j). Leave-one-out win rate of the 3-word text is
    (σ(2) + σ(1))/2; the cross matrix against texts of 2 words is σ(i − 1)."""
    oracle = CountingOracle()
    cache = PreferenceCache(oracle)
    texts = ["a", "a b", "a b c"]
    mats = group_matrices(cache, ["x"] * 3, texts, 3)
    sig = torch.sigmoid
    expected = sig(torch.arange(3.0)[:, None] - torch.arange(3.0)[None]).double()
    torch.testing.assert_close(mats[0], expected)
    assert oracle.calls == [3]  # the upper triangle, in one call
    win = leave_one_out_win_rates(mats)
    torch.testing.assert_close(win[2], ((sig(torch.tensor(2.0)) + sig(torch.tensor(1.0))) / 2).double())
    cross = cross_matrices(cache, ["x"] * 3, texts, ["b c"] * 3, 3)
    torch.testing.assert_close(cross[0], sig(torch.arange(3.0) - 1.0).double()[:, None].expand(3, 3))
    # two prompts, 1 sample each against 2 opponents each: 1 word vs (2, 3) words, 3 words vs (1, 1)
    cross = cross_matrices(cache, ["x", "y"], ["a", "a b c"], ["b c", "b c d", "e", "f"], 1, 2)
    assert cross.shape == (2, 1, 2)
    torch.testing.assert_close(cross[:, 0], sig(torch.tensor([[-1.0, -2.0], [2.0, 2.0]])).double())


def test_interleave_and_distinct_pairs():
    """Two prompts, 2 policy samples and 1 anchor each → 3 per prompt, own samples first; pairs within a
    prompt only, identical token sequences flagged; logps kept only when both sets have them."""
    a = Responses(
        ["x", "x", "y", "y"], [[1]] * 2 + [[2]] * 2, [[5], [6], [7], [8]], ["a", "b", "c", "d"], torch.arange(4.0)
    )
    b = Responses(["x", "y"], [[1], [2]], [[5], [9]], ["e", "f"], torch.tensor([10.0, 11.0]))
    m = a.interleave(b, 2, 1)
    assert m.texts == ["a", "b", "e", "c", "d", "f"] and m.prompts == ["x", "x", "x", "y", "y", "y"]
    assert m.logps.tolist() == [0.0, 1.0, 10.0, 2.0, 3.0, 11.0]
    assert a.interleave(dataclasses.replace(b, logps=None), 2, 1).logps is None
    with pytest.raises(ValueError, match="interleave"):
        a.interleave(b, 2, 2)
    first, second, keep = distinct_pairs(m.response_ids, 3)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]
    assert keep.tolist() == [True, False, True, True, True, True]  # samples 0 and 2 are both [5]


def test_draw_pairs_skips_identical_and_draws_winners():
    """M = [[½, 1, 0], [0, ½, ½], [1, ½, ½]] for one prompt; samples 1 and 2 are identical tokens,
    so the pairs are (0, 1) and (0, 2) only, and P ∈ {0, 1} makes the winners certain: 0 beats 1,
    2 beats 0."""
    mats = torch.tensor([[[0.5, 1.0, 0.0], [0.0, 0.5, 0.5], [1.0, 0.5, 0.5]]], dtype=torch.float64)
    chosen, rejected, p = draw_pairs(mats, [[1, 2], [3], [3]], np.random.default_rng(0))
    assert sorted(zip(chosen.tolist(), rejected.tolist())) == [(0, 1), (2, 0)]
    assert np.all(p == 1.0)


def test_class_game_measures_equilibrium_and_reference():
    """At π* the regularized gap is 0 and TV to π* is 0; π0 itself has KL 0 and gold win rate ½ vs π0
    (class_figures, the one vocabulary of the exact figures)."""
    arena = Arena()
    ref = arena.demonstrator_distribution()
    game = ClassGame(arena.gold_matrix, ref, arena.type_probs, tau=0.2)
    at_star = game.measure(game.pi_star)
    assert at_star["gap"] < 1e-10 and at_star["tv_to_equilibrium"] < 1e-12
    at_ref = game.measure(ref)
    assert abs(at_ref["class_kl"]) < 1e-12
    assert at_ref["exploitability"] == pytest.approx(arena.exploitability(ref), abs=1e-12)
    figures = class_figures(arena, ref, ref, game)
    assert abs(figures["gold_win_rate_vs_ref"] - 0.5) < 1e-12 and figures["gap"] == at_ref["gap"]
    assert set(class_figures(arena, ref, ref)) == {
        "gold_win_rate_vs_ref",
        "exploitability",
        "exploitability_transitive",
    }
    # without the cyclic term the world is Bradley–Terry: its exploitability is the transitive part
    bt = Arena(dataclasses.replace(arena.spec, cycle=0.0))
    assert figures["exploitability_transitive"] == pytest.approx(bt.exploitability(ref), abs=1e-12)
    pi_star, _ = solve_equilibrium(arena.gold_matrix - 0.5, ref, 0.2)
    torch.testing.assert_close(game.pi_star, pi_star)
    assert game.pi_star.shape == (N_PROMPT_TYPES, N_CLASSES)


# ---------------------------------------------------------------------------------------------- trainer


TINY = [
    "sampling.prompts_per_iteration=4",
    "sampling.samples_per_prompt=3",
    "sampling.max_new_tokens=6",
    "train.iterations=2",
    "train.steps_per_iteration=2",
    "train.batch_size=6",
    "train.micro_batch_size=3",
    "train.lr=1e-2",
    "eval.every=1",
    "eval.prompts=12",
    "eval.samples_per_prompt=1",
    "eval.reference_samples_per_prompt=1",
]


def read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("algorithm", list(ARENA_PRESETS))
def test_trainer_updates_policy_not_reference(pi0_dir, tmp_path, algorithm, monkeypatch):
    """Two iterations on a tiny model: every parameter tensor of the policy changes, π0 does not, the
    metrics files are complete and vLLM is never imported."""
    from prefgame.train import selfplay

    seen = {}
    original = selfplay.SelfPlay.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["sp"] = self
        seen["ref_before"] = {k: v.clone() for k, v in self.ref.state_dict().items()}

    monkeypatch.setattr(selfplay.SelfPlay, "__init__", spy)
    out = tmp_path / algorithm
    metrics = run_selfplay(pi0_dir, algorithm=algorithm, output_dir=out, overrides=TINY)
    before = load_file(str(pi0_dir / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before), f"unchanged: {set(before) - set(changed)}"
    sp = seen["sp"]
    assert all(torch.equal(v, seen["ref_before"][k]) for k, v in sp.ref.state_dict().items())
    assert not any(p.requires_grad for p in sp.ref.parameters())
    rows = read_rows(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for key in ("win_rate_vs_ref", "kl_to_ref", "exploitability", "gap", "tv_to_equilibrium", "gold_win_rate_vs_ref"):
        assert all(np.isfinite(r[f"eval/{key}"]) for r in rows), key
    assert rows[1]["eval/win_rate_vs_previous"] is not None
    assert metrics["final"]["iteration"] == 2 and "equilibrium" in metrics
    history = metrics["history"]  # the convergence trace: one row per measurement, from metrics.jsonl
    assert [h["iteration"] for h in history] == [0, 1, 2]
    assert [h["eval/exploitability"] for h in history] == [r["eval/exploitability"] for r in rows]
    assert (out / "metrics.json").exists() and (out / "config.yaml").exists()
    assert "vllm" not in sys.modules


def test_inpo_with_reference_samples_trains_on_win_rate_gaps(pi0_dir, tmp_path, monkeypatch):
    """sampling.reference_samples_per_prompt = M: each iteration's pairs are all pairs of a prompt's K
    policy samples and M samples of π0 (the reference's own draws), every pair's target the gap of the
    responses' win rates against the K policy samples (leave-one-out for the policy's own), recomputed
    here from the oracle; the policy changes, π0 does not."""
    from prefgame.train.selfplay.algorithms import inpo

    seen: list[dict] = []
    real_examples, real_loss = inpo.inpo_examples, inpo.inpo_loss

    def examples(sp, prefs, ys, old, label_seed, anchors=None):
        ex = real_examples(sp, prefs, ys, old, label_seed, anchors)
        seen.append({"ys": ys, "anchors": anchors, "ex": ex, "ref": sp.ref})
        return ex

    def loss(*args, **kwargs):
        assert kwargs.get("chosen_prob") is None and kwargs["win_rate_gap"] is not None
        seen[-1].setdefault("gaps", []).append(kwargs["win_rate_gap"].detach())
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(inpo, "inpo_examples", examples)
    monkeypatch.setattr(inpo, "inpo_loss", loss)
    out = tmp_path / "anchored"
    overrides = [*TINY, "sampling.reference_samples_per_prompt=2", "train.batch_size=200", "train.micro_batch_size=200"]
    run_selfplay(pi0_dir, algorithm="inpo", output_dir=out, overrides=overrides)
    before = load_file(str(pi0_dir / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert len(seen) == 2
    arena, k, m = Arena(), 3, 2
    for call in seen:
        anchors, ex = call["anchors"], call["ex"]
        assert len(anchors.responses) == 4 * m and len(ex.responses) == 4 * (k + m)
        # every example is a pair within one prompt's K + M responses, all distinct pairs present
        first, second = ex.columns
        assert np.all(first // (k + m) == second // (k + m))
        _, _, keep = distinct_pairs(ex.responses.response_ids, k + m)
        assert ex.columns.shape[1] == keep.sum()
        # the win rates behind the gaps, from the gold preference directly
        texts, prompts = ex.responses.texts, ex.responses.prompts
        win = []
        for i, y in enumerate(texts):
            g = i // (k + m)
            opponents = [j for j in range(g * (k + m), g * (k + m) + k) if j != i]
            p = GoldOracle(arena).preference(
                [prompts[i]] * len(opponents), [y] * len(opponents), [texts[j] for j in opponents]
            )
            win.append(float(np.mean(np.asarray(p, dtype=float))))
        win = torch.tensor(win, dtype=torch.float64)
        gaps = torch.cat(call["gaps"])  # one full-batch step per optimizer step: the same order each step
        n = ex.columns.shape[1]
        torch.testing.assert_close(gaps[:n].sort().values, (win[first] - win[second]).float().sort().values)


def test_length_groups_give_the_update_of_one_forward_pass(pi0_dir, tmp_path, monkeypatch):
    """train.length_groups=3: each micro-batch's sequences run in 3 forward passes, shortest first, each
    padded to its own longest sequence, and their log-probs return to the pairs in order: loss and gradient
    norm of every step and the weights equal those of one pass up to float rounding, with fewer padded
    positions. One iteration: its samples come from π0 in both runs."""
    from prefgame.train.selfplay import SelfPlay

    widths: dict[int, list[tuple[int, int]]] = {1: [], 3: []}
    real_batch = SelfPlay.batch
    for groups in (1, 3):

        def batch(self, responses, idx, groups=groups):
            out = real_batch(self, responses, idx)
            if torch.is_grad_enabled():  # the optimizer's forward passes
                widths[groups].append(tuple(out["input_ids"].shape))
            return out

        monkeypatch.setattr(SelfPlay, "batch", batch)
        overrides = [*TINY, "train.iterations=1", "sampling.reference_samples_per_prompt=2",
                     f"train.length_groups={groups}"]  # fmt: skip
        run_selfplay(pi0_dir, algorithm="inpo", output_dir=tmp_path / f"groups{groups}", overrides=overrides)
    one, grouped = (read_rows(tmp_path / f"groups{g}")[1] for g in (1, 3))
    for key in ("loss", "grad_norm"):
        assert grouped[key] == pytest.approx(one[key], rel=1e-5), key
    a, b = (load_file(str(tmp_path / f"groups{g}" / "model" / "model.safetensors")) for g in (1, 3))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-5, msg=name)
    assert len(widths[3]) == 3 * len(widths[1])  # three passes where there was one
    rows = [sum(r for r, _ in widths[g]) for g in (1, 3)]
    assert rows[0] == rows[1]  # the same sequences
    assert sum(r * t for r, t in widths[3]) < sum(r * t for r, t in widths[1])  # less padding


def test_length_groups_refused_with_several_processes(pi0_dir, tmp_path, monkeypatch):
    """Several forward passes before one backward: refused in one line under a multi-process launch."""
    from prefgame.train import policy

    real = policy.make_accelerator

    def two_processes(*args, **kwargs):  # the accelerator, then a launch of 2 as the trainer sees it
        acc = real(*args, **kwargs)
        monkeypatch.setattr(type(acc), "num_processes", property(lambda self: 2))
        return acc

    monkeypatch.setattr(policy, "make_accelerator", two_processes)
    with pytest.raises(ConfigError, match=r"length_groups=2 \(train.length_groups.* set it to 1"):
        run_selfplay(pi0_dir, algorithm="inpo", output_dir=tmp_path / "x", overrides=[*TINY, "train.length_groups=2"])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # optimizer.step is replaced
def test_sampler_logps_replace_the_policy_forward_pass(pi0_dir, tmp_path):
    """Policy samples at temperature 1 carry log π_t(y|x) from the sampler, equal (float rounding) to
    a teacher-forced forward pass; mixture samples and other temperatures carry none, so the
    trainer recomputes them. A pair batch with repeated sequences gives the gradient of one row per use."""
    from prefgame.run import RunDir
    from prefgame.train.selfplay import Examples, SelfPlay, selfplay_config

    cfg = selfplay_config("inpo", None, [*TINY, f"policy.name_or_path={pi0_dir}", f"output_dir={tmp_path}"])
    out = RunDir(cfg.output_dir)
    sp = SelfPlay(cfg, out, logging.getLogger("test"))
    prompts = sp.iteration_prompts(0)
    ys = sp.sample(prompts, (0, 0, 1))
    assert ys.logps is not None and ys.logps.shape == (len(ys),)
    torch.testing.assert_close(sp.policy_logps(ys), sp.sequence_logps(sp.policy, ys), rtol=0, atol=1e-4)
    assert sp.sample(prompts, (0, 0, 2), mixture_coef=0.2).logps is None
    sp.cfg.sampling.temperature = 0.7
    assert sp.sample(prompts, (0, 0, 1)).logps is None

    # pairs (0, 1), (0, 2), (1, 2): the deduplicated forward gives the per-row gradient sum
    columns = np.array([[0, 0, 1], [1, 2, 2]])

    def loss_fn(mb, cols, normalizer):
        return (cols[0] - 2 * cols[1]).sum() / normalizer, {}

    sp.cfg.train.steps_per_iteration, sp.cfg.train.max_grad_norm = 1, 0.0
    grads = {}
    sp.optimizer.step = lambda: grads.update({n: p.grad.clone() for n, p in sp.policy.named_parameters()})
    sp.optimize(Examples(ys, columns, loss_fn), (0, 0, 4))
    sp.policy.zero_grad()
    batch = sp.batch(ys, [0, 1, 2])
    logps = sequence_logprobs(sp.wrapper(**batch), batch["response_mask"][:, 1:])
    ((logps[0] + logps[0] + logps[1]) - 2 * (logps[1] + logps[2] + logps[2])).div(3).backward()
    for n, p in sp.policy.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
    out.close()


def test_log_probs_project_at_most_logprob_chunk_size_rows(pi0_dir, tmp_path, monkeypatch):
    """train.logprob_chunk_size bounds the response rows projected to the vocabulary at once — in the
    training forward and backward and in π0's log-probs — and changes no result: chunks of 2 rows give
    the log-probs and gradients of one chunk holding every row."""
    from prefgame.losses import logprobs
    from prefgame.run import RunDir
    from prefgame.train.selfplay import SelfPlay, selfplay_config

    projected: list[int] = []
    project = logprobs._project
    monkeypatch.setattr(logprobs, "_project", lambda h, w, b: projected.append(h.shape[0]) or project(h, w, b))
    got = {}
    for chunk in (2, 10_000):
        overrides = [*TINY, f"policy.name_or_path={pi0_dir}", f"output_dir={tmp_path / str(chunk)}"]
        cfg = selfplay_config("inpo", None, [*overrides, f"train.logprob_chunk_size={chunk}"])
        out = RunDir(cfg.output_dir)
        sp = SelfPlay(cfg, out, logging.getLogger("test"))
        ys = sp.sample(sp.iteration_prompts(0), (0, 0, 1))
        projected.clear()
        ref = sp.sequence_logps(sp.ref, ys)
        batch = sp.batch(ys, range(len(ys)))
        logps = sequence_logprobs(sp.wrapper(**batch), batch["response_mask"][:, 1:])
        logps.sum().backward()
        got[chunk] = (ref, logps.detach(), [p.grad.clone() for p in sp.policy.parameters()], max(projected))
        out.close()
    assert got[2][3] == 2 and got[10_000][3] > 2
    for chunked, whole in zip(got[2][:2], got[10_000][:2]):
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    for chunked, whole in zip(got[2][2], got[10_000][2]):
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-6)


class KilledError(Exception):
    pass


class KillAfter:
    """The gold oracle, raising on its n-th call: a run killed in the middle of an iteration."""

    def __init__(self, oracle, n: int) -> None:
        self.oracle, self.n, self.name = oracle, n, oracle.name

    def preference(self, prompts, a, b):
        self.n -= 1
        if self.n < 0:
            raise KilledError
        return self.oracle.preference(prompts, a, b)


@pytest.mark.parametrize(
    ("algorithm", "every", "anchors", "average_from"),
    [("nash_md", 1, 0, -1), ("extragradient", 1, 0, -1), ("inpo", 0, 0, 0), ("extragradient", 1, 2, -1)],
)
def test_resume_equals_uninterrupted(pi0_dir, tmp_path, algorithm, every, anchors, average_from):
    """A run killed during iteration 3 (of 3) and resumed ends with bit-identical policy weights,
    identical metrics rows and the same metrics.json (timings aside) as an uninterrupted run.

    With eval.every=0 the last measurement before the kill is π0's (iteration 0), so the final
    win_rate_vs_previous is only right when the checkpoint carries those samples' texts."""
    arena = Arena()
    overrides = [
        *TINY, "train.iterations=3", f"eval.every={every}", f"sampling.reference_samples_per_prompt={anchors}",
        f"train.average_from={average_from}",
    ]  # fmt: skip
    full = tmp_path / "full"
    run_selfplay(pi0_dir, GoldOracle(arena), algorithm=algorithm, output_dir=full, overrides=overrides)
    # Oracle calls: 1 for the starting measurement, then per iteration the training calls (nash_md and
    # inpo 1, extragradient 2: one per half) and, when measured, 2 (vs π0, vs the previous iterate).
    # nash_md: killed at the measurement of iteration 2 (after its update, before its checkpoint);
    # extragradient: killed between its half step and its full step of iteration 2; inpo (measured
    # only at 0 and 3): killed at the training call of iteration 3, resumed from the iteration-2 checkpoint.
    # With π0 samples in the pairs (anchors), each training phase makes 2 calls (own pairs, anchors vs policy).
    calls_before = {"nash_md": 1 + 2 * 3 + 1, "extragradient": 1 + 2 * 4 + 1, "inpo": 1 + 2}[algorithm]
    if anchors:
        calls_before = 1 + 2 * (4 + 2) + 2  # extragradient: killed at the first call of the full step
    killed = tmp_path / "killed"
    with pytest.raises(KilledError):
        run_selfplay(
            pi0_dir, KillAfter(GoldOracle(arena), calls_before), algorithm=algorithm,
            output_dir=killed, overrides=overrides,
        )  # fmt: skip
    assert not (killed / "metrics.json").exists()
    resumed = [*overrides, "resume=true"]
    run_selfplay(pi0_dir, GoldOracle(arena), algorithm=algorithm, output_dir=killed, overrides=resumed)
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_rows(full) == read_rows(killed)
    summaries = [json.loads((d / "metrics.json").read_text()) for d in (full, killed)]
    for m in summaries:
        m.pop("seconds")
    assert summaries[0] == summaries[1]
    assert summaries[0]["final"]["eval/win_rate_vs_previous"] is not None


# ---------------------------------------------------------------------------------------------- configs


def test_average_from_outputs_the_tail_average_of_the_weights(pi0_dir, tmp_path):
    """train.average_from=1 over 3 iterations: model/ is the mean of the policy weights after iterations 2
    and 3 (the checkpoints' own policies), measurements after iteration 1 are of the average
    (averaged_iterates 0, 0, 1, 2), and self-play itself continues from the last iterate."""
    out = tmp_path / "avg"
    overrides = [*TINY, "train.iterations=3", "eval.every=1", "train.average_from=1", "train.keep_checkpoints=3"]
    run_selfplay(pi0_dir, algorithm="sppo", output_dir=out, overrides=overrides)
    ck = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ck] == ["step-00000001", "step-00000002", "step-00000003"]
    w2, w3 = (load_file(str(p / "policy.safetensors")) for p in ck[1:])
    final = load_file(str(out / "model" / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(final[k], (w2[k] + w3[k]) / 2, rtol=0, atol=1e-6)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)
    average = load_file(str(ck[2] / "average.safetensors"))
    assert all(torch.equal(average[k], final[k]) for k in final)
    assert [r["eval/averaged_iterates"] for r in read_rows(out)] == [0, 0, 1, 2]
    with pytest.raises(ConfigError, match="average_from"):
        selfplay_config("sppo", None, ["train.iterations=3", "train.average_from=3"])


def test_reference_samples_only_for_pair_algorithms():
    from prefgame.train.selfplay import ALGORITHMS

    assert {n for n, s in ALGORITHMS.items() if s.anchors} == {"inpo", "extragradient"}
    for algorithm in ("nash_md", "sppo", "mmd"):
        with pytest.raises(ConfigError, match="reference_samples_per_prompt is for extragradient, inpo, not"):
            selfplay_config(algorithm, None, ["sampling.reference_samples_per_prompt=2"])
    with pytest.raises(ConfigError, match="≥ 0"):
        selfplay_config("inpo", None, ["sampling.reference_samples_per_prompt=-1"])
    assert (
        selfplay_config("inpo", None, ["sampling.reference_samples_per_prompt=2"]).sampling.reference_samples_per_prompt
        == 2
    )


def test_shipped_arena_configs_match_presets():
    """configs/selfplay/<algorithm>.yaml sets what ARENA_PRESETS sets (run_selfplay's defaults)."""
    for algorithm in ARENA_PRESETS:
        from_file = load_config(SelfPlayConfig, CONFIGS / f"{algorithm}.yaml")
        from_preset = selfplay_config(algorithm, None, [f"policy.name_or_path={from_file.policy.name_or_path}"])
        a, b = dataclasses.asdict(from_file), dataclasses.asdict(from_preset)
        a.pop("output_dir"), b.pop("output_dir")
        assert a == b, algorithm


def test_gpu_config_loads_and_configs_validate():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        load_config(SelfPlayConfig, f)
    with pytest.raises(Exception, match="eta"):
        load_config(SelfPlayConfig, None, ["algorithm=inpo", "game.tau=0.5", "game.eta=4"])


def test_factory_oracle_hook(monkeypatch):
    """oracle.kind=factory imports 'module:function' and calls it as function(path, **options)."""
    import types

    from prefgame.oracle import OracleConfig, build_oracle

    module = types.ModuleType("fake_pm")
    module.load = lambda path, scale=1.0: dataclasses.make_dataclass("O", ["name", "preference"])(
        f"pm:{path}:{scale}", lambda x, a, b: torch.full((len(a),), 0.5)
    )
    monkeypatch.setitem(sys.modules, "fake_pm", module)
    oracle = build_oracle(OracleConfig(kind="factory", factory="fake_pm:load", path="p", options={"scale": 2}), None)
    assert oracle.name == "pm:p:2"
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_oracle(OracleConfig(kind="factory", factory="fake_pm:nothing"), None)


def test_inpo_expected_pair_labels_pass_the_oracle_probability(pi0_dir, tmp_path, monkeypatch):
    """game.pair_labels=expected hands inpo_loss each pair's oracle probability P(chosen ≻ rejected) (the
    ``p`` of draw_pairs); the default (sampled) hands none."""
    from prefgame.train.selfplay.algorithms import inpo

    seen: dict[str, list] = {"sampled": [], "expected": []}
    real_loss, real_draw = inpo.inpo_loss, inpo.draw_pairs
    drawn: list[np.ndarray] = []

    def drawing(*args, **kwargs):
        chosen, rejected, p = real_draw(*args, **kwargs)
        drawn.append(p)
        return chosen, rejected, p

    for mode in seen:
        drawn.clear()

        def recording(*args, mode=mode, **kwargs):
            seen[mode].append(kwargs["chosen_prob"])
            return real_loss(*args, **kwargs)

        monkeypatch.setattr(inpo, "inpo_loss", recording)
        monkeypatch.setattr(inpo, "draw_pairs", drawing)
        overrides = [*TINY, "train.iterations=1", "train.batch_size=1000", "train.micro_batch_size=1000"]
        overrides.append(f"game.pair_labels={mode}")
        run_selfplay(pi0_dir, algorithm="inpo", output_dir=tmp_path / mode, overrides=overrides)
    monkeypatch.undo()
    assert seen["sampled"] and all(p is None for p in seen["sampled"])
    probs = seen["expected"][0]  # one step on all pairs of the iteration, in the step's shuffled order
    assert probs is not None and len(probs) == len(drawn[0])
    assert sorted(probs.tolist()) == pytest.approx(sorted(drawn[0].tolist()), abs=1e-6)


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_restarts_adamw_every_iteration(pi0_dir, tmp_path, reset):
    """With train.reset_optimizer the checkpointed AdamW state after iteration t holds only that
    iteration's steps (its step count is steps_per_iteration); without, it accumulates over iterations."""
    out = tmp_path / str(reset)
    run_selfplay(pi0_dir, algorithm="inpo", output_dir=out, overrides=[*TINY, f"train.reset_optimizer={reset}"])
    saved = torch.load(out / "checkpoints" / "step-00000002" / "optimizer.pt", weights_only=False)
    state = saved["optimizer"]["state"]
    steps = {float(s["step"]) for s in state.values()}
    assert steps == ({2.0} if reset else {4.0})


def test_measurements_sample_at_temperature_one(pi0_dir, tmp_path):
    """sampling.temperature changes the training samples only: the held-out measurements of π0 (before
    any update) are the same at sampling temperature 1.5 as at 1 (same seed)."""
    rows = {}
    for temp in (1.0, 1.5):
        out = tmp_path / str(temp)
        overrides = [*TINY, "train.iterations=0", f"sampling.temperature={temp}"]
        run_selfplay(pi0_dir, algorithm="inpo", output_dir=out, overrides=overrides)
        rows[temp] = read_rows(out)[0]
    assert rows[1.0] == rows[1.5]
    assert rows[1.0]["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-5)


def test_every_algorithm_is_registered_under_its_tabular_name():
    """One name per algorithm on both sides: prefgame.game.solvers resolves an LM algorithm's name to
    the tabular rule it is the LM version of; every algorithm has its YAML and a one-line summary."""
    from prefgame.game.solvers import get_rule
    from prefgame.train.selfplay import ALGORITHMS

    assert {"nash_md", "sppo", "inpo", "mmd", "extragradient"} <= set(ALGORITHMS)
    for name, spec in ALGORITHMS.items():
        assert spec.name == name and spec.summary
        assert (CONFIGS / f"{name}.yaml").exists(), name
        if spec.tabular is not None:
            assert get_rule(name) is get_rule(spec.tabular), name
